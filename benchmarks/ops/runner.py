"""Running the ops benchmark: which cases a run holds (:func:`plan`), which sizes of the
O(n^3) loop are skipped (:func:`loop_skip_reason`), and the run (:func:`run`) that gives
one :class:`Row` per case.

The variants of one size (ours, the floor, eager and compiled) are timed in alternation, so
that drift of a shared machine hits them alike; the Python-loop baselines run alone, right
after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, TypeVar

from benchmarks.ops.cases import Case
from benchmarks.ops.field_cases import FEATURE_OPS, FIELD_OPS, field_impls
from benchmarks.ops.measure import Timing, measure_memory, time_case, time_interleaved

T = TypeVar("T")

try:
    from tqdm import tqdm
except ImportError:  # the bench extra brings tqdm; run without a bar otherwise

    def tqdm(iterable: Iterable[T], **_: Any) -> Iterable[T]:
        return iterable


__all__ = [
    "BASELINE_LOOPS",
    "CONTRAST_EXTRA",
    "EAGER_MEASURED",
    "FIELD_D",
    "FIELD_SIZES",
    "LOOP_BUDGET_S",
    "LOOP_MEMORY_BUDGET_GB",
    "MIN_TIMED_S",
    "SPANS",
    "Row",
    "loop_skip_reason",
    "plan",
    "run",
]

LOOP_BUDGET_S = 60.0
"""Skip the O(n^3) loop where one forward+backward would exceed this."""
LOOP_MEMORY_BUDGET_GB = 8.0
"""The loop's autograd graph keeps one n x (n - 1) float mask per column: O(n^3) memory
(34 GB at n = 2048, which the 24 GB machine this was written on cannot hold)."""
SPANS = [16, 64, 128, 256, 512]
"""Label spans of the "span" op (the inferred-groups cutoff)."""
MIN_TIMED_S = 0.5
"""Fast cases repeat until about this much time is timed (full runs)."""

BASELINE_LOOPS = ("rnc-loop", "loop", "official-loop")
"""Python loops: timed alone, they churn the caches."""
FIELD_SIZES = [256, 1024, 4096]
"""Batch sizes of the newer losses' ops (quick runs: 256, the size of issue 17's target)."""
FIELD_D = 128
"""Feature width of the newer losses' ops on features."""
CONTRAST_EXTRA = ("dirloss-default", "continuous")
"""Contrastive rows beside the main table (issue 12): the default call without num_groups
and the continuous-label (sort) kernel, timed in alternation with dirloss and the floor."""
EAGER_MEASURED = ("dirloss", "floor", "mse", "group-dir", *CONTRAST_EXTRA)
"""The variants whose peak memory is measured."""

LoopKey = tuple[str, str, Optional[int], Optional[int]]
"""``(op, impl, n, d)`` of a timed loop."""


@dataclasses.dataclass
class Row:
    """One measured case: its timing (or why it was skipped) and its peak extra memory."""

    case: Case
    timing: Timing | None = None
    interleaved: bool = False
    skipped: str | None = None
    peak_extra_mb: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as the JSON file holds it: the case's keys, then what was measured."""
        out = self.case.to_json()
        if self.timing is not None:
            out.update(dataclasses.asdict(self.timing))
        if self.interleaved:
            out["interleaved"] = True
        if self.skipped is not None:
            out["skipped"] = self.skipped
        if self.peak_extra_mb is not None:
            out["peak_extra_mb"] = self.peak_extra_mb
        return out


def plan(quick: bool, device: str) -> list[Case]:
    """Every case of a run: full, or the CI-sized ``quick`` one."""
    sizes = [64, 256] if quick else [64, 256, 1024, 2048, 4096]
    dims = [128] if quick else [128, 512]
    impls = ["dirloss", "floor", "rnc-loop", *CONTRAST_EXTRA] + (
        [] if quick else ["dirloss+compile", "floor+compile"]
    )
    cases = [Case("contrastive", impl, device, n=n, d=d)
             for d in dims for n in sizes for impl in impls]
    if not quick:
        cases.append(Case("contrastive", "dirloss", device, n=16384, d=128, chunk=1024,
                          memory_only=True))
    cases += [Case("span", impl, device, n=256 if quick else 1024, d=128, span=span)
              for span in ([16, 256] if quick else SPANS) for impl in ("grouped", "continuous")]
    cases += [Case("soft_label", impl, device, n=n)
              for n in ([256] if quick else [256, 4096]) for impl in ("dirloss", "loop", "floor")]
    cases += [Case("head", impl, device, n=n, d=512)
              for n in ([256] if quick else [256, 4096]) for impl in ("linear", "multi-expert")]
    models = ["mlp"] if quick else ["mlp", "cnn"]
    variants = ["mse", "group-dir"] + ([] if quick else ["mse+compile", "group-dir+compile"])
    cases += [Case("train_step", v, device, model=m) for m in models for v in variants]
    if not quick:  # what bounds the MLP step
        cases += [Case("train_step", v, device, model="mlp")
                  for v in ("mse+floor", "group-dir-no-grc")]
    cases += [Case(op, impl, device, n=n, d=FIELD_D if op in FEATURE_OPS else None)
              for op in FIELD_OPS for n in ([256] if quick else FIELD_SIZES)
              for impl in field_impls(op, compiled=not quick)]
    return cases


def loop_skip_reason(
    case: Case | Mapping[str, Any], timed: Mapping[LoopKey, Timing | Mapping[str, Any]]
) -> str:
    """Why the O(n^3) loop is skipped at this size ("" to run it): memory, or time
    extrapolated from the largest size timed so far. ``case`` and the ``timed`` loops
    (``(op, impl, n, d) -> timing``) may be given in their JSON form."""
    if not isinstance(case, Case):
        case = Case.from_json({"op": "contrastive", "impl": "rnc-loop", "device": "cpu", **case})
    n = case.n or 0
    graph_gb = 4 * n * (n - 1) ** 2 / 1e9
    if graph_gb > LOOP_MEMORY_BUDGET_GB:
        return f"its autograd graph would hold ~{graph_gb:.0f} GB of masks"
    done = [(m or 0, t.median_ms if isinstance(t, Timing) else float(t["median_ms"]))
            for (_, impl, m, d), t in timed.items() if impl == "rnc-loop" and d == case.d]
    if done:
        n0, ms = max(done)
        if ms / 1e3 * (n / n0) ** 3 > LOOP_BUDGET_S:
            return f"one step extrapolated over {LOOP_BUDGET_S:.0f} s"
    return ""


def _repeats(case: Case, quick: bool) -> tuple[int, int]:
    if quick:
        return 1, 3
    slow = (case.n or 0) >= 2048 or case.op == "train_step"
    return (2, 7) if slow else (3, 15)


def run(cases: Sequence[Case], quick: bool, memory: bool) -> list[Row]:
    """Time every case: the variants of one size (ours, the floor, compiled or not) in
    alternation, the Python-loop baselines alone right after; then measure memory."""
    rows = [Row(case) for case in cases]
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        c = row.case
        if not c.memory_only:
            groups.setdefault((c.op, c.n, c.d, c.model, c.span), []).append(row)
    timed: dict[LoopKey, Timing] = {}
    min_total_s = 0.0 if quick else MIN_TIMED_S
    for members in tqdm(list(groups.values()), desc="sizes"):
        together = [r for r in members if r.case.impl not in BASELINE_LOOPS]
        if together:
            warmup, reps = _repeats(together[0].case, quick)
            if any(r.case.impl.endswith("+compile") for r in together):
                warmup += 2
            timings = time_interleaved([r.case for r in together], warmup, reps, min_total_s)
            for row, timing in zip(together, timings):
                row.timing, row.interleaved = timing, True
        for row in (r for r in members if r.case.impl in BASELINE_LOOPS):
            c = row.case
            skip = loop_skip_reason(c, timed) if c.impl == "rnc-loop" else ""
            if skip:
                row.skipped = skip
                continue
            row.timing = time_case(c, 1, 3, min_total_s)
            timed[(c.op, c.impl, c.n, c.d)] = row.timing
    for row in tqdm(rows, desc="memory") if memory else []:
        if row.case.op in ("contrastive", "train_step") and row.case.impl in EAGER_MEASURED:
            row.peak_extra_mb = measure_memory(row.case)
    return rows
