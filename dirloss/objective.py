"""GroupDIRLoss: the combined objective L_grc + L_mse + L_soft (+ the soft-mixture MSE)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import functional as DF
from ._validation import (
    DeferredInit,
    check_group_range,
    check_group_targets,
    check_non_negative,
    check_same_device,
    check_sample_weight,
    without_autocast,
)
from .binning import GroupBinner
from .heads import HeadOutput
from .losses import DescendingSoftLabelLoss, GroupContrastiveLoss

__all__ = ["GroupDIRLoss", "GroupDIRLossOutput"]

DEFAULT_LAMBDA_GRC = 0.1
DEFAULT_LAMBDA_MSE = 10.0
DEFAULT_EXPERT_SHARE = 1.0
DEFAULT_LAMBDA_MIX = 1.0


class GroupDIRLossOutput(NamedTuple):
    """What :class:`GroupDIRLoss` returns: the total to back-propagate and its parts.

    Attributes:
        loss: scalar total, attached to the graph.
        grc, mse, soft, mix: the unweighted terms, detached (0 for a skipped term).
    """

    loss: Tensor
    grc: Tensor
    mse: Tensor
    soft: Tensor
    mix: Tensor


class GroupDIRLoss(DeferredInit):
    r"""The Group-DIR training objective: the library's recipe by default, the paper's on request.

    .. math::
        \mathcal{L} = \lambda_{grc}\,\mathcal{L}_{grc}(f, g)
            + \lambda_{mse}\,\frac{1}{N O s_y^2}\sum_i \sum_k w_{g_i k}
              \lVert \hat y_{i k} - y_i \rVert^2
            + \lambda_{soft}\,\mathcal{L}_{soft}(\text{logits}, g)
            + \lambda_{mix}\,\frac{1}{N O s_y^2}\sum_i
              \Big\lVert \sum_k \operatorname{softmax}(\text{logits}_i)_k\,\hat y_{i k}
              - y_i \Big\rVert^2,
        \qquad g = \text{binner}(y),

    where :math:`\hat y_{i k}` is expert ``k``'s prediction (``output.experts``, whatever
    ``prediction`` holds), :math:`w` is :func:`dirloss.functional.expert_share_table` with
    ``expert_share`` (every expert learns from every sample, weighted by its group distance;
    ``expert_share=0`` trains only the true group's expert), ``O`` is ``out_features``,
    :math:`s_y` is the training labels' standard deviation (``binner.label_std``) when
    ``standardize_mse`` (else 1), :math:`\mathcal{L}_{soft}` is
    :class:`DescendingSoftLabelLoss` and :math:`\mathcal{L}_{grc}` is
    :class:`GroupContrastiveLoss` on the backbone features. The last term trains the soft
    mixture of experts that ``inference="soft"`` predicts with, end to end: the classifier
    learns the routing that the regression needs, not only the group labels. Every term is
    a batch mean, so the
    lambdas do not depend on the batch size, and with ``standardize_mse`` the loss and each
    term are the same for targets :math:`y` and :math:`c y + d` (binner refitted): no
    hand-scaling of ``lambda_mse`` for the target's units. A weight of 0 skips its term.

    The defaults are the recipe measured best on validation across the benchmark's data sets
    (docs/guide.md, "The default recipe"). :meth:`paper` builds the exact objective of Pu et
    al. (AAAI 2025).

    Args:
        binner: a fitted :class:`GroupBinner` (a submodule: it moves and saves with the loss).
        temperature, similarity, gather_distributed, chunk_size: of the contrastive term
            (see :class:`GroupContrastiveLoss`).
        lambda_grc, lambda_mse, lambda_soft, lambda_mix: term weights (>= 0).
        expert_share: :math:`s \ge 0`, the reach of each sample across experts in groups
            (0: only the true group's expert, the paper).
        standardize_mse: measure the expert MSE in units of ``binner.label_std``.
        scale, step: of the soft labels (see :class:`DescendingSoftLabelLoss`).
        tau: > 0 turns on training-time logit adjustment of the soft-label term with the
            binner's group counts (read at each call, so a refitted binner is followed).
        soft_reduction: ``"mean"`` over the batch, or ``"sum"`` (the authors' code: the
            soft-label term then grows with the batch size).
        validate: check that targets and features are finite and that ``groups`` lie in
            ``[0, G)``, and raise with the count of bad entries. This forces a host sync, so
            it is off by default; without it a NaN target makes the MSE term (and so the
            loss) NaN, and lands in the last group. Out-of-range ``groups`` raise for CPU
            tensors even without it (no sync there).

    Shape:
        - output: :class:`HeadOutput` with G = ``binner.num_groups``.
        - features: (N, D) the backbone features fed to the head.
        - target: (N,) or (N, 1) (or (N, out_features) when ``groups`` is passed).
        - groups: optional (N,) group indices, overriding ``binner(target)`` (needed for
          multi-dimensional targets).

    Example:
        >>> from dirloss import MultiExpertHead
        >>> binner = GroupBinner(4).fit(torch.rand(100) * 10)
        >>> head = MultiExpertHead(16, num_groups=4)
        >>> criterion = GroupDIRLoss(binner)
        >>> features, target = torch.randn(8, 16), torch.rand(8) * 10
        >>> out = criterion(head(features, binner(target)), features, target)
        >>> out.loss.backward()
    """

    expert_table: Tensor | None

    def __init__(
        self,
        binner: GroupBinner,
        *,
        temperature: float = DF.DEFAULT_TEMPERATURE,
        similarity: str = "l2",
        lambda_grc: float = DEFAULT_LAMBDA_GRC,
        lambda_mse: float = DEFAULT_LAMBDA_MSE,
        lambda_soft: float = 1.0,
        lambda_mix: float = DEFAULT_LAMBDA_MIX,
        expert_share: float = DEFAULT_EXPERT_SHARE,
        standardize_mse: bool = True,
        scale: float = 1.0,
        step: int = 1,
        tau: float = 0.0,
        soft_reduction: str = "mean",
        gather_distributed: bool = False,
        chunk_size: int | None = None,
        validate: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(binner, GroupBinner):
            raise ValueError(f"expected a GroupBinner, got {type(binner).__name__}")
        if not binner.fitted:
            raise ValueError("expected a fitted GroupBinner: call binner.fit(train_labels) first")
        self.binner = binner
        self.lambda_grc = check_non_negative("lambda_grc", lambda_grc)
        self.lambda_mse = check_non_negative("lambda_mse", lambda_mse)
        self.lambda_soft = check_non_negative("lambda_soft", lambda_soft)
        self.lambda_mix = check_non_negative("lambda_mix", lambda_mix)
        if not (self.lambda_grc or self.lambda_mse or self.lambda_soft or self.lambda_mix):
            raise ValueError(
                "expected at least one of lambda_grc, lambda_mse, lambda_soft, lambda_mix to be "
                "> 0, got all 0"
            )
        self.expert_share = check_non_negative("expert_share", expert_share)
        self.standardize_mse = bool(standardize_mse)
        self.validate = validate
        self.contrastive = GroupContrastiveLoss(
            num_groups=binner.num_groups, temperature=temperature, similarity=similarity,
            gather_distributed=gather_distributed, chunk_size=chunk_size,
        )
        self.soft_label = DescendingSoftLabelLoss(
            binner.num_groups, scale=scale, step=step, reduction=soft_reduction,
            group_counts=binner.counts, tau=tau,
        )
        table = None
        if self.expert_share > 0:
            table = DF.expert_share_table(binner.num_groups, self.expert_share)
        self.register_buffer("expert_table", table, persistent=False)

    def _init_buffers(self) -> None:
        # Not in the state_dict (derived from expert_share): refilled after to_empty().
        if self.expert_table is not None:
            self.expert_table.copy_(
                DF.expert_share_table(self.binner.num_groups, self.expert_share)
            )

    @classmethod
    def paper(
        cls, binner: GroupBinner, *, authors_weighting: bool = False, **kwargs: Any
    ) -> GroupDIRLoss:
        r"""The exact objective of Pu et al. (AAAI 2025), as dirloss 0.1 computed it.

        :math:`\mathcal{L}_{grc} + \mathcal{L}_{mse} + \mathcal{L}_{soft}` with every weight 1
        (no mixture term),
        only the true group's expert in the MSE (``expert_share=0``) and the MSE in the
        targets' own units (``standardize_mse=False``). Pair it with
        ``MultiExpertHead(..., residual=False, inference="argmax")``.

        Args:
            binner: a fitted :class:`GroupBinner`.
            authors_weighting: sum the soft-label term over the batch as the authors' code
                does (its weight then grows with the batch size) instead of averaging it.
            **kwargs: any other :class:`GroupDIRLoss` argument, e.g. ``lambda_mse``.

        Example:
            >>> binner = GroupBinner(4).fit(torch.rand(100))
            >>> GroupDIRLoss.paper(binner).expert_share
            0.0
        """
        settings: dict[str, Any] = {
            "lambda_grc": 1.0, "lambda_mse": 1.0, "lambda_soft": 1.0, "lambda_mix": 0.0,
            "expert_share": 0.0,
            "standardize_mse": False, "temperature": DF.DEFAULT_TEMPERATURE,
            "soft_reduction": "sum" if authors_weighting else "mean",
        }
        settings.update(kwargs)
        return cls(binner, **settings)

    def forward(
        self,
        output: HeadOutput,
        features: Tensor,
        target: Tensor,
        groups: Tensor | None = None,
        *,
        weight: Tensor | None = None,
    ) -> GroupDIRLossOutput:
        """The objective and its terms (see the class docstring).

        ``weight``: optional (N,) per-sample weights (e.g. from
        :class:`~dirloss.LabelDensityWeights`) of the expert and mixture MSE terms; the
        contrastive and soft-label terms stay unweighted. Weights of mean 1 over the
        training set keep the terms' scale (the sums are still divided by N, as the official
        LDS code takes the mean of the weighted losses). Weights that require a gradient
        get one (through the term-by-term computation instead of the fused node).
        """
        if not isinstance(output, HeadOutput):
            raise ValueError(
                "expected output to be the HeadOutput of a MultiExpertHead (head(features, "
                f"groups)), got {type(output).__name__}; pass the head's output, not .prediction"
            )
        experts = output.experts
        n, num_groups, out_features = experts.shape
        if num_groups != self.binner.num_groups:
            raise ValueError(
                f"expected a head with num_groups={self.binner.num_groups} (the binner's), "
                f"got {num_groups}"
            )
        target = self._check_target(target, experts, features)
        if groups is None:
            if target.shape[1] != 1:
                raise ValueError(
                    f"expected groups= for targets with {target.shape[1]} columns: the binner "
                    "bins one label per sample"
                )
            groups = self.binner(target[:, 0])
        else:
            check_group_targets("groups", groups, n)
            check_same_device("output.experts", experts, "groups", groups)
            check_group_range("groups", groups, num_groups, force=self.validate)
        zero = experts.new_zeros(())
        grc = mse = soft = mix = zero
        unit = self.binner.label_std if self.standardize_mse else 1.0
        if self.lambda_grc:
            grc = self.contrastive(features, groups)
        # The term-by-term path for a per-sample soft term, or for weights that need a
        # gradient (the fused node's backward treats the weights as constants).
        learned_weight = weight is not None and weight.requires_grad
        if self.soft_label.reduction == "none" or learned_weight:
            if self.lambda_mse:
                mse = DF.expert_mse_loss(
                    experts, target, groups, table=self.expert_table, target_unit=unit,
                    weight=weight,
                )
            if self.lambda_soft:
                soft = self.soft_label(output.logits, groups, group_counts=self.binner.counts)
            if self.lambda_mix:
                mix = DF.mixture_mse_loss(
                    output.logits, experts, target, target_unit=unit, weight=weight
                )
        elif self.lambda_mse or self.lambda_soft or self.lambda_mix:
            # one node for the three head terms and their weighted sum
            head, mse, soft, mix = self._head_terms(
                output.logits, experts, target, groups, unit, weight
            )
            loss = head if not self.lambda_grc else head + self.lambda_grc * grc
            return GroupDIRLossOutput(loss, grc.detach(), mse, soft, mix)
        loss = (
            self.lambda_grc * grc + self.lambda_mse * mse + self.lambda_soft * soft
            + self.lambda_mix * mix
        )
        return GroupDIRLossOutput(loss, grc.detach(), mse.detach(), soft.detach(), mix.detach())

    def _head_terms(
        self, logits: Tensor, experts: Tensor, target: Tensor, groups: Tensor,
        unit: float | Tensor, weight: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``lambda_mse L_mse + lambda_soft L_soft + lambda_mix L_mix`` and the three terms
        (0 where the weight is 0; detached) from one autograd node (:class:`_HeadTerms`): the
        same values as :func:`~dirloss.functional.expert_mse_loss`, the soft-label module and
        :func:`~dirloss.functional.mixture_mse_loss`."""
        if logits.dim() != 2 or logits.shape != experts.shape[:2]:
            raise ValueError(
                "expected logits of shape (N, G) and experts of shape (N, G, O), got "
                f"{tuple(logits.shape)} and {tuple(experts.shape)}"
            )
        work = torch.promote_types(experts.dtype, torch.float32)  # fp32 under autocast
        n, num_groups, out_features = experts.shape
        if isinstance(unit, Tensor):
            unit = unit.to(work)
        mse_norm = 1.0 / (max(n * out_features, 1) * unit**2)  # the mean, in units of s_y^2
        soft = self.soft_label
        adjustment = soft._adjustment(self.binner.counts) if self.lambda_soft else None
        weights = (self.lambda_mse, self.lambda_soft, self.lambda_mix)
        sample = check_sample_weight(weight, n, experts, work)
        with without_autocast(experts.device.type):
            out = _HeadTerms.apply(  # type: ignore[no-untyped-call]
                logits.to(work), experts.to(work), target.to(work),
                groups.long().clamp(0, num_groups - 1), self.expert_table, soft.table,
                adjustment, mse_norm, 1.0 / max(n, 1) if soft.reduction == "mean" else 1.0,
                weights, sample,
            )
        return out  # type: ignore[no-any-return]

    def _check_target(self, target: Tensor, experts: Tensor, features: Tensor) -> Tensor:
        n, _, out_features = experts.shape
        check_same_device("output.experts", experts, "target", target)
        check_same_device("output.experts", experts, "features", features)
        if not target.dtype.is_floating_point:
            raise ValueError(
                f"expected a floating-point target (the head's experts are {experts.dtype}), "
                f"got {target.dtype}"
            )
        if features.dim() != 2 or features.shape[0] != n:
            raise ValueError(
                f"expected features of shape ({n}, D) to match the head output, "
                f"got {tuple(features.shape)}"
            )
        if target.dim() == 1:
            target = target[:, None]
        if target.shape != (n, out_features):
            raise ValueError(
                f"expected target of shape ({n},) or ({n}, {out_features}) to match the head "
                f"output, got {tuple(target.shape)}"
            )
        if self.validate and not target.is_meta:  # meta tensors hold no values to check
            for name, value in (("targets", target), ("features", features)):
                bad = int((~torch.isfinite(value)).sum())
                if bad:
                    raise ValueError(
                        f"expected finite {name}, got {bad} NaN/inf of {value.numel()}"
                    )
        return target

    def extra_repr(self) -> str:
        return (
            f"lambda_grc={self.lambda_grc}, lambda_mse={self.lambda_mse}, "
            f"lambda_soft={self.lambda_soft}, lambda_mix={self.lambda_mix}, "
            f"expert_share={self.expert_share}, "
            f"standardize_mse={self.standardize_mse}, validate={self.validate}"
        )


class _HeadTerms(torch.autograd.Function):
    r"""The three terms of the head, L_mse, L_soft and L_mix, and their weighted sum in one
    autograd node with an analytic backward (term by term, the graph has some thirty nodes
    of (N, G) ops, whose fixed cost dominates at tabular batch sizes).

    With :math:`\delta_{ig} = \hat y_{ig} - y_i` (N, G, O), :math:`c = 1 / (N O s_y^2)`,
    :math:`w` the rows of the expert-share table (one-hot without one), :math:`p` the
    softmax of the logits, :math:`m_i = \sum_g p_{ig} \delta_{ig}` (the soft mixture's
    error, as the weights sum to one), :math:`q` the soft labels, :math:`\pi` the softmax
    of the (adjusted) logits and :math:`k` = 1 / N ("mean") or 1 ("sum"):

    .. math::
        L_{mse} = c \sum_{ig} w_{ig} \lVert\delta_{ig}\rVert^2,\quad
        L_{mix} = c \sum_i \lVert m_i \rVert^2,\quad
        L_{soft} = -k \sum_{ig} q_{ig} \log \pi_{ig},

    so :math:`\partial L_{mse} / \partial \hat y_{ig} = 2 c w_{ig} \delta_{ig}`,
    :math:`\partial L_{mix} / \partial \hat y_{ig} = 2 c p_{ig} m_i`,
    :math:`\partial L_{mix} / \partial z_{ig} = p_{ig} (r_{ig} - \sum_h p_{ih} r_{ih})` with
    :math:`r_{ig} = 2 c \langle m_i, \delta_{ig} \rangle`, and
    :math:`\partial L_{soft} / \partial z_{ig} = k (\pi_{ig} \sum_h q_{ih} - q_{ig})`.
    Per-sample weights :math:`a_i` (``sample``) replace :math:`w_{ig}` by
    :math:`a_i w_{ig}` and :math:`\lVert m_i\rVert^2` by :math:`a_i \lVert m_i\rVert^2`
    (so :math:`m_i` by :math:`a_i m_i` in the mixture gradients).
    The inputs come in the working dtype, ``groups`` in ``[0, G)``; a term whose weight is
    0 is not computed (its output is 0). Only the weighted sum is differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        experts: Tensor,
        target: Tensor,
        groups: Tensor,
        share: Tensor | None,
        soft_table: Tensor,
        adjustment: Tensor | None,
        mse_norm: float | Tensor,
        soft_factor: float,
        weights: tuple[float, float, float],
        sample: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        lambda_mse, lambda_soft, lambda_mix = weights
        diff = experts - target[:, None, :]
        mse = soft = mix = total = experts.new_zeros(())
        weight = p = m = rows = log_prob = None
        if lambda_mse:
            if share is None:
                weight = torch.zeros_like(logits).scatter_(1, groups[:, None], 1.0)
            else:
                weight = share.to(logits.dtype).index_select(0, groups)
            if sample is not None:  # a_i w_ig: the backward below needs nothing else
                weight = weight * sample[:, None]
            mse = torch.dot(weight.view(-1), torch.linalg.vecdot(diff, diff).view(-1)) * mse_norm
            total = mse * lambda_mse
        if lambda_soft:
            shifted = logits if adjustment is None else logits + adjustment.to(logits.dtype)
            log_prob = F.log_softmax(shifted.T, dim=0)  # (G, N), as the soft-label loss
            rows = soft_table.to(logits.dtype).T.index_select(1, groups)
            soft = torch.dot(rows.flatten(), log_prob.flatten()) * -soft_factor
            total = torch.add(total, soft, alpha=lambda_soft)
        if lambda_mix:
            # The softmax over dim 0 of the (G, N) transpose (a fast kernel on the CPU), or
            # from the soft term's log-softmax when the logits are the same.
            if log_prob is not None and adjustment is None:
                p = log_prob.exp().T
            else:
                p = logits.T.softmax(dim=0).T
            m = torch.linalg.vecdot(p[:, :, None], diff, dim=1)  # (N, O)
            weighted = m if sample is None else m * sample[:, None]
            mix = torch.dot(weighted.view(-1), m.view(-1)) * mse_norm
            m = weighted  # dL_mix/dm_i = 2 c a_i m_i: the backward uses a_i m_i
            total = torch.add(total, mix, alpha=lambda_mix)
        ctx.save_for_backward(diff, weight, p, m, rows, log_prob)
        ctx.mse_factor = 2.0 * lambda_mse * mse_norm
        ctx.mix_factor = 2.0 * lambda_mix * mse_norm
        ctx.soft_factor = lambda_soft * soft_factor
        ctx.mark_non_differentiable(mse, soft, mix)
        return total, mse, soft, mix

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad: Tensor, *unused: Tensor
    ) -> tuple[Tensor | None, ...]:
        diff, weight, p, m, rows, log_prob = ctx.saved_tensors
        grad_experts = grad_logits = None
        if weight is not None:
            grad_experts = diff * (weight * (ctx.mse_factor * grad))[:, :, None]
        if p is not None:
            m = m * (ctx.mix_factor * grad)
            from_mix = p[:, :, None] * m[:, None, :]
            grad_experts = from_mix if grad_experts is None else grad_experts.add_(from_mix)
            r = torch.linalg.vecdot(diff, m[:, None, :])  # (N, G)
            grad_logits = p * (r - torch.linalg.vecdot(p, r)[:, None])
        if rows is not None:
            from_soft = (log_prob.exp() * rows.sum(dim=0)).sub_(rows).T
            from_soft = from_soft * (ctx.soft_factor * grad)
            grad_logits = from_soft if grad_logits is None else grad_logits.add_(from_soft)
        grad_target = None
        if ctx.needs_input_grad[2] and grad_experts is not None:
            grad_target = -grad_experts.sum(dim=1)
        return (grad_logits, grad_experts, grad_target) + (None,) * 8
