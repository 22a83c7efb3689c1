"""Stage 5 of the accuracy benchmark: scores of predictions, in label units.

The regression metrics come from the library: :func:`dirloss.metrics.shot_metrics` (MAE,
MSE and GM overall and per shot region, and the balanced MAE), with its bins
(:func:`dirloss.metrics._bin_index`, the same edges and edge tolerance). Two numbers that
``dirloss`` does not provide are written here once, for both benchmarks (this one and
:mod:`benchmarks.finetune`): the Pearson correlation (:func:`pearson`) and the per-bin
errors (:func:`per_bin_error`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from benchmarks.datasets import Prepared
from benchmarks.methods import Method, build_model, parse_inference
from benchmarks.training import TrainConfig, predict
from dirloss.metrics import REGIONS, _bin_index, shot_metrics

__all__ = [
    "METRIC_KEYS",
    "Evaluation",
    "Scores",
    "SeedResult",
    "bin_counts",
    "bin_regions",
    "evaluate",
    "evaluate_on_test",
    "flat_scores",
    "mean_std",
    "pearson",
    "per_bin_error",
    ]

METRIC_KEYS = ("mae", "mse", "gm")

Scores = dict[str, float]
"""One row of scores: ``{"all_mae", "all_mse", "all_gm", "many_mae", ..., "few_gm", "bmae",
"pearson"}`` in that order."""


def pearson(pred: np.ndarray, target: np.ndarray) -> float:
    """The Pearson correlation of ``pred`` and ``target`` (NaN when either is constant)."""
    sp, st = pred.std(), target.std()
    if not (sp > 0 and st > 0):
        return float("nan")
    return float(np.mean((pred - pred.mean()) * (target - target.mean())) / (sp * st))


def bin_counts(labels: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Labels per bin of ``edges``, binned as :func:`~dirloss.metrics.shot_metrics` bins."""
    return np.bincount(_bin_index(labels, edges), minlength=edges.size - 1)


def per_bin_error(
    pred: np.ndarray, target: np.ndarray, edges: np.ndarray, *, squared: bool = False
) -> list[float]:
    """The MAE (or, ``squared``, the MSE) of every bin of ``edges`` by the target's bin;
    NaN for a bin without samples."""
    bins = _bin_index(target, edges)
    err = pred - target
    counts = np.bincount(bins, minlength=edges.size - 1)
    sums = np.bincount(bins, weights=err**2 if squared else np.abs(err), minlength=edges.size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).tolist()


def bin_regions(train_counts: np.ndarray, shot_kwargs: Mapping[str, Any]) -> list[str | None]:
    """The shot region of every label bin (None for a bin in no region), as the metrics see
    it."""
    if shot_kwargs.get("regions") is not None:
        out: list[str | None] = [None] * len(train_counts)
        for region, bins in shot_kwargs["regions"].items():
            for b in bins:
                out[int(b)] = region
        return out
    many, few = shot_kwargs.get("many_shot", 100), shot_kwargs.get("few_shot", 20)
    return ["many" if c > many else "few" if c < few else "medium" for c in train_counts]


def flat_scores(metrics: Mapping[str, Any], pearson_r: float) -> Scores:
    """:func:`~dirloss.metrics.shot_metrics`' nested result and Pearson as one :data:`Scores`
    row."""
    flat = {f"{r}_{k}": float(metrics[r][k]) for r in ("all", *REGIONS) for k in METRIC_KEYS}
    flat["bmae"] = float(metrics["bmae"])
    flat["pearson"] = float(pearson_r)
    return flat


def mean_std(rows: Sequence[Scores]) -> tuple[Scores, Scores]:
    """Mean and sample std (ddof 1; 0 for a single row) of every score over ``rows``."""
    arr = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}
    mean = {k: float(np.mean(v)) for k, v in arr.items()}
    std = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in arr.items()}
    return mean, std


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The scores of one set of predictions on one split, and its per-bin MAE."""

    scores: Scores
    per_bin_mae: list[float]


def evaluate(data: Prepared, pred_std: np.ndarray, split: str) -> Evaluation:
    """Scores (label units) of standardised predictions on ``split``; non-finite predictions
    (a diverged model) are replaced by the training mean / +-1e30 so they score badly."""
    pred = data.to_labels(pred_std)
    target = data.labels[split]
    if not np.all(np.isfinite(pred)):
        fill = float(np.mean(data.labels["train"]))
        pred = np.nan_to_num(pred, nan=fill, posinf=1e30, neginf=-1e30)
    metrics = shot_metrics(pred, target, data.labels["train"], **data.shot_kwargs)
    edges = np.asarray(data.shot_kwargs["bin_edges"], dtype=np.float64)
    return Evaluation(flat_scores(metrics, pearson(pred, target)),
                      per_bin_error(pred, target, edges))


@dataclasses.dataclass(frozen=True)
class SeedResult:
    """The chosen setting's model of one seed on the test split."""

    seed: int
    test: Scores
    per_bin_mae: list[float]


def evaluate_on_test(
    data: Prepared,
    method: Method,
    setting: int,
    inference: str | None,
    state: Mapping[str, Tensor],
    config: TrainConfig,
    seed: int,
) -> SeedResult:
    """Evaluate the trained weights ``state`` of ``method``'s grid setting ``setting`` (seed
    ``seed``) on the test split, once."""
    params = method.grid[setting]
    model = build_model(method, params, data.x["train"].shape[1], config.hidden, seed=seed,
                        dropout=config.dropout)
    model.load_state_dict(state)
    result = evaluate(data, predict(model, data.x["test"], parse_inference(inference)), "test")
    return SeedResult(seed, result.scores, result.per_bin_mae)
