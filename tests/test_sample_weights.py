"""Per-sample weights (e.g. LDS) on the expert and mixture terms: the fused objective equals
the functional terms and a float64 loop, weight=None changes nothing, and the analytic
backward matches autograd of the term-by-term form."""

from __future__ import annotations

import pytest
import torch

from dirloss import GroupBinner, GroupDIRLoss, LabelDensityWeights, MultiExpertHead
from dirloss import functional as DF


def _setup(n=24, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(n, generator=gen, dtype=dtype).exp()
    binner = GroupBinner(4, strategy="quantile").fit(torch.randn(500, generator=gen).exp())
    head = MultiExpertHead(5, num_groups=4).to(dtype)
    features = torch.randn(n, 5, generator=gen, dtype=dtype)
    weight = torch.rand(n, generator=gen, dtype=dtype) * 2
    return y, binner, head, features, weight


def _loop_terms(logits, experts, y, groups, table, weight, unit):
    n, g, _ = experts.shape
    mse = mix = 0.0
    for i in range(n):
        p = torch.softmax(logits[i], 0)
        mixed = sum(float(p[k]) * float(experts[i, k, 0]) for k in range(g))
        mix += float(weight[i]) * (mixed - float(y[i])) ** 2
        for k in range(g):
            share = float(table[groups[i], k]) if table is not None else float(k == groups[i])
            mse += float(weight[i]) * share * (float(experts[i, k, 0]) - float(y[i])) ** 2
    return mse / (n * unit**2), mix / (n * unit**2)


@pytest.mark.parametrize("expert_share", [0.0, 1.0])
def test_weighted_terms_equal_loop_and_functional(expert_share):
    y, binner, head, features, weight = _setup()
    criterion = GroupDIRLoss(binner, expert_share=expert_share, lambda_grc=0.0).double()
    out = head(features, binner(y))
    result = criterion(out, features, y, weight=weight)
    groups = binner(y)
    logits, experts = out.logits.detach(), out.experts.detach()
    unit = float(binner.label_std)
    mse, mix = _loop_terms(logits, experts, y, groups, criterion.expert_table, weight, unit)
    assert float(result.mse) == pytest.approx(mse, rel=1e-12)
    assert float(result.mix) == pytest.approx(mix, rel=1e-12)
    fn_mse = DF.expert_mse_loss(out.experts, y[:, None], groups, table=criterion.expert_table,
                                target_unit=binner.label_std, weight=weight)
    fn_mix = DF.mixture_mse_loss(out.logits, out.experts, y[:, None],
                                 target_unit=binner.label_std, weight=weight)
    torch.testing.assert_close(result.mse, fn_mse, rtol=1e-12, atol=0)
    torch.testing.assert_close(result.mix, fn_mix, rtol=1e-12, atol=0)


def test_unit_weights_equal_no_weights():
    y, binner, head, features, _ = _setup()
    criterion = GroupDIRLoss(binner).double()
    out = head(features, binner(y))
    a = criterion(out, features, y)
    b = criterion(out, features, y, weight=torch.ones_like(y))
    for x, z in zip(a, b):  # the same sums, one extra multiplication by 1.0
        torch.testing.assert_close(x, z, rtol=1e-14, atol=1e-15)


def test_fused_backward_equals_autograd_of_the_terms():
    y, binner, head, features, weight = _setup()
    criterion = GroupDIRLoss(binner, lambda_grc=0.0).double()
    groups = binner(y)
    out = head(features, groups)
    logits = out.logits.detach().requires_grad_(True)
    experts = out.experts.detach().requires_grad_(True)
    fused = criterion(type(out)(*((logits, experts) + tuple(out[2:]))), features, y, weight=weight)
    g_fused = torch.autograd.grad(fused.loss, (logits, experts))
    unit = binner.label_std
    soft = criterion.soft_label(logits, groups, group_counts=binner.counts)
    total = (criterion.lambda_mse * DF.expert_mse_loss(experts, y[:, None], groups,
                                                       table=criterion.expert_table,
                                                       target_unit=unit, weight=weight)
             + criterion.lambda_soft * soft
             + criterion.lambda_mix * DF.mixture_mse_loss(logits, experts, y[:, None],
                                                          target_unit=unit, weight=weight))
    g_terms = torch.autograd.grad(total, (logits, experts))
    for a, b in zip(g_fused, g_terms):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_lds_weights_drive_the_objective():
    y, binner, head, features, _ = _setup(n=64)
    lds = LabelDensityWeights(10).fit(torch.randn(500).exp())
    criterion = GroupDIRLoss(binner).double()
    out = criterion(head(features, binner(y)), features, y, weight=lds(y).double())
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_bad_weight_raises():
    y, binner, head, features, _ = _setup()
    criterion = GroupDIRLoss(binner).double()
    out = head(features, binner(y))
    with pytest.raises(ValueError, match=r"weight of shape \(24,\)"):
        criterion(out, features, y, weight=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point weight"):
        criterion(out, features, y, weight=torch.ones(24, dtype=torch.long))
