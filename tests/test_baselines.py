"""Tests of benchmarks/baselines (BMC) against tiny cases worked out by hand. LDS and RankSim
are library components now: tests/test_reweighting.py, tests/test_ranksim.py."""

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

from benchmarks.baselines import BMCLoss, bmc_loss  # noqa: E402

# A kernel_size-3 kernel with k_{+-1} = exp(-1 / (2 sigma^2)) = 1/2 exactly.
SIGMA_HALF = 1.0 / math.sqrt(2.0 * math.log(2.0))


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
