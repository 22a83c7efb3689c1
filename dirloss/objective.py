"""GroupDIRLoss: the combined Group-DIR objective L_grc + lambda_mse L_mse + lambda_soft L_soft."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as DF
from ._validation import check_group_targets, check_non_negative, check_same_device
from .binning import GroupBinner
from .heads import HeadOutput, select_expert
from .losses import DescendingSoftLabelLoss, GroupContrastiveLoss

__all__ = ["GroupDIRLoss", "GroupDIRLossOutput"]


class GroupDIRLossOutput(NamedTuple):
    """What :class:`GroupDIRLoss` returns: the total to back-propagate and its parts.

    Attributes:
        loss: scalar total, attached to the graph.
        grc, mse, soft: the unweighted terms, detached (0 for a skipped term).
    """

    loss: Tensor
    grc: Tensor
    mse: Tensor
    soft: Tensor


class GroupDIRLoss(nn.Module):
    r"""The Group-DIR training objective (Pu et al., AAAI 2025).

    .. math::
        \mathcal{L} = \lambda_{grc}\,\mathcal{L}_{grc}(f, g)
            + \lambda_{mse}\,\frac{1}{N O}\sum_i \lVert \hat y_{i, g_i} - y_i \rVert^2
            + \lambda_{soft}\,\mathcal{L}_{soft}(\text{logits}, g),
        \qquad g = \text{binner}(y),

    where :math:`\hat y_{i, g_i}` is the expert of sample ``i``'s true group (taken from
    ``output.experts``, whatever ``prediction`` holds), ``O`` is ``out_features`` (the MSE
    is a mean over all N x O entries), :math:`\mathcal{L}_{soft}` is
    :class:`DescendingSoftLabelLoss` and :math:`\mathcal{L}_{grc}` is
    :class:`GroupContrastiveLoss` on the backbone features. Every term is a batch mean, so the
    lambdas do not depend on the batch size. A weight of 0 skips its term's computation.

    Args:
        binner: a fitted :class:`GroupBinner` (a submodule: it moves and saves with the loss).
        temperature, similarity, gather_distributed, chunk_size: of the contrastive term
            (see :class:`GroupContrastiveLoss`).
        lambda_grc, lambda_mse, lambda_soft: term weights (>= 0).
        scale, step, tau: of the soft-label term (``tau`` > 0 turns on logit adjustment with
            the binner's group counts).
        validate: check that targets are finite and raise with the count of bad entries. This
            forces a host sync, so it is off by default; without it a NaN target makes the
            MSE term (and so the loss) NaN, and lands in the last group.

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

    def __init__(
        self,
        binner: GroupBinner,
        *,
        temperature: float = DF.DEFAULT_TEMPERATURE,
        similarity: str = "l2",
        lambda_grc: float = 1.0,
        lambda_mse: float = 1.0,
        lambda_soft: float = 1.0,
        scale: float = 1.0,
        step: int = 1,
        tau: float = 0.0,
        gather_distributed: bool = False,
        chunk_size: Optional[int] = None,
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
        if not (self.lambda_grc or self.lambda_mse or self.lambda_soft):
            raise ValueError(
                "expected at least one of lambda_grc, lambda_mse, lambda_soft to be > 0, got all 0"
            )
        self.validate = validate
        self.contrastive = GroupContrastiveLoss(
            num_groups=binner.num_groups, temperature=temperature, similarity=similarity,
            gather_distributed=gather_distributed, chunk_size=chunk_size,
        )
        self.soft_label = DescendingSoftLabelLoss(
            binner.num_groups, scale=scale, step=step, group_counts=binner.counts, tau=tau
        )

    def forward(
        self, output: HeadOutput, features: Tensor, target: Tensor, groups: Optional[Tensor] = None
    ) -> GroupDIRLossOutput:
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
        zero = experts.new_zeros(())
        grc = mse = soft = zero
        if self.lambda_grc:
            grc = self.contrastive(features, groups)
        if self.lambda_mse:
            pred = select_expert(experts, groups)
            work = torch.promote_types(pred.dtype, torch.float32)  # fp32 under autocast
            # A sum over max(count, 1): the mean, and 0 rather than NaN for an empty batch.
            squared = F.mse_loss(pred.to(work), target.to(work), reduction="sum")
            mse = squared / max(pred.numel(), 1)
        if self.lambda_soft:
            soft = self.soft_label(output.logits, groups)
        loss = self.lambda_grc * grc + self.lambda_mse * mse + self.lambda_soft * soft
        return GroupDIRLossOutput(loss, grc.detach(), mse.detach(), soft.detach())

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
        if self.validate:
            bad = int((~torch.isfinite(target)).sum())
            if bad:
                raise ValueError(f"expected finite targets, got {bad} NaN/inf of {target.numel()}")
        return target

    def extra_repr(self) -> str:
        return (
            f"lambda_grc={self.lambda_grc}, lambda_mse={self.lambda_mse}, "
            f"lambda_soft={self.lambda_soft}, validate={self.validate}"
        )
