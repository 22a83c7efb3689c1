r"""The methods of the DIR accuracy benchmark (``benchmarks/dir_bench.py``) on one backbone.

Every method trains the same MLP backbone (``in -> h1 -> h2``, ReLU) with the same optimiser
(Adam, cosine-annealed learning rate), epochs, batch size and data order for a given seed;
only the head and the loss differ:

========================  =====================================================================
``vanilla``               linear head, MSE
``lds``                   linear head, MSE reweighted by LDS inverse-square-root weights
                          (Yang et al., ICML 2021)
``bmc``                   linear head, Balanced MSE with Batch-based Monte-Carlo (Ren et al.,
                          CVPR 2022)
``ranksim``               linear head, MSE + RankSim on the backbone features (Gong et al.,
                          ICML 2022)
``rnc``                   linear head, MSE + the Rank-N-Contrast loss on the backbone features
                          with the *real-valued* labels (dirloss's continuous kernel), used as
                          a joint regulariser rather than RnC's two-stage pre-training
``group-dir``             :class:`~dirloss.MultiExpertHead` + :class:`~dirloss.GroupDIRLoss`
                          (contrastive on groups + expert MSE + descending soft labels; Pu et
                          al., AAAI 2025)
``abl-ce``                head + expert MSE + plain cross-entropy on the group logits
``abl-soft``              head + expert MSE + descending soft labels (no contrastive term)
``abl-ce-con``            head + expert MSE + plain cross-entropy + group contrastive term
``dirloss``               the library's defaults: ``MultiExpertHead.from_linear(linear, G)``
                          + ``GroupDIRLoss(binner)``; (G, ``expert_share``) in {(10, 1) (the
                          defaults), (20, 0)},
                          inference in {soft, argmax with tau = 0.5}, picked by the library's
                          rule (:func:`~dirloss.select_inference`: lowest bMAE among the
                          candidates within 2 % of the best overall MAE)
========================  =====================================================================

``group-dir`` and the ablations use the paper's head (independent experts, argmax or soft
inference picked on validation) and :meth:`~dirloss.GroupDIRLoss.paper`'s settings (true-group
expert MSE in the targets' units) with ``lambda_mse`` = 10.

A method is a :class:`Method`: a name, a small grid of hyper-parameter settings (at most six)
and a loss built from one setting. The losses are the package's (``dirloss``) and the
baselines of :mod:`benchmarks.baselines`; nothing here re-implements them.

Targets are expected in standardised units (training mean 0, std 1), so the MSE starts near 1
and the lambdas of the grid mean the same on every data set.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dirloss import GroupBinner, GroupContrastiveLoss, GroupDIRLoss, MultiExpertHead
from dirloss.inference import DEFAULT_MAE_GUARD

DEFAULT_NUM_GROUPS = 10

try:  # package import (python -m benchmarks.dir_bench) or a plain sys.path import
    from .baselines import BMCLoss, LDSReweighting, LDSWeightedMSELoss, RankSimLoss
except ImportError:  # pragma: no cover
    from baselines import BMCLoss, LDSReweighting, LDSWeightedMSELoss, RankSimLoss  # type: ignore[no-redef]

__all__ = [
    "InfeasibleSetting",
    "METHODS",
    "INFERENCE_MODES",
    "Method",
    "PAPER_INFERENCE",
    "Regressor",
    "TrainConfig",
    "build_model",
    "mlp",
    "method_names",
    "optimise",
    "predict",
    "train",
]

PAPER_INFERENCE: tuple[tuple[str, float], ...] = (("argmax", 0.0), ("soft", 0.0))
"""``(mode, tau)`` inference candidates of the paper's head: argmax or soft mixture."""
INFERENCE_MODES = PAPER_INFERENCE  # kept for callers of the 0.1 benchmark
DIRLOSS_GRID = (
    {"num_groups": DEFAULT_NUM_GROUPS, "strategy": "uniform", "expert_share": 1.0},
    {"num_groups": 2 * DEFAULT_NUM_GROUPS, "strategy": "uniform", "expert_share": 0.0},
)
"""The library's defaults (``expert_share`` = 1, 10 groups) and its one documented
alternative (sharp experts on finer groups: ``expert_share`` = 0, 20 groups); with two
inference candidates each, the search is as large as the largest baseline grid (BMC, RnC:
four settings)."""
DIRLOSS_INFERENCE: tuple[tuple[str, float], ...] = (("soft", 0.0), ("argmax", 0.5))
"""The two most often chosen of :data:`dirloss.inference.DEFAULT_INFERENCE_CANDIDATES` in
the recipe search (docs/guide.md)."""


# ---------------------------------------------------------------------------------------------
# Methods and their grids
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Method:
    """One benchmarked method.

    Attributes:
        name: the key used on the command line and in the results.
        label: a short human-readable description for the tables.
        grid: the hyper-parameter settings tried on validation (at most six).
        grouped: whether the model has a :class:`~dirloss.MultiExpertHead` (then the
            settings hold ``num_groups`` and the inference setting is picked on validation).
        inference: the ``(mode, tau)`` inference candidates of a grouped head, scored on
            validation from the same trained model.
        mae_guard: when set, selection keeps only the candidates whose validation MAE is
            within this fraction of the method's best (the library's selection rule).
    """

    name: str
    label: str
    grid: tuple[Mapping[str, Any], ...]
    grouped: bool = False
    inference: tuple[tuple[str, float], ...] = PAPER_INFERENCE
    mae_guard: float | None = None

    @property
    def num_candidates(self) -> int:
        """Settings x inference candidates: the size of the search on validation."""
        return len(self.grid) * (len(self.inference) if self.grouped else 1)


def _grid(**axes: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    """The Cartesian product of ``axes``, in order (the first axis varies slowest)."""
    settings: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        settings = [{**s, key: v} for s in settings for v in values]
    return tuple(settings)


_GROUPED_GRID = _grid(strategy=("uniform", "quantile"), num_groups=(5, 10, 20), lambda_mse=(10.0,))
"""Group-DIR and its ablations: equal-width or equal-mass groups x G in {5, 10, 20}, the
expert MSE weighted 10 (targets are standardised, so the MSE falls far below the
classification and contrastive terms, which stay O(1)). A quantile setting that the labels'
ties cannot support (e.g. 20 equal-mass groups of abalone's integer rings) is infeasible and
skipped, see :class:`InfeasibleSetting`."""

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("vanilla", "MSE", _grid(weight_decay=(0.0, 1e-4))),
        Method(
            "lds",
            "LDS + sqrt-inv reweighting",
            ({"kernel_size": 5, "sigma": 1.0}, {"kernel_size": 5, "sigma": 2.0}, {"kernel_size": 9, "sigma": 4.0}),
        ),
        Method(
            "bmc",
            "Balanced MSE (BMC)",
            (
                {"noise_sigma": 0.1, "learnable": False},
                {"noise_sigma": 0.3, "learnable": False},
                {"noise_sigma": 1.0, "learnable": False},
                {"noise_sigma": 1.0, "learnable": True},
            ),
        ),
        Method("ranksim", "MSE + RankSim", _grid(gamma=(30.0, 100.0, 300.0), interpolation_lambda=(2.0,))),
        Method("rnc", "MSE + RnC (float labels)", _grid(temperature=(0.1, 1.0), weight=(0.1, 1.0))),
        Method("group-dir", "Group-DIR (full)", _GROUPED_GRID, grouped=True),
        Method("abl-ce", "head + MSE + CE", _GROUPED_GRID, grouped=True),
        Method("abl-soft", "head + MSE + soft labels", _GROUPED_GRID, grouped=True),
        Method("abl-ce-con", "head + MSE + CE + contrastive", _GROUPED_GRID, grouped=True),
        Method(
            "dirloss", "dirloss defaults", DIRLOSS_GRID, grouped=True,
            inference=DIRLOSS_INFERENCE, mae_guard=DEFAULT_MAE_GUARD,
        ),
    )
}
"""All methods, in table order."""


def method_names() -> list[str]:
    return list(METHODS)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def mlp(in_features: int, hidden: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """``in -> hidden[0] -> ... -> hidden[-1]``, each Linear followed by ReLU (and dropout)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers)


class Regressor(nn.Module):
    """A backbone and a head.

    ``forward`` returns ``(features, head_output)``: the head output is an ``(N, 1)`` tensor
    for a linear head and a :class:`~dirloss.HeadOutput` for a :class:`~dirloss.MultiExpertHead`
    (``groups`` then selects the true group's expert, as in training).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor, groups: Tensor | None = None) -> tuple[Tensor, Any]:
        features = self.backbone(x)
        if isinstance(self.head, MultiExpertHead):
            return features, self.head(features, groups)
        return features, self.head(features)


def build_model(
    method: Method, params: Mapping[str, Any], in_features: int, hidden: Sequence[int], *, seed: int, dropout: float = 0.0
) -> Regressor:
    """The model of ``method`` for ``seed``.

    The backbone and the linear regression layer are drawn first from ``torch.manual_seed(seed)``,
    so every method starts from the same weights; a :class:`~dirloss.MultiExpertHead` is
    retrofitted from that linear layer (:meth:`~dirloss.MultiExpertHead.from_linear`: every
    expert starts as it, the group logits start at zero).
    """
    torch.manual_seed(seed)
    backbone = mlp(in_features, hidden, dropout)
    linear = nn.Linear(hidden[-1], 1)
    head: nn.Module = linear
    if method.name == "dirloss":
        head = MultiExpertHead.from_linear(linear, int(params["num_groups"]))
    elif method.grouped:  # the paper's head: independent experts
        head = MultiExpertHead.from_linear(
            linear, int(params["num_groups"]), residual=False, inference="argmax"
        )
    return Regressor(backbone, head)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
LossFn = Callable[[Regressor, Tensor, Tensor], Tensor]


class InfeasibleSetting(ValueError):
    """A grid setting that cannot be built on this data set (reported and skipped)."""


def _fit_binner(params: Mapping[str, Any], y_train: Tensor) -> GroupBinner:
    """``num_groups`` equal-width (``strategy="uniform"``) or equal-mass (``"quantile"``) groups
    over the training labels."""
    try:
        return GroupBinner(int(params["num_groups"]), strategy=str(params.get("strategy", "uniform"))).fit(y_train)
    except ValueError as err:
        raise InfeasibleSetting(str(err)) from err


def make_loss(method: Method, params: Mapping[str, Any], y_train: Tensor, *, seed: int) -> tuple[LossFn, list[nn.Parameter]]:
    """The training loss of ``method`` with setting ``params``, and extra trainable parameters.

    ``loss(model, x, y)`` runs the model on a batch and returns the scalar to back-propagate.
    """
    name = method.name
    extra: list[nn.Parameter] = []
    if name == "vanilla":
        def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
            return F.mse_loss(model(x)[1][:, 0], y)
    elif name == "lds":
        reweighting = LDSReweighting(50, kernel_size=int(params["kernel_size"]), sigma=float(params["sigma"])).fit(y_train)
        lds_mse = LDSWeightedMSELoss(reweighting)

        def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
            return lds_mse(model(x)[1][:, 0], y)
    elif name == "bmc":
        bmc = BMCLoss(float(params["noise_sigma"]), learnable=bool(params["learnable"]))
        if bmc.learnable:
            extra.append(bmc.noise_sigma)  # type: ignore[arg-type]

        def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
            return bmc(model(x)[1][:, 0], y)
    elif name == "ranksim":
        ranksim = RankSimLoss(float(params["gamma"]), interpolation_lambda=float(params["interpolation_lambda"]))
        generator = torch.Generator().manual_seed(seed)

        def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
            features, out = model(x)
            return F.mse_loss(out[:, 0], y) + ranksim(features, y, generator=generator)
    elif name == "rnc":
        rnc = GroupContrastiveLoss(temperature=float(params["temperature"]))  # float labels: continuous kernel
        weight = float(params["weight"])

        def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
            features, out = model(x)
            return F.mse_loss(out[:, 0], y) + weight * rnc(features, y)
    elif name == "dirloss":
        binner = _fit_binner(params, y_train)
        keys = ("lambda_grc", "lambda_mse", "lambda_soft", "lambda_mix", "expert_share", "temperature")
        criterion = GroupDIRLoss(binner, **{k: float(params[k]) for k in keys if k in params})

        def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
            groups = binner(y)
            features, out = model(x, groups)
            return criterion(out, features, y, groups).loss
    elif method.grouped:
        binner = _fit_binner(params, y_train)
        # The method fixes which terms are on; a setting may rescale the ones that are.
        on = {
            "group-dir": (True, True, False),  # (contrastive, soft labels, plain CE)
            "abl-ce": (False, False, True),
            "abl-soft": (False, True, False),
            "abl-ce-con": (True, False, True),
        }[name]
        objective = GroupDIRLoss.paper(
            binner,
            temperature=float(params.get("temperature", 0.1)),
            lambda_grc=float(params.get("lambda_grc", 1.0)) if on[0] else 0.0,
            lambda_mse=float(params["lambda_mse"]),
            lambda_soft=float(params.get("lambda_soft", 1.0)) if on[1] else 0.0,
            scale=float(params.get("scale", 1.0)),
            tau=float(params.get("tau", 0.0)),
        )
        lambda_ce = float(params.get("lambda_ce", 1.0)) if on[2] else 0.0

        def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
            groups = binner(y)
            features, out = model(x, groups)
            total = objective(out, features, y, groups).loss
            if lambda_ce:
                total = total + lambda_ce * F.cross_entropy(out.logits, groups)
            return total
    else:  # pragma: no cover - METHODS is closed
        raise ValueError(f"unknown method {name!r}")
    return loss, extra


# ---------------------------------------------------------------------------------------------
# Training and prediction
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Shared by every method on a data set."""

    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    dropout: float = 0.0


def train(
    method: Method,
    params: Mapping[str, Any],
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    seed: int,
) -> tuple[Regressor, dict[str, Any]]:
    """Train ``method`` with ``params`` on standardised ``(x, y)``; returns the model in eval
    mode and a record (wall seconds, final training loss, whether the loss stayed finite).

    The data order is drawn from a generator seeded with ``seed`` (the same for every
    method); the last incomplete batch is kept unless it holds a single sample (contrastive
    and batch-softmax losses need pairs). Adam, learning rate cosine-annealed to 0 over all
    steps; ``weight_decay`` from ``params`` (0 unless given).
    """
    start = time.perf_counter()
    model = build_model(method, params, x.shape[1], config.hidden, seed=seed, dropout=config.dropout)
    loss_fn, extra = make_loss(method, params, y, seed=seed)
    last, finite = optimise(model, loss_fn, extra, x, y, config, seed=seed,
                            weight_decay=float(params.get("weight_decay", 0.0)))
    model.eval()
    if isinstance(model.head, MultiExpertHead):  # the group prior, for logit adjustment
        model.head.set_logit_adjustment(0.0, _fit_binner(params, y).counts)
    return model, {"train_seconds": time.perf_counter() - start, "final_loss": last, "finite": finite}


def optimise(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor, Tensor], Tensor],
    extra: Sequence[nn.Parameter],
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    seed: int,
    weight_decay: float = 0.0,
) -> tuple[float, bool]:
    """The shared training loop: Adam with a cosine-annealed learning rate over all steps,
    batch order from a generator seeded with ``seed``, the last incomplete batch kept unless
    it holds a single sample. Returns the last epoch's loss and whether it stayed finite."""
    optimizer = torch.optim.Adam([*model.parameters(), *extra], lr=config.lr, weight_decay=weight_decay)
    n = x.shape[0]
    per_epoch = max(1, math.ceil(n / config.batch_size))
    if n % config.batch_size == 1 and per_epoch > 1:
        per_epoch -= 1
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=per_epoch * config.epochs)
    order_gen = torch.Generator().manual_seed(seed)
    model.train()
    last = math.nan
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=order_gen)
        for b in range(per_epoch):
            index = order[b * config.batch_size:(b + 1) * config.batch_size if b < per_epoch - 1 else n]
            loss = loss_fn(model, x[index], y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        last = float(loss.detach())
        if not math.isfinite(last):
            return last, False
    return last, True


@torch.no_grad()
def predict(model: Regressor, x: Tensor, inference: Any = "argmax") -> np.ndarray:
    """Predictions in model units, shape (N,), float64; ``inference`` (a mode or a
    ``(mode, tau)`` pair) applies to grouped heads."""
    model.eval()
    if isinstance(model.head, MultiExpertHead):
        mode, tau = (inference, 0.0) if isinstance(inference, str) else inference
        model.head.inference = mode
        model.head.set_logit_adjustment(float(tau))
    _, out = model(x)
    pred = out.prediction if isinstance(model.head, MultiExpertHead) else out
    return pred[:, 0].to(torch.float64).numpy()
