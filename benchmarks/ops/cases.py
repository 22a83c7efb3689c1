"""The measured cases of the ops benchmark: :class:`Case` names one, :func:`make_step`
builds the step it times (forward + backward of one op, or one optimiser step). The newer
losses' cases (issue 17) are built in :mod:`.field_cases`.

Every step works on fresh random inputs drawn from fixed seeds, so two processes (the timing
run and a memory subprocess) measure the same thing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.ops.field_cases import FIELD_OPS, field_step
from benchmarks.reference_ops import rnc_column_loop, soft_label_loop
from dirloss import DescendingSoftLabelLoss, GroupBinner, GroupDIRLoss, MultiExpertHead
from dirloss.functional import DEFAULT_TEMPERATURE, group_contrastive_loss

__all__ = [
    "NUM_GROUPS",
    "OPS",
    "Case",
    "SmallResNet",
    "contrastive_step",
    "distance_floor",
    "head_step",
    "make_step",
    "soft_label_step",
    "span_step",
    "train_step",
]

NUM_GROUPS = 10
OPS = ("contrastive", "span", "soft_label", "head", "train_step", *FIELD_OPS)

Step = Callable[[], None]
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured configuration.

    Attributes:
        op: ``"contrastive"``, ``"span"``, ``"soft_label"``, ``"head"``, ``"train_step"``,
            or one of the newer losses' :data:`~.field_cases.FIELD_OPS`.
        impl: the variant (``"dirloss"``, ``"floor"``, ``"rnc-loop"``, ``"official-loop"``,
            ``"+compile"`` suffixes, ...; see each step builder).
        device: ``"cpu"`` or ``"cuda"``.
        n, d: batch size and feature width (ops that have them).
        span: the labels' span (``"span"`` op).
        model: ``"mlp"`` or ``"cnn"`` (``"train_step"`` op).
        chunk: ``chunk_size`` of the contrastive loss (0: none).
        memory_only: measure peak memory only (too large to time).
    """

    op: str
    impl: str
    device: str
    n: int | None = None
    d: int | None = None
    span: int | None = None
    model: str | None = None
    chunk: int = 0
    memory_only: bool = False

    def to_json(self) -> dict[str, Any]:
        """The row's case keys as the JSON file holds them (fields that do not apply left
        out)."""
        out: dict[str, Any] = {"op": self.op, "impl": self.impl}
        for key in ("n", "d", "span", "model"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["device"] = self.device
        if self.chunk:
            out["chunk"] = self.chunk
        if self.memory_only:
            out["memory_only"] = True
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Case:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def distance_floor(features: Tensor) -> Tensor:
    """The least any pairwise loss of the features costs: normalise + the N x N distance
    matrix (its backward included when it is differentiated)."""
    z = F.normalize(features, dim=1)
    return (2 - 2 * z @ z.T).clamp_min(torch.finfo(z.dtype).eps).sqrt()


def contrastive_step(impl: str, n: int, d: int, device: str, chunk: int = 0) -> Step:
    """Forward + backward of one contrastive variant on fresh random features.

    ``dirloss`` passes ``num_groups``; ``dirloss-default`` is the call users write first,
    ``group_contrastive_loss(features, groups)`` on the same integer groups (G inferred from
    the batch, one host read); ``continuous`` gives real-valued labels (uniform, no ties):
    the sort kernel of Rank-N-Contrast-style use.
    """
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    groups = torch.randint(0, NUM_GROUPS, (n,), generator=gen).to(device)
    real_labels = torch.rand(n, generator=gen).to(device)

    def floor() -> Tensor:
        return distance_floor(features).sum()

    def ours() -> Tensor:
        return group_contrastive_loss(
            features, groups, num_groups=NUM_GROUPS, chunk_size=chunk or None
        )

    def default() -> Tensor:
        return group_contrastive_loss(features, groups)

    def continuous() -> Tensor:
        return group_contrastive_loss(features, real_labels)

    def loop() -> Tensor:
        return rnc_column_loop(features, groups, DEFAULT_TEMPERATURE)

    fn = {"floor": floor, "dirloss": ours, "dirloss-default": default, "continuous": continuous,
          "rnc-loop": loop}[impl.replace("+compile", "")]
    if impl.endswith("+compile"):
        fn = torch.compile(fn, fullgraph=True)

    def step() -> None:
        features.grad = None
        fn().backward()

    return step


def span_step(impl: str, n: int, d: int, span: int, device: str) -> Step:
    """Integer labels spanning ``span`` values, through the fused kernel (``grouped``,
    G = span) or the continuous one (the same values as floats): where the default call's
    cutoff for inferring G (``_MAX_INFERRED_GROUPS``) belongs."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    labels = torch.randint(0, span, (n,), generator=gen).to(device)
    reals = labels.float()

    def step() -> None:
        features.grad = None
        if impl == "grouped":
            group_contrastive_loss(features, labels, num_groups=span).backward()
        else:
            group_contrastive_loss(features, reals).backward()

    return step


def soft_label_step(impl: str, n: int, device: str) -> Step:
    """Forward + backward of the soft-label loss: ``dirloss``, the per-sample ``loop`` of the
    research code, or the ``floor`` (one op of the logits and its backward)."""
    logits = torch.randn(n, NUM_GROUPS, device=device, requires_grad=True)
    groups = torch.randint(0, NUM_GROUPS, (n,), device=device)
    module = DescendingSoftLabelLoss(NUM_GROUPS).to(device)

    def loss() -> Tensor:
        if impl == "dirloss":
            return module(logits, groups)
        if impl == "floor":  # the least any loss of the logits costs: one op and its backward
            return logits.sum()
        return soft_label_loop(logits, groups, NUM_GROUPS)

    def step() -> None:
        logits.grad = None
        loss().backward()

    return step


def head_step(impl: str, n: int, d: int, device: str) -> Step:
    """Forward + backward of a ``linear`` head or the ``multi-expert`` head."""
    features = torch.randn(n, d, device=device, requires_grad=True)
    groups = torch.randint(0, NUM_GROUPS, (n,), device=device)
    linear = nn.Linear(d, 1).to(device)
    head = MultiExpertHead(d, NUM_GROUPS).to(device)

    def step() -> None:
        features.grad = None
        out = linear(features) if impl == "linear" else head(features, groups).prediction
        out.sum().backward()

    return step


class SmallResNet(nn.Module):
    """A small ResNet-style image regressor: stem, three residual stages, pooled 128-d
    feature."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.stages = nn.ModuleList(
            [self._block(32, 32), self._block(32, 64), self._block(64, 128)]
        )
        self.skips = nn.ModuleList(
            [nn.Identity(), nn.Conv2d(32, 64, 1, 2), nn.Conv2d(64, 128, 1, 2)]
        )

    @staticmethod
    def _block(cin: int, cout: int) -> nn.Sequential:
        stride = 1 if cin == cout else 2
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block, skip in zip(self.stages, self.skips):
            x = F.relu(block(x) + skip(x))
        return x.mean(dim=(2, 3))


def train_step(impl: str, model: str, device: str) -> Step:
    """One optimiser step: MSE + Linear head, or the full Group-DIR objective + experts.

    Two more variants say what bounds the Group-DIR step: ``mse+floor`` adds to the MSE
    step the least any contrastive term on the features costs (the floor: normalise + the
    N x N distance matrix and its backward), ``group-dir-no-grc`` is the full objective
    with ``lambda_grc=0`` (head and head terms only)."""
    torch.manual_seed(0)
    batch = 256
    if model == "cnn":
        backbone: nn.Module = SmallResNet()
        x, width = torch.randn(batch, 1, 64, 64), 128
    else:
        backbone = nn.Sequential(nn.Linear(384, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        x, width = torch.randn(batch, 384), 128
    y = torch.rand(batch)
    binner = GroupBinner(NUM_GROUPS, low=0.0, high=1.0).fit(y)
    group_dir = impl.startswith("group-dir")
    head: nn.Module = MultiExpertHead(width, NUM_GROUPS) if group_dir else nn.Linear(width, 1)
    criterion = GroupDIRLoss(binner, lambda_grc=0.0 if "no-grc" in impl else 0.1)
    backbone, head, criterion = backbone.to(device), head.to(device), criterion.to(device)
    x, y = x.to(device), y.to(device)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-3)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        features = backbone(x)
        if group_dir:
            return criterion(head(features, binner(y)), features, y).loss
        mse = F.mse_loss(head(features)[:, 0], y)
        if impl.startswith("mse+floor"):
            return mse + 0.1 * distance_floor(features).mean()
        return mse

    if impl.endswith("+compile"):
        loss_fn = torch.compile(loss_fn, fullgraph=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        optimizer.step()

    return step


def _need(value: T | None, what: str, case: Case) -> T:
    if value is None:
        raise ValueError(f"expected {what} in a {case.op!r} case, got {case}")
    return value


def make_step(case: Case) -> Step:
    """The step that ``case`` times."""
    if case.op == "contrastive":
        return contrastive_step(case.impl, _need(case.n, "n", case), _need(case.d, "d", case),
                                case.device, case.chunk)
    if case.op == "span":
        return span_step(case.impl, _need(case.n, "n", case), _need(case.d, "d", case),
                         _need(case.span, "span", case), case.device)
    if case.op == "soft_label":
        return soft_label_step(case.impl, _need(case.n, "n", case), case.device)
    if case.op == "head":
        return head_step(case.impl, _need(case.n, "n", case), _need(case.d, "d", case),
                         case.device)
    if case.op == "train_step":
        return train_step(case.impl, _need(case.model, "model", case), case.device)
    if case.op in FIELD_OPS:
        return field_step(case.op, case.impl, _need(case.n, "n", case), case.d, case.device)
    raise ValueError(f"expected an op among {OPS}, got {case.op!r}")
