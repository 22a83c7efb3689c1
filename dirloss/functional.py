r"""Pure-function forms of the dirloss losses (like ``torch.nn.functional``).

Every module in :mod:`dirloss` keeps its hyper-parameters and buffers and calls one of these
functions in its ``forward``: the math lives here, in one place.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _contrastive
from ._validation import (
    check_group_range,
    check_group_targets,
    check_non_negative,
    check_num_groups,
    check_positive,
    check_reduction,
    check_same_device,
    check_sample_weight,
    check_top_k,
)

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_K",
    "INFERENCE_MODES",
    "descending_soft_label_table",
    "descending_soft_labels",
    "descending_soft_label_loss",
    "group_contrastive_loss",
    "expert_share_table",
    "expert_mse_loss",
    "mixture_mse_loss",
    "weighted_mse_loss",
    "combine_experts",
    "select_expert",
]

INFERENCE_MODES = ("argmax", "soft", "topk")
"""How :func:`combine_experts` turns group logits and experts into one prediction."""

DEFAULT_TOP_K = 3
"""Default ``top_k`` of :func:`combine_experts`'s ``"topk"`` mode (the authors' code averages
the experts of the top 3 groups)."""

DEFAULT_TEMPERATURE = 0.1
"""Default temperature of :func:`group_contrastive_loss`.

Features are L2-normalised, so the "l2" similarity ``-||z_i - z_j|| / T`` spans
``[-2 / T, 0]``. Rank-N-Contrast's ``T = 2`` was chosen for unnormalised features; on the unit
sphere it squeezes every logit into ``[-1, 0]``, where near and far samples are barely told
apart. ``T = 0.1`` gives the logit range of 20 that SimCLR / SupCon use on normalised
embeddings. (Smaller temperatures stay exact too: both kernels switch to log space below
T = 1/32 in float32.)
"""

def _check_soft_label_params(num_groups: int, scale: float, step: int) -> None:
    check_num_groups(num_groups)
    check_positive("scale", scale)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"expected step to be a non-negative int, got {step!r}")
    top = num_groups - 1
    true_logit = min(max(scale * top, 0.0), top)
    neighbour_logit = min(max((num_groups - step - 1) / scale, 0.0), top)
    if neighbour_logit >= true_logit:
        bound = math.sqrt(max(num_groups - 1 - step, 0) / top)
        raise ValueError(
            "soft labels would not peak at the true group: the nearest neighbour's logit "
            f"clamp((G - step - 1) / scale) = {neighbour_logit:g} is not below the true "
            f"group's clamp(scale * (G - 1)) = {true_logit:g}; expected "
            f"scale > sqrt(max(G - 1 - step, 0) / (G - 1)) = {bound:.4g}, got scale={scale!r}, "
            f"step={step!r} with num_groups={num_groups}"
        )


def descending_soft_label_table(
    num_groups: int,
    *,
    scale: float = 1.0,
    step: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    r"""The (G, G) table of descending soft labels; row ``k`` is the label of true group ``k``.

    .. math::
        p_{kj} = \operatorname{softmax}_j \operatorname{clamp}(r_{kj}, 0, G - 1),\qquad
        r_{kk} = \text{scale}\,(G - 1),\quad
        r_{kj} = \frac{G - \text{step} - |j - k|}{\text{scale}}\ (j \ne k).

    With ``scale = step = 1`` this is :math:`p_{kj} \propto e^{-|j - k|}`: each row peaks at
    ``k`` and descends symmetrically with the group distance.

    Args:
        num_groups: G, at least 2.
        scale: sharpness; larger puts more mass on the true group.
        step: logit gap between the true group and its nearest neighbours (for scale = 1).
        dtype, device: of the returned table (default float32 on the CPU).

    Raises:
        ValueError: if the parameters would make a neighbour's probability reach the true
            group's (the bound is in the message).

    Example:
        >>> table = descending_soft_label_table(4)
        >>> torch.allclose(table.sum(1), torch.ones(4))
        True
        >>> (table.argmax(1) == torch.arange(4)).all().item()
        True
    """
    _check_soft_label_params(num_groups, scale, step)
    groups = torch.arange(num_groups, dtype=torch.float64, device=device)
    distance = (groups[:, None] - groups[None, :]).abs()
    logits = (num_groups - step - distance) / scale
    logits.fill_diagonal_(scale * (num_groups - 1))
    table = logits.clamp(0, num_groups - 1).softmax(dim=1)
    return table.to(dtype or torch.get_default_dtype())


def descending_soft_labels(
    groups: Tensor, num_groups: int, *, scale: float = 1.0, step: int = 1
) -> Tensor:
    r"""Soft labels for a batch of group indices: row ``groups[i]`` of the table above.

    Args:
        groups: (N,) integer group indices in ``[0, num_groups)``.
        num_groups: G.
        scale, step: see :func:`descending_soft_label_table`.

    Returns:
        (N, G) float32 probabilities on ``groups``' device.

    Example:
        >>> descending_soft_labels(torch.tensor([0, 2]), 3).argmax(1)
        tensor([0, 2])
    """
    check_group_targets("groups", groups)
    check_group_range("groups", groups, num_groups)
    table = descending_soft_label_table(num_groups, scale=scale, step=step, device=groups.device)
    return table.index_select(0, groups.long())


def descending_soft_label_loss(
    input: Tensor,
    target: Tensor,
    *,
    scale: float = 1.0,
    step: int = 1,
    logit_adjustment: Tensor | None = None,
    reduction: str = "mean",
    table: Tensor | None = None,
) -> Tensor:
    r"""Cross-entropy of group logits against descending soft labels (L_soft).

    .. math::
        \ell_i = -\sum_j p_{y_i j} \log \operatorname{softmax}(x_i + a)_j

    with :math:`p` from :func:`descending_soft_label_table` and :math:`a` the optional logit
    adjustment (``tau * log(prior)``, applied by the module only while training).
    ``"mean"`` averages over the batch; ``"sum"`` reproduces the research code, whose weight
    grew with the batch size.

    Args:
        input: (N, G) group logits.
        target: (N,) integer true groups in ``[0, G)``.
        scale, step: see :func:`descending_soft_label_table`.
        logit_adjustment: optional (G,) offsets added to every row of the logits.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        table: a precomputed (G, G) table (what :class:`~dirloss.DescendingSoftLabelLoss`
            caches); built from ``scale`` and ``step`` when omitted.

    Returns:
        A scalar, or (N,) for ``reduction="none"``. Computed in at least float32.

    Example:
        >>> logits = torch.tensor([[4.0, 1.0, -2.0], [0.0, 0.5, 3.0]])
        >>> descending_soft_label_loss(logits, torch.tensor([0, 2])).shape
        torch.Size([])
    """
    check_reduction(reduction)
    if input.dim() != 2:
        raise ValueError(f"expected input (group logits) of shape (N, G), got {tuple(input.shape)}")
    n, num_groups = input.shape
    check_group_targets("target", target, n)
    check_same_device("input", input, "target", target)
    check_group_range("target", target, num_groups)
    if table is None:
        table = descending_soft_label_table(num_groups, scale=scale, step=step, device=input.device)
    elif table.shape != (num_groups, num_groups):
        raise ValueError(
            f"expected input with {table.shape[0]} group logits (num_groups), got {num_groups}"
        )
    logits = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
    if logit_adjustment is not None:
        if logit_adjustment.shape != (num_groups,):
            raise ValueError(
                f"expected logit_adjustment of shape ({num_groups},), "
                f"got {tuple(logit_adjustment.shape)}"
            )
        logits = logits + logit_adjustment.to(logits.dtype)
    # Both as (G, N): a softmax over G = 10 contiguous values per row is a slow short-row
    # kernel on the CPU, over dim 0 of the transposed copy one vectorised pass.
    # The sign and the mean's 1 / N go into the (constant) soft labels: fewer autograd nodes.
    log_prob = F.log_softmax(logits.T, dim=0)
    soft = table.to(logits.dtype).T.index_select(1, target.long())
    if reduction == "none":
        return (soft.neg_() * log_prob).sum(dim=0)
    weight = soft.mul_(-1.0 if reduction == "sum" else -1.0 / max(n, 1))
    return torch.dot(weight.flatten(), log_prob.flatten())


def expert_share_table(
    num_groups: int,
    share: float,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    r"""The (G, G) table of expert weights; row ``k`` weighs the experts for true group ``k``.

    .. math::
        w_{kg} = \frac{e^{-|g - k| / s}}{\sum_{h} e^{-|h - k| / s}},\qquad
        w_{kg} = [g = k]\ \text{for}\ s = 0.

    ``share`` :math:`s` is a distance in groups: at ``s = 1`` the nearest neighbours get
    :math:`e^{-1} \approx 0.37` of the true group's weight.

    Args:
        num_groups: G, at least 2.
        share: :math:`s \ge 0`; 0 trains only the true group's expert (the paper).
        dtype, device: of the returned table (default float32 on the CPU).

    Example:
        >>> expert_share_table(3, 0.0)
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
        >>> torch.allclose(expert_share_table(5, 1.0).sum(1), torch.ones(5))
        True
    """
    check_num_groups(num_groups)
    check_non_negative("share", share)
    groups = torch.arange(num_groups, dtype=torch.float64, device=device)
    distance = (groups[:, None] - groups[None, :]).abs()
    if share == 0:
        table = (distance == 0).to(torch.float64)
    else:
        table = (-distance / share).softmax(dim=1)
    return table.to(dtype or torch.get_default_dtype())


def expert_mse_loss(
    experts: Tensor,
    target: Tensor,
    groups: Tensor,
    *,
    table: Tensor | None = None,
    target_unit: float | Tensor = 1.0,
    weight: Tensor | None = None,
    scale: float | Tensor | None = None,
) -> Tensor:
    r"""Mean squared error of the experts, each weighted by its share of the sample's group.

    .. math::
        \mathcal{L}_{mse} = \frac{1}{N O s_y^2} \sum_i a_i \sum_g w_{g_i g}
            \lVert \hat y_{i g} - y_i \rVert^2

    with :math:`w` from :func:`expert_share_table` (the identity when ``table`` is omitted:
    only the true group's expert, as in the paper) and :math:`s_y` = ``target_unit``, the unit
    of the targets (e.g. the training labels' standard deviation, which makes the loss the
    same for targets :math:`y` and :math:`c y + d` once ``target_unit`` follows them).

    Args:
        experts: (N, G, O) every expert's prediction.
        target: (N, O) targets.
        groups: (N,) integer true groups in ``[0, G)``.
        table: optional (G, G) expert weights whose rows sum to one.
        target_unit: positive unit of the targets (a float or a 0-d tensor, e.g.
            ``GroupBinner.label_std``).
        weight: optional (N,) per-sample weights :math:`a_i` (e.g. from
            :class:`~dirloss.LabelDensityWeights`); the sum is still divided by :math:`N`,
            so weights of mean 1 keep the loss's scale. Default: all ones.
        scale: deprecated name of ``target_unit`` (it warns).

    Returns:
        A scalar, computed in at least float32; 0 for an empty batch.

    Example:
        >>> experts, target = torch.zeros(2, 3, 1), torch.ones(2, 1)
        >>> expert_mse_loss(experts, target, torch.tensor([0, 2]))
        tensor(1.)
    """
    if experts.dim() != 3:
        raise ValueError(f"expected experts of shape (N, G, O), got {tuple(experts.shape)}")
    n, num_groups, out_features = experts.shape
    if target.shape != (n, out_features):
        raise ValueError(
            f"expected target of shape ({n}, {out_features}), got {tuple(target.shape)}"
        )
    check_group_targets("groups", groups, n)
    check_group_range("groups", groups, num_groups)
    work = torch.promote_types(experts.dtype, torch.float32)  # fp32 under autocast
    unit = _target_unit(target_unit, scale, "expert_mse_loss", work)
    denominator = max(n * out_features, 1) * unit**2  # the mean, and 0 (not NaN) when empty
    sample = check_sample_weight(weight, n, experts, work)
    if table is None:
        pred = select_expert(experts, groups)
        if sample is None:
            return F.mse_loss(pred.to(work), target.to(work), reduction="sum") / denominator
        squared = (pred.to(work) - target.to(work)).square().sum(dim=1)
        return torch.dot(sample, squared) / denominator
    if table.shape != (num_groups, num_groups):
        raise ValueError(
            f"expected a ({num_groups}, {num_groups}) expert table, got {tuple(table.shape)}"
        )
    share = table.to(work).index_select(0, groups.long())  # (N, G)
    if sample is not None:
        share = share * sample[:, None]
    squared = (experts.to(work) - target.to(work)[:, None, :]).square().sum(dim=2)
    return torch.dot(share.flatten(), squared.flatten()) / denominator


def _target_unit(
    target_unit: float | Tensor, scale: float | Tensor | None, fn: str, work: torch.dtype
) -> float | Tensor:
    """``target_unit`` (or the deprecated ``scale``, with a warning) in the working dtype."""
    if scale is not None:
        warnings.warn(
            f"{fn}(scale=...) is deprecated; use target_unit=... (the same value). 'scale' "
            "elsewhere in dirloss is the soft labels' sharpness",
            FutureWarning, stacklevel=3,
        )
        target_unit = scale
    return target_unit.to(work) if isinstance(target_unit, Tensor) else target_unit


def mixture_mse_loss(
    logits: Tensor,
    experts: Tensor,
    target: Tensor,
    *,
    target_unit: float | Tensor = 1.0,
    weight: Tensor | None = None,
    scale: float | Tensor | None = None,
) -> Tensor:
    r"""Mean squared error of the soft mixture of experts, in units of ``target_unit``.

    .. math::
        \mathcal{L}_{mix} = \frac{1}{N O s_y^2} \sum_i a_i
            \Big\lVert \sum_g \operatorname{softmax}(z_i)_g\,\hat y_{i g} - y_i \Big\rVert^2

    The gradient reaches the logits too: the classifier learns the routing that lowers the
    regression error of the prediction that ``inference="soft"`` makes.

    Args:
        logits: (N, G) group logits.
        experts: (N, G, O) every expert's prediction.
        target: (N, O) targets.
        target_unit: positive unit of the targets (a float or a 0-d tensor).
        weight: optional (N,) per-sample weights :math:`a_i`, as in :func:`expert_mse_loss`.
        scale: deprecated name of ``target_unit`` (it warns).

    Returns:
        A scalar, computed in at least float32; 0 for an empty batch.

    Example:
        >>> logits, experts = torch.zeros(1, 2), torch.tensor([[[0.0], [2.0]]])
        >>> mixture_mse_loss(logits, experts, torch.tensor([[1.0]]))
        tensor(0.)
    """
    work = torch.promote_types(experts.dtype, torch.float32)  # fp32 under autocast
    pred = combine_experts(logits.to(work), experts.to(work), "soft")
    if target.shape != pred.shape:
        raise ValueError(f"expected target of shape {tuple(pred.shape)}, got {tuple(target.shape)}")
    unit = _target_unit(target_unit, scale, "mixture_mse_loss", work)
    denominator = max(pred.numel(), 1) * unit**2
    sample = check_sample_weight(weight, pred.shape[0], experts, work)
    if sample is None:
        return F.mse_loss(pred, target.to(work), reduction="sum") / denominator
    return torch.dot(sample, (pred - target.to(work)).square().sum(dim=1)) / denominator


def weighted_mse_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    r"""Squared error with per-sample weights (the loss the official LDS code trains with).

    .. math::
        \ell_{ij} = a_i\,(x_{ij} - y_{ij})^2, \qquad
        \mathcal{L} = \frac{1}{N O} \sum_{i, j} \ell_{ij} \quad (\text{"mean"})

    The mean divides by the number of elements, not by :math:`\sum_i a_i`, as the official
    code's ``torch.mean(weights * loss)``: with weights of mean 1 over the training set (as
    :class:`~dirloss.LabelDensityWeights` gives) the loss keeps its unweighted scale on
    average, and a batch of rare labels weighs more than a batch of common ones. The
    weights are constants for the reweighting methods, but a gradient does reach them.

    Args:
        input: (N,) or (N, O) predictions.
        target: targets of ``input``'s shape.
        weight: optional (N,) per-sample weights :math:`a_i`, e.g. ``lds(target)``; None
            gives :func:`torch.nn.functional.mse_loss` (with an empty batch giving 0).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        A scalar, or ``input``'s shape for ``"none"``; computed in at least float32; 0 for an
        empty batch.

    Example:
        >>> pred, y = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
        >>> weighted_mse_loss(pred, y, torch.tensor([1.5, 0.5]))
        tensor(1.7500)
    """
    check_reduction(reduction)
    if input.dim() not in (1, 2) or target.shape != input.shape:
        raise ValueError(
            "expected input of shape (N,) or (N, O) and target of the same shape, got "
            f"{tuple(input.shape)} and {tuple(target.shape)}"
        )
    check_same_device("input", input, "target", target)
    work = torch.promote_types(input.dtype, torch.float32)  # fp32 under autocast
    sample = check_sample_weight(weight, input.shape[0], input, work)
    x, y = input.to(work), target.to(work)
    # an empty batch's mean is its sum: 0, not NaN, still in the graph
    how = "sum" if reduction == "mean" and input.numel() == 0 else reduction
    if sample is None:
        return F.mse_loss(x, y, reduction=how)
    loss = F.mse_loss(x, y, reduction="none") * (sample if x.dim() == 1 else sample[:, None])
    if how == "none":
        return loss
    return loss.sum() if how == "sum" else loss.mean()


def combine_experts(
    logits: Tensor,
    experts: Tensor,
    inference: str = "soft",
    *,
    top_k: int = DEFAULT_TOP_K,
    logit_adjustment: Tensor | None = None,
) -> Tensor:
    r"""One prediction per sample from the group logits and every expert's prediction.

    .. math::
        \tilde z = z - a,\qquad
        \hat y = \hat y_{\arg\max_g \tilde z_g}\ (\text{argmax}),\qquad
        \hat y = \sum_g \operatorname{softmax}(\tilde z)_g\,\hat y_g\ (\text{soft}),

    .. math::
        \hat y = \sum_{g \in K} \frac{e^{\tilde z_g}}{\sum_{h \in K} e^{\tilde z_h}}\,
            \hat y_g\ (\text{topk}),

    where :math:`K` holds the ``top_k`` groups with the largest :math:`\tilde z` (all G when
    ``top_k >= G``), and :math:`a` is an optional post-hoc logit adjustment, usually
    :math:`\tau \log \pi` with :math:`\pi` the training group prior: subtracting it
    moves predictions toward rare groups (Menon et al., 2021). ``"topk"`` sits between the
    other two (``top_k`` = 1 is argmax, ``top_k`` = G is soft): it keeps the mixture's hedge
    between neighbouring groups but drops the small weights of far groups, which pull every
    prediction toward the crowded middle of the label range.

    Args:
        logits: (N, G) group logits.
        experts: (N, G, O) every expert's prediction.
        inference: ``"argmax"`` | ``"soft"`` | ``"topk"``.
        top_k: the number of groups ``"topk"`` mixes (a positive int; other modes ignore it).
        logit_adjustment: optional (G,) offsets subtracted from every row of the logits.

    Returns:
        (N, O) predictions in the experts' dtype.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> experts = torch.tensor([[[1.0], [3.0]]])
        >>> combine_experts(logits, experts, "argmax")
        tensor([[1.]])
        >>> combine_experts(logits, experts, "argmax", logit_adjustment=torch.tensor([3.0, 0.0]))
        tensor([[3.]])
        >>> logits = torch.tensor([[0.0, 0.0, -30.0]])
        >>> combine_experts(logits, torch.tensor([[[1.0], [3.0], [8.0]]]), "topk", top_k=2)
        tensor([[2.]])
    """
    if inference not in INFERENCE_MODES:
        raise ValueError(f"expected inference in {INFERENCE_MODES}, got {inference!r}")
    if logits.dim() != 2 or experts.dim() != 3 or experts.shape[:2] != logits.shape:
        raise ValueError(
            "expected logits of shape (N, G) and experts of shape (N, G, O), got "
            f"{tuple(logits.shape)} and {tuple(experts.shape)}"
        )
    check_top_k(top_k)
    if logit_adjustment is not None:
        logits = logits - logit_adjustment.to(logits.dtype)
    if inference == "topk" and top_k < logits.shape[1]:
        top = logits.topk(top_k, dim=1)
        weights = top.values.softmax(dim=1).to(experts.dtype)
        index = top.indices[:, :, None].expand(-1, -1, experts.shape[2])
        return (weights[:, :, None] * experts.gather(1, index)).sum(dim=1)
    if inference in ("soft", "topk"):
        # softmax over dim 0 of the (G, N) transpose: over G = 10 contiguous values per row
        # it is a slow short-row kernel on the CPU. A product and a sum over G, not a bmm
        # of N tiny matrices (an einsum): one pass each way.
        weights = logits.T.softmax(dim=0).T.to(experts.dtype)
        return (weights[:, :, None] * experts).sum(dim=1)
    return select_expert(experts, logits.argmax(dim=1))


def select_expert(experts: Tensor, groups: Tensor) -> Tensor:
    r"""The prediction of each sample's own expert: row ``i`` is ``experts[i, groups[i]]``.

    Training routes each sample to the expert of its true group (:math:`\hat y_i =
    e_{i, g_i}`); inference with ``"argmax"`` to that of the predicted group.

    Args:
        experts: (N, G, O) predictions of the G experts.
        groups: (N,) integer group indices. Indices outside ``[0, G)`` are clamped (the
            unchecked fast path, free of host syncs; :class:`~dirloss.MultiExpertHead`
            checks them first on CPU tensors or with ``validate=True``).

    Returns:
        (N, O).

    Example:
        >>> experts = torch.arange(12.0).view(2, 3, 2)
        >>> select_expert(experts, torch.tensor([2, 0]))
        tensor([[4., 5.],
                [6., 7.]])
    """
    index = groups.long().clamp(0, experts.shape[1] - 1).view(-1, 1, 1)
    index = index.expand(-1, 1, experts.shape[2])
    return experts.gather(1, index).squeeze(1)


def group_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    *,
    num_groups: int | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    similarity: str = "l2",
    reduction: str = "mean",
    chunk_size: int | None = None,
    normalize: bool = True,
    view_dim: int | None = None,
) -> Tensor:
    r"""Group-aware ordinal contrastive loss (L_grc; Rank-N-Contrast applied to groups).

    With :math:`z = \text{features} / \lVert\text{features}\rVert` (the raw features with
    ``normalize=False``),
    :math:`s_{ij} = -\lVert z_i - z_j \rVert_2 / T` (``"l2"``) or
    :math:`\cos(z_i, z_j) / T` (``"cosine"``), and :math:`d_{ij} = |y_i - y_j|`:

    .. math::
        \ell_{ij} = -\log \frac{e^{s_{ij}}}{\sum_{k \ne i,\; d_{ik} \ge d_{ij}} e^{s_{ik}}},
        \qquad \mathcal{L} = \frac{1}{N (N - 1)} \sum_i \sum_{j \ne i} \ell_{ij}.

    For anchor ``i`` and positive ``j``, the negatives are the samples at least as far from
    ``i`` in label distance as ``j`` is, so the loss orders the embedding by label.

    Two kernels:

    * integer ``labels`` of shape (N,) or (N, 1) (the normal case, group indices): the fused
      group kernel. No loop over the batch, O(N^2 + N G) memory (O(chunk_size * N) chunked)
      and O(N^2 (D + G)) time, with an analytic backward. With ``num_groups``, labels
      outside ``[0, num_groups)`` raise ``ValueError`` for CPU tensors; on other devices
      they are not checked (that would force a host sync;
      ``GroupContrastiveLoss(validate=True)`` checks) and are clamped into the range.
      Without ``num_groups`` the groups are inferred from the batch with **one host read**
      (its minimum and maximum; the loss depends only on label differences, so negative
      labels are fine): ``G = max - min + 1``. Passing ``num_groups`` keeps the call free
      of host syncs, as :class:`~dirloss.GroupDIRLoss` does. Integer labels that span
      more than ``max(128, 8 sqrt(N))`` values (where the sort is the faster kernel), and
      any call traced by ``torch.compile`` (where a host read would break
      ``fullgraph=True``), take the continuous kernel below instead: the same loss.
    * float ``labels`` (even when they hold whole numbers), integer labels of shape (N, L)
      with L > 1, and the cases above: the same loss on the continuous distances
      (Rank-N-Contrast), O(N^2 log N) via a row sort; ties are exact. Labels of shape
      (N, L) use the L1 distance.

    Args:
        features: (N, D) backbone features (any scale; they are normalised), or views of
            them along ``view_dim``.
        labels: (N,) or (N, 1) group indices or real labels; (N, L) real labels.
        num_groups: G, for integer group labels in ``[0, G)``: no host sync. Without it,
            integer labels have G inferred from the batch (one host read).
        temperature: T > 0, see :data:`DEFAULT_TEMPERATURE` for the default.
        similarity: ``"l2"`` or ``"cosine"``.
        reduction: ``"mean"`` over all ordered pairs, ``"sum"`` of the per-anchor means, or
            ``"none"``: the per-anchor mean over ``j``, shape (N,).
        chunk_size: process the anchors in blocks of this many rows, so the peak extra
            memory is O(chunk_size * N) instead of O(N^2) (same loss and gradients). Integer
            group labels with ``num_groups`` only.
        normalize: L2-normalise the features first (default). ``False`` is the official
            Rank-N-Contrast code (Zha et al., NeurIPS 2023), which contrasts raw features,
            :math:`s_{ij} = -\lVert x_i - x_j \rVert_2 / T` (``"l2"`` only: the cosine does
            not depend on the scale), and trains with T = 2; our default temperature stays
            :data:`DEFAULT_TEMPERATURE`, chosen for normalised features. That path is plain
            autograd, O(N^2 log N) for every kind of label, with no host read.
        view_dim: the dimension of ``features`` that holds V augmented views of each sample:
            ``1`` for (N, V, D) (the official code's (N, 2, D)), ``0`` for (V, N, D); None
            (default) for one view, (N, D). The N V views are contrasted as N V samples, each
            with its sample's label: the single-view call on the concatenated views.

    Returns:
        A scalar, or (N,) ((N, V) or (V, N) with views). A single sample and view (no pair)
        gives 0, still attached to the graph. Computed in at least float32.

    Example:
        >>> features = torch.randn(8, 16, requires_grad=True)
        >>> groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss = group_contrastive_loss(features, groups, num_groups=4)
        >>> loss.backward()
        >>> features.grad.shape
        torch.Size([8, 16])
    """
    _contrastive.check_inputs(
        features, labels, num_groups, temperature, similarity, chunk_size, normalize, view_dim
    )
    check_reduction(reduction)
    x, y = _contrastive.flatten_views(features, labels, view_dim)
    out = _contrastive.loss(
        x, y, num_groups, similarity, temperature, chunk_size, reduction, normalize=normalize
    )
    return _contrastive.unflatten_views(out, labels.shape[0], view_dim)
