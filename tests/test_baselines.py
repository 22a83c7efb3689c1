"""Tests of benchmarks/baselines.py against tiny cases worked out by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not (Path(__file__).resolve().parents[1] / "benchmarks").is_dir():  # e.g. the sdist
    pytest.skip("needs the repository's benchmarks/ (not shipped in the sdist)",
                allow_module_level=True)

from benchmarks.baselines import (  # noqa: E402
    BMCLoss,
    LDSReweighting,
    LDSWeightedMSELoss,
    RankSimLoss,
    blackbox_rank,
    bmc_loss,
    gaussian_kernel,
    lds_bin_weights,
    lds_effective_density,
    ranksim_loss,
    unique_label_mask,
    weighted_mse_loss,
)

# A kernel_size-3 kernel with k_{+-1} = exp(-1 / (2 sigma^2)) = 1/2 exactly.
SIGMA_HALF = 1.0 / math.sqrt(2.0 * math.log(2.0))


# ---------------------------------------------------------------------------------------------
# LDS
# ---------------------------------------------------------------------------------------------
def test_gaussian_kernel_default_values():
    # kernel_size 5, sigma 2: k_j = exp(-j^2 / 8) for j = -2..2.
    a, b = math.exp(-4 / 8), math.exp(-1 / 8)
    torch.testing.assert_close(
        gaussian_kernel(), torch.tensor([a, b, 1.0, b, a], dtype=torch.float64)
    )
    torch.testing.assert_close(
        gaussian_kernel(3, SIGMA_HALF), torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    )


def test_lds_hand_case():
    # Edges [0, 1, 2, 3]; labels 0.1, 0.2 | 1.5 | 2.5 -> counts n = [2, 1, 1].
    # Kernel [1/2, 1, 1/2], zero outside the range:
    #   p0 = 2 + 1/2 * 1             = 2.5
    #   p1 = 1/2 * 2 + 1 + 1/2 * 1   = 2.5
    #   p2 = 1/2 * 1 + 1             = 1.5
    # Inverse square root, scaled so the mean over the 4 training samples is 1:
    #   c = 4 / (3 * 0.6324555 + 0.8164966) = 4 / 2.7138632 = 1.4739137
    #   w = [c / sqrt(2.5), c / sqrt(2.5), c / sqrt(1.5)] = [0.9321848, 0.9321848, 1.2034455]
    #   check: (3 * 0.9321848 + 1.2034455) / 4 = 1.
    labels = torch.tensor([0.1, 0.2, 1.5, 2.5])
    counts = torch.tensor([2, 1, 1])
    torch.testing.assert_close(
        lds_effective_density(counts, kernel_size=3, sigma=SIGMA_HALF),
        torch.tensor([2.5, 2.5, 1.5], dtype=torch.float64),
    )
    c = 4 / (3 / math.sqrt(2.5) + 1 / math.sqrt(1.5))
    expected = torch.tensor(
        [c / math.sqrt(2.5), c / math.sqrt(2.5), c / math.sqrt(1.5)], dtype=torch.float64
    )
    torch.testing.assert_close(lds_bin_weights(counts, kernel_size=3, sigma=SIGMA_HALF), expected)
    torch.testing.assert_close(
        expected, torch.tensor([0.9321848, 0.9321848, 1.2034455], dtype=torch.float64),
        atol=1e-7, rtol=0,
    )

    edges = torch.tensor([0.0, 1.0, 2.0, 3.0])
    lds = LDSReweighting(kernel_size=3, sigma=SIGMA_HALF, edges=edges).fit(labels)
    assert lds.counts.tolist() == [2, 1, 1]
    w = lds(labels)
    torch.testing.assert_close(w, expected[[0, 0, 1, 2]].float())
    assert abs(float(w.mean()) - 1.0) < 1e-6
    # Out-of-range labels take the end bins; 3.0 (the last edge) is in the last bin.
    torch.testing.assert_close(lds(torch.tensor([-5.0, 3.0, 9.0])), expected[[0, 2, 2]].float())

    # Weighted MSE: errors [1, 0, 0, -2] (samples in bins 0, 0, 1, 2)
    #   -> (w0 * 1 + w2 * 4) / 4 = (0.9321848 + 4.8137818) / 4 = 1.4364917.
    pred = labels + torch.tensor([1.0, 0.0, 0.0, -2.0])
    loss = LDSWeightedMSELoss(lds)(pred, labels)
    assert abs(float(loss) - (expected[0] + 4 * expected[2]) / 4) < 1e-6
    assert abs(float(loss) - 1.4364917) < 1e-6


def test_lds_fitted_range_and_empty_bins():
    # Default kernel, 7 bins over [0, 7], labels in bins 0 and 6 only. Bin 3 is 3 bins from
    # both, beyond the kernel's reach (2): its density is 0 and it gets the largest weight of
    # the bins the kernel reaches (bins 2 and 4, one bin further than that from a label).
    lds = LDSReweighting(num_bins=7).fit(torch.tensor([0.5, 0.5, 6.5, 7.0]))
    torch.testing.assert_close(lds.edges, torch.linspace(0.5, 7.0, 8, dtype=torch.float64))
    density = lds_effective_density(lds.counts)
    assert density[3] == 0 and bool((density[[0, 6]] > 0).all())
    assert float(lds.bin_weights[3]) == float(lds.bin_weights[density > 0].max())
    torch.testing.assert_close(lds.bin_weights[3], lds.bin_weights[2])
    assert torch.isfinite(lds.bin_weights).all()


def test_weighted_mse_gradcheck_and_reductions():
    torch.manual_seed(0)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 2, dtype=torch.float64)
    w = torch.rand(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: weighted_mse_loss(a, y, w), (x,))
    none = weighted_mse_loss(x, y, w, reduction="none")
    assert none.shape == (5,)
    torch.testing.assert_close(weighted_mse_loss(x, y, w, reduction="sum"), none.sum())
    torch.testing.assert_close(
        weighted_mse_loss(x, y, torch.ones(5, dtype=torch.float64)), F.mse_loss(x, y)
    )
    with pytest.raises(ValueError, match="is not a valid value for reduction"):
        weighted_mse_loss(x, y, w, reduction="avg")
    with pytest.raises(ValueError, match="expected weight"):
        weighted_mse_loss(x, y, w[:3])


def test_lds_state_dict_round_trip():
    lds = LDSReweighting(num_bins=10).fit(torch.rand(100) ** 3)
    other = LDSReweighting(num_bins=10)
    other.load_state_dict(lds.state_dict())
    y = torch.rand(20)
    torch.testing.assert_close(other(y), lds(y))


# ---------------------------------------------------------------------------------------------
# Balanced MSE (BMC)
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
    assert abs(float(BMCLoss(math.sqrt(2.0))(pred, y)) - expected) < 1e-6


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
    assert "noise_sigma" in dict(BMCLoss(0.8).named_buffers())


def test_bmc_degenerate_and_extreme():
    one = torch.tensor([0.3], requires_grad=True)
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
# RankSim
# ---------------------------------------------------------------------------------------------
def test_blackbox_rank_forward_and_backward_by_hand():
    # s = [0.1, 0.5, 0.3] -> ascending ranks [1, 3, 2] / 3.
    # Upstream g = [1, -1, 0], lambda = 1: s + g = [1.1, -0.5, 0.3] -> ranks [3, 1, 2] / 3;
    # gradient = ([3, 1, 2] - [1, 3, 2]) / 3 / 1 = [2/3, -2/3, 0].
    s = torch.tensor([0.1, 0.5, 0.3], requires_grad=True)
    r = blackbox_rank(s, 1.0)
    torch.testing.assert_close(r, torch.tensor([1.0, 3.0, 2.0]) / 3)
    r.backward(torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(s.grad, torch.tensor([2.0, -2.0, 0.0]) / 3)
    # lambda = 0.1: s + 0.1 g = [0.2, 0.4, 0.3] keeps the order -> zero gradient.
    s.grad = None
    blackbox_rank(s, 0.1).backward(torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(s.grad, torch.zeros(3))


def test_ranksim_hand_case():
    # y = [0, 1, 3]: S^y = -|y_i - y_j| rows [0, -1, -3], [-1, 0, -2], [-3, -2, 0]
    #   -> ascending ranks [3, 2, 1], [2, 3, 1], [1, 2, 3].
    # z0 = (1, 0), z1 = (0, 1), z2 = (cos 30, sin 30):
    #   S^z rows [1, 0, .866], [0, 1, .5], [.866, .5, 1]
    #   -> ranks [3, 1, 2], [1, 3, 2], [2, 1, 3].
    # Differences [0, -1, 1], [-1, 0, 1], [1, -1, 0]: sum of squares 6, over (3 * 3)^2 = 81
    # (ranks / 3, mean over 9 entries) -> 6 / 81 = 2 / 27.
    z = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [math.cos(math.pi / 6), math.sin(math.pi / 6)]],
        requires_grad=True,
    )
    y = torch.tensor([0.0, 1.0, 3.0])
    loss = ranksim_loss(z, y)
    assert abs(float(loss.detach()) - 2 / 27) < 1e-7
    torch.testing.assert_close(RankSimLoss(gamma=3.0)(z, y[:, None]), 3 * loss)
    loss.backward()
    assert torch.isfinite(z.grad).all() and float(z.grad.abs().sum()) > 0
    # Features already ordered like the labels: zero loss.
    angles = torch.tensor([0.0, 0.3, 0.9])
    aligned = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert float(ranksim_loss(aligned, y)) == 0.0


def test_unique_label_mask_and_sampling():
    y = torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    picks = set()
    for seed in range(20):
        mask = unique_label_mask(y, generator=torch.Generator().manual_seed(seed))
        assert mask.sum() == 3 and sorted(y[mask].tolist()) == [1.0, 2.0, 3.0]
        picks.add(tuple(mask.tolist()))
    assert len(picks) > 1  # the kept sample is random
    torch.manual_seed(0)
    z = torch.randn(6, 4)
    g = torch.Generator().manual_seed(3)
    keep = unique_label_mask(y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        ranksim_loss(z, y, generator=g), ranksim_loss(z[keep], y[keep], unique_labels=False)
    )


def test_ranksim_degenerate_and_descent():
    z = torch.randn(4, 3, requires_grad=True)
    loss = ranksim_loss(z, torch.full((4,), 2.0))  # one distinct label -> one sample kept
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()
    # The surrogate gradient makes feature similarities follow label similarities. gamma
    # scales the upstream gradient, hence the perturbation lambda * g inside the ranker.
    torch.manual_seed(0)
    feats = torch.randn(10, 4, requires_grad=True)
    y = torch.arange(10.0)
    opt = torch.optim.SGD([feats], lr=0.1)
    criterion = RankSimLoss(gamma=100.0, interpolation_lambda=2.0)
    first = float(ranksim_loss(feats, y).detach())
    for _ in range(100):
        opt.zero_grad()
        criterion(feats, y).backward()
        opt.step()
    assert float(ranksim_loss(feats, y).detach()) < 0.2 * first
    with pytest.raises(ValueError):
        RankSimLoss(interpolation_lambda=0.0)
