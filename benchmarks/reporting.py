"""Stage 6 of the accuracy benchmark: the files a run writes, from the result records.

Per data set ``<out dir>/<dataset>.json`` (:class:`~benchmarks.results.DatasetResult`),
``<dataset>.md`` (:func:`markdown_table`), ``<img dir>/<dataset>-per-bin.png``
(:func:`plot_per_bin`) and ``<dataset>-tradeoff.png`` (:func:`plot_tradeoff`), both drawn
by the library's plots; over all data sets ``<out dir>/summary.md`` (:func:`summarise`).
Everything here reads the records only, so ``--report-only`` rebuilds it from the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.methods import METHODS
from benchmarks.results import DatasetResult, MethodResult
from benchmarks.selection import Chosen
from benchmarks.targets import (
    DIRLOSS,
    GROUP_DIR,
    VANILLA,
    check_balanced_targets,
    check_targets,
    dataset_checks,
)
from dirloss import plot_binned_error, plot_inference_tradeoff
from dirloss.inference import DEFAULT_MAE_GUARD

__all__ = [
    "load_results",
    "markdown_table",
    "merge_result",
    "plot_per_bin",
    "plot_tradeoff",
    "summarise",
    "write_dataset",
]

MAE_COLUMNS = ("all_mae", "many_mae", "medium_mae", "few_mae", "bmae", "all_gm")
MSE_COLUMNS = ("all_mse", "many_mse", "medium_mse", "few_mse")


def _fmt(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cells(m: MethodResult, keys: Sequence[str], digits: int) -> str:
    return " | ".join(_fmt(m.test_mean[k], m.test_std[k], digits) for k in keys)


def _digits(result: DatasetResult) -> int:
    """Decimals for a data set's table: about three significant digits of its MAE."""
    scale = abs(next(iter(result.methods.values())).test_mean["all_mae"])
    return 4 if scale < 0.1 else 3 if scale < 10 else 2


def _setting_str(chosen: Chosen, grouped: bool) -> str:
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in chosen.params.items()]
    if grouped:
        parts.append(str(chosen.inference))
    return ", ".join(parts)


def markdown_table(result: DatasetResult) -> str:
    """The per-data-set markdown report: MAE and MSE tables (mean ± std over seeds)."""
    d = _digits(result)
    stsb = result.kind == "stsb"
    counts = result.region_counts["test"]
    lines = [
        f"### {result.dataset}",
        "",
        f"Test split ({result.protocol.split} protocol): many / medium / few = "
        f"{counts['many']} / {counts['medium']} / {counts['few']} samples; "
        f"{result.protocol.seeds} seeds (mean ± std); selection on validation bMAE; "
        f"wall time {result.wall_seconds:.0f} s.",
        "",
        "| method | chosen setting | MAE all | MAE many | MAE med. | MAE few | bMAE | GM all |"
        + (" Pearson |" if stsb else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if stsb else ""),
    ]
    for name, m in result.methods.items():
        grouped = METHODS[name].grouped if name in METHODS else False
        row = f"| {name} | {_setting_str(m.chosen, grouped)} | {_cells(m, MAE_COLUMNS, d)} |"
        if stsb:
            row += f" {_fmt(m.test_mean['pearson'], m.test_std['pearson'], 3)} |"
        lines.append(row)
    lines += ["", "| method | MSE all | MSE many | MSE med. | MSE few |",
              "|---|---:|---:|---:|---:|"]
    for name, m in result.methods.items():
        lines.append(f"| {name} | {_cells(m, MSE_COLUMNS, d)} |")
    return "\n".join(lines) + "\n"


def summarise(results: Mapping[str, DatasetResult], *, wall: float | None = None,
              command: str = "") -> str:
    """All data sets: one bMAE line per table, the targets, the command and the machine."""
    lines = ["# DIR benchmark summary", ""]
    if command:
        lines += ["Command: `" + command + "`", ""]
    any_result = next(iter(results.values()), None)
    if any_result:
        mi = any_result.machine
        lines += [f"Machine: {mi.cpu} ({mi.cpus} logical CPUs visible, {mi.workers} worker "
                  f"processes x 1 thread), torch {mi.torch}.", ""]
    if wall is not None:
        lines += [f"Wall time of this invocation: {wall:.0f} s.", ""]
    names = [n for n in METHODS if any(n in r.methods for r in results.values())]
    lines += ["Test bMAE (label units, mean ± std over seeds); **bold** = best mean.", ""]
    lines += _metric_table(results, names, "bmae")
    balanced = any(r.protocol.split == "dir" for r in results.values())
    if balanced:
        for key, what in (("all_mae", "All"), ("few_mae", "few-shot")):
            lines += ["", f"Test {what} MAE (label units, mean ± std over seeds); **bold** = "
                      "best mean.", ""]
            lines += _metric_table(results, names, key)
    targets = check_balanced_targets(results) if balanced else check_targets(results)
    lines += ["", "## Targets", ""] + (targets or ["- (needs vanilla and dirloss)"])
    return "\n".join(lines) + "\n"


def _metric_table(results: Mapping[str, DatasetResult], names: Sequence[str],
                  key: str) -> list[str]:
    """One row a data set, one column a method, of the test ``key`` (mean ± std)."""
    lines = ["| data set | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for ds, r in results.items():
        d = _digits(r)
        best = min((n for n in names if n in r.methods), key=lambda n: r.methods[n].test_mean[key])
        cells = []
        for n in names:
            m = r.methods.get(n)
            s = "" if m is None else _fmt(m.test_mean[key], m.test_std[key], d)
            cells.append(f"**{s}**" if n == best else s)
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    return lines


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_per_bin(result: DatasetResult, path: Path,
                 methods: Sequence[str] = (VANILLA, GROUP_DIR, DIRLOSS)) -> Path | None:
    """Per-bin test MAE (mean ± std over seeds) against the label, over the training
    histogram, drawn by the library's :func:`dirloss.plot_binned_error` from the result."""
    present = [m for m in methods if m in result.methods]
    if not present:
        return None
    fig, ax = _pyplot().subplots(figsize=(8, 3.8), dpi=120)
    plot_binned_error(
        {f"{m} test MAE": result.methods[m].per_bin_mae_mean for m in present},
        result.shot["bin_edges"], result.train_counts,
        bands={f"{m} test MAE": result.methods[m].per_bin_mae_std for m in present},
        bin_regions=result.bin_regions, ax=ax,
    )
    ax.set_title(f"{result.dataset}: per-bin test MAE ({result.protocol.seeds} seeds, "
                 f"{result.protocol.split} protocol) over the training label histogram",
                 fontsize=9)
    return _save(fig, path)


def plot_tradeoff(result: DatasetResult, path: Path) -> Path | None:
    """Overall against few-shot MAE, drawn by the library's
    :func:`dirloss.plot_inference_tradeoff`: left, dirloss's inference candidates of its
    chosen training on validation (its knob, what a user sees before testing), starred the
    pick, shaded what the 2 % guard excludes; right, every method's pick on test."""
    if DIRLOSS not in result.methods:
        return None
    dl = result.methods[DIRLOSS]
    knob = {c.inference or "": (c.val["all_mae"], c.val["few_mae"]) for c in dl.grid
            if c.setting == dl.chosen.setting and c.val is not None}
    finite = {k: v for k, v in knob.items() if all(math.isfinite(x) for x in v)}
    picks = {m: (r.test_mean["all_mae"], r.test_mean["few_mae"])
             for m, r in result.methods.items()}
    picks = {k: v for k, v in picks.items() if all(math.isfinite(x) for x in v)}
    if not finite or DIRLOSS not in picks:
        return None
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(11, 4.2), dpi=120)
    chosen = dl.chosen.inference if dl.chosen.inference in finite else None
    plot_inference_tradeoff(finite, chosen=chosen, max_mae_increase=DEFAULT_MAE_GUARD,
                            xlabel="validation MAE (all)", ylabel="validation MAE (few-shot)",
                            ax=left)
    left.set_title("dirloss's inference candidates (its chosen training)", fontsize=9)
    plot_inference_tradeoff(picks, chosen=DIRLOSS, xlabel="test MAE (all)",
                            ylabel="test MAE (few-shot)", ax=right)
    right.set_title(f"every method's pick ({result.protocol.seeds} seeds)", fontsize=9)
    fig.suptitle(f"{result.dataset} ({result.protocol.split} protocol): all against few-shot "
                 "MAE", fontsize=10)
    return _save(fig, path)


MERGE_KEYS = ("seeds", "select_seeds", "config", "max_grid", "max_train", "quick", "split")
"""The protocol fields two results must share to be merged."""


def merge_result(path: Path, fresh: DatasetResult) -> DatasetResult:
    """``fresh`` with the methods of the earlier result at ``path`` that this run did not
    re-run (``--merge``: re-run some methods of a finished data set, keep the others).
    Only results of the same protocol are merged; the commands are both recorded."""
    if not path.is_file():
        return fresh
    old = DatasetResult.from_json(json.loads(path.read_text()))
    if any(getattr(old.protocol, k) != getattr(fresh.protocol, k) for k in MERGE_KEYS):
        raise SystemExit(
            f"--merge: {path} was made with another protocol; re-run all methods instead"
        )
    methods = {**old.methods, **fresh.methods}
    merged = {m: methods[m] for m in [*METHODS, *methods] if m in methods}
    return dataclasses.replace(
        fresh,
        methods=merged,
        command=f"{old.command}; then {fresh.command}",
        wall_seconds=old.wall_seconds + fresh.wall_seconds,
        checks=dataset_checks(fresh.kind, merged),
    )


def write_dataset(result: DatasetResult, out_dir: Path, img_dir: Path, *, plots: bool) -> None:
    """``<dataset>.json`` and ``<dataset>.md`` in ``out_dir``, the plot in ``img_dir``."""
    text = json.dumps(result.to_json(), indent=1, allow_nan=True)
    (out_dir / f"{result.dataset}.json").write_text(text + "\n")
    (out_dir / f"{result.dataset}.md").write_text(markdown_table(result))
    if plots:
        plot_per_bin(result, img_dir / f"{result.dataset}-per-bin.png")
        plot_tradeoff(result, img_dir / f"{result.dataset}-tradeoff.png")


KIND_ORDER = {"stsb": 0, "tabular": 1, "synthetic": 2}


def load_results(out_dir: Path, fresh: Mapping[str, DatasetResult]) -> dict[str, DatasetResult]:
    """This run's results plus any other data sets already in ``out_dir`` (for the summary),
    STS-B first, then the tables, then the synthetic task."""
    out: dict[str, DatasetResult] = {}
    for p in sorted(out_dir.glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and "methods" in r and "kind" in r:
            out[r["dataset"]] = DatasetResult.from_json(r)
    out.update(fresh)
    return dict(sorted(out.items(), key=lambda kv: (KIND_ORDER.get(kv[1].kind, 3), kv[0])))
