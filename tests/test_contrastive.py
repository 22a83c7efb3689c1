"""The group contrastive loss (L_grc) against a plain loop written from its definition.

Both kernels are covered: the fused integer-group kernel (integer labels, with ``num_groups``
or with G inferred from the batch) and the sort-based continuous kernel (float labels).
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from _bad_groups import OUT_OF_RANGE, bad_groups, range_error
from _bad_groups import G as RANGE_G
from _battery import Spec, battery
from hypothesis import given, settings
from hypothesis import strategies as st

from dirloss import DescendingSoftLabelLoss, GroupContrastiveLoss, _continuous, _grouped
from dirloss.functional import DEFAULT_TEMPERATURE, group_contrastive_loss

REDUCTIONS = ("none", "mean", "sum")
SIMILARITIES = ("l2", "cosine")
F64 = {"atol": 1e-10, "rtol": 1e-10}


# ---------------------------------------------------------------------------------------------
# Reference: a plain loop written straight from the equation.
#   z = f / ||f||,  s_ik = -||z_i - z_k||_2 / T  ("l2")  or  <z_i, z_k> / T  ("cosine"),
#   d_ik = sum_l |y_il - y_kl|,
#   l_ij = -log( exp(s_ij) / sum_{k != i, d_ik >= d_ij} exp(s_ik) )   for j != i.
# ---------------------------------------------------------------------------------------------
def ref_pair_losses(features, labels, temperature, similarity):
    """``{(i, j): l_ij}`` as float64 0-d tensors (differentiable w.r.t. ``features``)."""
    f = features.to(torch.float64)
    n = f.shape[0]
    y = labels.to(torch.float64).reshape(n, -1)
    z = [f[i] / f[i].norm() for i in range(n)]

    def sim(i, k):
        if similarity == "l2":
            return -(z[i] - z[k]).norm() / temperature
        return (z[i] * z[k]).sum() / temperature

    def dist(i, k):
        return sum(abs(float(y[i, c]) - float(y[k, c])) for c in range(y.shape[1]))

    s = {(i, k): sim(i, k) for i in range(n) for k in range(n) if k != i}
    d = {(i, k): dist(i, k) for i in range(n) for k in range(n) if k != i}
    out = {}
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            denom = sum(torch.exp(s[i, k]) for k in range(n) if k != i and d[i, k] >= d[i, j])
            out[i, j] = -torch.log(torch.exp(s[i, j]) / denom)
    return out


def ref_loss(features, labels, temperature, similarity, reduction):
    n = features.shape[0]
    pairs = ref_pair_losses(features, labels, temperature, similarity)
    zero = torch.zeros((), dtype=torch.float64)
    per_anchor = [
        sum((pairs[i, j] for j in range(n) if j != i), zero) / max(n - 1, 1) for i in range(n)
    ]
    if reduction == "none":
        return torch.stack(per_anchor) if n else torch.zeros(0, dtype=torch.float64)
    if reduction == "sum":
        return sum(per_anchor, zero)
    return sum(pairs.values(), zero) / max(n * (n - 1), 1)  # mean over all ordered pairs


def loss_fn(features, labels, **kw):
    kw.setdefault("temperature", DEFAULT_TEMPERATURE)
    return group_contrastive_loss(features, labels, **kw)


def randn(*shape, dtype=torch.float64, **kw):
    return torch.randn(*shape, dtype=dtype, **kw)


# How the tests reach each kernel with integer group labels: "fused" passes num_groups,
# "inferred" leaves it out (integer labels: G inferred from the batch, same fused kernel),
# "sort" passes the same values as floats (the continuous kernel, never guessed from values).
KERNEL_NAMES = ["fused", "inferred", "sort"]


def kernel_args(kernel, labels):
    """(labels, num_groups) that select ``kernel`` for integer group labels in [0, G)."""
    if kernel == "fused":
        return labels, G
    if kernel == "inferred":
        return labels, None
    return labels.double(), None


# Label sets. Each is (labels, num_groups or None); num_groups selects the fused kernel.
G = 5
INT_LABELS = {
    # group 3 has a single member; groups 0 and G - 1 are both present; group 1 is empty
    "spread": torch.tensor([0, 0, 2, 3, 4, 4, 2, 0, 4]),
    "one_group": torch.tensor([2, 2, 2, 2, 2, 2]),
    "all_singletons": torch.tensor([4, 0, 3, 1, 2]),
    "edges_only": torch.tensor([0, 4, 0, 4, 4, 0, 0]),
}
FLOAT_LABELS = {
    "float_ties": torch.tensor([0.5, 1.5, 0.5, 2.5, 1.5, -0.5, 0.5, 3.5]),  # many equal distances
    "float_distinct": torch.tensor([0.13, -1.7, 2.71, 0.49, 5.3, -0.02, 1.234]),
    "float_column": torch.tensor([[0.25], [1.0], [0.25], [-2.0], [1.75], [1.0]]),  # (N, 1)
    "float_2d": torch.tensor(  # (N, L): L1 distance, with ties
        [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [2.0, -1.0], [0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]]
    ),
}


# ---------------------------------------------------------------------------------------------
# 1. Values against the loop (float64)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("name", list(INT_LABELS))
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_integer_labels_match_loop(kernel, name, temperature, similarity):
    labels = INT_LABELS[name]
    features = randn(labels.shape[0], 4)
    labels_, num_groups = kernel_args(kernel, labels)
    for reduction in REDUCTIONS:
        got = loss_fn(
            features, labels_, num_groups=num_groups, temperature=temperature,
            similarity=similarity, reduction=reduction,
        )
        expected = ref_loss(features, labels, temperature, similarity, reduction)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, **F64)


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("name", list(FLOAT_LABELS))
def test_float_labels_match_loop(name, temperature, similarity):
    labels = FLOAT_LABELS[name].to(torch.float64)
    features = randn(labels.shape[0], 3)
    for reduction in REDUCTIONS:
        got = loss_fn(
            features, labels, temperature=temperature, similarity=similarity, reduction=reduction
        )
        expected = ref_loss(features, labels, temperature, similarity, reduction)
        torch.testing.assert_close(got, expected, **F64)


def test_float32_labels_with_float64_features_match_loop():
    labels = FLOAT_LABELS["float_distinct"]  # float32
    features = randn(labels.shape[0], 3)
    got = loss_fn(features, labels, reduction="none")
    torch.testing.assert_close(got, ref_loss(features, labels, 0.1, "l2", "none"), **F64)


def test_integer_2d_labels_without_num_groups_use_l1_distance():
    labels = torch.tensor([[0, 1], [1, 0], [2, 2], [0, 0], [3, 1], [1, 1]])
    features = randn(6, 3)
    got = loss_fn(features, labels, reduction="none")
    torch.testing.assert_close(got, ref_loss(features, labels, 0.1, "l2", "none"), **F64)


def test_small_temperature_float64_matches_loop():
    labels = INT_LABELS["spread"]
    features = randn(labels.shape[0], 3)
    for labels_, num_groups in (kernel_args(k, labels) for k in KERNEL_NAMES):
        for similarity in SIMILARITIES:
            got = loss_fn(features, labels_, num_groups=num_groups, temperature=0.01,
                          similarity=similarity, reduction="none")
            expected = ref_loss(features, labels, 0.01, similarity, "none")
            torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-10)


def test_reference_pair_losses_are_non_negative():
    # The denominator of l_ij contains j itself (d_ij >= d_ij), so every l_ij >= 0.
    labels = FLOAT_LABELS["float_ties"].double()
    pairs = ref_pair_losses(randn(labels.shape[0], 3), labels, 0.1, "l2")
    assert min(float(v) for v in pairs.values()) >= 0.0


@pytest.mark.parametrize("name", list(INT_LABELS))
def test_column_and_float_forms_of_group_labels_agree(name):
    labels = INT_LABELS[name]
    features = randn(labels.shape[0], 4)
    fused = loss_fn(features, labels, num_groups=G, reduction="none")
    torch.testing.assert_close(
        loss_fn(features, labels[:, None], num_groups=G, reduction="none"), fused, **F64
    )
    torch.testing.assert_close(loss_fn(features, labels.double(), reduction="none"), fused, **F64)
    torch.testing.assert_close(
        loss_fn(features, labels.int(), num_groups=G, reduction="none"), fused, **F64
    )


# ---------------------------------------------------------------------------------------------
# 2. Gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_gradcheck_fused(similarity, reduction):
    features = randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 3, 0, 1])
    fn = lambda f: loss_fn(  # noqa: E731
        f, labels, num_groups=4, similarity=similarity, temperature=0.5, reduction=reduction
    )
    assert torch.autograd.gradcheck(fn, (features,))


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_gradcheck_fused_chunked(similarity):
    features = randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 3, 0, 1])
    fn = lambda f: loss_fn(  # noqa: E731
        f, labels, num_groups=4, similarity=similarity, temperature=0.5, reduction="none",
        chunk_size=4,
    )
    assert torch.autograd.gradcheck(fn, (features,))


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_gradcheck_float_labels(similarity):
    features = randn(6, 3, requires_grad=True)
    labels = torch.tensor([0.5, 1.5, 0.5, -1.0, 2.25, 1.5], dtype=torch.float64)
    for reduction in ("mean", "none"):
        kw = {"similarity": similarity, "temperature": 0.5, "reduction": reduction}
        assert torch.autograd.gradcheck(lambda f, kw=kw: loss_fn(f, labels, **kw), (features,))


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_gradient_matches_autograd_through_loop(kernel, reduction, similarity):
    labels = torch.tensor([0, 0, 2, 3, 4, 4, 2, 1])
    weight = randn(labels.shape[0])  # a non-uniform upstream gradient for "none"
    features = randn(labels.shape[0], 3, requires_grad=True)
    labels_, num_groups = kernel_args(kernel, labels)
    got = loss_fn(features, labels_, num_groups=num_groups, temperature=0.2,
                  similarity=similarity, reduction=reduction)
    (g_got,) = torch.autograd.grad((got * weight).sum() if got.dim() else got, features)
    ref_features = features.detach().clone().requires_grad_()
    expected = ref_loss(ref_features, labels, 0.2, similarity, reduction)
    (g_exp,) = torch.autograd.grad(
        (expected * weight).sum() if expected.dim() else expected, ref_features
    )
    torch.testing.assert_close(g_got, g_exp, atol=1e-9, rtol=1e-8)


# Both kernels' forwards run in linear space when e^{-2/T} is a normal float of the working
# dtype and in log space below that temperature: both must give the same loss and gradients
# wherever both are exact (forcing the log path by emptying the linear range). The fused
# kernel on groups (chunked or not); the continuous one on runs of equal distance, with ties
# on both sides of an anchor and (N, L) labels.
LINEAR_VS_LOG = {
    "groups": (INT_LABELS["spread"], {"num_groups": G}),
    "groups_chunked": (INT_LABELS["spread"], {"num_groups": G, "chunk_size": 3}),
    **{name: (FLOAT_LABELS[name].double(), {})
       for name in ("float_ties", "float_distinct", "float_2d")},
}


@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("case", list(LINEAR_VS_LOG))
def test_linear_and_log_space_forwards_agree(monkeypatch, case, similarity, temperature):
    labels, kw = LINEAR_VS_LOG[case]
    features = randn(labels.shape[0], 4, requires_grad=True)
    weight = randn(labels.shape[0])
    kw = {**kw, "temperature": temperature, "similarity": similarity, "reduction": "none"}
    linear = loss_fn(features, labels, **kw)
    (g_linear,) = torch.autograd.grad((linear * weight).sum(), features)
    monkeypatch.setitem(_grouped._LINEAR_LOGIT_RANGE, torch.float64, 0.0)
    log_space = loss_fn(features, labels, **kw)
    (g_log,) = torch.autograd.grad((log_space * weight).sum(), features)
    torch.testing.assert_close(linear, log_space, **F64)
    torch.testing.assert_close(g_linear, g_log, **F64)
    torch.testing.assert_close(linear, ref_loss(features, labels, temperature, similarity,
                                                "none"), **F64)


# Duplicated samples: the squared distance between them is clamped at eps, where the
# gradient of the distance is 0 (as autograd through the loop gives at a zero difference);
# only the clamped pairs are cut off, the other pairs of those samples still count.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_duplicate_samples_gradient_matches_loop(kernel, dtype):
    base = randn(5, 3)
    features = torch.cat([base, base[:2]]).to(dtype).requires_grad_()  # rows 5, 6 = rows 0, 1
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 3])
    labels_, num_groups = kernel_args(kernel, labels)
    got = loss_fn(features, labels_, num_groups=num_groups, temperature=0.2)
    (g_got,) = torch.autograd.grad(got, features)
    ref_features = features.detach().double().requires_grad_()
    (g_exp,) = torch.autograd.grad(ref_loss(ref_features, labels, 0.2, "l2", "mean"),
                                   ref_features)
    # The clamped pair's similarity is -sqrt(eps) / T instead of 0: e^s is off by ~0.2% in
    # float32 (both kernels alike), ~1e-8 in float64.
    tol = {"atol": 1e-4, "rtol": 5e-3} if dtype == torch.float32 else {"atol": 1e-6, "rtol": 1e-6}
    torch.testing.assert_close(g_got.double(), g_exp, **tol)


# A zero feature row (a dead ReLU layer): normalisation clamps its norm at 1e-12, and the
# fused kernel's own normalisation backward must equal autograd through F.normalize (the
# sort kernel's path), also there.
def test_zero_feature_row_matches_autograd_normalisation():
    features = randn(6, 3)
    features[2] = 0.0
    features.requires_grad_()
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    grads = []
    for labels_, num_groups in ((labels, 3), (labels.double(), None)):
        loss = loss_fn(features, labels_, num_groups=num_groups, similarity="cosine")
        grads.append(torch.autograd.grad(loss, features)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=1e-9)
    assert grads[0][2].abs().max() > 0  # the row does get a gradient


# The (G, G) level tables are cached per (G, dtype, device); a first call under
# torch.inference_mode must not leave inference tensors behind for later training steps.
def test_level_tables_built_under_inference_mode_serve_training():
    num_groups = 23  # a G no other test uses, so this call builds the tables
    features = randn(9, 4, requires_grad=True)
    labels = torch.tensor([0, 5, 22, 7, 7, 13, 0, 21, 2])
    with torch.inference_mode():
        first = loss_fn(features.detach(), labels, num_groups=num_groups)
    loss = loss_fn(features, labels, num_groups=num_groups)
    loss.backward()
    torch.testing.assert_close(loss.detach(), first, **F64)
    torch.testing.assert_close(loss.detach(), ref_loss(features.detach(), labels, 0.1, "l2",
                                                       "mean"), **F64)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 100])
def test_chunked_fused_kernel_matches_unchunked(chunk_size):
    labels = torch.tensor([0, 0, 2, 3, 4, 4, 2, 1])
    features = randn(8, 3, requires_grad=True)
    weight = randn(8)
    full = loss_fn(features, labels, num_groups=G, reduction="none")
    (g_full,) = torch.autograd.grad((full * weight).sum(), features)
    chunked = loss_fn(features, labels, num_groups=G, reduction="none", chunk_size=chunk_size)
    (g_chunk,) = torch.autograd.grad((chunked * weight).sum(), features)
    torch.testing.assert_close(chunked, full, **F64)
    torch.testing.assert_close(g_chunk, g_full, **F64)


# The continuous kernel runs in row blocks of _CONTINUOUS_BLOCK pair entries; forced down to a
# few rows a block, it must give the same losses and gradients (ties across block borders).
@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("name", ["float_ties", "float_2d"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_blocked_continuous_kernel_matches_one_block(monkeypatch, similarity, name, rows):
    labels = FLOAT_LABELS[name].double()
    n = labels.shape[0]
    features = randn(n, 4, requires_grad=True)
    weight = randn(n)
    kw = {"similarity": similarity, "temperature": 0.2, "reduction": "none"}
    whole = loss_fn(features, labels, **kw)
    (g_whole,) = torch.autograd.grad((whole * weight).sum(), features)
    monkeypatch.setattr(_continuous, "_CONTINUOUS_BLOCK", rows * n)
    blocked = loss_fn(features, labels, **kw)
    (g_blocked,) = torch.autograd.grad((blocked * weight).sum(), features)
    torch.testing.assert_close(blocked, whole, **F64)
    torch.testing.assert_close(g_blocked, g_whole, **F64)


# Anchors that are a slice of the contrast set (a rank's rows under DDP), in blocks: the
# values and the gradient (to anchors and contrast samples alike) of the loop.
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_continuous_kernel_with_offset_anchors_matches_loop(monkeypatch, similarity):
    labels = FLOAT_LABELS["float_ties"].double()[:, None]
    n, offset, n_anchors = labels.shape[0], 2, 5
    features = randn(n, 3, requires_grad=True)
    weight = randn(n_anchors)
    monkeypatch.setattr(_continuous, "_CONTINUOUS_BLOCK", 2 * n)  # blocks of 2 rows
    got = _continuous.continuous(features, labels, offset, n_anchors, similarity, 0.3)
    (g_got,) = torch.autograd.grad((got * weight).sum(), features)
    ref_features = features.detach().clone().requires_grad_()
    expected = ref_loss(ref_features, labels, 0.3, similarity, "none")[offset:offset + n_anchors]
    (g_exp,) = torch.autograd.grad((expected * weight).sum(), ref_features)
    torch.testing.assert_close(got, expected.detach(), **F64)
    torch.testing.assert_close(g_got, g_exp, atol=1e-9, rtol=1e-8)


def test_continuous_kernel_backward_twice_with_retain_graph():
    # backward reads the saved gradient table without changing it
    features = randn(7, 3, requires_grad=True)
    loss = loss_fn(features, FLOAT_LABELS["float_distinct"].double())
    (first,) = torch.autograd.grad(loss, features, retain_graph=True)
    (second,) = torch.autograd.grad(loss, features)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# 3. Argument checks (module == function and the reductions: TestBattery at the end)
# ---------------------------------------------------------------------------------------------
def test_float32_features_give_float32_loss():
    labels = INT_LABELS["spread"]
    features = torch.randn(labels.shape[0], 4)
    for labels_, num_groups in (kernel_args(k, labels) for k in KERNEL_NAMES):
        loss = loss_fn(features, labels_, num_groups=num_groups)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(
            loss.double(), ref_loss(features.double(), labels, 0.1, "l2", "mean"),
            atol=1e-5, rtol=1e-5,
        )


@pytest.mark.parametrize("temperature", [0, 0.0, -1, -0.1, float("nan"), float("inf"), "0.1",
                                         None, True])
def test_bad_temperature_raises(temperature):
    features, labels = randn(4, 3), torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(features, labels, num_groups=2, temperature=temperature)
    with pytest.raises(ValueError, match="expected"):
        GroupContrastiveLoss(num_groups=2, temperature=temperature)


@pytest.mark.parametrize("similarity", ["dot", "L2", "euclidean", "", None])
def test_bad_similarity_raises(similarity):
    features, labels = randn(4, 3), torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(features, labels, num_groups=2, similarity=similarity)
    with pytest.raises(ValueError, match="expected"):
        GroupContrastiveLoss(similarity=similarity)


@pytest.mark.parametrize("num_groups", [0, 1, -3, 2.0, True])
def test_bad_num_groups_raises(num_groups):
    features, labels = randn(4, 3), torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(features, labels, num_groups=num_groups)
    with pytest.raises(ValueError, match="expected"):
        GroupContrastiveLoss(num_groups=num_groups)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.0, True])
def test_bad_chunk_size_raises(chunk_size):
    features, labels = randn(4, 3), torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(features, labels, num_groups=2, chunk_size=chunk_size)
    with pytest.raises(ValueError, match="expected"):
        GroupContrastiveLoss(num_groups=2, chunk_size=chunk_size)


def test_chunk_size_with_float_labels_raises():
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(randn(4, 3), randn(4), chunk_size=2)


@pytest.mark.parametrize(
    "features, labels, num_groups",
    [
        (randn(4), torch.tensor([0, 1, 1, 0]), 2),  # features 1-D
        (randn(4, 3, 2), torch.tensor([0, 1, 1, 0]), 2),  # features 3-D
        (randn(4, 3), torch.tensor([0, 1, 1]), 2),  # labels too short
        (randn(4, 3), torch.tensor([0, 1, 1, 0, 1]), 2),  # labels too long
        (randn(4, 3), randn(5), None),  # float labels too long
        (randn(4, 3), torch.tensor(1), 2),  # 0-d labels
        (randn(4, 3), torch.zeros(4, 1, 1, dtype=torch.long), 2),  # 3-D labels
        (randn(4, 3), torch.zeros(4, 2, dtype=torch.long), 2),  # (N, 2) group labels
        (randn(4, 3), torch.zeros(2, 2, dtype=torch.long), 2),  # (N,) reshaped wrongly
        (torch.ones(4, 3, dtype=torch.long), torch.tensor([0, 1, 1, 0]), 2),  # integer features
        (torch.ones(4, 3, dtype=torch.long), randn(4), None),  # integer features, float labels
        (torch.ones(4, 3, dtype=torch.bool), torch.tensor([0, 1, 1, 0]), 2),  # bool features
    ],
    ids=["features_1d", "features_3d", "labels_short", "labels_long", "float_labels_long",
         "labels_0d", "labels_3d", "group_labels_2_cols", "labels_2x2", "int_features",
         "int_features_float_labels", "bool_features"],
)
def test_bad_shapes_and_dtypes_raise(features, labels, num_groups):
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(features, labels, num_groups=num_groups)
    with pytest.raises(ValueError, match="expected"):
        GroupContrastiveLoss(num_groups=num_groups)(features, labels)


def test_shape_error_names_the_shapes():
    with pytest.raises(ValueError, match=re.escape("(4, 3)")):
        group_contrastive_loss(randn(4, 3), torch.tensor([0, 1, 1]), num_groups=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_labels_on_another_device_raise():
    features, labels = randn(4, 3), torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(features.cuda(), labels, num_groups=2)
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(features, labels.cuda(), num_groups=2)
    with pytest.raises(ValueError, match="expected"):
        group_contrastive_loss(features.cuda(), labels.double())


def test_module_has_empty_state_dict_and_repr():
    module = GroupContrastiveLoss(num_groups=3, temperature=0.2, similarity="cosine")
    assert module.state_dict() == {}
    GroupContrastiveLoss(num_groups=3).load_state_dict(module.state_dict())
    assert "num_groups=3" in repr(module) and "'cosine'" in repr(module)


# ---------------------------------------------------------------------------------------------
# 4. Degenerate batches
# ---------------------------------------------------------------------------------------------
KERNELS = [({"num_groups": 3}, torch.long), ({}, torch.long), ({}, torch.float64)]
KERNEL_IDS = ["fused", "inferred", "sort"]


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw, label_dtype", KERNELS, ids=KERNEL_IDS)
def test_batch_of_one_is_zero_with_gradient(kw, label_dtype, reduction, similarity):
    features = randn(1, 4, requires_grad=True)
    loss = loss_fn(features, torch.tensor([1], dtype=label_dtype), similarity=similarity,
                   reduction=reduction, **kw)
    assert loss.shape == ((1,) if reduction == "none" else ())
    assert (loss == 0).all() and loss.requires_grad
    loss.sum().backward()
    assert features.grad is not None
    assert torch.isfinite(features.grad).all() and (features.grad == 0).all()


# An empty batch (N = 0) gives a finite 0 that stays in the graph (STYLE 8), for both kernels.
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw, label_dtype", KERNELS, ids=KERNEL_IDS)
def test_empty_batch_is_zero_without_nan(kw, label_dtype, reduction):
    features = randn(0, 4, requires_grad=True)
    loss = loss_fn(features, torch.zeros(0, dtype=label_dtype), reduction=reduction, **kw)
    assert loss.shape == ((0,) if reduction == "none" else ())
    assert not loss.isnan().any() and (loss == 0).all()
    loss.sum().backward()
    assert features.grad is not None and features.grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("kw, label_dtype", KERNELS, ids=KERNEL_IDS)
def test_identical_features_are_finite(kw, label_dtype, similarity, dtype):
    features = torch.tensor([0.3, -1.2, 2.0], dtype=dtype).repeat(6, 1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 0, 1, 2], dtype=label_dtype)
    loss = loss_fn(features, labels, similarity=similarity, **kw)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
    # every similarity is equal, so l_ij = log |{k : d_ik >= d_ij}|
    n = 6
    d = [[abs(i % 3 - k % 3) for k in range(n)] for i in range(n)]
    expected = sum(
        math.log(sum(1 for k in range(n) if k != i and d[i][k] >= d[i][j]))
        for i in range(n) for j in range(n) if j != i
    ) / (n * (n - 1))
    tol = 1e-6 if dtype == torch.float32 else 1e-7  # l2 similarity floors the distance
    assert abs(loss.item() - expected) < tol


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("kw, label_dtype", KERNELS, ids=KERNEL_IDS)
def test_feature_scale_does_not_matter(kw, label_dtype, similarity):
    base = torch.randn(7, 4)
    labels = torch.tensor([0, 1, 2, 2, 0, 1, 1], dtype=label_dtype)
    ref = loss_fn(base, labels, similarity=similarity, **kw)
    for scale in (1e-6, 1e6):
        features = (base * scale).requires_grad_()
        loss = loss_fn(features, labels, similarity=similarity, **kw)
        loss.backward()
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
        assert torch.isfinite(features.grad).all()


# Three samples where the label-farthest partner is also the feature-farthest: for anchor 0
# the pair (0, 2) has the denominator {2} alone, so l_02 = 0 exactly, while the row max over
# k != 0 (sample 1) sits 2 / T logits above s_02.
ADVERSARIAL = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0]])
ADVERSARIAL_LABELS = torch.tensor([0, 1, 2])


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("kw, label_dtype", KERNELS, ids=KERNEL_IDS)
def test_tiny_temperature_random_features_are_finite(kw, label_dtype, similarity):
    features = torch.randn(10, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 2, 0, 1, 1, 0, 2, 2], dtype=label_dtype)
    loss = loss_fn(features, labels, similarity=similarity, temperature=0.01, **kw)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()


# float32 with T <= ~0.02 (a logit range 2 / T above ~87): a denominator whose whole set
# {k : d_ik >= d_ij} lies ~100 logits below the row max must not underflow. A row-max shift
# alone gave l_02 = 112.7 instead of 0 here at T = 0.01 (and NaN gradients); the kernels work
# in log space (per-group max, reverse logcumsumexp) to stay exact.
@pytest.mark.parametrize("temperature", [0.02, 0.01])
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("kw, label_dtype", KERNELS, ids=KERNEL_IDS)
def test_tiny_temperature_float32_is_accurate_and_finite(kw, label_dtype, similarity,
                                                         temperature):
    features = ADVERSARIAL.clone().requires_grad_()
    labels = ADVERSARIAL_LABELS.to(label_dtype)
    got = loss_fn(features, labels, similarity=similarity, temperature=temperature,
                  reduction="none", **kw)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(features.grad).all()
    expected = ref_loss(ADVERSARIAL.double(), labels, temperature, similarity, "none")
    torch.testing.assert_close(got.double(), expected, atol=1e-3, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 7. Out-of-range group labels raise (on CPU tensors)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_out_of_range_group_labels_raise_on_cpu(similarity):
    # Once clamped silently; a CPU check costs no sync (tests/test_validation.py has the rest).
    labels = torch.tensor([-3, 0, 2, 4, 7, -1, 5, 1])
    features = randn(8, 3)
    with pytest.raises(ValueError, match=rf"expected labels in \[0, {G}\).* got 4 of 8"):
        loss_fn(features, labels, num_groups=G, similarity=similarity, reduction="none")


# ---------------------------------------------------------------------------------------------
# 5. Properties
# ---------------------------------------------------------------------------------------------
def case(seed, n, dim=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, dtype=torch.float64, generator=gen)


group_lists = st.lists(st.integers(0, G - 1), min_size=1, max_size=9)
quarter_lists = st.lists(st.integers(-12, 12).map(lambda v: v / 4), min_size=1, max_size=9)
seeds = st.integers(0, 2**31 - 1)
PROPERTY = settings(max_examples=30, deadline=None)


@PROPERTY
@given(groups=group_lists, seed=seeds, similarity=st.sampled_from(SIMILARITIES),
       kernel=st.sampled_from(KERNEL_NAMES), data=st.data())
def test_permutation_invariance(groups, seed, similarity, kernel, data):
    n = len(groups)
    features = case(seed, n)
    labels, num_groups = kernel_args(kernel, torch.tensor(groups))
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    kw = {"num_groups": num_groups, "similarity": similarity}
    per_anchor = loss_fn(features, labels, reduction="none", **kw)
    permuted = loss_fn(features[perm], labels[perm], reduction="none", **kw)
    torch.testing.assert_close(permuted, per_anchor[perm], **F64)
    torch.testing.assert_close(
        loss_fn(features[perm], labels[perm], **kw), loss_fn(features, labels, **kw), **F64
    )


@PROPERTY
@given(groups=group_lists, seed=seeds, similarity=st.sampled_from(SIMILARITIES), data=st.data())
def test_group_shift_invariance(groups, seed, similarity, data):
    labels = torch.tensor(groups)
    shift = data.draw(st.integers(-int(labels.min()), G - 1 - int(labels.max())))
    features = case(seed, len(groups))
    kw = {"num_groups": G, "similarity": similarity, "reduction": "none"}
    torch.testing.assert_close(
        loss_fn(features, labels + shift, **kw), loss_fn(features, labels, **kw), **F64
    )


@PROPERTY
@given(values=quarter_lists, seed=seeds, shift=st.integers(-40, 40).map(lambda v: v / 4),
       column=st.booleans())
def test_float_label_shift_invariance(values, seed, shift, column):
    # quarter-integers and quarter-integer shifts are exact in float64: ties are kept exactly
    labels = torch.tensor(values, dtype=torch.float64)
    if column:
        labels = labels[:, None]
    features = case(seed, len(values))
    torch.testing.assert_close(
        loss_fn(features, labels + shift, reduction="none"),
        loss_fn(features, labels, reduction="none"),
        **F64,
    )


@PROPERTY
@given(groups=group_lists, seed=seeds, similarity=st.sampled_from(SIMILARITIES),
       temperature=st.sampled_from([0.01, 0.1, 1.0]), dim=st.integers(1, 4))
def test_per_anchor_loss_is_non_negative(groups, seed, similarity, temperature, dim):
    # Each l_ij >= 0 because its denominator contains exp(s_ij) itself; so does every mean.
    features = case(seed, len(groups), dim)
    for labels, num_groups in (kernel_args(k, torch.tensor(groups)) for k in KERNEL_NAMES):
        per_anchor = loss_fn(features, labels, num_groups=num_groups, similarity=similarity,
                             temperature=temperature, reduction="none")
        assert (per_anchor >= -1e-12).all()


@PROPERTY
@given(groups=group_lists, seed=seeds, similarity=st.sampled_from(SIMILARITIES),
       temperature=st.sampled_from([0.05, 0.1, 1.0]), chunk=st.sampled_from([None, 1, 2, 5]))
def test_fused_kernel_equals_sort_kernel(groups, seed, similarity, temperature, chunk):
    features = case(seed, len(groups)).requires_grad_()
    labels = torch.tensor(groups)
    kw = {"similarity": similarity, "temperature": temperature, "reduction": "none"}
    fused = loss_fn(features, labels, num_groups=G, chunk_size=chunk, **kw)
    inferred = loss_fn(features, labels, **kw)  # G inferred: the fused kernel again
    sort = loss_fn(features, labels.double(), **kw)  # float labels: the continuous kernel
    torch.testing.assert_close(fused, sort, **F64)
    torch.testing.assert_close(inferred, sort, **F64)
    weight = torch.arange(1.0, len(groups) + 1, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad((fused * weight).sum(), features)
    (g_inferred,) = torch.autograd.grad((inferred * weight).sum(), features)
    (g_sort,) = torch.autograd.grad((sort * weight).sum(), features)
    torch.testing.assert_close(g_fused, g_sort, atol=1e-9, rtol=1e-8)
    torch.testing.assert_close(g_inferred, g_sort, atol=1e-9, rtol=1e-8)


# ---------------------------------------------------------------------------------------------
# 6. torch.compile (the module's compile and autocast checks: TestBattery at the end)
# ---------------------------------------------------------------------------------------------
def _compile_case(num_groups, backend, real_labels=True):
    """Compiled (fullgraph) against eager: values and gradients. Without ``num_groups`` the
    labels are real values, or, with ``real_labels=False``, integer groups."""
    torch._dynamo.reset()
    module = GroupContrastiveLoss(num_groups=num_groups, temperature=0.2)
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    labels = torch.tensor([0, 1, 2, 2, 0, 3, 1, 3])
    if num_groups is None and real_labels:
        labels = labels.float() * 0.5
    features = torch.randn(8, 5, requires_grad=True)
    eager = module(features, labels)
    (g_eager,) = torch.autograd.grad(eager, features)
    got = compiled(features, labels)
    (g_got,) = torch.autograd.grad(got, features)
    torch.testing.assert_close(got, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_got, g_eager, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 8. CUDA
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_cuda_matches_cpu(device, similarity):
    if device.type != "cuda":
        pytest.skip("CUDA-only comparison")
    labels = torch.tensor([0, 0, 2, 3, 4, 4, 2, 1, 3, 0])
    features = randn(10, 6, requires_grad=True)
    for num_groups, y in ((G, labels), (None, labels), (None, labels.double() * 0.5)):
        cpu = loss_fn(features, y, num_groups=num_groups, similarity=similarity,
                      reduction="none")
        (g_cpu,) = torch.autograd.grad(cpu.sum(), features)
        features_dev = features.detach().to(device).requires_grad_()
        dev = loss_fn(features_dev, y.to(device), num_groups=num_groups,
                      similarity=similarity, reduction="none")
        (g_dev,) = torch.autograd.grad(dev.sum(), features_dev)
        assert dev.device.type == "cuda"
        torch.testing.assert_close(dev.cpu(), cpu, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(g_dev.cpu(), g_cpu, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_cuda_fused_kernel_has_no_host_sync(device, similarity, chunk_size):
    if device.type != "cuda":
        pytest.skip("CUDA-only check")
    features = torch.randn(64, 16, device=device, requires_grad=True)
    labels = torch.randint(-1, G + 1, (64,), device=device)  # out-of-range labels clamp
    module = GroupContrastiveLoss(num_groups=G, similarity=similarity, chunk_size=chunk_size)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = module(features, labels)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item() and torch.isfinite(features.grad).all().item()


# ---------------------------------------------------------------------------------------------
# 9. Integer labels without num_groups: G inferred from the batch (one host read)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def kernel_calls(monkeypatch):
    """The kernels each call ran: ("grouped", G) or ("continuous", None), in order."""
    calls = []
    grouped, continuous = _grouped.grouped, _continuous.continuous

    def spy_grouped(x_c, y_c, offset, n_anchors, num_groups, *args, **kw):
        calls.append(("grouped", num_groups))
        return grouped(x_c, y_c, offset, n_anchors, num_groups, *args, **kw)

    def spy_continuous(*args, **kw):
        calls.append(("continuous", None))
        return continuous(*args, **kw)

    monkeypatch.setattr(_grouped, "grouped", spy_grouped)
    monkeypatch.setattr(_continuous, "continuous", spy_continuous)
    return calls


INFERRED_LABELS = {
    **INT_LABELS,
    "offset": torch.tensor([3, 5, 3, 7, 4, 7, 5, 6]),  # min 3: G = 5 after the shift
    "negative": torch.tensor([-2, 0, -1, 1, -2, 3, 0]),  # only differences matter
    "column": INT_LABELS["spread"][:, None],  # (N, 1)
    "int32": INT_LABELS["spread"].int(),
    "uint8": INT_LABELS["edges_only"].to(torch.uint8),
}


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("name", list(INFERRED_LABELS))
def test_inferred_groups_equal_explicit_num_groups_and_float_labels(name, similarity,
                                                                    kernel_calls):
    """Integer labels without num_groups run the fused kernel with G = max - min + 1 and give
    the loss and gradients of num_groups = max + 1 (on labels - min where min < 0) and of the
    continuous kernel on the same values as floats."""
    labels = INFERRED_LABELS[name]
    flat = labels.reshape(-1).long()
    low, high = int(flat.min()), int(flat.max())
    explicit_labels = labels if low >= 0 else labels - low
    features = randn(labels.shape[0], 4, requires_grad=True)
    weight = randn(labels.shape[0])
    kw = {"similarity": similarity, "temperature": 0.2, "reduction": "none"}
    results = []
    for labels_, num_groups in (
        (labels, None),
        (explicit_labels, max(high - min(low, 0) + 1, 2)),
        (labels.double(), None),
    ):
        loss = loss_fn(features, labels_, num_groups=num_groups, **kw)
        (grad,) = torch.autograd.grad((loss * weight).sum(), features)
        results.append((loss, grad))
    assert kernel_calls == [
        ("grouped", max(high - low + 1, 2)),
        ("grouped", max(high - min(low, 0) + 1, 2)),
        ("continuous", None),
    ]
    (inferred, g_inferred), (explicit, g_explicit), (sort, g_sort) = results
    torch.testing.assert_close(inferred, explicit, **F64)
    torch.testing.assert_close(g_inferred, g_explicit, **F64)
    torch.testing.assert_close(inferred, sort, **F64)
    torch.testing.assert_close(g_inferred, g_sort, atol=1e-9, rtol=1e-8)
    torch.testing.assert_close(inferred, ref_loss(features.detach(), labels, 0.2, similarity,
                                                  "none"), **F64)


@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0, 2.0]),  # floats holding whole numbers
        torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.0], [2.0]], dtype=torch.float64),
        torch.tensor([[0, 1], [1, 0], [2, 2], [0, 0], [3, 1], [1, 1]]),  # (N, L): L1 distance
        torch.tensor([True, False, True, True, False, False]),
        torch.tensor([0, 500, 3, 129, 3, 0]),  # a span over _MAX_INFERRED_GROUPS
    ],
    ids=["float_whole", "float64_column", "int_2d", "bool", "wide_span"],
)
def test_labels_that_stay_on_the_continuous_kernel(labels, kernel_calls):
    features = randn(labels.shape[0], 3)
    got = loss_fn(features, labels, reduction="none")
    assert kernel_calls == [("continuous", None)]
    torch.testing.assert_close(got, ref_loss(features, labels, 0.1, "l2", "none"), **F64)


def test_wide_span_limit_is_inclusive(kernel_calls):
    from dirloss._contrastive import _MAX_INFERRED_GROUPS

    labels = torch.tensor([5, 5 + _MAX_INFERRED_GROUPS - 1, 40, 5])
    loss_fn(randn(4, 3), labels)
    loss_fn(randn(4, 3), labels + torch.tensor([0, 1, 0, 0]))
    assert kernel_calls == [("grouped", _MAX_INFERRED_GROUPS), ("continuous", None)]


def test_negative_labels_raise_with_num_groups_and_shift_without(kernel_calls):
    labels = torch.tensor([-1, 0, 2, 1, -1, 2])
    features = randn(6, 3)
    with pytest.raises(ValueError, match=r"expected labels in \[0, 4\).* got 2 of 6"):
        loss_fn(features, labels, num_groups=4)
    torch.testing.assert_close(
        loss_fn(features, labels, reduction="none"),
        loss_fn(features, labels + 1, num_groups=4, reduction="none"), **F64,
    )
    assert kernel_calls == [("grouped", 4), ("grouped", 4)]


def test_inferred_groups_keep_chunk_size_tied_to_num_groups():
    # chunk_size still needs num_groups: without it a traced call (or a wide span) would run
    # the continuous kernel, which is not chunked.
    with pytest.raises(ValueError, match="num_groups when chunk_size is set"):
        loss_fn(randn(4, 3), torch.tensor([0, 1, 1, 0]), chunk_size=2)
    with pytest.raises(ValueError, match="num_groups when chunk_size is set"):
        GroupContrastiveLoss(chunk_size=2)


def test_module_without_num_groups_equals_num_groups_max_plus_one():
    labels = torch.tensor([0, 3, 1, 1, 6, 2, 0, 6, 5])
    features = randn(9, 8)
    torch.testing.assert_close(
        GroupContrastiveLoss()(features, labels),
        GroupContrastiveLoss(num_groups=7)(features, labels), **F64,
    )


# Under torch.compile the host read would break fullgraph=True: a traced call keeps the
# continuous kernel (the same loss), so the compiled module matches the eager fused one.
@pytest.mark.parametrize(
    "backend",
    ["aot_eager", pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.inductor])],
)
def test_compile_fullgraph_integer_labels_without_num_groups(backend):
    _compile_case(None, backend, real_labels=False)


def test_inferred_groups_read_the_host_once(device):
    if device.type != "cuda":
        pytest.skip("CUDA-only check (a CPU read is not a device sync)")
    features = torch.randn(64, 16, device=device, requires_grad=True)
    labels = torch.randint(0, G, (64,), device=device)
    module = GroupContrastiveLoss()
    module(features, labels).backward()  # warm-up: level tables cached
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            loss = module(features, labels)
            loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len([w for w in record if "synchroniz" in str(w.message)]) == 1
    assert torch.isfinite(loss).item()


# The kernels' backward is analytic and not itself differentiable: a second derivative must
# fail loudly (once_differentiable), not come out silently wrong.
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_double_backward_raises(kernel):
    labels, num_groups = kernel_args(kernel, INT_LABELS["spread"])
    features = randn(labels.shape[0], 3, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_fn(features, labels, num_groups=num_groups), features,
                                  create_graph=True)
    with pytest.raises(RuntimeError):
        grad.square().sum().backward()


# The span limit grows with the batch (the group kernel's tables grow as N G^2, the sort as
# N^2 log N): max(128, 8 sqrt(N)), 256 at N = 1024.
def test_wide_span_limit_grows_with_the_batch(kernel_calls):
    from dirloss._contrastive import _max_inferred_groups

    assert _max_inferred_groups(4) == _max_inferred_groups(256) == 128
    assert _max_inferred_groups(1024) == 256 and _max_inferred_groups(4096) == 512
    labels = torch.arange(1024) % 256
    features = randn(1024, 2, dtype=torch.float32)
    loss_fn(features, labels)
    loss_fn(features, labels + (torch.arange(1024) == 7).long() * 256)  # span 264
    assert kernel_calls == [("grouped", 256), ("continuous", None)]


# The group kernel's cached tables are O(G^2): labels spanning hundreds of values (the
# inferred-groups limit reaches 512 at N = 4096) must not build a G^3 table.
def test_group_tables_grow_as_g_squared():
    g = 512
    levels = _grouped._Levels(g, torch.float32, torch.device("cpu"))
    sizes = {k: v.numel() for k, v in vars(levels).items() if isinstance(v, torch.Tensor)}
    assert max(sizes.values()) <= 3 * g * g, sizes


# ---------------------------------------------------------------------------------------------
# Group index >= G or < 0 (G = RANGE_G = 4 here)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("validate", [False, True])
def test_contrastive_rejects_out_of_range_groups(value, validate):
    features = torch.randn(6, 3)
    for loss_fn in (
        GroupContrastiveLoss(RANGE_G, validate=validate), GroupContrastiveLoss(num_groups=RANGE_G)
    ):
        with pytest.raises(ValueError, match=range_error("labels")):
            loss_fn(features, bad_groups(value))
        with pytest.raises(ValueError, match=range_error("labels")):
            loss_fn(features, bad_groups(value)[:, None])  # (N, 1) too
    with pytest.raises(ValueError, match=range_error("labels")):
        group_contrastive_loss(features, bad_groups(value), num_groups=RANGE_G)
    with pytest.raises(ValueError, match=range_error("labels")):
        group_contrastive_loss(features, bad_groups(value), num_groups=RANGE_G, chunk_size=2)
    # Real-valued labels (Rank-N-Contrast) have no range: negative floats are fine.
    assert torch.isfinite(GroupContrastiveLoss()(features, bad_groups(value).double()))


# ---------------------------------------------------------------------------------------------
# GroupContrastiveLoss(10) positional, like DescendingSoftLabelLoss(10)
# ---------------------------------------------------------------------------------------------
def test_contrastive_num_groups_positional_or_keyword():
    features, groups = torch.randn(8, 3), torch.arange(8) % 10
    positional, keyword = GroupContrastiveLoss(10), GroupContrastiveLoss(num_groups=10)
    assert positional.num_groups == keyword.num_groups == DescendingSoftLabelLoss(10).num_groups
    assert torch.equal(positional(features, groups), keyword(features, groups))
    assert GroupContrastiveLoss().num_groups is None
    with pytest.raises(TypeError):
        GroupContrastiveLoss(10, 0.1)  # the rest stay keyword-only
    with pytest.raises(ValueError, match="num_groups"):
        GroupContrastiveLoss(1)


# ---------------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py)
# ---------------------------------------------------------------------------------------------
def contrastive_spec(name, labels, *, twin_reads_module=True, **kwargs):
    """``GroupContrastiveLoss(**kwargs)`` on ``labels``; its twin passes the module's
    hyper-parameters, or (``twin_reads_module=False``) only num_groups and reduction, so the
    module's defaults must be the function's."""

    def inputs(dtype, device):
        return torch.randn(labels.shape[0], 4, dtype=dtype, device=device), labels.to(device)

    def function(module, features, y):
        if not twin_reads_module:
            return group_contrastive_loss(
                features, y, num_groups=module.num_groups, reduction=module.reduction
            )
        return group_contrastive_loss(
            features, y, num_groups=module.num_groups, temperature=module.temperature,
            similarity=module.similarity, reduction=module.reduction,
            chunk_size=module.chunk_size, normalize=module.normalize,
        )

    return Spec(
        name,
        build=lambda **kw: GroupContrastiveLoss(**kwargs, **kw),
        inputs=inputs,
        function=function,
        # The compiled graph may take the continuous kernel where eager takes the fused
        # one (integer labels without num_groups): the same loss in another summation order.
        compile_tol={"rtol": 1e-5, "atol": 1e-5},
        # The reference is the float32 loss of the same bf16 features: only the loss's own
        # work may differ, and it runs in float32.
        autocast_tol=1e-5,
        state_keys=frozenset(),
        inductor=name in ("fused-defaults", "real"),
    )


TestBattery = battery(
    contrastive_spec(
        "fused-cosine", INT_LABELS["spread"], num_groups=G, temperature=0.3, similarity="cosine"
    ),
    contrastive_spec("fused-defaults", INT_LABELS["spread"], twin_reads_module=False, num_groups=G),
    contrastive_spec(
        "fused-chunked", INT_LABELS["spread"], num_groups=G, temperature=0.5, chunk_size=3
    ),
    contrastive_spec(
        "inferred-cosine", INT_LABELS["spread"], temperature=0.3, similarity="cosine"
    ),
    contrastive_spec("inferred-defaults", INT_LABELS["spread"], twin_reads_module=False),
    contrastive_spec("real", FLOAT_LABELS["float_ties"], temperature=0.2),
    contrastive_spec(
        "real-unnormalised", FLOAT_LABELS["float_distinct"], temperature=2.0, normalize=False
    ),
)
