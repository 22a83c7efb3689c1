"""RankSim: forward against a float64 loop, the blackbox-rank gradient against its definition
(two elements by hand, random rows by loops), the official descending-rank form, and the
module battery."""

from __future__ import annotations

import math

import pytest
import torch
from _battery import Spec, battery

from dirloss import RankSimLoss
from dirloss.ranksim import blackbox_rank, ranksim_loss, unique_label_mask


def _loop_rank(row: list[float]) -> list[float]:
    """Ascending rank / n, ties by position: count entries smaller, or equal and earlier."""
    n = len(row)
    return [
        (1 + sum(1 for j in range(n) if row[j] < row[i] or (row[j] == row[i] and j < i))) / n
        for i in range(n)
    ]


def _loop_descending_rank(row: list[float]) -> list[float]:
    """The official convention: 1/n for the largest; among ties the later entry first."""
    n = len(row)
    return [
        (1 + sum(1 for j in range(n) if row[j] > row[i] or (row[j] == row[i] and j > i))) / n
        for i in range(n)
    ]


def _loop_ranksim(z: list[list[float]], y: list[float], reduction: str) -> float:
    m = len(y)
    norm = [math.sqrt(sum(v * v for v in zi)) for zi in z]
    total = 0.0
    for i in range(m):
        s_z = [sum(a * b for a, b in zip(z[i], z[j])) / (norm[i] * norm[j]) for j in range(m)]
        s_y = [-abs(y[i] - y[j]) for j in range(m)]
        r_z, r_y = _loop_rank(s_z), _loop_rank(s_y)
        total += sum((a - b) ** 2 for a, b in zip(r_z, r_y)) / m
    return total if reduction == "sum" else total / m


def test_two_element_gradient_by_hand():
    # s = (0.1, 0.2): ranks (1/2, 1). The loss wants them swapped, target (1, 1/2):
    # L = mean((r - t)^2), g = r - t = (-1/2, 1/2). With lambda = 1, s - lambda g = (0.6, -0.3)
    # ranks (1, 1/2), so dL/ds = (rk(s) - rk(s - lambda g)) / lambda = (-1/2, 1/2).
    s = torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True)
    r = blackbox_rank(s, 1.0)
    assert r.tolist() == [0.5, 1.0]
    ((r - torch.tensor([1.0, 0.5], dtype=torch.float64)) ** 2).mean().backward()
    assert s.grad.tolist() == [-0.5, 0.5]
    # The old benchmark rule rk(s + lambda g) leaves the ranks as they are: gradient 0.
    assert _loop_rank([0.1 - 0.5, 0.2 + 0.5]) == r.tolist()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.5, 2.0, 10.0])
def test_blackbox_backward_equals_definition_on_random_rows(seed, lam):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(4, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    (blackbox_rank(s, lam) * g).sum().backward()
    for i in range(4):
        row, gi = s[i].tolist(), g[i].tolist()
        base = _loop_rank(row)
        # ascending convention: (rk(s) - rk(s - lambda g)) / lambda
        asc = _loop_rank([a - lam * b for a, b in zip(row, gi)])
        want = [(p - q) / lam for p, q in zip(base, asc)]
        assert s.grad[i].tolist() == pytest.approx(want, abs=1e-15)
        # The official form: descending ranks r_d = (n + 1)/n - r, so the same loss sends
        # g_d = -g upstream, and the step s + lambda g_d gives the same gradient.
        desc = _loop_descending_rank(row)
        desc_p = _loop_descending_rank([a + lam * -b for a, b in zip(row, gi)])
        official = [-(p - q) / lam for p, q in zip(desc, desc_p)]
        assert want == pytest.approx(official, abs=1e-15)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("ties", [False, True])
def test_forward_equals_loop(reduction, ties):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    y = torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9.5], dtype=torch.float64)
    if ties:
        y = torch.tensor([0.0, 1, 1, 2, 3, 3, 3, 5, 6, 6], dtype=torch.float64)
    got = ranksim_loss(z, y, unique_labels=False, reduction=reduction)
    assert float(got) == pytest.approx(_loop_ranksim(z.tolist(), y.tolist(), reduction), abs=1e-14)


def test_official_scale_sums_one_mse_per_anchor():
    z, y = torch.randn(7, 3, dtype=torch.float64), torch.arange(7.0, dtype=torch.float64)
    total = ranksim_loss(z, y, unique_labels=False, reduction="sum")
    mean = ranksim_loss(z, y, unique_labels=False, reduction="mean")
    torch.testing.assert_close(total, 7 * mean, rtol=1e-14, atol=0)


def test_feature_gradient_is_the_blackbox_rule_chained_through_cosine():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 0.3, 1.1, 2.0, 2.2, 4.0], dtype=torch.float64)
    ranksim_loss(z, y, unique_labels=False, interpolation_lambda=2.0).backward()
    # reference: g = dL/d rank_z by hand, blackbox step by loops, then the cosine's Jacobian
    zn = torch.nn.functional.normalize(z.detach(), dim=1)
    s = (zn @ zn.t()).tolist()
    m = 6
    grad_s = []
    for i in range(m):
        r_z = _loop_rank(s[i])
        r_y = _loop_rank([-abs(float(y[i] - y[j])) for j in range(m)])
        g = [2 * (a - b) / m for a, b in zip(r_z, r_y)]
        step = _loop_rank([a - 2.0 * b for a, b in zip(s[i], g)])
        grad_s.append([(p - q) / 2.0 for p, q in zip(r_z, step)])
    z_ref = z.detach().clone().requires_grad_(True)
    zr = torch.nn.functional.normalize(z_ref, dim=1)
    (zr @ zr.t() * torch.tensor(grad_s, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-12, atol=1e-14)


def test_unique_labels_keeps_one_sample_per_label():
    y = torch.tensor([2.0, 1.0, 2.0, 3.0, 1.0, 2.0])
    mask = unique_label_mask(y, generator=torch.Generator().manual_seed(0))
    assert sorted(y[mask].tolist()) == [1.0, 2.0, 3.0]
    z = torch.randn(6, 3, dtype=torch.float64)
    got = ranksim_loss(z, y, generator=torch.Generator().manual_seed(0))
    want = ranksim_loss(z[mask], y[mask].double(), unique_labels=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same rows, the same kernels


def test_degenerate_batches_are_zero_in_graph():
    z = torch.randn(3, 2, requires_grad=True)
    loss = ranksim_loss(z, torch.ones(3))  # one distinct label: one kept sample
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros(3, 2))
    assert ranksim_loss(torch.randn(0, 2), torch.zeros(0)).item() == 0.0


def test_autocast_runs():
    z, y = torch.randn(8, 5, requires_grad=True), torch.rand(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ranksim_loss(z, y, unique_labels=False)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("unique_labels", [False, True])
def test_half_precision_features_keep_the_labels(unique_labels):
    # Once the labels took the features' dtype: in bf16, 99.9 and 100.2 both round to 100,
    # which reorders the label distances (and merges labels for unique_labels). Now the
    # loss of bf16 features is the float32 loss of the same (rounded) values.
    z = torch.randn(6, 4).bfloat16().requires_grad_(True)
    y = torch.tensor([99.9, 100.2, 100.4, 101.1, 101.3, 101.6])
    gen = torch.Generator().manual_seed(0)
    got = ranksim_loss(z, y, unique_labels=unique_labels, generator=gen)
    gen = torch.Generator().manual_seed(0)
    want = ranksim_loss(z.detach().float(), y, unique_labels=unique_labels, generator=gen)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    got.backward()
    assert z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad.float()).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interpolation_lambda": 0.0}, "interpolation_lambda"),
        ({"interpolation_lambda": float("inf")}, "interpolation_lambda"),
        ({"reduction": "none"}, "not a valid value for reduction"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankSimLoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        ranksim_loss(torch.randn(3, 2), torch.rand(3), **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"expected features of shape \(N, D\)"):
        ranksim_loss(torch.randn(3), torch.rand(3))
    with pytest.raises(ValueError, match=r"expected target of shape \(3,\) or \(3, 1\)"):
        ranksim_loss(torch.randn(3, 2), torch.rand(4))


def test_hand_case_three_samples():
    # y = [0, 1, 3]: S^y rows [0, -1, -3], [-1, 0, -2], [-3, -2, 0] -> ranks [3, 2, 1],
    # [2, 3, 1], [1, 2, 3]. z0 = (1, 0), z1 = (0, 1), z2 = (cos 30, sin 30): S^z rows
    # [1, 0, .866], [0, 1, .5], [.866, .5, 1] -> ranks [3, 1, 2], [1, 3, 2], [2, 1, 3].
    # Differences [0, -1, 1], [-1, 0, 1], [1, -1, 0]; ranks / 3, so each row's MSE is
    # 2 / 9 / 3 = 2 / 27, and the official sum over 3 anchors is 2 / 9.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.cos(math.pi / 6), math.sin(math.pi / 6)]],
                     dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    assert float(ranksim_loss(z, y)) == pytest.approx(2 / 9, abs=1e-15)
    assert float(ranksim_loss(z, y, reduction="mean")) == pytest.approx(2 / 27, abs=1e-15)
    angles = torch.tensor([0.0, 0.3, 0.9], dtype=torch.float64)  # ordered like the labels
    assert float(ranksim_loss(torch.stack([angles.cos(), angles.sin()], 1), y)) == 0.0


def test_descent_orders_features_like_labels():
    torch.manual_seed(0)
    feats = torch.randn(10, 4, requires_grad=True)
    y = torch.arange(10.0)
    opt = torch.optim.SGD([feats], lr=0.1)
    criterion = RankSimLoss(interpolation_lambda=2.0, reduction="mean")
    first = float(criterion(feats, y).detach())
    for _ in range(100):
        opt.zero_grad()
        (100.0 * criterion(feats, y)).backward()  # gamma scales the blackbox perturbation
        opt.step()
    assert float(criterion(feats, y).detach()) < 0.2 * first


def test_state_dict_repr_and_compiled_backward(device):
    module = RankSimLoss(interpolation_lambda=1.5, unique_labels=False)
    assert module.state_dict() == {}
    RankSimLoss().load_state_dict(module.state_dict())
    assert "interpolation_lambda=1.5" in repr(module) and "unique_labels=False" in repr(module)
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(8, 5, generator=gen).to(device)
    y = torch.tensor([0.0, 0.4, 1.0, 1.7, 2.5, 3.1, 4.0, 4.2], device=device)
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    module(z1, y).backward()
    torch.compile(module, fullgraph=True, backend="aot_eager")(z2, y).backward()
    torch.testing.assert_close(z2.grad, z1.grad, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py)
# ---------------------------------------------------------------------------------------------
def ranksim_spec(name, labels, **kwargs):
    """``RankSimLoss(unique_labels=False, **kwargs)``: the kept samples of
    ``unique_labels=True`` come from ``torch.unique`` and a random draw (a host sync, by
    design outside compiled code; ``test_unique_labels_keeps_one_sample_per_label``)."""

    def function(module, features, target):
        return ranksim_loss(
            features, target, interpolation_lambda=module.interpolation_lambda,
            unique_labels=False, reduction=module.reduction,
        )

    return Spec(
        name,
        build=lambda **kw: RankSimLoss(unique_labels=False, **kwargs, **kw),
        inputs=lambda dtype, device: (
            torch.randn(labels.shape[0], 5, dtype=dtype, device=device), labels.to(device)
        ),
        function=function,
        reductions=("sum", "mean"),  # a scalar always: no "none"
        # The blackbox rank's backward is a surrogate: the forward is piecewise constant in
        # the features, so finite differences give 0 (the surrogate has its own tests above).
        gradcheck="none",
        compile_tol={"rtol": 1e-6, "atol": 1e-7},
        state_keys=frozenset(),
    )


TestBattery = battery(
    ranksim_spec("distinct", torch.tensor([0.0, 0.4, 1.0, 1.7, 2.5, 3.1, 4.0, 4.2])),
    ranksim_spec("ties", torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 5.0]),
                 interpolation_lambda=0.5),
)
