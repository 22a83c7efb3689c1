"""The fine-tuning benchmark's methods: one small function per method that builds its head
(from the shared linear layer ``fc``) and its loss; :data:`METHODS` is the table.

Settings are fixed before any run (see :class:`~benchmarks.finetune.config.FinetuneConfig`);
nothing is tuned on the test split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.finetune.config import FinetuneConfig
from dirloss import GroupBinner, GroupDIRLoss, LabelDensityWeights, MultiExpertHead, RankSimLoss

__all__ = ["ALL_METHODS", "EXTRA_METHODS", "METHODS", "Objective", "Setup", "TableMethod"]


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every method is built from, the same for all of them for a seed.

    Attributes:
        fc: the linear layer drawn from the seed (the plain head, or the grouped heads'
            starting point).
        y_train: standardised training scores.
        mean, std: the standardisation (score = std * t + mean).
        config: the run's settings.
        seed: the run's seed.
    """

    fc: nn.Linear
    y_train: Tensor
    mean: float
    std: float
    config: FinetuneConfig
    seed: int


@dataclasses.dataclass(frozen=True)
class Objective:
    """A method's trainable head and its training loss ``loss(features, y)``.

    ``binner`` is set for a grouped head; ``library_rule`` says its inference setting is
    picked on the dev split by :func:`dirloss.select_inference` (else the paper's argmax).
    """

    head: nn.Module
    loss: Callable[[Tensor, Tensor], Tensor]
    binner: GroupBinner | None = None
    library_rule: bool = False


def _mse(s: Setup) -> Objective:
    head = s.fc

    def loss(features: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(head(features)[:, 0], y)

    return Objective(head, loss)


def _lds(s: Setup) -> Objective:
    low, high = (0.0 - s.mean) / s.std, (5.0 - s.mean) / s.std  # 50 bins of 0.1 score
    weights = LabelDensityWeights(
        bin_edges=torch.linspace(low, high, 51, dtype=torch.float64),
        kernel_size=s.config.lds_kernel_size, sigma=s.config.lds_sigma,
    ).fit(s.y_train)
    head = s.fc

    def loss(features: Tensor, y: Tensor) -> Tensor:
        return (weights(y) * (head(features)[:, 0] - y) ** 2).mean()

    return Objective(head, loss)


def _ranksim(s: Setup) -> Objective:
    # reduction="mean": the official sum over the M kept anchors with weight gamma / M, so
    # gamma means what it meant before the gradient fix.
    criterion = RankSimLoss(interpolation_lambda=s.config.ranksim_lambda, reduction="mean")
    gamma = s.config.ranksim_gamma
    generator = torch.Generator().manual_seed(s.seed)
    head = s.fc

    def loss(features: Tensor, y: Tensor) -> Tensor:
        pred = head(features)[:, 0]
        return F.mse_loss(pred, y) + gamma * criterion(features, y, generator=generator)

    return Objective(head, loss)


def _grouped(head: MultiExpertHead, criterion: GroupDIRLoss, binner: GroupBinner,
             library_rule: bool) -> Objective:
    def loss(features: Tensor, y: Tensor) -> Tensor:
        groups = binner(y)
        return criterion(head(features, groups), features, y, groups).loss

    return Objective(head, loss, binner, library_rule)


def _paper(s: Setup) -> Objective:
    binner = GroupBinner(s.config.num_groups).fit(s.y_train)
    head = MultiExpertHead.from_linear(s.fc, s.config.num_groups, residual=False,
                                       inference="argmax")
    criterion = GroupDIRLoss.paper(binner, lambda_mse=s.config.paper_lambda_mse)
    return _grouped(head, criterion, binner, library_rule=False)


def _library(s: Setup, *, expert_share: float | None = None) -> Objective:
    binner = GroupBinner(s.config.num_groups).fit(s.y_train)
    head = MultiExpertHead.from_linear(s.fc, s.config.num_groups)
    if expert_share is None:
        criterion = GroupDIRLoss(binner)
    else:
        criterion = GroupDIRLoss(binner, expert_share=expert_share)
    return _grouped(head, criterion, binner, library_rule=True)


def _library_share0(s: Setup) -> Objective:
    return _library(s, expert_share=0.0)


@dataclasses.dataclass(frozen=True)
class TableMethod:
    """A method: its label in the tables and the function that builds its objective."""

    label: str
    build: Callable[[Setup], Objective]


METHODS: dict[str, TableMethod] = {
    "vanilla": TableMethod("MSE", _mse),
    "lds": TableMethod("LDS + sqrt-inv reweighting", _lds),
    "ranksim": TableMethod("MSE + RankSim", _ranksim),
    "group-dir": TableMethod("Group-DIR (paper)", _paper),
    "dirloss": TableMethod("dirloss defaults", _library),
}
"""Method key -> method, in table order."""

EXTRA_METHODS: dict[str, TableMethod] = {
    "dirloss-share0": TableMethod("dirloss, expert_share 0", _library_share0),
}
"""Variants run only on request (``--methods``), for checks on the dev split: the defaults
with sharp experts (``GroupDIRLoss(binner, expert_share=0)``), the alternative that
docs/guide.md suggests trying on STS-B-DIR."""

ALL_METHODS: dict[str, TableMethod] = {**METHODS, **EXTRA_METHODS}
