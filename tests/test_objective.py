"""GroupDIRLoss against its parts computed independently with the functional ops."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from _bad_groups import OUT_OF_RANGE, bad_groups, fitted_binner, range_error
from _battery import Spec, battery
from _references import ref_expert_mse, ref_mixture_mse, ref_share_table
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dirloss.functional
from dirloss import GroupBinner, GroupDIRLoss, GroupDIRLossOutput, HeadOutput, MultiExpertHead
from dirloss.functional import (
    descending_soft_label_loss,
    descending_soft_label_table,
    expert_mse_loss,
    group_contrastive_loss,
    mixture_mse_loss,
)

G, D = 4, 6

PARTS = ("grc", "mse", "soft", "mix")

# The paper's objective (dirloss 0.1), written out: every weight 1, no soft-mixture term,
# the true group's expert only, the MSE in the targets' own units, T = 0.1, the soft-label
# term a batch mean.
PAPER = {
    "lambda_grc": 1.0, "lambda_mse": 1.0, "lambda_soft": 1.0, "lambda_mix": 0.0,
    "expert_share": 0.0, "standardize_mse": False, "temperature": 0.1, "soft_reduction": "mean",
}


def settings_of(kwargs, paper=False):
    """Every GroupDIRLoss setting the reference needs: the constructor's defaults (read from
    its signature: the recipe's values may change) or the paper's, updated by ``kwargs``."""
    params = inspect.signature(GroupDIRLoss.__init__).parameters
    base = {k: p.default for k, p in params.items() if p.default is not p.empty}
    return {**base, **(PAPER if paper else {}), **kwargs}


def make(device="cpu", *, n=10, out_features=1, dtype=torch.float32, paper=False, **kwargs):
    binner = GroupBinner(G).fit(torch.rand(200, dtype=torch.float64) ** 2 * 10)
    factory = GroupDIRLoss.paper if paper else GroupDIRLoss
    criterion = factory(binner, **kwargs).to(device)
    # experts that differ from each other (a fresh residual head's experts are all the base)
    head = MultiExpertHead(D, G, out_features, residual=False, device=device, dtype=dtype)
    features = torch.randn(n, D, device=device, dtype=dtype, requires_grad=True)
    shape = (n,) if out_features == 1 else (n, out_features)
    target = (torch.rand(shape, dtype=dtype) * 10).to(device)
    return criterion, head, features, target


# ---------------------------------------------------------------------------------------------
# Reference: the total from its parts, each computed independently.
# ---------------------------------------------------------------------------------------------
def ref_parts(criterion, output, features, target, groups=None, **kwargs):
    """(grc, mse, soft, mix) of the settings ``settings_of(kwargs)`` (pass ``paper=True`` for
    the paper's)."""
    s = settings_of({k: v for k, v in kwargs.items() if k != "paper"}, kwargs.get("paper"))
    binner = criterion.binner
    if groups is None:
        groups = binner(target)
    grc = group_contrastive_loss(
        features,
        groups,
        num_groups=binner.num_groups,
        temperature=s["temperature"],
        similarity=s["similarity"],
    )
    unit = float(binner.label_std) if s["standardize_mse"] else 1.0
    weights = ref_share_table(binner.num_groups, s["expert_share"])
    mse = torch.tensor(ref_expert_mse(output.experts, target, groups.cpu(), weights, unit),
                       dtype=torch.float64)
    adjustment = None
    if s["tau"] and criterion.training:
        counts = binner.counts.double().clamp_min(1.0)
        adjustment = s["tau"] * (counts / counts.sum()).log()
    soft = descending_soft_label_loss(
        output.logits.double(), groups, scale=s["scale"], step=s["step"],
        logit_adjustment=adjustment, reduction=s["soft_reduction"],
    )
    # the mixture of the raw logits (the training-time logit adjustment is the soft-label
    # term's), in the same unit as the expert MSE
    mix = torch.tensor(ref_mixture_mse(output.logits, output.experts, target, unit),
                       dtype=torch.float64)
    return grc, mse.to(grc.device), soft, mix.to(grc.device)


def ref_total(parts, **kwargs):
    s = settings_of({k: v for k, v in kwargs.items() if k != "paper"}, kwargs.get("paper"))
    return sum(s[f"lambda_{name}"] * p.detach().double() for name, p in zip(PARTS, parts))


# Settings that exercise every term and option of the objective.
OBJECTIVE_CASES = [
    {},
    {"paper": True},
    {"lambda_grc": 0.3, "lambda_mse": 2.0, "lambda_soft": 0.5},
    {"lambda_grc": 1.5, "temperature": 0.5, "similarity": "cosine", "scale": 2.0, "step": 2},
    {"tau": 0.7, "lambda_soft": 3.0},
    {"expert_share": 0.0},
    {"expert_share": 2.5, "standardize_mse": False},
    {"paper": True, "expert_share": 0.5, "lambda_mse": 3.0},
    {"soft_reduction": "sum"},
    {"lambda_mix": 2.5, "lambda_mse": 0.5},
    {"lambda_mix": 0.7, "standardize_mse": False, "tau": 0.5},
    {"paper": True, "lambda_mix": 0.5},
]


def case_id(kwargs):
    return ",".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"


@pytest.mark.parametrize("kwargs", OBJECTIVE_CASES, ids=case_id)
def test_total_is_weighted_sum_of_independent_parts(kwargs, device):
    criterion, head, features, target = make(device, **kwargs)
    groups = criterion.binner(target)
    output = head(features, groups)
    got = criterion(output, features, target)
    assert isinstance(got, GroupDIRLossOutput)
    grc, mse, soft, mix = ref_parts(criterion, output, features, target, **kwargs)
    torch.testing.assert_close(got.grc, grc.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.mse.double(), mse.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.soft.double(), soft.detach(), rtol=1e-5, atol=1e-6)
    if criterion.lambda_mix:
        torch.testing.assert_close(got.mix.double(), mix, rtol=1e-5, atol=1e-6)
    else:  # skipped, exactly 0
        assert got.mix.item() == 0.0
    total = ref_total((grc, mse, soft, mix), **kwargs)
    torch.testing.assert_close(got.loss.double(), total, rtol=1e-5, atol=1e-5)
    assert all(t.shape == () for t in got)


# The head terms run in one autograd node with an analytic backward (_HeadTerms): its loss
# and gradients, to the features and to every head parameter, against autograd through the
# term-by-term functional path (each term pinned to its loop reference elsewhere), float64.
@pytest.mark.parametrize("kwargs", OBJECTIVE_CASES, ids=case_id)
def test_fused_head_terms_match_the_term_by_term_path(kwargs):
    criterion, head, features, target = make(dtype=torch.float64, out_features=2, **kwargs)
    target = target + torch.arange(2.0, dtype=torch.float64)  # two different columns
    groups = criterion.binner(target[:, 0])
    output = head(features, groups)
    got = criterion(output, features, target, groups=groups)
    c, binner = criterion, criterion.binner
    unit = binner.label_std if c.standardize_mse else 1.0
    total = (
        c.lambda_grc * c.contrastive(features, groups)
        + c.lambda_mse * expert_mse_loss(output.experts, target, groups,
                                         table=c.expert_table, target_unit=unit)
        + c.lambda_soft * c.soft_label(output.logits, groups, group_counts=binner.counts)
        + c.lambda_mix * mixture_mse_loss(output.logits, output.experts, target, target_unit=unit)
    )
    # the soft-label table is a float32 buffer: 1e-6 (the rest to float64 rounding)
    torch.testing.assert_close(got.loss, total, rtol=1e-6, atol=1e-7)
    inputs = [features, *head.parameters()]
    grads = torch.autograd.grad(got.loss, inputs, retain_graph=True)
    for a, b in zip(grads, torch.autograd.grad(total, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_logit_adjustment_only_in_train_mode():
    criterion, head, features, target = make(tau=1.0)
    output = head(features, criterion.binner(target))
    train = criterion(output, features, target).soft
    criterion.eval()
    evaluated = criterion(output, features, target).soft
    plain = descending_soft_label_loss(output.logits, criterion.binner(target))
    torch.testing.assert_close(evaluated, plain.detach())
    assert not torch.allclose(train, evaluated)
    _, _, soft, _ = ref_parts(criterion.train(), output, features, target, tau=1.0)
    torch.testing.assert_close(train.double(), soft.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("paper", [False, True])
def test_mse_uses_experts_not_prediction(paper):
    criterion, head, features, target = make(paper=paper)
    output = head(features)  # an inference prediction, not teacher-forced
    garbage = HeadOutput(output.logits, output.experts, torch.full_like(output.prediction, 1e6))
    a, b = criterion(output, features, target), criterion(garbage, features, target)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.mse, b.mse)


def test_terms_are_batch_means():
    # Every term is a mean: duplicating the batch leaves the MSE and soft terms unchanged
    # (so the lambdas do not silently scale with the batch size).
    criterion, head, features, target = make(lambda_grc=0.0)
    x2, y2 = torch.cat([features, features]), torch.cat([target, target])
    one = criterion(head(features), features, target)
    two = criterion(head(x2), x2, y2)
    assert criterion.lambda_mix > 0
    torch.testing.assert_close(one.mse, two.mse)
    torch.testing.assert_close(one.soft, two.soft)
    torch.testing.assert_close(one.mix, two.mix)


# ---------------------------------------------------------------------------------------------
# Zero weights skip their term
# ---------------------------------------------------------------------------------------------
def _boom(*args, **kwargs):
    raise AssertionError("a term with weight 0 was computed")


@pytest.mark.parametrize("paper", [False, True])
@pytest.mark.parametrize("part", PARTS)
def test_zero_weight_skips_term(part, paper, monkeypatch):
    kwargs = {f"lambda_{part}": 0.0, "paper": paper}
    criterion, head, features, target = make(**kwargs)
    output = head(features, criterion.binner(target))
    expected = criterion(output, features, target)
    parts = ref_parts(criterion, output, features, target, **kwargs)
    if part == "grc":
        monkeypatch.setattr(criterion.contrastive, "forward", _boom)
    elif part == "soft":
        monkeypatch.setattr(criterion.soft_label, "forward", _boom)
    elif part == "mse":
        monkeypatch.setattr(dirloss.functional, "expert_mse_loss", _boom)
        if not criterion.lambda_mix:  # (the mixture term calls F.mse_loss itself)
            monkeypatch.setattr(F, "mse_loss", _boom)
    else:
        monkeypatch.setattr(dirloss.functional, "mixture_mse_loss", _boom)
        monkeypatch.setattr(dirloss.functional, "combine_experts", _boom)
    got = criterion(output, features, target)
    assert getattr(got, part).item() == 0.0
    torch.testing.assert_close(got.loss, expected.loss)
    torch.testing.assert_close(
        got.loss.double(), ref_total(parts, **kwargs), rtol=1e-5, atol=1e-5
    )


def test_zero_grc_weight_accepts_features_the_contrastive_term_rejects():
    criterion, head, features, target = make(lambda_grc=0.0)
    output = head(features, criterion.binner(target))
    int_features = torch.zeros(features.shape, dtype=torch.long)  # would raise in L_grc
    with pytest.raises(ValueError):
        group_contrastive_loss(int_features, criterion.binner(target), num_groups=G)
    out = criterion(output, int_features, target)
    assert out.grc.item() == 0.0 and torch.isfinite(out.loss)


@pytest.mark.parametrize("paper", [False, True])
def test_all_weights_zero_is_rejected(paper):
    # An objective with every lambda 0 trains nothing: the constructor refuses it, naming
    # every weight (the soft-mixture one included).
    binner = GroupBinner(G).fit(torch.rand(50) * 10)
    factory = GroupDIRLoss.paper if paper else GroupDIRLoss
    zeros = {f"lambda_{part}": 0.0 for part in PARTS}
    with pytest.raises(ValueError, match="expected at least one of .*lambda_mix"):
        factory(binner, **zeros)


@pytest.mark.parametrize("part", PARTS)
def test_one_weight_alone_is_accepted(part):
    criterion, head, features, target = make(
        **{f"lambda_{p}": float(p == part) for p in PARTS}
    )
    out = criterion(head(features, criterion.binner(target)), features, target)
    for name in PARTS:
        assert (getattr(out, name).item() == 0.0) == (name != part), name
    torch.testing.assert_close(out.loss, getattr(out, part))
    out.loss.backward()


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------
def test_parts_detached_and_gradients_reach_head_and_features(device):
    criterion, head, features, target = make(device)
    out = criterion(head(features, criterion.binner(target)), features, target)
    assert out.loss.requires_grad
    assert not any(getattr(out, name).requires_grad for name in PARTS)
    out.loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_grc_alone_reaches_features():
    criterion, head, features, target = make(lambda_mse=0.0, lambda_soft=0.0, lambda_mix=0.0)
    out = criterion(head(features.detach()), features, target)
    out.loss.backward()
    assert features.grad.abs().sum() > 0


@pytest.mark.parametrize("paper", [False, True])
def test_float64_parts_stay_float64(paper):
    # A float64 head and target: every part, the MSE included, is computed in float64. The
    # expert-share table is built as a float32 buffer (like the soft-label table), so with
    # expert_share > 0 its weights carry float32 rounding: the paper's MSE is exact.
    criterion, head, features, target = make(dtype=torch.float64, paper=paper)
    output = head(features, criterion.binner(target))
    out = criterion(output, features, target)
    _, mse, _, mix = ref_parts(criterion, output, features, target, paper=paper)
    assert out.mse.dtype == torch.float64 and out.mix.dtype == torch.float64
    assert out.loss.dtype == torch.float64
    tol = 1e-12 if paper else 1e-6
    torch.testing.assert_close(out.mse, mse.detach(), rtol=tol, atol=tol)
    if criterion.lambda_mix:  # no float32 table in the mixture: exact to float64 rounding
        torch.testing.assert_close(out.mix, mix, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("part", PARTS)
def test_gradcheck(part):
    weights = {f"lambda_{p}": float(p == part) for p in PARTS}
    criterion, head, features, target = make(n=5, dtype=torch.float64, **weights)
    groups = criterion.binner(target)
    params = {k: v.detach().clone().requires_grad_() for k, v in head.named_parameters()}
    names = list(params)

    def fn(x, *values):
        output = torch.func.functional_call(head, dict(zip(names, values)), (x, groups))
        return criterion(output, x, target).loss

    x = features.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, *params.values()))


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_binner_must_be_fitted_group_binner():
    with pytest.raises(ValueError, match="fit"):
        GroupDIRLoss(GroupBinner(G))
    with pytest.raises(ValueError, match="GroupBinner"):
        GroupDIRLoss(torch.nn.Identity())
    with pytest.raises(ValueError, match="GroupBinner"):
        GroupDIRLoss(lambda y: y.long())


@pytest.mark.parametrize(
    "name", ["lambda_grc", "lambda_mse", "lambda_soft", "lambda_mix", "tau", "expert_share"]
)
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_weights(name, value):
    binner = GroupBinner(G).fit(torch.rand(20))
    with pytest.raises(ValueError, match=name):
        GroupDIRLoss(binner, **{name: value})


def test_bad_soft_label_and_contrastive_params():
    binner = GroupBinner(G).fit(torch.rand(20))
    with pytest.raises(ValueError, match="scale"):
        GroupDIRLoss(binner, scale=0.1)
    with pytest.raises(ValueError, match="temperature"):
        GroupDIRLoss(binner, temperature=0.0)
    with pytest.raises(ValueError, match="similarity"):
        GroupDIRLoss(binner, similarity="dot")
    with pytest.raises(ValueError, match="is not a valid value for reduction"):
        GroupDIRLoss(binner, soft_reduction="average")


@pytest.mark.parametrize("paper", [False, True])
def test_prediction_instead_of_head_output_raises(paper):
    criterion, head, features, target = make(paper=paper)
    out = head(features)
    with pytest.raises(ValueError, match="HeadOutput"):
        criterion(out.prediction, features, target)
    with pytest.raises(ValueError, match="HeadOutput"):
        criterion(tuple(out), features, target)  # a plain tuple is not a HeadOutput either


def test_head_num_groups_mismatch():
    criterion, _, features, target = make()
    head = MultiExpertHead(D, G + 1)
    with pytest.raises(ValueError, match=rf"expected a head with num_groups={G}"):
        criterion(head(features), features, target)


@pytest.mark.parametrize(
    "target_shape, out_features",
    [((11,), 1), ((10, 2), 1), ((10, 1, 1), 1), ((10,), 3), ((10, 2), 3)],
)
def test_target_shape_mismatch(target_shape, out_features):
    criterion, head, features, _ = make(out_features=out_features)
    groups = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="expected target of shape"):
        criterion(head(features), features, torch.rand(target_shape), groups=groups)


@pytest.mark.parametrize("shape", [(11, D), (9, D), (10,), (10, D, 1)])
def test_features_shape_mismatch(shape):
    criterion, head, features, target = make()
    with pytest.raises(ValueError, match="expected features of shape"):
        criterion(head(features), torch.randn(shape), target)


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_integer_target(dtype):
    criterion, head, features, target = make()
    with pytest.raises(ValueError, match="expected a floating-point target"):
        criterion(head(features), features, target.to(dtype))


def test_device_mismatch():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    criterion, head, features, target = make()
    with pytest.raises(ValueError, match="same device"):
        criterion(head(features), features, target.cuda())


# ---------------------------------------------------------------------------------------------
# validate=True
# ---------------------------------------------------------------------------------------------
def test_validate_counts_bad_targets():
    criterion, head, features, target = make(validate=True)
    bad = target.detach().clone()
    bad[[1, 4]] = float("nan")
    bad[7] = float("inf")
    with pytest.raises(ValueError, match=r"3 NaN/inf of 10"):
        criterion(head(features), features, bad)
    criterion(head(features), features, target)  # finite targets pass


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_validate_counts_bad_features(value):
    criterion, head, features, target = make(validate=True)
    bad = features.detach().clone()
    bad[3, 1] = value
    bad[5, [0, 4]] = value
    with pytest.raises(ValueError, match=rf"expected finite features, got 3 NaN/inf of {10 * D}"):
        criterion(head(features), bad, target)
    criterion(head(features), features, target)  # finite features pass


def test_without_validate_nan_target_makes_mse_nan():
    # Documented: without validate a NaN target does not raise; it lands in the last group,
    # so L_grc and L_soft stay finite, while the MSE terms (and so the loss) are NaN.
    criterion, head, features, target = make()
    bad = target.detach().clone()
    bad[2] = float("nan")
    out = criterion(head(features), features, bad)
    assert criterion.binner(bad)[2].item() == G - 1
    assert torch.isnan(out.mse) and torch.isnan(out.mix) and torch.isnan(out.loss)
    assert torch.isfinite(out.grc) and torch.isfinite(out.soft)


# ---------------------------------------------------------------------------------------------
# groups= override and multi-output targets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("paper", [False, True])
def test_groups_override_for_three_column_targets(paper, device):
    kwargs = {"lambda_mse": 2.0, "paper": paper}
    criterion, head, features, target = make(device, out_features=3, **kwargs)
    groups = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 0, 1], device=device)
    output = head(features, groups)
    got = criterion(output, features, target, groups=groups)
    grc, mse, soft, mix = ref_parts(criterion, output, features, target, groups, **kwargs)
    if paper:  # the paper's MSE: the mean over N x 3 entries of the true group's expert
        pred = torch.stack([output.experts[i, groups[i]] for i in range(10)])
        torch.testing.assert_close(mse, F.mse_loss(pred.double(), target.double()))
    torch.testing.assert_close(got.mse.double(), mse.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.grc, grc.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.soft.double(), soft.detach(), rtol=1e-5, atol=1e-6)
    if criterion.lambda_mix:  # the mixture term: the groups do not enter it
        torch.testing.assert_close(got.mix.double(), mix, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        got.loss.double(), ref_total((grc, mse, soft, mix), **kwargs), rtol=1e-5, atol=1e-5
    )


def test_missing_groups_for_three_column_target():
    criterion, head, features, target = make(out_features=3)
    with pytest.raises(ValueError, match="expected groups="):
        criterion(head(features), features, target)


@pytest.mark.parametrize("paper", [False, True])
def test_groups_override_replaces_binning(paper):
    criterion, head, features, target = make(paper=paper)
    groups = torch.zeros(10, dtype=torch.long)
    assert not torch.equal(criterion.binner(target), groups)
    output = head(features, groups)
    got = criterion(output, features, target, groups=groups)
    parts = ref_parts(criterion, output, features, target, groups, paper=paper)
    torch.testing.assert_close(
        got.loss.double(), ref_total(parts, paper=paper), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "groups", [torch.zeros(9, dtype=torch.long), torch.zeros(10)], ids=["short", "float"]
)
@pytest.mark.parametrize("part", PARTS)
def test_bad_groups_override(groups, part):
    # groups= must be (N,) integers whichever terms are on: unchecked, short or float groups
    # raised a RuntimeError deep in gather / mse_loss, or (L_grc only) float groups were
    # silently treated as continuous labels.
    weights = {f"lambda_{p}": float(p == part) for p in PARTS}
    criterion, head, features, target = make(**weights)
    with pytest.raises(ValueError, match="expected"):
        criterion(head(features), features, target, groups=groups)


def test_column_target_equals_flat_target():
    criterion, head, features, target = make()
    output = head(features)
    a = criterion(output, features, target)
    b = criterion(output, features, target[:, None])
    assert torch.equal(a.loss, b.loss)


# ---------------------------------------------------------------------------------------------
# Degenerate batches
# ---------------------------------------------------------------------------------------------
def test_batch_of_one():
    # binner(target[:, 0]) must map a (1,) target to (1,) groups, not a 0-d tensor.
    criterion, head, features, target = make(n=1)
    out = criterion(head(features), features, target)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_empty_batch():
    # STYLE 8: an empty batch gives a finite loss and backward works (F.mse_loss of an empty
    # batch alone would be NaN).
    criterion, head, features, target = make(n=0)
    out = criterion(head(features), features, target)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_one_group_batch():
    criterion, head, features, _ = make(n=6)
    target = torch.full((6,), 0.01)  # every sample in group 0
    out = criterion(head(features), features, target)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(features.grad).all()


# ---------------------------------------------------------------------------------------------
# Buffers, dtypes, state (device moves and autocast: TestBattery at the end)
# ---------------------------------------------------------------------------------------------
def test_state_dict_includes_binner_and_round_trips():
    criterion, head, features, target = make(tau=0.5)
    state = criterion.state_dict()
    assert {
        "binner.edges",
        "binner.counts",
        "binner.centers",
        "binner.label_std",
        "soft_label.table",
        "soft_label.logit_adjustment",
    } <= set(state)
    other = GroupBinner(G).fit(torch.rand(30) * 3 + 20)
    fresh = GroupDIRLoss(other, tau=0.5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.binner.edges, criterion.binner.edges)
    assert torch.equal(fresh.binner.counts, criterion.binner.counts)
    output = head(features)
    assert torch.equal(
        fresh(output, features, target).loss, criterion(output, features, target).loss
    )


def test_to_float64():
    criterion, head, features, target = make()
    output = head(features)
    ref = criterion(output, features, target)
    criterion = criterion.to(torch.float64)
    head = head.to(torch.float64)
    x64 = features.detach().double()
    out = criterion(head(x64), x64, target.double())
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, ref.loss.double().detach(), rtol=1e-5, atol=1e-5)
    assert criterion.binner.edges.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_casting_the_loss_keeps_the_bin_edges(dtype):
    # .to(dtype) / .half() must not cast the binner's float64 edges (and centers): rounded
    # edges move labels near an edge to another group, and overflow to inf in float16.
    binner = GroupBinner(3).fit([0.0, 50.0, 100.0])
    y = torch.tensor([33.33, 33.334, 66.66, 66.67, 50.0, 100.0])
    before = binner(y)
    criterion = GroupDIRLoss(binner).to(dtype)
    assert criterion.binner.edges.dtype == torch.float64
    assert torch.equal(criterion.binner(y), before)


# ---------------------------------------------------------------------------------------------
# torch.compile of a training step
# ---------------------------------------------------------------------------------------------
def test_compile_fullgraph_training_step_matches_eager(device):
    torch._dynamo.reset()
    criterion, head, _, target = make(device, tau=0.5)
    backbone = torch.nn.Linear(3, D).to(device)
    x = torch.randn(10, 3, device=device)

    def step(x, target):
        f = backbone(x)
        return criterion(head(f, criterion.binner(target)), f, target).loss

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager = step(x, target)
    eager_grads = torch.autograd.grad(
        eager, [backbone.weight, head.experts.weight, head.classifier.weight]
    )
    got = compiled(x, target)
    got_grads = torch.autograd.grad(
        got, [backbone.weight, head.experts.weight, head.classifier.weight]
    )
    torch.testing.assert_close(got, eager)
    for a, b in zip(got_grads, eager_grads):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 12), seed=st.integers(0, 2**31 - 1))
def test_permutation_invariance(n, seed):
    gen = torch.Generator().manual_seed(seed)
    binner = GroupBinner(G).fit(torch.rand(50, generator=gen, dtype=torch.float64) * 10)
    criterion = GroupDIRLoss(binner, tau=0.5, lambda_mse=0.7)
    head = MultiExpertHead(D, G, dtype=torch.float64)
    features = torch.randn(n, D, generator=gen, dtype=torch.float64)
    target = torch.rand(n, generator=gen, dtype=torch.float64) * 10
    perm = torch.randperm(n, generator=gen)
    a = criterion(head(features), features, target)
    b = criterion(head(features[perm]), features[perm], target[perm])
    for x, y in zip(a, b):
        assert math.isclose(x.item(), y.item(), rel_tol=1e-6, abs_tol=1e-6)


# ---------------------------------------------------------------------------------------------
# The recipe's options and the paper's objective
# ---------------------------------------------------------------------------------------------
def test_defaults_are_the_module_constants():
    from dirloss import objective

    criterion = GroupDIRLoss(GroupBinner(G).fit(torch.rand(50)))
    assert criterion.lambda_grc == objective.DEFAULT_LAMBDA_GRC
    assert criterion.lambda_mse == objective.DEFAULT_LAMBDA_MSE
    assert criterion.expert_share == objective.DEFAULT_EXPERT_SHARE
    assert criterion.lambda_mix == objective.DEFAULT_LAMBDA_MIX
    assert criterion.standardize_mse and criterion.soft_label.reduction == "mean"


def test_paper_settings():
    binner = GroupBinner(G).fit(torch.rand(50))
    criterion = GroupDIRLoss.paper(binner)
    assert (criterion.lambda_grc, criterion.lambda_mse, criterion.lambda_soft) == (1.0, 1.0, 1.0)
    assert criterion.lambda_mix == 0.0  # the paper has no soft-mixture term
    assert criterion.expert_share == 0.0 and not criterion.standardize_mse
    assert criterion.contrastive.temperature == 0.1
    assert criterion.soft_label.reduction == "mean"
    assert GroupDIRLoss.paper(binner, authors_weighting=True).soft_label.reduction == "sum"
    overridden = GroupDIRLoss.paper(binner, lambda_mse=2.0, tau=0.5)
    assert overridden.lambda_mse == 2.0 and overridden.soft_label.tau == 0.5
    assert overridden.expert_share == 0.0 and overridden.lambda_mix == 0.0
    assert GroupDIRLoss.paper(binner, lambda_mix=0.5).lambda_mix == 0.5


@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("standardize_mse", [False, True])
def test_expert_share_zero_is_the_true_group_mse(standardize_mse, out_features):
    # The paper's MSE: only the true group's expert, a plain mean over N x O entries (divided
    # by label_std^2 when standardized).
    criterion, head, features, target = make(
        out_features=out_features, dtype=torch.float64, expert_share=0.0,
        standardize_mse=standardize_mse,
    )
    groups = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 0, 1])
    output = head(features)
    got = criterion(output, features, target, groups=groups)
    pred = torch.stack([output.experts[i, groups[i]] for i in range(10)])
    expected = F.mse_loss(pred, target.reshape(pred.shape))
    if standardize_mse:
        expected = expected / criterion.binner.label_std**2
    torch.testing.assert_close(got.mse, expected.detach(), rtol=1e-12, atol=1e-12)


def ref_paper_objective(output, features, target, groups, authors_weighting=False):
    """dirloss 0.1 by hand (float64): L_grc (T = 0.1) + the plain mean MSE of the true
    group's expert + the batch mean (the authors: sum) of the descending soft-label CE."""
    n = groups.shape[0]
    grc = group_contrastive_loss(features, groups, num_groups=G, temperature=0.1)
    pred = torch.stack([output.experts[i, groups[i]] for i in range(n)])
    mse = ((pred - target.reshape(pred.shape)) ** 2).mean()
    p = descending_soft_label_table(G, dtype=torch.float64)
    ce = []
    for i in range(n):
        z = output.logits[i]
        log_softmax = z - z.max() - (z - z.max()).exp().sum().log()
        ce.append(-sum(p[groups[i], j] * log_softmax[j] for j in range(G)))
    soft = sum(ce) if authors_weighting else sum(ce) / n
    return grc, mse, soft


@pytest.mark.parametrize("authors_weighting", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_paper_reproduces_the_01_objective(authors_weighting, residual):
    binner = GroupBinner(G).fit(torch.rand(200, dtype=torch.float64) ** 2 * 10)
    criterion = GroupDIRLoss.paper(binner, authors_weighting=authors_weighting)
    head = MultiExpertHead(D, G, residual=residual, inference="argmax", dtype=torch.float64)
    if residual:  # experts that differ
        torch.nn.init.normal_(head.experts.weight)
    n = 12
    features = torch.randn(n, D, dtype=torch.float64, requires_grad=True)
    target = torch.rand(n, dtype=torch.float64) * 10
    groups = binner(target)
    output = head(features, groups)
    got = criterion(output, features, target)
    grc, mse, soft = ref_paper_objective(output, features, target, groups, authors_weighting)
    # the soft-label table is a float32 buffer: 1e-6 (the rest agrees to float64 rounding)
    torch.testing.assert_close(got.grc, grc.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.mse, mse.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.soft, soft.detach(), rtol=1e-6, atol=1e-6)
    assert got.mix.item() == 0.0  # no soft-mixture term in the paper
    torch.testing.assert_close(got.loss, (grc + mse + soft).detach(), rtol=1e-6, atol=1e-6)
    # gradients too
    grads = torch.autograd.grad(got.loss, [features, head.experts.weight], retain_graph=True)
    ref_grads = torch.autograd.grad(grc + mse + soft, [features, head.experts.weight])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_authors_weighting_sums_the_soft_term():
    criterion, head, features, target = make(n=12, paper=True, dtype=torch.float64)
    authors = GroupDIRLoss.paper(criterion.binner, authors_weighting=True)
    output = head(features)
    mean, summed = criterion(output, features, target), authors(output, features, target)
    torch.testing.assert_close(summed.soft, 12 * mean.soft, rtol=1e-12, atol=1e-12)
    assert torch.equal(summed.grc, mean.grc) and torch.equal(summed.mse, mean.mse)
    torch.testing.assert_close(
        summed.loss, mean.grc + mean.mse + 12 * mean.soft, rtol=1e-12, atol=1e-12
    )


@settings(max_examples=25, deadline=None)
@given(
    c=st.floats(1e-2, 1e2),
    d=st.floats(-1e2, 1e2),
    tau=st.sampled_from([0.0, 0.5]),
    n=st.integers(2, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_recipe_is_unit_free(c, d, tau, n, seed):
    # Targets y -> c y + d (binner refitted, experts c * experts + d): the default objective,
    # and each of its terms (the soft mixture too: its weights sum to one), is unchanged.
    gen = torch.Generator().manual_seed(seed)
    train = torch.rand(100, generator=gen, dtype=torch.float64) ** 2 * 10
    binner = GroupBinner(G).fit(train)
    moved = GroupBinner(G).fit(c * train + d)
    target = torch.rand(n, generator=gen, dtype=torch.float64) * 10
    # labels on a bin edge may round into the next group after the move: skip those draws
    assume(torch.equal(binner(target), moved(c * target + d)))
    assume(torch.equal(binner.counts, moved.counts))
    head = MultiExpertHead(D, G, dtype=torch.float64)
    torch.nn.init.normal_(head.experts.weight, generator=gen)
    features = torch.randn(n, D, generator=gen, dtype=torch.float64)
    out = head(features)
    out_moved = HeadOutput(out.logits, c * out.experts + d, c * out.prediction + d)
    a = GroupDIRLoss(binner, tau=tau)(out, features, target)
    b = GroupDIRLoss(moved, tau=tau)(out_moved, features, c * target + d)
    assert a.mix.item() > 0  # the default objective has the mixture term
    for name in ("loss", *PARTS):
        x, y = getattr(a, name).item(), getattr(b, name).item()
        assert math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9), (name, x, y)


# ---------------------------------------------------------------------------------------------
# Group index >= G or < 0
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("validate", [False, True])
@pytest.mark.parametrize("lambdas", ["all", "soft only", "grc only", "mse only"])
def test_group_dir_loss_rejects_out_of_range_groups(value, validate, lambdas):
    weights = {"all": {}, "soft only": {"lambda_grc": 0, "lambda_mse": 0, "lambda_mix": 0},
               "grc only": {"lambda_soft": 0, "lambda_mse": 0, "lambda_mix": 0},
               "mse only": {"lambda_grc": 0, "lambda_soft": 0, "lambda_mix": 0}}[lambdas]
    criterion = GroupDIRLoss(fitted_binner(), validate=validate, **weights)
    head = MultiExpertHead(3, G)
    features, target = torch.randn(6, 3), torch.rand(6) * 10
    output = head(features)  # no groups: the head itself does not check here
    with pytest.raises(ValueError, match=range_error("groups")):
        criterion(output, features, target, groups=bad_groups(value))
    assert torch.isfinite(criterion(output, features, target, groups=bad_groups(0)).loss)


# ---------------------------------------------------------------------------------------------
# NaN/inf features with GroupDIRLoss(validate=True)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_validate_rejects_non_finite_features(bad):
    criterion = GroupDIRLoss(fitted_binner(), validate=True)
    head = MultiExpertHead(3, G)
    features, target = torch.randn(6, 3), torch.rand(6) * 10
    features[1, 2] = bad
    with pytest.raises(ValueError, match=r"expected finite features, got 1 NaN/inf of 18"):
        criterion(head(features, criterion.binner(target)), features, target)


# ---------------------------------------------------------------------------------------------
# Binner refitted after GroupDIRLoss(binner, tau=1); a saved tau loads
# ---------------------------------------------------------------------------------------------
def test_refitted_binner_moves_the_logit_adjustment():
    binner = GroupBinner(G, low=0.0, high=10.0).fit(torch.linspace(0.0, 10.0, 100))
    criterion = GroupDIRLoss(binner, tau=1.0, lambda_grc=0.0, lambda_mse=0.0, lambda_mix=0.0)
    head = MultiExpertHead(3, G)
    features, target = torch.randn(8, 3), torch.rand(8) * 10
    groups = binner(target)
    logits = head(features).logits

    def expected(counts: torch.Tensor) -> torch.Tensor:
        prior = counts.double().clamp_min(1) / counts.double().clamp_min(1).sum()
        adjustment = prior.log().float()
        return descending_soft_label_loss(logits, groups, logit_adjustment=adjustment)

    before = criterion(head(features), features, target, groups=groups).soft
    torch.testing.assert_close(before, expected(binner.counts).detach())
    old_counts = binner.counts.clone()
    binner.fit(torch.rand(300) ** 4 * 10)  # a skewed label set: other counts, same edges
    assert not torch.equal(binner.counts, old_counts)
    after = criterion(head(features), features, target, groups=groups).soft
    torch.testing.assert_close(after, expected(binner.counts).detach())
    assert not torch.allclose(after, before)


def test_group_dir_loss_loads_tau():
    binner = fitted_binner()
    fresh = GroupDIRLoss(binner, tau=1.0)
    fresh.load_state_dict(GroupDIRLoss(binner, tau=2.0).state_dict())
    assert fresh.soft_label.tau == 2.0


# ---------------------------------------------------------------------------------------------
# head(...).prediction passed to GroupDIRLoss
# ---------------------------------------------------------------------------------------------
def test_prediction_instead_of_head_output_names_head_output():
    criterion = GroupDIRLoss(fitted_binner())
    head = MultiExpertHead(3, G)
    features, target = torch.randn(6, 3), torch.rand(6) * 10
    with pytest.raises(ValueError, match=r"expected output to be the HeadOutput .* got Tensor"):
        criterion(head(features).prediction, features, target)
    assert isinstance(head(features), HeadOutput)


# ---------------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py)
# ---------------------------------------------------------------------------------------------
def objective_inputs(dtype, device):
    """A head's output as tensors (logits, experts), the backbone features, the target and
    the groups (passed, so that no finite difference of the target crosses a bin edge)."""
    n = 8
    return (
        torch.randn(n, G, dtype=dtype, device=device) * 2,
        torch.randn(n, G, 1, dtype=dtype, device=device) * 3 + 5,
        torch.randn(n, D, dtype=dtype, device=device),
        torch.rand(n, dtype=dtype, device=device) * 10,
        torch.arange(n, device=device) % G,
    )


def objective_call(criterion, logits, experts, features, target, groups):
    output = HeadOutput(logits, experts, dirloss.functional.select_expert(experts, groups))
    return criterion(output, features, target, groups)


def objective_spec(name, tau=0.0, paper=False, **kwargs):
    factory = GroupDIRLoss.paper if paper else GroupDIRLoss

    def build():
        binner = GroupBinner(G).fit(torch.rand(200, dtype=torch.float64) ** 2 * 10)
        return factory(binner, tau=tau, **kwargs)

    def fresh():  # another binner (edges, counts, label_std) and tau: overwritten by the load
        binner = GroupBinner(G).fit(torch.rand(30, dtype=torch.float64) * 3 + 20)
        return factory(binner, tau=1.0, **kwargs)

    def function(criterion, logits, experts, features, target, groups):
        """The terms one by one from the functional ops (the module fuses the head's three
        into one autograd node)."""
        binner, soft_label = criterion.binner, criterion.soft_label
        target = target[:, None]  # (N, 1), as the experts' (N, G, 1)
        unit = binner.label_std if criterion.standardize_mse else 1.0
        zero = experts.new_zeros(())
        grc = mse = soft = mix = zero
        if criterion.lambda_grc:
            contrastive = criterion.contrastive
            grc = group_contrastive_loss(
                features, groups, num_groups=G, temperature=contrastive.temperature,
                similarity=contrastive.similarity,
            )
        if criterion.lambda_mse:
            mse = expert_mse_loss(
                experts, target, groups, table=criterion.expert_table, target_unit=unit
            )
        if criterion.lambda_soft:
            adjustment = None
            if tau and criterion.training:
                counts = binner.counts.to(torch.float32).clamp_min(1.0)
                adjustment = tau * (counts / counts.sum()).log()
            soft = descending_soft_label_loss(
                logits, groups, scale=soft_label.scale, step=soft_label.step,
                logit_adjustment=adjustment, reduction=soft_label.reduction,
            )
        if criterion.lambda_mix:
            mix = mixture_mse_loss(logits, experts, target, target_unit=unit)
        loss = (
            criterion.lambda_grc * grc + criterion.lambda_mse * mse
            + criterion.lambda_soft * soft + criterion.lambda_mix * mix
        )
        return GroupDIRLossOutput(loss, grc.detach(), mse.detach(), soft.detach(), mix.detach())

    return Spec(
        name,
        build=build,
        inputs=objective_inputs,
        function=function,
        call=objective_call,
        differentiable=lambda out: (out.loss,),
        grad_inputs=(0, 1, 2, 3),
        reductions=(),
        # one analytic node for the head's terms, other kernels than the functional ops
        exact_function=False,
        function_tol=1e-10,
        # loss and parts from inputs of a bf16 head and backbone; the target stays float32
        autocast_inputs=(0, 1, 2),
        fresh=fresh,
        inductor=name == "recipe",
    )


TestBattery = battery(
    objective_spec("recipe"),
    objective_spec("paper", paper=True),
    objective_spec("tau-sum", tau=0.5, soft_reduction="sum", expert_share=2.5),
    objective_spec("cosine-unit-free", similarity="cosine", temperature=0.5,
                   standardize_mse=False, lambda_mix=2.0, scale=2.0, step=2),
)
