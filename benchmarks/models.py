"""The accuracy benchmark's model: an MLP backbone (:func:`mlp`) and a head, joined in a
:class:`Regressor`. Which head a method uses is :func:`benchmarks.methods.build_model`'s
choice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dirloss import MultiExpertHead

__all__ = ["Regressor", "mlp"]


def mlp(in_features: int, hidden: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """``in -> hidden[0] -> ... -> hidden[-1]``, each Linear followed by ReLU (and dropout)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers)


class Regressor(nn.Module):
    """A backbone and a head.

    ``forward`` returns ``(features, head_output)``: the head output is an ``(N, 1)`` tensor
    for a linear head and a :class:`~dirloss.HeadOutput` for a :class:`~dirloss.MultiExpertHead`
    (``groups`` then selects the true group's expert, as in training).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor, groups: Tensor | None = None) -> tuple[Tensor, Any]:
        features = self.backbone(x)
        if isinstance(self.head, MultiExpertHead):
            return features, self.head(features, groups)
        return features, self.head(features)
