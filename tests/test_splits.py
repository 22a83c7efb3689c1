"""dir_split: balanced validation/test sets, checked against per-bin counts done by loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dirloss import DIRSplit, dir_split
from dirloss.metrics import EDGE_RTOL


def _loop_bin(y: float, edges: list[float]) -> int:
    """Bin of one label, by a scan: the last edge <= y, clipped into the edge range; a label
    less than EDGE_RTOL of the narrowest bin below an edge counts as on it (shot_metrics'
    rule, so float round-off in the edges moves no label)."""
    tol = EDGE_RTOL * min(b - a for a, b in zip(edges, edges[1:]))
    b = 0
    for k in range(len(edges) - 1):
        if y + tol >= edges[k]:
            b = k
    return b


def _check_split(labels: torch.Tensor, split: DIRSplit, per_bin: int, frac: float) -> None:
    n = labels.numel()
    train, val, test = (s.tolist() for s in (split.train, split.val, split.test))
    assert sorted(train + val + test) == list(range(n)), "not a partition of the rows"
    assert train == sorted(train) and val == sorted(val) and test == sorted(test)
    edges = split.bin_edges.tolist()
    bins = [_loop_bin(float(y), edges) for y in labels.tolist()]
    for b in range(len(edges) - 1):
        n_b = bins.count(b)
        k = min(per_bin, math.floor(frac * n_b))
        assert sum(bins[i] == b for i in val) == k, f"val count of bin {b}"
        assert sum(bins[i] == b for i in test) == k, f"test count of bin {b}"
        assert sum(bins[i] == b for i in train) == n_b - 2 * k


def test_counts_per_bin_match_the_rule():
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.rand(500, generator=gen), 3 * torch.rand(60, generator=gen)])
    split = dir_split(labels, per_bin=15, num_bins=6, seed=1)
    _check_split(labels, split, 15, 1 / 3)
    assert split.bin_edges.dtype == torch.float64
    assert split.bin_edges[0] == labels.min().double()
    assert split.bin_edges[-1] == labels.max().double()


def test_val_and_test_are_balanced_where_the_data_allow():
    # 3 bins of 300, 90 and 12 rows: M = 20 fits the first two, the rare bin gives 4 each.
    labels = torch.cat([torch.full((300,), 0.5), torch.full((90,), 1.5), torch.full((12,), 2.5)])
    split = dir_split(labels, per_bin=20, bin_edges=[0.0, 1.0, 2.0, 3.0])
    test_labels = labels[split.test]
    counts = [int(((test_labels > k) & (test_labels < k + 1)).sum()) for k in range(3)]
    assert counts == [20, 20, 4]
    assert len(split.val) == len(split.test) == 44


def test_deterministic_by_seed():
    labels = torch.linspace(0, 1, 200) ** 3
    a, b = dir_split(labels, per_bin=5, seed=3), dir_split(labels, per_bin=5, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = dir_split(labels, per_bin=5, seed=4)
    assert not torch.equal(a.test, c.test)


def test_accepts_numpy_and_lists():
    labels = np.random.default_rng(0).exponential(size=300)
    from_np = dir_split(labels, per_bin=4, num_bins=8)
    from_list = dir_split(labels.tolist(), per_bin=4, num_bins=8)
    assert torch.equal(from_np.test, from_list.test)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 400),
    per_bin=st.integers(1, 30),
    num_bins=st.integers(1, 12),
    frac=st.floats(0.05, 0.45),
    seed=st.integers(0, 2**31 - 1),
)
def test_partition_and_counts_property(n, per_bin, num_bins, frac, seed):
    labels = torch.from_numpy(np.random.default_rng(seed).gamma(2.0, size=n))
    if n == 1 or labels.max() == labels.min():
        with pytest.raises(ValueError, match="more than one distinct value"):
            dir_split(labels, per_bin=per_bin, num_bins=num_bins)
        return
    split = dir_split(labels, per_bin=per_bin, num_bins=num_bins, max_fraction=frac, seed=seed)
    _check_split(labels, split, per_bin, frac)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": torch.zeros(0), "per_bin": 1}, "shape"),
        ({"labels": torch.zeros(3, 2), "per_bin": 1}, "shape"),
        ({"labels": torch.tensor([0.0, float("nan")]), "per_bin": 1}, "finite"),
        ({"labels": torch.tensor([0.0, 1.0]), "per_bin": 0}, "per_bin"),
        ({"labels": torch.tensor([0.0, 1.0]), "per_bin": 2.5}, "per_bin"),
        ({"labels": torch.tensor([0.0, 1.0]), "per_bin": 1, "num_bins": 0}, "num_bins"),
        ({"labels": torch.tensor([0.0, 1.0]), "per_bin": 1, "max_fraction": 0.5}, "max_fraction"),
        ({"labels": torch.tensor([0.0, 1.0]), "per_bin": 1, "bin_edges": [1.0, 0.0]}, "increasing"),
        ({"labels": torch.ones(5), "per_bin": 1}, "distinct"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dir_split(**kwargs)
