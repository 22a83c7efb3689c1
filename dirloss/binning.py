"""GroupBinner: continuous labels to ordered group indices."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from ._validation import (
    Float64Buffers,
    as_float64_array,
    as_vector,
    check_num_groups,
)

__all__ = ["GroupBinner"]

ArrayLike = Union[Tensor, np.ndarray, Sequence[float]]
_STRATEGIES = ("uniform", "quantile")
_EXPLICIT = len(_STRATEGIES)  # the ``fit_mode`` code of explicit edges (kept by ``fit``)


def _check_bound(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"expected {name} to be a finite number or None, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected {name} to be a finite number or None, got {value!r}")
    return float(value)


def _as_label_vector(labels: ArrayLike) -> np.ndarray:
    """Training labels as a float64 numpy vector; accepts (N,) or (N, 1)."""
    array = as_vector(labels, "labels")
    if array.size == 0:
        raise ValueError("expected at least one label to fit, got an empty array")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"expected finite labels, got {bad} NaN/inf of {array.size}")
    return array


def _check_edges(edges: np.ndarray) -> np.ndarray:
    if edges.ndim != 1 or edges.size < 3:
        raise ValueError(f"expected edges of shape (G + 1,) with G >= 2, got {edges.shape}")
    if not np.isfinite(edges).all() or not (np.diff(edges) > 0).all():
        raise ValueError(f"expected finite, strictly increasing edges, got {edges.tolist()}")
    return edges


class GroupBinner(Float64Buffers):
    r"""Splits a continuous label range into ``num_groups`` ordered groups.

    Group ``k`` holds :math:`e_k \le y < e_{k+1}`; the last group also holds :math:`e_G`.
    Labels below :math:`e_0` go to group 0 and labels above :math:`e_G` to group ``G - 1``,
    so test labels outside the training range still get a group. NaN labels are not
    checked in :meth:`forward` (a value check would force a host sync); they land in group
    ``G - 1``.

    Args:
        num_groups: G >= 2.
        strategy: ``"uniform"``: equal-width groups on ``[low, high]``; ``"quantile"``:
            edges at label quantiles, so groups hold about equally many training samples.
            ``fit`` recomputes the edges each call, unless ``edges`` were given.
        low, high: fix the ``"uniform"`` range (e.g. ages 0..100); finite; default to the
            min / max of the fitted labels. Not allowed with ``"quantile"`` or ``edges``
            (they would be ignored).
        edges: explicit (G + 1,) increasing edges; then no fit is needed (``fit`` still
            counts the samples per group).

    Buffers:
        edges (G + 1,) float64, counts (G,) training samples per group, centers (G,) group
        midpoints, label_std () float64 standard deviation of the fitted labels (the unit
        in which :class:`~dirloss.GroupDIRLoss` measures the expert MSE; for explicit
        ``edges`` before ``fit``, that of a uniform law on ``[e_0, e_G]``); the settings
        for the next ``fit``: fit_range (2,) float64 ``[low, high]`` (NaN where unset) and
        fit_mode () int64 (0 ``"uniform"``, 1 ``"quantile"``, 2 explicit ``edges``). They
        save with ``state_dict()`` (a loaded binner has the saved settings: ``strategy``,
        ``low`` and ``high`` are read-only and follow ``load_state_dict``; a dirloss 0.1
        checkpoint, which has no settings, keeps the constructor's) and move with
        ``.to(device)``; the float64 buffers stay float64 under ``.half()`` or
        ``.to(dtype)``, so casting a model never moves a label to another group.

    Deferred initialisation: a binner built under ``with torch.device("meta"):`` prints, and
    with ``edges=`` bins meta tensors (shape inference); ``to_empty(device=...)`` refills
    its buffers as the constructor did (unfitted, or the given edges), after which
    ``fit`` or ``load_state_dict`` work as usual. ``fit`` on ``meta`` raises ``ValueError``.

    Shape:
        - Input: (N,) or (N, 1) labels (the trailing 1 is dropped); any other 2-D shape
          raises ``ValueError`` (one label per sample). Inputs of 0 or >= 3 dimensions
          (e.g. per-pixel labels (B, H, W)) are binned element-wise.
        - Output: int64 group indices of that shape, on the input's device.

    Example:
        >>> binner = GroupBinner(4).fit(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
        >>> binner(torch.tensor([[0.5], [3.9], [7.0]]))
        tensor([0, 3, 3])
    """

    edges: Tensor
    counts: Tensor
    centers: Tensor
    label_std: Tensor
    fit_range: Tensor
    fit_mode: Tensor

    _float64_buffers = ("edges", "centers", "label_std", "fit_range")

    def __init__(
        self,
        num_groups: int,
        *,
        strategy: str = "uniform",
        low: float | None = None,
        high: float | None = None,
        edges: ArrayLike | None = None,
    ) -> None:
        super().__init__()
        if strategy not in _STRATEGIES:
            raise ValueError(f"expected strategy in {_STRATEGIES}, got {strategy!r}")
        given = None if edges is None else _check_edges(as_float64_array(edges))
        if given is not None and num_groups != given.size - 1:
            raise ValueError(
                f"expected num_groups = len(edges) - 1 = {given.size - 1}, got {num_groups!r}"
            )
        self.num_groups = check_num_groups(num_groups)
        low, high = _check_bound("low", low), _check_bound("high", high)
        if low is not None and high is not None and not low < high:
            raise ValueError(f"expected low < high, got low={low!r}, high={high!r}")
        if (low is not None or high is not None) and (given is not None or strategy != "uniform"):
            used = "edges=" if given is not None else f"strategy={strategy!r}"
            raise ValueError(
                f"expected low/high only with strategy='uniform' and no edges, got low={low!r}, "
                f"high={high!r} with {used} (which would ignore them)"
            )
        if given is not None and strategy != "uniform":
            raise ValueError(
                f"expected strategy='uniform' (the default) with explicit edges, got "
                f"strategy={strategy!r} (which would be ignored)"
            )
        nan = torch.full((num_groups + 1,), float("nan"), dtype=torch.float64)
        self.register_buffer("edges", nan)
        self.register_buffer("counts", torch.zeros(num_groups, dtype=torch.long))
        self.register_buffer("centers", nan[1:].clone())
        self.register_buffer("label_std", nan[0].clone())
        bounds = [float("nan") if b is None else b for b in (low, high)]
        self.register_buffer("fit_range", torch.tensor(bounds, dtype=torch.float64))
        mode = _EXPLICIT if given is not None else _STRATEGIES.index(strategy)
        self.register_buffer("fit_mode", torch.tensor(mode, dtype=torch.long))
        self._set_settings(mode, low, high)  # from the arguments: the buffers may be meta
        self._given_edges = given
        self._fitted = False
        if given is not None:
            self._set_edges(given)

    @property
    def strategy(self) -> str:
        """``"uniform"`` | ``"quantile"`` (``"uniform"`` with explicit edges); read-only."""
        return self._strategy

    @property
    def low(self) -> float | None:
        """The fixed lower end of the ``"uniform"`` range, or None; read-only."""
        return self._low

    @property
    def high(self) -> float | None:
        """The fixed upper end of the ``"uniform"`` range, or None; read-only."""
        return self._high

    def _read_settings(self) -> None:
        """Host copies of the ``fit_range`` / ``fit_mode`` buffers (read at load, never in
        ``forward``)."""
        low, high = (float(b) for b in self.fit_range)
        self._set_settings(int(self.fit_mode), None if math.isnan(low) else low,
                           None if math.isnan(high) else high)

    def _set_settings(self, mode: int, low: float | None, high: float | None) -> None:
        self._mode = mode
        self._explicit_edges = mode == _EXPLICIT
        self._strategy = "uniform" if self._explicit_edges else _STRATEGIES[mode]
        self._low, self._high = low, high

    def _init_buffers(self) -> None:
        nan = float("nan")
        self.edges.fill_(nan)
        self.counts.zero_()
        self.centers.fill_(nan)
        self.label_std.fill_(nan)
        bounds = [nan if b is None else b for b in (self._low, self._high)]
        self.fit_range.copy_(torch.tensor(bounds, dtype=torch.float64))
        self.fit_mode.fill_(self._mode)
        self._fitted = False
        if self._given_edges is not None:
            self._set_edges(self._given_edges)

    @property
    def fitted(self) -> bool:
        """Whether the edges are set (by ``fit``, ``edges=`` or ``load_state_dict``)."""
        return self._fitted

    def fit(self, labels: ArrayLike) -> GroupBinner:
        """Set the edges from training labels (unless given) and count samples per group.

        Args:
            labels: (N,) or (N, 1) training labels: a tensor, ndarray or sequence.

        Returns:
            ``self``.

        Raises:
            ValueError: NaN/inf labels, an empty array, a degenerate range, or quantile edges
                that collide because of ties.

        Warns:
            UserWarning: when some group holds no training label (its expert would never
                train).
        """
        if self.edges.is_meta:
            raise ValueError(
                "expected a GroupBinner with real buffers to fit, got one on the meta device "
                "(call binner.to_empty(device=...) first)"
            )
        y = _as_label_vector(labels)
        if not self._explicit_edges:
            self._set_edges(self._edges_from(y))
        std = float(np.std(y))
        self.label_std.fill_(std if std > 0 else self._uniform_std())
        groups = self(torch.from_numpy(y).to(self.edges.device))
        self.counts.copy_(torch.bincount(groups, minlength=self.num_groups))
        empty = int((self.counts == 0).sum())
        if empty:
            # An empty group's expert never trains, yet argmax may still pick it at inference.
            warnings.warn(
                f"{empty} of {self.num_groups} groups hold no training label, so their experts "
                "never train; use fewer groups or strategy='quantile'",
                stacklevel=2,
            )
        return self

    def forward(self, y: Tensor) -> Tensor:
        if not self._fitted:
            raise RuntimeError("GroupBinner has no edges yet: call fit(train_labels) first")
        if y.dim() == 2 and y.shape[1] != 1:
            raise ValueError(
                f"expected labels of shape (N,) or (N, 1) (one label per sample), got "
                f"{tuple(y.shape)}"
            )
        if y.dim() > 1 and y.shape[-1] == 1:
            y = y.squeeze(-1)
        inner = self.edges[1:-1]
        # contiguous: a column of a wider target (target[:, 0]) is strided, and bucketize
        # would copy it anyway, with a warning
        return torch.bucketize(y.to(inner.dtype).contiguous(), inner, right=True)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, strategy={self.strategy!r}, fitted={self._fitted}"

    def _edges_from(self, y: np.ndarray) -> np.ndarray:
        g = self.num_groups
        if self.strategy == "quantile":
            edges = _quantile_edges(y, g)
            if np.unique(edges).size <= g:
                usable = max((k for k in range(2, g) if np.unique(_quantile_edges(y, k)).size > k),
                             default=None)
                supported = f"at most {usable} quantile groups" if usable else "no quantile groups"
                raise ValueError(
                    f"quantile edges collide because of tied labels: the data supports "
                    f"{supported}, got num_groups={g} (or use strategy='uniform')"
                )
            return edges
        low = float(y.min()) if self.low is None else self.low
        high = float(y.max()) if self.high is None else self.high
        if not low < high:
            raise ValueError(
                f"expected a label range with low < high, got low={low!r}, high={high!r} "
                "(all training labels equal? pass low= and high=)"
            )
        return np.linspace(low, high, g + 1)

    def _set_edges(self, edges: np.ndarray) -> None:
        e = torch.as_tensor(edges, dtype=torch.float64, device=self.edges.device)
        self.edges.copy_(e)
        self.centers.copy_((e[1:] + e[:-1]) / 2)
        # from the host array, not the buffer: no host read, and none on meta
        self.label_std.fill_(float(edges[-1] - edges[0]) / math.sqrt(12.0))
        self._fitted = True

    def _uniform_std(self) -> float:
        return float(self.edges[-1] - self.edges[0]) / math.sqrt(12.0)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if prefix + "label_std" not in state_dict and prefix + "edges" in state_dict:
            edges = state_dict[prefix + "edges"]  # a dirloss 0.1 checkpoint
            state_dict[prefix + "label_std"] = (edges[-1] - edges[0]) / math.sqrt(12.0)
        # dirloss 0.1 checkpoints hold no fit settings: keep the constructor's.
        state_dict.setdefault(prefix + "fit_range", self.fit_range.clone())
        state_dict.setdefault(prefix + "fit_mode", self.fit_mode.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.edges.is_meta:  # loading into meta buffers is a no-op (without assign=True)
            return
        self._read_settings()
        self._fitted = bool(torch.isfinite(self.edges).all())


def _quantile_edges(y: np.ndarray, num_groups: int) -> np.ndarray:
    return np.asarray(np.quantile(y, np.linspace(0.0, 1.0, num_groups + 1)))
