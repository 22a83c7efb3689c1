"""LDS and inverse-frequency weights: the official recipe's kernel values and order of
operations, checked by plain loops in float64 and by hand-worked histograms; and the module
battery, run on the weighted MSE the weights feed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _battery import Spec, battery
from _strict_warnings import warnings_raise

from dirloss import LabelDensityWeights
from dirloss.functional import weighted_mse_loss
from dirloss.reweighting import label_density_weights, lds_kernel_window


# ---------------------------------------------------------------------------------------------
# Loop references, written from the recipe: filter a delta with reflecting boundaries, count
# integer labels into a dict, transform, clip, convolve with zero padding, invert, rescale.
# ---------------------------------------------------------------------------------------------
def _loop_gaussian_window(ks: int, sigma: float) -> list[float]:
    radius = int(4.0 * sigma + 0.5)
    taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(taps)
    delta = [1.0 if i == ks // 2 else 0.0 for i in range(ks)]

    def at(j: int) -> float:  # half-sample symmetric extension, unrolled one fold at a time
        while j < 0 or j >= ks:
            j = -j - 1 if j < 0 else 2 * ks - 1 - j
        return delta[j]

    out = [sum(taps[k + radius] / total * at(i + k) for k in range(-radius, radius + 1))
           for i in range(ks)]
    return [v / max(out) for v in out]


def _loop_official_weights(labels, max_target, reweight, lds, window, clip):
    """Per-sample weights for integer-binned labels, step by step with Python lists."""
    value = {b: 0.0 for b in range(max_target)}
    for y in labels:
        value[min(max_target - 1, int(y))] += 1
    if reweight == "sqrt_inv":
        value = {b: math.sqrt(v) for b, v in value.items()}
    if clip is not None:
        value = {b: min(max(v, clip[0]), clip[1]) for b, v in value.items()}
    per_bin = [value[b] for b in range(max_target)]
    if lds:
        half = len(window) // 2
        per_bin = [
            sum(window[k + half] * per_bin[b + k] for k in range(-half, half + 1)
                if 0 <= b + k < max_target)
            for b in range(max_target)
        ]
    weights = [1.0 / per_bin[min(max_target - 1, int(y))] for y in labels]
    scale = len(weights) / sum(weights)
    return [scale * w for w in weights]


# ---------------------------------------------------------------------------------------------
# Kernel windows
# ---------------------------------------------------------------------------------------------
def test_gaussian_window_is_the_reflected_filter_not_the_plain_gaussian():
    window = lds_kernel_window("gaussian", 5, 2.0)
    assert window.tolist() == pytest.approx([0.858, 0.946, 1.0, 0.946, 0.858], abs=1e-3)
    plain = [math.exp(-(k**2) / 8) for k in range(-2, 3)]  # what the old baseline used
    assert plain == pytest.approx([0.607, 0.883, 1.0, 0.883, 0.607], abs=1e-3)
    assert not torch.allclose(window, torch.tensor(plain, dtype=torch.float64), atol=0.1)


@pytest.mark.parametrize(("ks", "sigma"), [(1, 1.0), (3, 0.5), (5, 2.0), (7, 1.0), (9, 3.0),
                                           (5, 10.0), (11, 0.3)])
def test_gaussian_window_equals_loop(ks, sigma):
    got = lds_kernel_window("gaussian", ks, sigma)
    torch.testing.assert_close(got, torch.tensor(_loop_gaussian_window(ks, sigma),
                                                 dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_triang_and_laplace_windows_by_hand():
    assert lds_kernel_window("triang", 5).tolist() == pytest.approx([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    lap = lds_kernel_window("laplace", 5, 2.0).tolist()
    assert lap == pytest.approx([math.exp(-1), math.exp(-0.5), 1, math.exp(-0.5), math.exp(-1)])


def test_windows_agree_with_scipy_when_installed():
    ndimage = pytest.importorskip("scipy.ndimage")
    signal = pytest.importorskip("scipy.signal")
    for ks, sigma in [(5, 2.0), (9, 1.5), (3, 4.0)]:
        delta = np.zeros(ks)
        delta[ks // 2] = 1.0
        ref = ndimage.gaussian_filter1d(delta, sigma)  # mode="reflect", truncate=4.0
        np.testing.assert_allclose(lds_kernel_window("gaussian", ks, sigma), ref / ref.max(),
                                   rtol=1e-12)
        np.testing.assert_allclose(lds_kernel_window("triang", ks), signal.windows.triang(ks),
                                   rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def test_sqrt_inv_smooths_square_rooted_counts_then_inverts_by_hand():
    # counts 16, 4, 1 -> sqrt 4, 2, 1 -> convolved with w = [w2, w1, 1, w1, w2] (zeros beyond)
    w = lds_kernel_window("gaussian", 5, 2.0).tolist()
    w1, w2 = w[1], w[0]
    smoothed = [4 + w1 * 2 + w2 * 1, w1 * 4 + 2 + w1 * 1, w2 * 4 + w1 * 2 + 1]
    inverse = [1 / s for s in smoothed]
    scale = 21 / (16 * inverse[0] + 4 * inverse[1] + 1 * inverse[2])
    got = label_density_weights(torch.tensor([16, 4, 1]))
    assert got.tolist() == pytest.approx([scale * v for v in inverse], rel=1e-12)
    # the old baseline's order (smooth the counts, then 1/sqrt) gives another ratio
    wrong_ratio = math.sqrt((w2 * 16 + w1 * 4 + 1) / (16 + w1 * 4 + w2))
    assert float(got[0] / got[2]) != pytest.approx(wrong_ratio, rel=1e-3)


def test_training_weights_have_mean_one():
    counts = torch.tensor([50, 0, 7, 3, 120, 1])
    for reweight in ("sqrt_inv", "inverse"):
        for lds in (True, False):
            w = label_density_weights(counts, reweight=reweight, lds=lds)
            assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0, rel=1e-12)


def test_empty_bin_without_lds_gets_the_rarest_weight_not_inf():
    w = label_density_weights(torch.tensor([10, 0, 2]), reweight="inverse", lds=False)
    assert torch.isfinite(w).all() and w[1] == w[2]


def test_reweight_none_is_ones():
    assert label_density_weights(torch.tensor([3, 9]), reweight="none").tolist() == [1.0, 1.0]


@pytest.mark.parametrize("reweight", ["sqrt_inv", "inverse"])
@pytest.mark.parametrize("lds", [True, False])
@pytest.mark.parametrize("clip", [None, (5.0, 1000.0)])
@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
def test_module_equals_official_recipe_on_integer_labels(reweight, lds, clip, kernel):
    gen = np.random.default_rng(0)
    labels = np.minimum(gen.exponential(8.0, size=600), 39.999).astype(np.float64)
    labels = np.floor(labels) + gen.uniform(0, 1, size=labels.size) * 0.9  # not integers
    module = LabelDensityWeights(bin_edges=torch.arange(41.0), reweight=reweight, lds=lds,
                                 kernel=kernel, kernel_size=5, sigma=2.0, clip=clip).fit(labels)
    window = lds_kernel_window(kernel, 5, 2.0).tolist()
    ref = _loop_official_weights(labels.tolist(), 40, reweight, lds, window, clip)
    got = module(torch.from_numpy(labels))
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# Module: bins, state, devices, compile, errors
# ---------------------------------------------------------------------------------------------
def test_equal_width_bins_over_float_labels():
    labels = torch.tensor([0.1, 0.2, 0.25, 0.3, 0.8, 1.3])
    module = LabelDensityWeights(3, lds=False).fit(labels)
    torch.testing.assert_close(module.bin_edges, torch.linspace(0.1, 1.3, 4, dtype=torch.float64))
    assert module.counts.tolist() == [4, 1, 1]
    edge = module.bin_edges[1].float()  # on an inner edge: the bin above
    assert module(edge.view(1)) == module.bin_weights[1].float()
    outside = module(torch.tensor([-5.0, 7.0]))
    assert outside.tolist() == pytest.approx(module.bin_weights[[0, 2]].tolist(), rel=1e-6)


def test_forward_shape_dtype_and_column_target(device):
    module = LabelDensityWeights(4).fit(torch.rand(100)).to(device)
    y = torch.rand(8, 1, device=device, dtype=torch.float16)
    out = module(y)
    assert out.shape == (8,) and out.dtype == torch.float16 and out.device.type == device.type


def test_a_strided_target_column_bins_without_a_copy_warning():
    # torch.bucketize warns about (and copies) a non-contiguous input, e.g. the column of a
    # wider float64 target; torch warns once per process, so make it warn always here
    # (warnings_raise).
    module = LabelDensityWeights(4).fit(torch.rand(100))
    column = torch.rand(8, 3, dtype=torch.float64)[:, 1:2]
    assert not column[:, 0].is_contiguous()
    with warnings_raise():
        got = module(column)
    assert torch.equal(got, module(column.contiguous()))


def test_state_dict_round_trip():
    a = LabelDensityWeights(6, kernel="laplace", sigma=1.0).fit(torch.randn(300).exp())
    b = LabelDensityWeights(6, kernel="laplace", sigma=1.0)
    assert not b.fitted
    b.load_state_dict(a.state_dict())
    assert b.fitted
    y = torch.randn(20).exp()
    assert torch.equal(a(y), b(y))  # same buffers, same lookup


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    module = LabelDensityWeights(5).fit(torch.rand(200) ** 2)
    y = torch.rand(32)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(y), module(y))  # a gather: the same values either way


def test_meta_then_to_empty_then_fit():
    with torch.device("meta"):
        module = LabelDensityWeights(bin_edges=[0.0, 1.0, 2.0])
    assert module(torch.zeros(3, device="meta")).shape == (3,)
    module.to_empty(device="cpu")
    assert module.bin_edges.tolist() == [0.0, 1.0, 2.0]
    module.fit([0.5, 0.5, 1.5])
    assert module.fitted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "num_bins"),
        ({"num_bins": 0}, "num_bins"),
        ({"num_bins": 3, "bin_edges": [0.0, 1.0]}, "len\\(bin_edges\\) - 1"),
        ({"bin_edges": [1.0, 0.0]}, "increasing"),
        ({"num_bins": 3, "kernel": "box"}, "kernel"),
        ({"num_bins": 3, "kernel_size": 4}, "odd"),
        ({"num_bins": 3, "sigma": 0.0}, "sigma"),
        ({"num_bins": 3, "reweight": "sqrt"}, "reweight"),
        ({"num_bins": 3, "clip": (10.0, 1.0)}, "clip"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelDensityWeights(**kwargs)


def test_bad_data_raises():
    module = LabelDensityWeights(3)
    with pytest.raises(RuntimeError, match="fit"):
        module(torch.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        module.fit([0.0, float("nan")])
    with pytest.raises(ValueError, match="more than one value"):
        module.fit([2.0, 2.0])
    module.fit([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        module(torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------
# The standard battery (tests/_battery.py): the weights in the loss they are made for
# ---------------------------------------------------------------------------------------------
def lds_weighted_mse(lds, pred, target):
    """The official LDS recipe's loss: ``weighted_mse_loss`` with the module's weights."""
    return weighted_mse_loss(pred, target, lds(target))


def lds_spec(name, make):
    """``make()`` fitted on skewed labels in [0, 4); the module has no reduction (the
    weights are per sample), so the battery checks it inside its weighted MSE; the twin
    looks the weights up in the buffers (a label on an inner edge: the bin above)."""

    def function(lds, pred, target):
        bins = torch.bucketize(target.to(torch.float64), lds.bin_edges[1:-1], right=True)
        return weighted_mse_loss(pred, target, lds.bin_weights[bins].to(target.dtype))

    return Spec(
        name,
        build=lambda: make().fit(torch.rand(300, dtype=torch.float64) ** 2 * 4),
        inputs=lambda dtype, device: (
            torch.randn(12, dtype=dtype, device=device) + 2,
            torch.rand(12, dtype=dtype, device=device) * 4,
        ),
        function=function,
        call=lds_weighted_mse,
        reductions=(),
        fresh=make,  # unfitted: the load marks it fitted
        state_keys=frozenset({"bin_edges", "bin_weights", "counts"}),
    )


TestBattery = battery(
    lds_spec("lds-sqrt-inv", lambda: LabelDensityWeights(8)),
    lds_spec("inverse-clipped-edges", lambda: LabelDensityWeights(
        bin_edges=[0.0, 0.5, 1.0, 2.0, 3.0, 4.0], reweight="inverse", lds=False,
        clip=(5.0, 1000.0),
    )),
)
