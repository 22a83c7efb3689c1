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
import torch.nn.functional as F
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


def _fold_by_distance(per_group: Tensor, y: Tensor, log_space: bool = False) -> Tensor:
    r"""Turn per-group totals into per-distance totals for each anchor.

    ``out[i, l] = per_group[i, y_i - l] + per_group[i, y_i + l]`` (terms outside ``[0, G)``
    dropped; ``l = 0`` counted once): the total over the samples ``l`` groups away from
    anchor ``i``. With ``log_space`` the inputs are logs and ``+`` is ``logaddexp``.
    Shapes: ``per_group`` (n, G) or (G,), ``y`` (n,); returns (n, G).
    """
    num_groups = per_group.shape[-1]
    empty = float("-inf") if log_space else 0.0
    padded = F.pad(per_group, (num_groups, num_groups), value=empty)
    padded = padded.expand(y.shape[0], 3 * num_groups)
    levels = torch.arange(num_groups, device=y.device)
    centre = (y + num_groups)[:, None]
    up = padded.gather(1, centre + levels)
    down = padded.gather(1, centre - levels)
    down[:, 0] = empty
    return torch.logaddexp(up, down) if log_space else up + down


def _unfold_by_distance(per_level: Tensor, y: Tensor) -> Tensor:
    """``out[i, g] = per_level[i, |y_i - g|]``: from distance levels back to groups, (n, G)."""
    groups = torch.arange(per_level.shape[1], device=y.device)
    return per_level.gather(1, (y[:, None] - groups).abs())


class _GroupContrast(torch.autograd.Function):
    r"""Integer-group kernel with an analytic backward, in log space.

    With ``C_i(l)`` the number of ``k != i`` at group distance ``l`` from anchor ``i`` and
    :math:`D_i(l) = \sum_{k \ne i,\, d_{ik} \ge l} e^{s_{ik}}` the denominator, the
    per-anchor sum is

    .. math::
        \sum_{j \ne i} \ell_{ij} = -\sum_{j \ne i} s_{ij} + \sum_l C_i(l) \log D_i(l),

    and :math:`\partial / \partial s_{ik} = e^{s_{ik}} A_i(d_{ik}) - 1` with
    :math:`A_i(l) = \sum_{l' \le l} C_i(l') / D_i(l')`. ``log D`` is built from per-group
    log-sum-exps (each group shifted by its own max) and a reverse ``logcumsumexp`` over
    levels, so no denominator underflows however small the temperature; and
    :math:`e^{s_{ik}} A_i(d_{ik}) \le N` never overflows.
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
        chunk_size: Optional[int],
    ) -> Tensor:
        # The anchors are a slice of the contrast set, passed once (compile needs distinct
        # inputs); their gradient is folded back into that slice in backward.
        hist = torch.zeros(num_groups, dtype=z_c.dtype, device=z_c.device)
        hist.scatter_add_(0, y_c, torch.ones_like(y_c, dtype=z_c.dtype))
        chunks = _chunks(offset, n_anchors, chunk_size)
        parts = [
            _forward_rows(z_c, y_c, hist, lo, hi, kind, temperature, keep=chunk_size is None)
            for lo, hi in chunks
        ]
        loss, log_a, s = (torch.cat(part) for part in zip(*parts))
        # Unchunked, the (n, N) similarities are kept: backward then needs no second matmul.
        # Chunked, only (n, G) tables are kept and each block is recomputed.
        ctx.save_for_backward(z_c, y_c, log_a, s)
        ctx.chunks, ctx.offset, ctx.kind, ctx.temperature = chunks, offset, kind, temperature
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        z_c, y_c, log_a, saved = ctx.saved_tensors
        if saved.numel() and ctx.offset == 0 and grad.shape[0] == z_c.shape[0]:
            # Anchors = contrast set: d<z_i, z_k> enters twice, so fold g into g + g^T.
            g = _grad_rows(saved, y_c, y_c, log_a, grad, 0, ctx.kind, ctx.temperature)
            return (g + g.T) @ z_c, None, None, None, None, None, None, None
        grad_c = torch.zeros_like(z_c)
        for lo, hi in ctx.chunks:
            rows = slice(lo - ctx.offset, hi - ctx.offset)
            s = saved[rows] if saved.numel() else similarity(
                z_c[lo:hi], z_c, ctx.kind, ctx.temperature
            )
            g = _grad_rows(
                s, y_c, y_c[lo:hi], log_a[rows], grad[rows], lo, ctx.kind, ctx.temperature
            )
            grad_c.addmm_(g.T, z_c[lo:hi])
            grad_c[lo:hi].addmm_(g, z_c)
        return grad_c, None, None, None, None, None, None, None


def _chunks(offset: int, n_anchors: int, chunk_size: Optional[int]) -> "list[Tuple[int, int]]":
    """Row ranges ``[lo, hi)`` of the contrast set covering the anchors, ``chunk_size`` each."""
    step = n_anchors if chunk_size is None else chunk_size
    end = offset + n_anchors
    return [(lo, min(lo + step, end)) for lo in range(offset, end, max(step, 1))] or [(end, end)]


def _forward_rows(
    z_c: Tensor, y_c: Tensor, hist: Tensor, lo: int, hi: int, kind: str, temperature: float,
    keep: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Loss sums (n,), ``log A`` (n, G) by level, and the similarities if ``keep`` (else an
    empty tensor), for the anchors ``lo..hi-1``."""
    y_a = y_c[lo:hi]
    s = similarity(z_c[lo:hi], z_c, kind, temperature)
    s_sum = s.sum(dim=1) - _self_diagonal(s, lo)
    work = s.clone() if keep else s
    _self_diagonal(work, lo).fill_(float("-inf"))
    # log-sum-exp of s over each group of the contrast set, each group shifted by its max
    # (empty groups get a finite shift so that -inf - shift stays -inf, never NaN).
    by_group = y_c.expand_as(work)
    group_max = work.new_full((work.shape[0], hist.shape[0]), float("-inf"))
    group_max = group_max.scatter_reduce_(1, by_group, work, "amax").clamp_min_(-1e30)
    per_group = torch.zeros_like(group_max).scatter_add_(
        1, by_group, work.sub_(group_max.gather(1, by_group)).exp_()
    )
    del work
    log_level = _fold_by_distance(per_group.log_().add_(group_max), y_a, log_space=True)
    log_denom = log_level.flip(1).logcumsumexp(1).flip(1)
    count = _fold_by_distance(hist, y_a)
    count[:, 0] -= 1.0  # the anchor itself
    present = count > 0  # where C > 0 the denominator is finite; elsewhere it is unused
    loss = -s_sum + torch.where(present, count * log_denom, 0.0).sum(dim=1)
    ratio = torch.where(present, count.log() - log_denom, float("-inf"))
    log_a = ratio.logcumsumexp(1)
    return loss, log_a, s if keep else s.new_zeros(0, s.shape[1])


def _grad_rows(
    s: Tensor, y_c: Tensor, y_a: Tensor, log_a: Tensor, grad: Tensor, lo: int, kind: str,
    temperature: float,
) -> Tensor:
    """dL/d<z_a_i, z_c_k> (n, N) from the similarities ``s`` (read, not modified)."""
    # dL/ds_ik = grad_i * (e^{s_ik} A_i(d_ik) - 1) for k != i, built in one new buffer.
    log_a_by_group = _unfold_by_distance(log_a, y_a)
    g = (s + log_a_by_group.gather(1, y_c.expand_as(s))).exp_().sub_(1.0)
    _self_diagonal(g, lo).zero_()
    g.mul_(grad[:, None])
    if kind == "cosine":
        return g.div_(temperature)
    # s = -dist / T with dist = sqrt(2 - 2<a, c>)  =>  ds/d<a, c> = 1 / (T dist) = -1 / (T^2 s),
    # and 0 where the squared distance was clamped at eps (s = -sqrt(eps) / T).
    clamped = -(torch.finfo(s.dtype).eps ** 0.5) / temperature
    return g.div_(s).mul_(-1.0 / temperature**2).masked_fill_(s >= clamped, 0.0)


def grouped(
    z_c: Tensor, y_c: Tensor, offset: int, n_anchors: int, num_groups: int, kind: str,
    temperature: float, chunk_size: Optional[int] = None,
) -> Tensor:
    """Per-anchor loss sums for integer groups in ``[0, num_groups)``, O(nN + nG).

    ``chunk_size`` processes the anchors in row blocks: peak memory O(chunk_size * N).
    """
    out = _GroupContrast.apply(
        z_c, y_c, offset, n_anchors, num_groups, kind, temperature, chunk_size
    )
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
    _self_diagonal(dist, offset).fill_(-1.0)
    dist_sorted, order = dist.sort(dim=1)
    s_sorted = s.gather(1, order)
    # log of the reverse cumulative sum of e^s: stable for any temperature.
    log_tail = s_sorted.flip(1).logcumsumexp(1).flip(1)
    first_of_tie = torch.searchsorted(dist_sorted.contiguous(), dist_sorted.contiguous())
    log_denom = log_tail.gather(1, first_of_tie)
    return (log_denom - s_sorted)[:, 1:].sum(dim=1)
