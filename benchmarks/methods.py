r"""Stage 2 of the accuracy benchmark (:mod:`benchmarks.dir_bench`): the methods on one backbone.

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
``fds``                   linear head, MSE with FDS on the backbone features (50 bins;
                          with or without LDS weights; Yang et al., ICML 2021)
``conr``                  linear head, MSE + ConR on the backbone features (Keramati et al.,
                          ICLR 2024; one view, threshold in standardised label units)
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
                          + ``GroupDIRLoss(binner)``; trainings :data:`DIRLOSS_GRID` (the
                          defaults, the same with LDS weights, G 20 with ``expert_share`` 0),
                          inference {soft, argmax, top-3} x tau {0, 0.5, 1}, picked by the
                          library's rule (:func:`~dirloss.select_inference`: lowest bMAE
                          among the candidates within 2 % of the best overall MAE)
``dirloss-tail``          the same models as ``dirloss``, the tail operating point: the
                          lowest validation few-shot MAE under the same guard
                          (``select_inference(..., metric="few")``)
========================  =====================================================================

``group-dir`` and the ablations use the paper's head (independent experts, argmax or soft
inference picked on validation) and :meth:`~dirloss.GroupDIRLoss.paper`'s settings (true-group
expert MSE in the targets' units) with ``lambda_mse`` = 10.

A method is a :class:`Method`: a name, a small grid of hyper-parameter settings (at most six),
its head and the function that builds its loss from one setting (one small function per
method, no dispatch on names). Every loss is the package's (``dirloss``): the field's methods
(LDS, FDS, Balanced MSE, RankSim, ConR) included; nothing here re-implements them.

Targets are expected in standardised units (training mean 0, std 1), so the MSE starts near 1
and the lambdas of the grid mean the same on every data set.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.models import Regressor, mlp
from dirloss import (
    BMCLoss,
    ConRLoss,
    FeatureDistributionSmoothing,
    GroupBinner,
    GroupContrastiveLoss,
    GroupDIRLoss,
    LabelDensityWeights,
    MultiExpertHead,
    RankSimLoss,
)
from dirloss.inference import DEFAULT_INFERENCE_CANDIDATES, DEFAULT_MAE_GUARD

__all__ = [
    "DIRLOSS_GRID",
    "DIRLOSS_INFERENCE",
    "METHODS",
    "PAPER_INFERENCE",
    "InfeasibleSetting",
    "LossBuilder",
    "LossFn",
    "Method",
    "Regressor",
    "build_model",
    "fit_binner",
    "inference_key",
    "make_loss",
    "mlp",
    "parse_inference",
]

DEFAULT_NUM_GROUPS = 10
LDS_BINS = 50  # LDS / FDS bins: the official code's are one label unit, ~50-100 on the tables

PAPER_INFERENCE: tuple[tuple[str, float], ...] = (("argmax", 0.0), ("soft", 0.0))
"""``(mode, tau)`` inference candidates of the paper's head: argmax or soft mixture."""
DIRLOSS_GRID = (
    {"num_groups": DEFAULT_NUM_GROUPS, "strategy": "uniform", "expert_share": 1.0},
    {"num_groups": DEFAULT_NUM_GROUPS, "strategy": "uniform", "expert_share": 1.0, "lds": True},
    {"num_groups": 2 * DEFAULT_NUM_GROUPS, "strategy": "uniform", "expert_share": 0.0},
)
"""The library's defaults (``expert_share`` = 1, 10 groups), the same with LDS weights on the
expert and mixture terms (``GroupDIRLoss(...)(..., weight=lds(y))``), and sharp experts on
finer groups (``expert_share`` = 0, 20 groups): the guide's three documented trainings. With
the library's nine inference candidates each, 27 candidates, scored from 3 trainings (Group-DIR:
12 from 6)."""
DIRLOSS_INFERENCE: tuple[tuple[str, float], ...] = DEFAULT_INFERENCE_CANDIDATES
""":data:`dirloss.inference.DEFAULT_INFERENCE_CANDIDATES`: soft, argmax and top-3, tau 0, 0.5,
1."""


# ---------------------------------------------------------------------------------------------
# Losses: one builder per method, ``(params, y_train, seed) -> (loss, extra parameters)``
# ---------------------------------------------------------------------------------------------
LossFn = Callable[[Regressor, Tensor, Tensor], Tensor]
"""``loss(model, x, y)``: runs the model on a batch, returns the scalar to back-propagate."""
LossBuilder = Callable[[Mapping[str, Any], Tensor, int], "_Built"]
"""``build(params, y_train, seed)``: a method's loss for one setting, and the extra trainable
parameters it brings (BMC's learnable noise)."""
_Built = tuple[LossFn, list[nn.Parameter]]


class InfeasibleSetting(ValueError):
    """A grid setting that cannot be built on this data set (reported and skipped)."""


def fit_binner(params: Mapping[str, Any], y_train: Tensor) -> GroupBinner:
    """``num_groups`` equal-width (``strategy="uniform"``) or equal-mass (``"quantile"``) groups
    over the training labels."""
    strategy = str(params.get("strategy", "uniform"))
    try:
        return GroupBinner(int(params["num_groups"]), strategy=strategy).fit(y_train)
    except ValueError as err:
        raise InfeasibleSetting(str(err)) from err


def _vanilla(params: Mapping[str, Any], y_train: Tensor, seed: int) -> _Built:
    def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(model(x)[1][:, 0], y)

    return loss, []


def _lds(params: Mapping[str, Any], y_train: Tensor, seed: int) -> _Built:
    kernel_size, sigma = int(params["kernel_size"]), float(params["sigma"])
    weights = LabelDensityWeights(LDS_BINS, kernel_size=kernel_size, sigma=sigma).fit(y_train)

    def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        return (weights(y) * (model(x)[1][:, 0] - y) ** 2).mean()

    return loss, []


def _bmc(params: Mapping[str, Any], y_train: Tensor, seed: int) -> _Built:
    bmc = BMCLoss(float(params["noise_sigma"]), learnable=bool(params["learnable"]))

    def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        return bmc(model(x)[1][:, 0], y)

    return loss, list(bmc.parameters())  # the learnable noise scale (none when fixed)


def _ranksim(params: Mapping[str, Any], y_train: Tensor, seed: int) -> _Built:
    # reduction="mean" is the official sum over the M kept anchors weighted gamma / M: the
    # grid's gamma means what it meant before the gradient fix.
    lam, gamma = float(params["interpolation_lambda"]), float(params["gamma"])
    ranksim = RankSimLoss(interpolation_lambda=lam, reduction="mean")
    generator = torch.Generator().manual_seed(seed)

    def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        features, out = model(x)
        return F.mse_loss(out[:, 0], y) + gamma * ranksim(features, y, generator=generator)

    return loss, []


def _rnc(params: Mapping[str, Any], y_train: Tensor, seed: int) -> _Built:
    # float labels: the continuous kernel
    rnc = GroupContrastiveLoss(temperature=float(params["temperature"]))
    weight = float(params["weight"])

    def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        features, out = model(x)
        return F.mse_loss(out[:, 0], y) + weight * rnc(features, y)

    return loss, []


class _FDSLoss:
    """FDS between backbone and head (training only; statistics from every training batch,
    finalised by :meth:`end_epoch`, which the training loop calls after each epoch),
    optionally with LDS weights on the MSE (the paper's LDS + FDS). The FDS module is built
    at the first batch, when the feature width is known."""

    def __init__(self, params: Mapping[str, Any], y_train: Tensor) -> None:
        self.sigma = float(params["sigma"])
        self.y_train = y_train
        self.weights = (LabelDensityWeights(LDS_BINS, sigma=self.sigma).fit(y_train)
                        if params.get("lds") else None)
        self.fds: FeatureDistributionSmoothing | None = None

    def __call__(self, model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        features = model.backbone(x)
        if self.fds is None:
            self.fds = FeatureDistributionSmoothing(
                features.shape[1], LDS_BINS, sigma=self.sigma).fit(self.y_train)
        self.fds.update(features, y)
        err = (model.head(self.fds(features, y))[:, 0] - y) ** 2
        return (err * self.weights(y)).mean() if self.weights is not None else err.mean()

    def end_epoch(self) -> None:
        if self.fds is not None:
            self.fds.step_epoch()


def _fds(params: Mapping[str, Any], y_train: Tensor, seed: int) -> _Built:
    return _FDSLoss(params, y_train), []


def _conr(params: Mapping[str, Any], y_train: Tensor, seed: int) -> _Built:
    """MSE + beta * ConR on the backbone features, one view (tables have no augmentation);
    the predictions only pick the confused pairs, so they enter detached."""
    conr = ConRLoss(threshold=float(params["threshold"]))
    beta = float(params["beta"])

    def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        features, out = model(x)
        pred = out[:, 0]
        return F.mse_loss(pred, y) + beta * conr(features, y, pred.detach())

    return loss, []


_LIBRARY_KEYS = ("lambda_grc", "lambda_mse", "lambda_soft", "lambda_mix", "expert_share",
                 "temperature")


def _library(params: Mapping[str, Any], y_train: Tensor, seed: int) -> _Built:
    """The library's defaults: ``GroupDIRLoss(binner)``, a setting may override its weights
    and (``lds``) weight the expert and mixture terms by LDS (``weight=``)."""
    binner = fit_binner(params, y_train)
    overrides: dict[str, Any] = {k: float(params[k]) for k in _LIBRARY_KEYS if k in params}
    criterion = GroupDIRLoss(binner, **overrides)
    lds = LabelDensityWeights(LDS_BINS).fit(y_train) if params.get("lds") else None

    def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        groups = binner(y)
        features, out = model(x, groups)
        weight = lds(y) if lds is not None else None
        return criterion(out, features, y, groups, weight=weight).loss

    return loss, []


def _paper(
    params: Mapping[str, Any], y_train: Tensor, seed: int, *,
    contrastive: bool, soft_labels: bool, cross_entropy: bool,
) -> _Built:
    """The paper's objective with some terms switched off (the method fixes which terms are
    on; a setting may rescale the ones that are), plus an optional plain cross-entropy."""
    binner = fit_binner(params, y_train)
    objective = GroupDIRLoss.paper(
        binner,
        temperature=float(params.get("temperature", 0.1)),
        lambda_grc=float(params.get("lambda_grc", 1.0)) if contrastive else 0.0,
        lambda_mse=float(params["lambda_mse"]),
        lambda_soft=float(params.get("lambda_soft", 1.0)) if soft_labels else 0.0,
        scale=float(params.get("scale", 1.0)),
        tau=float(params.get("tau", 0.0)),
    )
    lambda_ce = float(params.get("lambda_ce", 1.0)) if cross_entropy else 0.0

    def loss(model: Regressor, x: Tensor, y: Tensor) -> Tensor:
        groups = binner(y)
        features, out = model(x, groups)
        total = objective(out, features, y, groups).loss
        if lambda_ce:
            total = total + lambda_ce * F.cross_entropy(out.logits, groups)
        return total

    return loss, []


def _paper_terms(contrastive: bool, soft_labels: bool, cross_entropy: bool) -> LossBuilder:
    return functools.partial(
        _paper, contrastive=contrastive, soft_labels=soft_labels, cross_entropy=cross_entropy
    )


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
        loss: builds the training loss of one setting (see :data:`LossBuilder`).
        head: ``"linear"``, ``"paper"`` (a :class:`~dirloss.MultiExpertHead` with independent
            experts, argmax) or ``"library"`` (the head's defaults); the grouped heads'
            settings hold ``num_groups`` and their inference setting is picked on validation.
        inference: the ``(mode, tau)`` inference candidates of a grouped head, scored on
            validation from the same trained model.
        mae_guard: when set, selection keeps only the candidates whose validation MAE is
            within this fraction of the method's best (the library's selection rule).
        select_metric: the validation score selection minimises: ``"bmae"``, or
            ``"few_mae"`` for the library's tail operating point (``metric="few"`` of
            :func:`~dirloss.select_inference`).
    """

    name: str
    label: str
    grid: tuple[Mapping[str, Any], ...]
    loss: LossBuilder
    head: str = "linear"
    inference: tuple[tuple[str, float], ...] = PAPER_INFERENCE
    mae_guard: float | None = None
    select_metric: str = "bmae"

    @property
    def grouped(self) -> bool:
        """Whether the model has a :class:`~dirloss.MultiExpertHead`."""
        return self.head != "linear"

    @property
    def inference_keys(self) -> list[str]:
        """The inference candidates as result keys (``["argmax"]`` for a linear head)."""
        return [inference_key(c) for c in self.inference] if self.grouped else ["argmax"]

    @property
    def num_candidates(self) -> int:
        """Settings x inference candidates: the size of the search on validation."""
        return len(self.grid) * (len(self.inference) if self.grouped else 1)


def inference_key(candidate: tuple[str, float]) -> str:
    """``("soft", 0.5)`` -> ``"soft, tau=0.5"``; ``tau=0`` reads as the mode alone."""
    mode, tau = candidate
    return mode if not tau else f"{mode}, tau={tau:g}"


def parse_inference(key: str | None) -> tuple[str, float]:
    """The inverse of :func:`inference_key` (``None`` or ``""``: argmax)."""
    if not key:
        return ("argmax", 0.0)
    mode, _, tau = key.partition(", tau=")
    return (mode, float(tau) if tau else 0.0)


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

_LDS_GRID = ({"kernel_size": 5, "sigma": 1.0}, {"kernel_size": 5, "sigma": 2.0},
             {"kernel_size": 9, "sigma": 4.0})
_BMC_GRID = (
    {"noise_sigma": 0.1, "learnable": False},
    {"noise_sigma": 0.3, "learnable": False},
    {"noise_sigma": 1.0, "learnable": False},
    {"noise_sigma": 1.0, "learnable": True},
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("vanilla", "MSE", _grid(weight_decay=(0.0, 1e-4)), _vanilla),
        Method("lds", "LDS + sqrt-inv reweighting", _LDS_GRID, _lds),
        Method("bmc", "Balanced MSE (BMC)", _BMC_GRID, _bmc),
        Method("ranksim", "MSE + RankSim",
               # With the corrected blackbox gradient RankSim acts: gamma >= 30 (the old grid,
               # tuned while the gradient was mostly 0) ruins the fit; validation picks here.
               _grid(gamma=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0), interpolation_lambda=(2.0,)),
               _ranksim),
        Method("fds", "FDS (+ LDS)", _grid(lds=(False, True), sigma=(1.0, 2.0)), _fds),
        Method("conr", "MSE + ConR", _grid(threshold=(0.1, 0.3), beta=(0.1, 1.0, 4.0)), _conr),
        Method("rnc", "MSE + RnC (float labels)",
               _grid(temperature=(0.1, 1.0), weight=(0.1, 1.0)), _rnc),
        Method("group-dir", "Group-DIR (full)", _GROUPED_GRID,
               _paper_terms(contrastive=True, soft_labels=True, cross_entropy=False), "paper"),
        Method("abl-ce", "head + MSE + CE", _GROUPED_GRID,
               _paper_terms(contrastive=False, soft_labels=False, cross_entropy=True), "paper"),
        Method("abl-soft", "head + MSE + soft labels", _GROUPED_GRID,
               _paper_terms(contrastive=False, soft_labels=True, cross_entropy=False), "paper"),
        Method("abl-ce-con", "head + MSE + CE + contrastive", _GROUPED_GRID,
               _paper_terms(contrastive=True, soft_labels=False, cross_entropy=True), "paper"),
        Method("dirloss", "dirloss defaults", DIRLOSS_GRID, _library, "library",
               inference=DIRLOSS_INFERENCE, mae_guard=DEFAULT_MAE_GUARD),
        Method("dirloss-tail", "dirloss, tail point (metric='few')", DIRLOSS_GRID, _library,
               "library", inference=DIRLOSS_INFERENCE, mae_guard=DEFAULT_MAE_GUARD,
               select_metric="few_mae"),
    )
}
"""All methods, in table order."""


def make_loss(
    method: Method, params: Mapping[str, Any], y_train: Tensor, *, seed: int
) -> tuple[LossFn, list[nn.Parameter]]:
    """The training loss of ``method`` with setting ``params``, and extra trainable parameters.

    ``loss(model, x, y)`` runs the model on a batch and returns the scalar to back-propagate.
    """
    return method.loss(params, y_train, seed)


def build_model(
    method: Method, params: Mapping[str, Any], in_features: int, hidden: Sequence[int], *,
    seed: int, dropout: float = 0.0,
) -> Regressor:
    """The model of ``method`` for ``seed``.

    The backbone and the linear regression layer are drawn first from
    ``torch.manual_seed(seed)``, so every method starts from the same weights; a
    :class:`~dirloss.MultiExpertHead` is retrofitted from that linear layer
    (:meth:`~dirloss.MultiExpertHead.from_linear`: every expert starts as it, the group
    logits start at zero).
    """
    torch.manual_seed(seed)
    backbone = mlp(in_features, hidden, dropout)
    linear = nn.Linear(hidden[-1], 1)
    head: nn.Module = linear
    if method.head == "library":
        head = MultiExpertHead.from_linear(linear, int(params["num_groups"]))
    elif method.head == "paper":  # independent experts
        head = MultiExpertHead.from_linear(
            linear, int(params["num_groups"]), residual=False, inference="argmax"
        )
    return Regressor(backbone, head)
