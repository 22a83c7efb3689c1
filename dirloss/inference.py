"""Pick a head's inference setting on validation data, without retraining."""

from __future__ import annotations

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
    "InferenceChoice",
    "select_inference",
]

DEFAULT_INFERENCE_CANDIDATES: tuple[tuple[str, float], ...] = (
    ("soft", 0.0), ("soft", 0.5), ("argmax", 0.0), ("argmax", 0.5),
)
"""The ``(inference, tau)`` pairs :func:`select_inference` tries by default."""

DEFAULT_MAE_GUARD = 0.02
"""Default ``max_mae_increase`` of :func:`select_inference`."""

_MIN_ROWS_PER_BIN = 5  # below this many validation rows per bin on average, select_inference warns


class InferenceChoice(NamedTuple):
    """What :func:`select_inference` picked.

    Attributes:
        inference: ``"soft"`` | ``"argmax"``.
        tau: the post-hoc logit adjustment strength.
        score: the chosen candidate's validation score.
        scores: every candidate's ``(balanced MAE, MAE)``, keyed by ``(inference, tau)``.
    """

    inference: str
    tau: float
    score: float
    scores: dict[tuple[str, float], tuple[float, float]]


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
        metric: ``"bmae"`` (balanced MAE, the DIR criterion) | ``"mae"``.
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
    if metric not in ("bmae", "mae"):
        raise ValueError(f"expected metric in ('bmae', 'mae'), got {metric!r}")
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
    scores: dict[tuple[str, float], tuple[float, float]] = {}
    for inference, tau in candidates:
        adjustment = tau * head.log_prior if tau else None
        pred = DF.combine_experts(out.logits, out.experts, inference, logit_adjustment=adjustment)
        mae = float((pred.reshape(-1).double() - y.to(pred.device).double()).abs().mean())
        scores[(inference, float(tau))] = (float(balanced_mae(pred, y, edges)), mae)
    best_mae = min(m for _, m in scores.values())
    limit = float("inf") if max_mae_increase is None else best_mae * (1 + max_mae_increase)
    index = 0 if metric == "bmae" else 1
    allowed = [k for k, v in scores.items() if v[1] <= limit]
    inference, tau = min(allowed, key=lambda k: scores[k][index])
    head.inference = inference
    head.set_logit_adjustment(tau)
    return InferenceChoice(inference, tau, scores[(inference, tau)][index], scores)


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
