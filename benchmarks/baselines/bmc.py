r"""Balanced MSE with Batch-based Monte-Carlo, BMC (Ren, Zhang, Yi, Wang, Zheng, "Balanced MSE
for Imbalanced Visual Regression", CVPR 2022; Sec. 3.3 and Algorithm 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dirloss._validation import check_reduction, reduce

from ._common import _as_column


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
        >>> loss = bmc_loss(torch.tensor([0., 1.]), torch.tensor([0., 2.]), noise_var=0.5)
        >>> float(loss)  # doctest: +ELLIPSIS
        0.35564...
    """
    check_reduction(reduction)
    if input.shape != target.shape:
        raise ValueError(
            "expected input and target of the same shape, got "
            f"{tuple(input.shape)} and {tuple(target.shape)}"
        )
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

    def __init__(
        self, init_noise_sigma: float = 1.0, *, learnable: bool = False, reduction: str = "mean"
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        sigma_ok = isinstance(init_noise_sigma, (int, float)) and math.isfinite(init_noise_sigma)
        if not (sigma_ok and init_noise_sigma > 0):
            raise ValueError(
                f"expected a positive finite init_noise_sigma, got {init_noise_sigma!r}"
            )
        sigma = torch.tensor(float(init_noise_sigma))
        if learnable:
            self.noise_sigma = nn.Parameter(sigma)
        else:
            self.register_buffer("noise_sigma", sigma)
        self.learnable = learnable
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return bmc_loss(input, target, noise_var=self.noise_sigma.pow(2), reduction=self.reduction)
