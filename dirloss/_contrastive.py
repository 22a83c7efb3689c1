r"""The entry point of the group contrastive loss (private; the public forms are
:func:`dirloss.functional.group_contrastive_loss` and :class:`dirloss.GroupContrastiveLoss`):
input checks, the choice of kernel (:mod:`._grouped` for integer groups, :mod:`._continuous`
for real-valued labels) and the call, for one process or for the local anchors of a
gathered batch under DDP; the options of the official Rank-N-Contrast code: unnormalised
features (:func:`_unnormalised`, plain autograd) and several views per sample
(:func:`flatten_views`, ``view_dim``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _continuous, _grouped, _views
from ._validation import (
    check_group_range,
    check_num_groups,
    check_positive,
    check_same_device,
    reduce,
    without_autocast,
)

SIMILARITIES = ("l2", "cosine")


def loss(
    features: Tensor,
    labels: Tensor,
    num_groups: int | None,
    similarity: str,
    temperature: float,
    chunk_size: int | None,
    reduction: str,
    *,
    offset: int = 0,
    n_anchors: int | None = None,
    normalize: bool = True,
) -> Tensor:
    """The loss of the anchors ``features[offset : offset + n_anchors]`` (all rows by
    default) against every row, for (N, D) inputs passed by :func:`check_inputs` (views
    flattened by :func:`flatten_views`). Under DDP, ``features`` and ``labels`` are the
    gathered batch and the anchors this rank's slice; without ``num_groups``, G is then
    inferred from the gathered labels, the same on every rank. ``normalize=False`` takes
    :func:`_unnormalised` (no host read: G is not needed there)."""
    if not normalize:
        return _unnormalised_loss(
            features, labels, num_groups, temperature, reduction, offset, n_anchors
        )
    x, y, num_groups = _prepare(features, labels, num_groups)
    n = x.shape[0] - offset if n_anchors is None else n_anchors
    if x.shape[0] == 0:  # an empty batch: a zero that stays in the graph
        return reduce(x.sum(dim=1) * 0.0, reduction)
    return _kernel_means(
        x, y, offset, n, num_groups, similarity, temperature, chunk_size, reduction
    )


def check_inputs(
    features: Tensor,
    labels: Tensor,
    num_groups: int | None,
    temperature: float,
    similarity: str,
    chunk_size: int | None = None,
    normalize: bool = True,
    view_dim: int | None = None,
) -> None:
    """Validate the hyper-parameters and the shapes, dtypes and devices of a batch:
    features (N, D), or V views of each sample along ``view_dim``."""
    check_positive("temperature", temperature)
    if similarity not in SIMILARITIES:
        raise ValueError(f"expected similarity in {SIMILARITIES}, got {similarity!r}")
    if not isinstance(normalize, bool):
        raise ValueError(f"expected normalize to be a bool, got {normalize!r}")
    if not normalize and similarity == "cosine":
        raise ValueError(
            "expected similarity='l2' with normalize=False (the cosine is the same with or "
            "without normalisation), got similarity='cosine'"
        )
    if not normalize and chunk_size is not None:
        raise ValueError(
            f"expected chunk_size=None with normalize=False (only the fused group kernel of "
            f"normalised features is chunked), got chunk_size={chunk_size!r}"
        )
    _views.check_view_dim(view_dim)
    rank = 2 if view_dim is None else 3
    if features.dim() != rank or not features.dtype.is_floating_point:
        hint = " (pass view_dim=1 for (N, V, D) views)" if features.dim() == 3 else ""
        raise ValueError(
            f"expected floating features of shape {_views.feature_shape(view_dim)}{hint}, "
            f"got {tuple(features.shape)} {features.dtype}"
        )
    n = _views.num_samples(features, view_dim)
    if labels.dim() == 0 or labels.dim() > 2 or labels.shape[0] != n:
        raise ValueError(
            f"expected labels of shape ({n},) or ({n}, L) to "
            f"match features {tuple(features.shape)}, got {tuple(labels.shape)}"
        )
    check_same_device("features", features, "labels", labels)
    if num_groups is not None:
        check_num_groups(num_groups)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(
                f"expected chunk_size to be a positive int or None, got {chunk_size!r}"
            )
    if uses_group_kernel(labels, num_groups):
        if labels.dim() == 2 and labels.shape[1] != 1:
            raise ValueError(
                f"expected group labels of shape (N,) or (N, 1), got {tuple(labels.shape)}"
            )
        if num_groups is not None:  # always, here (narrows the type for mypy)
            check_group_range("labels", labels, num_groups)
    elif chunk_size is not None:
        raise ValueError(
            "expected integer group labels with num_groups when chunk_size is set (only the "
            f"fused group kernel is chunked), got {labels.dtype} labels, num_groups={num_groups}"
        )


def flatten_views(
    features: Tensor, labels: Tensor, view_dim: int | None
) -> tuple[Tensor, Tensor]:
    """Checked views along ``view_dim`` -> (N V, D) samples, each view with its sample's
    label (the official Rank-N-Contrast code concatenates its (N, 2, D) views the same
    way; the loss does not depend on the order of the samples); (N, D) passes through."""
    if view_dim is None:
        return features, labels
    views = features.shape[view_dim]
    return _views.flatten(features, view_dim), _views.repeat_per_view(labels, views)


def unflatten_views(loss: Tensor, n: int, view_dim: int | None) -> Tensor:
    """The per-view losses (N V,) of ``reduction="none"`` back to the views' layout."""
    return loss if loss.dim() == 0 else _views.unflatten(loss, n, view_dim)


def _unnormalised_loss(
    features: Tensor,
    labels: Tensor,
    num_groups: int | None,
    temperature: float,
    reduction: str,
    offset: int,
    n_anchors: int | None,
) -> Tensor:
    """:func:`_unnormalised` for inputs passed by :func:`check_inputs`, reduced."""
    work_dtype = torch.promote_types(features.dtype, torch.float32)
    x = features.to(work_dtype)
    n = x.shape[0] - offset if n_anchors is None else n_anchors
    if num_groups is not None and uses_group_kernel(labels, num_groups):
        labels = labels.reshape(-1).clamp(0, num_groups - 1)  # as the group kernel reads them
    y = labels.reshape(labels.shape[0], -1 if labels.numel() else 1).to(work_dtype)
    if x.shape[0] == 0:
        return reduce(x.sum(dim=1) * 0.0, reduction)
    with without_autocast(x.device.type):
        return reduce(_unnormalised(x, y, offset, n, temperature), reduction)


def _unnormalised(x: Tensor, y: Tensor, offset: int, n_anchors: int, temperature: float) -> Tensor:
    r"""Per-anchor means (n,) of the Rank-N-Contrast loss on raw features, as the official
    code computes it: :math:`s_{ik} = -\lVert x_i - x_k \rVert_2 / T` without
    normalisation, :math:`d_{ik}` the L1 label distance, exact ties.

    Plain autograd, O(n N log N): each anchor's row sorted by label distance (the anchor
    itself first, alone), :math:`\log \sum_{k : d_{ik} \ge d_{ij}} e^{s_{ik}}` as a
    reversed ``logcumsumexp`` read at the first position of ``j``'s run of equal distances.
    The distances are per-pair differences (``cdist`` without the matmul form), so no
    cancellation for large feature norms.
    """
    n_total = x.shape[0]
    anchors = x.narrow(0, offset, n_anchors)
    s = torch.cdist(anchors, x, compute_mode="donot_use_mm_for_euclid_dist").div(-temperature)
    y_a = y.narrow(0, offset, n_anchors)
    d = torch.cdist(y_a, y, p=1.0) if y.shape[1] > 1 else (y_a - y.T).abs()
    own = torch.arange(offset, offset + n_anchors, device=x.device)[:, None]
    d = d.scatter(1, own, -1.0)  # the anchor sorts first, alone in its run
    d, order = d.sort(dim=1, stable=True)
    s = s.gather(1, order)
    tail = s.flip(1).logcumsumexp(dim=1).flip(1)  # log sum over positions >= p
    position = torch.arange(n_total, device=x.device).expand_as(order)
    new_run = torch.ones_like(d, dtype=torch.bool)
    new_run[:, 1:] = d[:, 1:] != d[:, :-1]
    start = torch.where(new_run, position, 0).cummax(dim=1).values
    pair = tail.gather(1, start) - s  # l_ij at j's sorted position; position 0 is i itself
    return pair[:, 1:].sum(dim=1) / max(n_total - 1, 1)


def _integer_labels(labels: Tensor) -> bool:
    return not (labels.dtype.is_floating_point or labels.dtype.is_complex)


def uses_group_kernel(labels: Tensor, num_groups: int | None) -> bool:
    return _integer_labels(labels) and num_groups is not None


# Integer labels without num_groups take the fused kernel when they span at most
# max(128, 8 sqrt(N)) values. Its extra work grows as N G^2 ((N, G) tables against (G, 2G)
# ones) besides the N x N by N x G matmul, the sort kernel's as N^2 log N, so the crossover
# moves up with N. Measured (forward + backward, D = 128, CPU; grouped / continuous time):
# N = 256: 0.77x at G = 128, 1.21x at 256; N = 1024: 0.80x at 256, 1.30x at 512;
# N = 4096: 0.95x at 512, 1.45x at 1024. 8 sqrt(N) (128, 256 and 512 there) stays on the
# group kernel's side of the crossover. The floor of 128 keeps small integer ranges
# (binned labels, ages) on the group kernel in small batches too, where both kernels cost
# about a millisecond.
_MAX_INFERRED_GROUPS = 128


def _max_inferred_groups(n: int) -> int:
    """The widest label span that takes the group kernel for a batch of ``n``."""
    return max(_MAX_INFERRED_GROUPS, int(8 * math.sqrt(n)))


def _inferred_groups(labels: Tensor) -> tuple[Tensor, int] | None:
    """For integer labels of shape (N,) or (N, 1) without ``num_groups``: the labels shifted
    to start at 0 and ``G = max - min + 1`` (at least 2), read from the batch with one host
    read. None where the continuous kernel applies instead: float, bool or (N, L > 1)
    labels, an empty batch, a span over :func:`_max_inferred_groups`, or under
    ``torch.compile`` (a host read would break the graph)."""
    if not _integer_labels(labels) or labels.dtype == torch.bool:
        return None
    if labels.numel() != labels.shape[0]:  # (N, L > 1)
        return None
    if labels.numel() == 0 or _grouped._is_compiling():
        return None
    flat = labels.reshape(-1).long()
    low, high = torch.stack(torch.aminmax(flat)).tolist()  # the one host read
    span = high - low + 1
    if span > _max_inferred_groups(flat.shape[0]):
        return None
    return flat - low, max(span, 2)


def _prepare(
    features: Tensor, labels: Tensor, num_groups: int | None
) -> tuple[Tensor, Tensor, int | None]:
    """Cast checked features to the working dtype and shape the labels for
    :func:`_kernel_means` (the kernels normalise); the returned ``num_groups`` is None when
    the continuous kernel applies. Without ``num_groups``, integer labels get G inferred
    from these labels (:func:`_inferred_groups`): under DDP, pass the gathered batch, so
    that every rank infers the same G."""
    work_dtype = torch.promote_types(features.dtype, torch.float32)
    x = features.to(work_dtype)
    if num_groups is not None and uses_group_kernel(labels, num_groups):
        return x, labels.reshape(-1).long().clamp(0, num_groups - 1), num_groups
    inferred = _inferred_groups(labels) if num_groups is None else None
    if inferred is not None:
        return x, inferred[0], inferred[1]
    return x, labels.reshape(labels.shape[0], -1 if labels.numel() else 1).to(work_dtype), None


def _kernel_means(
    x: Tensor,
    y: Tensor,
    offset: int,
    n_anchors: int,
    num_groups: int | None,
    similarity: str,
    temperature: float,
    chunk_size: int | None = None,
    reduction: str = "none",
) -> Tensor:
    """Per-anchor means of ``l_ij`` over ``j`` (n,) for the anchors
    ``x[offset : offset + n_anchors]`` (raw features of the working dtype; the kernels
    normalise them), reduced by ``reduction`` (the group kernel reduces inside: no extra
    autograd node)."""
    with without_autocast(x.device.type):
        if num_groups is not None:
            return _grouped.grouped(
                x, y, offset, n_anchors, num_groups, similarity, temperature, chunk_size,
                reduction,
            )
        per_anchor = _continuous.continuous(x, y, offset, n_anchors, similarity, temperature)
        return reduce(per_anchor, reduction)
