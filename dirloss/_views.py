"""Several augmented views per sample, for the contrastive losses (private).

A batch of views has one more dimension than a batch of samples, at ``view_dim``: (N, V, D)
with ``view_dim=1`` (the layout of the official Rank-N-Contrast and SupCon code) or (V, N, D)
with ``view_dim=0`` (``torch.stack`` of the views). The losses contrast the N V views as
N V samples, each with its sample's label; the order of the samples does not matter to
them, so the views are flattened sample-major (no copy for ``view_dim=1``).
"""

from __future__ import annotations

from torch import Tensor

VIEW_DIMS = (None, 0, 1)


def check_view_dim(view_dim: object) -> None:
    if view_dim not in VIEW_DIMS or isinstance(view_dim, bool):
        raise ValueError(f"expected view_dim in {VIEW_DIMS}, got {view_dim!r}")


def feature_shape(view_dim: int | None) -> str:
    """The expected layout of the features, for error messages."""
    return {None: "(N, D)", 0: "(V, N, D)", 1: "(N, V, D)"}[view_dim]


def num_samples(features: Tensor, view_dim: int | None) -> int:
    """N, the number of samples (not views), of features already checked for their rank."""
    return features.shape[1] if view_dim == 0 else features.shape[0]


def to_sample_major(t: Tensor, view_dim: int | None) -> Tensor:
    """(V, N, ...) -> (N, V, ...) for ``view_dim=0``; other layouts pass through."""
    return t.movedim(0, 1) if view_dim == 0 else t


def flatten(t: Tensor, view_dim: int | None) -> Tensor:
    """Views of shape (N, V, ...) / (V, N, ...) to (N V, ...), sample-major."""
    if view_dim is None:
        return t
    t = to_sample_major(t, view_dim)
    return t.reshape((t.shape[0] * t.shape[1],) + tuple(t.shape[2:]))


def repeat_per_view(t: Tensor, views: int) -> Tensor:
    """Per-sample values (N, ...) to (N V, ...), each repeated for its V views."""
    return t.repeat_interleave(views, dim=0) if views != 1 else t


def unflatten(per_view: Tensor, n: int, view_dim: int | None) -> Tensor:
    """Per-view values (N V,) back to the features' layout, (N, V) or (V, N)."""
    if view_dim is None:
        return per_view
    out = per_view.reshape(n, -1)
    return out.movedim(1, 0) if view_dim == 0 else out
