"""Speed and memory of the dirloss ops against the research-code baselines and the floor.

Times forward + backward (median and inter-quartile range over repeats, after warm-up) and
measures peak extra memory in a fresh subprocess (CPU: the process's peak RSS above the
set-up, reset through /proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated). The
variants of one size (ours, the floor, eager and compiled) are timed in alternation, so
that drift of a shared machine hits them alike; the Python-loop baselines run alone.

    python benchmarks/bench_ops.py                    # full CPU run (minutes on 2 cores)
    python benchmarks/bench_ops.py --quick            # CI smoke run
    python benchmarks/bench_ops.py --device cuda

Writes benchmarks/results/ops-<device>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.ops.cases import OPS, Case  # noqa: E402
from benchmarks.ops.measure import measure_memory, measure_memory_here  # noqa: E402
from benchmarks.ops.reporting import (  # noqa: E402
    extra_contrast_table,
    issue_targets,
    machine,
    tables,
)
from benchmarks.ops.runner import BASELINE_LOOPS, loop_skip_reason, plan, run  # noqa: E402

__all__ = [
    "BASELINE_LOOPS",
    "RESULTS",
    "extra_contrast_table",
    "issue_targets",
    "loop_skip_reason",
    "main",
    "measure_memory",
]

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (CI)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--ops", nargs="*", choices=list(OPS),
                        help="only these ops (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default results/ops-<device>.json)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.memory_case:  # the fresh process of measure_memory
        print(measure_memory_here(Case.from_json(json.loads(args.memory_case))))
        return
    start = time.perf_counter()
    cases = [c for c in plan(args.quick, args.device) if not args.ops or c.op in args.ops]
    rows = [row.to_json() for row in run(cases, args.quick, memory=not args.no_memory)]
    report = tables(rows) + "\n" + "\n".join(issue_targets(rows))
    print(report)
    out = args.out or RESULTS / f"ops-{args.device}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_ops.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out.write_text(json.dumps({"machine": machine(), "command": command.strip(),
                               "wall_s": time.perf_counter() - start, "rows": rows}, indent=1))
    print(f"\nwrote {out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
