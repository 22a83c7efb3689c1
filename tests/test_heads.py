"""MultiExpertHead against per-group linear maps computed by hand (float64 loops)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dirloss import HeadOutput, MultiExpertHead


# ---------------------------------------------------------------------------------------------
# Reference: plain loops written straight from the definitions.
# ---------------------------------------------------------------------------------------------
def ref_head(head, x):
    """logits[i][g] = W_c[g] . x_i + b_c[g];  experts[i][g][o] = W_g[o] . x_i + b_g[o]."""
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
    xs = x.detach().double().cpu().tolist()
    logits, experts = [], []
    for xi in xs:
        logits.append([sum(w * v for w, v in zip(wc[k], xi)) + bc[k] for k in range(g)])
        experts.append(
            [
                [sum(w * v for w, v in zip(we[k][c], xi)) + be[k][c] for c in range(o)]
                for k in range(g)
            ]
        )
    return logits, experts


def ref_argmax(row):
    best = 0
    for k, v in enumerate(row):
        if v > row[best]:
            best = k
    return best


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
@pytest.mark.parametrize("inference", ["argmax", "soft"])
def test_output_shapes(out_features, inference, device):
    head = MultiExpertHead(6, 4, out_features, inference=inference, device=device)
    out = head(torch.randn(5, 6, device=device))
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (5, 4)
    assert out.experts.shape == (5, 4, out_features)
    assert out.prediction.shape == (5, out_features)
    out = head(torch.randn(5, 6, device=device), torch.tensor([0, 1, 2, 3, 0], device=device))
    assert out.prediction.shape == (5, out_features)


@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_logits_and_experts_match_per_group_linear_maps(out_features, bias, device):
    head = MultiExpertHead(6, 4, out_features, bias=bias, device=device, dtype=torch.float64)
    x = torch.randn(5, 6, device=device, dtype=torch.float64)
    logits, experts = ref_head(head, x)
    out = head(x)
    torch.testing.assert_close(out.logits, as_tensor(logits, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.experts, as_tensor(experts, x), rtol=1e-12, atol=1e-12)
    # expert g is the linear map of rows g*O .. g*O+O-1 of experts.weight
    w = head.experts.weight.reshape(4, out_features, 6)
    for g in range(4):
        expected = x @ w[g].T + (head.experts.bias.reshape(4, out_features)[g] if bias else 0.0)
        torch.testing.assert_close(out.experts[:, g], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("inference", ["argmax", "soft"])
def test_teacher_forcing_picks_true_group_expert(out_features, inference, device):
    head = MultiExpertHead(
        6, 4, out_features, inference=inference, device=device, dtype=torch.float64
    )
    x = torch.randn(7, 6, device=device, dtype=torch.float64)
    groups = torch.tensor([0, 3, 1, 1, 2, 3, 0], device=device)
    _, experts = ref_head(head, x)
    ref = [experts[i][groups[i].item()] for i in range(7)]
    out = head(x, groups)
    torch.testing.assert_close(out.prediction, as_tensor(ref, x), rtol=1e-12, atol=1e-12)
    for i in range(7):  # exactly the expert tensor's entry
        assert torch.equal(out.prediction[i], out.experts[i, groups[i]])


@pytest.mark.parametrize("out_features", [1, 3])
def test_argmax_inference_picks_argmax_expert(out_features, device):
    head = MultiExpertHead(6, 5, out_features, device=device, dtype=torch.float64)
    x = torch.randn(9, 6, device=device, dtype=torch.float64) * 3
    logits, experts = ref_head(head, x)
    ref = [experts[i][ref_argmax(logits[i])] for i in range(9)]
    out = head(x)
    torch.testing.assert_close(out.prediction, as_tensor(ref, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("out_features", [1, 3])
def test_soft_inference_is_softmax_mixture(out_features, device):
    head = MultiExpertHead(6, 5, out_features, inference="soft", device=device, dtype=torch.float64)
    x = torch.randn(9, 6, device=device, dtype=torch.float64) * 3
    logits, experts = ref_head(head, x)
    ref = [ref_soft(logits[i], experts[i]) for i in range(9)]
    out = head(x)
    torch.testing.assert_close(out.prediction, as_tensor(ref, x), rtol=1e-12, atol=1e-12)


def test_inference_mode_can_be_switched():
    head = MultiExpertHead(4, 3, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64)
    logits, experts = ref_head(head, x)
    head.inference = "soft"
    soft = head(x).prediction
    torch.testing.assert_close(
        soft, as_tensor([ref_soft(logits[i], experts[i]) for i in range(6)], x)
    )


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
@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("inference", ["argmax", "soft"])
def test_from_linear_reproduces_linear(out_features, bias, inference, dtype, device):
    linear = nn.Linear(8, out_features, bias=bias, device=device, dtype=dtype)
    head = MultiExpertHead.from_linear(linear, num_groups=5, inference=inference)
    assert head.inference == inference and head.num_groups == 5
    assert head.in_features == 8 and head.out_features == out_features
    assert head.classifier.weight.dtype == dtype and head.experts.weight.device.type == device.type
    assert (head.classifier.bias is None) == (not bias) and (head.experts.bias is None) == (
        not bias
    )
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


def test_from_linear_copies_parameters_not_shares():
    linear = nn.Linear(4, 2)
    head = MultiExpertHead.from_linear(linear, 3)
    with torch.no_grad():
        head.experts.weight.add_(1.0)
    assert not torch.equal(head.experts.weight[:2], linear.weight)
    assert head.experts.weight.data_ptr() != linear.weight.data_ptr()


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
# Standard battery
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["argmax", "soft", "teacher"])
def test_gradcheck(mode):
    head = MultiExpertHead(
        3, 4, 2, inference="soft" if mode == "soft" else "argmax", dtype=torch.float64
    )
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 3, 1, 2]) if mode == "teacher" else None
    params = dict(head.named_parameters())

    def fn(x, wc, bc, we, be):
        out = torch.func.functional_call(
            head,
            {
                "classifier.weight": wc,
                "classifier.bias": bc,
                "experts.weight": we,
                "experts.bias": be,
            },
            (x, groups),
        )
        return out.logits, out.prediction

    inputs = (x,) + tuple(
        params[k].detach().clone().requires_grad_()
        for k in ("classifier.weight", "classifier.bias", "experts.weight", "experts.bias")
    )
    assert torch.autograd.gradcheck(fn, inputs)


def test_gradients_reach_only_chosen_expert():
    head = MultiExpertHead(3, 4, 1)
    x = torch.randn(2, 3)
    head(x, torch.tensor([1, 1])).prediction.sum().backward()
    grad = head.experts.weight.grad.reshape(4, 1, 3)
    assert grad[1].abs().sum() > 0
    assert grad[[0, 2, 3]].abs().sum() == 0
    assert head.classifier.weight.grad is None or head.classifier.weight.grad.abs().sum() == 0


@pytest.mark.parametrize(
    "mode, backend",
    [
        ("argmax", "aot_eager"),
        ("soft", "aot_eager"),
        ("teacher", "aot_eager"),
        pytest.param("soft", "inductor", marks=pytest.mark.slow),
    ],
)
def test_compile_fullgraph_matches_eager(mode, backend, device):
    torch._dynamo.reset()
    head = MultiExpertHead(6, 4, 2, inference="soft" if mode == "soft" else "argmax", device=device)
    x = torch.randn(8, 6, device=device)
    groups = torch.randint(0, 4, (8,), device=device) if mode == "teacher" else None
    compiled = torch.compile(head, fullgraph=True, backend=backend)
    got, ref = compiled(x, groups), head(x, groups)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_factory_kwargs(device):
    head = MultiExpertHead(4, 3, 2, device=device, dtype=torch.float64)
    for name, p in head.named_parameters():
        assert p.dtype == torch.float64, name
        assert p.device.type == device.type, name
    out = head(torch.randn(2, 4, device=device, dtype=torch.float64))
    assert all(t.dtype == torch.float64 for t in out)
    assert head.classifier.weight.shape == (3, 4) and head.experts.weight.shape == (6, 4)


def test_no_bias():
    head = MultiExpertHead(4, 3, 2, bias=False)
    assert head.classifier.bias is None and head.experts.bias is None
    assert torch.equal(head(torch.zeros(2, 4)).experts, torch.zeros(2, 3, 2))


def test_state_dict_round_trip():
    head = MultiExpertHead(5, 4, 3, inference="soft")
    state = head.state_dict()
    assert set(state) == {"classifier.weight", "classifier.bias", "experts.weight", "experts.bias"}
    fresh = MultiExpertHead(5, 4, 3, inference="soft")
    fresh.load_state_dict(state)
    x = torch.randn(6, 5)
    for a, b in zip(fresh(x), head(x)):
        assert torch.equal(a, b)


def test_autocast_bf16(device):
    head = MultiExpertHead(6, 4, 2, inference="soft", device=device)
    x = torch.randn(5, 6, device=device)
    for groups in (None, torch.tensor([0, 1, 2, 3, 0], device=device)):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = head(x, groups)
        assert out.logits.dtype == torch.bfloat16
        assert all(torch.isfinite(t.float()).all() for t in out)
        torch.testing.assert_close(
            out.prediction.float(), head(x, groups).prediction, rtol=0.05, atol=0.05
        )
        out.prediction.float().sum().backward()
        assert torch.isfinite(head.experts.weight.grad).all()
    head.inference = "argmax"
    with torch.autocast(device.type, dtype=torch.bfloat16):
        assert torch.isfinite(head(x).prediction.float()).all()


def test_extreme_features_finite():
    head = MultiExpertHead(3, 4, inference="soft")
    x = torch.tensor([[1e4, -1e4, 1e4], [100.0, 0.0, -100.0]], requires_grad=True)
    out = head(x)
    out.prediction.sum().backward()
    assert torch.isfinite(out.prediction).all() and torch.isfinite(x.grad).all()
