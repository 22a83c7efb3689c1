r"""Label-density reweighting: inverse-frequency weights and LDS (Yang et al., ICML 2021).

"Delving into Deep Imbalanced Regression" (Yang, Zha, Chen, Wang, Katabi, ICML 2021) weights
each training sample by the inverse of its label's *effective* density: the histogram of the
training labels, optionally square-rooted or clipped, and smoothed across neighbouring bins
with a symmetric kernel (label distribution smoothing, LDS). The weights then scale a
per-sample loss, e.g. ``(weight * (pred - y) ** 2).mean()`` or the expert terms of
:class:`~dirloss.GroupDIRLoss` (``weight=``).

This module reproduces the official recipe's order of operations exactly:

1. count the training labels per bin, :math:`n_b`;
2. transform: ``reweight="sqrt_inv"`` takes :math:`\sqrt{n_b}`, ``"inverse"`` keeps
   :math:`n_b`; ``clip=(lo, hi)`` then clips every bin, empty ones included (the official
   code clips ``"inverse"`` counts to ``(5, 1000)``, and never ``"sqrt_inv"``);
3. with ``lds=True``, convolve the transformed histogram with the kernel window (zeros
   beyond the first and last bin): :math:`\tilde n_b = \sum_k w_k\, v_{b+k}`;
4. weight :math:`1 / \tilde n_b`, scaled so that the weights of the *training* samples have
   mean 1: :math:`\omega_b = \frac{N}{\sum_{b'} n_{b'} / \tilde n_{b'}} \cdot \frac{1}{\tilde
   n_b}`.

The weights enter a loss as the official code uses them, as a plain mean of the weighted
per-sample losses, :math:`\frac1N \sum_i \omega_{b(y_i)} \ell_i` (not
:math:`\sum_i \omega_i \ell_i / \sum_i \omega_i`): with weights of mean 1 over the training
set the loss keeps its unweighted scale on average, while a batch of rare labels counts more.
:func:`~dirloss.functional.weighted_mse_loss` is that loss for a plain regressor;
``GroupDIRLoss(..., weight=)`` applies it to the expert and mixture terms.

Differences from the official code, by design: labels are floats in explicit bins (the
official bins are the integers ``0 .. max_target - 1``; pass ``bin_edges=torch.arange(K + 1)``
to get them); clipping happens only when asked for; a bin with no smoothed training mass
(possible without LDS) gets the weight of the rarest bin that has some, instead of infinity;
the weights are computed in float64 (the official code rounds :math:`1 / \tilde n_b` to
float32 before rescaling, a relative difference below 1e-7).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._fitted import LabelBins
from .metrics import _check_edges

__all__ = [
    "LDS_KERNELS",
    "REWEIGHTS",
    "LabelDensityWeights",
    "lds_kernel_window",
    "label_density_weights",
]

LDS_KERNELS = ("gaussian", "triang", "laplace")
"""Kernel names of :func:`lds_kernel_window`, as in the official code."""

REWEIGHTS = ("sqrt_inv", "inverse", "none")
"""``reweight`` values of :func:`label_density_weights`."""

_GAUSSIAN_TRUNCATE = 4.0  # radius of the sampled Gaussian, in sigmas (scipy's default)


def _reflect(j: int, n: int) -> int:
    """Index ``j`` folded into ``[0, n)`` by half-sample symmetric reflection
    (``d c b a | a b c d | d c b a``), repeated for indices far outside."""
    m = j % (2 * n)
    return m if m < n else 2 * n - 1 - m


def _gaussian_window(kernel_size: int, sigma: float) -> np.ndarray:
    """A length-``kernel_size`` delta smoothed by a sampled, normalised Gaussian with
    reflecting boundaries (``scipy.ndimage.gaussian_filter1d``'s default mode), so the
    window's tails carry the Gaussian mass folded back from beyond its ends."""
    radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    centre = kernel_size // 2
    window = np.zeros(kernel_size)
    for i in range(kernel_size):
        for k in range(-radius, radius + 1):
            if _reflect(i + k, kernel_size) == centre:
                window[i] += taps[k + radius]
    return window


def lds_kernel_window(
    kernel: str = "gaussian", kernel_size: int = 5, sigma: float = 2.0
) -> Tensor:
    r"""The symmetric smoothing window of LDS, peak 1, as the official code builds it.

    * ``"gaussian"``: a length-``kernel_size`` delta filtered by a Gaussian of std
      ``sigma`` (sampled on :math:`|k| \le \lfloor 4\sigma + 0.5 \rceil`, normalised) with
      reflecting boundaries; for ``kernel_size=5, sigma=2`` this is
      ``[0.858, 0.946, 1, 0.946, 0.858]``, flatter than the plain Gaussian
      :math:`e^{-k^2 / 2\sigma^2}` = ``[0.607, 0.883, 1, 0.883, 0.607]``, because the
      reflection folds the Gaussian's tails back in;
    * ``"triang"``: :math:`1 - |k| / (h + 1)` for :math:`k = -h..h`, :math:`h =
      (\text{kernel\_size} - 1) / 2` (``sigma`` unused);
    * ``"laplace"``: :math:`e^{-|k| / \sigma}`.

    Each is divided by its maximum.

    Args:
        kernel: one of :data:`LDS_KERNELS`.
        kernel_size: odd window length >= 1.
        sigma: > 0.

    Returns:
        (kernel_size,) float64 tensor.

    Example:
        >>> lds_kernel_window("gaussian", 5, 2.0)
        tensor([0.8583, 0.9458, 1.0000, 0.9458, 0.8583], dtype=torch.float64)
    """
    _check_kernel(kernel, kernel_size, sigma)
    half = kernel_size // 2
    k = np.arange(-half, half + 1, dtype=np.float64)
    if kernel == "gaussian":
        window = _gaussian_window(kernel_size, sigma)
    elif kernel == "triang":
        window = 1.0 - np.abs(k) / (half + 1)
    else:
        window = np.exp(-np.abs(k) / sigma)
    return torch.from_numpy(window / window.max())


def _check_kernel(kernel: str, kernel_size: int, sigma: float) -> None:
    if kernel not in LDS_KERNELS:
        raise ValueError(f"expected kernel in {LDS_KERNELS}, got {kernel!r}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or (
        kernel_size % 2 == 0
    ):
        raise ValueError(f"expected an odd integer kernel_size >= 1, got {kernel_size!r}")
    if isinstance(sigma, bool) or not (
        isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0
    ):
        raise ValueError(f"expected sigma to be a finite number > 0, got {sigma!r}")


def _check_clip(clip: tuple[float, float] | None) -> None:
    if clip is None:
        return
    numbers = isinstance(clip, (tuple, list)) and len(clip) == 2 and all(
        isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in clip
    )
    if not numbers or not 0 <= clip[0] <= clip[1]:
        raise ValueError(f"expected clip=(low, high) with 0 <= low <= high, got {clip!r}")


def _check_settings(
    reweight: str, kernel: str, kernel_size: int, sigma: float, clip: tuple[float, float] | None
) -> None:
    """The settings of :func:`label_density_weights` (and :class:`LabelDensityWeights`)."""
    if reweight not in REWEIGHTS:
        raise ValueError(f"expected reweight in {REWEIGHTS}, got {reweight!r}")
    _check_kernel(kernel, kernel_size, sigma)
    _check_clip(clip)


def _check_counts(counts: Tensor) -> Tensor:
    """The histogram as float64; values are read on the host (a fit-time check)."""
    if not isinstance(counts, Tensor) or counts.dim() != 1 or counts.numel() == 0:
        shape = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
        raise ValueError(f"expected counts to be a tensor of shape (B,) with B >= 1, got {shape}")
    n = counts.detach().to(torch.float64)
    if not n.is_meta and not (torch.isfinite(n).all() and (n >= 0).all() and n.sum() > 0):
        raise ValueError(
            "expected finite, non-negative counts with at least one label, got min "
            f"{float(n.min())} and total {float(n.sum())} over {n.numel()} bins"
        )
    return n


def label_density_weights(
    counts: Tensor,
    *,
    reweight: str = "sqrt_inv",
    lds: bool = True,
    kernel: str = "gaussian",
    kernel_size: int = 5,
    sigma: float = 2.0,
    clip: tuple[float, float] | None = None,
) -> Tensor:
    r"""Per-bin weights :math:`\omega_b` from a histogram of training labels.

    The steps and their order are those of the module docstring (:mod:`dirloss.reweighting`):
    transform (:math:`\sqrt{n_b}` or :math:`n_b`), optional clip, optional LDS convolution
    with :func:`lds_kernel_window` (zero padding), invert, scale to mean 1 over the training
    samples. ``reweight="none"`` gives all ones.

    Args:
        counts: (B,) training labels per bin (non-negative, at least one label in all).
        reweight: one of :data:`REWEIGHTS`.
        lds: smooth the transformed histogram with the kernel.
        kernel, kernel_size, sigma: the LDS window, see :func:`lds_kernel_window`.
        clip: ``(low, high)`` bounds for the transformed histogram, or None (no clipping).

    Returns:
        (B,) float64 weights :math:`\omega_b`, on ``counts``' device, with
        :math:`\sum_b n_b \omega_b = \sum_b n_b` (mean 1 over the training samples).

    Raises:
        ValueError: a bad setting, or counts that are not a non-empty (B,) tensor of finite,
            non-negative values with a positive total (checked on the host: call it at fit
            time, not in a training step).

    Example:
        >>> label_density_weights(torch.tensor([100, 10, 1]), lds=False, reweight="inverse")
        tensor([ 0.3700,  3.7000, 37.0000], dtype=torch.float64)
    """
    _check_settings(reweight, kernel, kernel_size, sigma, clip)
    n = _check_counts(counts)
    if reweight == "none":
        return torch.ones_like(n)
    value = n.sqrt() if reweight == "sqrt_inv" else n
    if clip is not None:
        value = value.clamp(clip[0], clip[1])
    if lds:
        window = lds_kernel_window(kernel, kernel_size, sigma).to(value.device)
        half = kernel_size // 2
        value = torch.nn.functional.conv1d(
            value.view(1, 1, -1), window.view(1, 1, -1), padding=half
        ).view(-1)
    positive = value > 0
    floor = torch.where(positive, value, torch.full_like(value, math.inf)).min()
    inverse = 1.0 / torch.where(positive, value, floor)
    return inverse * n.sum() / (n * inverse).sum()


class LabelDensityWeights(LabelBins):
    r"""Per-sample weights from the training label density (inverse frequency, LDS).

    Fitted on the training labels like :class:`~dirloss.GroupBinner`; the per-bin weights
    :math:`\omega_b` (:func:`label_density_weights`) live in buffers, so they move with
    ``.to(device)`` and are saved in ``state_dict``. ``forward(target)`` looks each label's
    bin up (``torch.bucketize``: no host sync, compiles with ``fullgraph=True``).

    Bins: the given ``bin_edges`` (e.g. a fitted binner's ``edges``, or
    ``torch.arange(K + 1.0)`` for the official integer bins), or ``num_bins`` equal-width bins
    over the training labels' range, set by :meth:`fit`. A label on an inner edge belongs to
    the bin above; labels outside the edges take the first or last bin. Assumes that the
    label density is what is imbalanced: the weights only say how rare a label is.

    Args:
        num_bins: B, with equal-width bins from :meth:`fit` (omit with ``bin_edges``).
        bin_edges: (B + 1,) strictly increasing edges.
        reweight, lds, kernel, kernel_size, sigma, clip: see :func:`label_density_weights`;
            the defaults are the paper's LDS + square-root inverse (Gaussian, 5, 2).

    Shape:
        - target: (N,) or (N, 1).
        - output: (N,), in ``target``'s floating dtype.

    Example:
        >>> y = torch.cat([torch.zeros(90), torch.ones(10)])
        >>> lds = LabelDensityWeights(2, lds=False).fit(y)
        >>> lds(torch.tensor([0.0, 1.0]))
        tensor([0.8333, 2.5000])
    """

    bin_weights: Tensor
    counts: Tensor
    _fitted_by = "bin_weights"

    def __init__(
        self,
        num_bins: int | None = None,
        *,
        bin_edges: Any = None,
        reweight: str = "sqrt_inv",
        lds: bool = True,
        kernel: str = "gaussian",
        kernel_size: int = 5,
        sigma: float = 2.0,
        clip: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        _check_settings(reweight, kernel, kernel_size, sigma, clip)
        self._init_bins(num_bins, None if bin_edges is None else _check_edges(bin_edges))
        self.reweight, self.lds, self.clip = reweight, lds, clip
        self.kernel, self.kernel_size, self.sigma = kernel, kernel_size, sigma
        self.register_buffer(
            "bin_weights", torch.full((self.num_bins,), math.nan, dtype=torch.float64)
        )
        self.register_buffer("counts", torch.zeros(self.num_bins, dtype=torch.long))
        self._init_buffers()

    def _init_buffers(self) -> None:
        self._reset_bin_edges()
        self.bin_weights.fill_(math.nan)
        self.counts.zero_()
        self._fitted = False

    def _fit_bins(self, labels: np.ndarray) -> None:
        """Count the training labels per bin and compute the per-bin weights."""
        bins = self._bin(torch.from_numpy(labels).to(self.bin_edges.device))
        self.counts.copy_(torch.bincount(bins, minlength=self.num_bins))
        self.bin_weights.copy_(
            label_density_weights(
                self.counts, reweight=self.reweight, lds=self.lds, kernel=self.kernel,
                kernel_size=self.kernel_size, sigma=self.sigma, clip=self.clip,
            )
        )

    def forward(self, target: Tensor) -> Tensor:
        if target.dim() == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.dim() != 1:
            raise ValueError(f"expected target of shape (N,) or (N, 1), got {tuple(target.shape)}")
        self._require_fitted("LabelDensityWeights has no weights yet: call fit(train_labels)")
        dtype = target.dtype if target.is_floating_point() else torch.get_default_dtype()
        return self.bin_weights[self._bin(target)].to(dtype)

    def extra_repr(self) -> str:
        lds = f", kernel={self.kernel!r}, kernel_size={self.kernel_size}, sigma={self.sigma}"
        return (f"num_bins={self.num_bins}, reweight={self.reweight!r}, lds={self.lds}"
                f"{lds if self.lds else ''}, clip={self.clip}")
