r"""Accuracy on real deep-imbalanced-regression data: Group-DIR next to the field's baselines.

Run from the repository root::

    python -m benchmarks.dir_bench                      # STS-B-DIR + the 8 tables, 5 seeds
    python -m benchmarks.dir_bench --quick              # CI smoke run (< 3 min on 2 cores)
    python -m benchmarks.dir_bench --datasets synthetic tabular:/path/to/dir/name

Data sets (``--datasets``, any number):

* ``stsb-dir`` — STS-B-DIR sentence pairs as frozen all-MiniLM-L6-v2 pair features
  ``[u, v, |u - v|, u * v]`` (1536-d, cached embeddings), MLP 1536 -> 256 -> 128; the
  published shot regions (50 bins of 0.1, fixed bin lists); Pearson is reported too.
* ``tabular:<dir>/<name>`` — any table in the ``<dir>/splits/<name>_{train,val,test}.csv``
  layout, or a bare name of the 8 tables under ``<data dir>/tabular``; ``all-tabular``
  expands to those 8. MLP in -> 128 -> 64; shot regions from
  :func:`benchmarks.data.tabular_shot_kwargs`.
* ``synthetic`` — the long-tailed task of :mod:`dirloss.demo`; MLP in -> 128 -> 64; shot
  regions by the tabular rule.

Protocol, for every data set:

1. Every method (:mod:`benchmarks.methods`) trains the same backbone with the same optimiser,
   epochs, batch size and, for a given seed, the same initialisation and data order. Targets
   are standardised with training statistics, so the MSE starts near 1 everywhere.
2. **Selection on validation only.** Each setting of a method's grid (at most six) is trained
   with seeds 0 and 1 (``--select-seeds``) and scored by its *validation balanced MAE* (the
   mean over label bins of the per-bin MAE) averaged over those seeds, which makes fewer
   optimistic picks than one seed. The tables' validation splits are as imbalanced as their
   training splits, so the plain validation MAE would reward a model that ignores the tail;
   bMAE weighs every label bin equally, which is what the DIR test regions measure.
   (STS-B-DIR's dev split is balanced by construction, so there the two nearly coincide.)
   For the grouped methods the inference setting (``argmax`` / ``soft``, and for
   ``dirloss`` a post-hoc logit adjustment ``tau``) is picked on validation from the *same*
   trained models, without retraining; a (setting, inference) pair is one candidate, and
   ``dirloss`` has four candidates, as many as the largest baseline grid. ``dirloss``
   selects by the library's own rule (:func:`dirloss.select_inference`): the lowest bMAE
   among the candidates whose validation MAE is within 2 % of its best candidate's.
3. The chosen setting's models of the selection seeds are evaluated on the test split once
   (the selection never saw it), and seeds 2..S-1 are trained fresh and tested. Every
   method gets the same optimiser steps. Metrics are in *original label units*:
   MAE / MSE / GM overall and on the many / medium / few-shot regions, bMAE, Pearson;
   mean and sample std (ddof 1) over the seeds.

Outputs: ``<out dir>/<dataset>.json`` (everything, including the per-setting validation
scores, the chosen setting, per-seed test metrics and per-bin test MAE), ``<dataset>.md``
(the table), ``<out dir>/summary.md`` (the targets) and ``<img dir>/<dataset>-per-bin.png``
(per-bin test MAE of vanilla, the paper's Group-DIR and the dirloss defaults over the
training label histogram).

Compute: ``--workers`` processes (default 2), each with ``torch.set_num_threads(1)``.

This module is the command line; the stages are the modules it names:
:mod:`benchmarks.datasets` (which data sets, standardised targets), :mod:`benchmarks.methods`
(heads and losses; the backbone in :mod:`benchmarks.models`), :mod:`benchmarks.training` (one
run), :mod:`benchmarks.selection` (validation only), :mod:`benchmarks.evaluation` (scores),
:mod:`benchmarks.scheduler` (which run goes when), :mod:`benchmarks.results` and
:mod:`benchmarks.targets` (the records) and :mod:`benchmarks.reporting` (the files).
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import data as bd  # noqa: E402
from benchmarks.datasets import (  # noqa: E402
    PROTOCOLS,
    DataSpec,
    check_data_present,
    expand_datasets,
    prepare_or_exit,
)
from benchmarks.methods import METHODS  # noqa: E402
from benchmarks.reporting import (  # noqa: E402
    load_results,
    merge_result,
    summarise,
    write_dataset,
)
from benchmarks.results import DatasetResult  # noqa: E402
from benchmarks.scheduler import DatasetRun, RunOptions, run_all  # noqa: E402
from benchmarks.targets import dataset_checks  # noqa: E402
from benchmarks.training import TrainConfig  # noqa: E402

__all__ = ["QUICK", "main", "parse_args", "plan_datasets", "report_only", "run", "train_config"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
DEFAULT_IMG = REPO_ROOT / "docs" / "img"
STSB_EPOCHS = 40
TABULAR_STEPS = 1000
QUICK = {"seeds": 2, "select_seeds": 1, "max_grid": 2, "stsb_epochs": 3, "steps": 120,
         "max_train": 2000}
DEFAULTS = {"seeds": 5, "select_seeds": 2, "max_grid": None, "stsb_epochs": STSB_EPOCHS,
            "steps": TABULAR_STEPS, "max_train": None}


def plan_datasets(args: argparse.Namespace) -> list[DataSpec]:
    """Every data set named by ``--datasets``."""
    return expand_datasets(args.datasets, bd.default_data_dir(args.data_dir), args.protocol)


def train_config(kind: str, num_train: int, args: argparse.Namespace) -> TrainConfig:
    """Backbone widths and epochs of a data set. STS-B trains ``--stsb-epochs`` epochs; a table
    (or the synthetic task) trains ``ceil(--steps / batches per epoch)`` epochs, so small and
    large tables get a similar number of optimiser steps. ``--epochs`` overrides both."""
    hidden = (256, 128) if kind == "stsb" else (128, 64)
    if args.epochs is not None:
        epochs = args.epochs
    elif kind == "stsb":
        epochs = args.stsb_epochs
    else:
        epochs = max(1, math.ceil(args.steps / max(1, math.ceil(num_train / args.batch_size))))
    return TrainConfig(hidden=hidden, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                       dropout=args.dropout)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require_bench_extra(args: argparse.Namespace, *, progress: bool = True) -> None:
    """Exit, naming the extra, before any work when an optional package the run needs is
    missing."""
    needed = (["tqdm"] if progress else []) + ([] if args.no_plots else ["matplotlib"])
    missing = [m for m in needed if not _importable(m)]
    if missing:
        plots = " (or pass --no-plots)" if "matplotlib" in missing else ""
        raise SystemExit(f"dir_bench needs {' and '.join(missing)}, not installed: "
                         f"pip install -e \".[bench]\"{plots}")


def run(args: argparse.Namespace) -> dict[str, DatasetResult]:
    """Run the benchmark described by ``args``; returns ``{dataset: result}`` and writes
    files (each data set's as soon as it finishes, the summary at the end)."""
    t0 = time.perf_counter()
    require_bench_extra(args)
    torch.set_num_threads(1)
    specs = plan_datasets(args)
    check_data_present(specs, args.data_dir)
    out_dir, img_dir = Path(args.out_dir), Path(args.img_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = RunOptions(
        seeds=args.seeds, select_seeds=args.select_seeds, max_grid=args.max_grid,
        workers=args.workers, data_dir=args.data_dir, cache_dir=args.cache_dir,
        max_train=args.max_train, quick=args.quick, command=args.command,
        progress=not args.no_progress,
    )
    methods = [METHODS[m] for m in args.methods]
    runs = []
    for spec in specs:
        data = prepare_or_exit(spec, data_dir=args.data_dir, cache_dir=args.cache_dir,
                               max_train=args.max_train)
        config = train_config(spec.kind, data.sizes.n_train, args)
        runs.append(DatasetRun.plan(data, config, methods, options))

    results: dict[str, DatasetResult] = {}

    def finished(dataset: DatasetRun) -> None:
        from tqdm.auto import tqdm

        result = dataset.result()
        path = out_dir / f"{result.dataset}.json"
        if args.merge:
            result = merge_result(path, result)
        results[result.dataset] = result
        write_dataset(result, out_dir, img_dir, plots=not args.no_plots)
        tqdm.write(f"[{result.dataset}] done in {dataset.wall_seconds():.0f} s -> {path}")

    run_all(runs, options, finished)
    wall = time.perf_counter() - t0
    summary = summarise(load_results(out_dir, results), wall=wall, command=args.command)
    (out_dir / "summary.md").write_text(summary)
    print(summary)
    print(f"total wall time {wall:.0f} s")
    return results


def report_only(args: argparse.Namespace) -> dict[str, DatasetResult]:
    """Rebuild the tables, plots and summary from the JSON in ``--out-dir`` (the targets are
    re-judged with the current rule; the summary keeps the recorded wall time)."""
    require_bench_extra(args, progress=False)
    out_dir, img_dir = Path(args.out_dir), Path(args.img_dir)
    if not out_dir.is_dir():
        raise SystemExit(f"--report-only: --out-dir {out_dir} does not exist (nothing to report)")
    results = load_results(out_dir, {})
    for r in results.values():
        r.checks = dataset_checks(r.kind, r.methods)
        write_dataset(r, out_dir, img_dir, plots=not args.no_plots)
    wall = None
    old = out_dir / "summary.md"
    if old.is_file():
        found = re.search(r"Wall time of this invocation: (\d+(?:\.\d+)?) s", old.read_text())
        wall = float(found.group(1)) if found else None
    command = next(iter(results.values())).command if results else ""
    summary = summarise(results, wall=wall, command=command)
    (out_dir / "summary.md").write_text(summary)
    print(summary)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dir_bench",
                                description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--datasets", nargs="+", default=["stsb-dir", "all-tabular"],
        help="stsb-dir, synthetic, all-tabular, a table name, or tabular:<dir>/<name> "
        "(default: stsb-dir all-tabular)")
    add("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="default: all")
    add("--data-dir", default=None,
        help="data directory (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    add("--cache-dir", default=None, help="STS-B embedding cache (default ~/.cache/dirloss)")
    add("--protocol", choices=PROTOCOLS, default="natural",
        help="natural: the data sets' own splits; dir: balanced validation and test sets "
        "drawn by dirloss.dir_split (STS-B-DIR keeps its balanced splits)")
    add("--out-dir", default=None,
        help="where <dataset>.json/.md go (default benchmarks/results, and "
        "benchmarks/results/dir under --protocol dir)")
    add("--img-dir", default=None,
        help="where the plots go (default docs/img, and docs/img/dir under --protocol dir)")
    add("--seeds", type=int, default=None, help="seeds per chosen setting (default 5; quick 2)")
    add("--select-seeds", type=int, default=None,
        help="seeds per grid setting for the selection on validation; their models of the "
        "chosen setting are tested too (default 2; quick 1)")
    add("--workers", type=int, default=2,
        help="worker processes, 1 thread each (1: run in this process)")
    add("--max-grid", type=int, default=None,
        help="try only the first K settings of each grid (default all; quick 2)")
    add("--stsb-epochs", type=int, default=None,
        help=f"epochs on STS-B (default {STSB_EPOCHS}; quick {QUICK['stsb_epochs']})")
    add("--steps", type=int, default=None,
        help=f"target optimiser steps on a table (default {TABULAR_STEPS}; quick {QUICK['steps']})")
    add("--epochs", type=int, default=None,
        help="epochs on every data set (overrides --stsb-epochs/--steps)")
    add("--batch-size", type=int, default=256)
    add("--lr", type=float, default=1e-3)
    add("--dropout", type=float, default=0.0)
    add("--max-train", type=int, default=None,
        help="subsample the training split (smoke runs; quick 2000)")
    add("--quick", action="store_true",
        help="CI smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    add("--no-plots", action="store_true")
    add("--no-progress", action="store_true")
    add("--report-only", action="store_true",
        help="rebuild the .md tables, plots and summary from the JSON in --out-dir")
    add("--merge", action="store_true",
        help="keep the other methods of a data set's earlier result in --out-dir (re-run some "
        "methods only)")
    args = p.parse_args(argv)
    sub = "dir" if args.protocol == "dir" else ""
    args.out_dir = args.out_dir or str(DEFAULT_OUT / sub)
    args.img_dir = args.img_dir or str(DEFAULT_IMG / sub)
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else default)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if not 1 <= args.select_seeds <= args.seeds:
        p.error("--select-seeds must be between 1 and --seeds")
    if args.max_grid is not None and args.max_grid < 1:
        p.error("--max-grid must be >= 1")
    args.command = "python -m benchmarks.dir_bench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, DatasetResult]:
    args = parse_args(argv)
    if args.report_only:
        return report_only(args)
    return run(args)


if __name__ == "__main__":
    main()
