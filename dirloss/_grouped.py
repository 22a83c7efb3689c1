r"""The fused kernel of the group contrastive loss for integer groups, and the pieces the
continuous kernel shares with it (private; the entry point is :mod:`._contrastive`).

Notation. The contrast set is ``z_c`` (N, D); the anchors are its rows
``offset .. offset + n - 1`` (the whole batch on one process, the local slice of a gathered
batch under DDP), and anchor ``i`` is row ``i + offset``.
``s_ik`` is the similarity, ``d_ik`` the label distance, and for every ``j != i``

.. math::
    \ell_{ij} = -s_{ij} + \log \sum_{k \ne i,\; d_{ik} \ge d_{ij}} e^{s_{ik}}.

Each kernel returns the per-anchor mean :math:`\frac{1}{N - 1} \sum_{j \ne i} \ell_{ij}` of
shape (n,) (N - 1 taken as 1 for a single sample).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


class Anchors(NamedTuple):
    """The non-tensor arguments both kernels' autograd Functions take: the anchors, rows
    ``offset .. offset + n_anchors - 1`` of the contrast set, and the similarity ``kind``
    at ``temperature``. (Tensors must stay direct arguments, so autograd tracks them.)"""

    offset: int
    n_anchors: int
    kind: str
    temperature: float


def similarity(z_a: Tensor, z_c: Tensor, kind: str, temperature: float) -> Tensor:
    """``s = -||z_a_i - z_c_k|| / T`` ("l2") or ``<z_a_i, z_c_k> / T`` ("cosine"), (n, N).

    The rows are unit vectors, so ``||a - b||^2 = 2 - 2 <a, b>``: one matmul. The squared
    distance is clamped at ``eps`` so the square root stays differentiable when two samples
    coincide. Without autograd recording (inside the kernel) the steps run in place, and one
    ``addmm`` gives ``||a - b||^2 / T^2``.
    """
    eps = torch.finfo(z_a.dtype).eps
    if torch.is_grad_enabled() and (z_a.requires_grad or z_c.requires_grad):
        s = z_a @ z_c.T
        if kind == "cosine":
            return s / temperature
        return (2.0 - 2.0 * s).clamp_min(eps).sqrt() / -temperature
    if kind == "cosine":
        return (z_a @ z_c.T).div_(temperature)
    scale = 1.0 / temperature**2
    squared = torch.addmm(z_a.new_full((1, 1), 2.0 * scale), z_a, z_c.T, alpha=-2.0 * scale)
    return squared.clamp_min_(eps * scale).sqrt_().neg_()


def _self_diagonal(x: Tensor, offset: int) -> Tensor:
    """View of the entries ``(i, i + offset)``: each anchor paired with itself."""
    return x.diagonal(offset=offset)


# Largest logit range 2 / T (by working dtype) for which the linear-space forward is exact:
# there every e^{s_ik - shift} lies in [e^{-2/T}, 1], a normal number (float32 underflows
# below e^-87, float64 below e^-708), so no denominator can vanish. Smaller temperatures take
# the log-space forward, which shifts every group by its own max.
_LINEAR_LOGIT_RANGE = {torch.float32: 64.0, torch.float64: 600.0}

_NORM_EPS = 1e-12  # as F.normalize


class _Levels:
    """Tables between groups and distance levels ("l groups away") for G groups.

    For an anchor in group ``y`` and per-group values ``p`` (G,), the tail at level ``l`` is
    ``sum_{g : |g - y| >= l} p_g``: the total for ``l = 0``, else the prefix sum up to
    ``y - l`` plus the suffix sum from ``y + l`` (a part outside ``[0, G)`` is empty). One
    matmul with ``scan`` (G, 2G + 1) gives every prefix and suffix sum and a zero (column
    ``2G``); ``index[y, :2G]`` picks the two parts of each level (the zero for an empty
    part), and ``index[y, 2G:]`` is the distance ``|y - g|`` (G,) for the way back from
    levels to groups; ``distance`` (G, G) also turns the group histogram into the count of
    samples at each (anchor group, level). ``eye`` (G, G) gives the one-hot rows, and
    ``level_index`` (G, 2G) picks the groups ``y - l`` and ``y + l`` (column ``G`` of a
    padded row for none) for the log-space forward. Every table is O(G^2); the work is
    O(n G^2) for n anchors.
    """

    def __init__(self, num_groups: int, dtype: torch.dtype, device: torch.device) -> None:
        with torch.inference_mode(False):  # cached: must outlive an inference_mode block
            g = num_groups
            groups = torch.arange(g, device=device)
            y, level = groups[:, None], groups[None, :]
            zero = torch.zeros(g, 1, dtype=torch.bool, device=device)
            self.scan = torch.cat([y <= level, y >= level, zero], dim=1).to(dtype)
            empty = 2 * g
            below = torch.where(y >= level, y - level, empty)
            above = torch.where((level > 0) & (y + level < g), y + level, empty)
            tail_index = torch.cat(
                [torch.where(level == 0, g - 1, below), above + g], dim=1
            ).clamp_max_(empty)
            self.distance = (y - level).abs()
            self.index = torch.cat([tail_index, self.distance], dim=1)
            self.level_index = torch.cat([below, above], dim=1).clamp_max_(g)
            self.eye = torch.eye(g, dtype=dtype, device=device)

    def one_hot(self, y: Tensor) -> Tensor:
        """The (n, G) one-hot rows of the groups ``y``."""
        return self.eye.index_select(0, y)

    def counts(self, one_hot: Tensor) -> Tensor:
        """``C[y, l]``: how many samples ``k != i`` lie ``l`` groups from an anchor ``i`` in
        group ``y``, from the one-hot groups of the contrast set; (G, G). The group
        histogram is added at each distance ``|y - h|`` (O(G^2); whole counts, so exact in
        any order), less the anchor itself at level 0."""
        hist = one_hot.sum(dim=0, keepdim=True).expand_as(self.eye)
        counts = torch.zeros_like(self.eye).scatter_add_(1, self.distance, hist)
        counts[:, 0] -= 1.0
        return counts

    def tails(self, per_group: Tensor, index: Tensor) -> Tensor:
        """``out[i, l] = sum_{g : |g - y_i| >= l} per_group[i, g]``, (n, G) from (n, G), with
        ``index`` the rows ``self.index[y]``."""
        parts = (per_group @ self.scan).gather(1, index[:, : 2 * per_group.shape[1]])
        return parts.view(per_group.shape[0], 2, -1).sum(dim=1)

    def at_level(self, per_group: Tensor, y: Tensor, empty: float) -> tuple[Tensor, Tensor]:
        """The values of the groups ``y_i - l`` and ``y_i + l`` (``empty`` outside
        ``[0, G)``, and for ``y_i + 0``, so level 0 counts once); two (n, G) tensors."""
        padded = F.pad(per_group, (0, 1), value=empty)
        parts = padded.gather(1, self.level_index.index_select(0, y))
        return parts[:, : per_group.shape[1]], parts[:, per_group.shape[1] :]

    def unfold(self, per_level: Tensor, index: Tensor) -> Tensor:
        """``out[i, g] = per_level[i, |y_i - g|]``: from levels back to groups, (n, G), with
        ``index`` the rows ``self.index[y]``."""
        return per_level.gather(1, index[:, 2 * per_level.shape[1] :])


@functools.lru_cache(maxsize=16)
def _cached_levels(num_groups: int, dtype: torch.dtype, device: torch.device) -> _Levels:
    return _Levels(num_groups, dtype, device)


def _levels(num_groups: int, dtype: torch.dtype, device: torch.device) -> _Levels:
    """The tables for G groups, built once per (G, dtype, device) in eager mode (otherwise a
    few dozen microseconds of small ops per call); traced inline under compile."""
    if _is_compiling():
        return _Levels(num_groups, dtype, device)
    return _cached_levels(num_groups, dtype, device)


_is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling


class _GroupContrast(torch.autograd.Function):
    r"""Integer-group kernel with an analytic backward; normalises the features itself.

    With ``C_i(l)`` the number of ``k != i`` at group distance ``l`` from anchor ``i`` and
    :math:`D_i(l) = \sum_{k \ne i,\, d_{ik} \ge l} e^{s_{ik}}` the denominator, the
    per-anchor sum is

    .. math::
        \sum_{j \ne i} \ell_{ij} = -\sum_{j \ne i} s_{ij} + \sum_l C_i(l) \log D_i(l),

    and :math:`\partial / \partial s_{ik} = e^{s_{ik}} A_i(d_{ik}) - 1` with
    :math:`A_i(l) = \sum_{l' \le l} C_i(l') / D_i(l')`. Per-group sums of :math:`e^{s}` come
    from one matmul with the one-hot group matrix, and :math:`D` from their prefix and suffix
    sums (:class:`_Levels`). Below the temperature of ``_LINEAR_LOGIT_RANGE`` the forward
    works in log space instead (each group shifted by its own max), so no denominator
    underflows however small the temperature; :math:`e^{s_{ik}} A_i(d_{ik}) \le N` never
    overflows.

    ``reduction`` is done here ("none": the per-anchor means (n,); "mean" and "sum" of
    them: a scalar), so that a scalar loss costs no extra autograd node.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x_c: Tensor,
        y_c: Tensor,
        anchors: Anchors,
        num_groups: int,
        chunk_size: int | None,
        reduction: str,
    ) -> Tensor:
        # The anchors are a slice of the contrast set, passed once (compile needs distinct
        # inputs); their gradient is folded back into that slice in backward.
        offset, n_anchors, kind, temperature = anchors
        z_c, norm = _normalise(x_c)
        levels = _levels(num_groups, z_c.dtype, z_c.device)
        one_hot = levels.one_hot(y_c)
        counts = levels.counts(one_hot)
        index = levels.index.index_select(0, y_c[offset : offset + n_anchors])
        linear = 2.0 / temperature <= _LINEAR_LOGIT_RANGE.get(z_c.dtype, 0.0)
        rows = _linear_rows if linear else _log_rows
        chunks = _chunks(offset, n_anchors, chunk_size)
        if len(chunks) == 1:
            lo, hi = chunks[0]
            loss, table, s = rows(
                z_c, y_c, one_hot, levels, counts, index, lo, hi, kind, temperature,
                chunk_size is None,
            )
        else:
            parts = [
                rows(z_c, y_c, one_hot, levels, counts, index[lo - offset : hi - offset], lo,
                     hi, kind, temperature, False)
                for lo, hi in chunks
            ]
            loss, table, s = (torch.cat(p) for p in zip(*parts))
        # Unchunked, the (n, N) similarities are kept: backward then needs no second matmul.
        # Chunked, only (n, G) tables are kept and each block is recomputed.
        ctx.save_for_backward(z_c, norm, y_c, one_hot, table, s, index)
        ctx.chunks, ctx.offset, ctx.kind, ctx.temperature = chunks, offset, kind, temperature
        ctx.levels, ctx.linear = levels, linear
        ctx.scale = _pair_scale(z_c) / (max(n_anchors, 1) if reduction == "mean" else 1)
        if reduction == "none":
            return loss.mul_(ctx.scale)
        return loss.sum().mul_(ctx.scale)

    @staticmethod
    @once_differentiable  # the analytic backward is not itself differentiable: say so
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z_c, norm, y_c, one_hot, table, saved, index = ctx.saved_tensors
        # w_i: dL/d(loss sum of anchor i) times ds/d<a, c> (for "l2", without its 1 / s).
        w = grad * (ctx.scale / (ctx.temperature if ctx.kind == "cosine" else -ctx.temperature**2))
        w = w[:, None] if w.dim() else w.expand(table.shape[0], 1)
        tables = (y_c, one_hot, ctx.linear, ctx.kind, ctx.temperature)
        if saved.numel() and ctx.offset == 0 and table.shape[0] == z_c.shape[0]:
            # Anchors = contrast set: d<z_i, z_k> enters twice, so fold g into g + g^T.
            g = _grad_rows(saved, table, index, w, 0, *tables)
            grad_z = _plus_transpose(g) @ z_c
        else:
            grad_z = torch.zeros_like(z_c)
            for lo, hi in ctx.chunks:
                rows = slice(lo - ctx.offset, hi - ctx.offset)
                s = saved[rows] if saved.numel() else similarity(
                    z_c[lo:hi], z_c, ctx.kind, ctx.temperature
                )
                g = _grad_rows(s, table[rows], index[rows], w[rows], lo, *tables)
                grad_z.addmm_(g.T, z_c[lo:hi])
                grad_z[lo:hi].addmm_(g, z_c)
        grad_x = _normalise_backward(z_c, norm, grad_z)
        return grad_x, None, None, None, None, None


def _normalise(x_c: Tensor) -> tuple[Tensor, Tensor]:
    """``z = x / |x|`` row-wise and the clamped norms (N, 1), as F.normalize computes them."""
    norm = torch.linalg.vector_norm(x_c, dim=1, keepdim=True).clamp_min_(_NORM_EPS)
    return x_c / norm, norm


def _normalise_backward(z_c: Tensor, norm: Tensor, grad_z: Tensor) -> Tensor:
    """The gradient w.r.t. x from the gradient w.r.t. z (``grad_z`` is overwritten).

    z = x / |x|  =>  dx = (dz - z <z, dz>) / |x|. A zero row (|x| clamped at eps) has
    z = 0, so it gets dz / eps, as through F.normalize.
    """
    along = torch.linalg.vecdot(z_c, grad_z, dim=1)[:, None]
    return grad_z.addcmul_(z_c, along, value=-1.0).div_(norm)


def _plus_transpose(g: Tensor) -> Tensor:
    """``g + g.T``. From N = 1024 up, a blocked transpose copy and a plain add beat reading
    ``g.T`` with stride N (2-2.5x at the cache-hostile power-of-two sizes, measured on CPU)."""
    return g.T.contiguous().add_(g) if g.shape[0] >= 1024 else g + g.T


def _pair_scale(z_c: Tensor) -> float:
    """1 / (N - 1): from a per-anchor sum over the other samples to their mean."""
    return 1.0 / max(z_c.shape[0] - 1, 1)


def _linear_shift(kind: str, temperature: float) -> float:
    """The constant subtracted from s before ``exp`` in linear space, so that s - shift <= 0
    (the "l2" similarity is <= 0 already; "cosine" reaches 1 / T)."""
    return 1.0 / temperature if kind == "cosine" else 0.0


def _shifted_exp(s: Tensor, kind: str, temperature: float) -> Tensor:
    """``e^{s - shift}`` in a new buffer (forward and backward must use the same shift)."""
    shift = _linear_shift(kind, temperature)
    return (s - shift).exp_() if shift else s.exp()


def _chunks(offset: int, n_anchors: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` of the contrast set covering the anchors, ``chunk_size`` each."""
    step = n_anchors if chunk_size is None else chunk_size
    end = offset + n_anchors
    return [(lo, min(lo + step, end)) for lo in range(offset, end, max(step, 1))] or [(end, end)]


def _linear_rows(
    z_c: Tensor, y_c: Tensor, one_hot: Tensor, levels: _Levels, counts: Tensor,
    index: Tensor, lo: int, hi: int, kind: str, temperature: float, keep: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss sums (n,), ``A e^{shift}`` (n, G) by level, and the similarities if ``keep``
    (else an empty tensor), for the anchors ``lo..hi-1`` (``index``: their rows of
    ``levels.index``), in linear space (2 / T small enough). The kept similarities hold 0
    for each anchor with itself."""
    s = similarity(z_c[lo:hi], z_c, kind, temperature)
    _self_diagonal(s, lo).zero_()  # out of the sum of s; its e^s is zeroed below
    shift = _linear_shift(kind, temperature)
    e = _shifted_exp(s, kind, temperature)
    _self_diagonal(e, lo).zero_()
    # D_i(l) e^{-shift}. Where C > 0, D > 0 (a normal number in this range); elsewhere the
    # clamp keeps 0 * log D = 0 and C / D = 0.
    denom = levels.tails(e @ one_hot, index).clamp_min_(torch.finfo(e.dtype).tiny)
    del e
    count = counts.index_select(0, y_c[lo:hi])
    loss = torch.linalg.vecdot(count, denom.log()).sub_(s.sum(dim=1))
    if shift:
        loss += shift * (z_c.shape[0] - 1)
    return loss, count.div_(denom).cumsum_(dim=1), s if keep else s.new_zeros(0, s.shape[1])


def _log_rows(
    z_c: Tensor, y_c: Tensor, one_hot: Tensor, levels: _Levels, counts: Tensor,
    index: Tensor, lo: int, hi: int, kind: str, temperature: float, keep: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """As :func:`_linear_rows`, in log space (the table is ``log A``): exact at any
    temperature."""
    y_a = y_c[lo:hi]
    s = similarity(z_c[lo:hi], z_c, kind, temperature)
    _self_diagonal(s, lo).zero_()
    s_sum = s.sum(dim=1)
    work = s.clone() if keep else s
    _self_diagonal(work, lo).fill_(float("-inf"))
    # log-sum-exp of s over each group of the contrast set, each group shifted by its max
    # (empty groups get a finite shift so that -inf - shift stays -inf, never NaN).
    by_group = y_c.expand_as(work)
    group_max = work.new_full((work.shape[0], counts.shape[0]), float("-inf"))
    group_max = group_max.scatter_reduce_(1, by_group, work, "amax").clamp_min_(-1e30)
    per_group = torch.zeros_like(group_max).scatter_add_(
        1, by_group, work.sub_(group_max.index_select(1, y_c)).exp_()
    )
    del work
    # the log-total of the samples l groups from each anchor
    below, above = levels.at_level(per_group.log_().add_(group_max), y_a, float("-inf"))
    log_level = torch.logaddexp(below, above)
    log_denom = log_level.flip(1).logcumsumexp(1).flip(1)
    count = counts.index_select(0, y_a)
    present = count > 0  # where C > 0 the denominator is finite; elsewhere it is unused
    loss = -s_sum + torch.where(present, count * log_denom, 0.0).sum(dim=1)
    ratio = torch.where(present, count.log() - log_denom, float("-inf"))
    return loss, ratio.logcumsumexp(1), s if keep else s.new_zeros(0, s.shape[1])


def _grad_rows(
    s: Tensor, table: Tensor, index: Tensor, w: Tensor, lo: int, y_c: Tensor,
    one_hot: Tensor, linear: bool, kind: str, temperature: float,
) -> Tensor:
    """dL/d<z_a_i, z_c_k> (n, N) from the similarities ``s`` (read, not modified; any value
    for an anchor with itself), the forward's table (``A e^{shift}`` in linear space,
    ``log A`` in log space, by level), the anchors' rows ``index`` of ``levels.index``
    and the per-anchor factors ``w`` (n, 1)."""
    # dL/ds_ik = grad_i * (e^{s_ik} A_i(d_ik) - 1) for k != i, built in one new buffer, with
    # ds/d<a, c> folded into the per-anchor factor w: 1 / T ("cosine"), or for "l2"
    # (s = -dist / T, dist = sqrt(2 - 2<a, c>)) 1 / (T dist) = -1 / (T^2 s).
    # Where the squared distance was clamped at eps (a duplicate, z_c_k = z_a_i up to
    # sqrt(eps)), this is the large but finite 1 / (T sqrt(eps)) along z_c_k ~ z_a_i:
    # radial, so the normalisation's backward removes it (no mask needed).
    by_group = table.gather(1, index[:, 2 * table.shape[1] :])  # the table at each group
    if linear:
        # A is bounded here (by N e^{2/T}), so a matmul with the one-hot groups picks
        # w_i A_i(d_ik) for every k, faster than an index_select along the rows.
        g = _shifted_exp(s, kind, temperature)
        g.mul_((by_group * w) @ one_hot.T).sub_(w)
    else:
        g = (s + by_group.index_select(1, y_c)).exp_()
        g = torch.addcmul(-w, g, w, out=g)  # w (e^{s} A - 1) in one pass
    if kind != "cosine":
        g.div_(s)
    _self_diagonal(g, lo).zero_()  # after the division: s may be 0 there
    return g


def grouped(
    x_c: Tensor, y_c: Tensor, offset: int, n_anchors: int, num_groups: int, kind: str,
    temperature: float, chunk_size: int | None = None, reduction: str = "none",
) -> Tensor:
    """Per-anchor mean losses (n,) for integer groups in ``[0, num_groups)``, or their
    ``"mean"`` or ``"sum"`` (a scalar).

    ``x_c`` are raw features (normalised inside, with a fused backward). ``chunk_size``
    processes the anchors in row blocks: peak memory O(chunk_size * N).
    """
    out = _GroupContrast.apply(  # type: ignore[no-untyped-call]
        x_c, y_c, Anchors(offset, n_anchors, kind, temperature), num_groups, chunk_size,
        reduction,
    )
    return out  # type: ignore[no-any-return]
