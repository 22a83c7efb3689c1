"""MultiExpertHead against per-group linear maps computed by hand (float64 loops)."""

from __future__ import annotations

import math

import pytest
import torch
from _bad_groups import OUT_OF_RANGE, G, bad_groups, range_error
from _battery import Spec, battery
from _references import ref_argmax, ref_combine
from torch import nn

from dirloss import GroupBinner, HeadOutput, MultiExpertHead, select_inference
from dirloss import functional as DF


# ---------------------------------------------------------------------------------------------
# Reference: plain loops written straight from the definitions.
# ---------------------------------------------------------------------------------------------
def ref_head(head, x):
    """logits[i][g] = W_c[g] . x_i + b_c[g];  experts[i][g][o] = W_g[o] . x_i + b_g[o]
    (+ W_0[o] . x_i + b_0[o], the shared base, when the head is residual)."""
    g, o = head.num_groups, head.out_features
    wc = head.classifier.weight.detach().double().cpu().tolist()
    bc = (
        head.classifier.bias.detach().double().cpu().tolist()
        if head.classifier.bias is not None
        else [0.0] * g
    )
    we = head.experts.weight.detach().double().cpu().reshape(g, o, -1).tolist()
    be = (
        head.experts.bias.detach().double().cpu().reshape(g, o).tolist()
        if head.experts.bias is not None
        else [[0.0] * o for _ in range(g)]
    )
    if head.base is not None:
        w0 = head.base.weight.detach().double().cpu().tolist()
        b0 = (
            head.base.bias.detach().double().cpu().tolist()
            if head.base.bias is not None
            else [0.0] * o
        )
    else:
        w0, b0 = [[0.0] * head.in_features for _ in range(o)], [0.0] * o
    xs = x.detach().double().cpu().tolist()
    logits, experts = [], []
    for xi in xs:
        logits.append([sum(w * v for w, v in zip(wc[k], xi)) + bc[k] for k in range(g)])
        base = [sum(w * v for w, v in zip(w0[c], xi)) + b0[c] for c in range(o)]
        experts.append(
            [
                [sum(w * v for w, v in zip(we[k][c], xi)) + be[k][c] + base[c] for c in range(o)]
                for k in range(g)
            ]
        )
    return logits, experts


def make_head(*args, residual, **kwargs):
    """A head whose experts differ: a residual head's zero deltas are replaced by random ones."""
    head = MultiExpertHead(*args, residual=residual, **kwargs)
    if residual:
        with torch.no_grad():
            for p in head.experts.parameters():
                p.normal_()
    return head


def ref_soft(logit_row, expert_rows):
    m = max(logit_row)
    e = [math.exp(v - m) for v in logit_row]
    w = [v / sum(e) for v in e]
    return [
        sum(w[k] * expert_rows[k][c] for k in range(len(w))) for c in range(len(expert_rows[0]))
    ]


def as_tensor(values, like):
    return torch.tensor(values, dtype=torch.float64).to(like.device)


# ---------------------------------------------------------------------------------------------
# Shapes and the three prediction modes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
def test_output_shapes(out_features, inference, device):
    head = MultiExpertHead(6, 4, out_features, inference=inference, device=device)
    out = head(torch.randn(5, 6, device=device))
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (5, 4)
    assert out.experts.shape == (5, 4, out_features)
    assert out.prediction.shape == (5, out_features)
    out = head(torch.randn(5, 6, device=device), torch.tensor([0, 1, 2, 3, 0], device=device))
    assert out.prediction.shape == (5, out_features)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_logits_and_experts_match_per_group_linear_maps(out_features, bias, residual, device):
    head = make_head(
        6, 4, out_features, bias=bias, residual=residual, device=device, dtype=torch.float64
    )
    x = torch.randn(5, 6, device=device, dtype=torch.float64)
    logits, experts = ref_head(head, x)
    out = head(x)
    torch.testing.assert_close(out.logits, as_tensor(logits, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.experts, as_tensor(experts, x), rtol=1e-12, atol=1e-12)
    # expert g is the linear map of rows g*O .. g*O+O-1 of experts.weight (+ the base)
    w = head.experts.weight.reshape(4, out_features, 6)
    base = head.base(x) if residual else 0.0
    for g in range(4):
        expected = x @ w[g].T + (head.experts.bias.reshape(4, out_features)[g] if bias else 0.0)
        torch.testing.assert_close(out.experts[:, g], expected + base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
def test_teacher_forcing_picks_true_group_expert(out_features, inference, residual, device):
    head = make_head(
        6, 4, out_features, inference=inference, residual=residual, device=device,
        dtype=torch.float64,
    )
    x = torch.randn(7, 6, device=device, dtype=torch.float64)
    groups = torch.tensor([0, 3, 1, 1, 2, 3, 0], device=device)
    _, experts = ref_head(head, x)
    ref = [experts[i][groups[i].item()] for i in range(7)]
    out = head(x, groups)
    torch.testing.assert_close(out.prediction, as_tensor(ref, x), rtol=1e-12, atol=1e-12)
    for i in range(7):  # exactly the expert tensor's entry
        assert torch.equal(out.prediction[i], out.experts[i, groups[i]])


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("out_features", [1, 3])
def test_argmax_inference_picks_argmax_expert(out_features, residual, device):
    head = make_head(
        6, 5, out_features, inference="argmax", residual=residual, device=device,
        dtype=torch.float64,
    )
    x = torch.randn(9, 6, device=device, dtype=torch.float64) * 3
    logits, experts = ref_head(head, x)
    ref = [experts[i][ref_argmax(logits[i])] for i in range(9)]
    out = head(x)
    torch.testing.assert_close(out.prediction, as_tensor(ref, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("out_features", [1, 3])
def test_soft_inference_is_softmax_mixture(out_features, residual, device):
    head = make_head(
        6, 5, out_features, inference="soft", residual=residual, device=device,
        dtype=torch.float64,
    )
    x = torch.randn(9, 6, device=device, dtype=torch.float64) * 3
    logits, experts = ref_head(head, x)
    ref = [ref_soft(logits[i], experts[i]) for i in range(9)]
    out = head(x)
    torch.testing.assert_close(out.prediction, as_tensor(ref, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("top_k", [1, 2, 3, 5])
def test_topk_inference_mixes_the_top_k_experts(top_k, device):
    head = make_head(6, 5, 2, inference="topk", residual=True, device=device, dtype=torch.float64)
    head.top_k = top_k
    x = torch.randn(9, 6, device=device, dtype=torch.float64) * 3
    logits, experts = ref_head(head, x)
    ref = ref_combine(as_tensor(logits, x), as_tensor(experts, x), "topk", top_k=top_k)
    torch.testing.assert_close(head(x).prediction, as_tensor(ref, x), rtol=1e-12, atol=1e-12)


def test_top_k_default_checked_and_shown_in_repr():
    head = MultiExpertHead(4, 3)
    assert head.top_k == DF.DEFAULT_TOP_K == 3 and "top_k" not in repr(head)
    head.inference = "topk"
    assert "top_k=3" in repr(head)
    assert MultiExpertHead.from_linear(nn.Linear(4, 1), 3, top_k=2).top_k == 2
    for bad in (0, -2, 1.5, True, None):
        with pytest.raises(ValueError, match="expected top_k to be a positive int"):
            MultiExpertHead(4, 3, top_k=bad)
        with pytest.raises(ValueError, match="expected top_k to be a positive int"):
            head.top_k = bad
    assert head.top_k == 3


def test_default_inference_is_soft_and_residual():
    head = MultiExpertHead(4, 3)
    assert head.inference == "soft" and head.residual and head.base is not None


@pytest.mark.parametrize("residual", [True, False])
def test_inference_mode_can_be_switched(residual):
    head = make_head(4, 3, inference="argmax", residual=residual, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64) * 3
    logits, experts = ref_head(head, x)
    argmax = as_tensor([experts[i][ref_argmax(logits[i])] for i in range(6)], x)
    torch.testing.assert_close(head(x).prediction, argmax, rtol=1e-12, atol=1e-12)
    head.inference = "soft"
    soft = head(x).prediction
    torch.testing.assert_close(
        soft, as_tensor([ref_soft(logits[i], experts[i]) for i in range(6)], x)
    )
    head.inference = "argmax"
    torch.testing.assert_close(head(x).prediction, argmax, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", ["mean", "Soft", "", None])
def test_bad_inference_assignment_raises_and_keeps_mode(value):
    head = MultiExpertHead(4, 3, inference="argmax")
    with pytest.raises(ValueError, match="inference"):
        head.inference = value
    assert head.inference == "argmax"


def test_empty_batch_and_batch_of_one(device):
    head = MultiExpertHead(4, 3, 2, device=device)
    out = head(torch.randn(0, 4, device=device))
    assert (
        out.logits.shape == (0, 3)
        and out.experts.shape == (0, 3, 2)
        and out.prediction.shape == (0, 2)
    )
    out = head(torch.randn(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device))
    assert out.prediction.shape == (0, 2)
    x = torch.randn(1, 4, device=device, requires_grad=True)
    out = head(x, torch.tensor([2], device=device))
    assert out.prediction.shape == (1, 2)
    out.prediction.sum().backward()
    assert x.grad is not None


def test_int32_groups(device):
    head = MultiExpertHead(4, 3, device=device)
    x = torch.randn(5, 4, device=device)
    groups = torch.tensor([0, 2, 1, 1, 0], device=device)
    assert torch.equal(head(x, groups.int()).prediction, head(x, groups).prediction)


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8])
def test_small_integer_groups_work_or_raise_value_error(dtype):
    # The groups check accepts every integer dtype, but gather only takes int32/int64.
    head = MultiExpertHead(4, 3)
    x = torch.randn(3, 4)
    groups = torch.tensor([0, 2, 1])
    try:
        got = head(x, groups.to(dtype)).prediction
    except ValueError:
        return
    assert torch.equal(got, head(x, groups).prediction)


# ---------------------------------------------------------------------------------------------
# from_linear
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
def test_from_linear_reproduces_linear(out_features, bias, inference, residual, dtype, device):
    linear = nn.Linear(8, out_features, bias=bias, device=device, dtype=dtype)
    head = MultiExpertHead.from_linear(
        linear, num_groups=5, inference=inference, residual=residual
    )
    assert head.inference == inference and head.num_groups == 5 and head.residual == residual
    assert head.in_features == 8 and head.out_features == out_features
    assert head.classifier.weight.dtype == dtype and head.experts.weight.device.type == device.type
    assert (head.classifier.bias is None) == (not bias) and (head.experts.bias is None) == (
        not bias
    )
    if residual:  # the base is the copy, the deltas start at zero
        assert torch.equal(head.base.weight, linear.weight)
        assert (head.base.bias is None) == (not bias)
        for p in head.experts.parameters():
            assert torch.equal(p, torch.zeros_like(p))
    else:
        assert head.base is None
    x = torch.randn(11, 8, device=device, dtype=dtype) * 2
    out = head(x)
    assert torch.equal(out.logits, torch.zeros_like(out.logits))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert torch.allclose(out.prediction, linear(x), rtol=tol, atol=tol)
    for g in range(5):
        assert torch.allclose(out.experts[:, g], linear(x), rtol=tol, atol=tol)
    # teacher forcing too: every expert starts as the original layer
    groups = torch.randint(0, 5, (11,), device=device)
    assert torch.allclose(head(x, groups).prediction, linear(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("residual", [True, False])
def test_from_linear_copies_parameters_not_shares(residual):
    linear = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in linear.state_dict().items()}
    head = MultiExpertHead.from_linear(linear, 3, residual=residual)
    copy = head.base if residual else head.experts
    with torch.no_grad():
        for p in head.parameters():
            p.add_(1.0)
    for k, v in linear.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert copy.weight.data_ptr() != linear.weight.data_ptr()
    assert copy.bias.data_ptr() != linear.bias.data_ptr()


@pytest.mark.parametrize(
    "layer", [nn.Conv1d(2, 2, 1), nn.Sequential(nn.Linear(2, 1)), nn.Bilinear(2, 2, 1)]
)
def test_from_linear_rejects_non_linear(layer):
    with pytest.raises(ValueError, match="nn.Linear"):
        MultiExpertHead.from_linear(layer, 3)


def test_from_linear_validates_arguments():
    with pytest.raises(ValueError, match="num_groups"):
        MultiExpertHead.from_linear(nn.Linear(2, 1), 1)
    with pytest.raises(ValueError, match="inference"):
        MultiExpertHead.from_linear(nn.Linear(2, 1), 3, inference="mean")


# ---------------------------------------------------------------------------------------------
# Residual experts: a shared base plus zero-initialised deltas
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
def test_fresh_residual_head_predicts_the_base(inference):
    head = MultiExpertHead(6, 4, 2, inference=inference, dtype=torch.float64)
    for p in head.experts.parameters():
        assert torch.equal(p, torch.zeros_like(p))
    x = torch.randn(7, 6, dtype=torch.float64) * 3
    out = head(x)
    base = head.base(x)
    # The experts come from one fused (7, 6) x (6, 12) matmul, the base from a (6, 2) one:
    # BLAS may pick another kernel / summation order for each shape (it does on some CPUs),
    # so equal to float64 round-off, not bit for bit.
    for g in range(4):
        torch.testing.assert_close(out.experts[:, g], base, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.prediction, base, rtol=1e-12, atol=1e-12)
    teacher = head(x, torch.tensor([0, 1, 2, 3, 3, 2, 1])).prediction
    torch.testing.assert_close(teacher, base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("residual", [True, False])
def test_expert_without_gradient_keeps_its_init(residual):
    # Group 3 never appears in training: its delta gets no gradient, so a residual head's
    # expert 3 predicts what the (trained) base does; the other experts move away from it.
    head = MultiExpertHead(5, 4, residual=residual, dtype=torch.float64)
    init = {k: v.clone() for k, v in head.state_dict().items()}
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    groups = torch.arange(32) % 3
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(head(x, groups).prediction, y).backward()
        optimizer.step()
    rows = head.experts.weight.reshape(4, 1, 5)
    assert torch.equal(rows[3], init["experts.weight"].reshape(4, 1, 5)[3])
    assert torch.equal(head.experts.bias[3], init["experts.bias"][3])
    xt = torch.randn(9, 5, dtype=torch.float64)
    experts = head(xt).experts
    if residual:
        assert not torch.equal(head.base.weight, init["base.weight"])
        torch.testing.assert_close(experts[:, 3], head.base(xt), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(experts[:, 0], head.base(xt))


# ---------------------------------------------------------------------------------------------
# Post-hoc logit adjustment
# ---------------------------------------------------------------------------------------------
def ref_log_prior(counts):
    """log(pi_g) with pi = max(count, 1) / sum of those (an empty group counts as 1)."""
    c = [max(float(v), 1.0) for v in counts]
    return [math.log(v / sum(c)) for v in c]


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
def test_logit_adjustment_matches_reference(inference, residual):
    head = make_head(6, 5, 2, inference=inference, residual=residual, dtype=torch.float64)
    counts = torch.tensor([50, 0, 7, 3, 20])
    tau = 0.8
    head.set_logit_adjustment(tau, counts)
    assert head.tau == tau
    log_prior = ref_log_prior(counts.tolist())
    torch.testing.assert_close(
        head.log_prior, torch.tensor(log_prior, dtype=torch.float64), rtol=1e-14, atol=1e-14
    )
    x = torch.randn(9, 6, dtype=torch.float64) * 3
    logits, experts = ref_head(head, x)
    adjustment = tau * torch.tensor(log_prior, dtype=torch.float64)
    ref = ref_combine(as_tensor(logits, x), as_tensor(experts, x), inference, adjustment)
    out = head(x)
    torch.testing.assert_close(out.prediction, as_tensor(ref, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.logits, as_tensor(logits, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
def test_logit_adjustment_tau_zero_is_identity(inference):
    head = make_head(6, 5, inference=inference, residual=True)
    x = torch.randn(9, 6) * 3
    before = head(x)
    head.set_logit_adjustment(0.0, torch.tensor([50, 1, 7, 3, 20]))
    assert head.tau == 0.0
    for a, b in zip(head(x), before):
        assert torch.equal(a, b)
    head.set_logit_adjustment(1.0)  # the prior is kept; tau = 0 turns it off again
    assert not torch.equal(head(x).prediction, before.prediction)
    head.set_logit_adjustment(0.0)
    assert torch.equal(head(x).prediction, before.prediction)


def test_logit_adjustment_moves_predictions_toward_rare_groups():
    head = MultiExpertHead(3, 2, inference="argmax", residual=False)
    with torch.no_grad():
        head.classifier.weight.zero_()
        head.classifier.bias.copy_(torch.tensor([0.5, 0.0]))  # group 0 slightly preferred
    x = torch.randn(4, 3)
    assert (head(x).logits.argmax(1) == 0).all()
    head.set_logit_adjustment(1.0, torch.tensor([90, 10]))  # group 1 is rare
    expected = head(x, torch.ones(4, dtype=torch.long)).prediction
    assert torch.equal(head(x).prediction, expected)


def test_logit_adjustment_requires_counts():
    head = MultiExpertHead(4, 3)
    with pytest.raises(ValueError, match="group_counts"):
        head.set_logit_adjustment(0.5)
    assert head.tau == 0.0
    head.set_logit_adjustment(0.0)  # off needs no prior
    head.set_logit_adjustment(0.5, torch.tensor([3, 2, 1]))
    prior = head.log_prior.clone()
    head.set_logit_adjustment(0.25)  # the prior is kept
    assert head.tau == 0.25 and torch.equal(head.log_prior, prior)


@pytest.mark.parametrize(
    "tau, counts, match",
    [
        (-0.1, [3, 2, 1], "tau"),
        (float("nan"), [3, 2, 1], "tau"),
        (0.5, [3, 2], "group_counts"),
        (0.5, [[3, 2, 1]], "group_counts"),
    ],
)
def test_logit_adjustment_bad_arguments(tau, counts, match):
    head = MultiExpertHead(4, 3)
    with pytest.raises(ValueError, match=match):
        head.set_logit_adjustment(tau, torch.tensor(counts))


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
def test_logit_adjustment_only_at_inference(inference, residual):
    # With groups (training) the prediction is the true group's expert, adjustment or not.
    head = make_head(6, 4, 2, inference=inference, residual=residual)
    x, groups = torch.randn(8, 6) * 3, torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    plain, plain_inference = head(x, groups), head(x).prediction
    head.set_logit_adjustment(2.0, torch.tensor([100, 1, 1, 30]))
    adjusted = head(x, groups)
    for a, b in zip(adjusted, plain):
        assert torch.equal(a, b)
    assert not torch.equal(head(x).prediction, plain_inference)  # while inference moves


def test_tau_reads_back_exactly_as_set():
    # logit_tau is a float64 buffer whatever the head's dtype: 0.8 is not a float32 value,
    # yet head.tau (and a loaded copy's) reads back exactly 0.8.
    head = MultiExpertHead(4, 3)
    assert head.classifier.weight.dtype == torch.float32
    head.set_logit_adjustment(0.8, torch.tensor([5, 2, 1]))
    assert head.logit_tau.dtype == torch.float64 and head.tau == 0.8
    assert head.log_prior.dtype == torch.float32  # the prior follows the head's dtype
    fresh = MultiExpertHead(4, 3)
    fresh.load_state_dict(head.state_dict())
    assert fresh.tau == 0.8
    assert head(torch.randn(2, 4)).prediction.dtype == torch.float32  # no promotion


@pytest.mark.parametrize(
    "cast, dtype",
    [
        (lambda m: m.half(), torch.float16),
        (lambda m: m.double(), torch.float64),
        (lambda m: m.to(torch.float32), torch.float32),
    ],
    ids=["half", "double", "to_float32"],
)
def test_logit_tau_stays_float64_under_casting(cast, dtype):
    head = MultiExpertHead(4, 3, 2, dtype=torch.float64)
    head.set_logit_adjustment(0.8, torch.tensor([5, 2, 1]))
    assert cast(head) is head
    assert head.logit_tau.dtype == torch.float64 and head.tau == 0.8
    assert head.classifier.weight.dtype == dtype and head.log_prior.dtype == dtype
    out = head(torch.randn(3, 4, dtype=dtype))
    assert all(t.dtype == dtype for t in out)
    head.set_logit_adjustment(0.3)  # and a new value is still exact after the cast
    assert head.logit_tau.dtype == torch.float64 and head.tau == 0.3


@pytest.mark.parametrize("tau", [0.5, 0.8])
@pytest.mark.parametrize("inference", ["argmax", "soft", "topk"])
def test_select_inference_leaves_head_tau_equal_to_choice_tau(inference, tau):
    # The claim of select_inference's doctest, for taus that are not float32 values: the
    # head reads back exactly the chosen tau (a float32 head rounded 0.8 to 0.800000011...).
    binner = GroupBinner(3).fit(torch.rand(200))
    head = MultiExpertHead(4, 3)
    choice = select_inference(
        head, torch.randn(30, 4), torch.rand(30), binner, candidates=[(inference, tau)]
    )
    assert (choice.inference, choice.tau) == (inference, tau)
    assert (head.inference, head.tau) == (choice.inference, choice.tau)


def test_old_checkpoint_without_adjustment_buffers_loads_with_tau_zero():
    # A dirloss 0.1 head: independent experts, no log_prior / logit_tau in its state_dict.
    old = MultiExpertHead(5, 4, 2, inference="argmax", residual=False)
    state = {k: v for k, v in old.state_dict().items() if k not in ("log_prior", "logit_tau")}
    assert set(state) == {"classifier.weight", "classifier.bias", "experts.weight", "experts.bias"}
    fresh = MultiExpertHead(5, 4, 2, inference="argmax", residual=False)
    fresh.set_logit_adjustment(0.5, torch.tensor([10, 3, 1, 6]))
    fresh.load_state_dict(state)  # strict
    assert fresh.tau == 0.0 and torch.equal(fresh.log_prior, torch.zeros(4))
    x = torch.randn(6, 5) * 3
    for a, b in zip(fresh(x), old(x)):
        assert torch.equal(a, b)
    # ... also as a submodule (the prefix is honoured), and the caller's dict is not changed
    wrapped = nn.Sequential(MultiExpertHead(5, 4, 2, residual=False))
    wrapped.load_state_dict({f"0.{k}": v for k, v in state.items()})
    assert wrapped[0].tau == 0.0
    assert "log_prior" not in state


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, 2.0, True, None])
def test_bad_in_out_features(value):
    with pytest.raises(ValueError, match="in_features"):
        MultiExpertHead(value, 3)
    with pytest.raises(ValueError, match="out_features"):
        MultiExpertHead(4, 3, value)


@pytest.mark.parametrize("num_groups", [1, 0, 3.0, True])
def test_bad_num_groups(num_groups):
    with pytest.raises(ValueError, match="num_groups"):
        MultiExpertHead(4, num_groups)


def test_bad_inference():
    with pytest.raises(ValueError, match="inference"):
        MultiExpertHead(4, 3, inference="mixture")


@pytest.mark.parametrize("shape", [(5,), (5, 3), (5, 4, 1), (2, 5, 4)])
def test_bad_feature_shape(shape):
    head = MultiExpertHead(4, 3)
    with pytest.raises(ValueError, match=r"expected features of shape \(N, 4\)"):
        head(torch.randn(shape))


@pytest.mark.parametrize(
    "groups", [torch.tensor([0, 1]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([[0], [1], [2]])]
)
def test_bad_groups(groups):
    head = MultiExpertHead(4, 3)
    with pytest.raises(ValueError, match="expected"):
        head(torch.randn(3, 4), groups)


# ---------------------------------------------------------------------------------------------
# Gradients, factory kwargs, extremes (the rest of the battery: TestBattery at the end)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("residual", [True, False])
def test_gradients_reach_only_chosen_expert(residual):
    head = make_head(3, 4, 1, residual=residual)
    x = torch.randn(2, 3)
    head(x, torch.tensor([1, 1])).prediction.sum().backward()
    grad = head.experts.weight.grad.reshape(4, 1, 3)
    assert grad[1].abs().sum() > 0
    assert grad[[0, 2, 3]].abs().sum() == 0
    assert head.classifier.weight.grad is None or head.classifier.weight.grad.abs().sum() == 0
    if residual:  # the shared base learns from every sample
        assert head.base.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("residual", [True, False])
def test_factory_kwargs(residual, device):
    head = MultiExpertHead(4, 3, 2, residual=residual, device=device, dtype=torch.float64)
    for name, p in head.named_parameters():
        assert p.dtype == torch.float64, name
        assert p.device.type == device.type, name
    for name, b in head.named_buffers():  # the logit adjustment follows dtype= too
        assert b.dtype == torch.float64, name
        assert b.device.type == device.type, name
    # ... the prior does with any dtype; tau stays float64 (it reads back exactly as set)
    head32 = MultiExpertHead(4, 3, 2, residual=residual, device=device, dtype=torch.float32)
    assert head32.log_prior.dtype == torch.float32 and head32.logit_tau.dtype == torch.float64
    assert head32.logit_tau.device.type == device.type
    out = head(torch.randn(2, 4, device=device, dtype=torch.float64))
    assert all(t.dtype == torch.float64 for t in out)
    assert head.classifier.weight.shape == (3, 4) and head.experts.weight.shape == (6, 4)
    if residual:
        assert head.base.weight.shape == (2, 4)


@pytest.mark.parametrize("residual", [True, False])
def test_no_bias(residual):
    head = MultiExpertHead(4, 3, 2, bias=False, residual=residual)
    assert head.classifier.bias is None and head.experts.bias is None
    assert head.base is None or head.base.bias is None
    assert torch.equal(head(torch.zeros(2, 4)).experts, torch.zeros(2, 3, 2))


def test_extreme_features_finite():
    head = MultiExpertHead(3, 4, inference="soft")
    x = torch.tensor([[1e4, -1e4, 1e4], [100.0, 0.0, -100.0]], requires_grad=True)
    out = head(x)
    out.prediction.sum().backward()
    assert torch.isfinite(out.prediction).all() and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------
# Deferred initialisation on meta: print, shape-only forward, to_empty + reset_parameters.
# (The head's and, as the same mechanism, the other modules with buffers.)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("residual", [True, False])
def test_meta_head_prints_and_infers_shapes(residual):
    head = MultiExpertHead(6, 4, 2, residual=residual, device="meta")
    assert "tau=<meta>" in repr(head)
    x = torch.randn(5, 6, device="meta")
    for inference in ("soft", "argmax"):
        head.inference = inference
        for groups in (None, torch.zeros(5, dtype=torch.long, device="meta")):
            out = head(x, groups)
            assert [t.shape for t in out] == [(5, 4), (5, 4, 2), (5, 2)]
            assert all(t.is_meta for t in out)
    with torch.device("meta"):  # the context-manager path too
        assert head.__class__(6, 4).log_prior.is_meta


@pytest.mark.parametrize("residual", [True, False])
def test_meta_head_to_empty_then_reset_parameters_is_a_fresh_head(residual):
    head = MultiExpertHead(6, 4, 2, residual=residual, device="meta")
    assert head.to_empty(device="cpu") is head
    assert not any(t.is_meta for t in head.state_dict().values())
    assert head.logit_tau.dtype == torch.float64 and head.tau == 0.0  # buffers as constructed
    assert torch.equal(head.log_prior, torch.zeros(4))
    torch.manual_seed(3)
    head.reset_parameters()
    torch.manual_seed(3)
    fresh = MultiExpertHead(6, 4, 2, residual=residual)  # same draws in the same order
    for key, value in fresh.state_dict().items():
        assert torch.equal(head.state_dict()[key], value), key
    assert "tau=0.0" in repr(head)


def test_reset_parameters_turns_the_adjustment_off():
    head = MultiExpertHead(3, 4)
    head.set_logit_adjustment(0.5, torch.tensor([10, 5, 2, 1]))
    with torch.no_grad():
        head.experts.weight.fill_(1.0)
    head.reset_parameters()
    assert head.tau == 0.0 and not head.log_prior.any() and not head.experts.weight.any()


def test_meta_head_loads_a_state_dict():
    trained = MultiExpertHead(6, 4)
    trained.set_logit_adjustment(0.7, torch.tensor([9, 4, 2, 1]))
    x = torch.randn(5, 6)
    for assign in (False, True):
        head = MultiExpertHead(6, 4, device="meta")
        if not assign:
            head.to_empty(device="cpu")
        head.load_state_dict(trained.state_dict(), assign=assign)
        assert head.tau == 0.7
        torch.testing.assert_close(head(x).prediction, trained(x).prediction, rtol=0, atol=0)


def test_meta_binner():
    with torch.device("meta"):
        binner = GroupBinner(4)
        explicit = GroupBinner(4, edges=[0.0, 1.0, 2.0, 3.0, 4.0])
    assert repr(binner) == "GroupBinner(num_groups=4, strategy='uniform', fitted=False)"
    with pytest.raises(ValueError, match="expected a GroupBinner with real buffers to fit, got "
                       r"one on the meta device \(call binner.to_empty"):
        binner.fit(torch.rand(10))
    groups = explicit(torch.rand(7, 1, device="meta"))
    assert groups.is_meta and groups.shape == (7,) and groups.dtype == torch.long
    binner.to_empty(device="cpu")
    assert not binner.fitted and torch.isnan(binner.edges).all() and not binner.counts.any()
    binner.fit(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    assert binner.edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    explicit.to_empty(device="cpu")  # the given edges, as the constructor set them
    reference = GroupBinner(4, edges=[0.0, 1.0, 2.0, 3.0, 4.0])
    for key, value in reference.state_dict().items():  # NaN where unset: equal_nan
        torch.testing.assert_close(explicit.state_dict()[key], value, rtol=0, atol=0,
                                   equal_nan=True, msg=key)
    assert explicit.fitted and explicit.strategy == "uniform"
    with torch.device("meta"):
        quantile = GroupBinner(3, strategy="quantile")
    quantile.to_empty(device="cpu")
    assert quantile.strategy == "quantile" and int(quantile.fit_mode) == 1


def test_meta_losses_print_run_and_to_empty():
    from dirloss import DescendingSoftLabelLoss, GroupContrastiveLoss, GroupDIRLoss

    counts = torch.tensor([5, 3, 2, 1])  # on the CPU, outside the meta context
    with torch.device("meta"):
        binner = GroupBinner(4, edges=[0.0, 0.25, 0.5, 0.75, 1.0])
        head = MultiExpertHead(8, 4)
        criterion = GroupDIRLoss(binner, validate=True)
        soft = DescendingSoftLabelLoss(4, group_counts=counts, tau=1.0)
        contrastive = GroupContrastiveLoss(4)
    for module in (binner, head, criterion, soft, contrastive):
        repr(module)
    assert "tau=<meta>" in repr(soft)
    x, y = torch.randn(6, 8, device="meta"), torch.rand(6, device="meta")
    out = criterion(head(x, binner(y)), x, y)
    assert all(t.is_meta and t.shape == () for t in out)
    assert contrastive(x, y).is_meta and contrastive(x, binner(y)).is_meta
    assert soft(torch.randn(6, 4, device="meta"), binner(y)).is_meta
    # to_empty: the constructor's tables and settings, not uninitialised memory
    soft.to_empty(device="cpu")
    reference = DescendingSoftLabelLoss(4, group_counts=counts, tau=1.0)
    for key, value in reference.state_dict().items():
        assert torch.equal(soft.state_dict()[key], value), key
    assert soft.tau == 1.0 and "tau=1.0" in repr(soft)
    criterion.to_empty(device="cpu")
    fitted = GroupBinner(4, edges=[0.0, 0.25, 0.5, 0.75, 1.0])
    assert torch.equal(criterion.expert_table, GroupDIRLoss(fitted).expert_table)  # not saved
    head.to_empty(device="cpu")
    head.reset_parameters()
    x, y = torch.randn(6, 8), torch.rand(6)
    torch.testing.assert_close(
        criterion(head(x, binner(y)), x, y).loss,
        GroupDIRLoss(fitted)(head(x, fitted(y)), x, y).loss, rtol=0, atol=0,
    )


def test_meta_soft_label_loss_with_meta_counts_has_no_adjustment_until_loaded():
    from dirloss import DescendingSoftLabelLoss

    with torch.device("meta"):
        soft = DescendingSoftLabelLoss(3, group_counts=torch.tensor([4, 2, 1]), tau=0.5)
    soft.to_empty(device="cpu")
    assert torch.isnan(soft.logit_adjustment).all()  # unknowable: loud, not random
    trained = DescendingSoftLabelLoss(3, group_counts=torch.tensor([4, 2, 1]), tau=0.5)
    soft.load_state_dict(trained.state_dict())
    assert torch.equal(soft.logit_adjustment, trained.logit_adjustment)


# ---------------------------------------------------------------------------------------------
# Group index >= G or < 0
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("validate", [False, True])
def test_head_rejects_out_of_range_groups(value, validate):
    head = MultiExpertHead(3, G, validate=validate)
    with pytest.raises(ValueError, match=range_error("groups")):
        head(torch.randn(6, 3), bad_groups(value))
    assert head(torch.randn(6, 3), bad_groups(G - 1)).prediction.shape == (6, 1)


# ---------------------------------------------------------------------------------------------
# head.inference set after construction
# ---------------------------------------------------------------------------------------------
def test_inference_checked_on_assignment():
    head = MultiExpertHead(3, G)
    with pytest.raises(ValueError, match=r"expected inference in .*, got 'mean'"):
        head.inference = "mean"
    assert head.inference == "soft"  # unchanged
    head.inference = "argmax"
    assert head.inference == "argmax"


# ---------------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py)
# ---------------------------------------------------------------------------------------------
def head_function(head, features, groups=None):
    """The head from the functional ops: one linear map for the logits and one for the
    experts (plus the base), then ``select_expert`` or ``combine_experts``."""
    g, o = head.num_groups, head.out_features
    logits = nn.functional.linear(features, head.classifier.weight, head.classifier.bias)
    experts = nn.functional.linear(features, head.experts.weight, head.experts.bias)
    experts = experts.unflatten(1, (g, o))
    if head.base is not None:
        experts = experts + head.base(features)[:, None, :]
    if groups is not None:
        return HeadOutput(logits, experts, DF.select_expert(experts, groups))
    adjustment = head.logit_tau * head.log_prior
    prediction = DF.combine_experts(logits, experts, head.inference, logit_adjustment=adjustment)
    return HeadOutput(logits, experts, prediction)


def head_spec(mode, residual):
    inference = "soft" if mode == "soft" else "argmax"

    def build():
        head = make_head(5, 4, 2, inference=inference, residual=residual)
        head.set_logit_adjustment(0.5, torch.tensor([10, 3, 1, 6]))  # used without groups
        return head

    def inputs(dtype, device):
        features = torch.randn(6, 5, dtype=dtype, device=device)
        if mode != "teacher":
            return (features,)
        return features, torch.tensor([0, 3, 1, 2, 2, 0], device=device)

    keys = {"classifier.weight", "classifier.bias", "experts.weight", "experts.bias"}
    keys |= {"log_prior", "logit_tau"} | ({"base.weight", "base.bias"} if residual else set())
    return Spec(
        f"{mode}-{'residual' if residual else 'plain'}",
        build=build,
        inputs=inputs,
        function=head_function,
        reductions=(),
        # The head folds the base into the expert weights and stacks the classifier on
        # top: one matmul, another summation order than the twin's separate ones.
        exact_function=False,
        autocast_dtype=torch.bfloat16,  # the logits of a bf16 matmul
        fresh=lambda: MultiExpertHead(5, 4, 2, inference=inference, residual=residual),
        state_keys=frozenset(keys),
        inductor=mode == "soft",
    )


TestBattery = battery(
    *(head_spec(mode, residual) for mode in ("soft", "argmax", "teacher")
      for residual in (True, False))
)
