"""FeatureDistributionSmoothing (dirloss.fds) against float64 loops written from the paper.

Each step has a plain-Python reference: the per-bin epoch statistics and their momentum update
(:func:`_loop_statistics`), the smoothing across bins with reflected ends
(:func:`_loop_smooth`), the calibration of each feature (:func:`_loop_calibrate`), and the
kernel window (:func:`_loop_window`, from the definition of ``gaussian_filter1d``). The
official code's numeric form (``F.pad(mode="reflect")`` + ``conv1d`` of a sum-normalised
window, per-label masks, ``torch.var``) is rebuilt from its description in
:func:`_official_form` and compared on integer bins. Then the designed-out pains: in-place
autograd errors, identity at inference, float labels in explicit bins, an eps on the variance.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _battery import Spec, battery
from torch import nn

from dirloss import FeatureDistributionSmoothing, GroupBinner, GroupDIRLoss, MultiExpertHead
from dirloss.fds import calibrate_features, smooth_bin_statistics
from dirloss.reweighting import lds_kernel_window

FDS = FeatureDistributionSmoothing


# ---------------------------------------------------------------------------------------
# Plain float64 loops, straight from the equations


def _loop_window(kernel: str, ks: int, sigma: float) -> list[float]:
    """The FDS window, divided by its sum: gaussian = a delta filtered by a sampled Gaussian
    (radius int(4 sigma + 0.5), normalised) with half-sample reflection (scipy's
    ``reflect``); triang = scipy's ``triang``; laplace = exp(-|x| / sigma) / (2 sigma)."""
    half = ks // 2
    if kernel == "gaussian":
        radius = int(4.0 * sigma + 0.5)
        taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
        total = sum(taps)
        taps = [t / total for t in taps]
        window = []
        for i in range(ks):
            acc = 0.0
            for k in range(-radius, radius + 1):
                j = i + k
                while j < 0 or j >= ks:  # d c b a | a b c d | d c b a
                    j = -j - 1 if j < 0 else 2 * ks - 1 - j
                if j == half:
                    acc += taps[k + radius]
            window.append(acc)
    elif kernel == "triang":
        window = [1.0 - abs(n - half) / (half + 1) for n in range(ks)]
    else:
        window = [math.exp(-abs(x) / sigma) / (2 * sigma) for x in range(-half, half + 1)]
    total = sum(window)
    return [w / total for w in window]


def _fold(j: int, n: int) -> int:
    """Reflection about the end samples: d c b | a b c d | c b a."""
    if n == 1:
        return 0
    while j < 0 or j >= n:
        j = -j if j < 0 else 2 * (n - 1) - j
    return j


def _loop_smooth(stats: list[list[float]], window: list[float]) -> list[list[float]]:
    n, half = len(stats), len(window) // 2
    out = []
    for b in range(n):
        row = []
        for f in range(len(stats[0])):
            row.append(sum(window[k + half] * stats[_fold(b + k, n)][f]
                           for k in range(-half, half + 1)))
        out.append(row)
    return out


def _loop_bin(y: float, edges: list[float]) -> int:
    """Bin b holds e_b <= y < e_{b+1}; outside the edges: the first / last bin."""
    b = 0
    for e in edges[1:-1]:
        if y >= e:
            b += 1
    return b


def _loop_statistics(epochs, edges, num_features, momentum):
    """Running per-bin mean / var after each epoch; ``epochs`` = [(features, labels), ...]."""
    nb = len(edges) - 1
    mean = [[0.0] * num_features for _ in range(nb)]
    var = [[1.0] * num_features for _ in range(nb)]
    tracked = [0] * nb
    for feats, labels in epochs:
        members = [[] for _ in range(nb)]
        for z, y in zip(feats, labels):
            members[_loop_bin(y, edges)].append(z)
        for b, rows in enumerate(members):
            n = len(rows)
            if n == 0:
                continue
            cur_mean = [sum(r[f] for r in rows) / n for f in range(num_features)]
            cur_var = [
                sum((r[f] - cur_mean[f]) ** 2 for r in rows) / (n - 1) if n > 1 else 0.0
                for f in range(num_features)
            ]
            first = tracked[b] == 0
            tracked[b] += n
            m = (1 - n / tracked[b]) if momentum is None else momentum
            m = 0.0 if first else m
            mean[b] = [(1 - m) * c + m * o for c, o in zip(cur_mean, mean[b])]
            var[b] = [(1 - m) * c + m * o for c, o in zip(cur_var, var[b])]
    return mean, var, tracked


def _loop_calibrate(feats, bins, mean, var, s_mean, s_var, clip, eps):
    out = []
    for z, b in zip(feats, bins):
        row = []
        for f, x in enumerate(z):
            if var[b][f] <= eps:
                row.append(x)
                continue
            ratio = s_var[b][f] / var[b][f]
            if clip is not None:
                ratio = min(max(ratio, clip[0]), clip[1])
            row.append((x - mean[b][f]) * math.sqrt(ratio) + s_mean[b][f])
        out.append(row)
    return out


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _data(n, num_features=3, seed=0, high=6.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, num_features, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.rand(n, generator=g, dtype=torch.float64) ** 2 * high
    return z, y


def _run_epochs(fds, epochs, chunks=3):
    for z, y in epochs:
        for zc, yc in zip(z.chunk(chunks), y.chunk(chunks)):
            fds.update(zc, yc)
        fds.step_epoch()
    return fds


EDGES = [0.0, 0.5, 1.5, 2.0, 3.5, 5.0, 6.0]  # unequal widths; the top bins are rare


# ---------------------------------------------------------------------------------------
# Window and smoothing


@pytest.mark.parametrize(("kernel", "ks", "sigma"), [
    ("gaussian", 5, 2.0), ("gaussian", 3, 1.0), ("gaussian", 9, 1.5), ("gaussian", 1, 2.0),
    ("triang", 5, 2.0), ("triang", 7, 2.0), ("laplace", 5, 2.0), ("laplace", 3, 0.5),
])
def test_window_equals_loop(kernel, ks, sigma):
    window = lds_kernel_window(kernel, ks, sigma)
    torch.testing.assert_close(window / window.sum(), _t(_loop_window(kernel, ks, sigma)),
                               rtol=0, atol=1e-12)


def test_window_equals_scipy_when_installed():
    ndimage = pytest.importorskip("scipy.ndimage")
    signal = pytest.importorskip("scipy.signal")
    import numpy as np

    for ks, sigma in [(5, 2.0), (7, 1.0), (3, 3.0)]:
        delta = np.zeros(ks)
        delta[ks // 2] = 1.0
        ref = ndimage.gaussian_filter1d(delta, sigma=sigma)
        got = lds_kernel_window("gaussian", ks, sigma)
        np.testing.assert_allclose(got / got.sum(), ref / ref.sum(), rtol=0, atol=1e-12)
        tri = lds_kernel_window("triang", ks)
        np.testing.assert_allclose(tri / tri.sum(), signal.windows.triang(ks) /
                                   signal.windows.triang(ks).sum(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_bins", [1, 2, 3, 7])
@pytest.mark.parametrize("ks", [1, 3, 5, 9])
def test_smoothing_equals_loop(num_bins, ks):
    stats = torch.randn(num_bins, 4, dtype=torch.float64)
    window = lds_kernel_window("gaussian", ks, 2.0)
    ref = _loop_smooth(stats.tolist(), (window / window.sum()).tolist())
    torch.testing.assert_close(smooth_bin_statistics(stats, window), _t(ref), rtol=0, atol=1e-12)
    torch.testing.assert_close(smooth_bin_statistics(stats[:, 0], window), _t(ref)[:, 0],
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
def test_smoothing_equals_official_pad_reflect_conv(kernel):
    """The official form: F.pad(reflect) over the bins, conv1d with the sum-normalised window
    (valid where the padding is shorter than the bins, as the official code requires)."""
    stats = torch.randn(12, 5, dtype=torch.float64)
    window = lds_kernel_window(kernel, 5, 2.0)
    w = window / window.sum()
    x = F.pad(stats.T.unsqueeze(1), (2, 2), mode="reflect")  # (F, 1, B + 4)
    ref = F.conv1d(x, w.view(1, 1, -1)).squeeze(1).T
    torch.testing.assert_close(smooth_bin_statistics(stats, window), ref, rtol=0, atol=1e-12)


def test_constant_statistics_are_unchanged_by_smoothing():
    stats = torch.full((6, 2), 3.25, dtype=torch.float64)
    torch.testing.assert_close(smooth_bin_statistics(stats, lds_kernel_window()), stats)


# ---------------------------------------------------------------------------------------
# Statistics, smoothing and calibration of the module vs the loops


@pytest.mark.parametrize("momentum", [0.9, 0.5, 0.0, None])
def test_statistics_equal_loop_over_epochs(momentum):
    """Three epochs of different data (bins empty in some epochs, single-sample bins),
    fed in chunks: the running statistics, the smoothing and the tracked counts."""
    z0, y0 = _data(40, seed=1)
    z1, y1 = _data(25, seed=2, high=3.0)  # the top bins see nothing this epoch
    z2, y2 = _data(7, seed=3)
    epochs = [(z0, y0), (z1, y1), (z2, y2)]
    fds = _run_epochs(FDS(3, bin_edges=EDGES, momentum=momentum), epochs)
    mean, var, tracked = _loop_statistics(
        [(z.tolist(), y.tolist()) for z, y in epochs], EDGES, 3, momentum
    )
    torch.testing.assert_close(fds.running_mean, _t(mean), rtol=0, atol=1e-10)
    torch.testing.assert_close(fds.running_var, _t(var), rtol=0, atol=1e-10)
    assert fds.num_samples_tracked.tolist() == tracked
    window = _loop_window("gaussian", 5, 2.0)
    torch.testing.assert_close(fds.smoothed_mean, _t(_loop_smooth(mean, window)), rtol=0,
                               atol=1e-10)
    torch.testing.assert_close(fds.smoothed_var, _t(_loop_smooth(var, window)), rtol=0,
                               atol=1e-10)
    assert fds.epochs == 3 and int(fds.epoch) == 3
    assert fds.bin_count.sum() == 0 and fds.bin_sum.abs().sum() == 0  # sums reset


@pytest.mark.parametrize("clip", [(0.1, 10.0), (0.9, 1.1), None])
def test_forward_equals_loop_calibration(clip):
    z, y = _data(60, seed=4)
    fds = _run_epochs(FDS(3, bin_edges=EDGES, clip=clip), [(z, y)]).train()
    zq, yq = _data(20, seed=5, high=7.0)  # a few labels above the last edge: clamped
    got = fds(zq, yq)
    bins = [_loop_bin(v, EDGES) for v in yq.tolist()]
    ref = _loop_calibrate(zq.tolist(), bins, fds.running_mean.tolist(), fds.running_var.tolist(),
                          fds.smoothed_mean.tolist(), fds.smoothed_var.tolist(), clip, 1e-8)
    torch.testing.assert_close(got, _t(ref), rtol=0, atol=1e-12)


def test_clip_bounds_the_variance_ratio_not_the_scale():
    z = _t([[0.0], [2.0]])
    mean, var = _t([[1.0]]), _t([[1.0]])
    out = calibrate_features(z, torch.tensor([0, 0]), mean, var, mean, 100 * var,
                             clip=(0.1, 10.0))
    torch.testing.assert_close(out, _t([[1 - math.sqrt(10)], [1 + math.sqrt(10)]]))


def test_zero_variance_dims_pass_unchanged_and_eps_guards():
    """A single-sample bin has variance 0: its dims pass unchanged (no inf, no NaN); a
    variance below eps likewise."""
    z = _t([[1.0, 2.0], [3.0, 4.0]])
    mean, var = _t([[5.0, 5.0]]), _t([[0.0, 1e-12]])
    out = calibrate_features(z, torch.tensor([0, 0]), mean, var, mean + 1, var + 1, eps=1e-8)
    assert torch.equal(out, z)
    fds = FDS(2, bin_edges=[0.0, 1.0, 2.0])
    fds.update(_t([[7.0, 7.0], [1.0, 2.0], [3.0, 5.0]]), _t([0.5, 1.5, 1.5]))
    fds.step_epoch()
    assert fds.running_var[0].tolist() == [0.0, 0.0]
    out = fds.train()(_t([[9.0, -9.0]]), _t([0.2]))
    assert out.tolist() == [[9.0, -9.0]]


def _official_form(epochs, num_bins, momentum, query, query_labels, clip=(0.1, 10.0)):
    """The official numeric form, rebuilt from its description: integer labels are bins;
    per label a mask, torch.mean / torch.var (unbiased unless one sample); momentum with
    factor 0 in the first epoch; smoothing by F.pad(reflect) + conv1d with the window
    divided by its sum; calibration (z - m1) sqrt(clamp(v2 / v1)) + m2 per label."""
    feature_dim = query.shape[1]
    mean = torch.zeros(num_bins, feature_dim, dtype=torch.float64)
    var = torch.ones(num_bins, feature_dim, dtype=torch.float64)
    for e, (feats, labels) in enumerate(epochs):
        for label in torch.unique(labels):
            rows = feats[labels == label]
            cur_mean = rows.mean(0)
            cur_var = rows.var(0, unbiased=rows.shape[0] != 1)
            factor = 0.0 if e == 0 else momentum
            i = int(label)
            mean[i] = (1 - factor) * cur_mean + factor * mean[i]
            var[i] = (1 - factor) * cur_var + factor * var[i]
    window = lds_kernel_window("gaussian", 5, 2.0)
    w = (window / window.sum()).view(1, 1, -1)

    def smooth(s):
        return F.conv1d(F.pad(s.T.unsqueeze(1), (2, 2), mode="reflect"), w).squeeze(1).T

    s_mean, s_var = smooth(mean), smooth(var)
    out = query.clone()
    for label in torch.unique(query_labels):
        i, mask = int(label), query_labels == label
        factor = torch.clamp(s_var[i] / var[i], *clip)
        out[mask] = (query[mask] - mean[i]) * torch.sqrt(factor) + s_mean[i]
    return mean, var, out


def test_official_form_on_integer_bins():
    """Integer labels 0..K-1 with bin_edges=arange(K + 1): every bin seen every epoch (the
    official full pass over the training set), two epochs, momentum 0.9."""
    k = 8
    g = torch.Generator().manual_seed(7)
    epochs = []
    for _ in range(2):
        labels = torch.cat([torch.arange(k), torch.randint(0, k, (50,), generator=g)])
        epochs.append((torch.randn(labels.shape[0], 4, generator=g, dtype=torch.float64) + 0.5,
                       labels.double()))
    query = torch.randn(30, 4, generator=g, dtype=torch.float64)
    query_labels = torch.randint(0, k, (30,), generator=g).double()
    mean, var, ref = _official_form(epochs, k, 0.9, query, query_labels)
    fds = _run_epochs(FDS(4, bin_edges=torch.arange(k + 1.0)), epochs).train()
    torch.testing.assert_close(fds.running_mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(fds.running_var, var, rtol=0, atol=1e-12)
    torch.testing.assert_close(fds(query, query_labels), ref, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Identity where FDS is off; gradients; no in-place writes


def test_identity_before_first_update_at_inference_and_without_labels():
    z, y = _data(16, seed=8)
    fds = FDS(3, bin_edges=EDGES, start_epoch=2).train()
    assert fds(z, y) is z and not fds.calibrating  # no statistics yet
    _run_epochs(fds, [(z, y)])
    assert fds(z, y) is z  # epoch 1 < start_epoch
    _run_epochs(fds, [(z, y)])
    assert fds.calibrating
    assert not torch.equal(fds(z, y), z)
    assert fds(z) is z and fds(z, None) is z  # no labels
    assert fds.eval()(z, y) is z  # inference


def test_start_epoch_zero_and_one_both_start_after_the_first_epoch():
    z, y = _data(16, seed=8)
    for start in (0, 1):
        fds = FDS(3, bin_edges=EDGES, start_epoch=start).train()
        assert fds(z, y) is z
        _run_epochs(fds, [(z, y)])
        assert fds.calibrating and fds(z, y) is not z


def _trained(num_features=3, **kwargs):
    z, y = _data(80, num_features=num_features, seed=9)
    return _run_epochs(FDS(num_features, bin_edges=EDGES, **kwargs), [(z, y)]).train()


def test_gradcheck_through_calibration():
    fds = _trained(clip=None)
    z, y = _data(10, seed=10)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fds(x, y), (z,))
    bins = fds.bin(y)
    stats = [t.clone().requires_grad_() for t in (fds.running_mean, fds.smoothed_mean)]
    assert torch.autograd.gradcheck(
        lambda x, m, sm: calibrate_features(x, bins, m, fds.running_var, sm, fds.smoothed_var),
        (z, *stats),
    )


def test_no_in_place_error_where_the_official_assignment_fails():
    """A backbone whose output its own backward needs (tanh) and that is used twice: the
    official ``features[mask] = ...`` assignment breaks backward; FDS does not, and leaves
    its input unchanged."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(5, 3), nn.Tanh()).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    _, y = _data(12, seed=11)
    fds = _trained()

    z = backbone(x)
    mask = y > 1.0
    z[mask] = z[mask] * 2.0 + 1.0  # the official pattern
    with pytest.raises(RuntimeError, match="inplace"):
        (z.sum() + z.pow(2).sum()).backward()

    z = backbone(x)
    before = z.detach().clone()
    calibrated = fds(z, y)
    (calibrated.pow(2).sum() + z.sum()).backward()  # z used twice
    assert torch.equal(z.detach(), before)
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in backbone.parameters())


def test_between_backbone_and_multi_expert_head():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = torch.rand(64) * 6
    binner = GroupBinner(3).fit(y)
    backbone = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))
    fds = FDS(8, bin_edges=torch.arange(7.0))
    head = MultiExpertHead(8, num_groups=3)
    criterion = GroupDIRLoss(binner)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01)
    for _ in range(3):  # epochs
        for idx in torch.arange(64).chunk(4):
            features = fds(backbone(x[idx]), y[idx])
            loss = criterion(head(features, binner(y[idx])), features, y[idx]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            fds.update(features, y[idx])  # statistics from the training batches
        fds.step_epoch()
    assert torch.isfinite(loss) and fds.calibrating
    fds.eval()
    backbone.eval()
    z = backbone(x)
    assert fds(z, y) is z


# ---------------------------------------------------------------------------------------
# Bins: float labels, edges, a binner, fitted ranges, clamping


def test_labels_outside_the_edges_are_clamped_or_rejected():
    fds = FDS(2, bin_edges=[0.0, 1.0, 2.0, 3.0])
    fds.update(torch.zeros(4, 2), _t([-5.0, 0.5, 2.5, 9.0]))
    assert fds.bin_count.tolist() == [2.0, 0.0, 2.0]
    assert fds.bin(_t([1.0, 2.0, 3.0])).tolist() == [1, 2, 2]  # inner edge: the bin above
    strict = FDS(2, bin_edges=[0.0, 1.0, 2.0, 3.0], validate=True)
    strict.update(torch.zeros(2, 2), _t([0.0, 3.0]))  # the outer edges are inside
    with pytest.raises(ValueError, match=r"in \[0.0, 3.0\].*clamped"):
        strict.update(torch.zeros(2, 2), _t([0.5, 3.5]))
    with pytest.raises(ValueError, match="NaN"):
        strict.update(torch.zeros(1, 2), _t([math.nan]))


def test_binner_edges_and_fitted_equal_width_bins():
    y = torch.rand(200, dtype=torch.float64) * 4 + 1
    z = torch.randn(200, 2, dtype=torch.float64)
    binner = GroupBinner(5).fit(y)
    a = _run_epochs(FDS(2, bin_edges=binner), [(z, y)])
    b = _run_epochs(FDS(2, bin_edges=binner.edges), [(z, y)])
    c = _run_epochs(FDS(2, 5).fit(y), [(z, y)])
    for other in (b, c):
        torch.testing.assert_close(a.running_mean, other.running_mean, rtol=0, atol=1e-12)
    assert a.num_bins == 5 and torch.equal(a.bin_edges, binner.edges)


def test_integer_labels_work():
    fds = FDS(2, bin_edges=torch.arange(4.0))
    fds.update(torch.ones(3, 2), torch.tensor([0, 1, 3]))
    assert fds.bin_count.tolist() == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------
# Module battery: state_dict, compile, autocast, dtypes, degenerate batches, meta


def test_state_dict_round_trip_mid_epoch():
    fds = _trained()
    z, y = _data(9, seed=12)
    fds.update(z, y)  # half an epoch of sums, saved too
    fresh = FDS(3, bin_edges=EDGES)
    fresh.load_state_dict(fds.state_dict())
    assert fresh.epochs == 1 and fresh.calibrating
    for name, value in fds.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert "kernel_window" not in fds.state_dict()
    assert torch.equal(fresh.train()(z, y), fds(z, y))
    fresh.step_epoch()
    fds.step_epoch()
    torch.testing.assert_close(fresh.running_mean, fds.running_mean, rtol=0, atol=0)
    unfitted = FDS(3, 6)
    unfitted.load_state_dict(fds.state_dict())
    assert unfitted.fitted


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    fds = _trained()
    z, y = _data(32, seed=13)
    compiled = torch.compile(fds, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(z.float(), y.float()), fds(z.float(), y.float()),
                               rtol=1e-6, atol=1e-6)  # float32: the same ops, maybe reordered
    z.requires_grad_()
    compiled(z, y).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    with torch._dynamo.config.patch(error_on_recompile=True):  # new epochs: same graph
        for seed in (17, 18):
            _run_epochs(fds, [_data(30, seed=seed)])
            torch.testing.assert_close(compiled(z, y), fds(z, y), rtol=0, atol=1e-12)


def test_autocast_bf16_and_half_keep_float64_buffers():
    fds = _trained()
    z, y = _data(16, seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fds(nn.Linear(3, 3)(z.float()), y)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    fds.half()
    assert fds.running_mean.dtype == torch.float64 and fds.bin_edges.dtype == torch.float64
    out = fds(z.half(), y)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), fds(z, y).float(), rtol=1e-2, atol=1e-2)


def test_empty_batch_and_unseen_bins_keep_the_prior():
    fds = FDS(2, bin_edges=EDGES)
    fds.update(torch.zeros(0, 2), torch.zeros(0))
    fds.update(_t([[1.0, 2.0], [3.0, 6.0]]), _t([0.1, 0.2]))
    fds.step_epoch()
    assert fds.running_mean[0].tolist() == [2.0, 4.0]
    assert fds.running_mean[1:].abs().sum() == 0 and (fds.running_var[1:] == 1).all()
    out = fds.train()(torch.zeros(0, 2), torch.zeros(0))
    assert out.shape == (0, 2)
    fds.step_epoch()  # an epoch without data: statistics unchanged
    assert fds.running_mean[0].tolist() == [2.0, 4.0] and fds.epochs == 2


def test_reset_and_meta_then_to_empty(device):
    fds = _trained().to(device)
    fds.reset()
    assert fds.epochs == 0 and not fds.calibrating and fds.fitted
    assert (fds.running_var == 1).all() and fds.num_samples_tracked.sum() == 0
    with torch.device("meta"):
        meta = FDS(3, bin_edges=EDGES)
    z = torch.zeros(4, 3, device="meta")
    assert meta(z, torch.zeros(4, device="meta")).shape == (4, 3)
    meta.to_empty(device=device)
    assert meta.bin_edges.tolist() == EDGES and (meta.running_var == 1).all()
    assert meta.kernel_window.sum() > 0
    z, y = _data(8, seed=15)
    _run_epochs(meta, [(z.to(device), y.to(device))])
    assert meta.calibrating


# ---------------------------------------------------------------------------------------
# Errors a user can act on


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0,), {"num_bins": 3}, "num_features"),
        ((3,), {}, "num_bins"),
        ((3, 0), {}, "num_bins"),
        ((3, 4), {"bin_edges": [0.0, 1.0]}, r"len\(bin_edges\) - 1"),
        ((3,), {"bin_edges": [1.0, 0.0]}, "increasing"),
        ((3,), {"bin_edges": GroupBinner(3)}, "fitted GroupBinner"),
        ((3, 3), {"kernel": "box"}, "kernel"),
        ((3, 3), {"kernel_size": 4}, "odd"),
        ((3, 3), {"sigma": 0.0}, "sigma"),
        ((3, 3), {"momentum": 1.0}, "momentum"),
        ((3, 3), {"momentum": -0.1}, "momentum"),
        ((3, 3), {"momentum": True}, "momentum"),
        ((3, 3), {"start_epoch": -1}, "start_epoch"),
        ((3, 3), {"clip": (10.0, 1.0)}, "clip"),
        ((3, 3), {"clip": (0.0, 1.0)}, "clip"),
        ((3, 3), {"clip": 5.0}, "clip"),
        ((3, 3), {"eps": -1.0}, "eps"),
    ],
)
def test_bad_arguments_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FDS(*args, **kwargs)


def test_bad_shapes_and_order_raise():
    fds = FDS(3, 4)
    with pytest.raises(RuntimeError, match="fit"):
        fds.update(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        fds.fit([0.0, math.nan])
    with pytest.raises(ValueError, match="more than one value"):
        fds.fit([1.0, 1.0])
    fds.fit([0.0, 4.0])
    with pytest.raises(ValueError, match=r"expected features of shape \(N, 3\)"):
        fds.update(torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected features of shape \(N, 3\)"):
        fds(torch.zeros(2, 3, 1), torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected target of shape \(2,\)"):
        fds.update(torch.zeros(2, 3), torch.zeros(3))
    _run_epochs(fds, [(torch.randn(8, 3), torch.rand(8) * 4)], chunks=1)
    with pytest.raises(ValueError, match=r"expected target of shape \(2,\) or \(2, 1\)"):
        fds.train()(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="expected mean of shape"):
        calibrate_features(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                           torch.zeros(4, 2), torch.ones(4, 3), torch.zeros(4, 3),
                           torch.ones(4, 3))
    with pytest.raises(ValueError, match="odd length"):
        smooth_bin_statistics(torch.zeros(3, 2), torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_forward_and_backward_do_not_sync():
    device = torch.device("cuda")
    fds = _trained().to(device)
    z, y = _data(64, seed=16)
    z, y = z.float().to(device).requires_grad_(), y.float().to(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fds(z, y)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu(), fds.cpu()(z.detach().cpu(), y.cpu()),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py)

FDS_STATE = frozenset({
    "bin_edges", "running_mean", "running_var", "smoothed_mean", "smoothed_var",
    "num_samples_tracked", "epoch", "bin_count", "bin_sum", "bin_sum_sq",
})  # not kernel_window: a constructor setting


def fds_spec(name, make):
    """``make()``: an FDS over 3 features, fitted or with edges; ``build`` gives it one
    epoch of statistics, ``fresh`` a new one from ``make`` (the load sets edges, statistics
    and epoch). No reduction: the output is the (N, F) calibrated features."""

    def build():
        z, y = _data(80, seed=9)
        fds = make()
        if not fds.fitted:
            fds.fit(y)
        return _run_epochs(fds, [(z, y)]).train()

    def function(fds, features, target):
        return calibrate_features(
            features, fds.bin(target), fds.running_mean, fds.running_var, fds.smoothed_mean,
            fds.smoothed_var, clip=fds.clip, eps=fds.eps,
        )

    return Spec(
        name,
        build=build,
        inputs=lambda dtype, device: (
            torch.randn(10, 3, dtype=dtype, device=device) * 2 + 1,
            torch.rand(10, dtype=dtype, device=device) ** 2 * 6,
        ),
        function=function,
        reductions=(),
        autocast_dtype=torch.bfloat16,  # the features' dtype
        fresh=make,
        state_keys=FDS_STATE,
    )


TestBattery = battery(
    fds_spec("edges", lambda: FDS(3, bin_edges=EDGES)),
    fds_spec("fitted-cumulative-unclipped",
             lambda: FDS(3, 5, kernel="triang", kernel_size=3, momentum=None, clip=None)),
)
