r"""Balanced MSE: BMC, GAI and BNI (Ren, Zhang, Yi, Wang, Zheng, CVPR 2022).

"Balanced MSE for Imbalanced Visual Regression" replaces the Gaussian likelihood behind the
MSE by a *balanced* one, the likelihood divided by the training label density: with
predictions :math:`\hat y`, noise variance :math:`\sigma^2` and training label density
:math:`p_{tr}`,

.. math::
    \ell = -\log \mathcal N(y; \hat y, \sigma^2)
           + \log \int \mathcal N(y'; \hat y, \sigma^2)\, p_{tr}(y')\, dy' ,

scaled by :math:`2\sigma^2` (detached) so its gradient has the MSE's scale. The integral is
estimated three ways:

* **BMC** (:func:`bmc_loss`): the batch's targets as samples of :math:`p_{tr}` (a softmax
  over the batch); needs no statistics, but needs a batch of at least two;
* **GAI** (:func:`gai_loss`): :math:`p_{tr}` as a Gaussian mixture fitted to the training
  labels (:meth:`GAILoss.fit`), integrated in closed form;
* **BNI** (:func:`bni_loss`): :math:`p_{tr}` as a histogram of the training labels
  (:meth:`BNILoss.fit`), summed over its bins.

The noise :math:`\sigma` is learnable in the modules (``learnable=True``, the official
default: give the module's parameters to the optimiser).

**The loss is not an error.** It is a log-likelihood *ratio* up to constants, so its value
can be negative (BNI and GAI often are, BMC never is) and its minimum is not 0; compare
models by their errors, not by this value. Its gradient in :math:`\hat y` is what matters.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._fitted import Fitted, check_num_bins
from ._validation import (
    DeferredInit,
    as_float64_array,
    check_reduction,
    check_same_device,
    equal_width_edges,
    reduce,
    without_autocast,
)
from .metrics import _check_edges

__all__ = ["BMCLoss", "BNILoss", "GAILoss", "bmc_loss", "bni_loss", "fit_gmm", "gai_loss"]


def _check_pair(input: Tensor, target: Tensor, *, one_dim: bool) -> tuple[Tensor, Tensor]:
    """(N,) / (N, D) predictions and targets of one shape -> (N, D) (D = 1 when one_dim), in
    at least float32 (half-precision squared errors over 2 sigma^2 overflow early)."""
    if not input.dtype.is_floating_point:
        raise ValueError(f"expected floating input, got dtype {input.dtype}")
    if input.shape != target.shape:
        raise ValueError(
            f"expected input and target of the same shape, got {tuple(input.shape)} and "
            f"{tuple(target.shape)}"
        )
    check_same_device("input", input, "target", target)
    if input.dim() == 1:
        input, target = input[:, None], target[:, None]
    if input.dim() != 2 or (one_dim and input.shape[1] != 1):
        want = "(N,) or (N, 1)" if one_dim else "(N,) or (N, D)"
        raise ValueError(f"expected input of shape {want}, got {tuple(input.shape)}")
    work = torch.promote_types(input.dtype, torch.float32)
    return input.to(work), target.to(work)


def _as_var(noise_var: Tensor | float, like: Tensor) -> Tensor:
    if not isinstance(noise_var, Tensor) and not (
        isinstance(noise_var, (int, float)) and not isinstance(noise_var, bool)
        and math.isfinite(noise_var) and noise_var > 0
    ):
        raise ValueError(f"expected a positive finite noise_var, got {noise_var!r}")
    var = torch.as_tensor(noise_var, dtype=like.dtype, device=like.device)
    if var.dim() != 0:
        raise ValueError(f"expected a scalar noise_var, got shape {tuple(var.shape)}")
    return var


def _statistic(name: str, value: Tensor, like: Tensor) -> Tensor:
    check_same_device("input", like, name, value)
    return value.to(like.dtype)


def bmc_loss(
    input: Tensor, target: Tensor, *, noise_var: Tensor | float, reduction: str = "mean"
) -> Tensor:
    r"""Balanced MSE with the Batch-based Monte-Carlo estimate (BMC; Algorithm 1 of the paper).

    .. math::
        \ell_i = -\log \frac{\exp(-\lVert \hat y_i - y_i \rVert^2 / 2\sigma^2)}
            {\sum_{j=1}^{N} \exp(-\lVert \hat y_i - y_j \rVert^2 / 2\sigma^2)}
            \cdot 2\sigma^2 ,

    i.e. ``cross_entropy(logits, arange(N)) * 2 * noise_var`` with the logits
    :math:`-\lVert \hat y_i - y_j\rVert^2 / 2\sigma^2`; :math:`2\sigma^2` is detached.

    A batch of one has nothing to balance against: the softmax is 1, the loss 0 and its
    gradient 0. That is the estimator, not a bug, so the function warns (``UserWarning``,
    outside ``torch.compile``); drop the last incomplete batch (``drop_last=True``) or use
    :func:`bni_loss` / :func:`gai_loss`, which do not depend on the batch.

    Args:
        input: :math:`\hat y`, (N,) or (N, D).
        target: :math:`y`, the same shape.
        noise_var: :math:`\sigma^2 > 0`, a float or a scalar tensor (may require grad).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        (N,) for ``"none"``, else a scalar; :math:`\ge 0`. Computed in at least float32,
        outside autocast.

    Example:
        >>> loss = bmc_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0]), noise_var=0.5)
        >>> round(float(loss), 4)
        0.3556
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target, one_dim=False)
    var = _as_var(noise_var, x)
    if x.shape[0] == 1 and not torch.compiler.is_compiling():
        warnings.warn(
            "bmc_loss got a batch of one sample: BMC balances within the batch, so the loss "
            "and its gradient are 0; use drop_last=True or bni_loss/gai_loss",
            stacklevel=2,
        )
    with without_autocast(x.device.type):
        if x.shape[1] == 1:  # scalar targets: no reduction over D
            sq = (x - y.t()).pow(2)
        else:
            sq = (x[:, None, :] - y[None, :, :]).pow(2).sum(dim=-1)
        logits = -sq / (2.0 * var)  # (N, N)
        # cross_entropy's fused log-softmax: logsumexp's exp of very negative logits (raw
        # labels, small sigma) is several times slower on CPU
        rows = torch.arange(x.shape[0], device=x.device)
        nll = F.cross_entropy(logits, rows, reduction="none")
        return reduce(nll * (2.0 * var).detach(), reduction)


def bni_loss(
    input: Tensor,
    target: Tensor,
    *,
    noise_var: Tensor | float,
    bin_centers: Tensor,
    bin_probs: Tensor,
    reduction: str = "mean",
) -> Tensor:
    r"""Balanced MSE with Bin-based Numerical Integration (BNI).

    With the training histogram's bin centres :math:`c_b` and probabilities :math:`p_b`:

    .. math::
        \ell_i = \Big[\frac{(\hat y_i - y_i)^2}{2\sigma^2}
            + \log \sum_b p_b \exp\Big(-\frac{(\hat y_i - c_b)^2}{2\sigma^2}\Big)\Big]
            \cdot 2\sigma^2

    (the Gaussians' normalisers cancel). Empty bins (:math:`p_b = 0`) drop out.

    Args:
        input: :math:`\hat y`, (N,) or (N, 1).
        target: :math:`y`, the same shape.
        noise_var: :math:`\sigma^2 > 0`.
        bin_centers: (B,) :math:`c_b`, on ``input``'s device.
        bin_probs: (B,) :math:`p_b \ge 0`, summing to 1 (not checked: a host read).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        (N,) for ``"none"``, else a scalar; may be negative. Computed in at least float32,
        outside autocast.

    Example:
        >>> centers, probs = torch.tensor([0.0, 1.0]), torch.tensor([0.9, 0.1])
        >>> loss = bni_loss(torch.zeros(2), torch.tensor([0.0, 1.0]), noise_var=1.0,
        ...                 bin_centers=centers, bin_probs=probs)
        >>> round(float(loss), 4)
        0.4197
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target, one_dim=True)
    var = _as_var(noise_var, x)
    if bin_centers.dim() != 1 or bin_probs.shape != bin_centers.shape:
        raise ValueError(
            f"expected bin_centers and bin_probs of one shape (B,), got "
            f"{tuple(bin_centers.shape)} and {tuple(bin_probs.shape)}"
        )
    centers = _statistic("bin_centers", bin_centers, x)
    log_p = _statistic("bin_probs", bin_probs, x).log()  # log 0 = -inf: the bin drops out
    with without_autocast(x.device.type):
        fit = (x[:, 0] - y[:, 0]).pow(2) / (2.0 * var)
        balance = torch.logsumexp(log_p - (x - centers).pow(2) / (2.0 * var), dim=1)
        return reduce((fit + balance) * (2.0 * var).detach(), reduction)


def gai_loss(
    input: Tensor,
    target: Tensor,
    *,
    noise_var: Tensor | float,
    means: Tensor,
    variances: Tensor,
    weights: Tensor,
    reduction: str = "mean",
) -> Tensor:
    r"""Balanced MSE with GMM-based Analytic Integration (GAI).

    With the training labels modelled as :math:`\sum_k \phi_k \mathcal N(\mu_k, v_k)`, the
    integral is :math:`\sum_k \phi_k \mathcal N(\hat y; \mu_k, v_k + \sigma^2)`:

    .. math::
        \ell_i = \Big[\frac{(\hat y_i - y_i)^2}{2\sigma^2} + \tfrac12 \log \sigma^2
            + \log \sum_k \frac{\phi_k}{\sqrt{v_k + \sigma^2}}
              \exp\Big(-\frac{(\hat y_i - \mu_k)^2}{2(v_k + \sigma^2)}\Big)\Big]
            \cdot 2\sigma^2 .

    Args:
        input: :math:`\hat y`, (N,) or (N, 1).
        target: :math:`y`, the same shape.
        noise_var: :math:`\sigma^2 > 0`.
        means, variances, weights: (K,) :math:`\mu_k`, :math:`v_k \ge 0`, :math:`\phi_k`
            (summing to 1; not checked: a host read), on ``input``'s device.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        (N,) for ``"none"``, else a scalar; may be negative. Computed in at least float32,
        outside autocast.

    Example:
        >>> loss = gai_loss(torch.zeros(2), torch.tensor([0.0, 1.0]), noise_var=1.0,
        ...                 means=torch.tensor([0.0]), variances=torch.tensor([1.0]),
        ...                 weights=torch.tensor([1.0]))
        >>> round(float(loss), 4)
        -0.1931
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target, one_dim=True)
    var = _as_var(noise_var, x)
    if not (means.dim() == 1 and variances.shape == means.shape == weights.shape):
        raise ValueError(
            f"expected means, variances and weights of one shape (K,), got "
            f"{tuple(means.shape)}, {tuple(variances.shape)} and {tuple(weights.shape)}"
        )
    mu = _statistic("means", means, x)
    log_phi = _statistic("weights", weights, x).log()
    with without_autocast(x.device.type):
        total = _statistic("variances", variances, x) + var  # (K,) v_k + sigma^2
        fit = (x[:, 0] - y[:, 0]).pow(2) / (2.0 * var) + 0.5 * var.log()
        log_terms = log_phi - 0.5 * total.log() - (x - mu).pow(2) / (2.0 * total)
        balance = torch.logsumexp(log_terms, dim=1)
        return reduce((fit + balance) * (2.0 * var).detach(), reduction)


class _NoiseScale(DeferredInit):
    """The learnable (or fixed) noise scale sigma shared by the three modules."""

    noise_sigma: Tensor

    def __init__(self, init_noise_sigma: float, learnable: bool, reduction: str) -> None:
        super().__init__()
        check_reduction(reduction)
        if isinstance(init_noise_sigma, bool) or not (
            isinstance(init_noise_sigma, (int, float))
            and math.isfinite(init_noise_sigma) and init_noise_sigma > 0
        ):
            raise ValueError(
                f"expected a positive finite init_noise_sigma, got {init_noise_sigma!r}"
            )
        self.init_noise_sigma, self.learnable, self.reduction = (
            float(init_noise_sigma), learnable, reduction,
        )
        sigma = torch.tensor(float(init_noise_sigma))
        if learnable:
            self.noise_sigma = nn.Parameter(sigma)
        else:
            self.register_buffer("noise_sigma", sigma)

    def _init_buffers(self) -> None:
        if not self.learnable:
            self.noise_sigma.fill_(self.init_noise_sigma)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.noise_sigma.fill_(self.init_noise_sigma)

    @property
    def noise_var(self) -> Tensor:
        """:math:`\\sigma^2`."""
        return self.noise_sigma.pow(2)

    def extra_repr(self) -> str:
        return (f"init_noise_sigma={self.init_noise_sigma}, learnable={self.learnable}, "
                f"reduction={self.reduction!r}")


class BMCLoss(_NoiseScale):
    r"""Balanced MSE with the batch-based Monte-Carlo estimate; see :func:`bmc_loss`.

    Args:
        init_noise_sigma: initial :math:`\sigma > 0` (official default 1).
        learnable: :math:`\sigma` as an ``nn.Parameter`` (official) or a fixed buffer. The
            official training script gives it its own parameter group with a learning rate
            of ``1e-2``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Shape:
        - input, target: (N,) or (N, D); output: (N,) or scalar.

    Example:
        >>> criterion = BMCLoss()
        >>> criterion(torch.randn(8), torch.randn(8)).shape
        torch.Size([])
    """

    def __init__(
        self, init_noise_sigma: float = 1.0, *, learnable: bool = True, reduction: str = "mean"
    ) -> None:
        super().__init__(init_noise_sigma, learnable, reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return bmc_loss(input, target, noise_var=self.noise_var, reduction=self.reduction)


def _training_labels(labels: Any) -> np.ndarray:
    y = as_float64_array(labels).reshape(-1)
    if y.size < 2 or not np.isfinite(y).all():
        raise ValueError(
            f"expected at least 2 finite training labels, got {y.size} with "
            f"{int((~np.isfinite(y)).sum())} NaN/inf"
        )
    return y


class BNILoss(_NoiseScale, Fitted):
    r"""Balanced MSE with bin-based numerical integration; see :func:`bni_loss`.

    :meth:`fit` histograms the training labels into ``num_bins`` equal-width bins over their
    range (or the given ``bin_edges``: float labels, any bins) and keeps the centres and
    probabilities in buffers (``state_dict``, ``.to(device)``). Assumes the histogram is
    fine enough that a bin's centre stands for its labels.

    The official code bins integer labels (ages) one bin per integer ``k``, centred *at*
    ``k``: that is ``bin_edges=np.arange(lo - 0.5, hi + 1.5)``, not ``num_bins`` (whose
    centres fall between the integers). It drops labels above its last bin, where
    :meth:`fit` counts labels outside the edges in the end bins; its optional LDS smoothing
    of the histogram is not offered here.

    Args:
        num_bins: B equal-width bins (omit with ``bin_edges``).
        bin_edges: (B + 1,) strictly increasing edges.
        init_noise_sigma, learnable, reduction: as :class:`BMCLoss`.

    Example:
        >>> criterion = BNILoss(20).fit(torch.randn(1000))
        >>> criterion(torch.zeros(4), torch.randn(4)).shape
        torch.Size([])
    """

    bin_centers: Tensor
    bin_probs: Tensor
    _fitted_by = "bin_probs"

    def __init__(
        self,
        num_bins: int | None = None,
        *,
        bin_edges: Any = None,
        init_noise_sigma: float = 1.0,
        learnable: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(init_noise_sigma, learnable, reduction)
        self._edges = None if bin_edges is None else _check_edges(bin_edges)
        self.num_bins = bins = check_num_bins(num_bins, self._edges)
        self.register_buffer("bin_centers", torch.full((bins,), math.nan, dtype=torch.float64))
        self.register_buffer("bin_probs", torch.full((bins,), math.nan, dtype=torch.float64))
        self._fitted = False

    def _init_buffers(self) -> None:
        super()._init_buffers()
        self.bin_centers.fill_(math.nan)
        self.bin_probs.fill_(math.nan)
        self._fitted = False

    def fit(self, labels: Any) -> BNILoss:
        """Histogram the training labels (labels outside given edges go to the end bins)."""
        y = _training_labels(labels)
        edges = self._edges
        if edges is None:
            edges = equal_width_edges(y, self.num_bins).numpy()
        index = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, self.num_bins - 1)
        counts = np.bincount(index, minlength=self.num_bins)
        device = self.bin_centers.device
        self.bin_centers.copy_(torch.from_numpy((edges[1:] + edges[:-1]) / 2).to(device))
        self.bin_probs.copy_(torch.from_numpy(counts / counts.sum()).to(device))
        self._fitted = True
        return self

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        self._require_fitted("BNILoss has no histogram yet: call fit(train_labels) first")
        return bni_loss(input, target, noise_var=self.noise_var, bin_centers=self.bin_centers,
                        bin_probs=self.bin_probs, reduction=self.reduction)


def fit_gmm(
    labels: Any, num_components: int, *, iterations: int = 500, tol: float = 1e-10
) -> tuple[Tensor, Tensor, Tensor]:
    r"""A 1-D Gaussian mixture fitted by expectation-maximisation, deterministically.

    Means start at the :math:`(k + \frac12)/K` quantiles, variances at the labels' variance
    over :math:`K^2`, weights at :math:`1/K`; variances are floored at :math:`10^{-6}` of the
    labels' variance so a component cannot collapse onto one repeated label. No random
    start, so the same labels give the same mixture. (The official code fits scikit-learn's
    ``GaussianMixture(K, random_state=0)`` offline; its k-means start can end in another
    local optimum.)

    Args:
        labels: the training labels, any shape (flattened), at least 2 and finite.
        num_components: K, at most the number of labels.
        iterations: the most EM steps.
        tol: stop when the mean log-likelihood gains less than this.

    Returns:
        ``(means, variances, weights)``, each (K,) float64 on the CPU.

    Example:
        >>> y = torch.cat([torch.zeros(50), torch.ones(50)]) + 0.01 * torch.randn(100)
        >>> means, variances, weights = fit_gmm(y, 2)
        >>> [round(float(m), 1) + 0.0 for m in means], [round(float(w), 2) for w in weights]
        ([0.0, 1.0], [0.5, 0.5])
    """
    y = _training_labels(labels)
    if isinstance(num_components, bool) or not isinstance(num_components, int) or (
        not 1 <= num_components <= y.size
    ):
        raise ValueError(f"expected 1 <= num_components <= {y.size}, got {num_components!r}")
    k = num_components
    spread = float(y.var()) or 1.0
    mu = np.quantile(y, (np.arange(k) + 0.5) / k)
    var = np.full(k, spread / k**2)
    phi = np.full(k, 1.0 / k)
    previous = -math.inf
    for _ in range(iterations):
        log_r = np.log(phi) - 0.5 * np.log(2 * math.pi * var) - (y[:, None] - mu) ** 2 / (2 * var)
        top = log_r.max(axis=1, keepdims=True)
        log_lik = top[:, 0] + np.log(np.exp(log_r - top).sum(axis=1))
        r = np.exp(log_r - log_lik[:, None])
        nk = r.sum(axis=0) + 1e-300
        phi, mu = nk / y.size, (r * y[:, None]).sum(axis=0) / nk
        var = np.maximum((r * (y[:, None] - mu) ** 2).sum(axis=0) / nk, 1e-6 * spread)
        if log_lik.mean() - previous < tol:
            break
        previous = float(log_lik.mean())
    return tuple(torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (mu, var, phi))  # type: ignore[return-value]


class GAILoss(_NoiseScale, Fitted):
    r"""Balanced MSE with GMM-based analytic integration; see :func:`gai_loss`.

    :meth:`fit` fits a ``num_components`` Gaussian mixture to the training labels
    (:func:`fit_gmm`; the official code uses scikit-learn's, fitted offline) and keeps it in
    buffers. Assumes the training label density is well described by that mixture.

    Args:
        num_components: K.
        init_noise_sigma, learnable, reduction: as :class:`BMCLoss`.

    Example:
        >>> criterion = GAILoss(4).fit(torch.randn(1000).exp())
        >>> criterion(torch.zeros(4), torch.rand(4)).shape
        torch.Size([])
    """

    gmm_means: Tensor
    gmm_variances: Tensor
    gmm_weights: Tensor
    _fitted_by = "gmm_means"

    def __init__(
        self,
        num_components: int = 8,
        *,
        init_noise_sigma: float = 1.0,
        learnable: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(init_noise_sigma, learnable, reduction)
        if isinstance(num_components, bool) or not isinstance(num_components, int) or (
            num_components < 1
        ):
            raise ValueError(f"expected num_components >= 1, got {num_components!r}")
        self.num_components = num_components
        for name in ("gmm_means", "gmm_variances", "gmm_weights"):
            self.register_buffer(name, torch.full((num_components,), math.nan,
                                                  dtype=torch.float64))
        self._fitted = False

    def _init_buffers(self) -> None:
        super()._init_buffers()
        for buffer in (self.gmm_means, self.gmm_variances, self.gmm_weights):
            buffer.fill_(math.nan)
        self._fitted = False

    def fit(self, labels: Any, **em: Any) -> GAILoss:
        """Fit the mixture to the training labels (keyword arguments go to :func:`fit_gmm`)."""
        return self.set_mixture(*fit_gmm(labels, self.num_components, **em))

    def set_mixture(self, means: Any, variances: Any, weights: Any) -> GAILoss:
        """Use a mixture fitted elsewhere, e.g. the official workflow's scikit-learn
        ``GaussianMixture`` on 1-D labels: ``set_mixture(gmm.means_, gmm.covariances_,
        gmm.weights_)`` (any shapes holding K values each)."""
        k = self.num_components
        mu, var, phi = (as_float64_array(a).reshape(-1) for a in (means, variances, weights))
        if not mu.size == var.size == phi.size == k:
            raise ValueError(
                f"expected {k} means, variances and weights, got {mu.size}, {var.size} and "
                f"{phi.size}"
            )
        if not (np.isfinite(mu).all() and np.isfinite(var).all() and np.isfinite(phi).all()):
            raise ValueError("expected finite means, variances and weights, got NaN/inf")
        if (var < 0).any() or (phi < 0).any() or abs(phi.sum() - 1.0) > 1e-6:
            raise ValueError(
                f"expected variances >= 0 and weights >= 0 summing to 1, got variances "
                f"{var.tolist()} and weights {phi.tolist()}"
            )
        for buffer, value in zip((self.gmm_means, self.gmm_variances, self.gmm_weights),
                                 (mu, var, phi)):
            buffer.copy_(torch.from_numpy(value).to(buffer.device))
        self._fitted = True
        return self

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        self._require_fitted("GAILoss has no mixture yet: call fit(train_labels) first")
        return gai_loss(input, target, noise_var=self.noise_var, means=self.gmm_means,
                        variances=self.gmm_variances, weights=self.gmm_weights,
                        reduction=self.reduction)
