r"""The Rank-N-Contrast kernel for real-valued labels (private; the public entry is
:func:`dirloss.functional.group_contrastive_loss`). Notation as in :mod:`._grouped`.

For an anchor, the pairs at one label distance share their denominator, so the kernel is the
group kernel with the groups made per anchor: sort the anchor's row by label distance, cut
it into **runs** of equal distance (exact ties: equal floats), and sum :math:`e^{s}` per
run. The denominator of run ``r`` is the total of the runs ``>= r``, the same tail sums as
the integer groups, over run indices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._grouped import (
    _LINEAR_LOGIT_RANGE,
    Anchors,
    _chunks,
    _linear_shift,
    _normalise,
    _normalise_backward,
    _pair_scale,
    _plus_transpose,
    _shifted_exp,
    similarity,
)

# The kernel processes the anchors in row blocks of at most this many pair entries
# (rows x N): each block's sort and its dozen temporaries stay small next to the one (n, N)
# table kept for backward. On CPU, blocks of 2^18 measured fastest (N = 1024-4096,
# D = 512: 1.1-1.25x faster than 2^20 and than 2^17; the temporaries stay in cache and the
# allocator reuses them from block to block).
_CONTINUOUS_BLOCK = 1 << 18


class _Continuous(torch.autograd.Function):
    r"""Real-valued labels (Rank-N-Contrast), exact ties, with an analytic backward.

    The contrast set is first put in label order (by the first label column), so that each
    anchor's row of distances falls, then rises: sorting such a row costs a fraction of a
    random one. Each row is sorted by distance (the anchor itself first, at distance -1) and
    cut into runs of equal distance; ``r_ik`` is the run of ``k``. With
    :math:`E_i(r) = \sum_{k \ne i,\, r_{ik} = r} e^{s_{ik}}`, :math:`C_i(r)` the run's size
    and :math:`D_i(r) = \sum_{r' \ge r} E_i(r')`,

    .. math::
        \sum_{j \ne i} \ell_{ij} = -\sum_{j \ne i} s_{ij} + \sum_r C_i(r) \log D_i(r),
        \qquad \frac{\partial}{\partial s_{ik}} = e^{s_{ik}} A_i(r_{ik}) - 1,
        \quad A_i(r) = \sum_{r' \le r} \frac{C_i(r')}{D_i(r')},

    as in the group kernel. Linear space (sums of positive terms only) where the
    temperature allows (``_LINEAR_LOGIT_RANGE``), log space below it (each run shifted by
    its own max). The forward runs in row blocks (``_CONTINUOUS_BLOCK``) and keeps one
    (n, N) table for backward, ``dS_i / d<z_a_i, z_c_k>`` (columns in label order, up to
    the constant factor of ds/d<a, c>), so the sort's indices and the run tables never
    outlive their block.
    """

    @staticmethod
    def forward(ctx: Any, x_c: Tensor, y_c: Tensor, anchors: Anchors) -> Tensor:
        offset, n_anchors, kind, temperature = anchors
        n_total = x_c.shape[0]
        order = y_c[:, 0].argsort(stable=True)  # the contrast set in label order
        positions = torch.arange(n_total, device=order.device)
        rank = torch.empty_like(order).scatter_(0, order, positions)  # i -> its label rank
        z, norm = _normalise(x_c.index_select(0, order))
        y = y_c.index_select(0, order)
        # Anchors: the whole set (taken in label order, their losses put back at the end) or
        # a slice of it (a rank's rows under DDP), at their label-order positions.
        whole = offset == 0 and n_anchors == n_total
        where = positions if whole else rank[offset : offset + n_anchors]
        linear = 2.0 / temperature <= _LINEAR_LOGIT_RANGE.get(z.dtype, 0.0)
        block = max(1, _CONTINUOUS_BLOCK // max(n_total, 1))
        chunks = _chunks(0, n_anchors, block)
        if len(chunks) == 1:
            loss, table = _continuous_rows(z, y, where, kind, temperature, linear)
        else:
            loss = z.new_empty(n_anchors)
            table = z.new_empty(n_anchors, n_total)
            for lo, hi in chunks:
                loss[lo:hi], table[lo:hi] = _continuous_rows(
                    z, y, where[lo:hi], kind, temperature, linear
                )
        if whole:
            loss = loss[rank]  # back to the caller's order
        ctx.save_for_backward(z, norm, order, rank, where, table)
        ctx.whole = whole
        ctx.factor = 1.0 / temperature if kind == "cosine" else -1.0 / temperature**2
        return loss.mul_(_pair_scale(z))

    @staticmethod
    @once_differentiable  # the analytic backward is not itself differentiable: say so
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, norm, order, rank, where, table = ctx.saved_tensors
        grad = grad * (_pair_scale(z) * ctx.factor)
        if ctx.whole:
            # Anchors = contrast set, both in label order: d<z_i, z_k> enters twice, so fold
            # g into g + g^T.
            g = table * grad[order][:, None]
            grad_z = _plus_transpose(g) @ z
        else:
            g = table * grad[:, None]
            grad_z = g.T @ z.index_select(0, where)
            grad_z.index_add_(0, where, g @ z)
        del g
        grad_x = _normalise_backward(z, norm, grad_z)
        return grad_x.index_select(0, rank), None, None


def _runs(
    z: Tensor, y: Tensor, where: Tensor, kind: str, temperature: float
) -> tuple[Tensor, Tensor]:
    """The similarities (n, N) of the anchors at ``where`` and the run of each pair
    ``r_ik`` (n, N, int64): the rank of ``d_ik`` among the row's distinct distances, the
    anchor itself alone in run 0."""
    s = similarity(z.index_select(0, where), z, kind, temperature)
    y_a = y.index_select(0, where)
    dist = torch.cdist(y_a, y, p=1.0) if y.shape[1] > 1 else (y_a - y.T).abs_()
    dist.scatter_(1, where[:, None], -1.0)  # the anchor sorts first
    dist, order = dist.sort(dim=1, stable=True)
    # a new run where the distance changes (position 1 always: the anchor is alone at -1);
    # written into int64 and summed in place: a cumsum of the bool mask is ~3x slower on CPU
    run = torch.zeros_like(order)
    run[:, 1:] = dist[:, 1:] != dist[:, :-1]
    del dist
    return s, torch.empty_like(run).scatter_(1, order, run.cumsum_(dim=1))  # column order


def _continuous_rows(
    z: Tensor, y: Tensor, where: Tensor, kind: str, temperature: float, linear: bool
) -> tuple[Tensor, Tensor]:
    """Loss sums (n,) and ``dS_i / d<z_a_i, z_c_k>`` (n, N) for the anchors at
    ``where``, without the constant factor (``ctx.factor``)."""
    s, run = _runs(z, y, where, kind, temperature)
    s_sum = s.sum(dim=1) - s.gather(1, where[:, None])[:, 0]
    # C_i(r): the run sizes, the anchor's run (0) dropped from every sum
    count = torch.zeros_like(s).scatter_add_(1, run, s.new_ones(1, 1).expand_as(s))
    count[:, 0] = 0.0
    if linear:
        shift = _linear_shift(kind, temperature)
        e = _shifted_exp(s, kind, temperature)
        denom = torch.zeros_like(s).scatter_add_(1, run, e).flip(1).cumsum(1).flip(1)
        # Where C > 0, D > 0; elsewhere D = 0 is lifted to tiny: C log D = 0 and C / D = 0.
        denom.clamp_min_(torch.finfo(denom.dtype).tiny)
        loss = torch.linalg.vecdot(count, denom.log()).sub_(s_sum)
        if shift:
            loss += shift * (z.shape[0] - 1)
        g = count.div_(denom).cumsum_(dim=1).gather(1, run).mul_(e).sub_(1.0)
    else:
        # log-sum-exp per run, each run shifted by its max (empty runs get a finite shift
        # so that -inf - shift stays -inf, never NaN)
        run_max = torch.full_like(s, float("-inf")).scatter_reduce_(1, run, s, "amax")
        run_max.clamp_min_(-1e30)
        per_run = torch.zeros_like(s).scatter_add_(1, run, (s - run_max.gather(1, run)).exp_())
        log_denom = per_run.log_().add_(run_max).flip(1).logcumsumexp(1).flip(1)
        present = count > 0  # where C > 0 the denominator is finite; elsewhere it is unused
        loss = torch.where(present, count * log_denom, 0.0).sum(dim=1).sub_(s_sum)
        log_a = torch.where(present, count.log() - log_denom, float("-inf")).logcumsumexp(1)
        g = (s + log_a.gather(1, run)).exp_().sub_(1.0)
    g.scatter_(1, where[:, None], 0.0)  # the anchor itself
    # times ds/d<a, c>: 1 / T ("cosine") or, for "l2" (s = -sqrt(2 - 2 <a, c>) / T),
    # -1 / (T^2 s); the constant is applied in backward. Where the squared distance was
    # clamped (a duplicate sample) this is large but finite and radial: the normalisation's
    # backward removes it, as in the group kernel.
    return loss, g if kind == "cosine" else g.div_(s)


def continuous(
    x_c: Tensor, y_c: Tensor, offset: int, n_anchors: int, kind: str, temperature: float
) -> Tensor:
    """Per-anchor mean losses for real-valued labels (Rank-N-Contrast), O(nN log N).

    Every ``k`` with ``d_ik == d_ij`` counts in the denominator of the pair ``(i, j)``
    (exact ties). ``x_c`` are raw features (normalised inside, with a fused backward); ``y``
    has shape (N, L); the distance is the L1 norm over L. Peak extra memory: one (n, N) table
    kept for backward plus a row block's temporaries.
    """
    out = _Continuous.apply(  # type: ignore[no-untyped-call]
        x_c, y_c, Anchors(offset, n_anchors, kind, temperature)
    )
    return out  # type: ignore[no-any-return]
