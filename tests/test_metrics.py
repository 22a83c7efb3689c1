from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _references import ref_balanced_mae
from hypothesis import given, settings
from hypothesis import strategies as st

from dirloss import balanced_mae
from dirloss.metrics import EDGE_RTOL, GM_EPS, REGIONS, shot_metrics, stsb_dir_regions

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DIRLOSS_DATA_DIR", REPO_ROOT / ".." / "shared" / "data"))


# ---------------------------------------------------------------------------------------------
# Reference: plain loops written straight from the definitions.
# ---------------------------------------------------------------------------------------------
def ref_edges(labels, bin_width):
    start = math.floor(min(labels) / bin_width) * bin_width if labels else 0.0
    top = max(labels) if labels else 0.0
    edges = [start, start + bin_width]
    while edges[-1] < top:
        edges.append(start + bin_width * len(edges))
    return edges


def ref_bin(y, edges):
    tol = EDGE_RTOL * min(b - a for a, b in zip(edges[:-1], edges[1:]))
    num_bins = len(edges) - 1
    for k in range(num_bins):
        if edges[k] - tol <= y < edges[k + 1] - tol:
            return k
    return 0 if y < edges[0] else num_bins - 1


def ref_summary(errors):
    n = len(errors)
    if n == 0:
        return {"mae": math.nan, "mse": math.nan, "gm": math.nan, "count": 0}
    log_sum = 0.0
    for e in errors:
        log_sum += math.log(max(abs(e), GM_EPS))
    return {
        "mae": sum(abs(e) for e in errors) / n,
        "mse": sum(e * e for e in errors) / n,
        "gm": math.exp(log_sum / n),
        "count": n,
    }


def ref_shot_metrics(pred, target, train, edges, many_shot, few_shot, regions=None):
    num_bins = len(edges) - 1
    train_count = [0] * num_bins
    for y in train:
        train_count[ref_bin(y, edges)] += 1
    region_of_bin = {}
    for k in range(num_bins):
        if regions is not None:
            region_of_bin[k] = next((r for r in REGIONS if k in regions.get(r, [])), None)
        elif train_count[k] > many_shot:
            region_of_bin[k] = "many"
        elif train_count[k] < few_shot:
            region_of_bin[k] = "few"
        else:
            region_of_bin[k] = "medium"
    errors = {r: [] for r in ("all", *REGIONS)}
    per_bin = {}
    for p, y in zip(pred, target):
        k = ref_bin(y, edges)
        errors["all"].append(p - y)
        if region_of_bin[k] is not None:
            errors[region_of_bin[k]].append(p - y)
        per_bin.setdefault(k, []).append(abs(p - y))
    out = {r: ref_summary(e) for r, e in errors.items()}
    bin_maes = [sum(v) / len(v) for v in per_bin.values()]
    out["bmae"] = sum(bin_maes) / len(bin_maes) if bin_maes else math.nan
    return out


def assert_same(out, expected, rel=1e-12):
    assert set(out) == set(expected)
    for key in ("all", *REGIONS):
        assert out[key]["count"] == expected[key]["count"], key
        assert isinstance(out[key]["count"], int)
        for m in ("mae", "mse", "gm"):
            assert isinstance(out[key][m], float)
            assert out[key][m] == pytest.approx(expected[key][m], rel=rel, nan_ok=True), (key, m)
    assert out["bmae"] == pytest.approx(expected["bmae"], rel=rel, nan_ok=True)


def random_case(seed, n_train=400, n_test=150, scale=10.0):
    rng = np.random.default_rng(seed)
    train = rng.exponential(scale / 3, n_train)  # long-tailed training labels
    target = rng.uniform(-1.0, scale + 1.0, n_test)
    pred = target + rng.normal(0.0, 1.0, n_test)
    return pred, target, train


# ---------------------------------------------------------------------------------------------
# Reference comparisons
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "bin_kw, many_shot, few_shot",
    [
        ({"bin_width": 1.0}, 40, 10),
        ({"bin_width": 0.37}, 20, 5),
        ({"bin_width": 4.0}, 100, 20),
        ({"bin_edges": [0.0, 0.5, 2.0, 3.0, 7.0, 8.0]}, 30, 30),  # targets fall outside: clipped
        ({"bin_edges": np.linspace(-2, 12, 15)}, 25, 12),
    ],
)
def test_matches_reference(seed, bin_kw, many_shot, few_shot):
    pred, target, train = random_case(seed)
    out = shot_metrics(pred, target, train, many_shot=many_shot, few_shot=few_shot, **bin_kw)
    if "bin_edges" in bin_kw:
        edges = list(bin_kw["bin_edges"])
    else:
        edges = ref_edges([*train.tolist(), *target.tolist()], bin_kw["bin_width"])
    expected = ref_shot_metrics(
        pred.tolist(), target.tolist(), train.tolist(), edges, many_shot, few_shot
    )
    assert_same(out, expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_with_regions(seed):
    pred, target, train = random_case(seed)
    edges = np.linspace(-1, 11, 13)
    regions = {"many": [0, 5, 11], "medium": [1, 7], "few": [2, 3, 9]}  # 4, 6, 8, 10 unlisted
    out = shot_metrics(pred, target, train, bin_edges=edges, regions=regions)
    expected = ref_shot_metrics(
        pred.tolist(), target.tolist(), train.tolist(), list(edges), 100, 20, regions
    )
    assert_same(out, expected)
    assert sum(out[r]["count"] for r in REGIONS) < out["all"]["count"]


def test_labels_on_float_edges_land_in_their_bin():
    # np.linspace(0, 5, 51)[3] == 0.30000000000000004 > 0.3; label 0.3 must still go to bin 3.
    edges = np.linspace(0, 5, 51)
    labels = np.round(np.arange(51) / 10, 1)
    regions = {"many": list(range(0, 50, 2)), "few": list(range(1, 50, 2))}
    out = shot_metrics(labels, labels, labels, bin_edges=edges, regions=regions)
    assert out["many"]["count"] == 25 and out["few"]["count"] == 26  # 5.0 joins 4.9 in bin 49
    bins = [ref_bin(y, list(edges)) for y in labels]
    assert bins == list(range(50)) + [49]


# ---------------------------------------------------------------------------------------------
# Hand-computed case
# ---------------------------------------------------------------------------------------------
# bins [0,1) [1,2) [2,3]; training counts 4, 2, 1 -> many, medium, few (many_shot=3, few_shot=2)
HAND_TRAIN = [0.2, 0.2, 0.2, 0.2, 1.5, 1.5, 2.9]
HAND_TARGET = [0.0, 0.5, 1.0, 2.0, 3.0]
HAND_PRED = [1.0, 0.5, 3.0, 1.5, 2.0]  # errors 1, 0, 2, -0.5, -1


def test_hand_computed():
    out = shot_metrics(HAND_PRED, HAND_TARGET, HAND_TRAIN, many_shot=3, few_shot=2)
    expected = {
        "all": {"mae": 0.9, "mse": 1.25, "gm": 10 ** -1.6, "count": 5},
        "many": {"mae": 0.5, "mse": 0.5, "gm": 1e-4, "count": 2},
        "medium": {"mae": 2.0, "mse": 4.0, "gm": 2.0, "count": 1},
        "few": {"mae": 0.75, "mse": 0.625, "gm": math.sqrt(0.5), "count": 2},
        "bmae": 3.25 / 3,
    }
    assert_same(out, expected)


def test_exact_hits_keep_gm_positive():
    y = np.array([0.5, 1.5, 2.5])
    out = shot_metrics(y, y, y)
    assert out["all"]["gm"] == pytest.approx(GM_EPS) and out["all"]["gm"] > 0
    assert out["all"]["mae"] == 0.0 and out["bmae"] == 0.0


@pytest.mark.filterwarnings("error")
def test_empty_region_is_nan_without_warnings():
    out = shot_metrics(HAND_PRED, HAND_TARGET, HAND_TRAIN, many_shot=1000, few_shot=0)
    assert out["medium"]["count"] == 5
    for r in ("many", "few"):
        assert out[r]["count"] == 0
        assert all(math.isnan(out[r][m]) for m in ("mae", "mse", "gm"))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("train", [[1.0, 2.5], []])  # two bins: one bin would warn
def test_empty_test_set(train):
    out = shot_metrics([], [], train)
    for r in ("all", *REGIONS):
        assert out[r]["count"] == 0 and math.isnan(out[r]["mae"])
    assert math.isnan(out["bmae"])


def test_regions_override():
    regions = {"many": [2], "few": [0]}  # bin 1 unlisted, no "medium" key
    out = shot_metrics(HAND_PRED, HAND_TARGET, HAND_TRAIN, regions=regions)
    assert out["many"]["count"] == 2 and out["many"]["mae"] == pytest.approx(0.75)
    assert out["few"]["count"] == 2 and out["few"]["mae"] == pytest.approx(0.5)
    assert out["medium"]["count"] == 0 and math.isnan(out["medium"]["mae"])
    assert out["all"]["count"] == 5


def test_tensor_array_and_list_inputs_agree():
    pred, target, train = random_case(3)
    ref = shot_metrics(pred, target, train)
    pred_t, target_t, train_t = map(torch.from_numpy, (pred, target, train))
    as_tensor = shot_metrics(pred_t[:, None], target_t, train_t)
    as_list = shot_metrics(pred.tolist(), target[:, None].tolist(), train.tolist())
    assert as_tensor == ref and as_list == ref
    p32, t32 = pred_t.float(), target_t.float()
    assert shot_metrics(p32, t32, train) == shot_metrics(p32.numpy(), t32.numpy(), train)


def test_tensor_with_grad_and_on_cuda():
    pred, target, train = random_case(4)
    ref = shot_metrics(pred, target, train)
    assert shot_metrics(torch.from_numpy(pred).requires_grad_(), target, train) == ref
    if torch.cuda.is_available():
        pred_t, target_t = torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda()
        assert shot_metrics(pred_t, target_t, train) == ref


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
ONE = ([1.0], [1.0], [1.0])
EDGES2 = [0.0, 1.0, 2.0]  # two bins


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([1.0, 2.0], [1.0], [1.0]), {}, r"same shape, got \(2,\) and \(1,\)"),
        ((np.zeros((2, 2)), np.zeros((2, 2)), [1.0]), {}, r"expected pred to have shape \(N,\) "
         r"or \(N, 1\), got \(2, 2\)"),
        (([1.0], np.zeros((1, 1, 1)), [1.0]), {}, r"expected target to have shape"),
        (ONE, {"bin_width": 0.0}, r"expected bin_width to be a positive"),
        (ONE, {"bin_width": -1.0}, r"expected bin_width to be a positive"),
        (ONE, {"many_shot": 5, "few_shot": 10}, r"expected few_shot <= many_shot, got 10 > 5"),
        (ONE, {"bin_edges": [0.0, 2.0, 1.0]}, r"expected strictly increasing bin_edges"),
        (ONE, {"bin_edges": [0.0, 0.0]}, r"expected strictly increasing bin_edges"),
        (ONE, {"bin_edges": [1.0]}, r"expected bin_edges to be 1-D with >= 2 entries"),
        (([np.nan, 1.0], [1.0, 2.0], [1.0]), {}, r"expected pred to be finite, got 1 NaN"),
        (([1.0, 1.0], [np.nan, np.nan], [1.0]), {}, r"expected target to be finite, got 2 NaN"),
        (([1.0], [1.0], [1.0, np.nan, np.inf]), {}, r"train_target to be finite, got 2 NaN or inf"),
        (ONE, {"regions": {"many": [0], "rare": [1]}}, r"regions keys among .* got \['rare'\]"),
        (ONE, {"bin_edges": EDGES2, "regions": {"many": [2]}},
         r"expected bin indices in \[0, 2\) in regions\['many'\], got 2"),
        (ONE, {"regions": {"few": [-1]}}, r"expected bin indices in \[0, 1\)"),
        (ONE, {"regions": {"few": [0.0]}}, r"integer bin indices in regions\['few'\], got 0.0"),
        (ONE, {"bin_edges": EDGES2, "regions": {"many": [0, 1], "few": [1]}},
         r"at most one region, got bin 1 in both 'many' and 'few'"),
    ],
)
def test_bad_input_raises(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shot_metrics(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------
labels = st.lists(st.floats(-20, 20, allow_nan=False), min_size=0, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    target=labels,
    train=labels,
    seed=st.integers(0, 2**32 - 1),
    bin_width=st.sampled_from([0.5, 1.0, 3.0]),
    thresholds=st.sampled_from([(3, 1), (5, 5), (100, 20)]),
)
def test_permutation_invariant_and_regions_partition(target, train, seed, bin_width, thresholds):
    rng = np.random.default_rng(seed)
    target = np.asarray(target, dtype=np.float64)
    pred = target + rng.normal(size=target.size)
    kw = {"bin_width": bin_width, "many_shot": thresholds[0], "few_shot": thresholds[1]}
    out = shot_metrics(pred, target, train, **kw)
    perm, perm_train = rng.permutation(target.size), rng.permutation(len(train))
    shuffled = shot_metrics(pred[perm], target[perm], np.asarray(train)[perm_train], **kw)
    assert_same(shuffled, out, rel=1e-9)
    assert sum(out[r]["count"] for r in REGIONS) == out["all"]["count"] == target.size


@settings(max_examples=30, deadline=None)
@given(target=st.lists(st.floats(-1, 6, allow_nan=False), max_size=30))
def test_stsb_regions_cover_every_bin(target):
    edges, regions = np.linspace(0, 5, 51), stsb_dir_regions()
    out = shot_metrics(target, target, [], bin_edges=edges, regions=regions)
    assert sum(out[r]["count"] for r in REGIONS) == out["all"]["count"] == len(target)


def test_stsb_dir_regions_partition_bins():
    r = stsb_dir_regions()
    assert sorted(r["many"] + r["medium"] + r["few"]) == list(range(50))
    assert r["many"][:2] == [0, 10] and r["many"][-2:] == [48, 49]


# ---------------------------------------------------------------------------------------------
# Real data (skips without the STS-B-DIR files)
# ---------------------------------------------------------------------------------------------
def read_stsb_scores(path):
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return np.array([float(row[9]) for row in rows])


def test_stsb_dir_test_split_region_counts():
    path = DATA_DIR / "stsb-dir" / "test_new.tsv"
    if not path.is_file():
        pytest.skip(f"STS-B-DIR data not found at {path}")
    scores = read_stsb_scores(path)
    edges, regions = np.linspace(0, 5, 51), stsb_dir_regions()
    out = shot_metrics(scores, scores, [], bin_edges=edges, regions=regions)
    assert (out["many"]["count"], out["medium"]["count"], out["few"]["count"]) == (756, 170, 74)


def test_balanced_mae_equals_shot_metrics_bmae():
    # One implementation: the tensor form and shot_metrics bin the labels alike, also for
    # labels an ulp below an edge (np.linspace(0, 5, 51)[3] style).
    edges = np.linspace(0.0, 5.0, 51)
    target = np.concatenate([np.random.default_rng(0).uniform(0, 5, 200), edges[1:-1] - 1e-12])
    pred = target + np.random.default_rng(1).normal(0, 0.3, target.size)
    want = shot_metrics(pred, target, target, bin_edges=edges)["bmae"]
    got = balanced_mae(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(edges))
    assert got.dtype == torch.float64 and got.item() == want


# ---------------------------------------------------------------------------------------------
# balanced_mae against a plain loop
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", [False, True])
def test_balanced_mae_matches_loop(column):
    target = torch.rand(200, dtype=torch.float64) ** 2 * 12 - 1  # some below / above the edges
    pred = target + torch.randn(200, dtype=torch.float64)
    edges = torch.tensor([0.0, 1.0, 2.5, 6.0, 10.0], dtype=torch.float64)
    target = torch.cat([target, edges])  # labels on every edge
    pred = torch.cat([pred, edges + 0.5])
    ref = ref_balanced_mae(pred.tolist(), target.tolist(), edges.tolist())
    args = (pred[:, None], target[:, None]) if column else (pred, target)
    got = balanced_mae(*args, edges)
    assert got.shape == () and got.dtype == torch.float64
    assert math.isclose(got.item(), ref, rel_tol=1e-12)


def test_balanced_mae_skips_empty_bins_and_weights_bins_equally():
    edges = torch.tensor([0.0, 1.0, 2.0, 3.0])  # bin 1 is empty
    target = torch.tensor([0.1, 0.2, 0.3, 0.4, 2.5])
    pred = torch.tensor([0.1, 0.2, 0.3, 0.4, 4.5])  # bin 0: 0 error; bin 2: 2.0
    assert balanced_mae(pred, target, edges).item() == 1.0


def test_balanced_mae_float32_and_detached():
    pred = torch.rand(10, requires_grad=True)
    target = torch.rand(10)
    got = balanced_mae(pred, target, torch.tensor([0.0, 0.5, 1.0]))
    assert got.dtype == torch.float64 and not got.requires_grad


def test_balanced_mae_shape_mismatch():
    with pytest.raises(ValueError, match="same number of values"):
        balanced_mae(torch.rand(5), torch.rand(6), torch.tensor([0.0, 0.5, 1.0]))


# ---------------------------------------------------------------------------------------------
# shot_metrics on labels in [0, 1] with the default bin_width=1
# ---------------------------------------------------------------------------------------------
def test_shot_metrics_warns_when_one_bin_holds_every_training_label():
    y = torch.rand(100)
    with pytest.warns(UserWarning, match=r"all 100 training labels fall in one bin .*bin_width="):
        shot_metrics(y, y, y)
    with pytest.warns(UserWarning, match="bin_edges= that split it"):
        shot_metrics(y, y, y, bin_edges=[0.0, 5.0, 10.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shot_metrics(y, y, y, bin_width=0.1)
        shot_metrics([1.0], [1.0], [3.0, 3.0, 3.0])  # equal labels: no bin width would help
