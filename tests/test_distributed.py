r"""``gather_distributed=True`` on 2 gloo processes equals one process on the whole batch.

One spawn of two CPU processes runs every distributed check (:func:`_worker`) and saves what
each rank saw; the tests then compare it with the single-process result on the concatenated
batch, rank 0's rows first. Everything is float64 and compared to ``atol=1e-6`` (the
differences seen are ~1e-15: only the summation order differs).

The equalities, with :math:`N` the global batch, :math:`n_r` rank ``r``'s batch and
:math:`L_r` its loss. ``DistributedDataParallel`` averages the parameter gradients over the
:math:`W = 2` ranks, and the gathered features send each rank the gradient of every rank's
loss, so the DDP gradient is :math:`\nabla \frac{1}{W} \sum_r L_r`:

Integer labels run the fused kernel (also chunked, and with G inferred from the gathered
labels when ``num_groups`` is not given), float labels the continuous one.

* ``reduction="none"`` (any sizes): the per-anchor losses of the ranks, concatenated, equal
  the single-process per-anchor losses.
* ``reduction="mean"``, equal sizes :math:`n_r = N / W`: :math:`\frac{1}{W}\sum_r L_r` equals
  the single-process mean, and the DDP gradient equals the single-process gradient.
* ``reduction="sum"`` divided by :math:`N` on each rank (any sizes, here 5 and 3, where the
  mean of local means would weight the ranks unequally): :math:`\sum_r L_r` equals the
  single-process mean, and :math:`W` times the DDP gradient equals the single-process
  gradient.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

# Before any process group exists (the workers import this module first): imported later
# (DDP does, lazily), torch.distributed.nn binds the group into default arguments and keeps
# it, and gloo's worker threads, alive past destroy_process_group; a thread still releasing
# a collective's tensors during interpreter shutdown then aborts the rank (SIGABRT).
import torch.distributed.nn  # noqa: F401
from _gloo import WORLD, init_gloo, spawn_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dirloss import GroupBinner, GroupContrastiveLoss, GroupDIRLoss, MultiExpertHead
from dirloss.distributed import (
    broadcast_binner,
    check_binner_consistent,
    gather_batch,
    is_distributed,
)

ATOL = 1e-6
IN, HIDDEN, FEATURES, GROUPS = 8, 16, 6, 5

# name: (local batch sizes in rank order, label kind, similarity, chunk_size)
CONTRAST_CASES: dict[str, tuple[tuple[int, ...], str, str, int | None]] = {
    "int-equal": ((4, 4), "int", "l2", None),
    "int-equal-cosine": ((4, 4), "int", "cosine", None),
    "float-equal": ((4, 4), "float", "l2", None),
    "int-unequal": ((5, 3), "int", "l2", None),
    "int-unequal-chunked": ((5, 3), "int", "l2", 2),
    "float-unequal": ((5, 3), "float", "cosine", None),
    # No num_groups: G must come from the global labels (3..7, G = 5), not from rank 1's
    # local 4..5, or rank 1 would clamp / shift the contrast set differently.
    "int-inferred-unequal": ((5, 3), "int-inferred", "l2", None),
}
DIR_SIZES = (4, 4)


# ---------------------------------------------------------------------------------------
# Shared by the workers and the single-process reference: seeded, so both build the same.


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, FEATURES)).double()


def _batch(sizes: tuple[int, ...], kind: str, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, IN, generator=g, dtype=torch.float64)
    if kind == "int":  # few groups for 8 samples: ties across ranks
        return x, torch.randint(0, GROUPS, (n,), generator=g)
    if kind == "int-inferred":  # rank 0 (5 rows) spans 3..7, rank 1 (3 rows) only 4..5
        return x, torch.tensor([3, 7, 5, 4, 6, 5, 4, 5])
    # Real labels with a few exact ties (multiples of 0.25).
    return x, (torch.rand(n, generator=g, dtype=torch.float64) * 8).round() / 4


def _contrastive(
    kind: str, similarity: str, reduction: str, gather: bool, chunk_size: int | None = None
) -> GroupContrastiveLoss:
    return GroupContrastiveLoss(
        num_groups=GROUPS if kind == "int" else None, similarity=similarity,
        gather_distributed=gather, reduction=reduction, chunk_size=chunk_size,
    )


class _DIRNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _backbone()
        self.head = MultiExpertHead(FEATURES, num_groups=4, dtype=torch.float64)

    def forward(self, x: Tensor) -> tuple[Tensor, Any]:
        features = self.backbone(x)
        return features, self.head(features)


def _dir_data() -> tuple[Tensor, Tensor, GroupBinner]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(sum(DIR_SIZES), IN, generator=g, dtype=torch.float64)
    target = torch.randn(sum(DIR_SIZES), generator=g, dtype=torch.float64).exp()
    return x, target, GroupBinner(4).fit(target)


def _local(t: Tensor, sizes: tuple[int, ...], rank: int) -> Tensor:
    start = sum(sizes[:rank])
    return t[start : start + sizes[rank]]


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# The distributed side: one spawn, every check.


def _worker(rank: int, out_dir: str) -> None:
    init_gloo(rank, out_dir)
    try:
        result: dict[str, Any] = {"is_distributed": is_distributed()}
        result["gather"] = _gather_case(rank)
        for name, case in CONTRAST_CASES.items():
            result[name] = _contrast_case(rank, *case)
        result["dir"] = _dir_case(rank)
        result["binner"] = _binner_case(rank)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _rows() -> Tensor:
    return torch.arange(16.0, dtype=torch.float64).view(8, 2)


def _gather_case(rank: int) -> dict[str, Any]:
    """Rows 0..7 split 5 / 3; rank r's loss weights every gathered row by r + 1."""
    sizes = (5, 3)
    features = _local(_rows(), sizes, rank)
    features = features.clone().requires_grad_()
    all_features, all_labels, offset = gather_batch(features, _local(torch.arange(8), sizes, rank))
    (all_features * (rank + 1)).sum().backward()
    return {"features": all_features.detach(), "labels": all_labels, "offset": offset,
            "grad": features.grad}


def _contrast_case(
    rank: int, sizes: tuple[int, ...], kind: str, similarity: str, chunk_size: int | None
) -> dict[str, Any]:
    x, labels = _batch(sizes, kind)
    x, labels = _local(x, sizes, rank), _local(labels, sizes, rank)
    model = DDP(_backbone())
    loss_fn = {
        r: _contrastive(kind, similarity, r, True, chunk_size) for r in ("none", "sum", "mean")
    }
    out: dict[str, Any] = {}
    with torch.no_grad():
        out["none"] = loss_fn["none"](model.module(x), labels)
    # "sum" / N on each rank: the rank losses add up to the global mean at any sizes.
    loss = loss_fn["sum"](model(x), labels) / sum(sizes)
    loss.backward()
    out["sum_over_n"], out["sum_over_n_grads"] = loss.detach(), _grads(model.module)
    if len(set(sizes)) == 1:
        model.zero_grad()
        loss = loss_fn["mean"](model(x), labels)
        loss.backward()
        out["mean"], out["mean_grads"] = loss.detach(), _grads(model.module)
    return out


def _dir_case(rank: int) -> dict[str, Any]:
    x, target, binner = _dir_data()
    model = DDP(_DIRNet())
    criterion = GroupDIRLoss(binner, gather_distributed=True, validate=True)
    features, output = model(_local(x, DIR_SIZES, rank))
    parts = criterion(output, features, _local(target, DIR_SIZES, rank))
    parts.loss.backward()
    return {"loss": parts.loss.detach(), "grc": parts.grc, "grads": _grads(model.module)}


def _binner_case(rank: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    binner = GroupBinner(4)
    if rank == 0:
        binner.fit(torch.linspace(0.0, 3.0, 50) ** 2)
    broadcast_binner(binner)
    out.update(fitted=binner.fitted, state={k: v.clone() for k, v in binner.state_dict().items()})
    check_binner_consistent(binner)  # equal edges: passes on every rank
    if rank == 1:
        binner.edges[2] += 0.25
    try:
        check_binner_consistent(binner)
    except RuntimeError as error:
        out["mismatch_error"] = str(error)
    unfitted = GroupBinner(4)
    try:
        broadcast_binner(unfitted)
    except RuntimeError as error:
        out["unfitted_error"] = str(error)
    try:
        check_binner_consistent(GroupBinner(3 + rank))
    except RuntimeError as error:
        out["num_groups_error"] = str(error)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each rank of the 2-process gloo run saved, in rank order."""
    out_dir = tmp_path_factory.mktemp("ddp")
    return spawn_ranks(_worker, out_dir)


# ---------------------------------------------------------------------------------------
# Single-process references on the concatenated batch.


def _single_contrast(
    sizes: tuple[int, ...], kind: str, similarity: str
) -> tuple[Tensor, Tensor, list[Tensor]]:
    x, labels = _batch(sizes, kind)
    model = _backbone()
    with torch.no_grad():
        per_anchor = _contrastive(kind, similarity, "none", False)(model(x), labels)
    loss = _contrastive(kind, similarity, "mean", False)(model(x), labels)
    loss.backward()
    return per_anchor, loss.detach(), _grads(model)


def _close(actual: Any, expected: Any) -> None:
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=ATOL)


@pytest.mark.slow
def test_spawned_group_is_distributed(ranks: list[dict[str, Any]]) -> None:
    assert [r["is_distributed"] for r in ranks] == [True, True]


@pytest.mark.slow
def test_gather_batch_unequal_sizes(ranks: list[dict[str, Any]]) -> None:
    """Rank order, offsets, and each local row's gradient summed over the ranks (1 + 2)."""
    for rank, r in enumerate(ranks):
        g = r["gather"]
        assert g["offset"] == (0, 5)[rank]
        torch.testing.assert_close(g["features"], _rows())
        torch.testing.assert_close(g["labels"], torch.arange(8))
        torch.testing.assert_close(g["grad"], torch.full_like(g["grad"], 3.0))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CONTRAST_CASES))
def test_contrastive_per_anchor_matches_single_process(
    ranks: list[dict[str, Any]], case: str
) -> None:
    sizes, kind, similarity, _ = CONTRAST_CASES[case]
    per_anchor, _, _ = _single_contrast(sizes, kind, similarity)
    assert [r[case]["none"].shape[0] for r in ranks] == list(sizes)
    _close(torch.cat([r[case]["none"] for r in ranks]), per_anchor)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CONTRAST_CASES))
def test_contrastive_sum_over_global_n_matches_single_process(
    ranks: list[dict[str, Any]], case: str
) -> None:
    """sum_r (local "sum" / N) = single mean; W * DDP-averaged grads = single grads."""
    sizes, kind, similarity, _ = CONTRAST_CASES[case]
    _, loss, grads = _single_contrast(sizes, kind, similarity)
    _close(sum(r[case]["sum_over_n"] for r in ranks), loss)
    for r in ranks:
        _close([WORLD * g for g in r[case]["sum_over_n_grads"]], grads)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c, v in CONTRAST_CASES.items() if len(set(v[0])) == 1])
def test_contrastive_mean_equal_sizes_matches_single_process(
    ranks: list[dict[str, Any]], case: str
) -> None:
    """mean_r (local "mean") = single mean; DDP-averaged grads = single grads."""
    sizes, kind, similarity, _ = CONTRAST_CASES[case]
    _, loss, grads = _single_contrast(sizes, kind, similarity)
    _close(sum(r[case]["mean"] for r in ranks) / WORLD, loss)
    for r in ranks:
        _close(r[case]["mean_grads"], grads)


@pytest.mark.slow
def test_group_dir_loss_step_matches_single_process(ranks: list[dict[str, Any]]) -> None:
    """The whole GroupDIRLoss step, equal sizes: rank-mean loss and DDP grads = single."""
    x, target, binner = _dir_data()
    model = _DIRNet()
    features, output = model(x)
    parts = GroupDIRLoss(binner, validate=True)(output, features, target)
    parts.loss.backward()
    _close(sum(r["dir"]["grc"] for r in ranks) / WORLD, parts.grc)
    _close(sum(r["dir"]["loss"] for r in ranks) / WORLD, parts.loss.detach())
    for r in ranks:
        _close(r["dir"]["grads"], _grads(model))


@pytest.mark.slow
def test_broadcast_binner_fills_an_unfitted_rank(ranks: list[dict[str, Any]]) -> None:
    assert [r["binner"]["fitted"] for r in ranks] == [True, True]
    state0, state1 = (r["binner"]["state"] for r in ranks)
    assert state0.keys() == state1.keys()
    for key in state0:
        # equal_nan: fit_range is NaN where low / high are unset
        torch.testing.assert_close(state1[key], state0[key], rtol=0.0, atol=0.0, equal_nan=True)


@pytest.mark.slow
def test_check_binner_consistent_names_the_differing_rank(ranks: list[dict[str, Any]]) -> None:
    # The first call (equal edges) raised nothing, or the worker would have failed.
    for r in ranks:
        assert re.search(r"ranks \[1\]", r["binner"].get("mismatch_error", "no error"))


@pytest.mark.slow
def test_broadcast_unfitted_binner_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert "expected a fitted GroupBinner on rank 0" in r["binner"].get("unfitted_error", "")


@pytest.mark.slow
def test_check_binner_consistent_reports_num_groups_mismatch(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert "num_groups on every rank, got [3, 4]" in r["binner"].get("num_groups_error", "")


# ---------------------------------------------------------------------------------------
# Without a process group (this process): the flag changes nothing.


@pytest.mark.parametrize("kind", ["int", "int-inferred", "float"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_flag_without_process_group_is_identical(kind: str, reduction: str) -> None:
    assert not is_distributed()
    x, labels = _batch((5, 3), kind)
    results: list[tuple[Tensor, list[Tensor]]] = []
    for gather in (False, True):
        model = _backbone()
        loss = _contrastive(kind, "l2", reduction, gather)(model(x), labels)
        loss.sum().backward()
        results.append((loss.detach(), _grads(model)))
    torch.testing.assert_close(results[1], results[0], rtol=0.0, atol=0.0)


def test_binner_helpers_are_noops_without_process_group() -> None:
    binner = GroupBinner(3)
    broadcast_binner(binner)  # nothing to copy from: still unfitted, no error
    check_binner_consistent(binner)
    assert not binner.fitted
