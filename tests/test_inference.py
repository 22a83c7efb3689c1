"""select_inference on bad validation data: a clear error (or warning) instead of a riddle.

The scoring itself is compared with plain loops in test_recipe.py.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from dirloss import GroupBinner, MultiExpertHead, select_inference


def make_case(num_groups=4, n=60, in_features=3):
    binner = GroupBinner(num_groups).fit(torch.rand(300))
    head = MultiExpertHead(in_features, num_groups)
    return head, binner, torch.randn(n, in_features), torch.rand(n)


def assert_untouched(head):
    assert head.inference == "soft" and head.tau == 0.0


@pytest.mark.parametrize("target_shape", [(0,), (0, 1)])
def test_empty_validation_set_names_the_shapes(target_shape):
    head, binner, _, _ = make_case()
    features, target = torch.randn(0, 3), torch.rand(target_shape)
    expected = (
        "expected at least one validation row, got features of shape (0, 3) and target of "
        f"shape {target_shape}"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        select_inference(head, features, target, binner)
    assert_untouched(head)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_targets_say_which_and_how_many(bad):
    head, binner, features, target = make_case()
    target[[3, 7]] = bad
    with pytest.raises(
        ValueError,
        match=r"expected finite validation targets, got 2 NaN/inf of 60 values "
        r"\(in 2 of 60 rows: 3, 7\)",
    ):
        select_inference(head, features, target, binner)
    assert_untouched(head)


def test_non_finite_features_say_which_and_how_many():
    head, binner, features, target = make_case()
    features[:, 1] = float("nan")  # a whole column: every row, the rows listed up to 5
    with pytest.raises(
        ValueError,
        match=r"expected finite validation features, got 60 NaN/inf of 180 values "
        r"\(in 60 of 60 rows: 0, 1, 2, 3, 4, \.\.\.\)",
    ):
        select_inference(head, features, target, binner)
    assert_untouched(head)


def test_non_finite_column_target():
    head, binner, features, target = make_case()
    target = target[:, None].clone()
    target[5, 0] = float("nan")
    with pytest.raises(ValueError, match=r"targets, got 1 NaN/inf of 60 values \(in 1 of 60"):
        select_inference(head, features, target, binner)


def test_binner_head_group_mismatch():
    _, binner, features, target = make_case(num_groups=8)
    head = MultiExpertHead(3, 10)
    with pytest.raises(
        ValueError,
        match="expected a binner with the head's number of groups, but the binner has 8 "
        "groups and the head has 10",
    ):
        select_inference(head, features, target, binner)
    assert_untouched(head)


def test_unfitted_binner():
    head, _, features, target = make_case()
    with pytest.raises(ValueError, match="expected a fitted GroupBinner"):
        select_inference(head, features, target, GroupBinner(4))


@pytest.mark.parametrize("shape", [(60,), (60, 5), (60, 3, 1)])
def test_bad_feature_shape(shape):
    head, binner, _, target = make_case()
    with pytest.raises(ValueError, match=r"expected features of shape \(N, 3\), got"):
        select_inference(head, torch.randn(shape), target, binner)


@pytest.mark.parametrize("n", [1, 2, 5, 19])
def test_too_few_rows_warn_but_tune(n):
    head, binner, features, target = make_case(n=n)  # 4 bins: the warning is below 20 rows
    with pytest.warns(UserWarning, match=f"got {n} validation rows for 4 bins"):
        choice = select_inference(head, features, target, binner)
    assert (head.inference, head.tau) == (choice.inference, choice.tau)


def test_minimum_counts_the_bins_of_bin_edges():
    head, binner, features, target = make_case(n=12)  # 12 rows, 2 bins: enough
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_inference(head, features, target, binner, bin_edges=torch.tensor([0.0, 0.5, 1.0]))
    with pytest.warns(UserWarning, match="got 12 validation rows for 4 bins"):
        select_inference(head, features, target, binner)


def test_enough_rows_do_not_warn():
    head, binner, features, target = make_case(n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_inference(head, features, target, binner)
