"""The ops benchmark's report: markdown tables and the targets of issues 12 and 17.

Everything here reads the rows as the JSON file holds them (:meth:`.runner.Row.to_json`),
so a report can be rebuilt from a results file; ``"-"`` marks what a run did not measure.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from benchmarks.ops.field_cases import BASELINES, FIELD_OPS, FLOORED, TITLES
from benchmarks.ops.runner import CONTRAST_EXTRA

__all__ = [
    "extra_contrast_table",
    "field_table",
    "field_targets",
    "issue_targets",
    "machine",
    "span_table",
    "tables",
]

JsonRow = Mapping[str, Any]
"""One row of the JSON file: the case's keys and what was measured."""

MAIN_IMPLS = ["dirloss", "floor", "rnc-loop", "dirloss+compile", "floor+compile"]
"""The contrastive variants of the main table, in column order."""


def _fmt(row: JsonRow) -> str:
    if "skipped" in row:
        return "skipped"
    if "median_ms" not in row:
        return "-"
    return f"{row['median_ms']:.2f} ({row['q1_ms']:.2f}-{row['q3_ms']:.2f})"


def _ratio(a: JsonRow, b: JsonRow, digits: int = 2) -> str:
    """``a``'s median time over ``b``'s, or "-" when either was not timed."""
    if "median_ms" in a and "median_ms" in b:
        return f"{a['median_ms'] / b['median_ms']:.{digits}f}x"
    return "-"


def _mb(row: JsonRow) -> str:
    return f"{row['peak_extra_mb']:.0f}" if "peak_extra_mb" in row else "-"


def _n2_floats(row: JsonRow) -> str:
    """Peak extra memory in units of N^2 float32 values (the unit of issue 12's targets)."""
    if "peak_extra_mb" not in row:
        return "-"
    return f"{row['peak_extra_mb'] * 2**20 / (4 * row['n'] ** 2):.1f}"


def _pick(keyed: Mapping[tuple[Any, ...], JsonRow], impl: str, *, n: int, d: int) -> JsonRow:
    return keyed.get((impl, n, d), {})


def _contrastive_table(contrast: Sequence[JsonRow]) -> list[str]:
    impls = sorted({r["impl"] for r in contrast}, key=MAIN_IMPLS.index)
    out = ["### GroupContrastiveLoss forward+backward, ms: median (IQR)\n",
           "| D | N | " + " | ".join(impls) + " | vs floor | vs loop | compiled vs floor "
           "| peak MB (ours / floor) |",
           "|---" * (len(impls) + 6) + "|"]
    keyed = {(r["impl"], r["n"], r["d"]): r for r in contrast}
    for d, n in sorted({(r["d"], r["n"]) for r in contrast}):
        get = functools.partial(_pick, keyed, n=n, d=d)
        ours, floor, loop = get("dirloss"), get("floor"), get("rnc-loop")
        nan = float("nan")
        mem = f"{ours.get('peak_extra_mb', nan):.0f} / {floor.get('peak_extra_mb', nan):.0f}"
        cells = " | ".join(_fmt(get(i)) for i in impls)
        compiled = _ratio(get("dirloss+compile"), get("floor+compile"))
        out.append(f"| {d} | {n} | {cells} | {_ratio(ours, floor)} | {_ratio(loop, ours, 0)} "
                   f"| {compiled} | {mem} |")
    return out


def _ratio_tables(rows: Sequence[JsonRow]) -> list[str]:
    """Soft labels, heads and training steps: each variant against the first of its case."""
    out = []
    for op, title in (("soft_label", "DescendingSoftLabelLoss vs per-sample loop"),
                      ("head", "MultiExpertHead vs nn.Linear(512, 1)"),
                      ("train_step", "One training step (batch 256)")):
        out += [f"\n### {title}, ms: median (IQR)\n", "| case | impl | time | ratio to first "
                "| peak MB |", "|---|---|---|---|---|"]
        groups: dict[str, list[JsonRow]] = {}
        for r in (r for r in rows if r["op"] == op):
            key = r.get("model") or f"N={r['n']}"
            compiled = " compiled" if r["impl"].endswith("+compile") else ""
            groups.setdefault(key + compiled, []).append(r)
        for key, members in groups.items():
            for r in members:
                out.append(f"| {key} | {r['impl']} | {_fmt(r)} | "
                           f"{_ratio(r, members[0], 3)} | {_mb(r)} |")
    return out


def tables(rows: Sequence[JsonRow]) -> str:
    """Every table of a run, in markdown."""
    every = [r for r in rows if r["op"] == "contrastive" and not r.get("memory_only")]
    out = _contrastive_table([r for r in every if r["impl"] not in CONTRAST_EXTRA])
    for r in rows:
        if r.get("memory_only"):
            out.append(f"\nChunked (chunk_size={r['chunk']}) N={r['n']}, D={r['d']}: peak extra "
                       f"memory {r.get('peak_extra_mb', float('nan')):.0f} MB")
    out += extra_contrast_table(every)
    out += span_table([r for r in rows if r["op"] == "span"])
    out += _ratio_tables(rows)
    out += field_table(rows)
    return "\n".join(out)


def extra_contrast_table(contrast: Sequence[JsonRow]) -> list[str]:
    """The default call (no num_groups) and the continuous kernel, against dirloss with
    num_groups and the floor of the same size (timed in alternation with them)."""
    keyed = {(r["impl"], r["n"], r["d"]): r for r in contrast}
    sizes = sorted({(r["d"], r["n"]) for r in contrast if r["impl"] in CONTRAST_EXTRA})
    if not sizes:
        return []
    out = ["\n### Default call and continuous labels, forward+backward, ms: median (IQR)\n",
           "`dirloss-default`: `group_contrastive_loss(features, groups)`, integer groups "
           "without `num_groups`; `continuous`: real-valued labels (the sort kernel).\n",
           "| D | N | dirloss-default | continuous | default vs floor | continuous vs dirloss "
           "| peak MB (default / continuous) | peak N^2 floats (default / continuous) |",
           "|---|---|---|---|---|---|---|---|"]
    for d, n in sizes:
        get = functools.partial(_pick, keyed, n=n, d=d)
        default, cont = get("dirloss-default"), get("continuous")
        out.append(f"| {d} | {n} | {_fmt(default)} | {_fmt(cont)} "
                   f"| {_ratio(default, get('floor'))} | {_ratio(cont, get('dirloss'))} "
                   f"| {_mb(default)} / {_mb(cont)} "
                   f"| {_n2_floats(default)} / {_n2_floats(cont)} |")
    return out


def span_table(rows: Sequence[JsonRow]) -> list[str]:
    """Fused kernel (G = span) against the continuous kernel, by the labels' span."""
    if not rows:
        return []
    keyed = {(r["impl"], r["span"]): r for r in rows}
    n, d = rows[0]["n"], rows[0]["d"]
    out = [f"\n### Integer labels by span: fused kernel (G = span) vs continuous, N={n}, D={d}, "
           "ms: median (IQR)\n",
           "| span | grouped | continuous | grouped / continuous |", "|---|---|---|---|"]
    for span in sorted({r["span"] for r in rows}):
        grouped, cont = keyed.get(("grouped", span), {}), keyed.get(("continuous", span), {})
        out.append(f"| {span} | {_fmt(grouped)} | {_fmt(cont)} | {_ratio(grouped, cont)} |")
    return out


def issue_targets(rows: Sequence[JsonRow]) -> list[str]:
    """Issue 12's done-when ratios from this run's rows ("-" where a size was not run)."""
    keyed = {(r["op"], r["impl"], r.get("n"), r.get("d"), r.get("model")): r for r in rows
             if not r.get("memory_only")}

    def get(impl: str, n: int, d: int) -> JsonRow:
        return keyed.get(("contrastive", impl, n, d, None), {})

    def step(impl: str) -> JsonRow:
        return keyed.get(("train_step", impl, None, None, "mlp"), {})

    out = ["\n### Issue 12 targets (this run)\n", "| target | limit | measured |", "|---|---|---|"]
    for n in (256, 1024, 2048):
        out.append(f"| default call vs floor, N={n}, D=512 | <= 1.5x "
                   f"| {_ratio(get('dirloss-default', n, 512), get('floor', n, 512))} |")
    out.append(f"| default call peak memory, N=4096, D=128 | <= 4 N^2 floats "
               f"| {_n2_floats(get('dirloss-default', 4096, 128))} |")
    out.append(f"| continuous vs integer kernel, N=1024, D=512 | <= 2.5x "
               f"| {_ratio(get('continuous', 1024, 512), get('dirloss', 1024, 512))} |")
    out.append(f"| continuous peak memory, N=4096, D=128 | <= 8 N^2 floats "
               f"| {_n2_floats(get('continuous', 4096, 128))} |")
    out.append(f"| integer kernel vs floor, N=256, D=128 | <= 1.1x "
               f"| {_ratio(get('dirloss', 256, 128), get('floor', 256, 128))} |")
    out.append(f"| MLP step, GroupDIRLoss vs MSE, eager | <= 1.5x "
               f"| {_ratio(step('group-dir'), step('mse'))} |")
    out.append(f"| (bound) MLP step, MSE + the contrastive floor vs MSE | - "
               f"| {_ratio(step('mse+floor'), step('mse'))} |")
    return out + field_targets(rows)


def _field_keyed(rows: Sequence[JsonRow]) -> dict[tuple[Any, ...], JsonRow]:
    return {(r["op"], r["impl"], r["n"]): r for r in rows if r["op"] in FIELD_OPS}


def field_table(rows: Sequence[JsonRow]) -> list[str]:
    """The newer losses (issue 17): dirloss against the official code's way of computing the
    same thing and, for the losses with an N x N core, the floor."""
    keyed = _field_keyed(rows)
    if not keyed:
        return []
    out = ["\n### Newer losses vs their official code, forward+backward, ms: median (IQR)\n",
           "`official code`: its Python loops (`official-loop`, timed alone) for lds_mse, fds, "
           "fds_update, ranksim and conr; its vectorised code (`official`, timed in alternation "
           "with dirloss) for bmc, bni and gai. `floor`: the N x N core alone. `fds_update`: "
           "one epoch's statistics of N features (no backward).\n",
           "| loss | op | N | dirloss | official code | floor | dirloss+compile | vs official "
           "| vs floor |", "|---" * 9 + "|"]
    for op in FIELD_OPS:
        for n in sorted({n for (o, _, n) in keyed if o == op}):
            get = functools.partial(_field_get, keyed, op, n)
            ours, official, floor = get("dirloss"), get(BASELINES[op]), get("floor")
            floor_time, vs_floor = ((_fmt(floor), _ratio(ours, floor)) if op in FLOORED
                                    else ("n/a", "n/a"))
            out.append(f"| {TITLES[op]} | {op} | {n} | {_fmt(ours)} | {_fmt(official)} "
                       f"| {floor_time} | {_fmt(get('dirloss+compile'))} "
                       f"| {_ratio(ours, official)} | {vs_floor} |")
    return out


def _field_get(keyed: Mapping[tuple[Any, ...], JsonRow], op: str, n: int, impl: str) -> JsonRow:
    return keyed.get((op, impl, n), {})


def field_targets(rows: Sequence[JsonRow], n: int = 256) -> list[str]:
    """Issue 17's speed target: no newer loss slower than its official code at N = ``n``;
    MET or MISSED per loss, "-" where a loss was not timed at that size."""
    keyed = _field_keyed(rows)
    out = ["\n### Issue 17 targets (this run)\n", "| target | limit | measured |", "|---|---|---|"]
    missed, met = [], 0
    for op in FIELD_OPS:
        get = functools.partial(_field_get, keyed, op, n)
        ours, official = get("dirloss"), get(BASELINES[op])
        ratio = _ratio(ours, official)
        if ratio != "-":
            if ours["median_ms"] > official["median_ms"]:
                missed.append(op)
                ratio += " MISSED"
            else:
                met += 1
                ratio += " MET"
        out.append(f"| {TITLES[op]} ({op}) vs official code, N={n} | <= 1x | {ratio} |")
    if missed:
        overall = "MISSED: " + ", ".join(missed)
    elif met == len(FIELD_OPS):
        overall = "MET"
    else:
        overall = f"- ({met} of {len(FIELD_OPS)} timed, none slower)" if met else "-"
    out.append(f"| none slower than the official code, N={n} | all <= 1x | {overall} |")
    return out


def machine() -> dict[str, str]:
    """Where the run was measured: CPU model, torch threads, versions (and the GPU)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "threads": str(torch.get_num_threads()), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
