"""MultiExpertHead: group logits plus one regression expert per group."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from ._validation import check_group_targets, check_num_groups

__all__ = ["HeadOutput", "MultiExpertHead"]

_INFERENCE = ("argmax", "soft")


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


class MultiExpertHead(nn.Module):
    r"""A regression head with a group classifier and one linear expert per group.

    .. math::
        \text{logits} = W_c x + b_c \in \mathbb{R}^G,\qquad
        \hat y_g = W_g x + b_g \in \mathbb{R}^{\text{out}}\ (g = 0..G-1).

    The prediction is :math:`\hat y_{y}` for the true group ``y`` when ``groups`` is passed
    (training: each expert learns its own label range), else :math:`\hat y_{\arg\max}` of
    the logits (``inference="argmax"``) or :math:`\sum_g \operatorname{softmax}(\text{logits})_g
    \hat y_g` (``inference="soft"``, smoother at group borders).

    Args:
        in_features: size of the backbone feature.
        num_groups: G.
        out_features: size of each expert's output (1 for scalar regression).
        bias: whether the classifier and experts have biases.
        inference: ``"argmax"`` | ``"soft"``, used when ``groups`` is not given.
        device, dtype: as for :class:`torch.nn.Linear`.

    Shape:
        - features: (N, in_features); groups: optional (N,) integers in ``[0, G)``.
        - output: :class:`HeadOutput` of (N, G), (N, G, out_features), (N, out_features).

    Example:
        >>> head = MultiExpertHead(16, num_groups=4)
        >>> out = head(torch.randn(8, 16))
        >>> out.logits.shape, out.experts.shape, out.prediction.shape
        (torch.Size([8, 4]), torch.Size([8, 4, 1]), torch.Size([8, 1]))
    """

    def __init__(
        self,
        in_features: int,
        num_groups: int,
        out_features: int = 1,
        *,
        bias: bool = True,
        inference: str = "argmax",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} to be a positive int, got {value!r}")
        if inference not in _INFERENCE:
            raise ValueError(f"expected inference in {_INFERENCE}, got {inference!r}")
        self.in_features, self.out_features = in_features, out_features
        self.num_groups = check_num_groups(num_groups)
        self.inference = inference
        factory = {"device": device, "dtype": dtype}
        self.classifier = nn.Linear(in_features, num_groups, bias=bias, **factory)
        self.experts = nn.Linear(in_features, num_groups * out_features, bias=bias, **factory)

    @classmethod
    def from_linear(
        cls, linear: nn.Module, num_groups: int, *, inference: str = "argmax"
    ) -> "MultiExpertHead":
        """Retrofit an existing regression layer: every expert starts as a copy of ``linear``.

        The group logits start at zero, so before any training every inference mode returns
        the original layer's output (argmax picks expert 0, the soft mixture averages
        identical experts). It is equal up to the summation order of the fused matmul that
        computes all experts at once: within an ulp or two, not always bit for bit.

        The zero-initialised classifier has to learn the groups from scratch while the experts
        start trained: when fine-tuning a retrofitted model, give the head a larger learning
        rate than the backbone (the examples use 30x with Adam; at the backbone's rate the
        group accuracy stayed near chance for several epochs in ``examples/retrofit_cnn.py``).

        Args:
            linear: the ``nn.Linear`` regression layer to copy (typed ``nn.Module`` so that
                ``model.fc`` or ``model[-1]`` can be passed as they are; anything else raises
                ``ValueError``).
            num_groups: G.
            inference: ``"argmax"`` | ``"soft"``.

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
            inference=inference, device=weight.device, dtype=weight.dtype,
        )
        with torch.no_grad():
            head.experts.weight.copy_(weight.repeat(num_groups, 1))
            nn.init.zeros_(head.classifier.weight)
            if linear.bias is not None:
                head.experts.bias.copy_(linear.bias.repeat(num_groups))
                nn.init.zeros_(head.classifier.bias)
        return head

    def forward(self, features: Tensor, groups: Optional[Tensor] = None) -> HeadOutput:
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"expected features of shape (N, {self.in_features}), got {tuple(features.shape)}"
            )
        logits = self.classifier(features)
        experts = self.experts(features).unflatten(1, (self.num_groups, self.out_features))
        if groups is not None:
            check_group_targets("groups", groups, features.shape[0])
            prediction = select_expert(experts, groups)
        elif self.inference == "soft":
            weights = logits.softmax(dim=1).to(experts.dtype)
            prediction = torch.einsum("ng,ngo->no", weights, experts)
        else:
            prediction = select_expert(experts, logits.argmax(dim=1))
        return HeadOutput(logits, experts, prediction)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_groups={self.num_groups}, "
            f"out_features={self.out_features}, inference={self.inference!r}"
        )


def select_expert(experts: Tensor, groups: Tensor) -> Tensor:
    """Row ``i`` of the result is ``experts[i, groups[i]]``: (N, G, O), (N,) -> (N, O)."""
    index = groups.long().clamp(0, experts.shape[1] - 1).view(-1, 1, 1)
    index = index.expand(-1, 1, experts.shape[2])
    return experts.gather(1, index).squeeze(1)
