"""Shot regions: :func:`tabular_shot_kwargs` is the one place that decides the
many/medium/few-shot regions of a tabular table; :func:`stsb_shot_kwargs` gives the published
STS-B-DIR regions; :func:`shot_region_counts` counts a split's labels per region."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "INTEGER_ATOL",
    "SHOT_BINS",
    "SHOT_FEW_FRACTION",
    "SHOT_MANY_FRACTION",
    "shot_region_counts",
    "stsb_shot_kwargs",
    "tabular_shot_kwargs",
]

INTEGER_ATOL = 1e-4
"""Tolerance of the integer-label test of :func:`tabular_shot_kwargs` (float32 round trips)."""

SHOT_BINS = 20
"""Equal-width label bins over the training range for the tabular shot rule."""

SHOT_MANY_FRACTION = 1.0
"""A bin is many-shot if it holds more than this fraction of the uniform share N/B."""

SHOT_FEW_FRACTION = 0.2
"""A bin is few-shot if it holds fewer than this fraction of the uniform share N/B."""


def tabular_shot_kwargs(
    train_target: Any,
    *,
    num_bins: int = SHOT_BINS,
    many_fraction: float = SHOT_MANY_FRACTION,
    few_fraction: float = SHOT_FEW_FRACTION,
) -> dict[str, Any]:
    r"""The shot-region rule for tables without a published protocol.

    **Bins.** ``num_bins`` (:math:`B`, default 20) equal-width bins spanning the training
    labels, :math:`[\min y, \max y]`. If every training label is an integer (abalone's
    rings, cpu_small's percentages), the width is rounded up to a whole number so each bin
    holds the same number of possible values (otherwise bins would alternate between one and
    two integers and the counts would zig-zag); this may give fewer than :math:`B` bins.
    Integer bins are centred, with edges at half-integers, so labels that went through a
    float32 standardise/unscale round trip (3.9999998) stay in their bin. Labels count as
    integers when they lie within :data:`INTEGER_ATOL` (plus 1e-6 relative) of one.
    Test labels outside the range fall into the first or last bin.

    **Thresholds.** With :math:`N` training labels and :math:`B'` bins (:math:`B` unless the
    integer rule changed it), a balanced training set would put :math:`u = N/B'` labels in
    every bin. A bin is *many-shot* if it holds more
    than :math:`u` (more than its uniform share), *few-shot* if it holds fewer than
    :math:`u/5`, and *medium-shot* otherwise.

    **Why.** This is the STS-B-DIR protocol (Yang et al., 2021: 50 bins, many > 100,
    few < 20 training labels) rescaled to the size of the table: there
    :math:`u = 5249/50 = 105`, so its thresholds are :math:`0.95u` and :math:`0.19u`. Fixed
    counts do not transfer (100 labels per bin is over 40 % of concreteStrength's training
    split), relative ones do. Twenty bins keep :math:`u` at 31 or more on the smallest
    table (618 training rows), so "few" (:math:`< u/5 \approx 6`) still means a handful of
    labels rather than sampling noise, while resolving the tails; 50 bins would leave the
    smallest tables with :math:`u/5 < 3`.

    Pass the labels in the units you evaluate in (use :meth:`Splits.unscale` for tables
    loaded standardised): the integer rule needs label units.

    Args:
        train_target: training labels, shape (N,), array or tensor.
        num_bins: :math:`B`.
        many_fraction: many-shot threshold as a fraction of :math:`u` (default 1).
        few_fraction: few-shot threshold as a fraction of :math:`u` (default 0.2).

    Returns:
        ``{"bin_edges": ndarray (B'+1,), "many_shot": float, "few_shot": float}``, the
        keyword arguments of :func:`dirloss.metrics.shot_metrics`.

    Example:
        >>> kw = tabular_shot_kwargs(np.arange(100.0))   # integers 0..99, N = 100
        >>> len(kw["bin_edges"]) - 1, kw["bin_edges"][:3], kw["many_shot"], kw["few_shot"]
        (20, array([-0.5,  4.5,  9.5]), 5.0, 1.0)
    """
    if isinstance(train_target, torch.Tensor):
        y = train_target.detach().to("cpu", torch.float64).numpy().reshape(-1)
    else:
        y = np.asarray(train_target, dtype=np.float64).reshape(-1)
    if y.size < 2 or not np.all(np.isfinite(y)):
        raise ValueError(f"expected >= 2 finite training labels, got {y.size}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"expected num_bins to be an int >= 2, got {num_bins!r}")
    if not 0 <= few_fraction <= many_fraction:
        raise ValueError(
            f"expected 0 <= few_fraction <= many_fraction, got {few_fraction}, {many_fraction}"
        )
    lo, hi = float(y.min()), float(y.max())
    if hi <= lo:
        raise ValueError(f"expected training labels with a positive range, got [{lo}, {hi}]")
    if np.all(np.abs(y - np.round(y)) <= INTEGER_ATOL + 1e-6 * np.abs(y)):
        lo, hi = float(np.round(lo)), float(np.round(hi))
        width = float(max(1, math.ceil((hi - lo) / num_bins)))
        count = int(math.ceil((hi - lo + 1) / width))
        edges = lo - 0.5 + width * np.arange(count + 1, dtype=np.float64)
    else:
        edges = np.linspace(lo, hi, num_bins + 1)
    share = y.size / (edges.size - 1)
    return {
        "bin_edges": edges, "many_shot": many_fraction * share, "few_shot": few_fraction * share
    }


def stsb_shot_kwargs() -> dict[str, Any]:
    r"""The published STS-B-DIR regions: 50 bins of 0.1 on [0, 5] and fixed bin lists.

    The loaders hand out float32 scores (0.7 becomes 0.69999999);
    :data:`dirloss.metrics.EDGE_RTOL` counts such a score as on its edge, so with float64 or
    float32 scores this reproduces the published 756 / 170 / 74 test split.

    Returns:
        ``{"bin_edges": ndarray (51,), "regions": {...}}`` for
        :func:`dirloss.metrics.shot_metrics`.
    """
    from dirloss.metrics import stsb_dir_regions

    return {"bin_edges": np.linspace(0.0, 5.0, 51), "regions": stsb_dir_regions()}


def shot_region_counts(train_target: Any, target: Any, **shot_kwargs: Any) -> dict[str, int]:
    """How many of ``target`` fall into each region under ``shot_kwargs`` (a report helper)."""
    from dirloss.metrics import shot_metrics

    t = np.asarray(target, dtype=np.float64).reshape(-1)
    out = shot_metrics(t, t, train_target, **shot_kwargs)
    return {r: int(out[r]["count"]) for r in ("many", "medium", "few")}
