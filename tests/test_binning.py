"""GroupBinner against plain loops written from its definition (float64)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from _bad_groups import fitted_binner
from _strict_warnings import warnings_raise
from hypothesis import given, settings
from hypothesis import strategies as st

from dirloss import GroupBinner


# ---------------------------------------------------------------------------------------------
# Reference: plain loops written straight from the definitions.
# ---------------------------------------------------------------------------------------------
def ref_uniform_edges(low, high, num_groups):
    return [low + (high - low) * k / num_groups for k in range(num_groups + 1)]


def ref_quantile(sorted_labels, q):
    """Linear-interpolation quantile (numpy's default ``method="linear"``)."""
    pos = q * (len(sorted_labels) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_labels) - 1)
    frac = pos - lo
    return sorted_labels[lo] + frac * (sorted_labels[hi] - sorted_labels[lo])


def ref_quantile_edges(labels, num_groups):
    s = sorted(float(v) for v in labels)
    return [ref_quantile(s, k / num_groups) for k in range(num_groups + 1)]


def ref_group(y, edges):
    """Group k holds edges[k] <= y < edges[k+1]; the last also holds edges[G]; clamp outside."""
    g = len(edges) - 1
    if y < edges[0]:
        return 0
    for k in range(g):
        if edges[k] <= y < edges[k + 1]:
            return k
    return g - 1  # y == edges[G], y > edges[G] (and NaN, as documented)


def ref_groups(values, edges):
    return [ref_group(float(v), edges) for v in values]


def ref_counts(labels, edges):
    counts = [0] * (len(edges) - 1)
    for y in labels:
        counts[ref_group(float(y), edges)] += 1
    return counts


def edges_of(binner):
    return binner.edges.tolist()


# ---------------------------------------------------------------------------------------------
# Edges
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_groups", [2, 5, 7])
def test_uniform_edges_default_to_label_range(num_groups):
    labels = torch.rand(50, dtype=torch.float64) * 7 - 2
    binner = GroupBinner(num_groups).fit(labels)
    low, high = labels.min().item(), labels.max().item()
    edges = edges_of(binner)
    assert binner.edges.dtype == torch.float64 and binner.edges.shape == (num_groups + 1,)
    assert edges[0] == low and edges[-1] == high
    np.testing.assert_allclose(
        edges, ref_uniform_edges(low, high, num_groups), rtol=1e-14, atol=1e-14
    )
    np.testing.assert_allclose(edges, np.linspace(low, high, num_groups + 1), rtol=0, atol=0)


def test_uniform_edges_with_low_high():
    labels = torch.tensor([10.0, 20.0, 30.0])
    with pytest.warns(UserWarning, match="2 of 4 groups hold no training label"):  # [50, 100]
        binner = GroupBinner(4, low=0.0, high=100.0).fit(labels)
    assert edges_of(binner) == [0.0, 25.0, 50.0, 75.0, 100.0]
    # one side given, the other from the data
    binner = GroupBinner(2, low=0.0).fit(labels)
    assert edges_of(binner) == [0.0, 15.0, 30.0]
    binner = GroupBinner(2, high=50.0).fit(labels)
    assert edges_of(binner) == [10.0, 30.0, 50.0]


@pytest.mark.parametrize("num_groups", [2, 3, 6])
def test_quantile_edges_are_label_quantiles(num_groups):
    labels = torch.randn(61, dtype=torch.float64).exp()  # skewed, all distinct
    binner = GroupBinner(num_groups, strategy="quantile").fit(labels)
    np.testing.assert_allclose(
        edges_of(binner), ref_quantile_edges(labels.tolist(), num_groups), rtol=1e-13
    )
    # groups hold about equally many training samples
    counts = binner.counts.tolist()
    assert sum(counts) == 61
    assert max(counts) - min(counts) <= 2


def test_quantile_ties_with_no_usable_group_count_say_so():
    labels = [0.0] * 6 + [1.0, 2.0]  # the median is tied with the minimum: even G=2 collides
    with pytest.raises(ValueError, match="supports no quantile groups"):
        GroupBinner(4, strategy="quantile").fit(labels)


def test_quantile_ties_message_count_is_actionable():
    # The count in the message is the largest num_groups that works: it fits, one more fails.
    labels = [0.0] * 4 + [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ValueError) as info:
        GroupBinner(8, strategy="quantile").fit(labels)
    supported = int(re.search(r"at most (\d+) quantile groups", str(info.value)).group(1))
    assert 2 <= supported < 8
    GroupBinner(supported, strategy="quantile").fit(labels)
    with pytest.raises(ValueError):
        GroupBinner(supported + 1, strategy="quantile").fit(labels)


def test_explicit_edges_need_no_fit_but_fit_counts():
    edges = [0.0, 1.0, 3.0, 6.0]
    binner = GroupBinner(3, edges=edges)
    assert binner.fitted
    assert edges_of(binner) == edges
    assert binner.counts.tolist() == [0, 0, 0]
    y = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.9, 3.0, 6.0, 7.0])
    assert binner(y).tolist() == ref_groups(y, edges)
    labels = [0.5, 0.7, 2.0, 5.0, 5.5, 5.9, 100.0]
    binner.fit(labels)
    assert edges_of(binner) == edges  # fit keeps explicit edges
    assert binner.counts.tolist() == ref_counts(labels, edges)


def test_explicit_edges_validation():
    with pytest.raises(ValueError, match="num_groups"):
        GroupBinner(4, edges=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="increasing"):
        GroupBinner(2, edges=[0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="increasing"):
        GroupBinner(2, edges=[0.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        GroupBinner(2, edges=[0.0, float("nan"), 1.0])
    with pytest.raises(ValueError):
        GroupBinner(1, edges=[0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Forward against the loop
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("num_groups", [2, 4, 9])
def test_forward_matches_loop_including_edges(strategy, num_groups, device):
    train = torch.randn(80, dtype=torch.float64) * 3
    binner = GroupBinner(num_groups, strategy=strategy).fit(train).to(device)
    edges = edges_of(binner)
    test = torch.cat(
        [
            torch.randn(100, dtype=torch.float64) * 5,  # includes values outside the range
            torch.tensor(edges, dtype=torch.float64),  # exactly on every edge
            torch.tensor([edges[0] - 1e-9, edges[-1] + 1e-9, -1e30, 1e30], dtype=torch.float64),
        ]
    )
    got = binner(test.to(device))
    assert got.dtype == torch.int64 and got.device.type == device.type
    assert got.cpu().tolist() == ref_groups(test, edges)
    # a label exactly on inner edge k is in group k, on the top edge in group G - 1
    assert binner(torch.tensor(edges, dtype=torch.float64, device=device)).cpu().tolist() == (
        list(range(num_groups)) + [num_groups - 1]
    )


def test_forward_float32_input_matches_loop(device):
    binner = GroupBinner(5).fit(torch.linspace(0, 1, 11)).to(device)
    y = torch.rand(200) * 1.4 - 0.2
    y = torch.cat([y, torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])])
    got = binner(y.to(device)).cpu().tolist()
    assert got == ref_groups(y.double(), edges_of(binner))


def test_nan_lands_in_last_group():
    binner = GroupBinner(3).fit([0.0, 1.5, 3.0])
    assert binner(torch.tensor([float("nan"), float("inf"), -float("inf")])).tolist() == [2, 2, 0]


def test_counts_are_bincount_of_training_groups():
    labels = torch.rand(97, dtype=torch.float64) ** 3 * 10
    binner = GroupBinner(6).fit(labels)
    assert binner.counts.dtype == torch.long
    assert binner.counts.tolist() == ref_counts(labels, edges_of(binner))
    assert binner.counts.tolist() == torch.bincount(binner(labels), minlength=6).tolist()
    # refit replaces (does not accumulate) the counts; 10 skewed labels may leave a group
    # empty, which is not what this checks
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*hold no training label", category=UserWarning)
        binner.fit(labels[:10])
    assert binner.counts.sum().item() == 10


def test_centers_are_midpoints():
    binner = GroupBinner(4, edges=[0.0, 1.0, 3.0, 7.0, 8.0])
    assert binner.centers.tolist() == [0.5, 2.0, 5.0, 7.5]
    binner = GroupBinner(5).fit(torch.rand(30))
    e = edges_of(binner)
    np.testing.assert_allclose(
        binner.centers.tolist(), [(e[k] + e[k + 1]) / 2 for k in range(5)], rtol=1e-15
    )


def test_trailing_dim_one_dropped_and_shapes_kept(device):
    binner = GroupBinner(4).fit(torch.arange(5.0)).to(device)
    y = torch.rand(7, 1, device=device) * 4
    assert binner(y).shape == (7,)
    assert binner(y).tolist() == binner(y[:, 0]).tolist()
    assert binner(torch.rand(2, 3, 5, device=device)).shape == (2, 3, 5)  # e.g. per pixel
    with pytest.raises(ValueError, match=r"expected labels of shape \(N,\) or \(N, 1\)"):
        binner(torch.rand(3, 5, device=device))  # 2-D: one label per sample
    assert binner(torch.tensor(2.5, device=device)).shape == ()


def test_batch_of_one_keeps_its_batch_dimension():
    # A batch of one label, shape (1,), must map to shape (1,) like any other (N,) batch
    # (only a trailing dim of 1 after the batch dim is dropped); GroupDIRLoss relies on it.
    binner = GroupBinner(4).fit(torch.arange(5.0))
    assert binner(torch.tensor([2.5])).shape == (1,)
    assert binner(torch.tensor([[2.5]])).shape == (1,)


def test_fit_with_a_single_label_and_explicit_edges():
    # fit([x]) bins a (1,) vector; the counts must still be a (G,) bincount.
    with pytest.warns(UserWarning, match="1 of 2 groups hold no training label"):
        binner = GroupBinner(2, edges=[0.0, 1.0, 2.0]).fit([1.5])
    assert binner.counts.tolist() == [0, 1]


@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([0.0, 1.0, 2.0, 3.0]),
        np.array([0.0, 1.0, 2.0, 3.0]),
        [0.0, 1.0, 2.0, 3.0],
        (0, 1, 2, 3),
        torch.tensor([[0.0], [1.0], [2.0], [3.0]]),
        np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32),
        torch.tensor([0, 1, 2, 3]),
    ],
)
def test_fit_accepts_tensor_ndarray_sequence(labels):
    binner = GroupBinner(3).fit(labels)
    assert binner.fitted
    assert edges_of(binner) == [0.0, 1.0, 2.0, 3.0]
    assert binner.counts.tolist() == [1, 1, 2]


def test_fit_returns_self():
    binner = GroupBinner(3)
    assert binner.fit([0.0, 0.5, 1.0]) is binner


def test_fit_warns_of_empty_groups_at_the_callers_line():
    # An empty group's expert never trains: fit says how many groups are empty, pointing at
    # the fit call (stacklevel), and stays quiet when every group holds a label.
    message = r"^2 of 5 groups hold no training label, .* or strategy='quantile'$"
    with pytest.warns(UserWarning, match=message) as record:
        GroupBinner(5, low=0.0, high=5.0).fit([0.5, 1.5, 4.5])
    assert [w.filename for w in record] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GroupBinner(5, low=0.0, high=5.0).fit([0.5, 1.5, 2.5, 3.5, 4.5])


def test_a_strided_label_column_bins_without_a_copy_warning():
    # A column of a wider float64 target (target[:, 0]) is strided; torch.bucketize warns
    # about (and copies) a non-contiguous input. torch warns once per process, so make it
    # warn always for this check (warnings_raise).
    binner = GroupBinner(4).fit(torch.linspace(0.0, 1.0, 20, dtype=torch.float64))
    column = torch.rand(8, 2, dtype=torch.float64)[:, 1]
    assert not column.is_contiguous()
    with warnings_raise():
        got = binner(column)
    assert torch.equal(got, binner(column.contiguous()))


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_use_before_fit_raises():
    binner = GroupBinner(3)
    assert not binner.fitted
    with pytest.raises(RuntimeError, match="fit"):
        binner(torch.tensor([1.0]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fit_rejects_non_finite_labels(bad):
    with pytest.raises(ValueError, match=r"1 NaN/inf of 4"):
        GroupBinner(3).fit([0.0, bad, 1.0, 2.0])
    with pytest.raises(ValueError, match="NaN/inf"):
        GroupBinner(3, edges=[0.0, 1.0, 2.0, 3.0]).fit([0.0, bad])


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_fit_rejects_empty(strategy):
    with pytest.raises(ValueError, match="empty"):
        GroupBinner(3, strategy=strategy).fit([])
    with pytest.raises(ValueError, match="empty"):
        GroupBinner(3, strategy=strategy).fit(torch.empty(0))


@pytest.mark.parametrize("num_groups", [1, 0, -3, 2.0, True, "4", None])
def test_num_groups_validation(num_groups):
    with pytest.raises(ValueError, match="num_groups"):
        GroupBinner(num_groups)


def test_strategy_validation():
    with pytest.raises(ValueError, match="strategy"):
        GroupBinner(3, strategy="log")


def test_low_equal_high_raises():
    with pytest.raises(ValueError, match="low < high"):
        GroupBinner(3, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="low < high"):
        GroupBinner(3, low=2.0, high=1.0)
    # only one side given: the data decides the other, and the range is still checked
    with pytest.raises(ValueError, match="low < high"):
        GroupBinner(3, low=5.0).fit([1.0, 2.0])


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_all_equal_labels_raise(strategy):
    with pytest.raises(ValueError):
        GroupBinner(3, strategy=strategy).fit([4.0, 4.0, 4.0])
    # a fixed range makes all-equal labels fine for "uniform"
    if strategy == "uniform":
        with pytest.warns(UserWarning, match="2 of 3 groups hold no training label"):
            binner = GroupBinner(3, low=0.0, high=6.0).fit([4.0, 4.0, 4.0])
        assert binner.counts.tolist() == [0, 0, 3]


@pytest.mark.parametrize("shape", [(4, 2), (2, 2, 1), (1, 4)])
def test_multi_column_labels_raise(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        GroupBinner(3).fit(torch.rand(shape))


def test_failed_fit_leaves_binner_unfitted():
    binner = GroupBinner(3)
    with pytest.raises(ValueError):
        binner.fit([1.0, float("nan")])
    assert not binner.fitted


# ---------------------------------------------------------------------------------------------
# label_std: the unit of the objective's expert MSE
# ---------------------------------------------------------------------------------------------
def ref_std(labels):
    """Population standard deviation: sqrt(1/N sum (y - mean)^2)."""
    ys = [float(v) for v in labels]
    mean = sum(ys) / len(ys)
    return math.sqrt(sum((v - mean) ** 2 for v in ys) / len(ys))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_label_std_is_std_of_fitted_labels(strategy):
    labels = torch.rand(300, dtype=torch.float64) ** 3 * 40 - 7
    binner = GroupBinner(5, strategy=strategy).fit(labels)
    assert binner.label_std.dtype == torch.float64 and binner.label_std.shape == ()
    assert math.isclose(binner.label_std.item(), ref_std(labels.tolist()), rel_tol=1e-12)
    assert math.isclose(binner.label_std.item(), float(np.std(labels.numpy())), rel_tol=1e-14)


def test_label_std_follows_a_refit():
    binner = GroupBinner(4).fit(torch.rand(100, dtype=torch.float64))
    labels = torch.rand(100, dtype=torch.float64) * 50 + 3
    binner.fit(labels)
    assert math.isclose(binner.label_std.item(), ref_std(labels.tolist()), rel_tol=1e-12)


def test_label_std_of_explicit_edges():
    # Before fit: the std of a uniform law on [e_0, e_G]; after fit: the labels' std.
    edges = [0.0, 1.0, 4.0, 10.0]
    binner = GroupBinner(3, edges=edges)
    assert math.isclose(binner.label_std.item(), 10.0 / math.sqrt(12.0), rel_tol=1e-15)
    labels = [0.5, 2.0, 2.5, 9.0, 3.0]
    binner.fit(labels)
    assert math.isclose(binner.label_std.item(), ref_std(labels), rel_tol=1e-12)
    with pytest.warns(UserWarning, match="2 of 3 groups hold no training label"):
        binner.fit([2.0, 2.0])  # no spread: back to the uniform law's std, never 0
    assert math.isclose(binner.label_std.item(), 10.0 / math.sqrt(12.0), rel_tol=1e-15)


def test_unfitted_label_std_is_nan():
    assert torch.isnan(GroupBinner(3).label_std)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_label_std_stays_float64_when_cast(dtype):
    labels = torch.rand(50, dtype=torch.float64) * 1e5 + 1.0 / 3.0
    binner = GroupBinner(4).fit(labels)
    std = binner.label_std.clone()
    binner.to(dtype)
    assert binner.label_std.dtype == torch.float64 and torch.equal(binner.label_std, std)
    binner.half()
    assert binner.label_std.dtype == torch.float64 and torch.equal(binner.label_std, std)


def test_old_state_dict_without_label_std_loads():
    # A dirloss 0.1 checkpoint has no label_std: it is filled from the edges (uniform law).
    binner = GroupBinner(4).fit(torch.rand(60, dtype=torch.float64) * 8)
    state = {k: v for k, v in binner.state_dict().items() if k != "label_std"}
    fresh = GroupBinner(4)
    fresh.load_state_dict(state)  # strict
    edges = binner.edges.tolist()
    assert fresh.fitted
    assert fresh.label_std.dtype == torch.float64
    assert math.isclose(
        fresh.label_std.item(), (edges[-1] - edges[0]) / math.sqrt(12.0), rel_tol=1e-15
    )
    assert "label_std" not in state  # the caller's dict is not changed
    # ... also as a submodule (the prefix is honoured)
    wrapped = torch.nn.Sequential(GroupBinner(4))
    wrapped.load_state_dict({f"0.{k}": v for k, v in state.items()})
    assert torch.equal(wrapped[0].label_std, fresh.label_std)


# ---------------------------------------------------------------------------------------------
# State and devices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_state_dict_round_trip(strategy):
    labels = torch.randn(40, dtype=torch.float64)
    binner = GroupBinner(5, strategy=strategy).fit(labels)
    state = binner.state_dict()
    assert set(state) == {"edges", "counts", "centers", "label_std", "fit_range", "fit_mode"}
    fresh = GroupBinner(5)
    assert not fresh.fitted
    fresh.load_state_dict(state)
    assert fresh.fitted
    y = torch.cat([torch.randn(100, dtype=torch.float64) * 2, binner.edges])
    assert torch.equal(fresh(y), binner(y))
    assert torch.equal(fresh.counts, binner.counts)
    assert torch.equal(fresh.centers, binner.centers)
    assert torch.equal(fresh.label_std, binner.label_std)


def test_loading_unfitted_state_keeps_unfitted():
    fresh = GroupBinner(3)
    fresh.load_state_dict(GroupBinner(3).state_dict())
    assert not fresh.fitted


def test_buffers_move_with_device(device):
    binner = GroupBinner(3).fit(torch.linspace(0.0, 1.0, 20)).to(device)  # no empty group
    for name in ("edges", "counts", "centers", "label_std"):
        assert getattr(binner, name).device.type == device.type
    assert binner.edges.dtype == torch.float64 and binner.label_std.dtype == torch.float64
    binner.fit(torch.linspace(0.0, 1.0, 20, device=device))  # labels on the device work too
    assert binner.counts.sum().item() == 20


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    train=st.lists(finite, min_size=2, max_size=30, unique=True),
    # a (1,) batch is covered by test_batch_of_one_keeps_its_batch_dimension
    test=st.lists(st.floats(allow_nan=False, width=64), min_size=2, max_size=30),
    num_groups=st.integers(2, 8),
    strategy=st.sampled_from(["uniform", "quantile"]),
)
def test_binning_is_monotone_and_in_range(train, test, num_groups, strategy):
    binner = GroupBinner(num_groups, strategy=strategy)
    try:
        # few or clustered labels leave groups empty; binning is still monotone
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*hold no training label", category=UserWarning
            )
            binner.fit(train)
    except ValueError:  # quantile ties from too few labels
        return
    y = torch.tensor(sorted(test), dtype=torch.float64)
    g = binner(y)
    assert ((g >= 0) & (g < num_groups)).all()
    assert (g[1:] >= g[:-1]).all()  # y1 <= y2 -> g1 <= g2
    assert g.tolist() == ref_groups(y, edges_of(binner))


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "backend",
    ["aot_eager", pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.inductor])],
)
def test_compile_fullgraph_matches_eager(backend, device):
    torch._dynamo.reset()
    binner = GroupBinner(6).fit(torch.randn(50)).to(device)
    compiled = torch.compile(binner, fullgraph=True, backend=backend)
    y = torch.cat([torch.randn(64) * 2, binner.edges.float().cpu()]).to(device)
    assert torch.equal(compiled(y), binner(y))


# ---------------------------------------------------------------------------------------------
# GroupBinner(3, low=0.0, high=inf); fitted after a reload
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"low": 0.0, "high": math.inf}, {"low": -math.inf}, {"high": math.nan}, {"low": "0"},
     {"high": True}],
)
def test_binner_rejects_non_finite_low_high(kwargs):
    with pytest.raises(ValueError, match=r"expected (low|high) to be a finite number or None"):
        GroupBinner(3, **kwargs).fit([1.0, 2.0, 3.0])


def test_binner_accepts_integer_and_numpy_bounds():
    binner = GroupBinner(2, low=np.float32(0.0), high=4).fit([1.0, 3.0])
    assert binner.edges.tolist() == [0.0, 2.0, 4.0]
    assert binner.low == 0.0 and binner.high == 4.0


def test_reloaded_binner_is_fitted():
    binner = GroupBinner(3, low=0.0, high=3.0).fit([0.5, 1.5, 2.5])
    fresh = GroupBinner(3)
    fresh.load_state_dict(binner.state_dict())
    assert fresh.fitted
    assert torch.equal(fresh(torch.tensor([0.1, 1.1, 2.9])), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------------------------
# GroupBinner state_dict saves strategy, low, high (and explicit edges)
# ---------------------------------------------------------------------------------------------
def test_binner_settings_round_trip():
    labels, other = torch.linspace(0.0, 9.0, 50), torch.rand(80) ** 2 * 20
    cases = [
        GroupBinner(4, low=0.0, high=10.0),
        GroupBinner(4, low=-1.0),
        GroupBinner(4, strategy="quantile"),
        GroupBinner(4, edges=[0.0, 1.0, 2.0, 5.0, 10.0]),
    ]
    for binner in cases:
        binner.fit(labels)
        state = binner.state_dict()
        cloned = {k: v.clone() for k, v in state.items()}  # every entry is a tensor
        fresh = GroupBinner(4, low=100.0, high=200.0)  # other settings, overwritten
        fresh.load_state_dict(cloned)
        assert (fresh.strategy, fresh.low, fresh.high) == (binner.strategy, binner.low, binner.high)
        assert torch.equal(fresh.edges, binner.edges)
        # the next fit follows the saved settings, not the constructor's
        assert torch.equal(fresh.fit(other).edges, binner.fit(other).edges)
        assert f"strategy={binner.strategy!r}" in repr(fresh)


def test_binner_settings_are_read_only():
    binner = GroupBinner(3, low=0.0, high=1.0)
    for name in ("strategy", "low", "high"):
        with pytest.raises(AttributeError):
            setattr(binner, name, None)


def test_binner_dirloss_0_1_checkpoint_keeps_constructor_settings():
    old = GroupBinner(3).fit([0.0, 1.0, 2.0, 3.0]).state_dict()
    state = {k: old[k] for k in ("edges", "counts", "centers")}  # what 0.1 saved
    fresh = GroupBinner(3, low=-1.0, high=5.0)
    fresh.load_state_dict(state)
    assert fresh.fitted and (fresh.low, fresh.high) == (-1.0, 5.0)
    assert fresh.fit([0.0, 2.0, 4.0]).edges.tolist() == [-1.0, 1.0, 3.0, 5.0]


def test_binner_fit_range_stays_float64_under_half():
    binner = GroupBinner(3, low=0.1, high=0.7).fit([0.2, 0.4, 0.6]).half()
    assert binner.fit_range.dtype == torch.float64 and binner.low == 0.1


# ---------------------------------------------------------------------------------------------
# GroupBinner on (N, 2) labels
# ---------------------------------------------------------------------------------------------
def test_binner_forward_rejects_two_labels_per_sample():
    binner = fitted_binner()
    with pytest.raises(ValueError, match=r"expected labels of shape \(N,\) or \(N, 1\) .*\(6, 2\)"):
        binner(torch.rand(6, 2))
    assert binner(torch.rand(6, 1)).shape == (6,)
    with pytest.raises(ValueError, match=r"expected labels to have shape \(N,\) or \(N, 1\)"):
        binner.fit(torch.rand(6, 2))


# ---------------------------------------------------------------------------------------------
# strategy="quantile" (or explicit edges) with low / high
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"strategy": "quantile", "low": 0.0}, {"strategy": "quantile", "high": 1.0},
     {"strategy": "quantile", "low": 0.0, "high": 1.0},
     {"edges": [0.0, 1.0, 2.0, 3.0], "low": 0.0}],
)
def test_low_high_only_with_uniform(kwargs):
    with pytest.raises(ValueError, match=r"expected low/high only with strategy='uniform'"):
        GroupBinner(3, **kwargs)


def test_explicit_edges_with_quantile_raises():
    with pytest.raises(ValueError, match=r"expected strategy='uniform' .* with explicit edges"):
        GroupBinner(3, strategy="quantile", edges=[0.0, 1.0, 2.0, 3.0])
