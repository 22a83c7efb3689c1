"""benchmarks/inference_search.py: the validation-only evidence behind the default candidates."""

from __future__ import annotations

import math

import pytest

from benchmarks import inference_search as search
from benchmarks.datasets import DataSpec, prepare

SYNTHETIC = DataSpec("synthetic", "synthetic", "synthetic")


@pytest.fixture(scope="module")
def synthetic_run():
    return search.run_one((SYNTHETIC, "dirloss", 0, 0, None))


def test_run_scores_every_setting_on_both_halves(synthetic_run):
    keys = [search.setting_key(*s) for s in search.inference_settings()]
    assert sorted(synthetic_run["val"]) == sorted(keys)
    assert {"soft/0", "argmax/1.5", "top3/0.5"} <= set(keys)
    for halves in synthetic_run["val"].values():
        assert set(halves) == {"", "A", "B"}
        assert all(math.isfinite(v) for h in halves.values() for v in h.values())


def test_halves_partition_the_validation_rows(synthetic_run):
    # the plain MAE of all rows is the row-weighted mean of the two halves' MAEs
    n = len(prepare(SYNTHETIC, data_dir=None, cache_dir=None).labels["val"])
    rows = search._halves(n)
    assert len(rows["A"]) + len(rows["B"]) == n and not set(rows["A"]) & set(rows["B"])
    for halves in synthetic_run["val"].values():
        whole = halves[""]["all_mae"]
        split = (len(rows["A"]) * halves["A"]["all_mae"]
                 + len(rows["B"]) * halves["B"]["all_mae"]) / n
        assert math.isclose(whole, split, rel_tol=1e-9)


def test_topk_is_scored_apart_from_soft_and_argmax(synthetic_run):
    val = synthetic_run["val"]
    assert val["top3/0"][""] != val["soft/0"][""]
    assert val["top3/0"][""] != val["argmax/0"][""]


def _record(data, training, seed, scores):
    return {"data": data, "training": training, "seed": seed,
            "val": {k: {h: dict(v) for h in ("", "A", "B")} for k, v in scores.items()}}


def test_pick_is_the_guarded_rule():
    cands = {
        "a": {"0": {"all_mae": 1.00, "bmae": 2.0}},
        "b": {"0": {"all_mae": 1.01, "bmae": 1.5}},  # within 2 %: allowed, lower bMAE
        "c": {"0": {"all_mae": 1.05, "bmae": 1.0}},  # outside the guard
    }
    assert search.pick(cands, ["0"], "bmae") == "b"
    assert search.pick(cands, ["0"], "bmae", guard=0.1) == "c"
    assert search.pick(cands, ["0"], "all_mae") == "a"


def test_evidence_table_ratios_to_vanilla():
    base = {"all_mae": 2.0, "few_mae": 4.0, "many_mae": 1.0, "bmae": 3.0}
    better = {"all_mae": 1.0, "few_mae": 2.0, "many_mae": 1.0, "bmae": 1.5}
    results = []
    for seed in (0, 1, 2):
        results.append(_record("d", "vanilla0", seed, {"-": base}))
        results.append(_record("d", "dirloss0", seed, {
            **{f"{m}/{t:g}": base for m in ("soft", "argmax") for t in (0, 0.5, 1)},
            **{f"top3/{t:g}": better for t in (0, 0.5, 1)},
        }))
    table = search.evidence_table(results).splitlines()
    plain = next(r for r in table if r.startswith("| soft, argmax") and "bmae" in r)
    with_top3 = next(r for r in table if r.startswith("| + top-3") and "bmae" in r)
    assert "| +0.0% | +0.0% | +0.0% | +0.0% | 0/1 |" in plain
    assert "| -50.0% | -50.0% | +0.0% | -50.0% | 1/1 |" in with_top3
