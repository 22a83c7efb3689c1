"""dirloss.plots: the three figures render (Agg), are labelled, write files, and draw the
right numbers (bar heights, per-bin errors and candidate points against plain loops)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dirloss import (
    GroupBinner,
    MultiExpertHead,
    plot_binned_error,
    plot_inference_tradeoff,
    plot_label_histogram,
    plot_per_bin_error,
    select_inference,
)
from dirloss.metrics import shot_metrics
from dirloss.plots import REGION_COLOURS

try:
    import matplotlib
except ImportError:  # the rendering tests skip; the missing-extra error is still checked
    matplotlib = None
else:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

needs_matplotlib = pytest.mark.skipif(matplotlib is None, reason="matplotlib is not installed")


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    if matplotlib is not None:
        plt.close("all")


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(3000, generator=g) ** 2) * 10  # dense near 0, thin tail to 10
    y = torch.rand(400, generator=g) * 10
    return train, y, y + 0.2 * torch.randn(400, generator=g) * (1 + y)


def _save(ax: object, path: Path) -> None:
    ax.figure.savefig(path)  # type: ignore[attr-defined]
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bars(ax: object) -> dict[float, tuple[float, tuple[float, ...]]]:
    """x of each bar -> (height, facecolour)."""
    return {round(p.get_x(), 9): (p.get_height(), p.get_facecolor())
            for p in ax.patches}  # type: ignore[attr-defined]


@needs_matplotlib
def test_label_histogram(tmp_path: Path) -> None:
    train, _, _ = _data()
    binner = GroupBinner(4).fit(train)
    ax = plot_label_histogram(train, groups=binner, many_shot=400, few_shot=150)
    assert ax.get_xlabel() == "label" and "training labels per bin" in ax.get_ylabel()
    assert ax.get_yscale() == "log"
    edges = np.arange(0.0, 11.0)  # shot_metrics' bins of width 1 over [0, 10]
    bars = _bars(ax)
    assert sorted(bars) == edges[:-1].tolist()
    for lo in edges[:-1]:  # plain loop: count, region by the thresholds
        n = int(((train >= lo) & (train < lo + 1)).sum() + (lo == 9) * (train == 10).sum())
        region = "many" if n > 400 else "few" if n < 150 else "medium"
        height, colour = bars[lo]
        assert height == n and colour[:3] == to_rgba(REGION_COLOURS[region])[:3]
    dotted = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert dotted == pytest.approx(binner.edges[1:-1].tolist())
    assert any("many-shot" in t.get_text() for t in ax.get_legend().get_texts())
    _save(ax, tmp_path / "histogram.png")


@needs_matplotlib
def test_label_histogram_on_given_axes_with_regions_and_empty_bins(tmp_path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2)
    ax = plot_label_histogram([0.5, 0.5, 2.5], bin_edges=[0, 1, 2, 3],
                              regions={"many": [0], "few": [2]}, log=False,
                              groups=[0.0, 1.5, 3.0], xlabel="age", ax=right)
    assert ax is right and ax.get_xlabel() == "age" and ax.get_yscale() == "linear"
    bars = _bars(ax)
    assert bars[0.0][0] == 2 and bars[2.0][0] == 1  # bin 1 is in no region, and empty
    assert bars[1.0][1][:3] == to_rgba(REGION_COLOURS["none"])[:3]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert crosses and crosses[0].get_xdata().tolist() == [1.5]
    _save(ax, tmp_path / "given.png")


@needs_matplotlib
def test_per_bin_error_matches_a_loop(tmp_path: Path) -> None:
    train, y, pred = _data()
    other = y + 0.5
    ax = plot_per_bin_error({"noisy": pred, "offset": other}, y, train, many_shot=400,
                            few_shot=150)
    assert ax.get_xlabel() == "label" and ax.get_ylabel() == "test MAE per bin"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"noisy", "offset"}
    for name, p in (("noisy", pred), ("offset", other)):
        xs, ys = lines[name].get_xdata(), lines[name].get_ydata()
        for x, value in zip(xs, ys):  # plain loop over the test samples of the bin
            lo = x - 0.5
            inside = [abs(float(a - b)) for a, b in zip(p, y)
                      if lo <= float(b) < lo + 1 or (lo == 9 and float(b) == 10)]
            assert value == pytest.approx(sum(inside) / len(inside), rel=1e-9)
    assert lines["offset"].get_ydata() == pytest.approx(0.5)
    # the curve averages to shot_metrics' numbers: weights = test samples per bin
    counts = np.bincount(np.clip(np.floor(y.numpy()), 0, 9).astype(int), minlength=10)
    noisy = lines["noisy"].get_ydata()
    mae = shot_metrics(pred, y, train, many_shot=400, few_shot=150)["all"]["mae"]
    assert float((noisy * counts[counts > 0]).sum() / counts.sum()) == pytest.approx(mae)
    twin = [a for a in ax.figure.axes if a is not ax][0]
    assert twin.get_ylabel() == "training labels per bin" and len(twin.patches) == 10
    _save(ax, tmp_path / "per-bin.png")


@needs_matplotlib
def test_per_bin_error_seeds_band_and_mse() -> None:
    train, y, pred = _data()
    seeds = torch.stack([pred, pred + 0.1, pred - 0.1])
    ax = plot_per_bin_error(seeds, y, train, metric="mse", bin_width=2.0, log=True)
    assert ax.get_ylabel() == "test MSE per bin"
    twin = [a for a in ax.figure.axes if a is not ax][0]
    assert twin.get_yscale() == "log" and "(log)" in twin.get_ylabel()
    assert len(ax.collections) == 1  # the +-1 std band
    (line,) = ax.get_lines()
    assert line.get_label() == "model" and len(line.get_xdata()) == 5


@needs_matplotlib
def test_binned_error_draws_given_values_and_bands(tmp_path: Path) -> None:
    edges, counts = [0.0, 1.0, 2.0, 4.0], [50, 10, 2]
    ax = plot_binned_error({"a": [1.0, 2.0, math.nan], "b": [0.5, 0.5, 0.7]}, edges, counts,
                           bands={"a": [0.1, 0.2, 0.3], "ignored": [1, 1, 1]},
                           bin_regions=["many", "medium", "few"], metric="mse")
    assert ax.get_ylabel() == "test MSE per bin"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["a"].get_xdata()) == [0.5, 1.5]  # the NaN bin is not drawn
    assert list(lines["a"].get_ydata()) == [1.0, 2.0]
    assert list(lines["b"].get_xdata()) == [0.5, 1.5, 3.0]
    assert len(ax.collections) == 1  # one band, for "a"
    twin = [a for a in ax.figure.axes if a is not ax][0]
    bars = _bars(twin)
    assert [h for h, _ in bars.values()] == counts
    assert [c for _, c in bars.values()] == [
        to_rgba(REGION_COLOURS[r], 0.35) for r in ("many", "medium", "few")]
    _save(ax, tmp_path / "binned.png")


@needs_matplotlib
def test_per_bin_error_is_binned_error_of_its_per_bin_means() -> None:
    """plot_per_bin_error draws exactly what plot_binned_error draws from the per-bin means."""
    train, y, pred = _data()
    ax = plot_per_bin_error(pred, y, train, many_shot=400, few_shot=150)
    (line,) = ax.get_lines()
    bins = np.clip(np.floor(y.numpy()), 0, 9).astype(int)
    err = np.abs(pred.double().numpy() - y.double().numpy())
    means = [err[bins == b].mean() for b in range(10)]
    counts = np.bincount(np.clip(np.floor(train.numpy()), 0, 9).astype(int), minlength=10)
    again = plot_binned_error({"model": means}, np.arange(11.0), counts)
    np.testing.assert_allclose(again.get_lines()[0].get_ydata(), line.get_ydata(), rtol=1e-9)


def test_binned_error_bad_input() -> None:
    with pytest.raises(ValueError, match="increasing bin_edges"):
        plot_binned_error({"a": [1.0]}, [1.0, 0.0], [3])
    with pytest.raises(ValueError, match=r"train_counts of shape \(2,\)"):
        plot_binned_error({"a": [1.0, 2.0]}, [0, 1, 2], [3])
    with pytest.raises(ValueError, match=r"expected errors\['a'\] of shape \(2,\)"):
        plot_binned_error({"a": [1.0]}, [0, 1, 2], [3, 4])
    with pytest.raises(ValueError, match=r"expected bands\['a'\] of shape \(2,\)"):
        plot_binned_error({"a": [1.0, 2.0]}, [0, 1, 2], [3, 4], bands={"a": [1.0]})
    with pytest.raises(ValueError, match="at least one model"):
        plot_binned_error({}, [0, 1], [3])
    with pytest.raises(ValueError, match="expected 2 bin_regions"):
        plot_binned_error({"a": [1.0, 2.0]}, [0, 1, 2], [3, 4], bin_regions=["few"])
    with pytest.raises(ValueError, match="metric"):
        plot_binned_error({"a": [1.0]}, [0, 1], [3], metric="rmse")


def test_per_bin_error_bad_input() -> None:
    train, y, pred = _data()
    with pytest.raises(ValueError, match="metric"):
        plot_per_bin_error(pred, y, train, metric="rmse")
    with pytest.raises(ValueError, match=r"expected predictions of shape \(400,\)"):
        plot_per_bin_error({"short": pred[:10]}, y, train)
    with pytest.raises(ValueError, match="at least one model"):
        plot_per_bin_error({}, y, train)
    with pytest.raises(ValueError, match="few_shot <= many_shot"):
        plot_per_bin_error(pred, y, train, many_shot=1, few_shot=5)


@needs_matplotlib
def test_inference_tradeoff_from_select_inference(tmp_path: Path) -> None:
    train, y, _ = _data()
    binner = GroupBinner(4).fit(train)
    head = MultiExpertHead(8, num_groups=4)
    with pytest.warns(UserWarning, match="validation rows"):
        choice = select_inference(head, torch.randn(15, 8), y[:15], binner)
    ax = plot_inference_tradeoff(choice, max_mae_increase=0.02)
    assert ax.get_xlabel() == "overall MAE" and ax.get_ylabel() == "balanced MAE"
    (points, star) = ax.collections[:2]
    expected = [(mae, bmae) for bmae, mae in choice.scores.values()]
    np.testing.assert_allclose(points.get_offsets(), expected, rtol=1e-12)
    best = choice.scores[(choice.inference, choice.tau)]
    np.testing.assert_allclose(star.get_offsets(), [[best[1], best[0]]], rtol=1e-12)
    texts = {t.get_text() for t in ax.texts}
    assert texts == {f"{m}, tau={t:g}" for m, t in choice.scores}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"chosen: {choice.inference}, tau={choice.tau:g}" in legend
    _save(ax, tmp_path / "tradeoff.png")


@needs_matplotlib
def test_inference_tradeoff_from_a_mapping(tmp_path: Path) -> None:
    scores = {"MSE": (5.0, 9.0), "LDS": (5.5, 7.0), "bad": (6.0, 8.0), "dirloss": (5.2, 6.5)}
    ax = plot_inference_tradeoff(scores, chosen="dirloss", xlabel="all MAE", ylabel="few MAE")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("all MAE", "few MAE")
    front = [line for line in ax.get_lines() if line.get_label() == "Pareto front"][0]
    assert front.get_xdata().tolist() == [5.0, 5.2]  # LDS and bad are dominated by dirloss
    _save(ax, tmp_path / "mapping.png")
    with pytest.raises(ValueError, match="chosen among"):
        plot_inference_tradeoff(scores, chosen="nope")
    with pytest.raises(ValueError, match="at least one candidate"):
        plot_inference_tradeoff({})
    with pytest.raises(ValueError, match="finite"):
        plot_inference_tradeoff({"a": (math.nan, 1.0)})


def test_unfitted_binner_raises() -> None:
    with pytest.raises(ValueError, match="fitted GroupBinner"):
        plot_label_histogram(torch.rand(10) * 5, groups=GroupBinner(3))


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    if matplotlib is not None:
        monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # the import fails
    with pytest.raises(ImportError, match=r"pip install 'dirloss\[plot\]'"):
        plot_label_histogram(torch.rand(10) * 5)
