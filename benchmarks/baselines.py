r"""Baselines of deep imbalanced regression, written from their papers' equations.

* **LDS + inverse-square-root reweighting** — Yang, Zha, Chen, Wang, Katabi, "Delving into
  Deep Imbalanced Regression", ICML 2021 (label distribution smoothing, Sec. 3.1).
* **Balanced MSE, BMC** — Ren, Zhang, Yi, Wang, Zheng, "Balanced MSE for Imbalanced Visual
  Regression", CVPR 2022 (Batch-based Monte-Carlo, Sec. 3.3 and Algorithm 1).
* **RankSim** — Gong, Mori, Tung, "RankSim: Ranking Similarity Regularization for Deep
  Imbalanced Regression", ICML 2022, with the ranking differentiated by the blackbox
  combinatorial-solver gradient of Vlastelica, Paulus, Musil, Martius, Rolínek,
  "Differentiation of Blackbox Combinatorial Solvers", ICLR 2020.

They follow the package's shape (a pure function plus a thin ``nn.Module``) but live in
``benchmarks/``: they are comparison points for the accuracy benchmark, not library API.
``RankSimLoss`` with ``unique_labels=True`` (the paper's sampling) calls ``torch.unique`` and
so syncs with the host and does not compile with ``fullgraph=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dirloss._validation import check_reduction, reduce

__all__ = [
    "BMCLoss",
    "LDSReweighting",
    "LDSWeightedMSELoss",
    "RankSimLoss",
    "blackbox_rank",
    "bmc_loss",
    "gaussian_kernel",
    "lds_bin_weights",
    "lds_effective_density",
    "ranksim_loss",
    "unique_label_mask",
    "weighted_mse_loss",
]

def _as_column(x: Tensor, name: str) -> Tensor:
    """(N,) or (N, D) -> (N, D)."""
    if x.dim() == 1:
        return x[:, None]
    if x.dim() == 2:
        return x
    raise ValueError(f"expected {name} of shape (N,) or (N, D), got {tuple(x.shape)}")


# =============================================================================================
# LDS + inverse-square-root reweighting (Yang et al., ICML 2021)
# =============================================================================================
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
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
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
        raise ValueError(f"expected input and target of the same shape, got {tuple(input.shape)} and {tuple(target.shape)}")
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
        >>> lds = LDSReweighting(num_bins=4, kernel_size=3, sigma=1.0).fit(torch.tensor([0., 0., 1., 3.]))
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
        self.register_buffer("edges", edges if edges is not None else torch.zeros(num_bins + 1, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(num_bins, dtype=torch.long))
        self.register_buffer("bin_weights", torch.ones(num_bins, dtype=torch.float64))
        self._has_edges = edges is not None

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
        w = lds_bin_weights(counts, kernel_size=self.kernel_size, sigma=self.sigma, power=self.power)
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


# =============================================================================================
# Balanced MSE, Batch-based Monte-Carlo (Ren et al., CVPR 2022)
# =============================================================================================
def bmc_loss(
    input: Tensor,
    target: Tensor,
    *,
    noise_var: Tensor | float,
    reduction: str = "mean",
) -> Tensor:
    r"""Balanced MSE with the Batch-based Monte-Carlo (BMC) estimate (Ren et al., 2022).

    The batch's targets stand in for samples of the training label distribution, so the
    balanced likelihood of sample :math:`i` is a softmax over the batch:

    .. math::
        \ell_i = -\log \frac{\exp\!\big(-\lVert \hat y_i - y_i \rVert^2 / 2\sigma^2\big)}
                            {\sum_{j=1}^{N} \exp\!\big(-\lVert \hat y_i - y_j \rVert^2 / 2\sigma^2\big)}
                 \cdot 2\sigma^2 ,

    i.e. ``cross_entropy(logits, arange(N)) * 2 * noise_var`` with
    :math:`\text{logits}_{ij} = -\lVert \hat y_i - y_j \rVert^2 / 2\sigma^2`. The factor
    :math:`2\sigma^2` only restores the MSE's scale; as in the paper's Algorithm 1 it is
    treated as a constant (detached), so a learnable :math:`\sigma^2` is trained by the
    likelihood term alone.

    Args:
        input: predictions :math:`\hat y`, shape (N,) or (N, D).
        target: labels :math:`y`, same shape.
        noise_var: :math:`\sigma^2 > 0`, a float or a scalar tensor (learnable or not).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        Shape (N,) for ``"none"``, a scalar otherwise. ``N = 1`` gives 0.

    Example:
        >>> float(bmc_loss(torch.tensor([0., 1.]), torch.tensor([0., 2.]), noise_var=0.5))  # doctest: +ELLIPSIS
        0.35564...
    """
    check_reduction(reduction)
    if input.shape != target.shape:
        raise ValueError(f"expected input and target of the same shape, got {tuple(input.shape)} and {tuple(target.shape)}")
    x, y = _as_column(input, "input"), _as_column(target, "target").to(input.dtype)
    var = torch.as_tensor(noise_var, dtype=x.dtype, device=x.device)
    if var.dim() != 0:
        raise ValueError(f"expected a scalar noise_var, got shape {tuple(var.shape)}")
    sq_dist = (x[:, None, :] - y[None, :, :]).pow(2).sum(dim=-1)  # (N, N)
    logits = -sq_dist / (2.0 * var)
    # -log softmax at the diagonal, max-subtracted by logsumexp.
    nll = torch.logsumexp(logits, dim=1) - logits.diagonal()
    return reduce(nll * (2.0 * var).detach(), reduction)


class BMCLoss(nn.Module):
    r"""Balanced MSE (BMC) with a fixed or learnable noise scale; see :func:`bmc_loss`.

    The noise is parameterised by :math:`\sigma` (``noise_sigma``) and :math:`\sigma^2` is
    used. With ``learnable=True`` it is an ``nn.Parameter`` (give it to the optimiser; the
    paper uses a separate learning rate for it), otherwise a buffer.

    Args:
        init_noise_sigma: initial :math:`\sigma > 0`.
        learnable: make :math:`\sigma` a parameter.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    """

    def __init__(self, init_noise_sigma: float = 1.0, *, learnable: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        if not (isinstance(init_noise_sigma, (int, float)) and math.isfinite(init_noise_sigma) and init_noise_sigma > 0):
            raise ValueError(f"expected a positive finite init_noise_sigma, got {init_noise_sigma!r}")
        sigma = torch.tensor(float(init_noise_sigma))
        if learnable:
            self.noise_sigma = nn.Parameter(sigma)
        else:
            self.register_buffer("noise_sigma", sigma)
        self.learnable = learnable
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return bmc_loss(input, target, noise_var=self.noise_sigma.pow(2), reduction=self.reduction)


# =============================================================================================
# RankSim (Gong et al., ICML 2022) with the blackbox ranking gradient (Vlastelica et al., 2020)
# =============================================================================================
def _rank(scores: Tensor) -> Tensor:
    """Ascending ranks along the last dim, 1..n divided by n (ties broken by position)."""
    n = scores.shape[-1]
    order = torch.argsort(scores, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, n + 1, device=scores.device).expand_as(order))
    return ranks.to(scores.dtype) / max(n, 1)


class _BlackboxRank(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, interpolation_lambda: float) -> Tensor:  # type: ignore[override]
        ranks = _rank(scores)
        ctx.lam = interpolation_lambda
        ctx.save_for_backward(scores, ranks)
        return ranks

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        scores, ranks = ctx.saved_tensors
        perturbed = _rank(scores + ctx.lam * grad_output)
        return (perturbed - ranks) / ctx.lam, None


def blackbox_rank(scores: Tensor, interpolation_lambda: float = 2.0) -> Tensor:
    r"""Row-wise ranks with the blackbox-solver gradient (Vlastelica et al., ICLR 2020).

    Forward: :math:`r = \operatorname{rk}(s)`, the ascending rank of every entry along the
    last dimension (1 for the smallest), divided by the row length :math:`n` so ranks lie in
    :math:`(0, 1]`. Ties are broken by position. Backward, for an upstream gradient
    :math:`g = \partial L / \partial r`:

    .. math:: \frac{\partial L}{\partial s} \approx
              \frac{\operatorname{rk}(s + \lambda g) - \operatorname{rk}(s)}{\lambda},

    the gradient of the piecewise-linear interpolation of :math:`L \circ \operatorname{rk}`
    with interpolation strength :math:`\lambda` (the true gradient is 0 almost everywhere).
    ``gradcheck`` does not apply: this is a surrogate gradient by design.

    Args:
        scores: shape (..., n).
        interpolation_lambda: :math:`\lambda > 0`.

    Example:
        >>> blackbox_rank(torch.tensor([0.1, 0.5, 0.3]))
        tensor([0.3333, 1.0000, 0.6667])
    """
    if not (isinstance(interpolation_lambda, (int, float)) and math.isfinite(interpolation_lambda) and interpolation_lambda > 0):
        raise ValueError(f"expected a positive finite interpolation_lambda, got {interpolation_lambda!r}")
    return _BlackboxRank.apply(scores, float(interpolation_lambda))


def unique_label_mask(target: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""A boolean mask keeping one sample, chosen uniformly at random, per distinct label.

    Each sample gets a distinct random key (a random permutation); within a label the sample
    with the largest key is kept. Host-syncing (``torch.unique``).

    Args:
        target: labels, shape (N,) or (N, 1).
        generator: optional ``torch.Generator`` (on ``target``'s device) for the choice.

    Returns:
        Shape (N,), bool, exactly one ``True`` per distinct label.
    """
    y = target.reshape(target.shape[0], -1)[:, 0] if target.dim() > 1 else target
    n = y.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=y.device)
    _, inverse = torch.unique(y, return_inverse=True)
    key = torch.randperm(n, generator=generator, device=y.device)
    best = torch.full((n,), -1, dtype=key.dtype, device=y.device)
    best = best.scatter_reduce(0, inverse, key, reduce="amax")
    return key == best[inverse]


def ranksim_loss(
    features: Tensor,
    target: Tensor,
    *,
    interpolation_lambda: float = 2.0,
    unique_labels: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The RankSim regulariser (Gong et al., ICML 2022), before its weight :math:`\gamma`.

    For the batch (after keeping one sample per distinct label, the paper's sampling, when
    ``unique_labels``) the label similarity :math:`S^y_{ij} = -|y_i - y_j|` and the feature
    similarity :math:`S^z_{ij} = \cos(z_i, z_j)` are ranked row by row, and the ranks are
    pulled together:

    .. math:: \mathcal{L}_{\text{RankSim}} = \frac{1}{M^2} \sum_{i=1}^{M}
              \big\lVert \operatorname{rk}(S^z_{i,:}) - \operatorname{rk}(S^y_{i,:}) \big\rVert_2^2 ,

    with the ranks of :func:`blackbox_rank` (normalised by :math:`M`, so the value does not
    grow with the batch) and :math:`M` the number of kept samples; only the feature ranks
    carry a gradient. The diagonal is kept (each row ranks itself highest in both matrices).
    Ties in :math:`S^y` (:math:`y_j = y_i \pm d`) are broken by position.

    Args:
        features: :math:`z`, shape (N, D).
        target: :math:`y`, shape (N,) or (N, 1).
        interpolation_lambda: :math:`\lambda` of the blackbox gradient.
        unique_labels: keep one random sample per distinct label (host sync).
        generator: random choice of that sample.

    Returns:
        A scalar; 0 (in the graph) when fewer than two samples are kept.
    """
    if features.dim() != 2:
        raise ValueError(f"expected features of shape (N, D), got {tuple(features.shape)}")
    y = target.reshape(target.shape[0], -1) if target.dim() > 1 else target[:, None]
    if y.shape != (features.shape[0], 1):
        raise ValueError(
            f"expected target of shape ({features.shape[0]},) or ({features.shape[0]}, 1), got {tuple(target.shape)}"
        )
    y = y[:, 0].to(features.dtype)
    if unique_labels:
        keep = unique_label_mask(y, generator=generator)
        features, y = features[keep], y[keep]
    m = features.shape[0]
    if m < 2:
        return 0.0 * features.sum()
    z = F.normalize(features, dim=1)
    sim_z = z @ z.t()
    sim_y = -(y[:, None] - y[None, :]).abs()
    rank_z = blackbox_rank(sim_z, interpolation_lambda)
    rank_y = _rank(sim_y)
    return F.mse_loss(rank_z, rank_y)


class RankSimLoss(nn.Module):
    r""":math:`\gamma \cdot` :func:`ranksim_loss`; add it to the task loss.

    :math:`\gamma` and :math:`\lambda` interact: the ranker's backward perturbs the
    similarities by :math:`\lambda g`, and the upstream gradient :math:`g` already carries
    :math:`\gamma` (and the :math:`1/M^2` of the mean). With :math:`\gamma` of order 1 the
    perturbation is too small to swap any rank and the gradient is mostly 0; a
    :math:`\gamma` of order 100 with :math:`\lambda = 2` trains (see the tests).

    Args:
        gamma: the regulariser's weight :math:`\gamma \ge 0`.
        interpolation_lambda: :math:`\lambda > 0` of the blackbox ranking gradient.
        unique_labels: keep one sample per distinct label (the paper's sampling).
    """

    def __init__(self, gamma: float = 1.0, *, interpolation_lambda: float = 2.0, unique_labels: bool = True) -> None:
        super().__init__()
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"expected a non-negative finite gamma, got {gamma!r}")
        if not (isinstance(interpolation_lambda, (int, float)) and math.isfinite(interpolation_lambda) and interpolation_lambda > 0):
            raise ValueError(f"expected a positive finite interpolation_lambda, got {interpolation_lambda!r}")
        self.gamma = float(gamma)
        self.interpolation_lambda = float(interpolation_lambda)
        self.unique_labels = unique_labels

    def forward(self, features: Tensor, target: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return self.gamma * ranksim_loss(
            features,
            target,
            interpolation_lambda=self.interpolation_lambda,
            unique_labels=self.unique_labels,
            generator=generator,
        )
