r"""The Rank-N-Contrast kernel for real-valued labels (private; the public entry is
:func:`dirloss.functional.group_contrastive_loss`). Notation as in :mod:`._contrastive`."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from ._contrastive import (
    _chunks,
    _normalise,
    _normalise_backward,
    _pair_scale,
    _plus_transpose,
    _self_diagonal,
    similarity,
)


# The continuous kernel processes the anchors in row blocks of at most this many pair
# entries (rows x N): each block's sort and its dozen temporaries stay small next to the one
# (n, N) buffer kept for backward. 2^20 entries keep one block up to N = 1024.
_CONTINUOUS_BLOCK = 1 << 20


class _Continuous(torch.autograd.Function):
    r"""Real-valued labels (Rank-N-Contrast), exact ties, with an analytic backward.

    Each anchor's row is sorted by label distance (the anchor itself first, at distance -1).
    With :math:`T(p)` the reverse cumulative log-sum-exp of the sorted similarities and
    :math:`f(p)` the first position of the tie run of position ``p``, the denominator of the
    pair at position ``p`` is :math:`e^{T(f(p))}`: every ``k`` with ``d_ik >= d_ij``
    counts. As in the group kernel,
    :math:`\partial S_i / \partial s_{ik} = e^{s_{ik}} A_i(k) - 1`, with
    :math:`A_i(k) = \sum_{j \ne i,\, d_{ij} \le d_{ik}} e^{-T(f(j))}`: a cumulative
    log-sum-exp over the sorted row, read at the last position of ``k``'s tie run.

    The forward runs in row blocks (``_CONTINUOUS_BLOCK``) and keeps one (n, N) table for
    backward, ``dS_i / d<z_a_i, z_c_k>`` (ready to be scaled by the incoming gradient), so
    the sort's index tensors and the cumulative sums never outlive their block. Log space
    throughout: exact at any temperature, and :math:`e^{s_{ik}} A_i(k) \le N - 1`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x_c: Tensor,
        y_c: Tensor,
        offset: int,
        n_anchors: int,
        kind: str,
        temperature: float,
    ) -> Tensor:
        z_c, norm = _normalise(x_c)
        rows = max(1, _CONTINUOUS_BLOCK // max(z_c.shape[0], 1))
        chunks = _chunks(offset, n_anchors, rows)
        loss = z_c.new_empty(n_anchors)
        table = z_c.new_empty(n_anchors, z_c.shape[0])  # dS_i / d<z_a_i, z_c_k>
        for lo, hi in chunks:
            part = slice(lo - offset, hi - offset)
            loss[part] = _continuous_rows(z_c, y_c, lo, hi, kind, temperature, table[part])
        ctx.save_for_backward(z_c, norm, table)
        ctx.offset = offset
        return loss.mul_(_pair_scale(z_c))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        z_c, norm, table = ctx.saved_tensors
        g = table * (grad * _pair_scale(z_c))[:, None]
        offset, n = ctx.offset, grad.shape[0]
        if offset == 0 and n == z_c.shape[0]:
            # Anchors = contrast set: d<z_i, z_k> enters twice, so fold g into g + g^T.
            grad_z = _plus_transpose(g) @ z_c
        else:
            grad_z = g.T @ z_c[offset : offset + n]
            grad_z[offset : offset + n].addmm_(g, z_c)
        del g
        return _normalise_backward(z_c, norm, grad_z), None, None, None, None, None


def _continuous_rows(
    z_c: Tensor, y_c: Tensor, lo: int, hi: int, kind: str, temperature: float, out: Tensor
) -> Tensor:
    """Loss sums (n,) for the anchors ``lo..hi-1``; writes ``dS_i / d<z_a_i, z_c_k>`` into
    ``out`` (n, N)."""
    s = similarity(z_c[lo:hi], z_c, kind, temperature)
    y_a = y_c[lo:hi]
    dist = torch.cdist(y_a, y_c, p=1.0) if y_a.shape[1] > 1 else (y_a - y_c.T).abs_()
    # The anchor sorts first (distance -1); its position is dropped from every sum.
    _self_diagonal(dist, lo).fill_(-1.0)
    dist, order = dist.sort(dim=1)
    s_sorted = s.gather(1, order)
    # log of the reverse cumulative sum of e^s, read at the first position of each tie run
    # (the denominator of every pair in the run: stable for any temperature).
    log_denom = s_sorted.flip(1).logcumsumexp(1).flip(1)
    log_denom = log_denom.gather(1, torch.searchsorted(dist, dist, out_int32=True))
    loss = (log_denom[:, 1:] - s_sorted[:, 1:]).sum(dim=1)
    # log A at each position: the cumulative log-sum-exp of 1 / denominator over the pairs
    # j != i up to the last position of the tie run.
    log_denom[:, 0] = float("inf")  # the anchor's own position: e^{-inf} = 0
    log_a = log_denom.neg_().logcumsumexp(1)
    del log_denom
    last = torch.searchsorted(dist, dist, right=True, out_int32=True).sub_(1)
    del dist
    log_a = log_a.gather(1, last)
    del last
    # dS/ds = e^{s + log A} - 1, times ds/d<a, c>: 1 / T ("cosine") or, for "l2"
    # (s = -sqrt(2 - 2 <a, c>) / T), -1 / (T^2 s). Where the squared distance was clamped
    # (a duplicate sample) this is large but finite and radial: the normalisation's backward
    # removes it, as in the group kernel.
    g = log_a.add_(s_sorted).exp_().sub_(1.0)
    if kind == "cosine":
        g.div_(temperature)
    else:
        g.div_(s_sorted.mul_(-(temperature**2)))
    del s_sorted
    g[:, 0] = 0.0  # the anchor itself
    out.scatter_(1, order, g)  # back to the column order (order is a permutation of each row)
    return loss


def continuous(
    x_c: Tensor, y_c: Tensor, offset: int, n_anchors: int, kind: str, temperature: float
) -> Tensor:
    """Per-anchor mean losses for real-valued labels (Rank-N-Contrast), O(nN log N).

    Each row is sorted by label distance; the denominator of a pair is the reverse cumulative
    sum at the first position of its tie run, so every ``k`` with ``d_ik == d_ij`` counts.
    ``x_c`` are raw features (normalised inside, with a fused backward); ``y`` has shape
    (N, L); the distance is the L1 norm over L. Peak extra memory: one (n, N) table kept for
    backward plus a row block's temporaries.
    """
    out = _Continuous.apply(x_c, y_c, offset, n_anchors, kind, temperature)
    return out  # type: ignore[no-any-return]
