r"""Kernels of the group contrastive loss (private; the public entry is
:func:`dirloss.functional.group_contrastive_loss`).

Notation. The contrast set is ``z_c`` (N, D); the anchors are its rows
``offset .. offset + n - 1`` (the whole batch on one process, the local slice of a gathered
batch under DDP), and anchor ``i`` is row ``i + offset``.
``s_ik`` is the similarity, ``d_ik`` the label distance, and for every ``j != i``

.. math::
    \ell_{ij} = -s_{ij} + \log \sum_{k \ne i,\; d_{ik} \ge d_{ij}} e^{s_{ik}}.

Each kernel returns the per-anchor sum :math:`\sum_{j \ne i} \ell_{ij}` of shape (n,).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor


def similarity(z_a: Tensor, z_c: Tensor, kind: str, temperature: float) -> Tensor:
    """``s = -||z_a_i - z_c_k|| / T`` ("l2") or ``<z_a_i, z_c_k> / T`` ("cosine"), (n, N).

    The rows are unit vectors, so ``||a - b||^2 = 2 - 2 <a, b>``: one matmul. The squared
    distance is clamped at ``eps`` so the square root stays differentiable when two samples
    coincide. Without autograd recording (inside the kernel) the steps run in place.
    """
    s = z_a @ z_c.T
    inplace = not (torch.is_grad_enabled() and s.requires_grad)
    if kind == "cosine":
        return s.div_(temperature) if inplace else s / temperature
    eps = torch.finfo(s.dtype).eps
    if inplace:
        return s.mul_(-2.0).add_(2.0).clamp_min_(eps).sqrt_().div_(-temperature)
    return (2.0 - 2.0 * s).clamp_min(eps).sqrt() / -temperature


def _self_diagonal(x: Tensor, offset: int) -> Tensor:
    """View of the entries ``(i, i + offset)``: each anchor paired with itself."""
    return x.diagonal(offset=offset)


def _shifted_exp(s: Tensor, offset: int) -> Tuple[Tensor, Tensor]:
    """``exp(s - m)`` in place with ``m`` the row max over ``k != i``; the self entry is 0.

    Subtracting the max keeps the largest term at 1, so no row underflows to an all-zero
    denominator; a row with no partner (N = 1) gets ``m = 0`` instead of ``-inf``.
    """
    _self_diagonal(s, offset).fill_(float("-inf"))
    m = s.amax(dim=1).nan_to_num(neginf=0.0)
    return s.sub_(m[:, None]).exp_(), m


def _fold_by_distance(per_group: Tensor, y: Tensor) -> Tensor:
    r"""Turn per-group sums into per-distance sums for each anchor.

    ``out[i, l] = per_group[i, y_i - l] + per_group[i, y_i + l]`` (terms outside ``[0, G)``
    dropped; ``l = 0`` counted once): the total over the samples ``l`` groups away from
    anchor ``i``. Shapes: ``per_group`` (n, G) or (G,), ``y`` (n,); returns (n, G).
    """
    num_groups = per_group.shape[-1]
    padded = torch.nn.functional.pad(per_group, (num_groups, num_groups))
    padded = padded.expand(y.shape[0], 3 * num_groups)
    levels = torch.arange(num_groups, device=y.device)
    centre = (y + num_groups)[:, None]
    up = padded.gather(1, centre + levels)
    down = padded.gather(1, centre - levels)
    down[:, 0] = 0.0
    return up + down


def _unfold_by_distance(per_level: Tensor, y: Tensor) -> Tensor:
    """``out[i, g] = per_level[i, |y_i - g|]``: from distance levels back to groups, (n, G)."""
    groups = torch.arange(per_level.shape[1], device=y.device)
    return per_level.gather(1, (y[:, None] - groups).abs())


class _GroupContrast(torch.autograd.Function):
    r"""Integer-group kernel with an analytic backward.

    Forward keeps only (n, G) tables. With ``E_i(l)`` the sum of ``e^{s_ik - m_i}`` over the
    ``k`` at distance level ``l``, ``C_i(l)`` the count of those ``k`` and ``D_i(l)`` the
    reverse cumulative sum of ``E_i`` over levels (the denominator), the per-anchor sum is

    .. math::
        \sum_{j \ne i} \ell_{ij} = -\sum_{j \ne i} s_{ij} + (N - 1) m_i
            + \sum_l C_i(l) \log D_i(l).

    Backward recomputes the similarities and uses
    :math:`\partial / \partial s_{ik} = -(1 - e^{s_{ik} - m_i} A_i(d_{ik}))` with
    :math:`A_i(l) = \sum_{l' \le l} C_i(l') / D_i(l')`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        z_c: Tensor,
        y_c: Tensor,
        offset: int,
        n_anchors: int,
        num_groups: int,
        kind: str,
        temperature: float,
    ) -> Tensor:
        # The anchors are a slice of the contrast set, passed once (compile needs distinct
        # inputs); their gradient is folded back into that slice in backward.
        z_a, y_a = z_c[offset : offset + n_anchors], y_c[offset : offset + n_anchors]
        s = similarity(z_a, z_c, kind, temperature)
        s_sum = s.sum(dim=1) - _self_diagonal(s, offset)
        e, m = _shifted_exp(s, offset)
        # Sum e over each group of the contrast set, then fold groups into distance levels.
        per_group = e.new_zeros(e.shape[0], num_groups)
        per_group.scatter_add_(1, y_c.expand_as(e), e)
        del e, s
        exp_by_level = _fold_by_distance(per_group, y_a)
        hist = torch.zeros(num_groups, dtype=z_c.dtype, device=z_c.device)
        hist.scatter_add_(0, y_c, torch.ones_like(y_c, dtype=z_c.dtype))
        count = _fold_by_distance(hist, y_a)
        count[:, 0] -= 1.0  # the anchor itself
        denom = exp_by_level.flip(1).cumsum(1).flip(1)
        log_denom = denom.clamp_min(torch.finfo(denom.dtype).tiny).log()
        n_pairs = z_c.shape[0] - 1
        loss = -s_sum + n_pairs * m + (count * log_denom).sum(dim=1)
        ctx.save_for_backward(z_c, y_c, m, count, denom)
        ctx.offset, ctx.kind, ctx.temperature = offset, kind, temperature
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        z_c, y_c, m, count, denom = ctx.saved_tensors
        lo, hi = ctx.offset, ctx.offset + grad.shape[0]
        z_a, y_a = z_c[lo:hi], y_c[lo:hi]
        ratio = count / denom.clamp_min(torch.finfo(denom.dtype).tiny)
        a_by_group = _unfold_by_distance(ratio.cumsum(1), y_a)
        s = similarity(z_a, z_c, ctx.kind, ctx.temperature)
        dist = None if ctx.kind == "cosine" else s.mul(-ctx.temperature)
        e, _ = _shifted_exp(s, ctx.offset)
        # dL/ds_ik = grad_i * (e_ik * A_i(d_ik) - 1) for k != i, computed in place in e.
        g = e.mul_(a_by_group.gather(1, y_c.expand_as(e))).sub_(1.0)
        _self_diagonal(g, ctx.offset).zero_()
        g.mul_(grad[:, None])
        if dist is None:
            g.div_(ctx.temperature)
        else:
            # s = -sqrt(2 - 2<a, c>) / T  =>  ds/d<a, c> = 1 / (T * dist); zero where clamped.
            floor = torch.finfo(dist.dtype).eps ** 0.5
            g.div_(dist.mul_(ctx.temperature)).masked_fill_(dist <= floor * ctx.temperature, 0.0)
        grad_c = g.T @ z_a
        grad_c[lo:hi] += g @ z_c
        return grad_c, None, None, None, None, None, None


def grouped(
    z_c: Tensor, y_c: Tensor, offset: int, n_anchors: int, num_groups: int, kind: str,
    temperature: float,
) -> Tensor:
    """Per-anchor loss sums for integer groups in ``[0, num_groups)``, O(nN + nG)."""
    out = _GroupContrast.apply(z_c, y_c, offset, n_anchors, num_groups, kind, temperature)
    return out  # type: ignore[no-any-return]


def continuous(
    z_c: Tensor, y_c: Tensor, offset: int, n_anchors: int, kind: str, temperature: float
) -> Tensor:
    """Per-anchor loss sums for real-valued labels (Rank-N-Contrast), O(nN log N).

    Each row is sorted by label distance; the denominator of a pair is the reverse cumulative
    sum at the first position of its tie run, so every ``k`` with ``d_ik == d_ij`` counts.
    ``y`` has shape (n, L) / (N, L); the distance is the L1 norm over L.
    """
    z_a, y_a = z_c[offset : offset + n_anchors], y_c[offset : offset + n_anchors]
    s = similarity(z_a, z_c, kind, temperature)
    dist = torch.cdist(y_a, y_c, p=1.0) if y_a.shape[1] > 1 else (y_a - y_c.T).abs()
    # The anchor sorts first (distance -1) and its term is dropped, so it is never counted.
    dist = dist.clone()
    _self_diagonal(dist, offset).fill_(-1.0)
    dist_sorted, order = dist.sort(dim=1)
    s_sorted = s.gather(1, order)
    m = s_sorted[:, 1:].amax(dim=1, keepdim=True) if s.shape[1] > 1 else s_sorted[:, :1]
    m = m.detach()
    e = (s_sorted - m).exp()
    tail = e.flip(1).cumsum(1).flip(1)
    first_of_tie = torch.searchsorted(dist_sorted.contiguous(), dist_sorted.contiguous())
    log_denom = tail.gather(1, first_of_tie).clamp_min(torch.finfo(e.dtype).tiny).log() + m
    return (log_denom - s_sorted)[:, 1:].sum(dim=1)
