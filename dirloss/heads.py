"""MultiExpertHead: group logits plus one regression expert per group."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as DF
from ._validation import (
    Float64Buffers,
    check_group_range,
    check_group_targets,
    check_non_negative,
    check_num_groups,
    check_top_k,
    meta_repr,
)

__all__ = ["HeadOutput", "MultiExpertHead"]

class HeadOutput(NamedTuple):
    """What :class:`MultiExpertHead` returns.

    Attributes:
        logits: (N, G) group logits.
        experts: (N, G, out_features) every expert's prediction.
        prediction: (N, out_features) the prediction (see :class:`MultiExpertHead`).
    """

    logits: Tensor
    experts: Tensor
    prediction: Tensor


class MultiExpertHead(Float64Buffers):
    r"""A regression head with a group classifier and one linear expert per group.

    .. math::
        \text{logits} = W_c x + b_c \in \mathbb{R}^G,\qquad
        \hat y_g = \underbrace{W_0 x + b_0}_{\text{base}} + W_g x + b_g
            \in \mathbb{R}^{\text{out}}\ (g = 0..G-1).

    With ``residual=True`` (the default) every expert is a shared *base* plus a
    zero-initialised delta: a fresh head predicts what the base does, and an expert whose
    group has little or no training data stays close to the base instead of returning noise.
    With ``residual=False`` (the paper) the experts are independent linear layers.

    The inference mode is a plain attribute (set it again after loading a ``state_dict``);
    the logit adjustment lives in the ``log_prior`` and ``logit_tau`` buffers and saves
    with the weights.

    Deferred initialisation works as for :class:`torch.nn.Linear`: a head built with
    ``device="meta"`` prints and runs forwards that return meta tensors of the right shapes
    (shape inference); ``head.to_empty(device=...)`` then gives it real storage (the
    logit-adjustment buffers are set as the constructor sets them, "off"), and
    :meth:`reset_parameters` or ``load_state_dict`` fills the weights.

    The prediction is :math:`\hat y_{y}` for the true group ``y`` when ``groups`` is passed
    (training), else :func:`dirloss.functional.combine_experts` of the logits and experts:
    ``inference="soft"`` (the default) mixes the experts by the softmax of the logits,
    ``"argmax"`` (the paper) takes the expert of the most likely group, ``"topk"`` mixes the
    experts of the ``top_k`` most likely groups only (the authors' code: top 3). A post-hoc
    logit adjustment (:meth:`set_logit_adjustment`) moves predictions toward rare groups;
    pick the inference setting on validation data with :func:`dirloss.select_inference`.

    Args:
        in_features: size of the backbone feature.
        num_groups: G.
        out_features: size of each expert's output (1 for scalar regression).
        bias: whether the classifier and experts have biases.
        inference: ``"soft"`` | ``"argmax"`` | ``"topk"``, used when ``groups`` is not given.
        top_k: how many groups ``"topk"`` mixes (a positive int; a plain attribute, like
            ``inference``).
        residual: experts as a shared base plus zero-initialised deltas.
        validate: check that ``groups`` lie in ``[0, G)`` on every device. Indices outside
            it always raise ``ValueError`` for CPU tensors; on other devices the check would
            force a host sync, so without ``validate`` they are clamped into the range
            unchecked. Compiled code (``torch.compile``) runs unchecked.
        device, dtype: as for :class:`torch.nn.Linear`.

    Attributes:
        classifier: the ``Linear(in_features, G)`` of the group logits.
        experts: the ``Linear(in_features, G * out_features)`` of every expert (the deltas
            when ``residual``).
        base: the shared ``Linear(in_features, out_features)``, or ``None``.

    Shape:
        - features: (N, in_features); groups: optional (N,) integers in ``[0, G)``.
        - output: :class:`HeadOutput` of (N, G), (N, G, out_features), (N, out_features).

    Example:
        >>> head = MultiExpertHead(16, num_groups=4)
        >>> out = head(torch.randn(8, 16))
        >>> out.logits.shape, out.experts.shape, out.prediction.shape
        (torch.Size([8, 4]), torch.Size([8, 4, 1]), torch.Size([8, 1]))
    """

    log_prior: Tensor
    logit_tau: Tensor

    _float64_buffers = ("logit_tau",)

    def __init__(
        self,
        in_features: int,
        num_groups: int,
        out_features: int = 1,
        *,
        bias: bool = True,
        inference: str = "soft",
        top_k: int = DF.DEFAULT_TOP_K,
        residual: bool = True,
        validate: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} to be a positive int, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        self.num_groups = check_num_groups(num_groups)
        self.inference = inference
        self.top_k = top_k
        self.residual = bool(residual)
        self.validate = bool(validate)
        factory = {"device": device, "dtype": dtype}
        self.classifier = nn.Linear(in_features, num_groups, bias=bias, **factory)
        self.experts = nn.Linear(in_features, num_groups * out_features, bias=bias, **factory)
        self.base: nn.Linear | None = None
        if self.residual:
            self.base = nn.Linear(in_features, out_features, bias=bias, **factory)
            _zero_(self.experts)
        # Buffers, so that a tuned adjustment saves and loads with the weights.
        self.register_buffer("log_prior", torch.zeros(num_groups, device=device, dtype=dtype))
        # tau stays float64 (like the binner's edges), so it reads back exactly as set.
        self.register_buffer("logit_tau", torch.zeros((), device=device, dtype=torch.float64))

    def reset_parameters(self) -> None:
        """Re-initialise the head as the constructor does (e.g. after ``to_empty``): the
        default :class:`torch.nn.Linear` initialisation of the classifier, the base and the
        experts, the residual deltas at zero, and the logit adjustment off."""
        for linear in (self.classifier, self.experts, self.base):
            if linear is not None:
                linear.reset_parameters()
        if self.base is not None:
            _zero_(self.experts)
        self._init_buffers()

    def _init_buffers(self) -> None:
        with torch.no_grad():
            self.log_prior.zero_()
            self.logit_tau.zero_()

    @property
    def inference(self) -> str:
        """``"soft"`` | ``"argmax"`` | ``"topk"``; checked on assignment."""
        return self._inference

    @inference.setter
    def inference(self, value: str) -> None:
        if value not in DF.INFERENCE_MODES:
            raise ValueError(f"expected inference in {DF.INFERENCE_MODES}, got {value!r}")
        self._inference = value

    @property
    def top_k(self) -> int:
        """How many groups ``inference="topk"`` mixes; checked on assignment."""
        return self._top_k

    @top_k.setter
    def top_k(self, value: int) -> None:
        self._top_k = check_top_k(value)

    @property
    def tau(self) -> float:
        """Strength of the post-hoc logit adjustment (0: off); set by
        :meth:`set_logit_adjustment` (the ``logit_tau`` buffer, read on the host)."""
        return float(self.logit_tau)

    def set_logit_adjustment(self, tau: float, group_counts: Tensor | None = None) -> None:
        r"""Subtract :math:`\tau \log \pi` from the logits at inference (not with ``groups``).

        :math:`\pi` = ``group_counts / group_counts.sum()`` is the training group prior
        (empty groups count as 1), e.g. ``GroupBinner.counts``. ``tau = 1`` gives the
        balanced-error posterior of logit adjustment (Menon et al., ICLR 2021); smaller
        values trade less overall accuracy for the rare groups. ``tau = 0`` turns it off.

        Args:
            tau: >= 0.
            group_counts: (G,) training samples per group; required when ``tau > 0``
                (kept from an earlier call or a loaded ``state_dict`` when omitted).
        """
        tau = check_non_negative("tau", tau)
        if group_counts is not None:
            counts = torch.as_tensor(group_counts).detach().to(torch.float64)
            if counts.shape != (self.num_groups,):
                raise ValueError(
                    f"expected group_counts of shape ({self.num_groups},), "
                    f"got {tuple(counts.shape)}"
                )
            counts = counts.clamp_min(1.0)
            prior = (counts / counts.sum()).log()
            self.log_prior.copy_(prior.to(self.log_prior.device, self.log_prior.dtype))
        elif tau > 0 and not bool(self.log_prior.any()):
            raise ValueError(
                "expected group_counts (e.g. binner.counts) with tau > 0: the head holds no "
                "group prior yet"
            )
        self.logit_tau.fill_(tau)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        num_groups: int,
        *,
        inference: str = "soft",
        top_k: int = DF.DEFAULT_TOP_K,
        residual: bool = True,
    ) -> MultiExpertHead:
        """Retrofit an existing regression layer: every expert starts as a copy of ``linear``.

        With ``residual=True`` the base is the copy and the deltas start at zero; with
        ``residual=False`` each expert is a copy. The group logits start at zero, so before
        any training every inference mode returns the original layer's output (up to the
        summation order of a fused matmul: within an ulp or two, not always bit for bit).

        The zero-initialised classifier has to learn the groups from scratch while the experts
        start trained: when fine-tuning a retrofitted model, give the head a larger learning
        rate than the backbone (the examples use 30x with Adam; at the backbone's rate the
        group accuracy stayed near chance for several epochs in ``examples/retrofit_cnn.py``).

        Args:
            linear: the ``nn.Linear`` regression layer to copy (typed ``nn.Module`` so that
                ``model.fc`` or ``model[-1]`` can be passed as they are; anything else raises
                ``ValueError``).
            num_groups: G.
            inference: ``"soft"`` | ``"argmax"`` | ``"topk"``.
            top_k: how many groups ``"topk"`` mixes.
            residual: experts as the copied base plus zero-initialised deltas.

        Example:
            >>> linear = nn.Linear(16, 1)
            >>> head = MultiExpertHead.from_linear(linear, num_groups=5)
            >>> x = torch.randn(4, 16)
            >>> torch.allclose(head(x).prediction, linear(x))
            True
        """
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"expected an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        head = cls(
            linear.in_features, num_groups, linear.out_features, bias=linear.bias is not None,
            inference=inference, top_k=top_k, residual=residual, device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            _zero_(head.classifier)
            if head.base is not None:
                head.base.load_state_dict(linear.state_dict())
            else:
                head.experts.weight.copy_(weight.repeat(num_groups, 1))
                if linear.bias is not None:
                    head.experts.bias.copy_(linear.bias.repeat(num_groups))
        return head

    def forward(self, features: Tensor, groups: Tensor | None = None) -> HeadOutput:
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"expected features of shape (N, {self.in_features}), got {tuple(features.shape)}"
            )
        logits, experts = self._logits_and_experts(features)
        if groups is not None:
            check_group_targets("groups", groups, features.shape[0])
            check_group_range("groups", groups, self.num_groups, force=self.validate)
            prediction = DF.select_expert(experts, groups)
        else:
            adjustment = self.logit_tau * self.log_prior  # zeros unless set: no host read
            prediction = DF.combine_experts(
                logits, experts, self._inference, top_k=self._top_k, logit_adjustment=adjustment
            )
        return HeadOutput(logits, experts, prediction)

    def _logits_and_experts(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The classifier and every expert in one matmul (one autograd node instead of
        three, and the input's gradient from one matmul): the base is folded into the
        expert weights (``W_g + W_0``), and the classifier's rows are stacked on top."""
        g, o = self.num_groups, self.out_features
        weight: Tensor = self.experts.weight
        bias: Tensor | None = self.experts.bias
        if self.base is not None:
            weight = (weight.view(g, o, -1) + self.base.weight).view(g * o, -1)
            if bias is not None and self.base.bias is not None:
                bias = (bias.view(g, o) + self.base.bias).view(g * o)
        weight = torch.cat([self.classifier.weight, weight])
        if bias is not None and self.classifier.bias is not None:
            bias = torch.cat([self.classifier.bias, bias])
        logits, experts = F.linear(features, weight, bias).split([g, g * o], dim=1)
        return logits.contiguous(), experts.contiguous().unflatten(1, (g, o))

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # dirloss 0.1 checkpoints hold no logit adjustment: load them with it off.
        state_dict.setdefault(prefix + "log_prior", torch.zeros_like(self.log_prior))
        state_dict.setdefault(prefix + "logit_tau", torch.zeros_like(self.logit_tau))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_groups={self.num_groups}, "
            f"out_features={self.out_features}, inference={self.inference!r}, "
            + (f"top_k={self.top_k}, " if self.inference == "topk" else "")
            + f"residual={self.residual}, tau={meta_repr(self.logit_tau)}"
        )


def _zero_(linear: nn.Linear) -> None:
    with torch.no_grad():
        nn.init.zeros_(linear.weight)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
