"""The recipe's functional ops against plain float64 loops: expert_share_table,
expert_mse_loss, mixture_mse_loss, combine_experts and select_expert (``dirloss.functional``).

The soft-label and contrastive functions are tested with their modules
(test_soft_labels.py, test_contrastive.py)."""

from __future__ import annotations

import math

import pytest
import torch
from _bad_groups import OUT_OF_RANGE, G, bad_groups, range_error
from _references import ref_combine, ref_expert_mse, ref_mixture_mse, ref_share_table
from hypothesis import given, settings
from hypothesis import strategies as st

from dirloss.functional import (
    INFERENCE_MODES,
    combine_experts,
    expert_mse_loss,
    expert_share_table,
    mixture_mse_loss,
    select_expert,
)


# ---------------------------------------------------------------------------------------------
# expert_share_table
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_groups", [2, 5, 11])
@pytest.mark.parametrize("share", [0.0, 0.3, 1.0, 4.0])
def test_share_table_matches_loop(num_groups, share):
    table = expert_share_table(num_groups, share, dtype=torch.float64)
    assert table.shape == (num_groups, num_groups) and table.dtype == torch.float64
    ref = torch.tensor(ref_share_table(num_groups, share), dtype=torch.float64)
    torch.testing.assert_close(table, ref, rtol=1e-14, atol=1e-15)


def test_share_table_dtype_and_device(device):
    table = expert_share_table(4, 1.0, device=device)
    assert table.dtype == torch.get_default_dtype() and table.device.type == device.type
    assert expert_share_table(4, 1.0, dtype=torch.float16).dtype == torch.float16


def test_share_table_zero_is_identity():
    assert torch.equal(expert_share_table(6, 0.0), torch.eye(6))


@pytest.mark.parametrize(
    "num_groups, share, match",
    [
        (1, 1.0, "num_groups"),
        (0, 1.0, "num_groups"),
        (3.0, 1.0, "num_groups"),
        (4, -0.5, "share"),
        (4, float("nan"), "share"),
        (4, float("inf"), "share"),
        (4, True, "share"),
    ],
)
def test_share_table_bad_arguments(num_groups, share, match):
    with pytest.raises(ValueError, match=match):
        expert_share_table(num_groups, share)


@settings(max_examples=30, deadline=None)
@given(num_groups=st.integers(2, 12), share=st.floats(0.05, 20.0))
def test_share_table_properties(num_groups, share):
    # Rows sum to one, the table is symmetric (every row is the same kernel, and rows of
    # the same distance to the border are mirror images), and weights fall with distance.
    table = expert_share_table(num_groups, share, dtype=torch.float64)
    torch.testing.assert_close(table.sum(1), torch.ones(num_groups, dtype=torch.float64))
    flipped = table.flip(0).flip(1)
    torch.testing.assert_close(table, flipped, rtol=1e-12, atol=1e-15)
    for k in range(num_groups):
        row = table[k]
        assert row.argmax().item() == k
        assert all(row[g] >= row[g + 1] for g in range(k, num_groups - 1))
        assert all(row[g] >= row[g - 1] for g in range(1, k + 1))


# ---------------------------------------------------------------------------------------------
# expert_mse_loss
# ---------------------------------------------------------------------------------------------
def make_experts(n=7, num_groups=4, out_features=2, dtype=torch.float64, device="cpu"):
    experts = torch.randn(n, num_groups, out_features, dtype=dtype, device=device)
    target = torch.randn(n, out_features, dtype=dtype, device=device)
    groups = torch.randint(0, num_groups, (n,), device=device)
    return experts, target, groups


@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("share", [None, 0.0, 0.5, 2.0])
@pytest.mark.parametrize("scale", [1.0, 0.37, 12.5])
def test_expert_mse_matches_loop(out_features, share, scale, device):
    experts, target, groups = make_experts(out_features=out_features, device=device)
    table = None if share is None else expert_share_table(4, share, dtype=torch.float64)
    got = expert_mse_loss(
        experts, target, groups, table=None if table is None else table.to(device),
        target_unit=scale,
    )
    assert got.shape == () and got.dtype == torch.float64
    weights = ref_share_table(4, 0.0 if share is None else share)  # None: true group only
    ref = ref_expert_mse(experts, target, groups.cpu(), weights, scale)
    assert math.isclose(got.item(), ref, rel_tol=1e-12)


def test_expert_mse_without_table_is_true_group_mse():
    experts, target, groups = make_experts()
    pred = torch.stack([experts[i, groups[i]] for i in range(7)])
    expected = torch.nn.functional.mse_loss(pred, target)
    torch.testing.assert_close(expert_mse_loss(experts, target, groups), expected)
    identity = expert_share_table(4, 0.0, dtype=torch.float64)
    torch.testing.assert_close(
        expert_mse_loss(experts, target, groups, table=identity), expected, rtol=1e-14, atol=0
    )


def test_expert_mse_tensor_scale_equals_float_scale():
    experts, target, groups = make_experts()
    table = expert_share_table(4, 1.0, dtype=torch.float64)
    a = expert_mse_loss(experts, target, groups, table=table, target_unit=2.5)
    b = expert_mse_loss(experts, target, groups, table=table, target_unit=torch.tensor(2.5))
    torch.testing.assert_close(a, b, rtol=1e-15, atol=0)


@pytest.mark.parametrize("share", [None, 1.0])
def test_expert_mse_gradcheck(share):
    experts, target, groups = make_experts(n=5, num_groups=3)
    experts.requires_grad_()
    target.requires_grad_()
    table = None if share is None else expert_share_table(3, share, dtype=torch.float64)
    scale = torch.tensor(1.7, dtype=torch.float64)

    def fn(experts, target):
        return expert_mse_loss(experts, target, groups, table=table, target_unit=scale)

    assert torch.autograd.gradcheck(fn, (experts, target))
    assert torch.autograd.gradgradcheck(fn, (experts, target))


def test_expert_mse_no_gradient_to_experts_without_weight():
    # Without a table only the true group's expert gets a gradient.
    experts, target, _ = make_experts(n=3, num_groups=4)
    experts.requires_grad_()
    expert_mse_loss(experts, target, torch.tensor([1, 1, 3])).backward()
    assert experts.grad[:, [0, 2]].abs().sum() == 0
    assert (experts.grad[:2, 1].abs().sum(-1) > 0).all() and experts.grad[2, 3].abs().sum() > 0


@pytest.mark.parametrize("share", [None, 1.0])
def test_expert_mse_empty_batch(share):
    experts, target, groups = make_experts(n=0)
    experts.requires_grad_()
    table = None if share is None else expert_share_table(4, share)
    loss = expert_mse_loss(experts, target, groups, table=table)
    assert loss.item() == 0.0
    loss.backward()
    assert experts.grad.shape == experts.shape


@pytest.mark.parametrize("share", [None, 1.0])
def test_expert_mse_autocast_bf16_accumulates_in_float32(share, device):
    experts, target, groups = make_experts(dtype=torch.float32, device=device)
    table = None if share is None else expert_share_table(4, share, device=device)
    ref = expert_mse_loss(experts, target, groups, table=table)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = expert_mse_loss(experts.bfloat16(), target.bfloat16(), groups, table=table)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02)


def test_expert_mse_extreme_values_finite():
    experts = torch.full((3, 4, 1), 1e15, dtype=torch.float32, requires_grad=True)
    target = torch.full((3, 1), -1e15)
    loss = expert_mse_loss(experts, target, torch.tensor([0, 1, 3]), target_unit=1e15)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(experts.grad).all()


@pytest.mark.parametrize("share", [None, 1.0])
def test_expert_mse_compile_fullgraph(share):
    torch._dynamo.reset()
    experts, target, groups = make_experts(dtype=torch.float32)
    table = None if share is None else expert_share_table(4, share)
    scale = torch.tensor(1.3, dtype=torch.float64)  # a float64 buffer, as binner.label_std

    def fn(experts, target, groups):
        return expert_mse_loss(experts, target, groups, table=table, target_unit=scale)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(experts, target, groups), fn(experts, target, groups))


@pytest.mark.parametrize(
    "experts_shape, target_shape, groups, table_shape, match",
    [
        ((5, 4), (5, 1), [0] * 5, None, "experts of shape"),
        ((5, 4, 1), (5,), [0] * 5, None, "target of shape"),
        ((5, 4, 2), (5, 1), [0] * 5, None, "target of shape"),
        ((5, 4, 1), (5, 1), [0] * 4, None, "groups"),
        ((5, 4, 1), (5, 1), [0.0] * 5, None, "groups"),
        ((5, 4, 1), (5, 1), [0] * 5, (3, 3), "expert table"),
    ],
)
def test_expert_mse_bad_shapes(experts_shape, target_shape, groups, table_shape, match):
    table = None if table_shape is None else torch.eye(table_shape[0])
    with pytest.raises(ValueError, match=match):
        expert_mse_loss(
            torch.randn(experts_shape), torch.randn(target_shape), torch.tensor(groups),
            table=table,
        )


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), share=st.sampled_from([None, 0.5, 3.0]), seed=st.integers(0, 2**31))
def test_expert_mse_permutation_invariant(n, share, seed):
    gen = torch.Generator().manual_seed(seed)
    experts = torch.randn(n, 5, 2, generator=gen, dtype=torch.float64)
    target = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, 5, (n,), generator=gen)
    table = None if share is None else expert_share_table(5, share, dtype=torch.float64)
    perm = torch.randperm(n, generator=gen)
    a = expert_mse_loss(experts, target, groups, table=table)
    b = expert_mse_loss(experts[perm], target[perm], groups[perm], table=table)
    assert math.isclose(a.item(), b.item(), rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_expert_mse_rejects_out_of_range_groups(value):
    experts, target = torch.randn(6, G, 1), torch.randn(6, 1)
    for table in (None, torch.eye(G)):
        with pytest.raises(ValueError, match=range_error("groups")):
            expert_mse_loss(experts, target, bad_groups(value), table=table)


# ---------------------------------------------------------------------------------------------
# mixture_mse_loss
# ---------------------------------------------------------------------------------------------
def make_mixture(n=7, num_groups=4, out_features=2, dtype=torch.float64, device="cpu"):
    logits = torch.randn(n, num_groups, dtype=dtype, device=device) * 2
    experts, target, _ = make_experts(n, num_groups, out_features, dtype, device)
    return logits, experts, target


@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("scale", [1.0, 0.37, 12.5])
def test_mixture_mse_matches_loop(out_features, scale, device):
    logits, experts, target = make_mixture(out_features=out_features, device=device)
    got = mixture_mse_loss(logits, experts, target, target_unit=scale)
    assert got.shape == () and got.dtype == torch.float64
    ref = ref_mixture_mse(logits.cpu(), experts.cpu(), target.cpu(), scale)
    assert math.isclose(got.item(), ref, rel_tol=1e-12)


def test_mixture_mse_is_the_mse_of_the_soft_prediction():
    # torch built-ins: F.mse_loss of combine_experts(..., "soft"); equal logits mix the
    # experts' mean, and a dominant logit gives the expert MSE of that group.
    logits, experts, target = make_mixture()
    expected = torch.nn.functional.mse_loss(combine_experts(logits, experts, "soft"), target)
    torch.testing.assert_close(mixture_mse_loss(logits, experts, target), expected)
    equal = torch.zeros_like(logits)
    torch.testing.assert_close(
        mixture_mse_loss(equal, experts, target),
        torch.nn.functional.mse_loss(experts.mean(1), target),
    )
    groups = torch.randint(0, 4, (7,))
    one_hot = torch.nn.functional.one_hot(groups, 4).double() * 100.0
    torch.testing.assert_close(
        mixture_mse_loss(one_hot, experts, target), expert_mse_loss(experts, target, groups)
    )


def test_mixture_mse_tensor_scale_equals_float_scale():
    logits, experts, target = make_mixture()
    a = mixture_mse_loss(logits, experts, target, target_unit=2.5)
    b = mixture_mse_loss(logits, experts, target, target_unit=torch.tensor(2.5))
    torch.testing.assert_close(a, b, rtol=1e-15, atol=0)


def test_mixture_mse_gradcheck():
    logits, experts, target = make_mixture(n=5, num_groups=3)
    logits.requires_grad_()
    experts.requires_grad_()
    scale = torch.tensor(1.7, dtype=torch.float64)

    def fn(logits, experts):
        return mixture_mse_loss(logits, experts, target, target_unit=scale)

    assert torch.autograd.gradcheck(fn, (logits, experts))
    assert torch.autograd.gradgradcheck(fn, (logits, experts))


def test_mixture_mse_gradient_reaches_logits_and_every_expert():
    # Unlike the expert MSE, the routing is trained: the logits get a gradient, and so does
    # every expert (each carries a share of the mixture).
    logits, experts, target = make_mixture(n=3, num_groups=4)
    logits.requires_grad_()
    experts.requires_grad_()
    mixture_mse_loss(logits, experts, target).backward()
    assert (logits.grad.abs().sum(1) > 0).all()
    assert (experts.grad.abs().sum(-1) > 0).all()


def test_mixture_mse_empty_batch():
    logits, experts, target = make_mixture(n=0)
    logits.requires_grad_()
    experts.requires_grad_()
    loss = mixture_mse_loss(logits, experts, target)
    assert loss.item() == 0.0  # 0, not the NaN of a mean over nothing
    loss.backward()
    assert logits.grad.shape == logits.shape and experts.grad.shape == experts.shape


def test_mixture_mse_autocast_bf16(device):
    logits, experts, target = make_mixture(dtype=torch.float32, device=device)
    ref = mixture_mse_loss(logits, experts, target)
    logits.requires_grad_()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = mixture_mse_loss(logits.bfloat16(), experts.bfloat16(), target.bfloat16())
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02)
    got.backward()
    assert torch.isfinite(logits.grad).all()


def test_mixture_mse_extreme_values_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-100.0, 100.0, 100.0]], requires_grad=True)
    experts = torch.full((2, 3, 1), 1e15, requires_grad=True)
    target = torch.full((2, 1), -1e15)
    loss = mixture_mse_loss(logits, experts, target, target_unit=1e15)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert torch.isfinite(experts.grad).all()


def test_mixture_mse_compile_fullgraph():
    torch._dynamo.reset()
    logits, experts, target = make_mixture(dtype=torch.float32)
    scale = torch.tensor(1.3, dtype=torch.float64)  # a float64 buffer, as binner.label_std

    def fn(logits, experts, target):
        return mixture_mse_loss(logits, experts, target, target_unit=scale)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits, experts, target), fn(logits, experts, target))


@pytest.mark.parametrize(
    "logits_shape, experts_shape, target_shape, match",
    [
        ((5, 4), (5, 4, 1), (5,), r"expected target of shape \(5, 1\), got \(5,\)"),
        ((5, 4), (5, 4, 2), (5, 1), r"expected target of shape \(5, 2\), got \(5, 1\)"),
        ((5, 4), (5, 4, 1), (6, 1), r"expected target of shape \(5, 1\), got \(6, 1\)"),
        ((5, 3), (5, 4, 1), (5, 1), "expected logits of shape"),
        ((6, 4), (5, 4, 1), (5, 1), "expected logits of shape"),
        ((5, 4), (5, 4), (5, 1), "expected logits of shape"),
        ((5,), (5, 4, 1), (5, 1), "expected logits of shape"),
    ],
)
def test_mixture_mse_bad_shapes(logits_shape, experts_shape, target_shape, match):
    with pytest.raises(ValueError, match=match):
        mixture_mse_loss(
            torch.randn(logits_shape), torch.randn(experts_shape), torch.randn(target_shape)
        )


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_mixture_mse_permutation_invariant(n, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 5, generator=gen, dtype=torch.float64) * 3
    experts = torch.randn(n, 5, 2, generator=gen, dtype=torch.float64)
    target = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    perm = torch.randperm(n, generator=gen)
    a = mixture_mse_loss(logits, experts, target)
    b = mixture_mse_loss(logits[perm], experts[perm], target[perm])
    assert math.isclose(a.item(), b.item(), rel_tol=1e-12, abs_tol=1e-15)


# ---------------------------------------------------------------------------------------------
# The deprecated scale= keyword of expert_mse_loss and mixture_mse_loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["expert", "mixture"])
def test_scale_keyword_is_a_deprecated_alias_of_target_unit(fn):
    experts = torch.randn(5, 3, 2, dtype=torch.float64)
    target = torch.randn(5, 2, dtype=torch.float64)
    if fn == "expert":
        def loss(**kw):
            return expert_mse_loss(experts, target, torch.tensor([0, 1, 2, 1, 0]), **kw)
    else:
        logits = torch.randn(5, 3, dtype=torch.float64)

        def loss(**kw):
            return mixture_mse_loss(logits, experts, target, **kw)
    with pytest.warns(FutureWarning, match="use target_unit"):
        old = loss(scale=2.5)
    assert torch.equal(old, loss(target_unit=2.5))  # the same computation


# ---------------------------------------------------------------------------------------------
# combine_experts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
@pytest.mark.parametrize("adjusted", [False, True])
def test_combine_matches_loop(out_features, inference, adjusted, device):
    logits = torch.randn(9, 5, dtype=torch.float64, device=device) * 3
    experts = torch.randn(9, 5, out_features, dtype=torch.float64, device=device)
    adjustment = torch.randn(5, dtype=torch.float64, device=device) * 2 if adjusted else None
    got = combine_experts(logits, experts, inference, logit_adjustment=adjustment)
    assert got.shape == (9, out_features) and got.dtype == torch.float64
    ref = ref_combine(
        logits.cpu(), experts.cpu(), inference, None if adjustment is None else adjustment.cpu()
    )
    torch.testing.assert_close(got.cpu(), torch.tensor(ref, dtype=torch.float64))


@pytest.mark.parametrize("top_k", [1, 2, 4, 5, 9])
def test_combine_topk_matches_loop_for_every_k(top_k, device):
    logits = torch.randn(7, 5, dtype=torch.float64, device=device) * 2
    experts = torch.randn(7, 5, 2, dtype=torch.float64, device=device)
    got = combine_experts(logits, experts, "topk", top_k=top_k)
    ref = ref_combine(logits.cpu(), experts.cpu(), "topk", top_k=top_k)
    torch.testing.assert_close(got.cpu(), torch.tensor(ref, dtype=torch.float64))


def test_combine_topk_spans_argmax_to_soft():
    logits, experts = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, 1).double()
    assert torch.equal(combine_experts(logits, experts, "topk", top_k=1),
                       combine_experts(logits, experts, "argmax"))
    for k in (4, 10):  # all the groups (or more): the full soft mixture
        assert torch.equal(combine_experts(logits, experts, "topk", top_k=k),
                           combine_experts(logits, experts, "soft"))


def test_combine_gradcheck_topk():
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    experts = torch.randn(4, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z, e: combine_experts(z, e, "topk", top_k=2), (logits, experts)
    )


@pytest.mark.parametrize("top_k", [0, -1, 2.0, True, None])
def test_combine_bad_top_k(top_k):
    with pytest.raises(ValueError, match="expected top_k to be a positive int"):
        combine_experts(torch.randn(2, 3), torch.randn(2, 3, 1), "topk", top_k=top_k)


def test_combine_default_is_soft_and_modes_are_listed():
    logits, experts = torch.randn(4, 3), torch.randn(4, 3, 2)
    assert set(INFERENCE_MODES) == {"argmax", "soft", "topk"}
    assert torch.equal(combine_experts(logits, experts), combine_experts(logits, experts, "soft"))


def test_combine_zero_adjustment_is_identity():
    logits, experts = torch.randn(6, 4), torch.randn(6, 4, 1)
    for mode in INFERENCE_MODES:
        assert torch.equal(
            combine_experts(logits, experts, mode, logit_adjustment=torch.zeros(4)),
            combine_experts(logits, experts, mode),
        )


def test_combine_argmax_returns_an_expert_exactly():
    logits, experts = torch.randn(6, 4), torch.randn(6, 4, 2)
    got = combine_experts(logits, experts, "argmax")
    for i in range(6):
        assert torch.equal(got[i], experts[i, logits[i].argmax()])


def test_combine_soft_equal_logits_is_the_mean():
    experts = torch.randn(5, 4, 2, dtype=torch.float64)
    got = combine_experts(torch.zeros(5, 4, dtype=torch.float64), experts, "soft")
    torch.testing.assert_close(got, experts.mean(1))


def test_combine_extreme_logits_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-100.0, 100.0, 100.0]], requires_grad=True)
    experts = torch.randn(2, 3, 1, requires_grad=True)
    out = combine_experts(logits, experts, "soft")
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()


def test_combine_gradcheck_soft():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    experts = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    adjustment = torch.randn(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda z, e: combine_experts(z, e, "soft", logit_adjustment=adjustment), (logits, experts)
    )


@pytest.mark.parametrize(
    "logits_shape, experts_shape",
    [((4, 3), (4, 3)), ((4,), (4, 3, 1)), ((4, 3), (4, 2, 1)), ((4, 3), (5, 3, 1))],
)
def test_combine_bad_shapes(logits_shape, experts_shape):
    with pytest.raises(ValueError, match="expected logits of shape"):
        combine_experts(torch.randn(logits_shape), torch.randn(experts_shape))


@pytest.mark.parametrize("inference", ["mean", "ARGMAX", None])
def test_combine_bad_inference(inference):
    with pytest.raises(ValueError, match="inference"):
        combine_experts(torch.randn(2, 3), torch.randn(2, 3, 1), inference)


# ---------------------------------------------------------------------------------------------
# select_expert
# ---------------------------------------------------------------------------------------------
def test_select_expert_matches_loop():
    experts = torch.randn(9, 4, 3, dtype=torch.float64)
    groups = torch.tensor([0, 3, 1, 2, 2, 0, 3, 1, 0])
    want = torch.stack([experts[i, groups[i]] for i in range(9)])
    assert torch.equal(select_expert(experts, groups), want)  # a gather copies: exact
    # Out-of-range indices clamp (the unchecked device path).
    assert torch.equal(select_expert(experts, torch.full((9,), 7)), experts[:, 3])
