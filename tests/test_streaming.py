r"""ShotMetrics (dirloss.streaming) equals shot_metrics on the concatenated data.

Batch by batch, in any split and order, on one process and summed over 2 gloo ranks. The
reference is :func:`dirloss.metrics.shot_metrics` itself (float64 NumPy, whole arrays), whose
own tests check it against the plain per-sample loops. Counts must match exactly (the bins
are the same float64 searchsorted); the means to ``rtol=1e-12``: the streaming sums add in
another order than NumPy's pairwise ``mean`` and take ``log`` with torch's kernel, so the
last bits may differ (differences seen are ~1e-16 relative).
"""

from __future__ import annotations

import math
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _gloo import init_gloo, spawn_ranks
from hypothesis import given, settings
from hypothesis import strategies as st

from dirloss import ShotMetrics
from dirloss.metrics import REGIONS, shot_metrics, stsb_dir_regions

RTOL = 1e-12
KEYS = ("mae", "mse", "gm")


def assert_same(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(actual) == set(expected)
    for region in ("all", *REGIONS):
        assert actual[region]["count"] == expected[region]["count"], region
        for key in KEYS:
            a, e = actual[region][key], expected[region][key]
            if math.isnan(e):
                assert math.isnan(a), (region, key, a)
            else:
                assert a == pytest.approx(e, rel=RTOL, abs=1e-300), (region, key)
    if math.isnan(expected["bmae"]):
        assert math.isnan(actual["bmae"])
    else:
        assert actual["bmae"] == pytest.approx(expected["bmae"], rel=RTOL)


def stream(metric: ShotMetrics, pred: Any, target: Any, cuts: list[int]) -> dict[str, Any]:
    bounds = [0, *cuts, len(pred)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        metric.update(torch.as_tensor(pred[lo:hi]), torch.as_tensor(target[lo:hi]))
    return metric.compute()


# Labels on a quarter grid (many exactly on the 0.5-wide bin edges) or anywhere in [0, 10].
label = st.one_of(st.integers(0, 40).map(lambda k: k / 4), st.floats(0, 10, allow_nan=False))
error = st.one_of(st.just(0.0), st.floats(-5, 5, allow_nan=False))  # 0: the GM floor


@st.composite
def evaluation(draw: st.DrawFn) -> dict[str, Any]:
    train = draw(st.lists(label, min_size=2, max_size=60))
    n = draw(st.integers(0, 80))
    target = np.asarray(draw(st.lists(label, min_size=n, max_size=n)), dtype=np.float64)
    noise = np.asarray(draw(st.lists(error, min_size=n, max_size=n)), dtype=np.float64)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    few = draw(st.integers(0, 6))
    many = few + draw(st.integers(0, 6))
    return {"train": np.asarray(train), "target": target, "pred": target + noise,
            "cuts": cuts, "shots": {"many_shot": many, "few_shot": few}}


@settings(max_examples=150, deadline=None)
@given(case=evaluation(), width=st.sampled_from([0.5, 1.0, 3.0]))
def test_random_batches_equal_shot_metrics_with_the_metric_edges(
    case: dict[str, Any], width: float
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # all training labels in one bin
        metric = ShotMetrics(case["train"], bin_width=width, **case["shots"])
        expected = shot_metrics(case["pred"], case["target"], case["train"],
                                bin_edges=metric.bin_edges, **case["shots"])
    assert_same(stream(metric, case["pred"], case["target"], case["cuts"]), expected)


@settings(max_examples=100, deadline=None)
@given(case=evaluation(), width=st.sampled_from([0.5, 1.0]))
def test_default_edges_equal_shot_metrics_when_test_labels_are_in_the_training_range(
    case: dict[str, Any], width: float
) -> None:
    train = case["train"]
    target = np.clip(case["target"], train.min(), train.max())
    pred = target + (case["pred"] - case["target"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = ShotMetrics(train, bin_width=width, **case["shots"])
        expected = shot_metrics(pred, target, train, bin_width=width, **case["shots"])
    assert_same(stream(metric, pred, target, case["cuts"]), expected)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 50).map(lambda k: k / 10), min_size=1, max_size=60),
    noise=st.floats(0, 1), cut=st.integers(0, 60),
)
def test_fixed_regions_stsb(scores: list[float], noise: float, cut: int) -> None:
    """The published STS-B-DIR regions (edges at k / 10, labels on them)."""
    y = np.asarray(scores)
    pred = y + noise * np.cos(np.arange(y.size))
    kwargs: dict[str, Any] = {"bin_edges": np.linspace(0, 5, 51), "regions": stsb_dir_regions()}
    metric = ShotMetrics(y, **kwargs)
    assert_same(stream(metric, pred, y, [min(cut, y.size)]), shot_metrics(pred, y, y, **kwargs))


def test_regions_leave_unlisted_bins_in_all_only() -> None:
    y = torch.tensor([0.5, 1.5, 2.5, 3.5])
    kwargs: dict[str, Any] = {"bin_edges": [0, 1, 2, 3, 4], "regions": {"many": [0], "few": [3]}}
    metric = ShotMetrics(y, **kwargs)
    pred = y + torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert_same(stream(metric, pred, y, [1, 3]), shot_metrics(pred, y, y, **kwargs))
    assert metric.bin_region.tolist() == [0, -1, -1, 2]


def test_hand_case() -> None:
    """Two bins, many = bin 0 (3 training labels), few = bin 1 (1 label)."""
    metric = ShotMetrics([0.0, 0.2, 0.4, 1.5], bin_edges=[0, 1, 2], many_shot=2, few_shot=2)
    metric.update(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5]))  # errors 1, -0.5
    metric.update(torch.tensor([[1.0]]), torch.tensor([[1.0]]))  # error 0 (GM floor)
    out = metric.compute()
    assert out["many"] == {"mae": 0.75, "mse": 0.625, "gm": math.sqrt(0.5), "count": 2}
    assert out["few"]["mae"] == 0.0 and out["few"]["gm"] == pytest.approx(1e-8)
    assert out["medium"]["count"] == 0 and math.isnan(out["medium"]["mae"])
    assert out["bmae"] == pytest.approx((0.75 + 0.0) / 2)
    assert out["all"]["gm"] == pytest.approx((1 * 0.5 * 1e-8) ** (1 / 3))


def test_state_is_o_bins_and_reset_forgets() -> None:
    metric = ShotMetrics(torch.rand(1000) * 10)
    sizes = {k: v.numel() for k, v in metric.state_dict().items()}
    for _ in range(20):
        metric.update(torch.rand(500) * 10, torch.rand(500) * 10)
    assert {k: v.numel() for k, v in metric.state_dict().items()} == sizes
    assert metric.stats.shape == (4, metric.num_bins) and metric.stats.dtype == torch.float64
    assert metric.compute()["all"]["count"] == 10_000
    metric.reset()
    empty = metric.compute()
    assert empty["all"]["count"] == 0 and math.isnan(empty["bmae"])
    assert_same(empty, shot_metrics([], [], torch.rand(1000) * 10,
                                    bin_edges=metric.bin_edges))


def test_empty_batches_and_compute_twice() -> None:
    metric = ShotMetrics(torch.arange(10.0))
    metric.update(torch.empty(0), torch.empty(0, 1))
    metric.update(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 7.0]))
    first = metric.compute()
    assert repr(metric.compute()) == repr(first)  # NaN-aware


def test_state_dict_resumes_an_evaluation() -> None:
    train, y = torch.rand(200) * 5, torch.rand(100) * 5
    pred = y + torch.randn(100)
    metric = ShotMetrics(train)
    metric.update(pred[:60], y[:60])
    resumed = ShotMetrics(train)
    resumed.load_state_dict(metric.state_dict())
    resumed.update(pred[60:], y[60:])
    assert_same(resumed.compute(),
                shot_metrics(pred, y, train, bin_edges=metric.bin_edges))


def test_cast_keeps_float64_state() -> None:
    metric = ShotMetrics(torch.rand(50) * 10).half()
    assert metric.stats.dtype == torch.float64 and metric.bin_edges.dtype == torch.float64
    metric.update(torch.rand(5, dtype=torch.float16), torch.rand(5, dtype=torch.bfloat16))
    assert metric.compute()["all"]["count"] == 5


def test_device(device: torch.device) -> None:
    train, y = torch.rand(300) * 9, torch.rand(200) * 9
    pred = y + torch.randn(200)
    metric = ShotMetrics(train, bin_width=0.5).to(device)
    assert metric.stats.device.type == device.type
    metric.update(pred[:150].to(device), y[:150].to(device))
    metric.update(pred[150:], y[150:])  # CPU inputs are copied over
    assert_same(metric.compute(), shot_metrics(pred, y, train, bin_edges=metric.bin_edges.cpu()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_update_does_not_sync_on_cuda() -> None:
    metric = ShotMetrics(torch.rand(300) * 9).cuda()
    pred, y = torch.rand(64, device="cuda") * 9, torch.rand(64, device="cuda") * 9
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric.update(pred, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bad_input_raises() -> None:
    metric = ShotMetrics(torch.rand(20) * 10)
    with pytest.raises(ValueError, match="expected pred and target of the same shape"):
        metric.update(torch.rand(3), torch.rand(4))
    with pytest.raises(ValueError, match=r"expected pred of shape \(N,\) or \(N, 1\)"):
        metric.update(torch.rand(3, 2), torch.rand(3, 2))
    with pytest.raises(ValueError, match="expected target to be finite"):
        metric.update(torch.rand(2), torch.tensor([0.5, math.nan]))
    with pytest.raises(ValueError, match="few_shot <= many_shot"):
        ShotMetrics(torch.rand(20), many_shot=5, few_shot=10)
    with pytest.raises(ValueError, match="bin_width"):
        ShotMetrics(torch.rand(20), bin_width=0.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        ShotMetrics(torch.rand(20), bin_edges=[0, 1, 1])
    with pytest.raises(ValueError, match="train_target to be finite"):
        ShotMetrics([0.0, math.inf])
    with pytest.raises(ValueError, match="regions keys"):
        ShotMetrics(torch.rand(20) * 10, bin_edges=[0, 5, 10], regions={"rare": [0]})
    assert metric.compute()["all"]["count"] == 0  # the failed updates added nothing


def test_one_bin_warns_like_shot_metrics() -> None:
    with pytest.warns(UserWarning, match="fall in one bin"):
        ShotMetrics(torch.rand(50))  # labels in [0, 1], bin_width 1


# ---------------------------------------------------------------------------------------
# torchmetrics adapter


def test_torchmetrics_adapter() -> None:
    torchmetrics = pytest.importorskip("torchmetrics")
    from dirloss.streaming import ShotMetricsMetric

    train, y = torch.rand(400) * 10, torch.rand(120) * 10
    pred = y + torch.randn(120)
    metric = ShotMetricsMetric(train, many_shot=50, few_shot=30)
    assert isinstance(metric, torchmetrics.Metric)
    batch = metric(pred[:50], y[:50])  # forward: this batch's values, and accumulates
    assert batch["all_count"] == 50
    metric.update(pred[50:], y[50:])
    out = metric.compute()
    expected = shot_metrics(pred, y, train, bin_edges=metric.bin_edges, many_shot=50,
                            few_shot=30)
    nested = {r: {k: out[f"{r}_{k}"].item() for k in (*KEYS, "count")} for r in ("all", *REGIONS)}
    for r in nested:
        nested[r]["count"] = int(nested[r]["count"])
    assert_same({**nested, "bmae": out["bmae"].item()}, expected)
    again = pickle.loads(pickle.dumps(metric))  # Lightning pickles modules (spawn, ckpt)
    assert type(again) is ShotMetricsMetric
    assert again.compute()["bmae"] == out["bmae"]
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchmetrics: compute before update
        assert metric.compute()["all_count"] == 0


def test_torchmetrics_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import dirloss.streaming as streaming

    streaming._torchmetrics_adapter.cache_clear()
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import torchmetrics fails
    try:
        with pytest.raises(ImportError, match=r"pip install 'dirloss\[metrics\]'"):
            streaming.ShotMetricsMetric  # noqa: B018
    finally:
        streaming._torchmetrics_adapter.cache_clear()
    with pytest.raises(AttributeError):
        streaming.NoSuchName  # noqa: B018


# ---------------------------------------------------------------------------------------
# 2 gloo processes: each rank streams its own share; compute() gives the global result.

# Rank 0: 9 rows in batches of 4, 4, 1; rank 1: 5 rows, or none at all ("idle").
CASES = {"unequal": (9, 5), "idle": (9, 0)}


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    train = (torch.rand(300, generator=g, dtype=torch.float64) * 8).round(decimals=1)
    y = (torch.rand(14, generator=g, dtype=torch.float64) * 8).round(decimals=1)
    return train, y + torch.randn(14, generator=g, dtype=torch.float64), y


def _share(rank: int, sizes: tuple[int, int], t: torch.Tensor) -> torch.Tensor:
    lo = sum(sizes[:rank])
    return t[lo : lo + sizes[rank]]


def _worker(rank: int, out_dir: str) -> None:
    init_gloo(rank, out_dir)
    try:
        train, pred, y = _data()
        result: dict[str, Any] = {}
        for name, sizes in CASES.items():
            metric = ShotMetrics(train, bin_width=0.5, many_shot=25, few_shot=15)
            for p, t in zip(_share(rank, sizes, pred).split(4), _share(rank, sizes, y).split(4)):
                metric.update(p, t)
            result[name] = metric.compute()
            result[name + "-again"] = metric.compute()  # the local state is left alone
            local = ShotMetrics(train, bin_width=0.5, many_shot=25, few_shot=15,
                                sync_on_compute=False)
            local.load_state_dict(metric.state_dict())
            result[name + "-local"] = local.compute()
        try:
            from dirloss.streaming import ShotMetricsMetric
        except ImportError:
            pass
        else:
            sizes = CASES["unequal"]
            tm = ShotMetricsMetric(train, bin_width=0.5, many_shot=25, few_shot=15)
            tm.update(_share(rank, sizes, pred), _share(rank, sizes, y))
            result["torchmetrics"] = {k: v.item() for k, v in tm.compute().items()}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each rank of the 2-process gloo run saved, in rank order."""
    out_dir = tmp_path_factory.mktemp("ddp-streaming")
    return spawn_ranks(_worker, out_dir)


def _expected(sizes: tuple[int, int]) -> dict[str, Any]:
    train, pred, y = _data()
    n = sum(sizes)
    edges = ShotMetrics(train, bin_width=0.5).bin_edges
    return shot_metrics(pred[:n], y[:n], train, bin_edges=edges, many_shot=25, few_shot=15)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ranks_compute_the_global_result(ranks: list[dict[str, Any]], case: str) -> None:
    expected = _expected(CASES[case])
    for rank, result in enumerate(ranks):
        assert_same(result[case], expected)
        assert repr(result[case + "-again"]) == repr(result[case])  # NaN-aware
        local = result[case + "-local"]
        assert local["all"]["count"] == CASES[case][rank]


@pytest.mark.slow
def test_torchmetrics_adapter_syncs_over_ranks(ranks: list[dict[str, Any]]) -> None:
    if "torchmetrics" not in ranks[0]:
        pytest.skip("torchmetrics is not installed")
    expected = _expected(CASES["unequal"])
    for result in ranks:
        out = result["torchmetrics"]
        assert out["all_count"] == expected["all"]["count"]
        assert out["few_mae"] == pytest.approx(expected["few"]["mae"], rel=RTOL)
        assert out["bmae"] == pytest.approx(expected["bmae"], rel=RTOL)
