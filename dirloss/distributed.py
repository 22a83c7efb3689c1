"""torch.distributed helpers: gathering a batch across ranks, keeping binners in step."""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor

__all__ = ["is_distributed", "gather_batch", "broadcast_binner", "check_binner_consistent"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_sizes(n: int, device: torch.device) -> List[int]:
    size = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    return torch.cat([x, x.new_zeros((rows - x.shape[0],) + x.shape[1:])])


def gather_batch(features: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor, int]:
    """All-gather features (with gradients) and labels from every rank.

    Local batches may differ in size (the last batch of an epoch): sizes are exchanged first
    and the rows padded for the collective, then trimmed. Gradients of the gathered features
    flow back to each rank's local slice (summed over the ranks that used them).

    Returns:
        ``(all_features, all_labels, offset)``: the global batch in rank order and the row of
        this rank's first local sample in it.
    """
    sizes = _all_sizes(features.shape[0], features.device)
    rows, rank = max(sizes), dist.get_rank()
    gathered = dist_nn.all_gather(_pad_rows(features, rows))
    label_parts = [torch.empty_like(_pad_rows(labels, rows)) for _ in sizes]
    dist.all_gather(label_parts, _pad_rows(labels, rows))
    all_features = torch.cat([part[:n] for part, n in zip(gathered, sizes)])
    all_labels = torch.cat([part[:n] for part, n in zip(label_parts, sizes)])
    return all_features, all_labels, sum(sizes[:rank])


def broadcast_binner(binner: torch.nn.Module, src: int = 0) -> None:
    """Copy a fitted :class:`~dirloss.GroupBinner`'s edges and counts from rank ``src``.

    Fit the binner on rank ``src`` only (or on every rank), then call this on every rank; a
    no-op when not distributed.
    """
    if not is_distributed():
        return
    for buffer in (binner.edges, binner.counts, binner.centers):
        dist.broadcast(buffer, src)
    binner._fitted = bool(torch.isfinite(binner.edges).all())


def check_binner_consistent(binner: torch.nn.Module) -> None:
    """Raise a RuntimeError naming the ranks whose edges differ from rank 0's.

    A collective: call it on every rank. A no-op when not distributed.
    """
    if not is_distributed():
        return
    edges = binner.edges.detach().clone()
    reference = edges.clone()
    dist.broadcast(reference, 0)
    differs = torch.tensor(
        [0.0 if torch.equal(edges, reference) else 1.0], device=edges.device
    )
    flags = [torch.zeros_like(differs) for _ in range(dist.get_world_size())]
    dist.all_gather(flags, differs)
    bad = [rank for rank, flag in enumerate(flags) if flag.item()]
    if bad:
        raise RuntimeError(
            f"GroupBinner edges differ across ranks: expected every rank to match rank 0, "
            f"got different edges on ranks {bad}; fit on one rank and call broadcast_binner"
        )
