r"""Feature distribution smoothing (FDS; Yang et al., ICML 2021, Sec. 3.2).

"Delving into Deep Imbalanced Regression" (Yang, Zha, Chen, Wang, Katabi, ICML 2021) calibrates
the features of a regression network during training, so that the feature statistics of a
rare label look like those of its neighbours. With :math:`b` the label bin of a sample and
:math:`\mu_b, \sigma^2_b` the running per-bin mean and variance of each feature dimension
(collected from the training features of the previous epochs):

1. **statistics**: at the end of each epoch, the mean and the unbiased variance of each bin's
   training features (:math:`n_b = 1`: variance 0) update the running statistics with
   momentum, :math:`\mu_b \leftarrow (1 - m)\, \hat\mu_b + m\, \mu_b` (the same for
   :math:`\sigma^2_b`); a bin seen for the first time takes :math:`\hat\mu_b,
   \hat\sigma^2_b`; a bin with no sample keeps its statistics;
2. **smoothing** across bins with the LDS kernel window :math:`w`
   (:func:`~dirloss.reweighting.lds_kernel_window`), normalised to sum 1, and reflecting
   boundaries (``d c b | a b c d | c b a``):

   .. math::
       \tilde\mu_b = \sum_{k=-h}^{h} w_k\, \mu_{r(b + k)}, \qquad
       \tilde\sigma^2_b = \sum_{k=-h}^{h} w_k\, \sigma^2_{r(b + k)};

3. **calibration** of a training feature :math:`z` of bin :math:`b`, per dimension:

   .. math::
       z' = (z - \mu_b) \sqrt{\operatorname{clip}\big(\tilde\sigma^2_b / \sigma^2_b,
       c_{lo}, c_{hi}\big)} + \tilde\mu_b .

This reproduces the official code's method: the window (a delta filtered by a reflect-mode
Gaussian, or triang / laplace, divided by its sum), PyTorch's ``reflect`` padding across bins,
the per-epoch update from all training features, momentum 0.9 (``momentum=None``: the
cumulative mean over epochs), the clip ``(0.1, 10)`` of the variance ratio, dimensions of zero
variance left unchanged, calibration from epoch 1 on (``start_smooth=1``). What differs, on
purpose, each with a test:

* **no in-place writes**: the official code assigns into the features (``features[mask] =``),
  which breaks autograd when the backbone's output is needed for its own backward (e.g. after
  ``tanh``) or is used twice; here the output is a new tensor and the input is untouched;
* **an identity at inference**: FDS needs the labels, so it only ever acts in training; here
  ``forward`` returns its input unchanged in ``eval()`` mode or when ``target`` is None, by
  design, and before calibration starts (``start_epoch``);
* **float labels in explicit bins**: the official bins are the integers ``0 .. K - 1``; here
  any ``bin_edges`` (a fitted :class:`~dirloss.GroupBinner`, or ``torch.arange(K + 1.0)``
  for the official bins) or ``num_bins`` equal-width bins fitted on the training labels;
  labels outside the edges are clamped into the first / last bin (the official code counts
  them only when the same batch holds a label of the end bucket, and drops them otherwise),
  or rejected with ``validate=True``;
* **a consistent pair of statistics**: the official code aliases its raw statistics to the
  running ones, so from epoch 2 on it divides by this epoch's :math:`\sigma^2_b` but
  re-colours with the :math:`\tilde\sigma^2_b` smoothed one epoch earlier; here both come from
  the same :meth:`~FeatureDistributionSmoothing.step_epoch`;
* **sums, not batches**: statistics accumulate as per-bin count, sum and sum of squares
  (float64) over any number of :meth:`~FeatureDistributionSmoothing.update` calls, all-reduced
  over ``torch.distributed`` ranks at the end of the epoch, so under DDP every rank holds the
  statistics of the whole training set, not of its shard. Memory is :math:`O(B \times F)`.

Assumptions (the official code makes them silently): each feature dimension is treated on its
own (a diagonal Gaussian per bin), and bins with no training sample keep the prior
:math:`\mu = 0, \sigma^2 = 1`, which the smoothing mixes into their neighbours: that suits
features normalised like BatchNorm output (mean 0, variance 1), as in the paper's networks.
For other features, put FDS after a normalisation, or choose bins that all hold training
labels. Dimensions whose variance in a bin is at most ``eps`` pass unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ._fitted import LabelBins
from ._validation import Float64Buffers, as_float64_array, check_same_device
from .binning import GroupBinner
from .distributed import is_distributed
from .metrics import _check_edges
from .reweighting import lds_kernel_window

__all__ = ["FeatureDistributionSmoothing", "calibrate_features", "smooth_bin_statistics"]


def _reflect_index(j: Tensor, n: int) -> Tensor:
    """Indices ``j`` folded into ``[0, n)`` by reflection about the end samples
    (``d c b | a b c d | c b a``, PyTorch's and numpy's ``"reflect"``), repeated for indices
    far outside."""
    if n == 1:
        return torch.zeros_like(j)
    period = 2 * (n - 1)
    m = j.remainder(period)
    return torch.where(m < n, m, period - m)


def smooth_bin_statistics(stats: Tensor, window: Tensor) -> Tensor:
    r"""Per-bin statistics smoothed across bins, as FDS smooths its means and variances.

    .. math::
        \tilde s_b = \sum_{k=-h}^{h} \frac{w_k}{\sum_j w_j}\, s_{r(b + k)}

    with :math:`r` the reflection about the first and last bin (``d c b | a b c d | c b a``,
    the official code's ``F.pad(mode="reflect")``; repeated for windows wider than the bins).

    Args:
        stats: (B,) or (B, F) per-bin statistics.
        window: (2h + 1,) non-negative window, e.g.
            :func:`~dirloss.reweighting.lds_kernel_window`; divided by its sum here.

    Returns:
        Tensor of ``stats``' shape and dtype.

    Example:
        >>> smooth_bin_statistics(torch.tensor([0.0, 0.0, 3.0]), torch.ones(3))
        tensor([0., 1., 1.])
    """
    if stats.dim() not in (1, 2) or stats.shape[0] == 0:
        raise ValueError(f"expected stats of shape (B,) or (B, F), got {tuple(stats.shape)}")
    if window.dim() != 1 or window.numel() % 2 == 0:
        raise ValueError(f"expected a window of odd length, got shape {tuple(window.shape)}")
    half = window.numel() // 2
    weights = (window / window.sum()).to(stats.dtype)
    bins = torch.arange(stats.shape[0], device=stats.device)
    out = torch.zeros_like(stats)
    for k in range(-half, half + 1):  # the window's taps (a hyper-parameter), not the data
        out = out + weights[k + half] * stats[_reflect_index(bins + k, stats.shape[0])]
    return out


def calibrate_features(
    features: Tensor,
    bins: Tensor,
    mean: Tensor,
    var: Tensor,
    smoothed_mean: Tensor,
    smoothed_var: Tensor,
    *,
    clip: tuple[float, float] | None = (0.1, 10.0),
    eps: float = 1e-8,
) -> Tensor:
    r"""FDS calibration: re-colour each feature from its bin's statistics to the smoothed ones.

    .. math::
        z'_{if} = (z_{if} - \mu_{b_i f})
        \sqrt{\operatorname{clip}\big(\tilde\sigma^2_{b_i f} / \sigma^2_{b_i f},
        c_{lo}, c_{hi}\big)} + \tilde\mu_{b_i f}

    Dimensions with :math:`\sigma^2_{bf} \le` ``eps`` pass unchanged (the official code
    leaves zero-variance dimensions alone). Differentiable in ``features`` (and in the
    statistics); no in-place writes; no host syncs. Computed in ``features``' dtype, at least
    float32, and returned in ``features``' dtype.

    Args:
        features: (N, F).
        bins: (N,) int64 bin of each sample, in ``[0, B)``.
        mean, var: (B, F) the bins' statistics :math:`\mu, \sigma^2`.
        smoothed_mean, smoothed_var: (B, F) the smoothed ones :math:`\tilde\mu, \tilde\sigma^2`.
        clip: ``(low, high)`` bounds of the variance ratio, or None.
        eps: variance floor.

    Returns:
        (N, F) calibrated features.

    Example:
        >>> z = torch.tensor([[1.0], [3.0]])
        >>> mean, var = torch.tensor([[2.0]]), torch.tensor([[1.0]])
        >>> calibrate_features(z, torch.tensor([0, 0]), mean, var, mean + 1, 4 * var)
        tensor([[1.],
                [5.]])
    """
    if features.dim() != 2:
        raise ValueError(f"expected features of shape (N, F), got {tuple(features.shape)}")
    table = (mean.shape[0], features.shape[1])
    for name, t in (("mean", mean), ("var", var), ("smoothed_mean", smoothed_mean),
                    ("smoothed_var", smoothed_var)):
        if t.dim() != 2 or tuple(t.shape) != table:
            raise ValueError(f"expected {name} of shape (B, F) = {table}, got {tuple(t.shape)}")
    if bins.dim() != 1 or bins.shape[0] != features.shape[0]:
        raise ValueError(f"expected bins of shape ({features.shape[0]},), got {tuple(bins.shape)}")
    valid = var > eps
    ratio = smoothed_var / torch.where(valid, var, torch.ones_like(var))
    if clip is not None:
        ratio = ratio.clamp(clip[0], clip[1])
    scale = torch.where(valid, ratio.sqrt(), torch.ones_like(ratio))
    zero = torch.zeros_like(mean)
    centre, target_mean = torch.where(valid, mean, zero), torch.where(valid, smoothed_mean, zero)
    dtype = torch.promote_types(features.dtype, torch.float32)
    z = features.to(dtype)
    out = (z - centre.to(dtype)[bins]) * scale.to(dtype)[bins] + target_mean.to(dtype)[bins]
    return out.to(features.dtype)


def _check_clip(clip: Any) -> tuple[float, float] | None:
    if clip is None:
        return None
    try:
        low, high = (float(c) for c in clip)
    except (TypeError, ValueError):
        raise ValueError(f"expected clip=(low, high) or None, got {clip!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"expected clip=(low, high) with 0 < low <= high, got {clip!r}")
    return low, high


class FeatureDistributionSmoothing(LabelBins, Float64Buffers):
    r"""FDS: calibrates training features with per-bin statistics smoothed across label bins.

    The method, its official behaviour and what differs on purpose are in the module
    docstring (:mod:`dirloss.fds`). Put it between a backbone and the head
    (e.g. :class:`~dirloss.MultiExpertHead`)::

        z = fds(backbone(x), y)   # training: calibrated; eval() or y=None: z unchanged

    and, each epoch, feed it the training features, then finalise the statistics::

        with torch.no_grad():                        # the official recipe: a pass over
            for x, y in train_loader:                # the training set at the epoch's end
                fds.update(backbone(x), y)           # (or update() on each training batch)
        fds.step_epoch()                             # all-reduces under torch.distributed

    ``forward`` is an identity in ``eval()`` mode, when ``target`` is None, and until
    ``start_epoch`` epochs have been stepped (there are no statistics before the first
    :meth:`step_epoch`). It has no host syncs and compiles with ``fullgraph=True``.

    Bins: ``bin_edges`` (increasing (B + 1,) edges, or a fitted
    :class:`~dirloss.GroupBinner`, whose edges are copied; ``torch.arange(K + 1.0)`` gives the
    official integer bins ``0 .. K - 1``), or ``num_bins`` equal-width bins over the training
    labels, set by :meth:`fit`. A label on an inner edge belongs to the bin above; labels
    outside the edges are clamped into the first or last bin, in :meth:`update` and
    :meth:`forward` (``validate=True`` makes :meth:`update` raise for them instead).

    Args:
        num_features: F, the feature dimension.
        num_bins: B, with equal-width bins from :meth:`fit` (omit with ``bin_edges``).
        bin_edges: (B + 1,) strictly increasing edges, or a fitted ``GroupBinner``.
        kernel, kernel_size, sigma: the smoothing window, see
            :func:`~dirloss.reweighting.lds_kernel_window` (divided by its sum here); the
            official defaults ``"gaussian", 5, 2``.
        momentum: weight of the old statistics in the epoch update, in ``[0, 1)``; None for
            the cumulative mean over epochs (weighted by counts).
        start_epoch: the first epoch (0-based: the number of :meth:`step_epoch` calls so far)
            whose forward calibrates; 0 and 1 both mean "as soon as there are statistics".
        clip: ``(low, high)`` bounds of the variance ratio
            :math:`\tilde\sigma^2_b / \sigma^2_b` (the scale lies in
            :math:`[\sqrt{low}, \sqrt{high}]`), or None; official ``(0.1, 10)``.
        eps: variance floor: dimensions with :math:`\sigma^2_b \le` ``eps`` pass unchanged.
        validate: :meth:`update` raises for non-finite labels or labels outside the edges
            (a host sync per call).

    Buffers (float64, kept float64 under ``.half()``; all in ``state_dict``): bin_edges
    (B + 1,); running_mean, running_var, smoothed_mean, smoothed_var (B, F);
    num_samples_tracked (B,); epoch () int64, the :meth:`step_epoch` calls; and the
    current epoch's sums bin_count (B,), bin_sum, bin_sum_sq (B, F).

    Shape:
        - features: (N, F).
        - target: (N,) or (N, 1) labels (float or integer), or None.
        - output: (N, F), ``features``' dtype.

    Example:
        >>> fds = FeatureDistributionSmoothing(4, bin_edges=torch.arange(11.0))
        >>> z, y = torch.randn(64, 4), torch.rand(64) * 10
        >>> fds.update(z, y)          # epoch 0: statistics only
        >>> fds.step_epoch()
        >>> fds.train()(z, y).shape   # from epoch 1 on: calibrated
        torch.Size([64, 4])
        >>> fds.eval()(z, y) is z     # inference: the identity
        True
    """

    running_mean: Tensor
    running_var: Tensor
    smoothed_mean: Tensor
    smoothed_var: Tensor
    num_samples_tracked: Tensor
    epoch: Tensor
    bin_count: Tensor
    bin_sum: Tensor
    bin_sum_sq: Tensor
    kernel_window: Tensor

    _float64_buffers = (
        "bin_edges", "running_mean", "running_var", "smoothed_mean", "smoothed_var",
        "num_samples_tracked", "bin_count", "bin_sum", "bin_sum_sq", "kernel_window",
    )
    _fitted_by = "bin_edges"

    def __init__(
        self,
        num_features: int,
        num_bins: int | None = None,
        *,
        bin_edges: Any = None,
        kernel: str = "gaussian",
        kernel_size: int = 5,
        sigma: float = 2.0,
        momentum: float | None = 0.9,
        start_epoch: int = 1,
        clip: tuple[float, float] | None = (0.1, 10.0),
        eps: float = 1e-8,
        validate: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or (
            num_features < 1
        ):
            raise ValueError(f"expected num_features to be an int >= 1, got {num_features!r}")
        window = lds_kernel_window(kernel, kernel_size, sigma)  # validates the kernel
        if momentum is not None and (
            isinstance(momentum, bool) or not isinstance(momentum, (int, float))
            or not 0 <= momentum < 1
        ):
            raise ValueError(f"expected momentum in [0, 1) or None, got {momentum!r}")
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"expected start_epoch to be an int >= 0, got {start_epoch!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and eps >= 0
        ):
            raise ValueError(f"expected eps to be a finite number >= 0, got {eps!r}")
        self._init_bins(num_bins, self._given_edges_of(bin_edges))
        self.num_features = num_features
        self.kernel, self.kernel_size, self.sigma = kernel, kernel_size, float(sigma)
        self.momentum = None if momentum is None else float(momentum)
        self.start_epoch, self.clip, self.eps = start_epoch, _check_clip(clip), float(eps)
        self.validate = bool(validate)
        self._window = window
        shape, f64 = (self.num_bins, num_features), torch.float64
        for name in ("running_mean", "running_var", "smoothed_mean", "smoothed_var",
                     "bin_sum", "bin_sum_sq"):
            self.register_buffer(name, torch.empty(shape, dtype=f64))
        self.register_buffer("num_samples_tracked", torch.empty(self.num_bins, dtype=f64))
        self.register_buffer("bin_count", torch.empty(self.num_bins, dtype=f64))
        self.register_buffer("epoch", torch.empty((), dtype=torch.long))
        self.register_buffer("kernel_window", torch.empty(kernel_size, dtype=f64),
                             persistent=False)
        with torch.no_grad():
            self._init_buffers()

    @staticmethod
    def _given_edges_of(bin_edges: Any) -> np.ndarray | None:
        if bin_edges is None:
            return None
        if isinstance(bin_edges, GroupBinner):
            if not bin_edges.fitted:
                raise ValueError("expected a fitted GroupBinner as bin_edges, got an unfitted one")
            bin_edges = bin_edges.edges
        return _check_edges(as_float64_array(bin_edges))

    def _init_buffers(self) -> None:
        self._reset_bin_edges()
        for t in (self.running_mean, self.smoothed_mean, self.bin_sum, self.bin_sum_sq,
                  self.num_samples_tracked, self.bin_count, self.epoch):
            t.zero_()
        self.running_var.fill_(1.0)
        self.smoothed_var.fill_(1.0)
        self._set_epoch(0)
        self._fitted = self._given_edges is not None and not self.bin_edges.is_meta
        if not self.kernel_window.is_meta:
            self.kernel_window.copy_(self._window)

    def reset(self) -> None:
        """Back to the constructor's state: prior statistics, epoch 0 (given edges kept;
        fitted equal-width edges cleared)."""
        with torch.no_grad():
            self._init_buffers()

    @property
    def epochs(self) -> int:
        """How many epochs :meth:`step_epoch` has finalised."""
        return self._epoch

    @property
    def calibrating(self) -> bool:
        """Whether ``forward`` calibrates (in training mode, given labels)."""
        return self._calibrating

    def _set_epoch(self, epoch: int) -> None:
        # forward reads a bool that flips once, so a compiled forward is not recompiled for
        # every epoch (dynamo guards on the Python values a forward reads)
        self._epoch = epoch
        self._calibrating = epoch >= max(1, self.start_epoch)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.epoch.is_meta:  # a host read at load time, never in forward
            self._set_epoch(int(self.epoch))

    def bin(self, target: Tensor) -> Tensor:
        """The bin of each label, int64 in ``[0, B)`` (outside the edges: clamped)."""
        return self._bin(self._check_target(target))

    def _check_target(self, target: Tensor, n: int | None = None) -> Tensor:
        if target.dim() == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.dim() != 1 or (n is not None and target.shape[0] != n):
            rows = "N" if n is None else str(n)
            raise ValueError(
                f"expected target of shape ({rows},) or ({rows}, 1), got {tuple(target.shape)}"
            )
        return target

    def _check_features(self, features: Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"expected features of shape (N, {self.num_features}), got "
                f"{tuple(features.shape)}"
            )

    @torch.no_grad()
    def update(self, features: Tensor, target: Tensor) -> None:
        """Add a batch of training features to this epoch's per-bin sums (count, sum, sum of
        squares, float64). Detached: no gradient flows into the statistics.

        Args:
            features: (N, F).
            target: (N,) or (N, 1) labels.
        """
        self._check_features(features)
        target = self._check_target(target, features.shape[0])
        check_same_device("the statistics", self.bin_sum, "features", features)
        self._require_fitted(
            "FeatureDistributionSmoothing has no bin edges yet: call fit(train_labels) or "
            "pass bin_edges"
        )
        if self.validate:
            self._validate_labels(target)
        bins = self.bin(target.to(features.device))
        z = features.detach().to(torch.float64)
        self.bin_count.index_add_(0, bins, torch.ones_like(bins, dtype=torch.float64))
        self.bin_sum.index_add_(0, bins, z)
        self.bin_sum_sq.index_add_(0, bins, z * z)

    def _validate_labels(self, target: Tensor) -> None:
        y = target.detach().to(torch.float64)
        low, high = float(self.bin_edges[0]), float(self.bin_edges[-1])
        bad = ~torch.isfinite(y) | (y < low) | (y > high)
        if bool(bad.any()):
            raise ValueError(
                f"expected finite labels in [{low}, {high}] (the bin edges), got "
                f"{int(bad.sum())} of {y.numel()} outside or NaN (without validate=True they "
                "are clamped into the first / last bin)"
            )

    @torch.no_grad()
    def step_epoch(self) -> None:
        """Finalise the epoch: all-reduce the sums over ``torch.distributed`` ranks (when
        initialised with more than one process; a collective: call it on every rank), update
        the running statistics with momentum, smooth them, reset the sums, count the epoch.

        Syncs with the host (once); call it between epochs, not in the training step.
        """
        if is_distributed():
            sums = torch.cat([self.bin_count[:, None], self.bin_sum, self.bin_sum_sq], dim=1)
            dist.all_reduce(sums)
            f = self.num_features
            self.bin_count.copy_(sums[:, 0])
            self.bin_sum.copy_(sums[:, 1 : 1 + f])
            self.bin_sum_sq.copy_(sums[:, 1 + f :])
        n = self.bin_count[:, None]
        seen = n > 0
        mean = self.bin_sum / n.clamp_min(1.0)
        sq_dev = (self.bin_sum_sq - self.bin_sum * mean).clamp_min(0.0)
        var = torch.where(n > 1, sq_dev / (n - 1).clamp_min(1.0), torch.zeros_like(sq_dev))
        before = self.num_samples_tracked[:, None].clone()
        self.num_samples_tracked.add_(self.bin_count)
        if self.momentum is None:
            factor = 1.0 - n / self.num_samples_tracked[:, None].clamp_min(1.0)
        else:
            factor = torch.full_like(n, self.momentum)
        factor = torch.where(before > 0, factor, torch.zeros_like(factor))  # first time: take
        for running, current in ((self.running_mean, mean), (self.running_var, var)):
            running.copy_(torch.where(seen, (1 - factor) * current + factor * running, running))
        self.smoothed_mean.copy_(smooth_bin_statistics(self.running_mean, self.kernel_window))
        self.smoothed_var.copy_(smooth_bin_statistics(self.running_var, self.kernel_window))
        for t in (self.bin_count, self.bin_sum, self.bin_sum_sq):
            t.zero_()
        self.epoch.add_(1)
        self._set_epoch(self._epoch + 1)

    def forward(self, features: Tensor, target: Tensor | None = None) -> Tensor:
        self._check_features(features)
        if target is None or not self.training or not self._calibrating:
            return features
        target = self._check_target(target, features.shape[0])
        check_same_device("features", features, "target", target)
        return calibrate_features(
            features, self.bin(target), self.running_mean, self.running_var,
            self.smoothed_mean, self.smoothed_var, clip=self.clip, eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, num_bins={self.num_bins}, "
                f"kernel={self.kernel!r}, kernel_size={self.kernel_size}, sigma={self.sigma}, "
                f"momentum={self.momentum}, start_epoch={self.start_epoch}, clip={self.clip}, "
                f"eps={self.eps}")
