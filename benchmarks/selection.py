"""Stage 4 of the accuracy benchmark: picking each method's setting on validation only.

A :class:`Candidate` is one (grid setting, inference setting) of a method, scored by its
validation metrics averaged over the selection seeds (:func:`score_candidates`);
:func:`select` picks the lowest validation bMAE, optionally under the library's MAE guard;
the pick is recorded as a :class:`Chosen`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.datasets import Prepared
from benchmarks.evaluation import Scores, evaluate, mean_std
from benchmarks.methods import Method
from benchmarks.training import JobResult

__all__ = ["Candidate", "Chosen", "score_candidates", "select"]


@dataclasses.dataclass
class Candidate:
    """One (setting, inference) of a method's search, as its result file lists it.

    Attributes:
        setting: index into the method's grid; ``params`` is that grid entry.
        inference: the inference key (``"soft"``, ``"argmax, tau=0.5"``); ``None`` for an
            infeasible setting.
        val: validation scores, mean over the selection seeds (``None`` when infeasible).
        val_per_seed: the same, per selection seed (``None`` when infeasible).
        finite: whether every selection seed's training loss stayed finite.
        infeasible: why the setting cannot be built on this data set, or ``None``.
        train_seconds: training time summed over the selection seeds.
        final_loss: last-epoch training loss, mean over the selection seeds.
        order: position in the search (ties go to the earlier candidate).
    """

    setting: int
    params: dict[str, Any]
    inference: str | None
    val: Scores | None
    val_per_seed: list[Scores] | None
    finite: bool
    infeasible: str | None
    train_seconds: float
    final_loss: float
    order: int = 0

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("val_per_seed", "infeasible"):  # written only where they apply
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(**{"val_per_seed": None, "infeasible": None, **d})


@dataclasses.dataclass(frozen=True)
class Chosen:
    """The setting a method selected on validation, and its inference setting."""

    setting: int
    params: dict[str, Any]
    inference: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Chosen:
        return cls(**d)

    @classmethod
    def of(cls, candidate: Candidate) -> Chosen:
        return cls(candidate.setting, candidate.params, candidate.inference)


def score_candidates(
    method: Method, runs: Mapping[int, Mapping[int, JobResult]], data: Prepared
) -> list[Candidate]:
    """One candidate per (setting, inference) of ``method``, from its selection runs
    (``runs[setting][seed]``), scored on the validation split of ``data``."""
    cands: list[Candidate] = []
    for k in sorted(runs):
        per_seed = [runs[k][seed] for seed in sorted(runs[k])]
        params = dict(method.grid[k])
        reasons = [r.infeasible for r in per_seed if r.infeasible]
        if reasons:
            cands.append(Candidate(k, params, None, None, None, False, reasons[0], 0.0, math.nan))
            continue
        for inference in per_seed[0].val_pred:
            scores = [evaluate(data, r.val_pred[inference], "val").scores for r in per_seed]
            cands.append(Candidate(
                setting=k, params=params, inference=inference,
                val=mean_std(scores)[0], val_per_seed=scores,
                finite=all(r.record.finite for r in per_seed), infeasible=None,
                train_seconds=sum(r.record.train_seconds for r in per_seed),
                final_loss=float(np.mean([r.record.final_loss for r in per_seed])),
            ))
    for order, c in enumerate(cands):
        c.order = order
    return cands


def select(
    candidates: Sequence[Candidate], mae_guard: float | None = None, metric: str = "bmae"
) -> Candidate:
    """The candidate with the lowest validation ``metric`` (bMAE unless told; ties: the
    earliest in grid order); candidates whose training diverged or whose score is not finite
    never win unless all did. With ``mae_guard`` (the library's rule,
    :func:`dirloss.select_inference`), only the candidates whose validation MAE is within
    ``1 + mae_guard`` of the lowest compete."""

    def ok(c: Candidate) -> bool:
        return bool(c.finite and c.val and math.isfinite(c.val[metric]))

    limit = math.inf
    if mae_guard is not None and any(ok(c) for c in candidates):
        limit = (1 + mae_guard) * min(c.val["all_mae"] for c in candidates if ok(c) and c.val)

    def key(c: Candidate) -> tuple[int, float, int]:
        if ok(c) and c.val and c.val["all_mae"] <= limit:
            return (0, c.val[metric], c.order)
        return (1, math.inf, c.order)

    return min(candidates, key=key)
