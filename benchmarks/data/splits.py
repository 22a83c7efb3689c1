"""The common return type of the data loaders: :class:`Splits`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

__all__ = ["Splits"]


@dataclasses.dataclass
class Splits:
    r"""Train / validation / test arrays of one data set, float32.

    Targets are stored in *model units* :math:`t = (y - \mu) / \sigma`; :meth:`unscale` maps
    a prediction or target back to label units, :math:`y = \sigma t + \mu`. Loaders that do
    not scale the target (STS-B, synthetic) set ``y_mean = 0`` and ``y_std = 1``.

    Attributes:
        name: the data set's name.
        x_train, x_val, x_test: features, shape (N, D).
        y_train, y_val, y_test: targets in model units, shape (N,).
        y_mean, y_std: the target scaling (:math:`\mu`, :math:`\sigma`).
        info: free-form notes from the loader (imputation, feature names, cache path, ...).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_mean: float = 0.0
    y_std: float = 1.0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    def unscale(self, y: Any) -> Any:
        """Model units to label units: ``y * y_std + y_mean`` (array or tensor)."""
        return y * self.y_std + self.y_mean

    def scale(self, y: Any) -> Any:
        """Label units to model units: ``(y - y_mean) / y_std`` (array or tensor)."""
        return (y - self.y_mean) / self.y_std

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in ("train", "val", "test"):
            raise ValueError(f"expected split 'train', 'val' or 'test', got {which!r}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def tensors(
        self, device: str | torch.device | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"train": (x, y), "val": ..., "test": ...}`` as float32 torch tensors."""
        return {
            s: tuple(torch.as_tensor(a, device=device) for a in self.split(s))  # type: ignore[misc]
            for s in ("train", "val", "test")
        }
