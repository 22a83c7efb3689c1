r"""Streaming shot metrics: :func:`~dirloss.metrics.shot_metrics` over many batches and ranks.

A validation set that does not fit one batch, or is split across GPUs, is evaluated batch by
batch: :class:`ShotMetrics` keeps four float64 sums per label bin (its state is
:math:`O(\text{bins})`, whatever the number of samples) and turns them into the same
numbers as :func:`~dirloss.metrics.shot_metrics` on the concatenated data. Under
``torch.distributed`` the sums are added over the ranks in :meth:`ShotMetrics.compute`.

``dirloss.streaming.ShotMetricsMetric`` is the same metric as a ``torchmetrics.Metric``
(for ``MetricCollection`` and Lightning's logging); it needs the optional ``torchmetrics``
(``pip install 'dirloss[metrics]'``) and is built on first access, so ``import dirloss``
does not import torchmetrics.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._validation import Float64Buffers, as_float64_array
from .distributed import is_distributed
from .metrics import EDGE_RTOL, GM_EPS, REGIONS, ArrayLike, _shot_bins

__all__ = ["ShotMetrics"]

STAT_ROWS = ("count", "abs", "sq", "log")
"""Rows of the (4, B) state: per bin the number of test samples and the sums of
:math:`|e|`, :math:`e^2` and :math:`\\log\\max(|e|, \\epsilon)`."""


def _shot_buffers(
    module: nn.Module,
    train_target: ArrayLike,
    bin_edges: ArrayLike | None,
    bin_width: float,
    many_shot: float,
    few_shot: float,
    regions: Mapping[str, Sequence[int]] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Register ``module``'s bin_edges, train_counts and bin_region buffers, set as
    ``shot_metrics`` sets them up, with the equal-width edges (when ``bin_edges`` is None)
    taken over the training labels only: the test labels are not known yet. Warns as
    ``shot_metrics`` does when all training labels fall in one bin. Returns
    ``(edges, train_counts, region_of_bin)``."""
    train = as_float64_array(train_target).reshape(-1)
    setup = _shot_bins(
        train, train, bin_edges, bin_width, many_shot, few_shot, regions, warn_stacklevel=3
    )
    edges, counts, region_of = setup
    module.register_buffer("bin_edges", torch.from_numpy(edges.copy()))
    module.register_buffer("train_counts", torch.from_numpy(counts.astype(np.int64)))
    module.register_buffer("bin_region", torch.from_numpy(region_of.astype(np.int64)))
    return setup


def _as_values(values: Any, name: str, device: torch.device) -> Tensor:
    """(N,) or (N, 1) values as an (N,) float64 tensor on ``device``."""
    t = values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values))
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 1:
        raise ValueError(f"expected {name} of shape (N,) or (N, 1), got {tuple(t.shape)}")
    return t.detach().to(device=device, dtype=torch.float64)


def _batch_stats(pred: Tensor, target: Tensor, edges: Tensor, *, validate: bool) -> Tensor:
    """The (4, B) per-bin sums of one batch (rows :data:`STAT_ROWS`), on ``edges``' device.

    Bins as in ``shot_metrics``: ``searchsorted`` of ``target + EDGE_RTOL * min width``
    (side right), clipped to the first and last bin. No host sync unless ``validate`` (or
    the tensors are on the CPU), which checks that the values are finite.
    """
    p = _as_values(pred, "pred", edges.device)
    y = _as_values(target, "target", edges.device)
    if p.shape != y.shape:
        raise ValueError(
            f"expected pred and target of the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if (validate or edges.device.type == "cpu") and not torch.compiler.is_compiling():
        for t, name in ((p, "pred"), (y, "target")):
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(f"expected {name} to be finite, got {bad} NaN or inf value(s)")
    num_bins = edges.numel() - 1
    tol = EDGE_RTOL * torch.diff(edges).min()
    bins = (torch.searchsorted(edges, y + tol, right=True) - 1).clamp_(0, num_bins - 1)
    err = p - y
    abs_err = err.abs()
    rows = torch.stack(
        [torch.ones_like(err), abs_err, err * err, torch.log(abs_err.clamp_min(GM_EPS))]
    )
    return rows.new_zeros(len(STAT_ROWS), num_bins).index_add_(1, bins, rows)


def _summarise(stats: Tensor, region_of: np.ndarray) -> dict[str, Any]:
    """The ``shot_metrics`` dictionary from the (4, B) per-bin sums (a host read)."""
    count, abs_sum, sq_sum, log_sum = stats.detach().to("cpu", torch.float64).numpy()

    def summary(mask: np.ndarray) -> dict[str, float | int]:
        n = count[mask].sum()
        if n == 0:
            return {"mae": math.nan, "mse": math.nan, "gm": math.nan, "count": 0}
        return {
            "mae": float(abs_sum[mask].sum() / n),
            "mse": float(sq_sum[mask].sum() / n),
            "gm": float(np.exp(log_sum[mask].sum() / n)),
            "count": int(round(n)),
        }

    out: dict[str, Any] = {"all": summary(np.ones(count.size, dtype=bool))}
    for rid, name in enumerate(REGIONS):
        out[name] = summary(region_of == rid)
    filled = count > 0
    out["bmae"] = float(np.mean(abs_sum[filled] / count[filled])) if filled.any() else math.nan
    return out


class ShotMetrics(Float64Buffers):
    r"""Many-, medium- and few-shot MAE, MSE, GM and balanced MAE, accumulated over batches.

    The batch-by-batch form of :func:`~dirloss.metrics.shot_metrics`, with the same bins,
    regions and result. :meth:`update` adds, for every label bin :math:`b`, the number of
    test samples :math:`n_b` and the sums

    .. math::
        A_b = \sum_{i \in b} |e_i|, \quad Q_b = \sum_{i \in b} e_i^2, \quad
        L_b = \sum_{i \in b} \log\max(|e_i|, \epsilon)

    of the errors :math:`e_i = \hat y_i - y_i` (:math:`\epsilon` =
    :data:`~dirloss.metrics.GM_EPS`); :meth:`compute` gives, over the bins :math:`b \in R`
    of a region :math:`R` (or all bins),

    .. math::
        \text{MAE}_R = \frac{\sum_R A_b}{\sum_R n_b}, \quad
        \text{MSE}_R = \frac{\sum_R Q_b}{\sum_R n_b}, \quad
        \text{GM}_R = \exp\Big(\frac{\sum_R L_b}{\sum_R n_b}\Big), \quad
        \text{bMAE} = \frac{1}{|\{b : n_b > 0\}|} \sum_{n_b > 0} \frac{A_b}{n_b},

    which are :func:`~dirloss.metrics.shot_metrics`' numbers on all the data seen since the
    last :meth:`reset`, up to float64 summation order. The state is these four sums per bin,
    a (4, B) float64 buffer: it does not grow with the number of samples.

    The arguments mirror :func:`~dirloss.metrics.shot_metrics`, less ``pred`` and
    ``target``. One difference: without ``bin_edges`` the equal-width edges are taken over
    ``train_target`` alone (the test labels are not known when the metric is built), so
    the two agree exactly when the test labels lie within the training labels' range, or
    always with ``shot_metrics(..., bin_edges=metric.bin_edges)``; test labels outside the
    edges are clipped into the first or last bin, as in :func:`~dirloss.metrics.shot_metrics`.

    Distributed: with ``torch.distributed`` initialised (more than one process) and
    ``sync_on_compute``, :meth:`compute` sums the state over the ranks of
    ``process_group`` with one ``all_reduce`` (a collective: call it on every rank) and
    returns the global result on every rank; the local state is left as it was. With NCCL,
    move the metric to the rank's GPU (``.to(device)``).

    Args:
        train_target: training labels (any length, any device), used to count the training
            labels per bin.
        bin_edges: increasing bin edges; default bins of width ``bin_width`` over the
            training labels, as above.
        bin_width: width of the equal-width bins when ``bin_edges`` is ``None``.
        many_shot: a bin with more training labels than this is many-shot.
        few_shot: a bin with fewer training labels than this is few-shot.
        regions: optional fixed region of each bin, as in :func:`~dirloss.metrics.shot_metrics`.
        validate: check in :meth:`update` that predictions and targets are finite on every
            device (a host sync; on the CPU they are always checked). Unchecked NaN or inf
            values make the metrics NaN.
        sync_on_compute: sum the state over the ranks in :meth:`compute`.
        process_group: the group to sum over (default the whole world).

    Buffers:
        bin_edges (B + 1,) float64, train_counts (B,) int64 training labels per bin,
        bin_region (B,) int64 the region of each bin (index into
        :data:`~dirloss.metrics.REGIONS`, -1 for none), stats (4, B) float64 the state
        (rows: count, sum of :math:`|e|`, of :math:`e^2`, of :math:`\log\max(|e|,
        \epsilon)`). They move with ``.to(device)`` and save with ``state_dict()`` (so a
        checkpoint keeps a half-done evaluation); the float64 ones stay float64 under
        ``.half()``.

    Shape:
        - pred, target of :meth:`update`: (N,) or (N, 1), any real dtype and device (copied
          to the metric's device in float64); N = 0 is allowed.

    Raises:
        ValueError: as :func:`~dirloss.metrics.shot_metrics`, and in :meth:`update` on
            mismatched shapes (and non-finite values, see ``validate``).

    Example:
        >>> metric = ShotMetrics([0.1] * 5 + [2.2] * 2, many_shot=3, few_shot=3)
        >>> metric.update(torch.tensor([0.5]), torch.tensor([0.0]))
        >>> metric.update(torch.tensor([2.0]), torch.tensor([2.5]))
        >>> out = metric.compute()
        >>> out["many"], out["few"]["count"], out["bmae"]
        ({'mae': 0.5, 'mse': 0.25, 'gm': 0.5, 'count': 1}, 1, 0.5)
        >>> metric.reset(); metric.compute()["all"]["count"]
        0
    """

    bin_edges: Tensor
    train_counts: Tensor
    bin_region: Tensor
    stats: Tensor

    _float64_buffers = ("bin_edges", "stats")

    def __init__(
        self,
        train_target: ArrayLike,
        *,
        bin_edges: ArrayLike | None = None,
        bin_width: float = 1.0,
        many_shot: float = 100,
        few_shot: float = 20,
        regions: Mapping[str, Sequence[int]] | None = None,
        validate: bool = False,
        sync_on_compute: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        self._setup = _shot_buffers(
            self, train_target, bin_edges, bin_width, many_shot, few_shot, regions
        )
        self.num_bins = self.bin_edges.numel() - 1
        self.validate = validate
        self.sync_on_compute = sync_on_compute
        self.process_group = process_group
        self.register_buffer(
            "stats", torch.zeros(len(STAT_ROWS), self.num_bins, dtype=torch.float64)
        )

    def _init_buffers(self) -> None:
        edges, counts, region_of = self._setup
        self.bin_edges.copy_(torch.from_numpy(edges))
        self.train_counts.copy_(torch.from_numpy(counts.astype(np.int64)))
        self.bin_region.copy_(torch.from_numpy(region_of.astype(np.int64)))
        self.stats.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch of predictions and test labels (no host sync off the CPU unless
        ``validate``)."""
        self.stats.add_(_batch_stats(pred, target, self.bin_edges, validate=self.validate))

    def reset(self) -> None:
        """Forget every batch seen (zero the state)."""
        self.stats.zero_()

    def compute(self) -> dict[str, Any]:
        """The :func:`~dirloss.metrics.shot_metrics` result on every batch since the last
        :meth:`reset` (over all ranks when distributed and ``sync_on_compute``).

        Returns:
            ``{"all": m, "many": m, "medium": m, "few": m, "bmae": float}``, each ``m``
            ``{"mae": float, "mse": float, "gm": float, "count": int}``; a region without
            samples has ``count`` 0 and NaN metrics.
        """
        stats = self.stats
        if self.sync_on_compute and is_distributed():
            stats = stats.clone()
            dist.all_reduce(stats, group=self.process_group)
        return _summarise(stats, self.bin_region.cpu().numpy())

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}"


def _flatten(result: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
    """``{"all_mae": t, ..., "few_count": t, "bmae": t}``: 0-d float64 tensors."""
    flat = {"bmae": result["bmae"]}
    for region in ("all", *REGIONS):
        for key, value in result[region].items():
            flat[f"{region}_{key}"] = value
    return {k: torch.tensor(float(v), dtype=torch.float64, device=device) for k, v in flat.items()}


@functools.cache
def _torchmetrics_adapter() -> type:
    """Build :class:`ShotMetricsMetric` (imports torchmetrics; once)."""
    try:
        from torchmetrics import Metric
    except ImportError as error:
        raise ImportError(
            "dirloss.streaming.ShotMetricsMetric needs torchmetrics, which is not installed: "
            "pip install 'dirloss[metrics]' (or use dirloss.streaming.ShotMetrics, which "
            "needs only torch)"
        ) from error

    class ShotMetricsMetric(Metric):
        r""":class:`ShotMetrics` as a ``torchmetrics.Metric``.

        The same bins, sums and result, with torchmetrics' machinery: the (4, B) state is
        summed over the ranks by torchmetrics when it computes (``dist_reduce_fx="sum"``),
        ``forward`` gives the batch's metrics and accumulates, and the metric works in a
        ``MetricCollection`` and in Lightning's ``self.log_dict``. :meth:`compute` returns a
        flat dictionary of 0-d float64 tensors, ``"all_mae"``, ``"all_mse"``, ``"all_gm"``,
        ``"all_count"``, the same for ``"many"``, ``"medium"`` and ``"few"``, and
        ``"bmae"``.

        Args:
            train_target, bin_edges, bin_width, many_shot, few_shot, regions, validate: as
                :class:`ShotMetrics`.
            **kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``,
                ``process_group``, ``dist_sync_on_step``, ...).
        """

        full_state_update = False
        is_differentiable = False
        higher_is_better = False
        bin_edges: Tensor
        train_counts: Tensor
        bin_region: Tensor
        stats: Tensor

        def __init__(
            self,
            train_target: ArrayLike,
            *,
            bin_edges: ArrayLike | None = None,
            bin_width: float = 1.0,
            many_shot: float = 100,
            few_shot: float = 20,
            regions: Mapping[str, Sequence[int]] | None = None,
            validate: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            _shot_buffers(self, train_target, bin_edges, bin_width, many_shot, few_shot, regions)
            self.num_bins = self.bin_edges.numel() - 1
            self.validate = validate
            self.add_state(
                "stats",
                default=torch.zeros(len(STAT_ROWS), self.num_bins, dtype=torch.float64),
                dist_reduce_fx="sum",
            )

        def update(self, pred: Tensor, target: Tensor) -> None:
            self.stats = self.stats + _batch_stats(
                pred, target, self.bin_edges.to(self.stats.device), validate=self.validate
            )

        def compute(self) -> dict[str, Tensor]:
            result = _summarise(self.stats, self.bin_region.cpu().numpy())
            return _flatten(result, self.stats.device)

    # Picklable (Lightning's spawn, checkpoints): found again as dirloss.streaming's
    # attribute, which __getattr__ resolves to this same class.
    ShotMetricsMetric.__module__ = __name__
    ShotMetricsMetric.__qualname__ = "ShotMetricsMetric"
    return ShotMetricsMetric


def __getattr__(name: str) -> Any:
    if name == "ShotMetricsMetric":
        return _torchmetrics_adapter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
