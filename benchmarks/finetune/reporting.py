"""The fine-tuning benchmark's report: ``summary.md`` (tables, the paired verdicts) and the
per-bin plot, from the result files alone (:func:`summarize`)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from benchmarks.data import stsb_shot_kwargs
from benchmarks.finetune.config import DEFAULT_PLOT
from benchmarks.finetune.methods import ALL_METHODS
from benchmarks.finetune.results import FinetuneResult, load_results
from dirloss.metrics import REGIONS

__all__ = ["COLUMNS", "summarize", "verdict"]

COLUMNS = [f"{r}_{m}" for m in ("mse", "mae") for r in ("all", *REGIONS)] + ["pearson"]
VERDICT_COLUMNS = ("all_mse", "many_mse", "medium_mse", "few_mse", "all_mae", "few_mae",
                   "pearson")


def _value(r: FinetuneResult, key: str, split: str = "test") -> float:
    metrics = r.val if split == "val" else r.test
    if key == "pearson":
        return float(metrics.pearson)
    region, metric = key.split("_")
    return float(getattr(metrics.region(region), metric))


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or np.all(np.isnan(a)):
        return "n/a"
    if a.size == 1:
        return f"{a[0]:.{digits}f}"
    return f"{np.nanmean(a):.{digits}f} ± {np.nanstd(a, ddof=1):.{digits}f}"


def verdict(ours: Sequence[float], other: Sequence[float], *, higher_is_better: bool = False,
            rel_tie: float = 0.01) -> tuple[str, float]:
    """``("beats" | "ties" | "loses", mean relative difference)`` of paired per-seed values.

    "beats" / "loses" only when every seed agrees on the sign *and* the mean difference is
    at least ``rel_tie`` (1 %) of the other method's mean; anything else is a tie.
    """
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(other, dtype=np.float64)
    d = (b - a) if higher_is_better else (a - b)  # < 0: ours better
    rel = float(np.mean(a - b) / abs(np.mean(b))) if np.mean(b) != 0 else float("nan")
    if np.any(np.isnan(d)):
        return "n/a", rel
    if np.all(d < 0) and abs(rel) >= rel_tie:
        return "beats", rel
    if np.all(d > 0) and abs(rel) >= rel_tie:
        return "loses to", rel
    return "ties", rel


def _header(results: Mapping[str, list[FinetuneResult]]) -> list[str]:
    first = next(iter(results.values()))[0]
    cfg, test = first.config, first.test
    seeds = sorted({r.seed for rs in results.values() for r in rs})
    lines = ["# STS-B-DIR, fine-tuned MiniLM cross-encoder", "",
             f"Test split ({first.counts['test']} pairs; many / medium / few = "
             f"{test.many.count} / {test.medium.count} / {test.few.count}), seeds "
             f"{', '.join(map(str, seeds))}, mean ± std over seeds; errors in score units (0..5). "
             f"Top {cfg.top_layers} of 6 layers fine-tuned, {cfg.epochs} epochs, batch "
             f"{cfg.batch_size}, max length {cfg.max_length}, lr {cfg.lr:g} (head "
             f"x{cfg.head_lr_mult:g}), G = {cfg.num_groups}."]
    if cfg.subset:
        lines.append(f"\n**Subset run** (train / dev / test = "
                     f"{' / '.join(map(str, cfg.subset))} pairs): not the benchmark.")
    return lines


def _tables(results: Mapping[str, list[FinetuneResult]]) -> list[str]:
    names = " | ".join(c.replace("_", " ").replace("medium", "med.") for c in COLUMNS)
    lines = ["", f"| method | n | {names} | bMAE | minutes |",
             "|---|---:|" + "---:|" * (len(COLUMNS) + 2)]
    for m, rs in results.items():
        cells = " | ".join(_fmt([_value(r, c) for r in rs]) for c in COLUMNS)
        lines.append(f"| {ALL_METHODS[m].label} | {len(rs)} | {cells} | "
                     f"{_fmt([r.test.bmae for r in rs])} | "
                     f"{_fmt([r.seconds / 60 for r in rs], 1)} |")
    lines += ["", "Dev split (`dev_new.tsv`), the same models:", "",
              "| method | MSE all | MSE few | MAE all | MAE few | Pearson |",
              "|---|---:|---:|---:|---:|---:|"]
    for m, rs in results.items():
        cells = " | ".join(_fmt([_value(r, c, "val") for r in rs])
                           for c in ("all_mse", "few_mse", "all_mae", "few_mae", "pearson"))
        lines.append(f"| {ALL_METHODS[m].label} | {cells} |")
    return lines


def _inference_lines(results: Mapping[str, list[FinetuneResult]]) -> list[str]:
    lines = []
    if "dirloss" in results:
        picks = [f"seed {r.seed}: {r.inference.inference}, tau {r.inference.tau:g}"
                 for r in results["dirloss"] if r.inference]
        lines += ["", "dirloss inference picked on dev by `select_inference`: "
                  + "; ".join(picks) + "."]
    for m in ("group-dir", "dirloss", "dirloss-share0"):
        if m in results:
            acc = [r.inference.val_group_accuracy if r.inference else float("nan")
                   for r in results[m]]
            lines.append(f"{ALL_METHODS[m].label}: dev group accuracy {_fmt(acc)}.")
    return lines


def _verdicts(results: Mapping[str, list[FinetuneResult]]) -> list[str]:
    if "dirloss" not in results:
        return []
    lines = ["", "## dirloss against each method (paired by seed)", "",
             ("\"beats\" / \"loses to\": better / worse on every seed and by at least 1 % of the "
              "other's mean; otherwise \"ties\". In brackets: dirloss's mean relative "
              "difference."), "",
             "| against | MSE all | MSE many | MSE med. | MSE few | MAE all | MAE few | Pearson |",
             "|---|---|---|---|---|---|---|---|"]
    ours = {r.seed: r for r in results["dirloss"]}
    for m, rs in results.items():
        common = [r.seed for r in rs if r.seed in ours]
        if m == "dirloss" or not common:
            continue
        other = {r.seed: r for r in rs}
        cells = []
        for c in VERDICT_COLUMNS:
            word, rel = verdict([_value(ours[s], c) for s in common],
                                [_value(other[s], c) for s in common],
                                higher_is_better=c == "pearson")
            cells.append(f"{word} ({rel:+.1%})")
        lines.append(f"| {ALL_METHODS[m].label} | " + " | ".join(cells) + " |")
    return lines


def summarize(out_dir: Path, plot: Path | None = DEFAULT_PLOT) -> str:
    """Write ``<out_dir>/summary.md`` (and the per-bin plot) from the JSON files; return it."""
    results = load_results(out_dir)
    if not results:
        raise FileNotFoundError(
            f"expected result files <method>-seed<k>.json in {out_dir}, found none"
        )
    lines = _header(results) + _tables(results) + _inference_lines(results) + _verdicts(results)
    text = "\n".join(lines) + "\n"
    (out_dir / "summary.md").write_text(text)
    if plot is not None:
        _plot(results, plot)
    return text


def _plot(results: Mapping[str, list[FinetuneResult]], path: Path) -> None:
    """Per-bin test MSE (mean ± std over seeds) of every method over the training pairs,
    drawn by the library's :func:`dirloss.plot_binned_error`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    from dirloss import plot_binned_error
    from dirloss.metrics import stsb_dir_regions

    edges = stsb_shot_kwargs()["bin_edges"]
    region_of: list[str | None] = [None] * (len(edges) - 1)
    for region, bins in stsb_dir_regions().items():
        for k in bins:
            region_of[k] = region
    means, bands = {}, {}
    for m, rs in results.items():
        with warnings.catch_warnings():  # a bin without test pairs (subset runs) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            per_bin = np.asarray([r.test.per_bin_mse for r in rs], dtype=np.float64)
            name = f"{ALL_METHODS[m].label} (MSE {np.mean([r.test.all.mse for r in rs]):.3f})"
            means[name] = np.nanmean(per_bin, axis=0)
            if len(rs) > 1:
                bands[name] = np.nanstd(per_bin, axis=0)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    plot_binned_error(means, edges, next(iter(results.values()))[0].train_counts, bands=bands,
                      bin_regions=region_of, metric="mse", xlabel="similarity score", ax=ax)
    seeds = len(next(iter(results.values())))
    ax.set_title(f"STS-B-DIR, fine-tuned MiniLM cross-encoder, mean over {seeds} seed(s)",
                 fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
