"""Loss modules: descending soft labels (L_soft) and the group contrastive loss (L_grc)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from . import _contrastive
from . import functional as DF
from ._validation import (
    Float64Buffers,
    check_group_range,
    check_non_negative,
    check_reduction,
    meta_repr,
)
from .distributed import gather_batch, is_distributed

__all__ = ["DescendingSoftLabelLoss", "GroupContrastiveLoss"]


class DescendingSoftLabelLoss(Float64Buffers):
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
            ``GroupBinner.counts``), for logit adjustment; required when ``tau > 0``.
        tau: logit adjustment strength; while training, ``tau * log(prior)`` is added to the
            logits, with ``prior = counts / counts.sum()`` (empty groups counted as 1). Off
            (0) by default. ``tau`` is the float64 ``logit_tau`` buffer and the adjustment the
            ``logit_adjustment`` buffer (zeros when off): both save and load together, so
            after ``load_state_dict`` the module has the saved ``tau``, whatever it was
            built with.
        validate: check that the target groups lie in ``[0, G)`` on every device. Indices
            outside it always raise ``ValueError`` for CPU tensors; on other devices the
            check would force a host sync, so it runs only with ``validate=True``.

    Shape:
        - input: (N, G) group logits; target: (N,) integer groups in ``[0, G)``.
        - group_counts (optional, in ``forward``): (G,) counts that replace the stored ones
          for this call (what :class:`~dirloss.GroupDIRLoss` passes: its binner's current
          counts, so a refitted binner is followed).
        - output: scalar, or (N,) for ``reduction="none"``.

    Example:
        >>> loss_fn = DescendingSoftLabelLoss(5)
        >>> loss_fn(torch.randn(8, 5), torch.randint(0, 5, (8,))).shape
        torch.Size([])
    """

    table: Tensor
    logit_tau: Tensor
    logit_adjustment: Tensor

    _float64_buffers = ("logit_tau",)

    def __init__(
        self,
        num_groups: int,
        *,
        scale: float = 1.0,
        step: int = 1,
        reduction: str = "mean",
        group_counts: Tensor | None = None,
        tau: float = 0.0,
        validate: bool = False,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.num_groups, self.scale, self.step, self.reduction = num_groups, scale, step, reduction
        self.validate = bool(validate)
        tau = check_non_negative("tau", tau)
        if tau > 0 and group_counts is None:
            raise ValueError(
                f"expected group_counts (e.g. binner.counts) with tau > 0, got None with "
                f"tau={tau!r}: the logit adjustment needs the training group prior"
            )
        self.register_buffer(
            "table", DF.descending_soft_label_table(num_groups, scale=scale, step=step)
        )
        self.register_buffer("logit_tau", torch.tensor(tau, dtype=torch.float64))
        adjustment = torch.zeros(num_groups)
        if group_counts is not None and tau > 0:
            adjustment = tau * self._log_prior(torch.as_tensor(group_counts))
        self.register_buffer("logit_adjustment", adjustment)
        self._adjusting = tau > 0  # a host copy of ``logit_tau > 0``, so forward reads none
        # What to_empty() refills the buffers with after a build on meta (_init_buffers):
        # a host copy of the adjustment, made from the counts themselves (under
        # ``torch.device("meta")`` the buffer above is meta even for CPU counts); from counts
        # on meta it is unknown, NaN until load_state_dict.
        self._initial_tau = tau
        self._initial_adjustment: Tensor | None = torch.zeros(num_groups, device="cpu")
        if group_counts is not None and tau > 0:
            counts = group_counts
            if not isinstance(counts, Tensor):
                counts = torch.as_tensor(counts, device="cpu")
            self._initial_adjustment = (
                None if counts.is_meta else tau * self._log_prior(counts.detach().cpu())
            )

    def _init_buffers(self) -> None:
        table = DF.descending_soft_label_table(self.num_groups, scale=self.scale, step=self.step)
        self.table.copy_(table)
        self.logit_tau.fill_(self._initial_tau)
        if self._initial_adjustment is None:
            self.logit_adjustment.fill_(float("nan"))
        else:
            self.logit_adjustment.copy_(self._initial_adjustment)
        self._adjusting = self._initial_tau > 0

    @property
    def tau(self) -> float:
        """Logit adjustment strength (the ``logit_tau`` buffer, read on the host)."""
        return float(self.logit_tau)

    def _log_prior(self, counts: Tensor) -> Tensor:
        if counts.shape != (self.num_groups,):
            raise ValueError(
                f"expected group_counts of shape ({self.num_groups},), got {tuple(counts.shape)}"
            )
        counts = counts.detach().to(torch.float32).clamp_min(1.0)
        return (counts / counts.sum()).log()

    def forward(
        self, input: Tensor, target: Tensor, *, group_counts: Tensor | None = None
    ) -> Tensor:
        if self.validate:
            check_group_range("target", target, self.num_groups, force=True)
        return DF.descending_soft_label_loss(
            input, target, logit_adjustment=self._adjustment(group_counts),
            reduction=self.reduction, table=self.table,
        )

    def _adjustment(self, group_counts: Tensor | None = None) -> Tensor | None:
        """The logit adjustment of this call: None unless training with ``tau > 0``; from
        ``group_counts`` when given (live counts: no host read of tau)."""
        if not (self.training and self._adjusting):
            return None
        if group_counts is None:
            return self.logit_adjustment
        return self.logit_tau.to(torch.float32) * self._log_prior(group_counts)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if prefix + "logit_tau" not in state_dict:  # a dirloss 0.1 checkpoint
            adjustment = state_dict.get(prefix + "logit_adjustment")
            tau = 0.0 if adjustment is None else _tau_of_adjustment(adjustment)
            state_dict[prefix + "logit_tau"] = torch.tensor(tau, dtype=torch.float64)
            state_dict.setdefault(
                prefix + "logit_adjustment", torch.zeros_like(self.logit_adjustment)
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.logit_tau.is_meta:  # loading into meta is a no-op (without assign=True)
            self._adjusting = bool(self.logit_tau > 0)

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, scale={self.scale}, step={self.step}, "
            f"reduction={self.reduction!r}, tau={meta_repr(self.logit_tau)}"
        )


def _tau_of_adjustment(adjustment: Tensor) -> float:
    """The ``tau`` of a saved ``tau * log(prior)``: the one root of ``logsumexp(a / tau) = 0``
    (the prior sums to one; the left side increases with tau), found by bisection."""
    a = adjustment.detach().to("cpu", torch.float64)
    low, high = 1e-12, 1e12
    for _ in range(200):
        mid = math.sqrt(low * high)
        if float(torch.logsumexp(a / mid, 0)) < 0:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high)


class GroupContrastiveLoss(nn.Module):
    r"""Group-aware ordinal contrastive loss on backbone features (L_grc).

    See :func:`dirloss.functional.group_contrastive_loss` for the math and the two kernels.

    Args:
        num_groups: G, for integer group labels in ``[0, G)``: the fused group kernel
            with no host sync (:class:`~dirloss.GroupDIRLoss` passes its binner's). Without
            it, integer labels still take the fused kernel, with G inferred from each batch
            at the cost of one host read (under ``torch.compile``, or for labels spanning
            more than ``max(128, 8 sqrt(N))`` values, the continuous kernel: the same
            loss), and float
            labels are real values (Rank-N-Contrast), even when they hold whole numbers.
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
        validate: check that integer group labels lie in ``[0, num_groups)`` on every
            device. Labels outside it always raise ``ValueError`` for CPU tensors; on other
            devices the check would force a host sync, so without ``validate`` they are
            clamped into the range unchecked.
        normalize: L2-normalise the features (default). ``False`` contrasts the raw
            features, as the official Rank-N-Contrast code does (``"l2"`` only; official
            trains with ``temperature=2``, our default stays the one for normalised
            features); see :func:`dirloss.functional.group_contrastive_loss`.
        view_dim: the dimension of the features holding V augmented views of each sample,
            ``1`` for (N, V, D) (the official Rank-N-Contrast call) or ``0`` for (V, N, D);
            None (default): (N, D). The N V views are the samples, each with its sample's
            label.

    Shape:
        - features: (N, D), or (N, V, D) / (V, N, D) with ``view_dim``; labels: (N,) or
          (N, 1) (or (N, L) real labels).
        - output: scalar, or (N,) ((N, V) / (V, N) with views) for ``reduction="none"``.

    Example:
        >>> loss_fn = GroupContrastiveLoss(3)  # or GroupContrastiveLoss(num_groups=3)
        >>> loss_fn(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])).shape
        torch.Size([])
    """

    def __init__(
        self,
        num_groups: int | None = None,
        *,
        temperature: float = DF.DEFAULT_TEMPERATURE,
        similarity: str = "l2",
        gather_distributed: bool = False,
        reduction: str = "mean",
        chunk_size: int | None = None,
        validate: bool = False,
        normalize: bool = True,
        view_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        # Validate the hyper-parameters now rather than at the first forward.
        _contrastive.check_inputs(
            torch.zeros((1, 1) if view_dim is None else (1, 1, 1)),
            torch.zeros(1, dtype=torch.long), num_groups, temperature, similarity,
            chunk_size, normalize, view_dim,
        )
        self.num_groups, self.temperature, self.similarity = num_groups, temperature, similarity
        self.gather_distributed, self.reduction = gather_distributed, reduction
        self.chunk_size, self.validate, self.normalize = chunk_size, bool(validate), normalize
        self.view_dim = view_dim

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        if self.validate and self.num_groups is not None and _contrastive.uses_group_kernel(
            labels, self.num_groups
        ):
            check_group_range("labels", labels, self.num_groups, force=True)
        if not (self.gather_distributed and is_distributed()):
            return DF.group_contrastive_loss(
                features, labels, num_groups=self.num_groups, temperature=self.temperature,
                similarity=self.similarity, reduction=self.reduction, chunk_size=self.chunk_size,
                normalize=self.normalize, view_dim=self.view_dim,
            )
        # Check the local batch first: a bad one must fail here, not leave the other ranks
        # waiting in the collective.
        _contrastive.check_inputs(
            features, labels, self.num_groups, self.temperature, self.similarity,
            self.chunk_size, self.normalize, self.view_dim,
        )
        x, y = _contrastive.flatten_views(features, labels, self.view_dim)
        all_features, all_labels, offset = gather_batch(x, y)
        # Without num_groups, G is inferred from the gathered (global) labels: every rank
        # sees the same batch, so every rank infers the same G.
        out = _contrastive.loss(
            all_features, all_labels, self.num_groups, self.similarity, self.temperature,
            self.chunk_size, self.reduction, offset=offset, n_anchors=x.shape[0],
            normalize=self.normalize,
        )
        return _contrastive.unflatten_views(out, labels.shape[0], self.view_dim)

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, temperature={self.temperature}, "
            f"similarity={self.similarity!r}, gather_distributed={self.gather_distributed}, "
            f"reduction={self.reduction!r}, normalize={self.normalize}, "
            f"view_dim={self.view_dim}"
        )
