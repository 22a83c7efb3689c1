r"""RankSim: ranking-similarity regularisation (Gong, Mori, Tung, ICML 2022).

RankSim pulls the order of each sample's neighbours in feature space towards their order in
label space: for every anchor :math:`i` of the batch, the ranks of its feature similarities
:math:`\cos(z_i, z_j)` should equal the ranks of its label similarities :math:`-|y_i - y_j|`.
Ranking is piecewise constant, so its gradient is taken from the blackbox combinatorial-solver
rule of Vlastelica, Paulus, Musil, Martius, Rolínek ("Differentiation of Blackbox
Combinatorial Solvers", ICLR 2020), as in the official code.

Reproduced from the official code: the per-anchor MSE of normalised ranks, *summed* over the
anchors (``reduction="sum"``; ``"mean"`` divides by their number); cosine similarity of the
flattened features; one random sample per distinct label (``unique_labels=True``, which calls
``torch.unique`` and so syncs with the host; ``False`` compiles with ``fullgraph=True``);
ties broken by position the way a stable sort breaks them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import without_autocast

__all__ = ["RankSimLoss", "blackbox_rank", "ranksim_loss", "unique_label_mask"]

_REDUCTIONS = ("sum", "mean")


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
        # Ascending ranks maximise <s, r>: the solver minimising <w, r> runs on w = -s, whose
        # blackbox step w + lambda g is s - lambda g.
        perturbed = _rank(scores - ctx.lam * grad_output)
        return (ranks - perturbed) / ctx.lam, None


def _check_lambda(value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"expected a positive finite interpolation_lambda, got {value!r}")


def blackbox_rank(scores: Tensor, interpolation_lambda: float = 2.0) -> Tensor:
    r"""Row-wise ranks with the blackbox-solver gradient (Vlastelica et al., ICLR 2020).

    Forward: :math:`r = \operatorname{rk}(s) / n`, the ascending rank along the last
    dimension (1 for the smallest entry, ties broken by position), so ranks lie in
    :math:`(0, 1]`. Ascending ranks maximise :math:`\langle s, r \rangle`, i.e. they are
    the solver :math:`\arg\min_r \langle w, r\rangle` at :math:`w = -s`; the blackbox rule
    :math:`\partial L / \partial w \approx -(r(w) - r(w + \lambda g)) / \lambda` for an
    upstream gradient :math:`g = \partial L / \partial r` then gives

    .. math:: \frac{\partial L}{\partial s} \approx
              \frac{\operatorname{rk}(s) - \operatorname{rk}(s - \lambda g)}{n \lambda},

    the gradient of a piecewise-linear interpolation of :math:`L \circ \operatorname{rk}`
    (the true gradient is 0 almost everywhere). A descending ranker with the step
    :math:`s + \lambda g`, as in the official code, gives the same gradient.

    Args:
        scores: (..., n).
        interpolation_lambda: :math:`\lambda > 0`.

    Returns:
        (..., n) ranks in ``scores``' dtype.

    Example:
        >>> s = torch.tensor([0.1, 0.2], requires_grad=True)
        >>> r = blackbox_rank(s, 1.0)  # [0.5, 1.0]; the loss wants them swapped
        >>> ((r - torch.tensor([1.0, 0.5])) ** 2).mean().backward()
        >>> s.grad  # descent raises s[0] and lowers s[1]
        tensor([-0.5000,  0.5000])
    """
    _check_lambda(interpolation_lambda)
    ranks: Tensor = _BlackboxRank.apply(  # type: ignore[no-untyped-call]
        scores, float(interpolation_lambda)
    )
    return ranks


def unique_label_mask(target: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""A boolean mask keeping one sample, chosen uniformly at random, per distinct label.

    Host-syncing (``torch.unique``); use it outside compiled regions.

    Args:
        target: (N,) or (N, 1) labels.
        generator: ``torch.Generator`` on ``target``'s device for the choice.

    Returns:
        (N,) bool, exactly one ``True`` per distinct label.

    Example:
        >>> unique_label_mask(torch.tensor([3.0, 1.0, 3.0])).sum()
        tensor(2)
    """
    y = target.reshape(target.shape[0], -1)[:, 0] if target.dim() > 1 else target
    n = y.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=y.device)
    _, inverse = torch.unique(y, return_inverse=True)
    key = torch.randperm(n, generator=generator, device=y.device)  # distinct random keys
    best = torch.full((n,), -1, dtype=key.dtype, device=y.device)
    best = best.scatter_reduce(0, inverse, key, reduce="amax")
    return key == best[inverse]


def ranksim_loss(
    features: Tensor,
    target: Tensor,
    *,
    interpolation_lambda: float = 2.0,
    unique_labels: bool = True,
    reduction: str = "sum",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The RankSim regulariser (Gong et al., ICML 2022), before its weight :math:`\gamma`.

    On the :math:`M` kept samples (one per distinct label with ``unique_labels``), with
    :math:`S^z_{ij} = \cos(z_i, z_j)` and :math:`S^y_{ij} = -|y_i - y_j|`:

    .. math:: \mathcal{L}_{\text{RankSim}} = \sum_{i=1}^{M} \frac{1}{M}
              \big\lVert \operatorname{rk}(S^z_{i,:}) - \operatorname{rk}(S^y_{i,:})
              \big\rVert_2^2 ,

    ranks normalised by :math:`M` (:func:`blackbox_rank` for the features; the label ranks
    carry no gradient). ``reduction="mean"`` divides by :math:`M`. The diagonal is kept, as
    in the official code (each row ranks itself first in both matrices).

    Args:
        features: :math:`z`, (N, ...) (flattened to (N, D)).
        target: :math:`y`, (N,) or (N, 1).
        interpolation_lambda: :math:`\lambda` of the blackbox gradient (official default 2).
        unique_labels: keep one random sample per distinct label (host sync).
        reduction: ``"sum"`` (official) | ``"mean"`` over the anchors.
        generator: random choice of the kept samples.

    Returns:
        A scalar; 0 in the graph when fewer than two samples are kept. Computed in at least
        float32 (outside autocast), so half-precision features neither round the labels
        (merging distinct ones, reordering their distances) nor the similarities.

    Example:
        >>> z, y = torch.randn(8, 4, requires_grad=True), torch.arange(8.0)
        >>> ranksim_loss(z, y).backward()
    """
    _check_lambda(interpolation_lambda)
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{reduction!r} is not a valid value for reduction: expected {_REDUCTIONS}"
        )
    if features.dim() < 2:
        raise ValueError(f"expected features of shape (N, D), got {tuple(features.shape)}")
    n = features.shape[0]
    if target.shape not in ((n,), (n, 1)):
        raise ValueError(f"expected target of shape ({n},) or ({n}, 1), got {tuple(target.shape)}")
    work = torch.promote_types(features.dtype, torch.float32)
    z, y = features.flatten(1).to(work), target.reshape(n).to(work)
    if unique_labels:
        keep = unique_label_mask(y, generator=generator)
        z, y = z[keep], y[keep]
    if z.shape[0] < 2:
        return 0.0 * z.sum()
    with without_autocast(z.device.type):
        z = F.normalize(z, dim=1)
        rank_z = blackbox_rank(z @ z.t(), interpolation_lambda)
        rank_y = _rank(-(y[:, None] - y[None, :]).abs())
        per_anchor = ((rank_z - rank_y) ** 2).mean(dim=1)
    return per_anchor.sum() if reduction == "sum" else per_anchor.mean()


class RankSimLoss(nn.Module):
    r"""Module form of :func:`ranksim_loss`; add :math:`\gamma` times it to the task loss.

    :math:`\gamma` and :math:`\lambda` interact: the backward perturbs the similarities by
    :math:`\lambda g`, and :math:`g` carries :math:`\gamma`; the official code trains with
    :math:`\gamma` of order 100 and :math:`\lambda = 2`.

    Args:
        interpolation_lambda, unique_labels, reduction: see :func:`ranksim_loss`.

    Shape:
        - features: (N, ...); target: (N,) or (N, 1); output: scalar.

    Example:
        >>> criterion = RankSimLoss(unique_labels=False)
        >>> criterion(torch.randn(6, 3), torch.rand(6)).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        interpolation_lambda: float = 2.0,
        unique_labels: bool = True,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        _check_lambda(interpolation_lambda)
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"{reduction!r} is not a valid value for reduction: expected {_REDUCTIONS}"
            )
        self.interpolation_lambda = float(interpolation_lambda)
        self.unique_labels = unique_labels
        self.reduction = reduction

    def forward(
        self, features: Tensor, target: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        return ranksim_loss(
            features, target, interpolation_lambda=self.interpolation_lambda,
            unique_labels=self.unique_labels, reduction=self.reduction, generator=generator,
        )

    def extra_repr(self) -> str:
        return (f"interpolation_lambda={self.interpolation_lambda}, "
                f"unique_labels={self.unique_labels}, reduction={self.reduction!r}")
