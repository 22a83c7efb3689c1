r"""FeatureDistributionSmoothing on 2 gloo processes equals one process on the whole data.

Each rank feeds its shard of every epoch (unequal sizes, several ``update`` calls, bins that
only one rank sees) and calls ``step_epoch``, which all-reduces the per-bin sums. Every
rank must then hold the statistics of the concatenated data, as one process computes them,
and calibrate alike. A rank that kept its own shard's statistics (no all-reduce) would
differ: the last test checks that the comparison can tell.

The spawn follows tests/test_distributed.py: a rendezvous file in this run's tmp dir (no
TCP port), a timeout on each collective and one on the whole spawn, stragglers killed.
Float64 throughout; only the summation order differs (~1e-15), compared to 1e-10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

# Imported before any process group exists, as in tests/test_distributed.py (see there).
import torch.distributed.nn  # noqa: F401
from _gloo import init_gloo, spawn_ranks
from torch import Tensor

from dirloss import FeatureDistributionSmoothing
from dirloss.distributed import is_distributed

ATOL = 1e-10
FEATURES = 3
EDGES = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
SIZES = ((23, 11), (9, 17))  # per epoch, rank 0 then rank 1


def _epoch(e: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + e)
    n = sum(SIZES[e])
    z = torch.randn(n, FEATURES, generator=g, dtype=torch.float64) * 1.5 + 0.5
    y = torch.rand(n, generator=g, dtype=torch.float64) * 5
    y[: SIZES[e][0]] = y[: SIZES[e][0]].clamp_max(3.9)  # rank 0 never sees the last bin
    return z, y


def _query() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    return (torch.randn(12, FEATURES, generator=g, dtype=torch.float64),
            torch.rand(12, generator=g, dtype=torch.float64) * 5)


def _fds() -> FeatureDistributionSmoothing:
    return FeatureDistributionSmoothing(FEATURES, bin_edges=EDGES)


def _shard(t: Tensor, sizes: tuple[int, ...], rank: int) -> Tensor:
    start = sum(sizes[:rank])
    return t[start : start + sizes[rank]]


def _train(fds: FeatureDistributionSmoothing, rank: int | None) -> dict[str, Any]:
    """Two epochs; ``rank`` None feeds the whole data. Returns the state and a forward."""
    for e in range(len(SIZES)):
        z, y = _epoch(e)
        if rank is not None:
            z, y = _shard(z, SIZES[e], rank), _shard(y, SIZES[e], rank)
        for zc, yc in zip(z.chunk(3), y.chunk(3)):
            fds.update(zc, yc)
        fds.step_epoch()
    state = {k: v.clone() for k, v in fds.state_dict().items()}
    return {"state": state, "out": fds.train()(*_query())}


def _worker(rank: int, out_dir: str) -> None:
    init_gloo(rank, out_dir)
    try:
        result = {"is_distributed": is_distributed(), **_train(_fds(), rank)}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("fds_ddp")
    return spawn_ranks(_worker, out_dir)


@pytest.mark.slow
def test_statistics_are_all_reduced_not_per_rank(ranks: list[dict[str, Any]]) -> None:
    single = _train(_fds(), None)
    for r in ranks:
        assert r["is_distributed"]
        assert r["state"].keys() == single["state"].keys()
        for name, value in single["state"].items():
            torch.testing.assert_close(r["state"][name], value, rtol=0, atol=ATOL, msg=name)
        torch.testing.assert_close(r["out"], single["out"], rtol=0, atol=ATOL)


@pytest.mark.slow
def test_a_rank_alone_would_differ(ranks: list[dict[str, Any]]) -> None:
    """Without the all-reduce, rank 0's statistics (its shard only) are not the global ones."""
    local = _train(_fds(), 0)
    assert local["state"]["num_samples_tracked"][-1] == 0  # never saw the last bin
    assert not torch.allclose(local["state"]["running_mean"], ranks[0]["state"]["running_mean"])
