"""Pick a head's inference setting on validation data, without retraining."""

from __future__ import annotations

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
    y = target.reshape(-1)
    if features.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected one target per feature row ({features.shape[0]}), got {tuple(target.shape)}"
        )
    edges = binner.edges if bin_edges is None else torch.as_tensor(bin_edges)
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
