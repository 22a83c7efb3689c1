r"""Validation-only evidence for the default candidates of :func:`dirloss.select_inference`.

Trains the benchmark's ``vanilla`` and ``dirloss`` models (:mod:`benchmarks.methods`: same
data, backbone, optimiser and seeds as :mod:`benchmarks.dir_bench`), keeps every model's
validation logits and experts, and scores inference settings on the **validation** split
only (the test split is never loaded into a score)::

    python -m benchmarks.inference_search --protocol dir --out /tmp/inference-dir.json
    python -m benchmarks.inference_search --protocol natural --out /tmp/inference-natural.json
    python -m benchmarks.inference_search --evidence /tmp/inference-dir.json

A candidate set (trainings x inference settings) is judged as the library would use it: the
rule (lowest bMAE, or few-shot MAE, among the candidates within 2 % of the best MAE) picks
with the mean validation scores of seeds 0-1 and is scored on seed 2's model (``--holdout
seed``), or picks on one random half of the validation rows and is scored on the other half
with seed 2's model (``--holdout rows``, both halves in turn); every score is divided by
vanilla's on the same rows and seed, then the geometric mean over the data sets is taken.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import dir_bench as db  # noqa: E402
from benchmarks.datasets import (  # noqa: E402
    PROTOCOLS,
    DataSpec,
    Prepared,
    check_data_present,
    expand_datasets,
    prepare,
)
from benchmarks.evaluation import evaluate  # noqa: E402
from benchmarks.methods import METHODS  # noqa: E402
from benchmarks.training import train  # noqa: E402
from dirloss import MultiExpertHead  # noqa: E402
from dirloss import functional as DF  # noqa: E402

TRAININGS = (("vanilla", 0), ("dirloss", 0), ("dirloss", 1), ("dirloss", 2))
"""(method, grid setting) of :data:`benchmarks.methods.METHODS` trained per data set and seed."""
SEEDS = (0, 1, 2)
TAUS = (0.0, 0.5, 1.0, 1.5)
TOP_KS = (2, 3, 4)
METRICS = ("all_mae", "few_mae", "many_mae", "bmae")
HALF_SEED = 123  # the fixed random split of the validation rows into halves


def inference_settings() -> list[tuple[str, int, float]]:
    """Every ``(mode, top_k, tau)`` scored: soft, argmax and top-k for each k and tau."""
    modes = [("soft", 0), ("argmax", 0)] + [("topk", k) for k in TOP_KS]
    return [(mode, k, tau) for (mode, k), tau in itertools.product(modes, TAUS)]


def setting_key(mode: str, top_k: int, tau: float) -> str:
    """``("topk", 3, 0.5)`` -> ``"top3/0.5"``; ``("soft", 0, 0.0)`` -> ``"soft/0"``."""
    return f"{'top' + str(top_k) if mode == 'topk' else mode}/{tau:g}"


def _halves(n: int) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(HALF_SEED).permutation(n)
    return {"": np.arange(n), "A": np.sort(perm[: n // 2]), "B": np.sort(perm[n // 2:])}


def _scores(data: Prepared, pred: np.ndarray) -> dict[str, dict[str, float]]:
    """The metrics of ``pred`` on the whole validation split and on each half."""
    out = {}
    for half, rows in _halves(len(data.labels["val"])).items():
        data.labels["val" + half] = data.labels["val"][rows]
        scores = evaluate(data, pred[rows], "val" + half).scores
        out[half] = {m: scores[m] for m in METRICS}
    return out


def run_one(job: tuple[DataSpec, str, int, int, str | None]) -> dict[str, Any]:
    """Train one (data set, training, seed); score every inference setting on validation."""
    spec, method_name, setting, seed, data_dir = job
    torch.set_num_threads(1)
    data = prepare(spec, data_dir=data_dir, cache_dir=None)
    # the benchmark's own defaults (epochs, steps, batch size, lr, dropout)
    config = db.train_config(spec.kind, data.sizes.n_train, db.parse_args([]))
    method = METHODS[method_name]
    model, _ = train(method, method.grid[setting], data.x["train"], data.y["train"], config,
                     seed=seed)
    with torch.no_grad():
        _, out = model(data.x["val"])
    preds: dict[str, np.ndarray] = {}
    if isinstance(model.head, MultiExpertHead):
        log_prior = model.head.log_prior
        for mode, top_k, tau in inference_settings():
            pred = DF.combine_experts(out.logits, out.experts, mode, top_k=max(top_k, 1),
                                      logit_adjustment=tau * log_prior)
            preds[setting_key(mode, top_k, tau)] = pred[:, 0].double().numpy()
    else:
        preds["-"] = out[:, 0].double().numpy()
    return {"data": spec.name, "training": f"{method_name}{setting}", "seed": seed,
            "val": {key: _scores(data, pred) for key, pred in preds.items()}}


# ---------------------------------------------------------------------------------------------
# The evidence table
# ---------------------------------------------------------------------------------------------
def index(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``runs[data][candidate][seed + half][metric]``, candidate ``"<training>|<setting>"``
    (half ``""`` for all validation rows, ``"A"`` or ``"B"``)."""
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        for key, halves in r["val"].items():
            cand = runs.setdefault(r["data"], {}).setdefault(f"{r['training']}|{key}", {})
            for half, scores in halves.items():
                cand[f"{r['seed']}{half}"] = scores
    return runs


def pick(cands: Mapping[str, Mapping[str, Mapping[str, float]]], seeds: Sequence[str],
         metric: str, guard: float = 0.02) -> str:
    """The library's rule on the mean over ``seeds``: the lowest ``metric`` among the
    candidates whose MAE is within ``guard`` of the lowest (ties: the first)."""
    def mean(c: str, m: str) -> float:
        return float(np.mean([cands[c][s][m] for s in seeds]))

    best = min(mean(c, "all_mae") for c in cands)
    allowed = [c for c in cands if mean(c, "all_mae") <= best * (1 + guard)]
    return min(allowed, key=lambda c: mean(c, metric))


HOLDOUTS = {"seed": [(("0", "1"), "2")], "rows": [(("0A", "1A"), "2B"), (("0B", "1B"), "2A")]}

CANDIDATE_SETS: dict[str, list[str]] = {
    "soft, argmax x tau {0, 0.5, 1} (0.3 before top-k)":
        [f"{m}/{t:g}" for m in ("soft", "argmax") for t in (0, 0.5, 1)],
    "+ top-2 x tau {0, 0.5, 1}":
        [f"{m}/{t:g}" for m in ("soft", "argmax", "top2") for t in (0, 0.5, 1)],
    "+ top-3 x tau {0, 0.5, 1} (the default)":
        [f"{m}/{t:g}" for m in ("soft", "argmax", "top3") for t in (0, 0.5, 1)],
    "+ top-4 x tau {0, 0.5, 1}":
        [f"{m}/{t:g}" for m in ("soft", "argmax", "top4") for t in (0, 0.5, 1)],
    "+ tau 1.5 (soft, argmax)":
        [f"{m}/{t:g}" for m in ("soft", "argmax") for t in (0, 0.5, 1, 1.5)],
}
"""Named inference-setting lists, each tried on the three ``dirloss`` trainings."""


def evidence_table(results: Sequence[Mapping[str, Any]], holdout: str = "seed") -> str:
    runs = index(results)
    lines = ["| candidates (3 trainings x), rule | All | few-shot | many-shot | bMAE | "
             "All below vanilla |", "|---|---:|---:|---:|---:|---:|"]
    for name, settings in CANDIDATE_SETS.items():
        for metric in ("bmae", "few_mae"):
            ratios: dict[str, list[float]] = {m: [] for m in METRICS}
            for cands in runs.values():
                pool = {c: v for c, v in cands.items()
                        if c.split("|")[0] != "vanilla0" and c.split("|")[1] in settings}
                for seeds, held in HOLDOUTS[holdout]:
                    chosen = pool[pick(pool, seeds, metric)][held]
                    vanilla = cands["vanilla0|-"][held]
                    for m in METRICS:
                        ratios[m].append(chosen[m] / vanilla[m])
            cells = [f"{100 * (math.exp(np.mean(np.log(ratios[m]))) - 1):+.1f}%" for m in METRICS]
            wins = sum(r < 1 for r in ratios["all_mae"])
            rule = "bmae" if metric == "bmae" else '`metric="few"`'
            lines.append(f"| {name}, {rule} | " + " | ".join(cells)
                         + f" | {wins}/{len(ratios['all_mae'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["stsb-dir", "all-tabular"])
    ap.add_argument("--protocol", choices=PROTOCOLS, default="dir")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", default=None,
                    help="data directory (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    ap.add_argument("--out", default="inference_search.json")
    ap.add_argument("--evidence", nargs="+", metavar="JSON", default=None,
                    help="print the evidence tables from saved runs and exit")
    args = ap.parse_args(argv)
    if args.evidence:
        results: list[dict[str, Any]] = []
        for path in args.evidence:
            results += json.loads(Path(path).read_text())
        for holdout in HOLDOUTS:
            print(f"\nheld out: {holdout}\n\n{evidence_table(results, holdout)}")
        return
    from benchmarks import data as bd
    plans = expand_datasets(args.datasets, bd.default_data_dir(args.data_dir), args.protocol)
    check_data_present(plans, args.data_dir)
    jobs = [(spec, m, k, seed, args.data_dir)
            for spec, (m, k), seed in itertools.product(plans, TRAININGS, SEEDS)]
    results = []
    with get_context("spawn").Pool(args.workers) as pool:
        for i, res in enumerate(pool.imap_unordered(run_one, jobs)):
            results.append(res)
            print(f"[{i + 1}/{len(jobs)}] {res['data']} {res['training']} seed {res['seed']}",
                  file=sys.stderr)
    Path(args.out).write_text(json.dumps(results))
    for holdout in HOLDOUTS:
        print(f"\nheld out: {holdout}\n\n{evidence_table(results, holdout)}")


if __name__ == "__main__":
    main()
