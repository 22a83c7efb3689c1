"""Balanced MSE (BMC, BNI, GAI): float64 loops of the paper's equations, the identities that
tie the three estimators together, the official BMC baseline, the documented edge cases, and
the module battery."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _battery import Spec, battery

from dirloss import BMCLoss, BNILoss, GAILoss, balanced_mse
from dirloss.balanced_mse import bmc_loss, bni_loss, fit_gmm, gai_loss


def _loop_bmc(pred, target, var):
    out = []
    for i in range(len(pred)):
        logits = [-((pred[i] - t) ** 2) / (2 * var) for t in target]
        top = max(logits)
        lse = top + math.log(sum(math.exp(v - top) for v in logits))
        out.append((lse - logits[i]) * 2 * var)
    return out


def _loop_bni(pred, target, var, centers, probs):
    out = []
    for p, t in zip(pred, target):
        s = sum(q * math.exp(-((p - c) ** 2) / (2 * var)) for c, q in zip(centers, probs))
        out.append(((p - t) ** 2 / (2 * var) + math.log(s)) * 2 * var)
    return out


def _loop_gai(pred, target, var, means, variances, weights):
    out = []
    for p, t in zip(pred, target):
        s = sum(w / math.sqrt(v + var) * math.exp(-((p - m) ** 2) / (2 * (v + var)))
                for m, v, w in zip(means, variances, weights))
        out.append(((p - t) ** 2 / (2 * var) + 0.5 * math.log(var) + math.log(s)) * 2 * var)
    return out


def _data(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, generator=gen, dtype=torch.float64)
    target = torch.randn(n, generator=gen, dtype=torch.float64).exp()
    return pred, target


def test_bmc_equals_loop():
    pred, target = _data()
    got = bmc_loss(pred, target, noise_var=0.7, reduction="none")
    want = _loop_bmc(pred.tolist(), target.tolist(), 0.7)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_bni_equals_loop_and_drops_empty_bins():
    pred, target = _data()
    centers = torch.linspace(0.0, 4.0, 9, dtype=torch.float64)
    probs = torch.tensor([0.3, 0.2, 0.0, 0.15, 0.1, 0.1, 0.05, 0.0, 0.1], dtype=torch.float64)
    got = bni_loss(pred, target, noise_var=0.5, bin_centers=centers, bin_probs=probs,
                   reduction="none")
    want = _loop_bni(pred.tolist(), target.tolist(), 0.5, centers.tolist(), probs.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_gai_equals_loop():
    pred, target = _data()
    means, variances = torch.tensor([0.5, 1.5, 3.0]), torch.tensor([0.1, 0.4, 1.0])
    weights = torch.tensor([0.5, 0.3, 0.2])
    got = gai_loss(pred, target, noise_var=0.8, means=means.double(),
                   variances=variances.double(), weights=weights.double(), reduction="none")
    want = _loop_gai(pred.tolist(), target.tolist(), 0.8, means.tolist(), variances.tolist(),
                     weights.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_bni_with_the_batch_as_histogram_is_bmc_minus_its_constant():
    # BMC's denominator is BNI's sum with the N batch targets as bins of probability 1/N:
    # the two differ by 2 sigma^2 log N.
    pred, target = _data(n=10)
    var = 0.6
    bni = bni_loss(pred, target, noise_var=var, bin_centers=target,
                   bin_probs=torch.full((10,), 0.1, dtype=torch.float64), reduction="none")
    bmc = bmc_loss(pred, target, noise_var=var, reduction="none")
    torch.testing.assert_close(bni, bmc - 2 * var * math.log(10), rtol=1e-12, atol=1e-13)


def test_gai_with_point_components_is_bni():
    # v_k = 0: the mixture is a histogram at the means, and 1/2 log sigma^2 cancels.
    pred, target = _data()
    centers = torch.tensor([0.0, 1.0, 2.5], dtype=torch.float64)
    probs = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    gai = gai_loss(pred, target, noise_var=0.4, means=centers, variances=torch.zeros(3).double(),
                   weights=probs)
    bni = bni_loss(pred, target, noise_var=0.4, bin_centers=centers, bin_probs=probs)
    torch.testing.assert_close(gai, bni, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["bmc", "bni", "gai"])
def test_gradcheck_in_prediction_and_noise(name):
    pred, target = _data(n=6)
    pred.requires_grad_(True)
    var = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    centers = torch.linspace(0, 3, 5, dtype=torch.float64)
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)

    def f(p, v):
        if name == "bmc":
            return bmc_loss(p, target, noise_var=v)
        if name == "bni":
            return bni_loss(p, target, noise_var=v, bin_centers=centers, bin_probs=probs)
        return gai_loss(p, target, noise_var=v, means=centers, variances=probs + 0.1,
                        weights=probs)

    assert torch.autograd.gradcheck(lambda p: f(p, var.detach()), (pred,))
    # The 2 sigma^2 factor is detached by design: the noise gradient is 2 sigma^2 times the
    # derivative of the likelihood ratio f / (2 sigma^2) alone (central difference).
    (auto,) = torch.autograd.grad(f(pred, var), var)
    h = 1e-6

    def ratio(v: float) -> float:
        return float(f(pred.detach(), torch.tensor(v, dtype=torch.float64))) / (2 * v)

    numeric = 2 * 0.5 * (ratio(0.5 + h) - ratio(0.5 - h)) / (2 * h)
    assert float(auto) == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_learnable_sigma_trains_through_the_likelihood_term():
    criterion = BNILoss(10).fit(torch.randn(500))
    loss = criterion(torch.zeros(8), torch.randn(8))
    loss.backward()
    assert isinstance(criterion.noise_sigma, torch.nn.Parameter)
    assert criterion.noise_sigma.grad is not None and torch.isfinite(criterion.noise_sigma.grad)


def test_bmc_batch_of_one_warns_and_is_zero_in_graph():
    pred = torch.tensor([0.3], requires_grad=True)
    with pytest.warns(UserWarning, match="batch of one"):
        loss = bmc_loss(pred, torch.tensor([1.0]), noise_var=1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad.tolist() == [0.0]


def test_values_can_be_negative_and_that_is_documented():
    criterion = BNILoss(20, learnable=False).fit(torch.randn(2000))
    value = criterion(torch.zeros(64), torch.zeros(64))  # perfect predictions
    assert value.item() < 0  # a log-likelihood ratio, not an error
    assert "can be negative" in (balanced_mse.__doc__ or "")


def test_fit_gmm_recovers_two_separated_components():
    gen = torch.Generator().manual_seed(0)
    y = torch.cat([torch.randn(3000, generator=gen) * 0.5, 10 + torch.randn(1000, generator=gen)])
    means, variances, weights = fit_gmm(y, 2)
    assert means.tolist() == pytest.approx([0.0, 10.0], abs=0.1)
    assert variances.tolist() == pytest.approx([0.25, 1.0], rel=0.15)
    assert weights.tolist() == pytest.approx([0.75, 0.25], abs=0.02)
    again = fit_gmm(y, 2)
    assert all(torch.equal(a, b) for a, b in zip((means, variances, weights), again))


def test_bni_bins_float_labels_and_given_edges():
    module = BNILoss(bin_edges=[0.0, 0.5, 1.0, 2.0]).fit([0.1, 0.2, 0.7, 1.5, 1.9, 5.0])
    assert module.bin_centers.tolist() == [0.25, 0.75, 1.5]
    assert module.bin_probs.tolist() == pytest.approx([2 / 6, 1 / 6, 3 / 6])


@pytest.mark.parametrize("cls", [BNILoss, GAILoss])
def test_state_dict_round_trip_and_unfitted_error(cls):
    make = (lambda: BNILoss(8)) if cls is BNILoss else (lambda: GAILoss(3))
    a, b = make().fit(torch.randn(400).exp()), make()
    with pytest.raises(RuntimeError, match="fit"):
        b(torch.zeros(2), torch.zeros(2))
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(5), torch.randn(5)
    assert torch.equal(a(x, y), b(x, y))


def test_autocast_and_reductions():
    module = BMCLoss()
    x, y = torch.randn(8, requires_grad=True), torch.randn(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module(x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    none = BMCLoss(reduction="none")(x, y)
    assert none.shape == (8,)
    torch.testing.assert_close(BMCLoss(reduction="sum")(x, y), none.sum())


def test_meta_and_to_empty():
    with torch.device("meta"):
        module = BNILoss(4, learnable=False)
    module.to_empty(device="cpu")
    assert module.noise_sigma.item() == 1.0
    module.fit(torch.rand(50))
    assert module(torch.zeros(3), torch.zeros(3)).isfinite()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: BMCLoss(0.0), "init_noise_sigma"),
        (lambda: BMCLoss(reduction="avg"), "not a valid value for reduction"),
        (lambda: BNILoss(), "num_bins"),
        (lambda: BNILoss(3, bin_edges=[0.0, 1.0]), "len\\(bin_edges\\) - 1"),
        (lambda: GAILoss(0), "num_components"),
        (lambda: BNILoss(3).fit([1.0]), "at least 2"),
        (lambda: BNILoss(3).fit([1.0, float("nan")]), "NaN"),
        (lambda: GAILoss(5).fit([1.0, 2.0]), "num_components"),
        (lambda: bmc_loss(torch.zeros(3), torch.zeros(4), noise_var=1.0), "same shape"),
        (lambda: bni_loss(torch.zeros(3, 2), torch.zeros(3, 2), noise_var=1.0,
                          bin_centers=torch.zeros(2), bin_probs=torch.ones(2) / 2), "\\(N, 1\\)"),
        (lambda: bmc_loss(torch.zeros(3), torch.zeros(3), noise_var=torch.ones(2)), "scalar"),
    ],
)
def test_bad_input_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------------------------------------
# BMC hand cases (moved from the benchmark's baseline tests with the implementation)
# ---------------------------------------------------------------------------------------------
def test_bmc_hand_case():
    # pred [0, 1], y [0, 2], noise_var 1/2 so 2 sigma^2 = 1 and logits_ij = -(p_i - y_j)^2:
    #   row 0: [-(0-0)^2, -(0-2)^2] = [0, -4]  ->  -log softmax_0 = log(1 + e^-4) = 0.018150
    #   row 1: [-(1-0)^2, -(1-2)^2] = [-1, -1] ->  -log softmax_1 = log 2          = 0.693147
    # times 2 sigma^2 = 1; mean = 0.355649.
    pred, y = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0])
    none = bmc_loss(pred, y, noise_var=0.5, reduction="none")
    torch.testing.assert_close(none, torch.tensor([math.log(1 + math.exp(-4)), math.log(2.0)]))
    assert abs(float(bmc_loss(pred, y, noise_var=0.5)) - 0.355649) < 1e-6
    # noise_var 2: 2 sigma^2 = 4, logits = -(p_i - y_j)^2 / 4 -> row 0 [0, -1], row 1 [-1/4, -1/4]
    #   (log(1 + e^-1) + log 2) * 4 / 2
    expected = (math.log(1 + math.exp(-1)) + math.log(2.0)) * 4 / 2
    assert abs(float(BMCLoss(math.sqrt(2.0), learnable=False)(pred, y)) - expected) < 1e-6


def test_bmc_matches_cross_entropy_and_loop():
    torch.manual_seed(0)
    pred, y = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    var = 0.3
    logits = -(pred[:, None] - y[None, :]) ** 2 / (2 * var)
    torch.testing.assert_close(
        bmc_loss(pred, y, noise_var=var), F.cross_entropy(logits, torch.arange(7)) * 2 * var
    )
    loop = []
    for i in range(7):
        num = math.exp(-(pred[i] - y[i]) ** 2 / (2 * var))
        den = sum(math.exp(-(pred[i] - y[j]) ** 2 / (2 * var)) for j in range(7))
        loop.append(-math.log(num / den) * 2 * var)
    torch.testing.assert_close(
        bmc_loss(pred, y, noise_var=var, reduction="none"), torch.tensor(loop, dtype=torch.float64)
    )
    # (N,), (N, 1) agree; reduction="sum" = sum of "none".
    torch.testing.assert_close(
        bmc_loss(pred[:, None], y[:, None], noise_var=var), bmc_loss(pred, y, noise_var=var)
    )
    torch.testing.assert_close(
        bmc_loss(pred, y, noise_var=var, reduction="sum"),
        bmc_loss(pred, y, noise_var=var, reduction="none").sum(),
    )


def test_bmc_gradients():
    torch.manual_seed(0)
    pred = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: bmc_loss(p, y, noise_var=0.7), (pred,))
    # Learnable sigma: the 2 sigma^2 factor is detached, so dL/dsigma = 2 s0^2 * d(mean NLL)/dsigma.
    loss_fn = BMCLoss(0.8, learnable=True)
    assert isinstance(loss_fn.noise_sigma, torch.nn.Parameter)
    loss_fn.double()
    loss_fn(pred.detach(), y).backward()

    def mean_nll(s: float) -> float:
        return float(bmc_loss(pred.detach(), y, noise_var=s * s)) / (2 * s * s)

    h = 1e-6
    numeric = 2 * 0.8**2 * (mean_nll(0.8 + h) - mean_nll(0.8 - h)) / (2 * h)
    assert abs(float(loss_fn.noise_sigma.grad) - numeric) < 1e-6
    assert "noise_sigma" in dict(BMCLoss(0.8, learnable=False).named_buffers())


def test_bmc_degenerate_and_extreme():
    one = torch.tensor([0.3], requires_grad=True)
    with pytest.warns(UserWarning, match="batch of one"):
        loss = bmc_loss(one, torch.tensor([5.0]), noise_var=1.0)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(one.grad).all()
    empty = bmc_loss(torch.zeros(0), torch.zeros(0), noise_var=1.0)
    assert float(empty) == 0.0
    far = torch.tensor([1e3, -1e3, 0.0], requires_grad=True)
    loss = bmc_loss(far, torch.tensor([-1e3, 1e3, 0.0]), noise_var=1e-2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(far.grad).all()
    with pytest.raises(ValueError, match="same shape"):
        bmc_loss(torch.zeros(3), torch.zeros(4), noise_var=1.0)
    with pytest.raises(ValueError):
        BMCLoss(0.0)


# ---------------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py)
# ---------------------------------------------------------------------------------------------
def _train_labels():
    return torch.randn(400, dtype=torch.float64).exp()


def balanced_spec(name, build, function, *, fresh=None, learnable=False, keys=()):
    """One Balanced MSE module on predictions (8,) near the targets' scale; ``build(**kw)``
    takes ``reduction=``; ``function(module, noise_var, pred, target)`` is its twin."""
    state = {"noise_sigma", *keys}
    return Spec(
        name,
        build=lambda **kw: build(learnable=learnable, **kw),
        inputs=lambda dtype, device: (
            torch.randn(8, dtype=dtype, device=device) + 1.0,
            torch.randn(8, dtype=dtype, device=device).exp(),
        ),
        function=lambda m, pred, target: function(m, m.noise_sigma.pow(2), pred, target),
        # A learnable sigma's gradient is by design not the loss's derivative (the 2 sigma^2
        # scale is detached, so the gradient keeps the MSE's scale): gradcheck the
        # prediction; the noise gradient has its own test (test_gradcheck_in_...).
        gradcheck="inputs" if learnable else "all",
        compile_tol={"rtol": 1e-5, "atol": 1e-6},
        fresh=None if fresh is None else (lambda: fresh(learnable)),
        state_keys=frozenset(state),
    )


def _bmc(m, var, pred, target):
    return bmc_loss(pred, target, noise_var=var, reduction=m.reduction)


def _bni(m, var, pred, target):
    return bni_loss(pred, target, noise_var=var, bin_centers=m.bin_centers,
                    bin_probs=m.bin_probs, reduction=m.reduction)


def _gai(m, var, pred, target):
    return gai_loss(pred, target, noise_var=var, means=m.gmm_means,
                    variances=m.gmm_variances, weights=m.gmm_weights, reduction=m.reduction)


def balanced_specs(learnable):
    """BMC, BNI and GAI with a fixed or a learnable sigma; BNI and GAI fitted in ``build``,
    their fresh modules unfitted (the load marks them fitted)."""
    suffix = "-learnable" if learnable else "-fixed"
    return (
        balanced_spec("bmc" + suffix, lambda **kw: BMCLoss(0.8, **kw), _bmc,
                      learnable=learnable),
        balanced_spec("bni" + suffix, lambda **kw: BNILoss(8, **kw).fit(_train_labels()), _bni,
                      fresh=lambda learnable: BNILoss(8, learnable=learnable),
                      learnable=learnable, keys=("bin_centers", "bin_probs")),
        balanced_spec("gai" + suffix, lambda **kw: GAILoss(3, **kw).fit(_train_labels()), _gai,
                      fresh=lambda learnable: GAILoss(3, learnable=learnable),
                      learnable=learnable, keys=("gmm_means", "gmm_variances", "gmm_weights")),
    )


TestBattery = battery(*balanced_specs(False), *balanced_specs(True))
