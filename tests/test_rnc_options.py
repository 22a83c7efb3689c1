"""The options users of the official Rank-N-Contrast code expect, on the group contrastive
loss: unnormalised features (``normalize=False``) and several views per sample
(``view_dim=1``: features (N, V, D), the official call).

The defaults are unchanged (tests/test_contrastive.py pins them against its loop reference,
imported here for the normalised case)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_contrastive import ref_loss as ref_loss_normalised

from dirloss import GroupContrastiveLoss, _contrastive
from dirloss.functional import DEFAULT_TEMPERATURE, group_contrastive_loss

F64 = {"atol": 1e-12, "rtol": 1e-12}
REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------------------------
# Reference for raw features, straight from the RnC equation (official: no normalisation):
#   s_ik = -||x_i - x_k||_2 / T,  d_ik = sum_l |y_il - y_kl|,
#   l_ij = -s_ij + log sum_{k != i, d_ik >= d_ij} exp(s_ik),
#   per-anchor mean over j != i; "mean" over all ordered pairs.
# ---------------------------------------------------------------------------------------------
def ref_raw(x, y, temperature, reduction):
    n = len(x)
    y = [row if isinstance(row, list) else [row] for row in y]

    def s(i, k):
        return -math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[k]))) / temperature

    def d(i, k):
        return sum(abs(a - b) for a, b in zip(y[i], y[k]))

    per_anchor = []
    for i in range(n):
        total = 0.0
        for j in range(n):
            if j == i:
                continue
            denom = sum(math.exp(s(i, k)) for k in range(n) if k != i and d(i, k) >= d(i, j))
            total += -s(i, j) + math.log(denom)
        per_anchor.append(total / max(n - 1, 1))
    if reduction == "none":
        return torch.tensor(per_anchor, dtype=torch.float64)
    if reduction == "sum":
        return torch.tensor(sum(per_anchor), dtype=torch.float64)
    return torch.tensor(sum(per_anchor) / max(n, 1), dtype=torch.float64)


def test_unnormalised_three_samples_by_hand():
    # x = 0, 1, 3 (D = 1), y = 0, 1, 2, T = 1: s01 = -1, s02 = -3, s12 = -2; d01 = d12 = 1,
    # d02 = 2. Anchor 0: l01 = 1 + log(e^-1 + e^-3) = log(1 + e^-2); l02 = 3 + log e^-3 = 0.
    # Anchor 1: both pairs at d = 1 share the denominator e^-1 + e^-2:
    #   l10 = 1 + log(e^-1 + e^-2) = log(1 + e^-1), l12 = 2 + log(e^-1 + e^-2) = 1 + l10.
    # Anchor 2: l20 = 3 + log e^-3 = 0; l21 = 2 + log(e^-2 + e^-3) = log(1 + e^-1).
    # a = log(1 + e^-2) = 0.12692801104297, b = log(1 + e^-1) = 0.31326168751822:
    # per anchor (a/2, (2b + 1)/2, b/2) = (0.06346400552149, 0.81326168751822,
    # 0.15663084375911); mean over the 6 pairs (a + 3b + 1)/6 = 0.34445217893294.
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    per_anchor = group_contrastive_loss(x, y, temperature=1.0, normalize=False, reduction="none")
    torch.testing.assert_close(
        per_anchor,
        torch.tensor([0.06346400552149, 0.81326168751822, 0.15663084375911], dtype=torch.float64),
        atol=1e-13, rtol=0,
    )
    mean = group_contrastive_loss(x, y, temperature=1.0, normalize=False)
    assert float(mean) == pytest.approx(0.34445217893294, abs=1e-13)
    a, b = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    assert float(mean) == pytest.approx((a + 3 * b + 1) / 6, abs=1e-15)
    # normalised, the three 1-D features become 0, 1, 1: a different loss
    assert float(group_contrastive_loss(x, y, temperature=1.0)) != pytest.approx(float(mean))


LABELS = {
    "float_ties": torch.tensor([0.5, 1.5, 0.5, 2.5, 1.5, -0.5, 0.5, 3.5], dtype=torch.float64),
    "float_distinct": torch.tensor([0.13, -1.7, 2.71, 0.49, 5.3, -0.02, 1.234]),
    "float_2d": torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [2.0, -1.0], [0.0, 0.0]]),
    "int_groups": torch.tensor([0, 0, 2, 3, 4, 4, 2, 0, 4]),
}


@pytest.mark.parametrize("name", list(LABELS))
@pytest.mark.parametrize("temperature", [0.07, 2.0])
def test_unnormalised_matches_loop(name, temperature):
    labels = LABELS[name]
    x = 3.0 * torch.randn(labels.shape[0], 4, dtype=torch.float64)
    num_groups = 5 if name == "int_groups" else None
    for reduction in REDUCTIONS:
        got = group_contrastive_loss(
            x, labels, num_groups=num_groups, temperature=temperature, normalize=False,
            reduction=reduction,
        )
        want = ref_raw(x.tolist(), labels.double().tolist(), temperature, reduction)
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("name", list(LABELS))
def test_unnormalised_on_unit_rows_equals_the_normalised_reference(name):
    labels = LABELS[name]
    x = F.normalize(torch.randn(labels.shape[0], 3, dtype=torch.float64), dim=1)
    for reduction in REDUCTIONS:
        got = group_contrastive_loss(x, labels, temperature=0.5, normalize=False,
                                     reduction=reduction)
        want = ref_loss_normalised(x, labels, 0.5, "l2", reduction)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_official_temperature_is_documented_not_default():
    assert DEFAULT_TEMPERATURE == 0.1
    assert GroupContrastiveLoss().normalize is True
    assert "normalize=True" in repr(GroupContrastiveLoss())
    assert GroupContrastiveLoss().view_dim is None


# ---------------------------------------------------------------------------------------------
# Views: (N, V, D) equals the single-view call on the concatenated views
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("name", ["float_ties", "int_groups", "float_2d"])
@pytest.mark.parametrize("views", [2, 3])
def test_views_equal_the_concatenated_single_view_call(normalize, name, views):
    labels = LABELS[name]
    n = labels.shape[0]
    features = torch.randn(n, views, 4, dtype=torch.float64)
    num_groups = 5 if name == "int_groups" else None
    # the official RnC order: torch.cat of the views, labels repeated view after view
    cat = torch.cat([features[:, v] for v in range(views)])
    cat_labels = torch.cat([labels] * views)
    kw = dict(num_groups=num_groups, temperature=0.5, normalize=normalize)
    per_view = group_contrastive_loss(features, labels, reduction="none", view_dim=1, **kw)
    single = group_contrastive_loss(cat, cat_labels, reduction="none", **kw)
    assert per_view.shape == (n, views)
    torch.testing.assert_close(per_view.T.reshape(-1), single, **F64)
    for reduction in ("mean", "sum"):
        torch.testing.assert_close(
            group_contrastive_loss(features, labels, reduction=reduction, view_dim=1, **kw),
            group_contrastive_loss(cat, cat_labels, reduction=reduction, **kw), **F64,
        )
    module = GroupContrastiveLoss(num_groups, temperature=0.5, normalize=normalize, view_dim=1)
    torch.testing.assert_close(module(features, labels), single.mean(), **F64)
    # (V, N, D), e.g. torch.stack of the views, with view_dim=0
    stacked = group_contrastive_loss(features.movedim(1, 0), labels, reduction="none",
                                     view_dim=0, **kw)
    assert stacked.shape == (views, n)
    torch.testing.assert_close(stacked.reshape(-1), single, **F64)


def test_views_gradient_equals_the_concatenated_call():
    labels = LABELS["float_ties"]
    features = torch.randn(labels.shape[0], 2, 3, dtype=torch.float64, requires_grad=True)
    group_contrastive_loss(features, labels, normalize=False, temperature=2.0,
                           view_dim=1).backward()
    cat = torch.cat([features[:, 0], features[:, 1]]).detach().requires_grad_(True)
    group_contrastive_loss(cat, labels.repeat(2), normalize=False, temperature=2.0).backward()
    torch.testing.assert_close(features.grad, torch.stack(cat.grad.chunk(2), dim=1), **F64)


# ---------------------------------------------------------------------------------------------
# The unnormalised path: gradients, anchors of a gathered batch, degenerate cases, compile
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["float_ties", "int_groups"])
def test_unnormalised_gradcheck(name):
    labels = LABELS[name]
    x = torch.randn(labels.shape[0], 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f: group_contrastive_loss(f, labels, temperature=2.0, normalize=False,
                                         reduction="none"),
        (x,),
    )


def test_unnormalised_duplicate_samples_have_finite_gradients():
    x = torch.randn(3, 4).repeat(2, 1).requires_grad_(True)  # every row twice: distance 0
    loss = group_contrastive_loss(x, torch.arange(6.0), normalize=False, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_unnormalised_anchor_slice_is_a_slice_of_the_whole():
    # the DDP path: local anchors [offset, offset + n) against the gathered batch
    labels = LABELS["float_ties"]
    x = torch.randn(labels.shape[0], 3, dtype=torch.float64)
    whole = _contrastive.loss(x, labels, None, "l2", 0.5, None, "none", normalize=False)
    part = _contrastive.loss(x, labels, None, "l2", 0.5, None, "none", offset=3, n_anchors=4,
                             normalize=False)
    torch.testing.assert_close(part, whole[3:7], **F64)


def test_unnormalised_degenerate_batches():
    one = torch.randn(1, 3, requires_grad=True)
    loss = group_contrastive_loss(one, torch.zeros(1), normalize=False)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(one.grad, torch.zeros(1, 3))
    empty = group_contrastive_loss(torch.randn(0, 3), torch.zeros(0), normalize=False)
    assert empty.item() == 0.0
    views = group_contrastive_loss(torch.randn(1, 2, 3), torch.zeros(1), normalize=False,
                                   reduction="none", view_dim=1)
    assert views.shape == (1, 2) and torch.isfinite(views).all()


def test_unnormalised_compiles_fullgraph(device):
    torch._dynamo.reset()
    labels = LABELS["float_ties"].float().to(device)
    x = (5.0 * torch.randn(labels.shape[0], 2, 4)).to(device)
    module = GroupContrastiveLoss(temperature=2.0, normalize=False, view_dim=1)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, labels), module(x, labels), rtol=1e-5, atol=1e-6)


def test_unnormalised_autocast_runs():
    x = torch.randn(8, 2, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = group_contrastive_loss(x, torch.rand(8), normalize=False, temperature=2.0,
                                      view_dim=1)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_bad_option_combinations_raise():
    with pytest.raises(ValueError, match="similarity='l2' with normalize=False"):
        GroupContrastiveLoss(similarity="cosine", normalize=False)
    with pytest.raises(ValueError, match="chunk_size=None with normalize=False"):
        GroupContrastiveLoss(4, chunk_size=2, normalize=False)
    with pytest.raises(ValueError, match="normalize to be a bool"):
        group_contrastive_loss(torch.randn(3, 2), torch.rand(3), normalize=1)
    with pytest.raises(ValueError, match=r"pass view_dim=1 for \(N, V, D\) views"):
        group_contrastive_loss(torch.randn(3, 2, 4), torch.rand(3))  # as before: (N, D) only
    with pytest.raises(ValueError, match=r"expected floating features of shape \(N, V, D\)"):
        group_contrastive_loss(torch.randn(3, 2, 2, 2), torch.rand(3), view_dim=1)
    with pytest.raises(ValueError, match="expected labels of shape"):
        group_contrastive_loss(torch.randn(3, 2, 4), torch.rand(6), view_dim=1)
    with pytest.raises(ValueError, match="expected view_dim"):
        GroupContrastiveLoss(view_dim=2)
    with pytest.raises(ValueError, match="expected view_dim"):
        GroupContrastiveLoss(view_dim=True)
