r"""Validation-only search for the library's default recipe (the evidence behind the defaults).

Trains the benchmark's backbone (:mod:`benchmarks.methods`, same data loading, optimiser,
steps and seeds as :mod:`benchmarks.dir_bench`) with a few candidate recipes of
:class:`~dirloss.GroupDIRLoss` / :class:`~dirloss.MultiExpertHead` and scores every
(recipe, inference setting) on the **validation** split only (the test split is never
loaded into a score). Prints one table per data set and writes JSON::

    python -m benchmarks.recipe_search --out /tmp/recipes.json
    python -m benchmarks.recipe_search --datasets abalone airfoild --recipes default share0
    python -m benchmarks.recipe_search --evidence benchmarks/results/recipe_search/sweeps.json

The saved runs behind docs/guide.md ("The default recipe") are in
``benchmarks/results/recipe_search/sweeps.json`` (validation metrics only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Mapping, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import dir_bench as db  # noqa: E402
from benchmarks.datasets import DataSpec, check_data_present, expand_datasets, prepare  # noqa: E402
from benchmarks.evaluation import evaluate  # noqa: E402
from benchmarks.models import Regressor, mlp  # noqa: E402
from benchmarks.training import optimise  # noqa: E402
from dirloss import GroupBinner, GroupDIRLoss, MultiExpertHead  # noqa: E402

BASE = {
    "num_groups": 10, "strategy": "uniform", "residual": True, "expert_share": 1.0,
    "lambda_grc": 0.1, "lambda_mse": 10.0, "lambda_soft": 1.0, "lambda_mix": 0.0,
    "temperature": 0.1,
}
"""The provisional recipe the search started from (no mixture term); every recipe below
changes some of it. The library's defaults came out as ``mix`` (``lambda_mix`` = 1), with
``mix_s0_g20`` (``expert_share`` = 0 on 20 groups) as the one alternative the benchmark
also tries."""
RECIPES: dict[str, dict[str, Any]] = {
    "vanilla": {"vanilla": True},
    "default": {},
    "paper": {"residual": False, "expert_share": 0.0, "lambda_grc": 1.0, "lambda_mse": 10.0},
    "share0": {"expert_share": 0.0},
    "share0.5": {"expert_share": 0.5},
    "share2": {"expert_share": 2.0},
    "noresid": {"residual": False},
    "grc0": {"lambda_grc": 0.0},
    "grc1": {"lambda_grc": 1.0},
    "mse1": {"lambda_mse": 1.0},
    "mse100": {"lambda_mse": 100.0},
    "quantile": {"strategy": "quantile"},
    "g5": {"num_groups": 5},
    "g20": {"num_groups": 20},
    "mix": {"lambda_mix": 1.0},
    "mix_s0.5": {"lambda_mix": 1.0, "expert_share": 0.5},
    "mix_s0": {"lambda_mix": 1.0, "expert_share": 0.0},
    "g20s2": {"num_groups": 20, "expert_share": 2.0},
    "g20s2mix": {"num_groups": 20, "expert_share": 2.0, "lambda_mix": 1.0},
    "mixdom": {"lambda_mse": 1.0, "lambda_mix": 10.0},
    "mixonly": {"lambda_mse": 0.0, "lambda_mix": 10.0},
    "mixdom_s0": {"lambda_mse": 1.0, "lambda_mix": 10.0, "expert_share": 0.0},
    "g20s2mixdom": {"num_groups": 20, "expert_share": 2.0, "lambda_mse": 1.0, "lambda_mix": 10.0},
    "mix_s0_grc0": {"lambda_mix": 1.0, "expert_share": 0.0, "lambda_grc": 0.0},
    "mix_s0_noresid": {"lambda_mix": 1.0, "expert_share": 0.0, "residual": False},
    "mix_s0_g20": {"lambda_mix": 1.0, "expert_share": 0.0, "num_groups": 20},
    "mix_s0_grc0_g20": {"lambda_mix": 1.0, "expert_share": 0.0, "lambda_grc": 0.0,
                        "num_groups": 20},
    "mix_s0_noresid_grc0": {"lambda_mix": 1.0, "expert_share": 0.0, "residual": False,
                            "lambda_grc": 0.0},
    "bal0.5": {"lambda_mix": 1.0, "balance": 0.5},
    "bal0.25": {"lambda_mix": 1.0, "balance": 0.25},
}
INFERENCE = [("argmax", 0.0), ("soft", 0.0), ("soft", 0.5), ("soft", 1.0), ("argmax", 0.5)]


def run_one(job: tuple[DataSpec, str, int, dict[str, Any]]) -> dict[str, Any]:
    spec, recipe, seed, opts = job
    key = (spec.name, spec.spec, spec.kind, recipe, seed)  # the "job" of the saved runs
    torch.set_num_threads(1)
    data = prepare(spec, data_dir=opts["data_dir"], cache_dir=None)
    # the benchmark's own defaults (epochs, steps, batch size, lr, dropout)
    config = db.train_config(spec.kind, data.sizes.n_train, db.parse_args([]))
    p = {**BASE, **RECIPES[recipe]}
    x, y = data.x["train"], data.y["train"]
    torch.manual_seed(seed)
    backbone = mlp(x.shape[1], config.hidden)
    linear = torch.nn.Linear(config.hidden[-1], 1)
    start = time.perf_counter()
    if p.get("vanilla"):
        head: torch.nn.Module = linear
    else:
        try:
            binner = GroupBinner(p["num_groups"], strategy=p["strategy"]).fit(y)
        except ValueError as err:
            return {"job": key, "error": str(err)}
        head = MultiExpertHead.from_linear(linear, p["num_groups"], residual=p["residual"])
        criterion = GroupDIRLoss(
            binner, lambda_grc=p["lambda_grc"], lambda_mse=p["lambda_mse"],
            lambda_soft=p["lambda_soft"], lambda_mix=p["lambda_mix"],
            expert_share=p["expert_share"], temperature=p["temperature"],
        )

    def loss_fn(model: Regressor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        f = model.backbone(xb)
        if p.get("vanilla"):
            return F.mse_loss(model.head(f)[:, 0], yb)
        g = binner(yb)
        if p.get("balance"):
            return _balanced_loss(criterion, binner, model.head(f, g), f, yb, g, p)
        return criterion(model.head(f, g), f, yb, g).loss

    optimise(Regressor(backbone, head), loss_fn, [], x, y, config, seed=seed)
    out: dict[str, Any] = {"job": key, "seconds": time.perf_counter() - start, "val": {}}
    with torch.no_grad():
        f = backbone(data.x["val"])
        if not isinstance(head, MultiExpertHead):  # the vanilla recipe
            pred = head(f)[:, 0].double().numpy()
            out["val"]["-"] = evaluate(data, pred, "val").scores
        else:
            for mode, tau in INFERENCE:
                head.inference = mode
                head.set_logit_adjustment(tau, binner.counts)
                pred = head(f).prediction[:, 0].double().numpy()
                out["val"][f"{mode}/{tau:g}"] = evaluate(data, pred, "val").scores
            head.set_logit_adjustment(0.0)
            g_true = binner(data.y["val"])
            out["group_acc"] = float((head(f).logits.argmax(1) == g_true).float().mean())
    return out


def _balanced_loss(criterion: Any, binner: Any, out: Any, f: torch.Tensor, y: torch.Tensor,
                   g: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    """Experiment: the regression terms weighted by counts[g_i] ** -balance (mean 1 over
    the training labels)."""
    import dirloss.functional as DF
    counts = binner.counts.double().clamp_min(1)
    w_group = counts ** -p["balance"]
    w_group = w_group / ((counts * w_group).sum() / counts.sum())
    w = w_group[g].float()
    unit = binner.label_std.float() ** 2
    if p["expert_share"]:
        table = DF.expert_share_table(binner.num_groups, p["expert_share"])[g]
    else:
        table = F.one_hot(g, binner.num_groups).float()
    sq = (out.experts[:, :, 0] - y[:, None]).square()
    mse = (w[:, None] * table * sq).sum() / (len(y) * unit)
    mix = (out.logits.softmax(1) * out.experts[:, :, 0]).sum(1)
    mixl = (w * (mix - y).square()).sum() / (len(y) * unit)
    rest = (criterion.lambda_grc * criterion.contrastive(f, g)
            + criterion.lambda_soft * criterion.soft_label(out.logits, g))
    return rest + p["lambda_mse"] * mse + p["lambda_mix"] * mixl


def main(argv: Any = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["stsb-dir", "all-tabular"])
    ap.add_argument("--recipes", nargs="+", default=["vanilla", "default"], choices=list(RECIPES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", default=None,
                    help="data directory (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    ap.add_argument("--out", default="recipe_search.json")
    ap.add_argument("--evidence", nargs="+", metavar="JSON", default=None,
                    help="print the guide's evidence table from saved runs and exit (e.g. "
                    "benchmarks/results/recipe_search/sweeps.json)")
    args = ap.parse_args(argv)
    if args.evidence:
        runs: list[dict[str, Any]] = []
        for path in args.evidence:
            runs += json.loads(Path(path).read_text())
        print(evidence_table(runs))
        return
    from benchmarks import data as bd
    plans = expand_datasets(args.datasets, bd.default_data_dir(args.data_dir))
    check_data_present(plans, args.data_dir)
    opts = {"data_dir": args.data_dir}
    jobs = [(spec, recipe, seed, opts)
            for spec, recipe, seed in itertools.product(plans, args.recipes, args.seeds)]
    results: list[dict[str, Any]] = []
    with get_context("spawn").Pool(args.workers) as pool:
        for i, res in enumerate(pool.imap_unordered(run_one, jobs)):
            results.append(res)
            name, _, _, recipe, seed = res["job"]
            print(f"[{i + 1}/{len(jobs)}] {name} {recipe} seed {seed}", file=sys.stderr)
    Path(args.out).write_text(json.dumps(results, indent=1))
    report(results)


INF4 = ("soft/0", "soft/0.5", "argmax/0", "argmax/0.5")
EVIDENCE_ROWS: list[tuple[str, list[tuple[str, str]]]] = [
    ("defaults (residual, share 1, mixture 1, grc 0.1, mse 10, G 10 uniform)",
     [("mix", i) for i in INF4]),
    ("  without the mixture term (lambda_mix 0)", [("default", i) for i in INF4]),
    ("  mixture term dominant (lambda_mse 1, lambda_mix 10)", [("mixdom", i) for i in INF4]),
    ("  mixture term only (lambda_mse 0, lambda_mix 10)", [("mixonly", i) for i in INF4]),
    ("  expert_share 0 (true-group expert only), no mixture", [("share0", i) for i in INF4]),
    ("  expert_share 0.5, no mixture", [("share0.5", i) for i in INF4]),
    ("  expert_share 2, no mixture", [("share2", i) for i in INF4]),
    ("  independent experts (residual False), no mixture", [("noresid", i) for i in INF4]),
    ("  lambda_grc 0, no mixture", [("grc0", i) for i in INF4]),
    ("  lambda_grc 1, no mixture", [("grc1", i) for i in INF4]),
    ("  lambda_mse 1, no mixture", [("mse1", i) for i in INF4]),
    ("  lambda_mse 100, no mixture", [("mse100", i) for i in INF4]),
    ("  G 5, no mixture", [("g5", i) for i in INF4]),
    ("  G 20, no mixture", [("g20", i) for i in INF4]),
    ("  quantile groups, no mixture", [("quantile", i) for i in INF4]),
    ("  G 20, share 2, mixture 1", [("g20s2mix", i) for i in INF4]),
    ("paper's objective (lambda_mse 10 on standardised targets)", [("paper", i) for i in INF4]),
    ("benchmark grid: share {1, 0} x {soft, argmax tau 0.5}, mixture 1",
     [(r, i) for r in ("mix", "mix_s0") for i in ("soft/0", "argmax/0.5")]),
    ("same grid without the mixture term",
     [(r, i) for r in ("default", "share0") for i in ("soft/0", "argmax/0.5")]),
    ("group-balanced regression terms (weight counts ** -0.5), mixture 1",
     [("bal0.5", i) for i in INF4]),
    ("group-balanced regression terms (weight counts ** -0.25), mixture 1",
     [("bal0.25", i) for i in INF4]),
    ("benchmark grid, sharp alternative on G 20: {share 1, G 10; share 0, G 20} x "
     "{soft, argmax tau 0.5}",
     [(r, i) for r in ("mix", "mix_s0_g20") for i in ("soft/0", "argmax/0.5")]),
]
"""The rows of the guide's evidence table: a name and its (recipe, inference) candidates."""


def evidence_table(results: Sequence[Mapping[str, Any]], guard: float = 0.02) -> str:
    """Per row: on every data set, the library's rule (lowest bMAE among the candidates within
    ``guard`` of the best MAE, on the mean over seeds) against vanilla; counts and means."""
    table: dict[tuple[str, str, str], list[Mapping[str, float]]] = {}
    for r in results:
        for inf, m in r.get("val", {}).items():
            table.setdefault((r["job"][0], r["job"][3], inf), []).append(m)
    datasets = sorted({k[0] for k in table})

    def mean(key: tuple[str, str, str], metric: str) -> float:
        return float(np.mean([m[metric] for m in table[key]]))

    def rule(ds: str, cands: list[tuple[str, str]]) -> Any:
        scores = {c: (mean((ds, *c), "bmae"), mean((ds, *c), "all_mae"))
                  for c in cands if (ds, *c) in table}
        vanilla = (ds, "vanilla", "-")
        if not scores or vanilla not in table:
            return None
        best = min(a for _, a in scores.values())
        pick = min((c for c, v in scores.items() if v[1] <= (1 + guard) * best),
                   key=lambda c: scores[c][0])
        b, a = scores[pick]
        return (100 * (b / mean(vanilla, "bmae") - 1), 100 * (a / mean(vanilla, "all_mae") - 1))

    lines = ["| recipe (validation, 2 seeds) | bMAE < vanilla | MAE <= vanilla + 2% | "
             "mean bMAE vs vanilla | mean MAE vs vanilla | STS-B-DIR bMAE / MAE |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, cands in EVIDENCE_ROWS:
        got = {ds: o for ds in datasets if (o := rule(ds, cands))}
        if not got:
            continue
        n, st = len(got), got.get("stsb-dir")
        bmae, mae = [o[0] for o in got.values()], [o[1] for o in got.values()]
        lines.append(
            f"| {name.strip()} | {sum(b < 0 for b in bmae)}/{n} | {sum(a <= 2 for a in mae)}/{n} | "
            f"{np.mean(bmae):+.1f}% | {np.mean(mae):+.1f}% | "
            + (f"{st[0]:+.1f}% / {st[1]:+.1f}% |" if st else "– |")
        )
    return "\n".join(lines)


def report(results: Sequence[Mapping[str, Any]]) -> None:
    table: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for r in results:
        if "error" in r:
            continue
        for inf, m in r["val"].items():
            table.setdefault((r["job"][0], r["job"][3], inf), []).append(m)
    for ds in sorted({k[0] for k in table}):
        print(f"\n## {ds} (validation, mean over seeds): bMAE / MAE / few MAE")
        van = table.get((ds, "vanilla", "-"))
        for key in sorted(k for k in table if k[0] == ds):
            rows = table[key]
            b, a, f = (float(np.mean([m[k] for m in rows])) for k in ("bmae", "all_mae", "few_mae"))
            rel = ""
            if van:
                vb, va = (float(np.mean([m[k] for m in van])) for k in ("bmae", "all_mae"))
                rel = f"  (bMAE {100 * (b / vb - 1):+.1f}%, MAE {100 * (a / va - 1):+.1f}%)"
            print(f"{key[1]:>10} {key[2]:>10}: {b:.4g} / {a:.4g} / {f:.4g}{rel}")


if __name__ == "__main__":
    main()
