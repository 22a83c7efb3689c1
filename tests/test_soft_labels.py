"""Descending soft labels and their loss against loops written from the equations (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _bad_groups import OUT_OF_RANGE, G, bad_groups, range_error
from _battery import Spec, battery
from hypothesis import given, settings
from hypothesis import strategies as st

from dirloss import DescendingSoftLabelLoss
from dirloss.functional import (
    descending_soft_label_loss,
    descending_soft_label_table,
    descending_soft_labels,
)


# ---------------------------------------------------------------------------------------------
# Reference: plain loops written straight from the definitions.
# ---------------------------------------------------------------------------------------------
def ref_softmax(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    s = sum(e)
    return [v / s for v in e]


def ref_log_softmax(values):
    m = max(values)
    lse = m + math.log(sum(math.exp(v - m) for v in values))
    return [v - lse for v in values]


def ref_table(num_groups, scale, step):
    """p_kj = softmax_j clamp(r_kj, 0, G-1); r_kk = scale (G-1); r_kj = (G - step - |j-k|)/scale."""
    g = num_groups
    table = []
    for k in range(g):
        r = []
        for j in range(g):
            v = scale * (g - 1) if j == k else (g - step - abs(j - k)) / scale
            r.append(min(max(v, 0.0), g - 1.0))
        table.append(ref_softmax(r))
    return table


def ref_peaks(table):
    """Every row k puts strictly more mass on k than on any other group."""
    return all(row[k] > row[j] for k, row in enumerate(table) for j in range(len(row)) if j != k)


def ref_loss(logits, target, table, adjustment=None):
    """l_i = -sum_j p_{y_i j} log softmax(x_i + a)_j, per sample."""
    out = []
    for row, t in zip(logits, target):
        x = [v + (adjustment[j] if adjustment is not None else 0.0) for j, v in enumerate(row)]
        logp = ref_log_softmax(x)
        out.append(-sum(table[t][j] * logp[j] for j in range(len(x))))
    return out


VALID = [
    (2, 1.0, 1),
    (5, 1.0, 1),
    (6, 3.0, 1),
    (6, 1.0, 3),
    (6, 0.95, 2),
    (10, 2.0, 0),
    (7, 0.5, 7),
]


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_groups, scale, step", VALID)
def test_table_matches_loop(num_groups, scale, step):
    table = descending_soft_label_table(num_groups, scale=scale, step=step, dtype=torch.float64)
    assert table.shape == (num_groups, num_groups) and table.dtype == torch.float64
    ref = torch.tensor(ref_table(num_groups, scale, step), dtype=torch.float64)
    torch.testing.assert_close(table, ref, rtol=1e-12, atol=1e-15)


def test_scale_step_one_is_exp_minus_distance():
    g = 7
    table = descending_soft_label_table(g, dtype=torch.float64)
    for k in range(g):
        w = [math.exp(-abs(j - k)) for j in range(g)]
        ref = torch.tensor([v / sum(w) for v in w], dtype=torch.float64)
        torch.testing.assert_close(table[k], ref, rtol=1e-12, atol=1e-15)


def test_table_default_dtype_and_device(device):
    table = descending_soft_label_table(4, device=device)
    assert table.dtype == torch.float32 and table.device.type == device.type
    table = descending_soft_label_table(4, device=device, dtype=torch.float16)
    assert table.dtype == torch.float16


def test_soft_labels_are_table_rows(device):
    groups = torch.tensor([0, 3, 1, 1, 4], device=device)
    labels = descending_soft_labels(groups, 5, scale=2.0, step=1)
    assert labels.shape == (5, 5) and labels.dtype == torch.float32
    assert labels.device.type == device.type
    ref = torch.tensor(ref_table(5, 2.0, 1), dtype=torch.float32)[groups.cpu()]
    torch.testing.assert_close(labels.cpu(), ref)
    assert descending_soft_labels(groups[:0], 5).shape == (0, 5)


@pytest.mark.parametrize(
    "groups", [torch.tensor([0.0, 1.0]), torch.tensor([[0, 1]]), torch.tensor([True, False])]
)
def test_soft_labels_reject_bad_groups(groups):
    with pytest.raises(ValueError, match="expected"):
        descending_soft_labels(groups, 3)


@settings(max_examples=50, deadline=None)
@given(
    num_groups=st.integers(2, 12),
    scale=st.floats(0.05, 20.0),
    step=st.integers(0, 14),
)
def test_table_properties(num_groups, scale, step):
    ref = ref_table(num_groups, scale, step)
    if not ref_peaks(ref):
        with pytest.raises(ValueError, match="peak"):
            descending_soft_label_table(num_groups, scale=scale, step=step)
        with pytest.raises(ValueError, match="peak"):
            DescendingSoftLabelLoss(num_groups, scale=scale, step=step)
        return
    p = descending_soft_label_table(num_groups, scale=scale, step=step, dtype=torch.float64)
    torch.testing.assert_close(p, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    g = num_groups
    torch.testing.assert_close(p.sum(1), torch.ones(g, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(p.argmax(1), torch.arange(g))
    for k in range(g):
        for j in range(g):
            if j != k:
                assert p[k, k] > p[k, j]
        for d in range(1, g):
            if 0 <= k - d and k + d < g:  # symmetric where both sides exist
                assert p[k, k + d].item() == pytest.approx(p[k, k - d].item(), rel=1e-12)
            for j in (k - d, k + d):  # non-increasing with the distance |j - k|
                if 0 <= j < g and 0 <= j + (1 if j > k else -1) < g:
                    nxt = j + (1 if j > k else -1)
                    assert p[k, nxt] <= p[k, j] * (1 + 1e-12)


@pytest.mark.parametrize(
    "num_groups, scale, step",
    [(10, 0.1, 0), (10, 0.1, 1), (10, 0.9, 1), (5, 1.0, 0), (4, 0.5, 1)],
)
def test_invalid_scale_step_raise_with_bound(num_groups, scale, step):
    bound = math.sqrt(max(num_groups - 1 - step, 0) / (num_groups - 1))
    # the reference agrees these do not peak at the true group
    assert not ref_peaks(ref_table(num_groups, scale, step))
    for build in (
        lambda: descending_soft_label_table(num_groups, scale=scale, step=step),
        lambda: DescendingSoftLabelLoss(num_groups, scale=scale, step=step),
        lambda: descending_soft_label_loss(
            torch.zeros(2, num_groups), torch.tensor([0, 1]), scale=scale, step=step
        ),
    ):
        with pytest.raises(ValueError, match="scale >") as info:
            build()
        assert f"{bound:.4g}" in str(info.value)


@pytest.mark.parametrize("step", [-1, -5, 1.0, 1.5, True, None])
def test_invalid_step_type_or_sign(step):
    with pytest.raises(ValueError, match="step"):
        DescendingSoftLabelLoss(5, step=step)
    with pytest.raises(ValueError, match="step"):
        descending_soft_label_table(5, step=step)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_invalid_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        DescendingSoftLabelLoss(5, scale=scale)
    with pytest.raises(ValueError, match="scale"):
        descending_soft_label_table(5, scale=scale)


@pytest.mark.parametrize("num_groups", [1, 0, 2.0, True])
def test_invalid_num_groups(num_groups):
    with pytest.raises(ValueError, match="num_groups"):
        DescendingSoftLabelLoss(num_groups)


# ---------------------------------------------------------------------------------------------
# Loss against the loop and torch built-ins
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_groups, scale, step", VALID)
def test_loss_matches_loop(num_groups, scale, step, device):
    n = 9
    logits = torch.randn(n, num_groups, dtype=torch.float64, device=device) * 3
    target = torch.randint(0, num_groups, (n,), device=device)
    got = descending_soft_label_loss(logits, target, scale=scale, step=step, reduction="none")
    table = ref_table(num_groups, scale, step)
    ref = ref_loss(logits.tolist(), target.tolist(), table)
    torch.testing.assert_close(
        got.cpu(), torch.tensor(ref, dtype=torch.float64), rtol=1e-7, atol=1e-7
    )
    # the default table is float32; a float64 table passed in matches the loop to 1e-12
    t64 = descending_soft_label_table(
        num_groups, scale=scale, step=step, dtype=torch.float64, device=device
    )
    got64 = descending_soft_label_loss(logits, target, table=t64, reduction="none")
    torch.testing.assert_close(
        got64.cpu(), torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12
    )


def test_loss_equals_soft_target_cross_entropy(device):
    logits = torch.randn(12, 6, dtype=torch.float64, device=device)
    target = torch.randint(0, 6, (12,), device=device)
    soft = descending_soft_label_table(6, scale=1.5, step=2, dtype=torch.float64, device=device)[
        target
    ]
    for reduction in ("none", "mean", "sum"):
        got = descending_soft_label_loss(
            logits, target, reduction=reduction, table=soft.new_tensor(ref_table(6, 1.5, 2))
        )
        torch.testing.assert_close(got, F.cross_entropy(logits, soft, reduction=reduction))


def test_one_hot_table_is_cross_entropy(device):
    logits = torch.randn(10, 5, dtype=torch.float64, device=device) * 4
    target = torch.randint(0, 5, (10,), device=device)
    eye = torch.eye(5, dtype=torch.float64, device=device)
    got = descending_soft_label_loss(logits, target, table=eye, reduction="none")
    torch.testing.assert_close(
        got, F.cross_entropy(logits, target, reduction="none"), rtol=1e-14, atol=1e-14
    )


def test_large_scale_tends_to_cross_entropy():
    # With many groups and a large scale the labels are ~one-hot: the true group's logit is
    # G - 1 and every other is ~0, so 1 - p_kk ~ (G - 1) e^-(G - 1).
    g = 30
    logits = torch.randn(16, g, dtype=torch.float64) * 3
    target = torch.randint(0, g, (16,))
    got = descending_soft_label_loss(logits, target, scale=1000.0)
    torch.testing.assert_close(got, F.cross_entropy(logits, target), rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Gradient, module, extremes, half precision (the rest of the battery: TestBattery below)
# ---------------------------------------------------------------------------------------------
def test_gradient_matches_softmax_minus_soft_label():
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (6,))
    descending_soft_label_loss(logits, target, reduction="sum").backward()
    table = torch.tensor(ref_table(5, 1.0, 1), dtype=torch.float64)
    expected = logits.detach().softmax(1) - table[target]
    torch.testing.assert_close(logits.grad, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale, step", [(1.0, 1), (2.5, 2)])
def test_module_equals_function(scale, step, device):
    module = DescendingSoftLabelLoss(6, scale=scale, step=step).to(device)
    logits = torch.randn(8, 6, device=device)
    target = torch.randint(0, 6, (8,), device=device)
    torch.testing.assert_close(
        module(logits, target), descending_soft_label_loss(logits, target, scale=scale, step=step)
    )
    assert module.table.device.type == device.type
    torch.testing.assert_close(
        module.table, descending_soft_label_table(6, scale=scale, step=step, device=device)
    )


@pytest.mark.parametrize("magnitude", [100.0, 1e4, 1e30])
def test_extreme_logits_finite(magnitude, device):
    logits = torch.tensor(
        [
            [magnitude, -magnitude, 0.0, magnitude],
            [-magnitude] * 4,
            [magnitude, -magnitude, -magnitude, -magnitude],
        ],
        device=device,
        requires_grad=True,
    )
    target = torch.tensor([1, 2, 0], device=device)
    loss = descending_soft_label_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_bf16_logits_give_float32_loss(device):
    logits = (torch.randn(6, 5, device=device) * 50).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 5, (6,), device=device)
    loss = descending_soft_label_loss(logits, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()
    torch.testing.assert_close(loss, descending_soft_label_loss(logits.detach().float(), target))
    loss16 = descending_soft_label_loss(logits.detach().half(), target)
    assert loss16.dtype == torch.float32


def test_empty_batch_and_batch_of_one(device):
    for n in (0, 1):
        logits = torch.randn(n, 4, device=device, requires_grad=True)
        target = torch.randint(0, 4, (n,), device=device)
        for reduction in ("mean", "sum"):
            loss = descending_soft_label_loss(logits, target, reduction=reduction)
            assert loss.shape == () and torch.isfinite(loss)
            loss.backward()
        assert descending_soft_label_loss(logits, target, reduction="none").shape == (n,)
    empty = descending_soft_label_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_int32_target(device):
    logits = torch.randn(5, 4, device=device)
    target = torch.tensor([0, 1, 2, 3, 0], device=device)
    torch.testing.assert_close(
        descending_soft_label_loss(logits, target.int()), descending_soft_label_loss(logits, target)
    )


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8])
def test_small_integer_target_works_or_raises_value_error(dtype):
    # check_group_targets accepts every integer dtype, but index_select only takes int32/int64.
    logits = torch.randn(3, 4)
    target = torch.tensor([0, 1, 3])
    try:
        got = descending_soft_label_loss(logits, target.to(dtype))
    except ValueError:
        return
    torch.testing.assert_close(got, descending_soft_label_loss(logits, target))


# ---------------------------------------------------------------------------------------------
# Logit adjustment
# ---------------------------------------------------------------------------------------------
def test_logit_adjustment_train_and_eval(device):
    counts = torch.tensor([50, 10, 5, 30, 5])
    tau = 0.8
    module = DescendingSoftLabelLoss(5, group_counts=counts, tau=tau).to(device)
    logits = torch.randn(7, 5, device=device, dtype=torch.float64)
    target = torch.randint(0, 5, (7,), device=device)
    prior = [c / sum(counts.tolist()) for c in counts.tolist()]
    adj = [tau * math.log(p) for p in prior]
    module.train()
    expected = descending_soft_label_loss(
        logits, target, logit_adjustment=torch.tensor(adj, device=device), reduction="mean"
    )
    torch.testing.assert_close(module(logits, target), expected)
    ref = ref_loss(logits.tolist(), target.tolist(), ref_table(5, 1.0, 1), adjustment=adj)
    torch.testing.assert_close(module(logits, target).item(), sum(ref) / 7, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(module(logits, target), descending_soft_label_loss(logits, target))
    module.eval()
    torch.testing.assert_close(module(logits, target), descending_soft_label_loss(logits, target))


def test_logit_adjustment_empty_group_counted_as_one():
    module = DescendingSoftLabelLoss(3, group_counts=torch.tensor([4, 0, 5]), tau=1.0)
    expected = torch.tensor([math.log(4 / 10), math.log(1 / 10), math.log(5 / 10)])
    torch.testing.assert_close(module.logit_adjustment, expected)


def test_logit_adjustment_off_without_tau_or_counts():
    logits = torch.randn(4, 3)
    target = torch.tensor([0, 1, 2, 0])
    plain = descending_soft_label_loss(logits, target)
    off = DescendingSoftLabelLoss(3, group_counts=torch.tensor([9, 1, 1]))
    assert off.tau == 0.0 and not off.logit_adjustment.any()
    torch.testing.assert_close(off(logits, target), plain)
    torch.testing.assert_close(DescendingSoftLabelLoss(3)(logits, target), plain)
    with pytest.raises(ValueError, match=r"expected group_counts .* with tau > 0, got None"):
        DescendingSoftLabelLoss(3, tau=1.0)  # tau without a prior would do nothing


def test_logit_adjustment_validation():
    with pytest.raises(ValueError, match="tau"):
        DescendingSoftLabelLoss(3, tau=-0.1)
    with pytest.raises(ValueError, match=r"expected group_counts of shape \(3,\)"):
        DescendingSoftLabelLoss(3, group_counts=torch.tensor([1, 2]), tau=1.0)
    with pytest.raises(ValueError, match=r"expected logit_adjustment of shape \(3,\)"):
        descending_soft_label_loss(
            torch.randn(2, 3), torch.tensor([0, 1]), logit_adjustment=torch.zeros(4)
        )


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "logits, target",
    [
        (torch.randn(4), torch.tensor([0, 1, 2, 3])),  # 1-D logits
        (torch.randn(2, 3, 4), torch.tensor([0, 1])),  # 3-D logits
        (torch.randn(4, 3), torch.tensor([0, 1, 2])),  # target length mismatch
        (torch.randn(4, 3), torch.tensor([[0], [1], [2], [0]])),  # 2-D target
        (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0])),  # float target
        (torch.randn(4, 3), torch.tensor([True, False, True, False])),  # bool target
    ],
)
def test_bad_inputs_raise(logits, target):
    with pytest.raises(ValueError, match="expected"):
        descending_soft_label_loss(logits, target)
    with pytest.raises(ValueError, match="expected"):
        DescendingSoftLabelLoss(3)(logits, target)


def test_table_num_groups_mismatch_raises():
    with pytest.raises(ValueError, match="expected"):
        DescendingSoftLabelLoss(5)(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="expected"):
        descending_soft_label_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), table=torch.eye(3))


def test_device_mismatch_raises():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    with pytest.raises(ValueError, match="same device"):
        descending_soft_label_loss(torch.randn(2, 3, device="cuda"), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    num_groups=st.integers(2, 7),
    seed=st.integers(0, 2**31 - 1),
    tau=st.sampled_from([0.0, 1.0]),
)
def test_permutation_invariance(n, num_groups, seed, tau):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_groups, generator=gen, dtype=torch.float64) * 5
    target = torch.randint(0, num_groups, (n,), generator=gen)
    counts = torch.randint(0, 20, (num_groups,), generator=gen)
    perm = torch.randperm(n, generator=gen)
    module = DescendingSoftLabelLoss(num_groups, reduction="none", group_counts=counts, tau=tau)
    none = module(logits, target)
    # Not bit for bit: the log-softmax runs over dim 0 of the (G, N) transpose, where a
    # sample's column may fall in the vectorised body or the scalar tail of the kernel, whose
    # exp/log can differ in the last ulp (1.8e-15 at n=9, G=7, seed=29659028).
    torch.testing.assert_close(
        module(logits[perm], target[perm]), none[perm], rtol=1e-12, atol=1e-12
    )
    for reduction in ("mean", "sum"):
        module.reduction = reduction
        torch.testing.assert_close(
            module(logits[perm], target[perm]), module(logits, target), rtol=1e-12, atol=1e-12
        )
    module.reduction = "sum"
    torch.testing.assert_close(module(logits, target), none.sum(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Group index >= G or < 0
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("validate", [False, True])
def test_soft_label_loss_rejects_out_of_range_groups(value, validate):
    logits = torch.randn(6, G)
    with pytest.raises(ValueError, match=range_error("target")):
        DescendingSoftLabelLoss(G, validate=validate)(logits, bad_groups(value))
    with pytest.raises(ValueError, match=range_error("target")):
        descending_soft_label_loss(logits, bad_groups(value))
    with pytest.raises(ValueError, match=range_error("groups")):
        descending_soft_labels(bad_groups(value), G)


# ---------------------------------------------------------------------------------------------
# DescendingSoftLabelLoss(10, tau=1.0) without group counts; counts passed to forward
# ---------------------------------------------------------------------------------------------
def test_tau_without_counts_raises():
    with pytest.raises(ValueError, match=r"expected group_counts .* with tau > 0, got None"):
        DescendingSoftLabelLoss(10, tau=1.0)
    DescendingSoftLabelLoss(10, tau=0.0)  # off needs no counts
    DescendingSoftLabelLoss(10, tau=1.0, group_counts=torch.arange(10))


def test_forward_group_counts_override_the_stored_ones():
    logits, target = torch.randn(5, G), torch.tensor([0, 1, 2, 3, 3])
    stored = DescendingSoftLabelLoss(G, group_counts=torch.tensor([9, 1, 1, 1]), tau=0.5)
    live = torch.tensor([1, 1, 1, 9])
    reference = DescendingSoftLabelLoss(G, group_counts=live, tau=0.5)
    torch.testing.assert_close(stored(logits, target, group_counts=live), reference(logits, target))
    stored.eval()  # no adjustment outside training, counts or not
    torch.testing.assert_close(
        stored(logits, target, group_counts=live), descending_soft_label_loss(logits, target)
    )
    with pytest.raises(ValueError, match=r"expected group_counts of shape \(4,\)"):
        stored.train()(logits, target, group_counts=torch.ones(3))


# ---------------------------------------------------------------------------------------------
# Loading a tau=2 state_dict into a tau=1 loss
# ---------------------------------------------------------------------------------------------
def test_loaded_tau_is_the_saved_tau():
    counts = torch.tensor([50, 10, 3, 30])
    saved = DescendingSoftLabelLoss(G, group_counts=counts, tau=2.0)
    logits, target = torch.randn(7, G), torch.randint(0, G, (7,))
    for fresh in (
        DescendingSoftLabelLoss(G, group_counts=torch.ones(G), tau=1.0),
        DescendingSoftLabelLoss(G),  # built with tau = 0
    ):
        fresh.load_state_dict(saved.state_dict())
        assert fresh.tau == 2.0 and "tau=2.0" in repr(fresh)
        torch.testing.assert_close(fresh.logit_adjustment, saved.logit_adjustment)
        assert torch.equal(fresh(logits, target), saved(logits, target))
    off = DescendingSoftLabelLoss(G, group_counts=counts, tau=1.0)
    off.load_state_dict(DescendingSoftLabelLoss(G).state_dict())
    assert off.tau == 0.0
    assert torch.equal(off(logits, target), descending_soft_label_loss(logits, target))


@pytest.mark.parametrize("tau", [0.0, 0.3, 2.0])
def test_dirloss_0_1_checkpoint_recovers_tau(tau):
    # 0.1 saved only the table and, with tau > 0, tau * log(prior).
    counts = torch.tensor([50, 10, 0, 30])
    state = dict(DescendingSoftLabelLoss(G, group_counts=counts, tau=tau).state_dict())
    del state["logit_tau"]
    if tau == 0:
        del state["logit_adjustment"]
    fresh = DescendingSoftLabelLoss(G, group_counts=torch.ones(G), tau=1.0)
    fresh.load_state_dict(state)
    assert fresh.tau == pytest.approx(tau, rel=1e-6, abs=1e-12)


def test_tau_stays_float64_under_half():
    module = DescendingSoftLabelLoss(G, group_counts=torch.tensor([3, 1, 1, 1]), tau=0.1).half()
    assert module.logit_tau.dtype == torch.float64 and module.tau == 0.1


# ---------------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py)
# ---------------------------------------------------------------------------------------------
BATTERY_COUNTS = torch.tensor([9, 1, 0, 4, 2])
SOFT_LABEL_KEYS = frozenset({"table", "logit_tau", "logit_adjustment"})


def soft_label_inputs(dtype, device):
    logits = torch.randn(7, 5, dtype=dtype, device=device) * 3
    return logits, torch.tensor([0, 4, 1, 2, 2, 3, 0], device=device)


def soft_label_spec(name, *, scale, step, tau=0.0, **extra):
    counts = BATTERY_COUNTS if tau else None

    def function(module, logits, target):
        adjustment = None
        if tau and module.training:  # the module adjusts while training only
            c = counts.to(logits.device, torch.float32).clamp_min(1.0)
            adjustment = tau * (c / c.sum()).log()
        return descending_soft_label_loss(
            logits, target, scale=scale, step=step, logit_adjustment=adjustment,
            reduction=module.reduction,
        )

    return Spec(
        name,
        build=lambda **kw: DescendingSoftLabelLoss(
            5, scale=scale, step=step, group_counts=counts, tau=tau, **kw
        ),
        inputs=soft_label_inputs,
        function=function,
        gradgrad=True,
        state_keys=SOFT_LABEL_KEYS,
        **extra,
    )


TestBattery = battery(
    soft_label_spec("plain", scale=1.5, step=1),
    soft_label_spec(
        "adjusted", scale=2.0, step=2, tau=0.5, inductor=True,
        # another table and adjustment, overwritten by the load
        fresh=lambda: DescendingSoftLabelLoss(
            5, scale=2.0, step=2, group_counts=torch.ones(5), tau=1.0
        ),
    ),
)
