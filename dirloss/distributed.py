"""torch.distributed helpers: gathering a batch across ranks, keeping binners in step."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .binning import GroupBinner

__all__ = ["is_distributed", "gather_batch", "broadcast_binner", "check_binner_consistent"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_ints(n: int, device: torch.device) -> list[int]:
    """Every rank's ``n`` (a size, a flag), in rank order (a collective; syncs with the host)."""
    size = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _gather_rows(x: Tensor, sizes: list[int]) -> Tensor:
    """All-gather ``x`` (``sizes[rank]`` rows here) into the (sum(sizes), ...) global tensor.

    The collective needs equal shapes, so the rows are padded to ``max(sizes)`` and trimmed.
    """
    rows = max(sizes)
    padded = torch.cat([x, x.new_zeros((rows - x.shape[0],) + x.shape[1:])]).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """:func:`_gather_rows` whose backward sends each rank the gradient of its own rows.

    Every rank's loss may depend on every rank's rows, so the gradient of a local row is the
    sum over ranks of their gradients for it: one ``all_reduce`` of the global gradient,
    then this rank's slice.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        rank = dist.get_rank()
        ctx.lo = sum(sizes[:rank])
        ctx.hi = ctx.lo + sizes[rank]
        return _gather_rows(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad)
        return grad[ctx.lo : ctx.hi], None


def gather_batch(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """All-gather features (with gradients) and labels from every rank.

    A collective: call it on every rank. Local batches may differ in size (the last batch of
    an epoch); the sizes are exchanged first. The gradient of a gathered row flows back to
    the rank that owns it, summed over the ranks whose loss used it; under
    ``DistributedDataParallel``, which averages, the parameters then get the gradient of the
    rank-averaged loss.

    Returns:
        ``(all_features, all_labels, offset)``: the global batch in rank order and the row of
        this rank's first local sample in it.
    """
    sizes = _all_ints(features.shape[0], features.device)
    all_features = _GatherWithGrad.apply(features, sizes)  # type: ignore[no-untyped-call]
    all_labels = _gather_rows(labels.detach(), sizes)
    return all_features, all_labels, sum(sizes[: dist.get_rank()])


def _comm_device(t: Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; a CPU buffer travels through the current GPU."""
    if dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _check_num_groups_match(binner: GroupBinner) -> None:
    groups = [s - 1 for s in _all_ints(binner.edges.numel(), _comm_device(binner.edges))]
    if len(set(groups)) > 1:
        raise RuntimeError(
            f"expected the same GroupBinner num_groups on every rank, got {groups} (in rank "
            "order)"
        )


def broadcast_binner(binner: GroupBinner, src: int = 0) -> None:
    """Copy a fitted :class:`~dirloss.GroupBinner`'s edges and counts from rank ``src``.

    Fit the binner on rank ``src`` (the others may be unfitted), then call this on every
    rank: a collective. A no-op when not distributed.

    Raises:
        RuntimeError: on every rank, if the ranks' ``num_groups`` differ or rank ``src``'s
            binner is not fitted.
    """
    if not is_distributed():
        return
    _check_num_groups_match(binner)
    state = {k: v.to(_comm_device(v), copy=True) for k, v in binner.state_dict().items()}
    for buffer in state.values():
        dist.broadcast(buffer, src)
    if not torch.isfinite(state["edges"]).all():
        raise RuntimeError(
            f"expected a fitted GroupBinner on rank {src}, got one without edges: call "
            f"binner.fit(train_labels) on rank {src} before broadcast_binner"
        )
    binner.load_state_dict(state)  # copies back to the binner's device, marks it fitted


def check_binner_consistent(binner: GroupBinner) -> None:
    """Raise a RuntimeError naming the ranks whose edges differ from rank 0's.

    A collective: call it on every rank; every rank raises. A no-op when not distributed.
    """
    if not is_distributed():
        return
    _check_num_groups_match(binner)
    edges = binner.edges.detach().to(_comm_device(binner.edges), copy=True)
    reference = edges.clone()
    dist.broadcast(reference, 0)
    same = (edges == reference) | (edges.isnan() & reference.isnan())
    flags = _all_ints(int(not bool(same.all())), edges.device)
    bad = [rank for rank, flag in enumerate(flags) if flag]
    if bad:
        raise RuntimeError(
            f"GroupBinner edges differ across ranks: expected every rank to match rank 0, "
            f"got different edges on ranks {bad}; fit on one rank and call broadcast_binner"
        )
