"""Tests of the DIR accuracy benchmark (benchmarks/dir_bench.py and the stage modules it runs:
datasets, methods, training, selection, evaluation, scheduler, results, targets, reporting).

The end-to-end test runs the CLI on ``synthetic`` and, when the tabular data are present,
``concreteStrength`` with tiny settings (a few optimiser steps, one grid setting, two seeds)
into a temporary directory; it checks the files and their structure, not accuracy.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not (Path(__file__).resolve().parents[1] / "benchmarks").is_dir():  # e.g. the sdist
    pytest.skip("needs the repository's benchmarks/ (not shipped in the sdist)",
                allow_module_level=True)

from benchmarks import data as bd  # noqa: E402
from benchmarks import dir_bench as db  # noqa: E402
from benchmarks.datasets import DataSpec, expand_datasets, prepare  # noqa: E402
from benchmarks.evaluation import evaluate  # noqa: E402
from benchmarks.methods import (  # noqa: E402
    METHODS,
    InfeasibleSetting,
    build_model,
    make_loss,
)
from benchmarks.results import DatasetResult, MethodResult  # noqa: E402
from benchmarks.selection import Candidate, Chosen, select  # noqa: E402
from benchmarks.targets import (  # noqa: E402
    check_balanced_targets,
    check_targets,
    dataset_checks,
)
from benchmarks.training import TrainConfig, predict, train  # noqa: E402
from dirloss import MultiExpertHead  # noqa: E402

TABULAR = bd.default_data_dir() / "tabular"
HAS_TABULAR = (TABULAR / "splits" / "concreteStrength_train.csv").is_file()


def test_grids_within_budget_and_distinct():
    for m in METHODS.values():
        assert 1 <= len(m.grid) <= 6, m.name
        assert len({tuple(sorted(p.items())) for p in m.grid}) == len(m.grid), m.name
        if m.grouped:
            assert all("num_groups" in p for p in m.grid)
    # the ablations are tuned over exactly Group-DIR's grid
    for name in ("abl-ce", "abl-soft", "abl-ce-con"):
        assert METHODS[name].grid == METHODS["group-dir"].grid


def test_same_initialisation_for_every_method():
    ref = build_model(METHODS["vanilla"], METHODS["vanilla"].grid[0], 7, (16, 8), seed=3)
    x = torch.randn(5, 7)
    for m in METHODS.values():
        model = build_model(m, m.grid[0], 7, (16, 8), seed=3)
        for a, b in zip(ref.backbone.parameters(), model.backbone.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        # before training, every head predicts what the linear layer predicts
        torch.testing.assert_close(
            torch.as_tensor(predict(model, x)), torch.as_tensor(predict(ref, x)),
            rtol=1e-6, atol=1e-6,
        )
        if m.grouped:
            assert isinstance(model.head, MultiExpertHead)
            assert model.head.num_groups == m.grid[0]["num_groups"]
    other = build_model(METHODS["vanilla"], {}, 7, (16, 8), seed=4)
    assert not torch.equal(next(ref.backbone.parameters()), next(other.backbone.parameters()))


def test_every_loss_trains_a_step_and_is_finite():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = x[:, 0] + 0.1 * torch.randn(64, generator=g)
    y = (y - y.mean()) / y.std()
    for m in METHODS.values():
        config = TrainConfig(hidden=(16, 8), epochs=2, batch_size=32)
        model, rec = train(m, m.grid[0], x, y, config, seed=0)
        assert rec.finite, m.name
        assert np.isfinite(predict(model, x)).all()


def test_fds_steps_its_statistics_each_epoch_and_calibrates_only_in_training():
    """The FDS method finalises its statistics after every epoch (optimise calls the loss's
    end_epoch) and the trained model predicts without it (the identity at inference)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
    m = METHODS["fds"]
    loss, _ = make_loss(m, m.grid[0], y, seed=0)
    model = build_model(m, m.grid[0], 5, (16, 8), seed=0)
    from benchmarks.training import optimise

    optimise(model, loss, [], x, y, TrainConfig(hidden=(16, 8), epochs=3, batch_size=32), seed=0)
    fds = loss.fds
    assert int(fds.epoch) == 3 and fds.calibrating
    with torch.no_grad():
        features, out = model(x)
        torch.testing.assert_close(out, model.head(features), rtol=0, atol=0)


@pytest.mark.skipif(not HAS_TABULAR, reason=f"no tabular data at {TABULAR}")
def test_dir_protocol_balances_validation_and_test():
    """Under --protocol dir a table's rows are pooled and re-split: the same rows in all,
    disjoint splits, validation and test balanced over the shot bins (at most per_bin rows
    in a bin, at most a third of it each), the same split every time."""
    natural = prepare(DataSpec("concreteStrength", f"tabular:{TABULAR / 'concreteStrength'}",
                               "tabular"), data_dir=None, cache_dir=None)
    spec = expand_datasets(["concreteStrength"], TABULAR.parent, "dir")[0]
    assert spec.protocol == "dir"
    data = prepare(spec, data_dir=None, cache_dir=None)
    assert sum(len(v) for v in data.labels.values()) == sum(
        len(v) for v in natural.labels.values())
    pooled = np.sort(np.concatenate(list(data.labels.values())))
    np.testing.assert_allclose(pooled, np.sort(np.concatenate(list(natural.labels.values()))),
                               rtol=1e-6)
    edges = bd.tabular_shot_kwargs(pooled)["bin_edges"]
    counts = {s: np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0]
              for s, v in data.labels.items()}
    total = sum(counts.values())
    per_bin = counts["val"].max()
    assert 5 <= per_bin < len(data.labels["train"]) / 10
    for split in ("val", "test"):
        assert (counts[split] <= np.minimum(per_bin, total // 3)).all()
    # bins with enough rows give per_bin to each evaluation split
    full = total >= 3 * per_bin
    assert (counts["val"][full] == per_bin).all() and (counts["test"][full] == per_bin).all()
    again = prepare(spec, data_dir=None, cache_dir=None)
    np.testing.assert_array_equal(again.labels["test"], data.labels["test"])
    with pytest.raises(SystemExit, match="unknown protocol"):
        expand_datasets(["concreteStrength"], TABULAR.parent, "balanced")


def test_same_data_order_per_seed(monkeypatch):
    """The batch order depends on the seed only, not on the method."""
    seen = {}
    x, y = torch.randn(40, 3), torch.randn(40)
    for name in ("vanilla", "group-dir"):
        batches = []
        m = METHODS[name]
        loss, _ = make_loss(m, m.grid[0], y, seed=0)

        def recording(model, xb, yb, _loss=loss, _b=batches):
            _b.append(yb.clone())
            return _loss(model, xb, yb)

        monkeypatch.setattr("benchmarks.methods.make_loss", lambda *a, _r=recording, **k: (_r, []))
        train(m, m.grid[0], x, y, TrainConfig(hidden=(8, 4), epochs=2, batch_size=16), seed=5)
        seen[name] = batches
    assert len(seen["vanilla"]) == len(seen["group-dir"]) == 6  # 40 = 16 + 16 + 8, two epochs
    for a, b in zip(seen["vanilla"], seen["group-dir"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_infeasible_quantile_setting_raises():
    y = torch.tensor([0.0] * 50 + [1.0] * 50 + [2.0])  # 3 distinct values: no 10 equal-mass groups
    m = METHODS["group-dir"]
    quantile = next(p for p in m.grid if p.get("strategy") == "quantile" and p["num_groups"] >= 10)
    with pytest.raises(InfeasibleSetting):
        make_loss(m, quantile, y, seed=0)


def test_select_lowest_validation_bmae():
    def cand(order, bmae, finite=True, mae=1.0):
        val = {"bmae": bmae, "all_mae": mae}
        return Candidate(order, {}, "argmax", val, [val], finite, None, 0.0, 0.0, order)

    infeasible = Candidate(0, {}, None, None, None, False, "no such groups", 0.0, math.nan, 0)
    assert select([cand(0, 2.0), cand(1, 1.0), cand(2, 1.5)]).order == 1
    assert select([cand(0, 1.0), cand(1, 1.0)]).order == 0  # ties: grid order
    assert select([cand(0, 2.0), cand(1, 0.5, finite=False), cand(2, math.nan)]).order == 0
    assert select([infeasible, cand(1, 3.0)]).order == 1
    # the library's rule: only candidates within 1 + mae_guard of the lowest MAE compete
    guarded = [cand(0, 2.0, mae=1.0), cand(1, 1.0, mae=1.2)]
    assert select(guarded).order == 1
    assert select(guarded, mae_guard=0.1).order == 0
    assert select(guarded, mae_guard=0.25).order == 1
    # the result file lists only the fields that apply
    assert "infeasible" not in cand(0, 1.0).to_json()
    assert "val_per_seed" not in infeasible.to_json()
    assert Candidate.from_json(infeasible.to_json()) == infeasible


def test_evaluate_reports_label_units():
    synthetic = DataSpec("synthetic", "synthetic", "synthetic")
    data = prepare(synthetic, data_dir=None, cache_dir=None, max_train=500)
    # targets standardised with training statistics
    y_train = data.y["train"]
    assert abs(float(y_train.mean())) < 1e-5
    assert abs(float(y_train.std(unbiased=False)) - 1) < 1e-4
    exact = evaluate(data, data.y["test"].numpy(), "test")
    scores = exact.scores
    assert scores["all_mae"] < 1e-4 and scores["bmae"] < 1e-4 and scores["pearson"] > 0.9999
    zero = evaluate(data, np.zeros(len(data.y["test"])), "test")  # predicts the training mean
    expect = np.abs(data.labels["test"] - data.labels["train"].mean()).mean()
    assert abs(zero.scores["all_mae"] - expect) < 1e-3 * max(1.0, expect)
    assert data.labels["test"].max() > 50  # label units of the synthetic task are 0..100
    assert len(exact.per_bin_mae) == len(data.shot_kwargs["bin_edges"]) - 1


def test_expand_and_train_config(tmp_path):
    names = [d.name for d in expand_datasets(["stsb", "all-tabular", "synthetic"], tmp_path)]
    assert names == ["stsb-dir", *bd.TABULAR_SETS, "synthetic"]
    (foo,) = expand_datasets([f"tabular:{tmp_path}/foo"], tmp_path)
    assert (foo.name, foo.kind) == ("foo", "tabular") and foo.spec.endswith("foo")
    with pytest.raises(SystemExit):
        expand_datasets(["nope"], tmp_path)
    with pytest.raises(SystemExit):
        expand_datasets(["abalone", "abalone"], tmp_path)
    args = db.parse_args(["--steps", "100", "--batch-size", "50"])
    assert db.train_config("tabular", 120, args).epochs == 34  # 3 batches per epoch
    assert db.train_config("stsb", 5000, args).hidden == (256, 128)
    assert db.parse_args(["--quick"]).seeds == db.QUICK["seeds"]


def _dataset_result(kind, means):
    def method(mean):
        std = {k: 0.01 for k in mean}
        return MethodResult("", [], Chosen(0, {}, None), mean, std, [], [], [], 0.0)

    methods = {n: method(m) for n, m in means.items()}
    return DatasetResult("", "", kind, "", None, None, None, {}, {}, [], [], methods, 0.0,
                         dataset_checks(kind, methods))


def test_target_checks():
    # The targets judge the library's defaults (``dirloss``) against vanilla and the best method.
    tab = _dataset_result("tabular", {
        "vanilla": {"bmae": 1.00, "all_mae": 1.00},
        "dirloss": {"bmae": 1.005, "all_mae": 1.03},
        "lds": {"bmae": 0.999, "all_mae": 1.1},
    })
    c = tab.checks
    assert c.bmae_best_or_within_1std and c.bmae_best_method == "lds"
    assert not c.bmae_beats_vanilla and not c.all_mae_not_2pct_worse_than_vanilla
    assert c.few_mae_vs_vanilla is None and "few_mae_vs_vanilla" not in c.to_json()
    stsb = _dataset_result("stsb", {
        "vanilla": {"few_mae": 1.0, "all_mae": 0.60, "bmae": 1.0},
        "dirloss": {"few_mae": 0.85, "all_mae": 0.56, "bmae": 0.9},
        "rnc": {"few_mae": 0.95, "all_mae": 0.598, "bmae": 0.95},
    })
    c = stsb.checks
    assert c.all_mae_5pct_below_vanilla and c.few_mae_not_above_vanilla
    assert c.bmae_beats_vanilla and c.bmae_best_method == "dirloss"
    assert _dataset_result("tabular", {"vanilla": {"bmae": 1.0, "all_mae": 1.0}}).checks is None
    lines = check_targets({"stsb-dir": stsb, "t": tab})
    # STS-B line: MET; MAE never 2% worse: MISSED (t); bMAE beats vanilla on 2 of 2: MISSED;
    # best or within 1 std on 2 of 2: MET
    assert sum("MET" in s and "MISSED" not in s for s in lines) == 2
    assert sum("MISSED" in s for s in lines) == 2


def test_balanced_targets():
    """The dir-protocol verdicts, on made-up results whose outcome is known by hand."""
    def ds(dirloss, vanilla=(1.0, 1.0), others=None, tail=None):
        means = {"vanilla": {"all_mae": vanilla[0], "few_mae": vanilla[1], "bmae": 1.0},
                 "dirloss": {"all_mae": dirloss[0], "few_mae": dirloss[1], "bmae": 1.0}}
        for name, (a, f) in (others or {}).items():
            means[name] = {"all_mae": a, "few_mae": f, "bmae": 1.0}
        if tail:
            means["dirloss-tail"] = {"all_mae": tail[0], "few_mae": tail[1], "bmae": 1.0}
        return _dataset_result("tabular", means)

    # defaults below vanilla on both everywhere, -20% few in geometric mean; LDS better on few
    # only; the tail point within 3% of LDS's few with no worse All on both data sets
    good = {
        "a": ds((0.9, 0.8), others={"lds": (0.95, 0.7)}, tail=(0.93, 0.71)),
        "b": ds((0.95, 0.8), others={"lds": (1.0, 0.75)}, tail=(0.99, 0.76)),
    }
    lines = check_balanced_targets(good)
    assert len(lines) == 6 and all("MET" in s and "MISSED" not in s for s in lines), lines
    # a method better on both All and few (on b); few above vanilla on b; tail misses b
    bad = {"a": good["a"],
           "b": ds((0.95, 1.05), others={"bmc": (0.9, 0.9)}, tail=(0.99, 1.0))}
    lines = check_balanced_targets(bad)
    # All below vanilla MET; All near the best, few below vanilla, -15 % few, no dominance and
    # the tail point MISSED
    assert ["MISSED" not in s for s in lines] == [True, False, False, False, False, False], lines
    assert "b: bmc" in lines[4]
    assert check_balanced_targets({"x": _dataset_result("tabular", {"vanilla": {"bmae": 1}})}) == []
    # a data set without few-shot test rows (NaN) is left out of the few-shot checks only
    flat = {**good, "c": ds((0.9, math.nan), vanilla=(1.0, math.nan), tail=(0.9, math.nan))}
    lines = check_balanced_targets(flat)
    assert all("MET" in s and "MISSED" not in s for s in lines[:-1]), lines
    assert "(2/2;" in lines[2] and "-" in lines[3] and "nan" not in lines[3], lines
    assert lines[-1].endswith("(no few-shot test rows): c"), lines


def test_select_by_few_shot_mae():
    """The tail row's rule: the lowest validation few-shot MAE under the same MAE guard."""
    def cand(order, few, mae):
        val = {"bmae": 1.0, "all_mae": mae, "few_mae": few}
        return Candidate(order, {}, "soft", val, [val], True, None, 0.0, 0.0, order)

    cands = [cand(0, 2.0, 1.0), cand(1, 1.0, 1.015), cand(2, 0.5, 1.2)]
    assert select(cands, mae_guard=0.02, metric="few_mae").order == 1
    assert select(cands, mae_guard=None, metric="few_mae").order == 2
    assert select(cands, mae_guard=0.02).order == 0  # bmae ties: grid order


def test_cli_end_to_end(tmp_path):
    # The progress bar and the plots need the bench extra, which the README's test command
    # does not install.
    for module in ("tqdm", "matplotlib"):
        pytest.importorskip(
            module, reason=f"{module} is not installed (pip install -e \".[bench]\")"
        )
    datasets = ["synthetic"] + ([f"tabular:{TABULAR}/concreteStrength"] if HAS_TABULAR else [])
    out, img = tmp_path / "results", tmp_path / "img"
    argv = [
        "--quick", "--datasets", *datasets, "--seeds", "2", "--max-grid", "1", "--steps", "6",
        "--max-train", "600", "--workers", "2", "--out-dir", str(out), "--img-dir", str(img),
        "--no-progress",
    ]
    results = db.main(argv)
    expected = ["synthetic"] + (["concreteStrength"] if HAS_TABULAR else [])
    assert sorted(results) == sorted(expected)
    for name in expected:
        r = json.loads((out / f"{name}.json").read_text())
        assert set(r["methods"]) == set(METHODS)
        assert r["protocol"]["seeds"] == 2 and r["protocol"]["config"]["epochs"] >= 1
        for m, res in r["methods"].items():
            # one setting; a grouped method tries it with each of its inference candidates
            assert len(res["grid"]) == (len(METHODS[m].inference) if METHODS[m].grouped else 1)
            assert res["chosen"]["setting"] == 0
            assert [s["seed"] for s in res["test_per_seed"]] == [0, 1]
            assert set(res["test_mean"]) >= {
                "all_mae", "few_mae", "bmae", "pearson", "all_mse", "many_gm"
            }
            assert len(res["per_bin_mae_mean"]) == len(r["shot"]["bin_edges"]) - 1
        assert math.isfinite(r["methods"]["vanilla"]["test_mean"]["all_mae"])
        assert "| vanilla |" in (out / f"{name}.md").read_text()
        assert (img / f"{name}-per-bin.png").stat().st_size > 1000
        assert (img / f"{name}-tradeoff.png").stat().st_size > 1000
        assert r["checks"]  # vanilla and group-dir are both present
    summary = (out / "summary.md").read_text()
    assert "## Targets" in summary and "synthetic" in summary
    # the report can be rebuilt from the JSON alone, and reading it back loses nothing
    written = {name: (out / f"{name}.json").read_text() for name in expected}
    again = db.main(["--report-only", "--out-dir", str(out), "--img-dir", str(img)])
    assert sorted(again) == sorted(expected)
    assert {name: (out / f"{name}.json").read_text() for name in expected} == written


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("path", sorted(p.name for p in RESULTS.glob("*.json")
                                        if not p.name.startswith("ops-")))  # bench_ops files
def test_saved_results_read_back_unchanged(path):
    """The result records read the committed files and write them back byte for byte."""
    text = (RESULTS / path).read_text()
    result = DatasetResult.from_json(json.loads(text))
    assert json.dumps(result.to_json(), indent=1, allow_nan=True) + "\n" == text
