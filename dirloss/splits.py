r"""Balanced validation and test splits: the deep imbalanced regression (DIR) protocol.

The DIR benchmarks (AgeDB-DIR, IMDB-WIKI-DIR, STS-B-DIR; Yang et al., "Delving into Deep
Imbalanced Regression", ICML 2021) keep training imbalanced but curate *balanced* validation
and test sets: about the same number of samples in every label bin. Errors on such a test set
weigh the rare labels as much as the common ones, which a random split of a skewed data set
never does. :func:`dir_split` builds such a split from any labelled data set, so a user can
benchmark a DIR method on their own data the way the field does. It is a data-preparation
function: it reads values on the host.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._validation import as_float64_array
from .metrics import ArrayLike, _bin_index, _check_edges

__all__ = ["DIRSplit", "dir_split"]


class DIRSplit(NamedTuple):
    """Row indices of a :func:`dir_split`, each sorted ascending (``torch.long``)."""

    train: Tensor
    val: Tensor
    test: Tensor
    bin_edges: Tensor
    """(B + 1,) float64 edges of the equal-width label bins the split balanced."""


def _equal_width_edges(labels: np.ndarray, num_bins: int) -> np.ndarray:
    lo, hi = float(labels.min()), float(labels.max())
    if not hi > lo:
        raise ValueError(f"expected labels with more than one distinct value, got all {lo}")
    return np.linspace(lo, hi, num_bins + 1)


def dir_split(
    labels: ArrayLike,
    *,
    per_bin: int,
    num_bins: int | None = 20,
    bin_edges: ArrayLike | None = None,
    max_fraction: float = 1.0 / 3.0,
    seed: int = 0,
) -> DIRSplit:
    r"""Split rows into imbalanced training and balanced validation and test sets.

    The label range is cut into ``num_bins`` equal-width bins (or the given ``bin_edges``;
    a label on an inner edge goes to the bin above, labels outside the edges to the first or
    last bin). A bin :math:`b` holding :math:`n_b` rows gives

    .. math::
        k_b = \min\big(M, \lfloor f \, n_b \rfloor\big)

    rows to validation and another :math:`k_b` to test, drawn at random without
    replacement; the other :math:`n_b - 2 k_b` rows train. With :math:`M` = ``per_bin`` and
    :math:`f` = ``max_fraction``, the evaluation sets hold :math:`M` rows in every bin that
    has at least :math:`M / f` rows and fewer (down to none) in the rare bins, while
    training keeps at least :math:`1 - 2f` of every bin, so a rare bin is never emptied
    into the test set. The same ``labels`` and ``seed`` always give the same split.

    Choose ``per_bin`` so that :math:`M \cdot B` is the evaluation-set size you can afford
    (AgeDB-DIR uses about 30 rows per 1-year bin for test); rare bins then say how little
    the data holds there, which the few-shot metrics report.

    Args:
        labels: (N,) regression targets of the whole data set.
        per_bin: :math:`M \ge 1`, the most rows of each bin in validation and in test.
        num_bins: equal-width bins over ``[min(labels), max(labels)]`` (ignored when
            ``bin_edges`` is given).
        bin_edges: (B + 1,) strictly increasing edges, e.g. those of
            :func:`dirloss.metrics.shot_metrics`' evaluation bins.
        max_fraction: :math:`f \in (0, 0.5)`, the most of one bin that validation (and,
            separately, test) may take.
        seed: seed of the draw.

    Returns:
        :class:`DIRSplit` with ``train``, ``val`` and ``test`` row indices (disjoint, covering
        all N rows) and the bin edges used.

    Raises:
        ValueError: labels not 1-D, empty or not finite; bad ``per_bin``, ``num_bins``,
            ``bin_edges`` or ``max_fraction``.

    Example:
        >>> labels = torch.cat([torch.rand(970), 1 + torch.rand(30)])  # common, rare bin
        >>> split = dir_split(labels, per_bin=20, bin_edges=[0.0, 1.0, 2.0])
        >>> [len(split.train), len(split.val), len(split.test)]
        [940, 30, 30]
        >>> int((labels[split.test] >= 1).sum())  # a third of the rare bin, 10 rows
        10
    """
    y = as_float64_array(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"expected labels of shape (N,) with N >= 1, got {tuple(y.shape)}")
    if not np.isfinite(y).all():
        raise ValueError("expected finite labels, got NaN or inf")
    if isinstance(per_bin, bool) or not isinstance(per_bin, int) or per_bin < 1:
        raise ValueError(f"expected per_bin to be an integer >= 1, got {per_bin!r}")
    if not 0.0 < max_fraction < 0.5:
        raise ValueError(f"expected max_fraction in (0, 0.5), got {max_fraction!r}")
    if bin_edges is not None:
        edges = _check_edges(bin_edges)
    elif isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"expected num_bins to be an integer >= 1, got {num_bins!r}")
    else:
        edges = _equal_width_edges(y, num_bins)

    bins = _bin_index(y, edges)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for b in range(edges.size - 1):
        rows = np.flatnonzero(bins == b)
        k = min(per_bin, math.floor(max_fraction * rows.size))
        drawn = rng.permutation(rows)
        val.append(drawn[:k])
        test.append(drawn[k : 2 * k])
    val_rows, test_rows = np.concatenate(val), np.concatenate(test)
    train_mask = np.ones(y.size, dtype=bool)
    train_mask[val_rows] = False
    train_mask[test_rows] = False

    def as_index(rows: np.ndarray) -> Tensor:
        return torch.as_tensor(np.sort(rows), dtype=torch.long)

    return DIRSplit(
        train=as_index(np.flatnonzero(train_mask)),
        val=as_index(val_rows),
        test=as_index(test_rows),
        bin_edges=torch.as_tensor(edges, dtype=torch.float64),
    )
