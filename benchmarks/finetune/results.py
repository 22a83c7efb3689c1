"""The fine-tuning benchmark's result record: ``<out dir>/<method>-seed<k>.json``, one per
(method, seed), written as soon as the run ends and reused by a rerun with the same
settings."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.finetune.config import FinetuneConfig
from benchmarks.finetune.evaluation import SplitMetrics
from benchmarks.finetune.methods import ALL_METHODS

__all__ = [
    "EpochRecord",
    "FinetuneResult",
    "InferenceRecord",
    "is_done",
    "load_results",
    "result_path",
    "write_result",
]


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss, its seconds, and the dev errors of the head's own
    inference (a learning curve, not a selection)."""

    epoch: int
    train_loss: float
    train_seconds: float
    val_mae: float
    val_mse: float


@dataclasses.dataclass(frozen=True)
class InferenceRecord:
    """A grouped head's inference setting, how it was picked, and its dev group accuracy.

    ``val_scores`` (``select_inference``'s ``(bMAE, MAE)`` of every candidate) only for the
    library's rule."""

    inference: str
    tau: float
    rule: str
    val_scores: dict[str, list[float]] | None
    val_group_accuracy: float

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["val_scores"] is None:
            del out["val_scores"]
        return out


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """One fine-tuned (method, seed); metrics in score units.

    Attributes:
        method, label, seed: which run.
        config: the run's settings (a rerun reuses the file only if they match).
        target_mean, target_std: the training scores' standardisation.
        counts: pairs per split; train_counts: training pairs per 0.1-score bin.
        val, test: the metrics of the dev and test splits.
        inference: a grouped head's inference setting (``None`` for a linear head).
        history: one record per epoch.
        seconds, threads, versions: wall time, torch threads, package versions.
    """

    method: str
    label: str
    seed: int
    config: FinetuneConfig
    target_mean: float
    target_std: float
    counts: dict[str, int]
    train_counts: list[int]
    val: SplitMetrics
    test: SplitMetrics
    inference: InferenceRecord | None
    history: list[EpochRecord]
    seconds: float
    threads: int
    versions: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(
            config=self.config.as_dict(), val=self.val.to_json(), test=self.test.to_json(),
            inference=self.inference.to_json() if self.inference else {},
            history=[dataclasses.asdict(h) for h in self.history],
        )
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FinetuneResult:
        inference = d["inference"]
        return cls(**{
            **d,
            "config": FinetuneConfig.from_dict(d["config"]),
            "val": SplitMetrics.from_json(d["val"]),
            "test": SplitMetrics.from_json(d["test"]),
            "inference": InferenceRecord(**{"val_scores": None, **inference}) if inference
            else None,
            "history": [EpochRecord(**h) for h in d["history"]],
        })


def result_path(out_dir: Path, method: str, seed: int) -> Path:
    return out_dir / f"{method}-seed{seed}.json"


def is_done(path: Path, config: FinetuneConfig) -> bool:
    """Whether ``path`` holds a finished run with the settings ``config``."""
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text())["config"] == config.as_dict())
    except (ValueError, KeyError):
        return False


def write_result(path: Path, result: FinetuneResult) -> None:
    """Write atomically (an interrupted run never leaves half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


def load_results(out_dir: Path) -> dict[str, list[FinetuneResult]]:
    """``{method: [result per seed]}`` of every JSON in ``out_dir`` (table order)."""
    found: dict[str, list[FinetuneResult]] = {}
    for path in sorted(out_dir.glob("*-seed*.json")):
        r = FinetuneResult.from_json(json.loads(path.read_text()))
        found.setdefault(r.method, []).append(r)
    return {m: sorted(found[m], key=lambda r: r.seed) for m in ALL_METHODS if m in found}
