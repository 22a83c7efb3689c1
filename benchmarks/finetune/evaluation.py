"""Scores of the fine-tuning benchmark, in score units (0..5) on the published STS-B-DIR
regions: :func:`dirloss.metrics.shot_metrics`, plus Pearson and the per-bin errors of
:mod:`benchmarks.evaluation` (the accuracy benchmark's, written once)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.data import stsb_shot_kwargs
from benchmarks.evaluation import bin_counts, pearson, per_bin_error
from dirloss.metrics import shot_metrics

__all__ = ["SplitMetrics", "evaluate", "overall_errors", "score_bin_counts"]

Region = dict[str, float]
"""``{"mae", "mse", "gm", "count"}`` of one region, as :func:`shot_metrics` gives it."""


@dataclasses.dataclass(frozen=True)
class SplitMetrics:
    """The ``"val"`` / ``"test"`` entry of a result: per region, bMAE, Pearson, per-bin."""

    all: Region
    many: Region
    medium: Region
    few: Region
    bmae: float
    pearson: float
    per_bin_mae: list[float]
    per_bin_mse: list[float]

    def region(self, name: str) -> Region:
        return {"all": self.all, "many": self.many, "medium": self.medium, "few": self.few}[name]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SplitMetrics:
        return cls(**d)


def evaluate(pred: np.ndarray, target: np.ndarray, train_target: np.ndarray) -> SplitMetrics:
    """Shot metrics on the published regions, Pearson, and the per-bin MAE / MSE (50 bins)."""
    kwargs = stsb_shot_kwargs()
    m = shot_metrics(pred, target, train_target, **kwargs)
    edges = kwargs["bin_edges"]
    return SplitMetrics(m["all"], m["many"], m["medium"], m["few"], m["bmae"],
                        pearson(pred, target), per_bin_error(pred, target, edges),
                        per_bin_error(pred, target, edges, squared=True))


def overall_errors(pred: np.ndarray, target: np.ndarray,
                   train_target: np.ndarray) -> tuple[float, float]:
    """Overall ``(MAE, MSE)`` (NaN for non-finite predictions, e.g. a diverged epoch)."""
    if not np.all(np.isfinite(pred)):
        return float("nan"), float("nan")
    m = shot_metrics(pred, target, train_target, **stsb_shot_kwargs())["all"]
    return float(m["mae"]), float(m["mse"])


def score_bin_counts(scores: np.ndarray) -> list[int]:
    """Scores per 0.1-score bin (50 bins), binned as :func:`shot_metrics` bins."""
    return bin_counts(scores, np.asarray(stsb_shot_kwargs()["bin_edges"])).tolist()
