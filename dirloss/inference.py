"""Pick a head's inference setting on validation data, without retraining."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import functional as DF
from ._validation import check_non_negative
from .binning import GroupBinner
from .heads import MultiExpertHead
from .metrics import balanced_mae

__all__ = [
    "DEFAULT_INFERENCE_CANDIDATES",
    "DEFAULT_MAE_GUARD",
    "FEW_SHOT_FRACTION",
    "METRICS",
    "InferenceChoice",
    "rare_groups",
    "select_inference",
]

DEFAULT_INFERENCE_CANDIDATES: tuple[tuple[str, float], ...] = (
    ("soft", 0.0), ("soft", 0.5), ("argmax", 0.0), ("argmax", 0.5), ("soft", 1.0), ("argmax", 1.0),
    ("topk", 0.0), ("topk", 0.5), ("topk", 1.0),
)
"""The ``(inference, tau)`` pairs :func:`select_inference` tries by default: soft, argmax and
top-k (the head's ``top_k``, 3 unless set), each with no adjustment, half and the full
balanced-error correction (``tau = 1``, Menon et al., 2021). ``tau = 1`` and ``"topk"``
were added in 0.3 from the balanced-validation measurements in the guide ("Two operating
points"); on validation sets as skewed as training the MAE guard keeps ``tau = 1`` out."""

DEFAULT_MAE_GUARD = 0.02
"""Default ``max_mae_increase`` of :func:`select_inference`."""

_MIN_ROWS_PER_BIN = 5  # below this many validation rows per bin on average, select_inference warns


FEW_SHOT_FRACTION = 0.2
"""A group is rare (few-shot) when it holds fewer than this fraction of the uniform share
:math:`N / G` of the training labels (the field's STS-B-DIR rule, rescaled)."""

METRICS = ("bmae", "mae", "few")
"""Selection metrics of :func:`select_inference`."""


class InferenceChoice(NamedTuple):
    """What :func:`select_inference` picked.

    Attributes:
        inference: ``"soft"`` | ``"argmax"`` | ``"topk"``.
        tau: the post-hoc logit adjustment strength.
        score: the chosen candidate's validation score (of the ``metric`` it was chosen by).
        scores: every candidate's ``(balanced MAE, MAE)``, keyed by ``(inference, tau)``.
        few_scores: every candidate's mean per-group MAE over the rare groups (see
            :func:`rare_groups`; NaN when no validation row falls in one), same keys.
    """

    inference: str
    tau: float
    score: float
    scores: dict[tuple[str, float], tuple[float, float]]
    few_scores: dict[tuple[str, float], float] = {}


def rare_groups(counts: Tensor, fraction: float = FEW_SHOT_FRACTION) -> Tensor:
    r"""The rare (few-shot) groups of a training histogram: a (G,) bool mask.

    A group is rare when it holds fewer than ``fraction`` times the uniform share,
    :math:`n_g < f\, N / G`; when no group is that rare, the groups below the uniform share
    (:math:`n_g < N / G`) are the tail. Empty groups count as rare.

    Example:
        >>> rare_groups(torch.tensor([500, 300, 160, 30, 10]))  # uniform share 200
        tensor([False, False, False,  True,  True])
    """
    n = counts.to(torch.float64)
    share = n.sum() / n.numel()
    mask = n < fraction * share
    return mask if bool(mask.any()) else n < share


@torch.no_grad()
def select_inference(
    head: MultiExpertHead,
    features: Tensor,
    target: Tensor,
    binner: GroupBinner,
    *,
    candidates: Sequence[tuple[str, float]] = DEFAULT_INFERENCE_CANDIDATES,
    metric: str = "bmae",
    bin_edges: Tensor | None = None,
    max_mae_increase: float | None = DEFAULT_MAE_GUARD,
) -> InferenceChoice:
    r"""Choose ``head.inference`` and its logit adjustment on validation data, and set them.

    Every candidate ``(inference, tau)`` is scored on the same head output (one forward
    pass, no retraining): ``inference`` as in :func:`dirloss.functional.combine_experts`,
    ``tau`` as in :meth:`MultiExpertHead.set_logit_adjustment` with the binner's group
    counts. The winner has the lowest ``metric`` among the candidates whose overall MAE is
    at most ``1 + max_mae_increase`` times the lowest overall MAE of all candidates (so a
    gain on rare labels is not bought with a large loss everywhere else; ``None`` turns the
    guard off). Ties go to the earlier candidate.

    Two operating points from the same trained head:

    * ``metric="bmae"`` (default): the lowest balanced MAE, the error of a test set with
      the same number of samples in every label bin (the DIR benchmarks' test sets). On a
      validation split as skewed as training, averaging per-bin errors is the importance-
      weighted estimate of that error (weights :math:`\propto 1 / p(\text{bin})`); on a
      balanced validation split it is close to the plain MAE.
    * ``metric="few"``: the tail operating point, the lowest mean per-group MAE over the
      rare groups (:func:`rare_groups` of the binner's training counts; each validation
      row falls in its label's group). It buys rare-label error with common-label error
      up to the guard; ``InferenceChoice.scores`` and ``few_scores`` show the price of
      every candidate (or draw them: :func:`dirloss.plot_inference_tradeoff`).

    The validation data is checked first (a validation-time function, so reading values is
    fine): it must hold at least one row, finite features and targets, and the binner must
    be fitted with the head's number of groups (``ValueError`` otherwise). With fewer than
    5 rows per bin of the balanced MAE on average (``5 * G`` with the default bins) the
    scores rest on one or two samples in most bins and the pick is mostly noise: the
    function still tunes, but warns (``UserWarning``); use more validation data, or set the
    head by hand (``head.inference = ...``, ``head.set_logit_adjustment(tau,
    binner.counts)``).

    Args:
        head: the trained head (its inference setting is changed in place).
        features: (N, in_features) validation features, e.g. ``backbone(x_val)``.
        target: (N,) or (N, 1) validation labels.
        binner: the fitted binner of training (its counts are the prior).
        candidates: ``(inference, tau)`` pairs to try.
        metric: ``"bmae"`` (balanced MAE, the DIR criterion) | ``"mae"`` | ``"few"`` (the
            rare groups' MAE, the tail operating point).
        bin_edges: bins of the balanced MAE; default the binner's group edges.
        max_mae_increase: the overall-MAE guard, a fraction (>= 0) or ``None``.

    Returns:
        :class:`InferenceChoice`.

    Raises:
        ValueError: bad arguments, an empty or non-finite validation set, or a binner that
            is not fitted or has another number of groups than the head.

    Warns:
        UserWarning: fewer than 5 validation rows per bin on average.

    Example:
        >>> binner = GroupBinner(4).fit(torch.rand(200))
        >>> head = MultiExpertHead(8, num_groups=4)
        >>> choice = select_inference(head, torch.randn(50, 8), torch.rand(50), binner)
        >>> (head.inference, head.tau) == (choice.inference, choice.tau)
        True
    """
    if metric not in METRICS:
        raise ValueError(f"expected metric in {METRICS}, got {metric!r}")
    if not candidates:
        raise ValueError("expected at least one (inference, tau) candidate, got none")
    if max_mae_increase is not None:
        check_non_negative("max_mae_increase", max_mae_increase)
    for inference, tau in candidates:
        if inference not in DF.INFERENCE_MODES:
            raise ValueError(f"expected inference in {DF.INFERENCE_MODES}, got {inference!r}")
        check_non_negative("tau", tau)
    if head.out_features != 1:
        raise ValueError(f"expected a head with out_features=1, got {head.out_features}")
    if not binner.fitted:
        raise ValueError("expected a fitted GroupBinner (the one of training), got an unfitted one")
    if binner.num_groups != head.num_groups:
        raise ValueError(
            f"expected a binner with the head's number of groups, but the binner has "
            f"{binner.num_groups} groups and the head has {head.num_groups}"
        )
    if features.dim() != 2 or features.shape[1] != head.in_features:
        raise ValueError(
            f"expected features of shape (N, {head.in_features}), got {tuple(features.shape)}"
        )
    y = target.reshape(-1)
    if features.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected one target per feature row ({features.shape[0]}), got {tuple(target.shape)}"
        )
    if y.shape[0] == 0:
        raise ValueError(
            f"expected at least one validation row, got features of shape "
            f"{tuple(features.shape)} and target of shape {tuple(target.shape)}"
        )
    for name, values in (("features", features), ("targets", y)):
        _check_finite(name, values)
    edges = binner.edges if bin_edges is None else torch.as_tensor(bin_edges)
    num_bins = edges.numel() - 1
    if y.shape[0] < _MIN_ROWS_PER_BIN * num_bins:
        warnings.warn(
            f"select_inference got {y.shape[0]} validation rows for {num_bins} bins (fewer "
            f"than {_MIN_ROWS_PER_BIN} per bin on average): its scores rest on a sample or two "
            "per bin, so the chosen setting may be noise; use more validation data",
            stacklevel=2,
        )
    out = head(features)
    head.set_logit_adjustment(head.tau, binner.counts)  # the prior of this binner
    groups = binner(y.to(binner.edges.device)).to(out.logits.device)
    rare = rare_groups(binner.counts).to(groups.device)[groups]
    if metric == "few" and not bool(rare.any()):
        raise ValueError(
            "metric='few' needs validation rows in the rare groups (training count below "
            f"{FEW_SHOT_FRACTION:g} of the uniform share), got none of {y.shape[0]} rows"
        )
    scores: dict[tuple[str, float], tuple[float, float]] = {}
    few_scores: dict[tuple[str, float], float] = {}
    for inference, tau in candidates:
        adjustment = tau * head.log_prior if tau else None
        pred = DF.combine_experts(out.logits, out.experts, inference, top_k=head.top_k,
                                  logit_adjustment=adjustment)
        err = (pred.reshape(-1).double() - y.to(pred.device).double()).abs()
        key = (inference, float(tau))
        scores[key] = (float(balanced_mae(pred, y, edges)), float(err.mean()))
        few_scores[key] = _group_mean(err[rare], groups[rare], head.num_groups)
    best_mae = min(m for _, m in scores.values())
    limit = float("inf") if max_mae_increase is None else best_mae * (1 + max_mae_increase)
    allowed = [k for k, v in scores.items() if v[1] <= limit]

    def score(k: tuple[str, float]) -> float:
        return few_scores[k] if metric == "few" else scores[k][0 if metric == "bmae" else 1]

    inference, tau = min(allowed, key=score)
    head.inference = inference
    head.set_logit_adjustment(tau)
    return InferenceChoice(inference, tau, score((inference, tau)), scores, few_scores)


def _group_mean(err: Tensor, groups: Tensor, num_groups: int) -> float:
    """The mean over the groups present of each group's mean error (NaN when none is)."""
    n = torch.bincount(groups, minlength=num_groups).double()
    sums = torch.bincount(groups, weights=err, minlength=num_groups)
    present = n > 0
    return float((sums[present] / n[present]).mean()) if bool(present.any()) else math.nan


def _check_finite(name: str, values: Tensor) -> None:
    """Raise if ``values`` (validation features or targets) hold NaN or inf: say how many
    and in which rows."""
    bad = ~torch.isfinite(values)
    count = int(bad.sum())
    if count:
        rows = bad.reshape(values.shape[0], -1).any(dim=1).nonzero()[:, 0]
        shown = rows[:5].tolist()
        more = ", ..." if rows.numel() > len(shown) else ""
        raise ValueError(
            f"expected finite validation {name}, got {count} NaN/inf of {values.numel()} "
            f"values (in {rows.numel()} of {values.shape[0]} rows: "
            f"{', '.join(map(str, shown))}{more})"
        )
