"""Modules fitted on training labels (private): the ``fitted`` flag and the label bins that
:class:`~dirloss.LabelDensityWeights`, :class:`~dirloss.FeatureDistributionSmoothing` and
:class:`~dirloss.BNILoss` share."""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ._validation import DeferredInit, equal_width_edges, fit_labels

_Bins = TypeVar("_Bins", bound="LabelBins")


def check_num_bins(num_bins: object, given: np.ndarray | None) -> int:
    """B from ``num_bins`` (an int >= 1) or from checked ``bin_edges`` (``given``, whose
    length it must match when both are passed)."""
    if given is None:
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"expected num_bins >= 1 or bin_edges, got {num_bins!r}")
        return num_bins
    if num_bins is not None and num_bins != given.size - 1:
        raise ValueError(
            f"expected num_bins = len(bin_edges) - 1 = {given.size - 1}, got {num_bins!r}"
        )
    return given.size - 1


class Fitted(DeferredInit):
    """A module whose state is fitted on training data: :attr:`fitted` holds once ``fit``
    (or ``load_state_dict``) has set the buffer named ``_fitted_by``, whose values are all
    finite exactly then (NaN until fitted)."""

    _fitted_by: str
    _fitted = False

    @property
    def fitted(self) -> bool:
        """Whether the fitted state is set (by ``fit``, by construction or by
        ``load_state_dict``)."""
        return self._fitted

    def _require_fitted(self, message: str) -> None:
        """Raise ``RuntimeError(message)`` until fitted (never on ``meta``: no values)."""
        if not self._fitted and not getattr(self, self._fitted_by).is_meta:
            raise RuntimeError(message)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        fitted_by = getattr(self, self._fitted_by)
        if not fitted_by.is_meta:  # a host read at load time, never in forward
            self._fitted = bool(torch.isfinite(fitted_by).all())


class LabelBins(Fitted):
    """A :class:`Fitted` module that bins labels: the given (B + 1,) ``bin_edges``, or
    ``num_bins`` equal-width bins over the training labels' range, set by :meth:`fit`, in a
    float64 ``bin_edges`` buffer (NaN until set). A subclass calls :meth:`_init_bins` in
    its constructor and :meth:`_reset_bin_edges` in its ``_init_buffers``, and fits its
    own per-bin state in :meth:`_fit_bins`."""

    bin_edges: Tensor

    def _init_bins(self, num_bins: int | None, given: np.ndarray | None) -> None:
        """Set ``num_bins`` (checked against the checked edges ``given``, or None) and
        register the ``bin_edges`` buffer."""
        self.num_bins = check_num_bins(num_bins, given)
        self._given_edges = given
        edges = torch.full((self.num_bins + 1,), math.nan, dtype=torch.float64)
        self.register_buffer("bin_edges", edges)

    def _reset_bin_edges(self) -> None:
        """``bin_edges`` as constructed: the given edges, else NaN until :meth:`fit`."""
        self.bin_edges.fill_(math.nan)
        if self._given_edges is not None and not self.bin_edges.is_meta:
            self.bin_edges.copy_(torch.from_numpy(self._given_edges))

    def fit(self: _Bins, labels: Any) -> _Bins:
        """Fit on the training labels: set ``num_bins`` equal-width edges over their range
        (with ``bin_edges`` given, the edges stay and the labels are only checked), then the
        module's per-bin state, if any (:class:`~dirloss.LabelDensityWeights`: the counts
        and weights; :class:`~dirloss.FeatureDistributionSmoothing` has none, its
        statistics come from ``update``). Under ``torch.distributed``, fit every rank on the
        whole training set's labels (or pass ``bin_edges``), so that the ranks' bins agree.

        Args:
            labels: (N,) or (N, 1) training labels (tensor, ndarray or sequence).

        Returns:
            ``self``.

        Raises:
            ValueError: empty or non-finite labels; equal labels without ``bin_edges``.
        """
        y = fit_labels(labels, self.bin_edges)
        if self._given_edges is None:
            self.bin_edges.copy_(equal_width_edges(y, self.num_bins))
        self._fit_bins(y)
        self._fitted = True
        return self

    def _fit_bins(self, labels: np.ndarray) -> None:
        """The subclass's per-bin state from the training labels, once ``bin_edges`` are
        set (none by default)."""

    def _bin(self, target: Tensor) -> Tensor:
        """The bin of each label, int64 in ``[0, B)``: a label on an inner edge belongs to
        the bin above; labels outside the edges take the first or last bin."""
        # contiguous, as bucketize wants (a column of a wider target is strided)
        return torch.bucketize(
            target.to(torch.float64).contiguous(), self.bin_edges[1:-1], right=True
        )
