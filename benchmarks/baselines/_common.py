"""Shape helpers shared by the baselines."""

from __future__ import annotations

from torch import Tensor


def _as_column(x: Tensor, name: str) -> Tensor:
    """(N,) or (N, D) -> (N, D)."""
    if x.dim() == 1:
        return x[:, None]
    if x.dim() == 2:
        return x
    raise ValueError(f"expected {name} of shape (N,) or (N, D), got {tuple(x.shape)}")

