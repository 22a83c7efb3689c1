"""Loss modules: descending soft labels (L_soft) and the group contrastive loss (L_grc)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import functional as DF
from ._validation import check_non_negative, check_reduction, reduce
from .distributed import gather_batch, is_distributed

__all__ = ["DescendingSoftLabelLoss", "GroupContrastiveLoss"]


class DescendingSoftLabelLoss(nn.Module):
    r"""Cross-entropy of group logits against soft labels that descend from the true group.

    See :func:`dirloss.functional.descending_soft_label_loss` for the math. The (G, G) table
    of soft labels is computed once into a buffer; a batch is one ``index_select``.

    Args:
        num_groups: G.
        scale, step: see :func:`dirloss.functional.descending_soft_label_table`; checked
            here so that the labels always peak at the true group.
        reduction: ``"mean"`` (default; the research code summed over the batch, so its
            weight grew with the batch size: ``"sum"`` reproduces it) | ``"sum"`` | ``"none"``.
        group_counts: optional (G,) training samples per group (e.g.
            ``GroupBinner.counts``), for logit adjustment.
        tau: logit adjustment strength; while training, ``tau * log(prior)`` is added to the
            logits, with ``prior = counts / counts.sum()`` (empty groups counted as 1). Off
            (0) by default.

    Shape:
        - input: (N, G) group logits; target: (N,) integer groups in ``[0, G)``.
        - output: scalar, or (N,) for ``reduction="none"``.

    Example:
        >>> loss_fn = DescendingSoftLabelLoss(5)
        >>> loss_fn(torch.randn(8, 5), torch.randint(0, 5, (8,))).shape
        torch.Size([])
    """

    table: Tensor
    logit_adjustment: Optional[Tensor]

    def __init__(
        self,
        num_groups: int,
        *,
        scale: float = 1.0,
        step: int = 1,
        reduction: str = "mean",
        group_counts: Optional[Tensor] = None,
        tau: float = 0.0,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.num_groups, self.scale, self.step, self.reduction = num_groups, scale, step, reduction
        self.tau = check_non_negative("tau", tau)
        self.register_buffer(
            "table", DF.descending_soft_label_table(num_groups, scale=scale, step=step)
        )
        self.register_buffer("logit_adjustment", self._adjustment(group_counts))

    def _adjustment(self, group_counts: Optional[Tensor]) -> Optional[Tensor]:
        if group_counts is None or self.tau == 0.0:
            return None
        counts = torch.as_tensor(group_counts, dtype=torch.float32)
        if counts.shape != (self.num_groups,):
            raise ValueError(
                f"expected group_counts of shape ({self.num_groups},), got {tuple(counts.shape)}"
            )
        counts = counts.clamp_min(1.0)
        return self.tau * (counts / counts.sum()).log()

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        adjustment = self.logit_adjustment if self.training else None
        return DF.descending_soft_label_loss(
            input, target, logit_adjustment=adjustment, reduction=self.reduction, table=self.table
        )

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, scale={self.scale}, step={self.step}, "
            f"reduction={self.reduction!r}, tau={self.tau}"
        )


class GroupContrastiveLoss(nn.Module):
    r"""Group-aware ordinal contrastive loss on backbone features (L_grc).

    See :func:`dirloss.functional.group_contrastive_loss` for the math and the two kernels.

    Args:
        num_groups: G, for integer group labels (enables the fused group kernel).
            Without it, labels are treated as real values (Rank-N-Contrast).
        temperature: T > 0 (default :data:`dirloss.functional.DEFAULT_TEMPERATURE`).
        similarity: ``"l2"`` (negative Euclidean distance of normalised features) or
            ``"cosine"``.
        gather_distributed: when ``torch.distributed`` runs with more than one process,
            contrast each local anchor against the whole global batch (features gathered
            with gradients, unequal local batch sizes allowed). Without an initialised
            process group it behaves as if unset.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the (local) anchors. Under DDP
            with unequal local batch sizes, ``"mean"`` weights the ranks unequally; for the
            exact global mean use ``"sum"`` divided by the global batch size (times the world
            size, to undo DDP's gradient averaging).
        chunk_size: anchors per block of the fused kernel (peak memory O(chunk_size * N));
            integer group labels only.

    Shape:
        - features: (N, D); labels: (N,) or (N, 1) (or (N, L) real labels).
        - output: scalar, or (N,) for ``reduction="none"``.

    Example:
        >>> loss_fn = GroupContrastiveLoss(num_groups=3)
        >>> loss_fn(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        num_groups: Optional[int] = None,
        temperature: float = DF.DEFAULT_TEMPERATURE,
        similarity: str = "l2",
        gather_distributed: bool = False,
        reduction: str = "mean",
        chunk_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        # Validate the hyper-parameters now rather than at the first forward.
        DF._check_contrastive_inputs(
            torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), num_groups, temperature,
            similarity, chunk_size,
        )
        self.num_groups, self.temperature, self.similarity = num_groups, temperature, similarity
        self.gather_distributed, self.reduction = gather_distributed, reduction
        self.chunk_size = chunk_size

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        if not (self.gather_distributed and is_distributed()):
            return DF.group_contrastive_loss(
                features, labels, num_groups=self.num_groups, temperature=self.temperature,
                similarity=self.similarity, reduction=self.reduction, chunk_size=self.chunk_size,
            )
        # Check the local batch first: a bad one must fail here, not leave the other ranks
        # waiting in the collective.
        DF._check_contrastive_inputs(
            features, labels, self.num_groups, self.temperature, self.similarity, self.chunk_size
        )
        all_features, all_labels, offset = gather_batch(features, labels)
        x_c, y_c, num_groups = DF._prepare_contrastive(all_features, all_labels, self.num_groups)
        n = features.shape[0]
        per_anchor = DF._contrast_means(
            x_c, y_c, offset, n, num_groups, self.similarity, self.temperature, self.chunk_size
        )
        return reduce(per_anchor, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, temperature={self.temperature}, "
            f"similarity={self.similarity!r}, gather_distributed={self.gather_distributed}, "
            f"reduction={self.reduction!r}"
        )
