r"""RankSim (Gong, Mori, Tung, "RankSim: Ranking Similarity Regularization for Deep Imbalanced
Regression", ICML 2022), with the ranking differentiated by the blackbox combinatorial-solver
gradient of Vlastelica, Paulus, Musil, Martius, Rolínek, "Differentiation of Blackbox
Combinatorial Solvers", ICLR 2020.

``RankSimLoss`` with ``unique_labels=True`` (the paper's sampling) calls ``torch.unique`` and
so syncs with the host and does not compile with ``fullgraph=True``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _rank(scores: Tensor) -> Tensor:
    """Ascending ranks along the last dim, 1..n divided by n (ties broken by position)."""
    n = scores.shape[-1]
    order = torch.argsort(scores, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, n + 1, device=scores.device).expand_as(order))
    return ranks.to(scores.dtype) / max(n, 1)


class _BlackboxRank(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, scores: Tensor, interpolation_lambda: float) -> Tensor:
        ranks = _rank(scores)
        ctx.lam = interpolation_lambda
        ctx.save_for_backward(scores, ranks)
        return ranks

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        scores, ranks = ctx.saved_tensors
        perturbed = _rank(scores + ctx.lam * grad_output)
        return (perturbed - ranks) / ctx.lam, None


def _check_interpolation_lambda(value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"expected a positive finite interpolation_lambda, got {value!r}")


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
    _check_interpolation_lambda(interpolation_lambda)
    return _BlackboxRank.apply(  # type: ignore[no-untyped-call]
        scores, float(interpolation_lambda)
    )


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
              \big\lVert \operatorname{rk}(S^z_{i,:}) - \operatorname{rk}(S^y_{i,:})
              \big\rVert_2^2 ,

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
            f"expected target of shape ({features.shape[0]},) or ({features.shape[0]}, 1), "
            f"got {tuple(target.shape)}"
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

    def __init__(
        self, gamma: float = 1.0, *, interpolation_lambda: float = 2.0, unique_labels: bool = True
    ) -> None:
        super().__init__()
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"expected a non-negative finite gamma, got {gamma!r}")
        _check_interpolation_lambda(interpolation_lambda)
        self.gamma = float(gamma)
        self.interpolation_lambda = float(interpolation_lambda)
        self.unique_labels = unique_labels

    def forward(
        self, features: Tensor, target: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        return self.gamma * ranksim_loss(
            features,
            target,
            interpolation_lambda=self.interpolation_lambda,
            unique_labels=self.unique_labels,
            generator=generator,
        )
