"""The accuracy benchmark's result records: what ``<out dir>/<dataset>.json`` holds.

:class:`DatasetResult` is one data set's file; it holds a :class:`MethodResult` per method
(its search, its pick and its test scores), the :class:`Protocol`, the :class:`MachineInfo`
and the :class:`Checks` of the library's targets. ``to_json`` writes the file's layout key
for key; ``from_json`` reads it back (the report rebuilds tables and plots from it alone).
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from benchmarks.datasets import DataSizes
from benchmarks.evaluation import Scores, SeedResult, bin_regions, mean_std
from benchmarks.selection import Candidate, Chosen
from benchmarks.training import TrainConfig

__all__ = ["Checks", "DatasetResult", "MachineInfo", "MethodResult", "Protocol"]


@dataclasses.dataclass(frozen=True)
class MachineInfo:
    """Where a result was computed."""

    cpu: str
    cpus: int | None
    workers: int
    threads_per_worker: int
    torch: str
    python: str
    platform: str

    @classmethod
    def current(cls, workers: int) -> MachineInfo:
        cpu = platform.processor() or "unknown"
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        return cls(cpu, os.cpu_count(), workers, 1, torch.__version__,
                   platform.python_version(), platform.platform())


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a data set was run (two results merge only when these agree, see ``--merge``)."""

    seeds: int
    selection: str
    select_seeds: int
    max_grid: int | None
    quick: bool
    max_train: int | None
    config: TrainConfig
    optimizer: str
    target_scaling: dict[str, float]  # {"a", "b"}: label = a * standardised + b
    split: str = "natural"  # benchmarks.datasets.PROTOCOLS; older files: natural

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Protocol:
        config = dict(d["config"], hidden=tuple(d["config"]["hidden"]))
        return cls(**{**d, "config": TrainConfig(**config)})


@dataclasses.dataclass
class MethodResult:
    """One method on one data set: its search on validation, its pick, its test scores.

    Attributes:
        label: the method's description.
        grid: every candidate of the search, with its validation scores.
        chosen: the selected candidate.
        test_mean, test_std: test scores, mean and sample std over the seeds.
        test_per_seed: ``(seed, test scores)`` of every seed.
        per_bin_mae_mean, per_bin_mae_std: per-bin test MAE over the seeds.
        train_seconds: training time of all its runs.
    """

    label: str
    grid: list[Candidate]
    chosen: Chosen
    test_mean: Scores
    test_std: Scores
    test_per_seed: list[tuple[int, Scores]]
    per_bin_mae_mean: list[float]
    per_bin_mae_std: list[float]
    train_seconds: float

    @classmethod
    def from_seeds(cls, label: str, grid: list[Candidate], chosen: Chosen,
                   seeds: list[SeedResult], train_seconds: float) -> MethodResult:
        """Aggregate the test results of the chosen setting's seeds."""
        mean, std = mean_std([s.test for s in seeds])
        per_bin = np.array([s.per_bin_mae for s in seeds], dtype=np.float64)
        per_bin_mean = (np.nanmean(per_bin, axis=0) if np.isfinite(per_bin).any()
                        else per_bin[0]).tolist()
        per_bin_std = (np.nanstd(per_bin, axis=0, ddof=1).tolist() if len(seeds) > 1
                       else [0.0] * per_bin.shape[1])
        return cls(label, grid, chosen, mean, std, [(s.seed, s.test) for s in seeds],
                   per_bin_mean, per_bin_std, train_seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "grid": [c.to_json() for c in self.grid],
            "chosen": self.chosen.to_json(),
            "test_mean": self.test_mean,
            "test_std": self.test_std,
            "test_per_seed": [{"seed": seed, **scores} for seed, scores in self.test_per_seed],
            "per_bin_mae_mean": self.per_bin_mae_mean,
            "per_bin_mae_std": self.per_bin_mae_std,
            "train_seconds": self.train_seconds,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MethodResult:
        per_seed = [(int(row["seed"]), {k: v for k, v in row.items() if k != "seed"})
                    for row in d["test_per_seed"]]
        return cls(d["label"], [Candidate.from_json(c) for c in d["grid"]],
                   Chosen.from_json(d["chosen"]), d["test_mean"], d["test_std"], per_seed,
                   d["per_bin_mae_mean"], d["per_bin_mae_std"], d["train_seconds"])


@dataclasses.dataclass(frozen=True)
class Checks:
    """The targets of the library's defaults that one data set can judge (see
    :func:`benchmarks.targets.dataset_checks`); the last three on STS-B-DIR only."""

    all_mae_vs_vanilla: float
    all_mae_not_2pct_worse_than_vanilla: bool
    bmae_vs_vanilla: float
    bmae_beats_vanilla: bool
    bmae_best_method: str
    bmae_best_std: float
    bmae_best_or_within_1std: bool
    few_mae_vs_vanilla: float | None = None
    few_mae_not_above_vanilla: bool | None = None
    all_mae_5pct_below_vanilla: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass
class DatasetResult:
    """Everything about one data set: ``<out dir>/<dataset>.json``.

    Attributes:
        dataset, spec, kind: which data set (see :class:`benchmarks.datasets.DataSpec`).
        command: the command line(s) that produced it.
        machine: where it ran.
        protocol: how it ran.
        data: feature count and split sizes.
        shot: the shot-metric keyword arguments (``bin_edges`` as a list).
        region_counts: ``{"val" | "test": {region: samples}}``.
        train_counts: training labels per bin.
        bin_regions: the shot region of every bin (``None``: in no region).
        methods: per method, in table order.
        wall_seconds: wall time of the data set.
        checks: the targets of the library's defaults (``None`` without vanilla and dirloss).
    """

    dataset: str
    spec: str
    kind: str
    command: str
    machine: MachineInfo
    protocol: Protocol
    data: DataSizes
    shot: dict[str, Any]
    region_counts: dict[str, dict[str, int]]
    train_counts: list[int]
    bin_regions: list[str | None]
    methods: dict[str, MethodResult]
    wall_seconds: float
    checks: Checks | None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "spec": self.spec,
            "kind": self.kind,
            "command": self.command,
            "machine": dataclasses.asdict(self.machine),
            "protocol": self.protocol.to_json(),
            "data": dataclasses.asdict(self.data),
            "shot": self.shot,
            "region_counts": self.region_counts,
            "train_counts": self.train_counts,
            "bin_regions": self.bin_regions,
            "methods": {name: m.to_json() for name, m in self.methods.items()},
            "wall_seconds": self.wall_seconds,
            "checks": self.checks.to_json() if self.checks else {},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DatasetResult:
        """Read a result file's content; files from before ``bin_regions`` was recorded get
        it recomputed from the training counts."""
        regions = d.get("bin_regions") or bin_regions(np.asarray(d["train_counts"]), d["shot"])
        return cls(
            dataset=d["dataset"], spec=d["spec"], kind=d["kind"], command=d["command"],
            machine=MachineInfo(**d["machine"]), protocol=Protocol.from_json(d["protocol"]),
            data=DataSizes(**d["data"]), shot=dict(d["shot"]),
            region_counts=d["region_counts"], train_counts=list(d["train_counts"]),
            bin_regions=list(regions),
            methods={name: MethodResult.from_json(m) for name, m in d["methods"].items()},
            wall_seconds=d["wall_seconds"],
            checks=Checks(**d["checks"]) if d.get("checks") else None,
        )
