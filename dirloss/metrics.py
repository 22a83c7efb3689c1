r"""Shot-region evaluation for deep imbalanced regression (DIR).

The standard DIR protocol (Yang et al., "Delving into Deep Imbalanced Regression", ICML 2021)
bins the label range, counts the *training* labels in every bin and reports errors separately
for test samples whose bin is many-shot, medium-shot or few-shot. This is an evaluation
function: it works in float64 NumPy on the host, so device syncs are fine here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._validation import as_float64_array, as_vector, check_positive

__all__ = ["GM_EPS", "EDGE_RTOL", "REGIONS", "shot_metrics", "stsb_dir_regions"]

GM_EPS = 1e-8
r"""Floor on :math:`|e|` inside the geometric mean, so one exact hit does not zero the GM."""

EDGE_RTOL = 1e-5
r"""A label less than ``EDGE_RTOL`` times the narrowest bin width below an edge counts as on it.

Edges built in floating point are off by an ulp (``np.linspace(0, 5, 51)[3]`` is
``0.30000000000000004``), and labels that went through float32 are off by more (0.7 becomes
0.69999999): either would push every label that sits exactly on an edge (``0.3``, ``0.7``)
into the bin below it. ``1e-5`` of a bin covers float32 round-off for labels up to about
100 bin widths from zero while moving no label that is genuinely inside a bin."""

REGIONS = ("many", "medium", "few")
"""Names of the shot regions, in the order they appear in the result."""

_METRIC_KEYS = ("mae", "mse", "gm", "count")

ArrayLike = Any  # torch.Tensor, np.ndarray or a sequence of numbers


def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(f"expected {name} to be finite, got {bad} NaN or inf value(s)")


def _check_edges(bin_edges: ArrayLike) -> np.ndarray:
    edges = as_float64_array(bin_edges)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(
            f"expected bin_edges to be 1-D with >= 2 entries, got shape {tuple(edges.shape)}"
        )
    _check_finite(edges, "bin_edges")
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"expected strictly increasing bin_edges, got {edges.tolist()}")
    return edges


def _make_edges(
    bin_edges: ArrayLike | None, bin_width: float, labels: np.ndarray
) -> np.ndarray:
    if bin_edges is not None:
        return _check_edges(bin_edges)
    lo, hi = (labels.min(), labels.max()) if labels.size else (0.0, 0.0)
    start = math.floor(lo / bin_width + EDGE_RTOL) * bin_width
    num_bins = max(1, math.ceil((hi - start) / bin_width - EDGE_RTOL))
    return start + bin_width * np.arange(num_bins + 1, dtype=np.float64)


def _bin_index(y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    tol = EDGE_RTOL * np.diff(edges).min()
    idx = np.searchsorted(edges, y + tol, side="right") - 1
    return np.asarray(np.clip(idx, 0, edges.size - 2))


def _region_of_bins(
    train_counts: np.ndarray,
    many_shot: float,
    few_shot: float,
    regions: Mapping[str, Sequence[int]] | None,
) -> np.ndarray:
    """Region id per bin (index into ``REGIONS``; -1 for bins in no region)."""
    num_bins = train_counts.size
    if regions is None:
        return np.where(train_counts > many_shot, 0, np.where(train_counts < few_shot, 2, 1))
    unknown = set(regions) - set(REGIONS)
    if unknown:
        raise ValueError(f"expected regions keys among {REGIONS}, got {sorted(unknown)}")
    region_of = np.full(num_bins, -1)
    for rid, name in enumerate(REGIONS):
        for b in regions.get(name, ()):
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
                raise ValueError(f"expected integer bin indices in regions[{name!r}], got {b!r}")
            if not 0 <= b < num_bins:
                raise ValueError(
                    f"expected bin indices in [0, {num_bins}) in regions[{name!r}], got {b}"
                )
            if region_of[b] not in (-1, rid):
                raise ValueError(
                    f"expected each bin in at most one region, got bin {b} in both "
                    f"{REGIONS[region_of[b]]!r} and {name!r}"
                )
            region_of[b] = rid
    return region_of


def _shot_bins(
    train: np.ndarray,
    labels: np.ndarray,
    bin_edges: ArrayLike | None,
    bin_width: float,
    many_shot: float,
    few_shot: float,
    regions: Mapping[str, Sequence[int]] | None,
    *,
    warn_stacklevel: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges, train_counts, region_of_bin)``: the bins and shot regions of
    :func:`shot_metrics` for the (flat, float64) training labels ``train``, the equal-width
    edges (when ``bin_edges`` is None) covering ``labels``. With ``warn_stacklevel``, warns
    (at that level above this function) when all training labels fall in one bin."""
    _check_finite(train, "train_target")
    bin_width = check_positive("bin_width", bin_width)
    if few_shot > many_shot:
        raise ValueError(f"expected few_shot <= many_shot, got {few_shot} > {many_shot}")
    edges = _make_edges(bin_edges, bin_width, labels)
    counts = np.bincount(_bin_index(train, edges), minlength=edges.size - 1)
    spread = train.size > 1 and train.min() < train.max()
    if warn_stacklevel is not None and spread and np.count_nonzero(counts) == 1:
        k = int(np.flatnonzero(counts)[0])  # all equal labels: no bin_width would help
        hint = (f"a smaller bin_width= (got {bin_width:g}) or bin_edges=" if bin_edges is None
                else "bin_edges= that split it")
        warnings.warn(
            f"all {train.size} training labels fall in one bin [{edges[k]:g}, "
            f"{edges[k + 1]:g}], so the shot regions say nothing; pass {hint} on the "
            "labels' scale",
            UserWarning,
            stacklevel=warn_stacklevel + 1,
        )
    return edges, counts, _region_of_bins(counts, many_shot, few_shot, regions)


def _summary(err: np.ndarray) -> dict[str, float | int]:
    if err.size == 0:
        return {"mae": math.nan, "mse": math.nan, "gm": math.nan, "count": 0}
    abs_err = np.abs(err)
    return {
        "mae": float(abs_err.mean()),
        "mse": float(np.mean(err**2)),
        "gm": float(np.exp(np.mean(np.log(np.maximum(abs_err, GM_EPS))))),
        "count": int(err.size),
    }


def _balanced_mae(abs_err: np.ndarray, bins: np.ndarray, num_bins: int) -> float:
    counts = np.bincount(bins, minlength=num_bins)
    sums = np.bincount(bins, weights=abs_err, minlength=num_bins)
    filled = counts > 0
    if not filled.any():
        return math.nan
    return float(np.mean(sums[filled] / counts[filled]))


def balanced_mae(prediction: Tensor, target: Tensor, bin_edges: Tensor) -> Tensor:
    r"""The mean over label bins of the per-bin mean absolute error (empty bins skipped).

    .. math::
        \text{bMAE} = \frac{1}{|B|} \sum_{b \in B} \frac{1}{|b|} \sum_{i \in b}
            |\hat y_i - y_i|

    Bins as in :func:`shot_metrics` (the same implementation): a label within
    :data:`EDGE_RTOL` of the narrowest bin width below an edge counts as on it; labels below
    the first edge fall in the first bin, above the last in the last.

    Args:
        prediction, target: (N,) or (N, 1).
        bin_edges: (B + 1,) increasing edges.

    Returns:
        A 0-d float64 tensor on the device of ``prediction`` (NaN for N = 0).

    Example:
        >>> balanced_mae(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 3.0]),
        ...              torch.tensor([0.0, 2.0, 4.0]))
        tensor(1.5000, dtype=torch.float64)
    """
    pred, y = as_vector(prediction, "prediction"), as_vector(target, "target")
    if pred.shape != y.shape:
        raise ValueError(
            f"expected prediction and target with the same number of values, got "
            f"{tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    edges = _check_edges(bin_edges)
    value = _balanced_mae(np.abs(pred - y), _bin_index(y, edges), edges.size - 1)
    return torch.tensor(value, dtype=torch.float64, device=prediction.device)


def shot_metrics(
    pred: ArrayLike,
    target: ArrayLike,
    train_target: ArrayLike,
    *,
    bin_edges: ArrayLike | None = None,
    bin_width: float = 1.0,
    many_shot: float = 100,
    few_shot: float = 20,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    r"""Errors overall and on the many-, medium- and few-shot regions of the label range.

    Labels are put into bins :math:`[e_k, e_{k+1})`; the last bin also holds its right edge and
    labels outside the edges are clipped into the first or last bin. A label less than
    :data:`EDGE_RTOL` bin widths below an edge counts as on the edge, so float round-off in
    the edges does not move labels that lie exactly on them. A bin is many-shot if it holds
    more than ``many_shot`` *training* labels, few-shot if it holds fewer than ``few_shot``,
    medium-shot otherwise, and a test sample belongs to the region of its target's bin.

    With errors :math:`e_i = \hat y_i - y_i` over a set of :math:`n` samples:

    .. math::
        \text{MAE} = \frac{1}{n}\sum_i |e_i|, \quad
        \text{MSE} = \frac{1}{n}\sum_i e_i^2, \quad
        \text{GM} = \exp\Big(\frac{1}{n}\sum_i \log\max(|e_i|, \epsilon)\Big)

    with :math:`\epsilon` = :data:`GM_EPS`. The balanced MAE (``"bmae"``) is the mean, over
    the bins holding at least one test sample, of each bin's MAE.

    Args:
        pred: predictions, shape :math:`(N,)` or :math:`(N, 1)`; a tensor on any device, an
            array or a sequence.
        target: test labels, same shape as ``pred``.
        train_target: training labels (any length), used only to count labels per bin.
        bin_edges: increasing bin edges, at least two. If ``None``, bins of width
            ``bin_width`` starting at :math:`\lfloor \min / w \rfloor \cdot w` and covering
            the largest label, both taken over ``train_target`` and ``target``.
        bin_width: width :math:`w` of the equal-width bins when ``bin_edges`` is ``None``.
        many_shot: a bin with more training labels than this is many-shot.
        few_shot: a bin with fewer training labels than this is few-shot.
        regions: optional fixed region of each bin, e.g. ``{"many": [0, 10], "medium": [2],
            "few": [1, 3]}`` (see :func:`stsb_dir_regions`). It overrides the counts; bins
            listed in no region count only towards ``"all"``.

    Returns:
        ``{"all": m, "many": m, "medium": m, "few": m, "bmae": float}`` where each ``m`` is
        ``{"mae": float, "mse": float, "gm": float, "count": int}``. A region without samples
        has ``count`` 0 and NaN metrics.

    Raises:
        ValueError: on mismatched or non-vector shapes, non-finite values, ``bin_width <= 0``,
            ``few_shot > many_shot``, non-increasing ``bin_edges`` or invalid ``regions``.

    Warns:
        UserWarning: when all training labels fall in one bin (e.g. labels in [0, 1] with
            the default ``bin_width=1``): the shot regions then say nothing; pass
            ``bin_width`` or ``bin_edges`` on the labels' scale.

    Example:
        >>> out = shot_metrics([0.5, 2.0], [0.0, 2.5], [0.1] * 5 + [2.2] * 2,
        ...                    many_shot=3, few_shot=3)
        >>> out["many"], out["few"]["count"], out["bmae"]
        ({'mae': 0.5, 'mse': 0.25, 'gm': 0.5, 'count': 1}, 1, 0.5)
    """
    pred_np = as_vector(pred, "pred")
    target_np = as_vector(target, "target")
    if pred_np.shape != target_np.shape:
        raise ValueError(
            f"expected pred and target of the same shape, got {tuple(pred_np.shape)} "
            f"and {tuple(target_np.shape)}"
        )
    for arr, name in ((pred_np, "pred"), (target_np, "target")):
        _check_finite(arr, name)
    train_np = as_float64_array(train_target).reshape(-1)
    edges, _, region_of = _shot_bins(
        train_np, np.concatenate([train_np, target_np]), bin_edges, bin_width, many_shot,
        few_shot, regions, warn_stacklevel=2,
    )
    num_bins = edges.size - 1
    err = pred_np - target_np
    test_bins = _bin_index(target_np, edges)
    sample_region = region_of[test_bins]
    out: dict[str, Any] = {"all": _summary(err)}
    for rid, name in enumerate(REGIONS):
        out[name] = _summary(err[sample_region == rid])
    out["bmae"] = _balanced_mae(np.abs(err), test_bins, num_bins)
    return out


def stsb_dir_regions() -> dict[str, list[int]]:
    r"""Published shot regions of the STS-B-DIR benchmark (Yang et al., 2021).

    They index the 50 bins of width 0.1 on :math:`[0, 5]`, so pass them with
    ``bin_edges=np.linspace(0, 5, 51)``. On the STS-B-DIR test split they hold 756, 170 and
    74 samples.

    Returns:
        ``{"many": [...], "medium": [...], "few": [...]}``, disjoint and covering bins 0..49.

    Example:
        >>> r = stsb_dir_regions()
        >>> len(r["many"]), r["medium"], len(r["few"])
        (22, [2, 4, 6, 8, 27, 35, 37], 21)
    """
    many = [0, *range(10, 49, 2), 49]
    medium = [2, 4, 6, 8, 27, 35, 37]
    few = sorted(set(range(50)) - set(many) - set(medium))
    return {"many": many, "medium": medium, "few": few}
