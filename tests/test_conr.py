"""ConR against a float64 loop written from the paper's equation, the official code's
denominator, views, degenerate batches, gradients, compile and the module battery."""

from __future__ import annotations

import math

import pytest
import torch
from _battery import Spec, battery

from dirloss import ConRLoss
from dirloss.conr import conr_loss

F64 = {"atol": 1e-12, "rtol": 1e-12}


# ---------------------------------------------------------------------------------------------
# Reference, straight from the paper (Keramati et al., ICLR 2024), over M samples:
#   s_jk = <z_j, z_k> / tau, z = x / |x|
#   P_j = {i != j : |y_i - y_j| <= w},  Q_j = {q : |y_q - y_j| > w, |p_q - p_j| <= w}
#   S_jq = w_j exp(e |y_j - y_q|)   (or e w_j |y_j - y_q|, "linear")
#   L_j = -1/|P_j| sum_{i in P_j} log( exp(s_ji) / (sum_{p in P_j} exp(s_jp)
#                                                  + sum_{q in Q_j} S_jq exp(s_jq)) )
#   term_j = w_j [Q_j nonempty] L_j  (0 when P_j is empty);  loss = mean_j term_j.
# "official": the official code's denominator sums exp(s_jk * [k in P_j]) over the whole
# row, so every k outside P_j (the diagonal too) adds exp(0) = 1.
# ---------------------------------------------------------------------------------------------
def ref_terms(x, y, p, w, threshold, tau, eps, pushing="exponential", official=False):
    m = len(y)
    norm = [math.sqrt(sum(v * v for v in row)) for row in x]
    z = [[v / norm[i] for v in x[i]] for i in range(m)]
    terms = []
    for j in range(m):
        s = [sum(a * b for a, b in zip(z[j], z[k])) / tau for k in range(m)]
        pos = [i for i in range(m) if i != j and abs(y[i] - y[j]) <= threshold]
        neg = [
            q for q in range(m)
            if abs(y[q] - y[j]) > threshold and abs(p[q] - p[j]) <= threshold
        ]
        if not pos or not neg:
            terms.append(0.0)
            continue
        if pushing == "exponential":
            push = {q: w[j] * math.exp(eps * abs(y[j] - y[q])) for q in neg}
        else:
            push = {q: eps * w[j] * abs(y[j] - y[q]) for q in neg}
        denom = sum(math.exp(s[i]) for i in pos) + sum(push[q] * math.exp(s[q]) for q in neg)
        if official:
            denom += m - len(pos)
        loss_j = -sum(math.log(math.exp(s[i]) / denom) for i in pos) / len(pos)
        terms.append(w[j] * loss_j)
    return terms


def random_batch(seed, n=10, views=None, dim=4, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, dim) if views is None else (n, views, dim)
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    y = torch.randint(0, 6, (n,), generator=gen).to(dtype)
    lead = (n,) if views is None else (n, views)
    p = torch.randint(0, 6, lead, generator=gen).to(dtype) + 0.4 * torch.rand(
        *lead, generator=gen, dtype=dtype
    )
    w = 0.5 + torch.rand(n, generator=gen, dtype=dtype)
    return x, y, p, w


def flat(x, y, p, w):
    """Views -> samples (sample-major), labels and weights repeated per view."""
    if x.dim() == 2:
        return x.tolist(), y.tolist(), p.tolist(), w.tolist()
    v = x.shape[1]
    return (
        x.reshape(-1, x.shape[-1]).tolist(), y.repeat_interleave(v).tolist(),
        p.reshape(-1).tolist(), w.repeat_interleave(v).tolist(),
    )


# ---------------------------------------------------------------------------------------------
# 1. Values against the loop (float64)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("views", [None, 2])
@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("pushing", ["exponential", "linear"])
def test_matches_loop_from_the_paper(seed, views, official, pushing):
    x, y, p, w = random_batch(seed, views=views)
    eps = 0.01 if pushing == "exponential" else 0.2
    for tau in (0.07, 0.5):
        want = ref_terms(*flat(x, y, p, w), 1.0, tau, eps, pushing, official)
        kw = dict(threshold=1.0, temperature=tau, pushing_scale=eps, pushing=pushing,
                  weight=w, official_denominator=official, view_dim=None if views is None else 1)
        got = conr_loss(x, y, p, reduction="none", **kw)
        assert got.shape == ((10,) if views is None else (10, views))
        want_t = torch.tensor(want, dtype=torch.float64)
        torch.testing.assert_close(got.reshape(-1), want_t, **F64)
        torch.testing.assert_close(conr_loss(x, y, p, **kw), want_t.mean(), **F64)
        total = conr_loss(x, y, p, reduction="sum", **kw)
        torch.testing.assert_close(total, want_t.sum(), **F64)


def test_without_weights_is_weight_one():
    x, y, p, _ = random_batch(7, views=2)
    ones = torch.ones(10, dtype=torch.float64)
    torch.testing.assert_close(
        conr_loss(x, y, p, threshold=1.0, view_dim=1),
        conr_loss(x, y, p, threshold=1.0, view_dim=1, weight=ones), **F64,
    )


def test_unnormalised_features_use_the_raw_dot_product():
    x, y, p, w = random_batch(3)
    scale = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.7, 1.1, 0.9, 1.3, 2.2, 0.4], dtype=torch.float64)
    # raw dot products of x equal normalised ones of unit rows only: compare on unit rows
    unit = torch.nn.functional.normalize(x, dim=1)
    torch.testing.assert_close(
        conr_loss(unit, y, p, threshold=1.0, normalize=False),
        conr_loss(unit * scale[:, None], y, p, threshold=1.0), **F64,
    )


def test_two_views_equal_the_concatenated_single_view_call():
    x, y, p, w = random_batch(5, views=2)
    cat_x = torch.cat([x[:, 0], x[:, 1]])  # the official order: view 0 rows, then view 1 rows
    cat = conr_loss(cat_x, y.repeat(2), torch.cat([p[:, 0], p[:, 1]]), threshold=1.0,
                    weight=w.repeat(2), reduction="none")
    two = conr_loss(x, y, p, threshold=1.0, weight=w, reduction="none", view_dim=1)
    torch.testing.assert_close(two.T.reshape(-1), cat, **F64)
    # (V, N, D) with view_dim=0: the same views stacked the other way
    stacked = conr_loss(x.movedim(1, 0), y, p.T, threshold=1.0, weight=w, reduction="none",
                        view_dim=0)
    assert stacked.shape == (2, 10)
    torch.testing.assert_close(stacked.reshape(-1), cat, **F64)
    module = ConRLoss(1.0, view_dim=0)
    torch.testing.assert_close(module(x.movedim(1, 0), y, p.T, w), cat.mean(), **F64)


def test_official_denominator_only_adds_the_spurious_ones():
    # With every logit far above 0 the e^0 terms hardly matter; near 0 they dominate.
    x, y, p, w = random_batch(2, views=2)
    kw = dict(threshold=1.0, view_dim=1)
    paper = conr_loss(x, y, p, temperature=0.01, **kw)
    official = conr_loss(x, y, p, temperature=0.01, official_denominator=True, **kw)
    torch.testing.assert_close(paper, official, atol=1e-12, rtol=1e-8)
    hot = conr_loss(x, y, p, temperature=50.0, official_denominator=True, **kw)
    assert float(hot) > float(conr_loss(x, y, p, temperature=50.0, **kw))


# ---------------------------------------------------------------------------------------------
# 2. Degenerate batches: finite zeros that stay in the graph
# ---------------------------------------------------------------------------------------------
def _zero_in_graph(x, *args, **kw):
    x = x.clone().requires_grad_(True)
    loss = conr_loss(x, *args, **kw)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_no_negatives_gives_zero():
    x = torch.randn(6, 3)
    y = torch.tensor([0.0, 0.5, 3.0, 3.5, 7.0, 7.2])
    _zero_in_graph(x, y, y.clone(), threshold=1.0)  # predictions = labels: no confusion


def test_no_positives_gives_zero():
    # labels all far apart, predictions all equal: every pair is a negative, none positive
    x = torch.randn(5, 3)
    y = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0])
    _zero_in_graph(x, y, torch.zeros(5), threshold=1.0)
    _zero_in_graph(x, y, torch.zeros(5), threshold=1.0, official_denominator=True)


def test_single_sample_empty_batch_and_zero_weights():
    _zero_in_graph(torch.randn(1, 3), torch.zeros(1), torch.zeros(1), threshold=1.0)
    _zero_in_graph(torch.randn(1, 2, 3), torch.zeros(1), torch.zeros(1, 2), threshold=1.0,
                   view_dim=1)
    empty = conr_loss(torch.randn(0, 3), torch.zeros(0), torch.zeros(0), threshold=1.0)
    assert empty.item() == 0.0
    x, y, p, _ = random_batch(1, views=2, dtype=torch.float32)
    _zero_in_graph(x, y, p, threshold=1.0, weight=torch.zeros(10), view_dim=1)


def test_extreme_temperatures_and_scales_stay_finite():
    x, y, p, w = random_batch(4, views=2, dtype=torch.float32)
    x = (x * 1e3).requires_grad_(True)
    for tau in (1e-4, 1e4):
        for normalize in (True, False):
            loss = conr_loss(x, y, p, threshold=1.0, temperature=tau, normalize=normalize,
                             pushing_scale=5.0, weight=w, view_dim=1)
            (grad,) = torch.autograd.grad(loss, x)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------
# 3. Gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("pushing", ["exponential", "linear"])
def test_gradcheck(official, pushing):
    x, y, p, w = random_batch(0, n=6, views=2, dim=3)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f: conr_loss(f, y, p, threshold=1.0, temperature=0.5, weight=w, pushing=pushing,
                            pushing_scale=0.3, official_denominator=official, reduction="none",
                            view_dim=1),
        (x,),
    )


def test_predictions_and_weights_get_no_gradient():
    x, y, p, w = random_batch(0, views=2)
    p.requires_grad_(True)
    w.requires_grad_(True)
    loss = conr_loss(x.requires_grad_(True), y, p, threshold=1.0, weight=w, view_dim=1)
    loss.backward()
    assert p.grad is None and w.grad is None and x.grad is not None


def test_permuting_the_batch_keeps_the_loss():
    x, y, p, w = random_batch(6, views=2)
    perm = torch.randperm(10)
    torch.testing.assert_close(
        conr_loss(x[perm], y[perm], p[perm], threshold=1.0, weight=w[perm], view_dim=1),
        conr_loss(x, y, p, threshold=1.0, weight=w, view_dim=1), **F64,
    )


# ---------------------------------------------------------------------------------------------
# 4. Module, autocast, errors (compile and devices: the battery below)
# ---------------------------------------------------------------------------------------------
def test_module_equals_function_repr_and_state(device):
    x, y, p, w = (t.to(device) for t in random_batch(2, views=2, dtype=torch.float32))
    module = ConRLoss(1.0, temperature=0.2, pushing="linear", pushing_scale=0.2, view_dim=1)
    module = module.to(device)
    want = conr_loss(x, y, p, threshold=1.0, temperature=0.2, pushing="linear",
                     pushing_scale=0.2, weight=w, view_dim=1)
    assert torch.equal(module(x, y, p, w), want)
    assert "threshold=1.0" in repr(module) and "'linear'" in repr(module)
    assert module.state_dict() == {}
    ConRLoss(1.0).load_state_dict(module.state_dict())


def test_autocast_runs():
    x, y, p, w = random_batch(1, views=2, dtype=torch.float32)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = conr_loss(x, y, p, threshold=1.0, weight=w, view_dim=1)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": 1.0, "temperature": 0.0}, "temperature"),
        ({"threshold": 1.0, "pushing_scale": -0.1}, "pushing_scale"),
        ({"threshold": 1.0, "pushing": "cubic"}, "pushing"),
        ({"threshold": 1.0, "view_dim": 2}, "view_dim"),
        ({"threshold": 1.0, "reduction": "max"}, "not a valid value for reduction"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    threshold = kwargs.pop("threshold")
    with pytest.raises(ValueError, match=match):
        ConRLoss(threshold, **kwargs)
    with pytest.raises(ValueError, match=match):
        conr_loss(torch.randn(3, 2), torch.rand(3), torch.rand(3), threshold=threshold, **kwargs)


def test_bad_shapes_raise():
    z = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"expected floating features"):
        conr_loss(torch.randn(4), torch.rand(4), torch.rand(4), threshold=1.0)
    with pytest.raises(ValueError, match=r"pass view_dim=1 for \(N, V, D\) views"):
        conr_loss(z, torch.rand(4), torch.rand(4, 2), threshold=1.0)
    with pytest.raises(ValueError, match=r"expected floating features of shape \(N, V, D\)"):
        conr_loss(torch.randn(4, 3), torch.rand(4), torch.rand(4), threshold=1.0, view_dim=1)
    with pytest.raises(ValueError, match=r"expected target of shape \(4,\)"):
        conr_loss(z, torch.rand(5), torch.rand(4, 2), threshold=1.0, view_dim=1)
    with pytest.raises(ValueError, match=r"expected prediction of shape \(4, 2\)"):
        conr_loss(z, torch.rand(4), torch.rand(4), threshold=1.0, view_dim=1)
    with pytest.raises(ValueError, match=r"expected target of shape \(2,\)"):
        conr_loss(z, torch.rand(4), torch.rand(4, 2), threshold=1.0, view_dim=0)
    with pytest.raises(ValueError, match=r"expected weight of shape \(4,\)"):
        conr_loss(z, torch.rand(4), torch.rand(4, 2), threshold=1.0, weight=torch.rand(8),
                  view_dim=1)


# ---------------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py)
# ---------------------------------------------------------------------------------------------
def conr_spec(name, *, views=2, weighted=True, **kwargs):
    """``ConRLoss(1.0, **kwargs)`` on a batch of 8 with ``views`` views (None: (N, D)) and,
    when ``weighted``, sample weights; integer labels and predictions within the window of
    several of them, so that every kind of pair occurs."""
    view_dim = None if views is None else 1

    def inputs(dtype, device):
        lead = (8,) if views is None else (8, views)
        x = torch.randn(*lead, 3, dtype=dtype, device=device)
        y = torch.randint(0, 4, (8,), device=device).to(dtype)
        p = torch.randint(0, 4, lead, device=device) + 0.3 * torch.rand(*lead, device=device)
        w = 0.5 + torch.rand(8, dtype=dtype, device=device)
        return (x, y, p, w) if weighted else (x, y, p)

    def function(module, features, target, prediction, weight=None):
        return conr_loss(
            features, target, prediction, threshold=module.threshold,
            temperature=module.temperature, pushing_scale=module.pushing_scale,
            pushing=module.pushing, weight=weight, normalize=module.normalize,
            official_denominator=module.official_denominator, view_dim=module.view_dim,
            reduction=module.reduction,
        )

    return Spec(
        name,
        build=lambda **kw: ConRLoss(1.0, view_dim=view_dim, **kwargs, **kw),
        inputs=inputs,
        function=function,
        none_shape=lambda inputs: tuple(inputs[2].shape),  # per sample and view
        compile_tol={"rtol": 1e-5, "atol": 1e-6},
        state_keys=frozenset(),
    )


TestBattery = battery(
    conr_spec("views"),
    conr_spec("views-official", official_denominator=True),
    conr_spec("linear-unweighted", views=None, weighted=False, pushing="linear",
              pushing_scale=0.2, temperature=0.5),
    conr_spec("unnormalised", normalize=False, temperature=2.0),
)
