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
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import importlib
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import data as bd  # noqa: E402
from benchmarks.methods import (  # noqa: E402
    METHODS,
    InfeasibleSetting,
    Method,
    TrainConfig,
    build_model,
    predict,
    train,
)
from dirloss.metrics import EDGE_RTOL, REGIONS, shot_metrics  # noqa: E402

__all__ = ["DatasetPlan", "check_targets", "main", "parse_args", "plan_datasets", "run", "train_config"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
DEFAULT_IMG = REPO_ROOT / "docs" / "img"
METRIC_KEYS = ("mae", "mse", "gm")
GROUP_DIR = "group-dir"
DIRLOSS = "dirloss"
VANILLA = "vanilla"


# =============================================================================================
# Data sets
# =============================================================================================
@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    """What to run on one data set: its result name, loader spec, kind and training config."""

    name: str
    spec: str
    kind: str  # "stsb" | "tabular" | "synthetic"
    config: TrainConfig


def _expand(specs: Sequence[str], data_dir: Path) -> list[tuple[str, str, str]]:
    """``--datasets`` entries to ``(name, loader spec, kind)``."""
    out: list[tuple[str, str, str]] = []
    for spec in specs:
        if spec == "all-tabular":
            out += [(n, f"tabular:{data_dir / 'tabular' / n}", "tabular") for n in bd.TABULAR_SETS]
        elif spec in ("stsb", "sts-b", "stsb-dir"):
            out.append(("stsb-dir", "stsb", "stsb"))
        elif spec == "synthetic":
            out.append(("synthetic", "synthetic", "synthetic"))
        elif spec in bd.TABULAR_SETS:
            out.append((spec, f"tabular:{data_dir / 'tabular' / spec}", "tabular"))
        elif spec.startswith("tabular:"):
            out.append((Path(spec[len("tabular:"):]).name, spec, "tabular"))
        else:
            raise SystemExit(
                f"unknown data set {spec!r}: expected stsb-dir, synthetic, all-tabular, one of "
                f"{', '.join(bd.TABULAR_SETS)} or tabular:<dir>/<name>"
            )
    seen: dict[str, int] = {}
    for name, _, _ in out:
        seen[name] = seen.get(name, 0) + 1
    dupes = [n for n, c in seen.items() if c > 1]
    if dupes:
        raise SystemExit(f"data set names must be unique, got {dupes} more than once")
    return out


@dataclasses.dataclass
class Prepared:
    """A data set as the workers and the evaluator see it (targets standardised)."""

    name: str
    kind: str
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]  # standardised model units
    labels: dict[str, np.ndarray]  # original label units, float64
    unscale_a: float  # label = a * standardised + b
    unscale_b: float
    shot_kwargs: dict[str, Any]
    info: dict[str, Any]

    def to_labels(self, pred: np.ndarray) -> np.ndarray:
        return self.unscale_a * np.asarray(pred, dtype=np.float64) + self.unscale_b


def prepare(name: str, spec: str, kind: str, *, data_dir: str | None, cache_dir: str | None, max_train: int | None = None) -> Prepared:
    """Load ``spec`` and standardise its targets with training statistics.

    The tables come standardised from the loader; STS-B (0..5) and the synthetic task (0..1)
    do not, so the targets are (re)standardised here, once, the same way for all: a model
    predicts :math:`t`, and :math:`y = a t + b` maps it back to label units.
    ``max_train`` keeps a seeded random subset of the training split (smoke runs only).
    """
    splits = bd.load_dataset(spec, data_dir=data_dir, cache_dir=cache_dir)
    x_tr, y_tr = splits.x_train, splits.y_train
    if max_train is not None and max_train < len(y_tr):
        keep = np.sort(np.random.default_rng(0).choice(len(y_tr), size=max_train, replace=False))
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    raw = {"train": (x_tr, y_tr), "val": (splits.x_val, splits.y_val), "test": (splits.x_test, splits.y_test)}
    mu = float(np.mean(y_tr, dtype=np.float64))
    sd = float(np.std(y_tr, dtype=np.float64)) or 1.0
    labels = {s: np.asarray(splits.unscale(y.astype(np.float64)), dtype=np.float64) for s, (_, y) in raw.items()}
    if kind == "stsb":
        shot = bd.stsb_shot_kwargs()
    else:
        shot = bd.tabular_shot_kwargs(labels["train"])
    return Prepared(
        name=name,
        kind=kind,
        x={s: torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)) for s, (x, _) in raw.items()},
        y={s: torch.as_tensor(((y.astype(np.float64) - mu) / sd).astype(np.float32)) for s, (_, y) in raw.items()},
        labels=labels,
        unscale_a=sd * splits.y_std,
        unscale_b=mu * splits.y_std + splits.y_mean,
        shot_kwargs=shot,
        info={"num_features": int(splits.x_train.shape[1]), **{f"n_{s}": int(len(y)) for s, (_, y) in raw.items()}},
    )


# =============================================================================================
# Jobs (run in the worker processes)
# =============================================================================================
@dataclasses.dataclass(frozen=True)
class Job:
    dataset: str
    spec: str
    kind: str
    method: str
    setting: int  # index into the method's grid
    seed: int
    config: TrainConfig


_WORKER: dict[str, Any] = {"data": {}, "data_dir": None, "cache_dir": None, "max_train": None}


def _init_worker(data_dir: str | None, cache_dir: str | None, max_train: int | None) -> None:
    torch.set_num_threads(1)
    _WORKER.update(data_dir=data_dir, cache_dir=cache_dir, max_train=max_train, data={})


def _worker_data(job: Job) -> Prepared:
    cache: dict[str, Prepared] = _WORKER["data"]
    if job.dataset not in cache:
        cache.clear()  # one data set at a time per worker keeps memory flat
        cache[job.dataset] = prepare(
            job.dataset, job.spec, job.kind, data_dir=_WORKER["data_dir"], cache_dir=_WORKER["cache_dir"],
            max_train=_WORKER["max_train"],
        )
    return cache[job.dataset]


def run_job(job: Job) -> dict[str, Any]:
    """Train one (method, setting, seed); return validation predictions and the weights.

    The test split is not touched here: the main process evaluates it only for the chosen
    setting of each method.
    """
    data = _worker_data(job)
    method = METHODS[job.method]
    params = method.grid[job.setting]
    try:
        model, record = train(method, params, data.x["train"], data.y["train"], job.config, seed=job.seed)
    except InfeasibleSetting as err:
        return {"job": job, "infeasible": str(err), "val_pred": {}, "state": None,
                "record": {"train_seconds": 0.0, "finite": False, "final_loss": math.nan}}
    modes = [_inference_key(m) for m in method.inference] if method.grouped else ["argmax"]
    val = {m: predict(model, data.x["val"], _parse_inference(m)) for m in modes}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"job": job, "val_pred": val, "state": state, "record": record, "pid": os.getpid()}


def _inference_key(candidate: tuple[str, float]) -> str:
    """``("soft", 0.5)`` -> ``"soft"`` / ``"soft, tau=0.5"`` (``tau=0`` reads as the mode alone)."""
    mode, tau = candidate
    return mode if not tau else f"{mode}, tau={tau:g}"


def _parse_inference(key: str | None) -> tuple[str, float]:
    if not key:
        return ("argmax", 0.0)
    mode, _, tau = key.partition(", tau=")
    return (mode, float(tau) if tau else 0.0)


# =============================================================================================
# Evaluation
# =============================================================================================
def _bin_index(y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of every label, with the edge tolerance of :func:`dirloss.metrics.shot_metrics`."""
    tol = EDGE_RTOL * np.diff(edges).min()
    return np.clip(np.searchsorted(edges, y + tol, side="right") - 1, 0, edges.size - 2)


def evaluate(data: Prepared, pred_std: np.ndarray, split: str) -> dict[str, Any]:
    """Shot metrics (label units) of standardised predictions on ``split``, plus Pearson and
    the per-bin MAE (NaN for a bin without samples)."""
    pred = data.to_labels(pred_std)
    target = data.labels[split]
    if not np.all(np.isfinite(pred)):
        pred = np.nan_to_num(pred, nan=float(np.mean(data.labels["train"])), posinf=1e30, neginf=-1e30)
    out = shot_metrics(pred, target, data.labels["train"], **data.shot_kwargs)
    sp, st = pred.std(), target.std()
    out["pearson"] = float(np.mean((pred - pred.mean()) * (target - target.mean())) / (sp * st)) if sp > 0 and st > 0 else float("nan")
    edges = np.asarray(data.shot_kwargs["bin_edges"], dtype=np.float64)
    bins = _bin_index(target, edges)
    counts = np.bincount(bins, minlength=edges.size - 1)
    sums = np.bincount(bins, weights=np.abs(pred - target), minlength=edges.size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["per_bin_mae"] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).tolist()
    return out


def _flat(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{"all_mae": ..., "few_mse": ..., "bmae": ..., "pearson": ...}``."""
    flat = {f"{r}_{k}": float(metrics[r][k]) for r in ("all", *REGIONS) for k in METRIC_KEYS}
    flat["bmae"] = float(metrics["bmae"])
    flat["pearson"] = float(metrics["pearson"])
    return flat


def _mean_std(rows: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = rows[0].keys()
    arr = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    mean = {k: float(np.mean(v)) for k, v in arr.items()}
    std = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in arr.items()}
    return mean, std


def select(candidates: Sequence[Mapping[str, Any]], mae_guard: float | None = None) -> Mapping[str, Any]:
    """The candidate with the lowest validation bMAE (ties: the earliest in grid order);
    candidates whose training diverged or whose score is not finite never win unless all did.
    With ``mae_guard`` (the library's rule, :func:`dirloss.select_inference`), only the
    candidates whose validation MAE is within ``1 + mae_guard`` of the lowest compete."""
    def ok(c: Mapping[str, Any]) -> bool:
        return bool(c["finite"] and c.get("val") and math.isfinite(c["val"]["bmae"]))

    limit = math.inf
    if mae_guard is not None and any(ok(c) for c in candidates):
        limit = (1 + mae_guard) * min(c["val"]["all_mae"] for c in candidates if ok(c))

    def key(c: Mapping[str, Any]) -> tuple[int, float, int]:
        good = ok(c) and c["val"]["all_mae"] <= limit
        return (0 if good else 1, c["val"]["bmae"] if good else math.inf, c["order"])

    return min(candidates, key=key)


# =============================================================================================
# Scheduling
# =============================================================================================
class _Inline:
    """A one-process stand-in for the pool (``--workers 1``): runs each job when asked."""

    def __init__(self, *init: Any) -> None:
        _init_worker(*init)
        self._queue: list[tuple[Job, Future]] = []

    def submit(self, fn: Any, job: Job) -> Future:
        fut: Future = Future()
        self._queue.append((job, fut))
        return fut

    def run_one(self) -> None:
        job, fut = self._queue.pop(0)
        try:
            fut.set_result(run_job(job))
        except BaseException as err:  # surface in the caller like a pool would
            fut.set_exception(err)

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        self._queue.clear()


@dataclasses.dataclass
class _MethodState:
    method: Method
    grid_results: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    chosen: dict[str, Any] | None = None
    seed_results: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


@dataclasses.dataclass
class _DatasetState:
    plan: DatasetPlan
    data: Prepared
    methods: dict[str, _MethodState]
    started: float | None = None
    finished: float | None = None
    outstanding: int = 0


def _runs_per_method(method: Method, args: argparse.Namespace) -> int:
    """Selection runs (grid x selection seeds) plus the extra test seeds."""
    grid = len(_grid_indices(method, args.max_grid))
    return grid * args.select_seeds + max(0, args.seeds - args.select_seeds)


def _grid_indices(method: Method, max_grid: int | None) -> list[int]:
    n = len(method.grid)
    return list(range(n if max_grid is None else min(n, max_grid)))


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require_bench_extra(args: argparse.Namespace, *, progress: bool = True) -> None:
    """Exit, naming the extra, before any work when an optional package the run needs is missing."""
    needed = (["tqdm"] if progress else []) + ([] if args.no_plots else ["matplotlib"])
    missing = [m for m in needed if not _importable(m)]
    if missing:
        plots = " (or pass --no-plots)" if "matplotlib" in missing else ""
        raise SystemExit(
            f"dir_bench needs {' and '.join(missing)}, not installed: pip install -e \".[bench]\"{plots}"
        )


def check_data_present(plans: Sequence[tuple[str, str, str]], data_dir: str | None) -> None:
    """Exit, naming ``--data-dir`` and the directory looked in, when a planned data set's files
    are missing (a cheap check before any work; the synthetic task needs none)."""
    root = bd.default_data_dir(data_dir)
    for name, spec, kind in plans:
        try:
            if kind == "tabular":
                bd._split_paths(spec.split(":", 1)[1])
            elif kind == "stsb":
                for file in bd.STSB_FILES.values():
                    if not (root / "stsb-dir" / file).is_file():
                        raise FileNotFoundError(f"expected {root / 'stsb-dir' / file}; not found")
        except FileNotFoundError as err:
            raise SystemExit(
                f"no data for {name!r}: {err}. Pass --data-dir DIR (looked in {root}; "
                f"the default is $DIRLOSS_DATA_DIR or {bd.REPO_ROOT.parent / 'shared' / 'data'})"
            ) from None


def prepare_or_exit(name: str, spec: str, kind: str, args: argparse.Namespace) -> Prepared:
    """:func:`prepare`, exiting with a message that names ``--data-dir`` when the files (or the
    STS-B encoder) are missing."""
    try:
        return prepare(name, spec, kind, data_dir=args.data_dir, cache_dir=args.cache_dir, max_train=args.max_train)
    except FileNotFoundError as err:
        raise SystemExit(
            f"no data for {name!r}: {err}. Pass --data-dir DIR (looked in {bd.default_data_dir(args.data_dir)}; "
            f"the default is $DIRLOSS_DATA_DIR or {bd.REPO_ROOT.parent / 'shared' / 'data'})"
        ) from None
    except ModuleNotFoundError as err:
        raise SystemExit(f"dir_bench: {err}") from None


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run the benchmark described by ``args``; returns ``{dataset: result}`` and writes files."""
    t0 = time.perf_counter()
    require_bench_extra(args)
    torch.set_num_threads(1)
    plans = plan_datasets(args)
    check_data_present(plans, args.data_dir)
    methods = [METHODS[m] for m in args.methods]
    out_dir, img_dir = Path(args.out_dir), Path(args.img_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    states: dict[str, _DatasetState] = {}
    for name, spec, kind in plans:
        data = prepare_or_exit(name, spec, kind, args)
        plan = DatasetPlan(name, spec, kind, train_config(kind, data.info["n_train"], args))
        states[name] = _DatasetState(plan, data, {m.name: _MethodState(m) for m in methods})

    # Priority queue of jobs: data sets in the given order (results are written as each one
    # finishes), and within a data set the seed runs of already-selected methods first.
    heap: list[tuple[int, int, int, Job]] = []
    counter = 0

    def push(job: Job, phase: int) -> None:
        nonlocal counter
        heapq.heappush(heap, (list(states).index(job.dataset), phase, counter, job))
        counter += 1

    total = 0
    for plan in (st.plan for st in states.values()):
        for m in methods:
            for k in _grid_indices(m, args.max_grid):
                for seed in range(args.select_seeds):
                    push(Job(plan.name, plan.spec, plan.kind, m.name, k, seed, plan.config), 1)
        runs = sum(_runs_per_method(m, args) for m in methods)
        states[plan.name].outstanding = runs
        total += runs

    init = (args.data_dir, args.cache_dir, args.max_train)
    pool: Any
    if args.workers <= 1:
        pool = _Inline(*init)
    else:
        pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=init)
    results: dict[str, dict[str, Any]] = {}
    running: dict[Future, Job] = {}
    bar = tqdm(total=total, desc="dir_bench", unit="run", disable=args.no_progress, dynamic_ncols=True)
    try:
        while heap or running:
            while heap and len(running) < max(1, args.workers):
                job = heapq.heappop(heap)[3]
                st = states[job.dataset]
                if st.started is None:
                    st.started = time.perf_counter()
                running[pool.submit(run_job, job)] = job
            if isinstance(pool, _Inline):
                pool.run_one()
                done = {f for f in running if f.done()}
            else:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                job = running.pop(fut)
                res = fut.result()
                bar.update(1)
                bar.set_postfix_str(f"{job.dataset}/{job.method}", refresh=False)
                st = states[job.dataset]
                st.outstanding -= 1
                _absorb(st, res, args, push)
                if st.outstanding == 0:
                    st.finished = time.perf_counter()
                    results[job.dataset] = _finish(st, args, t0)
                    if args.merge:
                        results[job.dataset] = merge_result(out_dir / f"{job.dataset}.json", results[job.dataset])
                    _write_dataset(results[job.dataset], out_dir, img_dir, args)
                    tqdm.write(f"[{job.dataset}] done in {st.finished - (st.started or st.finished):.0f} s -> {out_dir / (job.dataset + '.json')}")
    finally:
        bar.close()
        if isinstance(pool, _Inline):
            pool.shutdown()
        else:
            pool.shutdown(wait=True, cancel_futures=True)

    wall = time.perf_counter() - t0
    all_results = _load_all(out_dir, results)
    summary = summarise(all_results, wall=wall, command=args.command)
    (out_dir / "summary.md").write_text(summary)
    print(summary)
    print(f"total wall time {wall:.0f} s")
    return results


def _absorb(st: _DatasetState, res: dict[str, Any], args: argparse.Namespace, push: Any) -> None:
    job: Job = res["job"]
    ms = st.methods[job.method]
    ms.seconds += res["record"]["train_seconds"]
    if ms.chosen is not None:  # an extra test seed of the chosen setting
        ms.seed_results[job.seed] = _test_result(st, ms, res["state"], job.seed, res["record"])
        return
    ms.grid_results.setdefault(job.setting, {})[job.seed] = res
    grid = _grid_indices(ms.method, args.max_grid)
    if sum(len(v) for v in ms.grid_results.values()) < len(grid) * args.select_seeds:
        return
    cands = _candidates(st, ms)
    best = select(cands, mae_guard=ms.method.mae_guard)
    ms.chosen = {k: best[k] for k in ("setting", "params", "inference")}
    for seed, run in sorted(ms.grid_results[best["setting"]].items()):  # reuse, test once
        ms.seed_results[seed] = _test_result(st, ms, run["state"], seed, run["record"])
    ms.grid_results = {"candidates": cands}  # keep the scores, drop the weights
    for seed in range(args.select_seeds, args.seeds):
        push(dataclasses.replace(job, setting=best["setting"], seed=seed), 0)


def _candidates(st: _DatasetState, ms: _MethodState) -> list[dict[str, Any]]:
    """One candidate per (setting, inference), scored by its validation metrics averaged
    over the selection seeds."""
    cands: list[dict[str, Any]] = []
    for k in sorted(ms.grid_results):
        runs = [ms.grid_results[k][seed] for seed in sorted(ms.grid_results[k])]
        params = dict(ms.method.grid[k])
        if any(r.get("infeasible") for r in runs):
            cands.append({"setting": k, "params": params, "inference": None, "val": None, "finite": False,
                          "infeasible": runs[0].get("infeasible"), "train_seconds": 0.0, "final_loss": math.nan})
            continue
        for inference in runs[0]["val_pred"]:
            per_seed = [_flat(evaluate(st.data, r["val_pred"][inference], "val")) for r in runs]
            cands.append({
                "setting": k, "params": params, "inference": inference,
                "val": _mean_std(per_seed)[0], "val_per_seed": per_seed,
                "finite": all(r["record"]["finite"] for r in runs),
                "train_seconds": sum(r["record"]["train_seconds"] for r in runs),
                "final_loss": float(np.mean([r["record"]["final_loss"] for r in runs])),
            })
    for order, c in enumerate(cands):
        c["order"] = order
    return cands


def _test_result(st: _DatasetState, ms: _MethodState, state: Mapping[str, torch.Tensor], seed: int, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the chosen setting's model of ``seed`` on the test split (once)."""
    assert ms.chosen is not None
    params = ms.method.grid[ms.chosen["setting"]]
    model = build_model(ms.method, params, st.data.x["train"].shape[1], st.plan.config.hidden, seed=seed, dropout=st.plan.config.dropout)
    model.load_state_dict(state)
    pred = predict(model, st.data.x["test"], _parse_inference(ms.chosen["inference"]))
    metrics = evaluate(st.data, pred, "test")
    out = {"seed": seed, "test": _flat(metrics), "per_bin_mae": metrics["per_bin_mae"], "region_counts": {r: metrics[r]["count"] for r in ("all", *REGIONS)}}
    if record is not None:
        out["finite"] = record["finite"]
    return out


def _finish(st: _DatasetState, args: argparse.Namespace, t0: float) -> dict[str, Any]:
    data = st.data
    edges = np.asarray(data.shot_kwargs["bin_edges"], dtype=np.float64)
    train_bins = _bin_index(data.labels["train"], edges)
    methods_out: dict[str, Any] = {}
    for name, ms in st.methods.items():
        seeds = [ms.seed_results[s] for s in sorted(ms.seed_results)]
        mean, std = _mean_std([s["test"] for s in seeds])
        per_bin = np.array([s["per_bin_mae"] for s in seeds], dtype=np.float64)
        methods_out[name] = {
            "label": ms.method.label,
            "grid": ms.grid_results.get("candidates", []),
            "chosen": ms.chosen,
            "test_mean": mean,
            "test_std": std,
            "test_per_seed": [{"seed": s["seed"], **s["test"]} for s in seeds],
            "per_bin_mae_mean": np.nanmean(per_bin, axis=0).tolist() if np.isfinite(per_bin).any() else per_bin[0].tolist(),
            "per_bin_mae_std": (np.nanstd(per_bin, axis=0, ddof=1).tolist() if len(seeds) > 1 else [0.0] * per_bin.shape[1]),
            "train_seconds": ms.seconds,
        }
    val_counts = bd.shot_region_counts(data.labels["train"], data.labels["val"], **data.shot_kwargs)
    test_counts = bd.shot_region_counts(data.labels["train"], data.labels["test"], **data.shot_kwargs)
    shot = {k: (np.asarray(v).tolist() if k == "bin_edges" else v) for k, v in data.shot_kwargs.items()}
    return {
        "dataset": st.plan.name,
        "spec": st.plan.spec,
        "kind": st.plan.kind,
        "command": args.command,
        "machine": machine_info(args.workers),
        "protocol": {
            "seeds": args.seeds,
            "selection": f"mean validation bMAE over seeds 0..{args.select_seeds - 1}; inference setting of grouped heads picked on validation from the same models; dirloss: the library's rule (lowest bMAE within 2% of the best validation MAE)",
            "select_seeds": args.select_seeds,
            "max_grid": args.max_grid,
            "quick": args.quick,
            "max_train": args.max_train,
            "config": dataclasses.asdict(st.plan.config),
            "optimizer": "Adam, cosine-annealed lr, batch order from a generator seeded per seed",
            "target_scaling": {"a": data.unscale_a, "b": data.unscale_b},
        },
        "data": data.info,
        "shot": shot,
        "region_counts": {"val": val_counts, "test": test_counts},
        "train_counts": np.bincount(train_bins, minlength=edges.size - 1).tolist(),
        "bin_regions": bin_regions(np.bincount(train_bins, minlength=edges.size - 1), data.shot_kwargs),
        "methods": methods_out,
        "wall_seconds": (st.finished or time.perf_counter()) - (st.started or t0),
        "checks": dataset_checks(st.plan.kind, methods_out),
    }


# =============================================================================================
# Targets
# =============================================================================================
def _best(methods: Mapping[str, Any], key: str) -> tuple[str, float]:
    name = min(methods, key=lambda m: methods[m]["test_mean"][key])
    return name, methods[name]["test_mean"][key]


def dataset_checks(kind: str, methods: Mapping[str, Any]) -> dict[str, Any]:
    """The targets that can be judged on one data set for the library's defaults
    (``dirloss``; needs ``vanilla`` too, empty otherwise).

    * every data set: dirloss's overall MAE at most 2 % above vanilla's; its bMAE below
      vanilla's; its bMAE the best or within one standard deviation (of the best method's
      bMAE over seeds) of the best.
    * STS-B-DIR: overall MAE at least 5 % below vanilla's, few-shot MAE not above it.
    """
    if DIRLOSS not in methods or VANILLA not in methods:
        return {}
    d, v = methods[DIRLOSS]["test_mean"], methods[VANILLA]["test_mean"]
    best_b, b = _best(methods, "bmae")
    out: dict[str, Any] = {
        "all_mae_vs_vanilla": d["all_mae"] / v["all_mae"] - 1.0,
        "all_mae_not_2pct_worse_than_vanilla": d["all_mae"] <= 1.02 * v["all_mae"],
        "bmae_vs_vanilla": d["bmae"] / v["bmae"] - 1.0,
        "bmae_beats_vanilla": d["bmae"] < v["bmae"],
        "bmae_best_method": best_b,
        "bmae_best_std": methods[best_b]["test_std"]["bmae"],
        "bmae_best_or_within_1std": best_b == DIRLOSS or d["bmae"] <= b + methods[best_b]["test_std"]["bmae"],
    }
    if kind == "stsb":
        out["few_mae_vs_vanilla"] = d["few_mae"] / v["few_mae"] - 1.0
        out["few_mae_not_above_vanilla"] = d["few_mae"] <= v["few_mae"]
        out["all_mae_5pct_below_vanilla"] = d["all_mae"] <= 0.95 * v["all_mae"]
    return out


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def check_targets(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain-language verdicts on the targets of the library's defaults over all finished
    data sets (the counts scale with the number of data sets: 7 and 6 of 9)."""
    checked = {n: r for n, r in results.items() if r["checks"]}
    if not checked:
        return []
    lines: list[str] = []
    for name, r in checked.items():
        if r["kind"] == "stsb":
            c = r["checks"]
            lines.append(
                f"- {name}: overall MAE >= 5% below vanilla: {_verdict(c['all_mae_5pct_below_vanilla'])} "
                f"({100 * c['all_mae_vs_vanilla']:+.1f}%); few-shot MAE not above vanilla: "
                f"{_verdict(c['few_mae_not_above_vanilla'])} ({100 * c['few_mae_vs_vanilla']:+.1f}%)"
            )
    n = len(checked)
    worse = [f"{k} ({100 * r['checks']['all_mae_vs_vanilla']:+.1f}%)" for k, r in checked.items()
             if not r["checks"]["all_mae_not_2pct_worse_than_vanilla"]]
    beats = [k for k, r in checked.items() if r["checks"]["bmae_beats_vanilla"]]
    best = [k for k, r in checked.items() if r["checks"]["bmae_best_or_within_1std"]]
    need_beat, need_best = math.ceil(7 * n / 9), math.ceil(6 * n / 9)
    lines.append(
        f"- dirloss overall MAE never > 2% worse than vanilla: {_verdict(not worse)}"
        + (f" (worse on: {', '.join(worse)})" if worse else f" ({n}/{n})")
    )
    lines.append(
        f"- dirloss bMAE below vanilla on >= {need_beat} of {n}: {_verdict(len(beats) >= need_beat)} "
        f"({len(beats)}/{n}; not on: {', '.join(k for k in checked if k not in beats) or 'none'})"
    )
    lines.append(
        f"- dirloss bMAE best or within 1 std of the best on >= {need_best} of {n}: "
        f"{_verdict(len(best) >= need_best)} ({len(best)}/{n}: {', '.join(best) or 'none'})"
    )
    return lines


# =============================================================================================
# Reports
# =============================================================================================
def _fmt(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _digits(result: Mapping[str, Any]) -> int:
    """Decimals for a data set's table: about three significant digits of its MAE."""
    scale = abs(result["methods"][next(iter(result["methods"]))]["test_mean"]["all_mae"])
    return 4 if scale < 0.1 else 3 if scale < 10 else 2


def _setting_str(chosen: Mapping[str, Any], grouped: bool) -> str:
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen["params"].items()]
    if grouped:
        parts.append(chosen["inference"])
    return ", ".join(parts)


def markdown_table(result: Mapping[str, Any]) -> str:
    """The per-data-set markdown report: MAE and MSE tables (mean ± std over seeds)."""
    d = _digits(result)
    methods = result["methods"]
    stsb = result["kind"] == "stsb"
    counts = result["region_counts"]["test"]
    lines = [
        f"### {result['dataset']}",
        "",
        f"Test split: many / medium / few = {counts['many']} / {counts['medium']} / {counts['few']} samples; "
        f"{result['protocol']['seeds']} seeds (mean ± std); selection on validation bMAE; "
        f"wall time {result['wall_seconds']:.0f} s.",
        "",
        "| method | chosen setting | MAE all | MAE many | MAE med. | MAE few | bMAE | GM all |" + (" Pearson |" if stsb else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if stsb else ""),
    ]
    for name, m in methods.items():
        mu, sd = m["test_mean"], m["test_std"]
        row = f"| {name} | {_setting_str(m['chosen'], METHODS[name].grouped if name in METHODS else False)} | " + " | ".join(
            _fmt(mu[k], sd[k], d) for k in ("all_mae", "many_mae", "medium_mae", "few_mae", "bmae", "all_gm")
        ) + " |"
        if stsb:
            row += f" {_fmt(mu['pearson'], sd['pearson'], 3)} |"
        lines.append(row)
    lines += ["", "| method | MSE all | MSE many | MSE med. | MSE few |", "|---|---:|---:|---:|---:|"]
    for name, m in methods.items():
        mu, sd = m["test_mean"], m["test_std"]
        lines.append(f"| {name} | " + " | ".join(_fmt(mu[k], sd[k], d) for k in ("all_mse", "many_mse", "medium_mse", "few_mse")) + " |")
    return "\n".join(lines) + "\n"


def summarise(results: Mapping[str, Mapping[str, Any]], *, wall: float | None = None, command: str = "") -> str:
    """All data sets: one bMAE line per table, the targets, the command and the machine."""
    lines = ["# DIR benchmark summary", ""]
    if command:
        lines += ["Command: `" + command + "`", ""]
    any_result = next(iter(results.values()), None)
    if any_result:
        mi = any_result["machine"]
        lines += [f"Machine: {mi['cpu']} ({mi['cpus']} logical CPUs visible, {mi['workers']} worker processes x 1 thread), torch {mi['torch']}.", ""]
    if wall is not None:
        lines += [f"Wall time of this invocation: {wall:.0f} s.", ""]
    names = [n for n in METHODS if any(n in r["methods"] for r in results.values())]
    lines += ["Test bMAE (label units, mean ± std over seeds); **bold** = best mean.", ""]
    lines += ["| data set | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for ds, r in results.items():
        d = _digits(r)
        present = [n for n in names if n in r["methods"]]
        best = min(present, key=lambda n: r["methods"][n]["test_mean"]["bmae"])
        cells = []
        for n in names:
            if n not in r["methods"]:
                cells.append("")
                continue
            s = _fmt(r["methods"][n]["test_mean"]["bmae"], r["methods"][n]["test_std"]["bmae"], d)
            cells.append(f"**{s}**" if n == best else s)
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets", ""] + (check_targets(results) or ["- (needs vanilla and dirloss)"])
    return "\n".join(lines) + "\n"


def bin_regions(train_counts: np.ndarray, shot_kwargs: Mapping[str, Any]) -> list[str | None]:
    """The shot region of every label bin (None for a bin in no region), as the metrics see it."""
    if shot_kwargs.get("regions") is not None:
        out: list[str | None] = [None] * len(train_counts)
        for region, bins in shot_kwargs["regions"].items():
            for b in bins:
                out[int(b)] = region
        return out
    many, few = shot_kwargs.get("many_shot", 100), shot_kwargs.get("few_shot", 20)
    return ["many" if c > many else "few" if c < few else "medium" for c in train_counts]


def plot_per_bin(result: Mapping[str, Any], path: Path, methods: Sequence[str] = (VANILLA, GROUP_DIR, DIRLOSS)) -> Path | None:
    """Per-bin test MAE (mean ± std over seeds) against the label, over the training histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in methods if m in result["methods"]]
    if not present:
        return None
    edges = np.asarray(result["shot"]["bin_edges"], dtype=np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    counts = np.asarray(result["train_counts"], dtype=np.float64)
    fig, ax_hist = plt.subplots(figsize=(8, 3.8), dpi=120)
    regions = result.get("bin_regions") or bin_regions(counts, result["shot"])
    shades = {"many": "0.70", "medium": "0.83", "few": "#f4c99b", None: "0.93"}
    for region in ("many", "medium", "few"):
        sel = np.array([r == region for r in regions])
        if sel.any():
            ax_hist.bar(centres[sel], counts[sel], width=width[sel] * 0.95, color=shades[region], label=f"train labels ({region}-shot bins)")
    ax_hist.set_ylabel("training labels per bin")
    ax_hist.set_xlabel("label")
    ax = ax_hist.twinx()
    colours = {VANILLA: "tab:blue", GROUP_DIR: "tab:red", DIRLOSS: "tab:green"}
    for m in present:
        mean = np.asarray(result["methods"][m]["per_bin_mae_mean"], dtype=np.float64)
        std = np.asarray(result["methods"][m]["per_bin_mae_std"], dtype=np.float64)
        ok = np.isfinite(mean)
        c = colours.get(m)
        ax.plot(centres[ok], mean[ok], marker="o", ms=3, lw=1.5, color=c, label=f"{m} test MAE")
        ax.fill_between(centres[ok], (mean - np.nan_to_num(std))[ok], (mean + np.nan_to_num(std))[ok], color=c, alpha=0.2, lw=0)
    ax.set_ylabel("test MAE per bin")
    ax.set_ylim(bottom=0)
    ax_hist.set_title(f"{result['dataset']}: per-bin test MAE ({result['protocol']['seeds']} seeds) over the training label histogram", fontsize=9)
    handles = ax_hist.get_legend_handles_labels()[0] + ax.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], fontsize=7, loc="upper left", bbox_to_anchor=(1.13, 1.0), borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def merge_result(path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """``fresh`` with the methods of the earlier result at ``path`` that this run did not
    re-run (``--merge``: re-run some methods of a finished data set, keep the others).
    Only results of the same protocol are merged; the commands are both recorded."""
    if not path.is_file():
        return fresh
    old = json.loads(path.read_text())
    keys = ("seeds", "select_seeds", "config", "max_grid", "max_train", "quick")
    same = json.loads(json.dumps({k: fresh["protocol"].get(k) for k in keys}))  # tuples -> lists
    if any(old["protocol"].get(k) != same[k] for k in keys):
        raise SystemExit(f"--merge: {path} was made with another protocol; re-run all methods instead")
    methods = {**old["methods"], **fresh["methods"]}
    merged = dict(fresh)
    merged["methods"] = {m: methods[m] for m in [*METHODS, *methods] if m in methods}
    merged["command"] = f"{old['command']}; then {fresh['command']}"
    merged["wall_seconds"] = old["wall_seconds"] + fresh["wall_seconds"]
    merged["checks"] = dataset_checks(merged["kind"], merged["methods"])
    return merged


def _write_dataset(result: Mapping[str, Any], out_dir: Path, img_dir: Path, args: argparse.Namespace) -> None:
    (out_dir / f"{result['dataset']}.json").write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    (out_dir / f"{result['dataset']}.md").write_text(markdown_table(result))
    if not args.no_plots:
        plot_per_bin(result, img_dir / f"{result['dataset']}-per-bin.png")


def _load_all(out_dir: Path, fresh: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """This run's results plus any other data sets already in ``out_dir`` (for the summary)."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(out_dir.glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and "methods" in r and "kind" in r:
            out[r["dataset"]] = r
    out.update(fresh)
    order = {"stsb": 0, "tabular": 1, "synthetic": 2}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[1]["kind"], 3), kv[0])))


def machine_info(workers: int) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "workers": workers,
        "threads_per_worker": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# =============================================================================================
# CLI
# =============================================================================================
STSB_EPOCHS = 40
TABULAR_STEPS = 1000
QUICK = {"seeds": 2, "select_seeds": 1, "max_grid": 2, "stsb_epochs": 3, "steps": 120, "max_train": 2000}


def plan_datasets(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """``(name, loader spec, kind)`` of every data set named by ``--datasets``."""
    return _expand(args.datasets, bd.default_data_dir(args.data_dir))


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
    return TrainConfig(hidden=hidden, epochs=epochs, batch_size=args.batch_size, lr=args.lr, dropout=args.dropout)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dir_bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["stsb-dir", "all-tabular"], help="stsb-dir, synthetic, all-tabular, a table name, or tabular:<dir>/<name> (default: stsb-dir all-tabular)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="default: all")
    p.add_argument("--data-dir", default=None, help="data directory (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    p.add_argument("--cache-dir", default=None, help="STS-B embedding cache (default ~/.cache/dirloss)")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT), help="where <dataset>.json/.md go (default benchmarks/results)")
    p.add_argument("--img-dir", default=str(DEFAULT_IMG), help="where the plots go (default docs/img)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per chosen setting (default 5; quick 2)")
    p.add_argument("--select-seeds", type=int, default=None, help="seeds per grid setting for the selection on validation; their models of the chosen setting are tested too (default 2; quick 1)")
    p.add_argument("--workers", type=int, default=2, help="worker processes, 1 thread each (1: run in this process)")
    p.add_argument("--max-grid", type=int, default=None, help="try only the first K settings of each grid (default all; quick 2)")
    p.add_argument("--stsb-epochs", type=int, default=None, help=f"epochs on STS-B (default {STSB_EPOCHS}; quick {QUICK['stsb_epochs']})")
    p.add_argument("--steps", type=int, default=None, help=f"target optimiser steps on a table (default {TABULAR_STEPS}; quick {QUICK['steps']})")
    p.add_argument("--epochs", type=int, default=None, help="epochs on every data set (overrides --stsb-epochs/--steps)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--max-train", type=int, default=None, help="subsample the training split (smoke runs; quick 2000)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rebuild the .md tables, plots and summary from the JSON in --out-dir")
    p.add_argument("--merge", action="store_true", help="keep the other methods of a data set's earlier result in --out-dir (re-run some methods only)")
    args = p.parse_args(argv)
    defaults = {"seeds": 5, "select_seeds": 2, "max_grid": None, "stsb_epochs": STSB_EPOCHS, "steps": TABULAR_STEPS, "max_train": None}
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else default)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if not 1 <= args.select_seeds <= args.seeds:
        p.error("--select-seeds must be between 1 and --seeds")
    if args.max_grid is not None and args.max_grid < 1:
        p.error("--max-grid must be >= 1")
    args.command = "python -m benchmarks.dir_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    return args


def report_only(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    require_bench_extra(args, progress=False)
    out_dir, img_dir = Path(args.out_dir), Path(args.img_dir)
    if not out_dir.is_dir():
        raise SystemExit(f"--report-only: --out-dir {out_dir} does not exist (nothing to report)")
    results = _load_all(out_dir, {})
    for r in results.values():
        r.setdefault("bin_regions", bin_regions(np.asarray(r["train_counts"]), r["shot"]))
        r["checks"] = dataset_checks(r["kind"], r["methods"])  # the current targets
        _write_dataset(r, out_dir, img_dir, args)
    wall = None  # keep the wall time that the benchmark run recorded in the old summary
    old = out_dir / "summary.md"
    if old.is_file():
        found = re.search(r"Wall time of this invocation: (\d+(?:\.\d+)?) s", old.read_text())
        wall = float(found.group(1)) if found else None
    summary = summarise(results, wall=wall, command=next(iter(results.values()))["command"] if results else "")
    (out_dir / "summary.md").write_text(summary)
    print(summary)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    if args.report_only:
        return report_only(args)
    return run(args)


if __name__ == "__main__":
    main()
