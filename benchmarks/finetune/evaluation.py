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
from dirloss.metrics import REGIONS, shot_metrics

__all__ = ["RegionScores", "SplitMetrics", "evaluate", "overall_errors", "score_bin_counts"]

@dataclasses.dataclass(frozen=True)
class RegionScores:
    """The errors of one region (``all``, ``many``, ``medium`` or ``few``), as
    :func:`shot_metrics` gives them: MAE, MSE, geometric mean of the errors, and how many
    pairs (0: NaN errors)."""

    mae: float
    mse: float
    gm: float
    count: int


@dataclasses.dataclass(frozen=True)
class SplitMetrics:
    """The ``"val"`` / ``"test"`` entry of a result: per region, bMAE, Pearson, per-bin."""

    all: RegionScores
    many: RegionScores
    medium: RegionScores
    few: RegionScores
    bmae: float
    pearson: float
    per_bin_mae: list[float]
    per_bin_mse: list[float]

    def region(self, name: str) -> RegionScores:
        return {"all": self.all, "many": self.many, "medium": self.medium, "few": self.few}[name]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SplitMetrics:
        regions = {r: RegionScores(**d[r]) for r in ("all", *REGIONS)}
        return cls(**{**d, **regions})


def evaluate(pred: np.ndarray, target: np.ndarray, train_target: np.ndarray) -> SplitMetrics:
    """Shot metrics on the published regions, Pearson, and the per-bin MAE / MSE (50 bins)."""
    kwargs = stsb_shot_kwargs()
    m = shot_metrics(pred, target, train_target, **kwargs)
    edges = kwargs["bin_edges"]
    return SplitMetrics(
        all=RegionScores(**m["all"]), many=RegionScores(**m["many"]),
        medium=RegionScores(**m["medium"]), few=RegionScores(**m["few"]), bmae=m["bmae"],
        pearson=pearson(pred, target), per_bin_mae=per_bin_error(pred, target, edges),
        per_bin_mse=per_bin_error(pred, target, edges, squared=True),
    )


def overall_errors(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Overall ``(MAE, MSE)`` of a learning curve's point; unlike :func:`shot_metrics` it
    takes non-finite predictions (a diverged epoch gives NaN or inf, it does not raise)."""
    err = pred - target
    return float(np.mean(np.abs(err))), float(np.mean(err**2))


def score_bin_counts(scores: np.ndarray) -> list[int]:
    """Scores per 0.1-score bin (50 bins), binned as :func:`shot_metrics` bins."""
    return bin_counts(scores, np.asarray(stsb_shot_kwargs()["bin_edges"])).tolist()
