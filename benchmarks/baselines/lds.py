r"""LDS + inverse-square-root reweighting (Yang, Zha, Chen, Wang, Katabi, "Delving into Deep
Imbalanced Regression", ICML 2021; label distribution smoothing, Sec. 3.1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dirloss._validation import check_reduction, reduce

from ._common import _as_column


def gaussian_kernel(
    kernel_size: int = 5, sigma: float = 2.0, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    r"""The symmetric LDS kernel :math:`k_j = \exp(-j^2 / 2\sigma^2)`, :math:`|j| \le (s-1)/2`.

    Its peak is 1; the overall scale does not matter for LDS because the weights are
    normalised afterwards.

    Example:
        >>> gaussian_kernel(3, 1.0)
        tensor([0.6065, 1.0000, 0.6065], dtype=torch.float64)
    """
    is_int = isinstance(kernel_size, int) and not isinstance(kernel_size, bool)
    if not is_int or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"expected an odd positive kernel_size, got {kernel_size!r}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"expected a positive finite sigma, got {sigma!r}")
    half = (kernel_size - 1) // 2
    j = torch.arange(-half, half + 1, dtype=dtype)
    return torch.exp(-(j**2) / (2.0 * sigma**2))


def lds_effective_density(counts: Tensor, *, kernel_size: int = 5, sigma: float = 2.0) -> Tensor:
    r"""Label distribution smoothing of a label histogram (Yang et al., 2021, Eq. 2).

    The empirical density over :math:`B` bins is convolved with the kernel of
    :func:`gaussian_kernel`, bins outside :math:`[0, B)` counting as empty:

    .. math:: \tilde p_b = \sum_{j=-h}^{h} k_j\, n_{b - j}, \qquad h = (s - 1)/2.

    Args:
        counts: training labels per bin, shape (B,), any real dtype.
        kernel_size: :math:`s`, odd.
        sigma: the kernel's :math:`\sigma`, in bins.

    Returns:
        :math:`\tilde p`, shape (B,), float64 unless ``counts`` is floating point.
    """
    if counts.dim() != 1:
        raise ValueError(f"expected counts of shape (B,), got {tuple(counts.shape)}")
    dtype = counts.dtype if counts.is_floating_point() else torch.float64
    kernel = gaussian_kernel(kernel_size, sigma, dtype=dtype).to(counts.device)
    half = (kernel_size - 1) // 2
    # conv1d is a cross-correlation; the kernel is symmetric so it equals the convolution.
    return F.conv1d(counts.to(dtype)[None, None], kernel[None, None], padding=half)[0, 0]


def lds_bin_weights(
    counts: Tensor, *, kernel_size: int = 5, sigma: float = 2.0, power: float = 0.5
) -> Tensor:
    r"""Per-bin loss weights from the LDS effective density.

    .. math::
        w_b = \frac{c}{\tilde p_b^{\,\alpha}}, \qquad
        c = \frac{\sum_b n_b}{\sum_b n_b\, \tilde p_b^{-\alpha}}

    with :math:`\alpha` = ``power`` (1/2: inverse square root, the paper's choice for LDS), so
    the mean weight over the training samples, :math:`\sum_b n_b w_b / \sum_b n_b`, is 1.
    The density is smoothed first and the root taken after (the paper's order). A bin whose
    effective density is 0 (no training label within the kernel's reach) gets the largest
    weight among the bins of positive density, so labels there (only possible outside the
    training set) get a finite weight.

    Returns:
        :math:`w`, shape (B,), same dtype as :func:`lds_effective_density`.
    """
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power >= 0):
        raise ValueError(f"expected a non-negative finite power, got {power!r}")
    density = lds_effective_density(counts, kernel_size=kernel_size, sigma=sigma)
    n = counts.to(density.dtype)
    if not bool((n > 0).any()):
        raise ValueError("expected at least one training label in counts")
    tiny = torch.finfo(density.dtype).tiny
    inv = density.clamp_min(tiny).pow(-power)
    occupied_max = inv[density > 0].max()
    inv = torch.where(density > 0, inv, occupied_max)
    return inv * (n.sum() / (n * inv).sum())


def weighted_mse_loss(
    input: Tensor, target: Tensor, weight: Tensor, *, reduction: str = "mean"
) -> Tensor:
    r"""Per-sample weighted squared error, :math:`\ell_i = w_i \lVert \hat y_i - y_i \rVert^2 / D`.

    ``"mean"`` divides the sum by :math:`N` (not by :math:`\sum_i w_i`): with weights whose
    training mean is 1 (LDS) the loss keeps the scale of the plain MSE.

    Args:
        input: predictions, shape (N,) or (N, D).
        target: same shape as ``input``.
        weight: shape (N,).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        Shape (N,) for ``"none"``, a scalar otherwise.
    """
    check_reduction(reduction)
    if input.shape != target.shape:
        raise ValueError(
            "expected input and target of the same shape, got "
            f"{tuple(input.shape)} and {tuple(target.shape)}"
        )
    x, y = _as_column(input, "input"), _as_column(target, "target")
    if weight.shape != (x.shape[0],):
        raise ValueError(f"expected weight of shape ({x.shape[0]},), got {tuple(weight.shape)}")
    per_sample = (x - y).pow(2).mean(dim=1) * weight.to(x.dtype)
    return reduce(per_sample, reduction)


class LDSReweighting(nn.Module):
    r"""Maps labels to LDS inverse-square-root weights (Yang et al., ICML 2021).

    :meth:`fit` histograms the training labels into equal-width bins (``num_bins`` over
    ``[low, high]``, default the training range, or explicit ``edges``), smooths the
    histogram (:func:`lds_effective_density`) and stores the per-bin weights
    (:func:`lds_bin_weights`). :meth:`forward` looks labels up with ``bucketize``; labels
    outside the edges take the first or last bin. The mean weight of the training labels is 1.

    Args:
        num_bins: number of bins when ``edges`` is not given.
        kernel_size: LDS kernel size :math:`s` (5).
        sigma: LDS kernel :math:`\sigma` in bins (2).
        power: the reweighting exponent :math:`\alpha` (1/2, inverse square root).
        low, high: the binned range; default the training labels' min and max.
        edges: explicit increasing bin edges, shape (B+1,).

    Example:
        >>> lds = LDSReweighting(num_bins=4, kernel_size=3, sigma=1.0)
        >>> lds = lds.fit(torch.tensor([0., 0., 1., 3.]))
        >>> w = lds(torch.tensor([0., 0., 1., 3.]))
        >>> round(float(w.mean()), 6)
        1.0
    """

    edges: Tensor
    bin_weights: Tensor
    counts: Tensor

    def __init__(
        self,
        num_bins: int = 50,
        *,
        kernel_size: int = 5,
        sigma: float = 2.0,
        power: float = 0.5,
        low: float | None = None,
        high: float | None = None,
        edges: Tensor | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"expected num_bins to be a positive int, got {num_bins!r}")
        gaussian_kernel(kernel_size, sigma)  # validates both
        if edges is not None:
            edges = torch.as_tensor(edges, dtype=torch.float64)
            if edges.dim() != 1 or edges.numel() < 2 or bool((edges.diff() <= 0).any()):
                raise ValueError(f"expected increasing 1-D edges with >= 2 entries, got {edges}")
            num_bins = edges.numel() - 1
        self.num_bins = num_bins
        self.kernel_size = kernel_size
        self.sigma = float(sigma)
        self.power = float(power)
        self.low, self.high = low, high
        self._has_edges = edges is not None
        if edges is None:
            edges = torch.zeros(num_bins + 1, dtype=torch.float64)
        self.register_buffer("edges", edges)
        self.register_buffer("counts", torch.zeros(num_bins, dtype=torch.long))
        self.register_buffer("bin_weights", torch.ones(num_bins, dtype=torch.float64))

    def fit(self, labels: Tensor) -> LDSReweighting:
        """Histogram ``labels`` (training targets, shape (N,) or (N, 1)) and store the weights."""
        y = torch.as_tensor(labels).detach().reshape(-1).to("cpu", torch.float64)
        if y.numel() == 0 or not bool(torch.isfinite(y).all()):
            raise ValueError("expected a non-empty set of finite training labels")
        if not self._has_edges:
            lo = float(y.min()) if self.low is None else float(self.low)
            hi = float(y.max()) if self.high is None else float(self.high)
            if hi <= lo:
                hi = lo + 1.0
            self.edges.copy_(torch.linspace(lo, hi, self.num_bins + 1, dtype=torch.float64))
        counts = torch.bincount(self._bin(y), minlength=self.num_bins)
        self.counts.copy_(counts)
        w = lds_bin_weights(
            counts, kernel_size=self.kernel_size, sigma=self.sigma, power=self.power
        )
        self.bin_weights.copy_(w)
        return self

    def _bin(self, y: Tensor) -> Tensor:
        inner = self.edges[1:-1].to(y.device)
        return torch.bucketize(y.to(torch.float64), inner, right=True)

    def forward(self, target: Tensor) -> Tensor:
        """Weights of ``target`` (shape (N,) or (N, 1)), shape (N,), dtype of ``target``."""
        y = target.reshape(target.shape[0], -1)[:, 0] if target.dim() > 1 else target
        return self.bin_weights[self._bin(y)].to(target.dtype)


class LDSWeightedMSELoss(nn.Module):
    r"""MSE reweighted by LDS inverse-square-root weights: :func:`weighted_mse_loss` with
    :math:`w_i` = ``reweighting(target_i)``.

    Args:
        reweighting: a fitted :class:`LDSReweighting`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    """

    def __init__(self, reweighting: LDSReweighting, *, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reweighting = reweighting
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return weighted_mse_loss(input, target, self.reweighting(target), reduction=self.reduction)
