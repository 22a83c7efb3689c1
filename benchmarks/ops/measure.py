"""Measuring the ops benchmark's cases: time in alternation, peak memory in a fresh process.

Times forward + backward (median and inter-quartile range over repeats, after warm-up). The
variants of one size are timed in alternation (ABAB...), so that drift of a shared machine
hits them alike. Peak extra memory is measured in a fresh subprocess (CPU: the process's
peak RSS above the set-up, reset through /proc/self/clear_refs; CUDA:
``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.ops.cases import Case, make_step

__all__ = ["Timing", "measure_memory", "measure_memory_here", "time_case", "time_interleaved"]

CLI = Path(__file__).resolve().parents[1] / "bench_ops.py"
"""The command line; a memory measurement runs it with ``--memory-case`` in a fresh
process."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """Milliseconds per step: median and quartiles over the timed repeats."""

    median_ms: float
    q1_ms: float
    q3_ms: float

    @classmethod
    def of(cls, times: Sequence[float]) -> Timing:
        """The summary of step times in seconds."""
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        return cls(1e3 * statistics.median(times), 1e3 * q[0], 1e3 * q[2])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    cases: Sequence[Case], warmup: int, reps: int, min_total_s: float = 0.0
) -> list[Timing]:
    """Time several cases in alternation (ABAB...), so slow drifts of a shared machine hit
    every variant alike; the ratio of medians is then a fair comparison. Sub-millisecond
    steps get more repeats (and a tenth of them as more warm-up), up to ``min_total_s`` of
    timed steps, so that the median is not that of a handful of cold calls."""
    torch._dynamo.reset()  # each case compiles fresh closures: do not pile up recompiles
    steps = [make_step(case) for case in cases]
    device = cases[0].device
    for _ in range(warmup):
        for step in steps:
            step()
    _sync(device)
    if min_total_s:
        start = time.perf_counter()
        for step in steps:
            step()
        _sync(device)
        per_round = time.perf_counter() - start
        reps = max(reps, min(2000, int(min_total_s / max(per_round, 1e-9))))
        for _ in range(reps // 10):
            for step in steps:
                step()
        _sync(device)
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(reps):
        for step, acc in zip(steps, times):
            start = time.perf_counter()
            step()
            _sync(device)
            acc.append(time.perf_counter() - start)
    return [Timing.of(t) for t in times]


def time_case(case: Case, warmup: int, reps: int, min_total_s: float = 0.0) -> Timing:
    """Time one case on its own."""
    return time_interleaved([case], warmup, reps, min_total_s)[0]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory_here(case: Case) -> float:
    """Peak extra memory (MB) of one step, measured in this (fresh) process."""
    step = make_step(case)
    if case.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    step()  # first call allocates caches and lazy state; measure the second
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    step()
    return (_rss_kib("VmHWM") - base) / 1024


def measure_memory(case: Case | Mapping[str, Any]) -> float:
    """Peak extra memory (MB) of one step of ``case`` (or its JSON form), in a fresh
    process."""
    spec = case.to_json() if isinstance(case, Case) else dict(case)
    out = subprocess.run(
        [sys.executable, str(CLI), "--memory-case", json.dumps(spec)],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])
