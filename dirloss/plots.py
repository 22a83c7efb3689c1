r"""Plots for deep imbalanced regression: where the labels are, where the errors are.

Three figures that DIR results are read from:

* :func:`plot_label_histogram`: the training labels per evaluation bin, coloured by shot
  region, with a binner's group edges;
* :func:`plot_per_bin_error`: the per-bin test error of one or several models over the
  training density (:func:`plot_binned_error` draws per-bin errors already computed);
* :func:`plot_inference_tradeoff`: overall against rare-label error of the inference
  candidates that :func:`~dirloss.select_inference` scored.

The bins and shot regions are those of :func:`~dirloss.metrics.shot_metrics` (same
arguments, same rules). matplotlib is optional (``pip install 'dirloss[plot]'``) and imported
when a function is called, not with ``dirloss``. Each function draws on ``ax`` when given
(else on a new figure) and returns the axes it drew on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validation import as_float64_array, as_vector, check_non_negative
from .binning import GroupBinner
from .inference import InferenceChoice
from .metrics import REGIONS, ArrayLike, _bin_index, _check_finite, _shot_bins

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["REGION_COLOURS", "plot_binned_error", "plot_inference_tradeoff",
           "plot_label_histogram", "plot_per_bin_error"]

REGION_COLOURS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#c44e52", "none": "0.75"}
"""Colour of each shot region's bins (``"none"``: bins in no fixed region)."""

_PER_BIN = ("mae", "mse")


def _pyplot() -> Any:
    """``matplotlib.pyplot``, or an ImportError that names the extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "dirloss.plots needs matplotlib, which is not installed: pip install "
            "'dirloss[plot]' (or pip install matplotlib)"
        ) from error
    return plt


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    _, new = _pyplot().subplots(figsize=figsize, layout="constrained")
    return new  # type: ignore[no-any-return]


def _bins(
    train: np.ndarray,
    target: np.ndarray | None,
    bin_edges: ArrayLike | None,
    bin_width: float,
    many_shot: float,
    few_shot: float,
    regions: Mapping[str, Sequence[int]] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges, train_counts, region name per bin)`` exactly as :func:`shot_metrics` sets
    them up (equal-width edges over the training and, when given, the test labels)."""
    labels = train if target is None else np.concatenate([train, target])
    edges, counts, region_id = _shot_bins(
        train, labels, bin_edges, bin_width, many_shot, few_shot, regions
    )
    names = np.array([*REGIONS, "none"])[region_id]  # -1: the last entry, "none"
    return edges, counts, names


def _group_edges(groups: GroupBinner | ArrayLike | None) -> np.ndarray:
    if groups is None:
        return np.empty(0)
    if isinstance(groups, GroupBinner):
        if not groups.fitted:
            raise ValueError("expected a fitted GroupBinner for groups=, got an unfitted one")
        return as_float64_array(groups.edges)
    edges = as_float64_array(groups).reshape(-1)
    _check_finite(edges, "groups")
    return edges


def _region_bars(
    ax: Axes, edges: np.ndarray, counts: np.ndarray, names: np.ndarray, *, alpha: float = 1.0
) -> None:
    """One bar per bin at the bin's edges, coloured by its region, one legend entry per
    region that has bins."""
    for region, colour in REGION_COLOURS.items():
        keep = names == region
        if not keep.any():
            continue
        ax.bar(edges[:-1][keep], counts[keep], width=np.diff(edges)[keep], align="edge",
               color=colour, alpha=alpha, edgecolor="white", linewidth=0.5,
               label=f"{region}-shot bins ({int(counts[keep].sum())} train labels)"
               if region != "none" else f"bins in no region ({int(counts[keep].sum())})")


def plot_label_histogram(
    train_target: ArrayLike,
    *,
    groups: GroupBinner | ArrayLike | None = None,
    bin_edges: ArrayLike | None = None,
    bin_width: float = 1.0,
    many_shot: float = 100,
    few_shot: float = 20,
    regions: Mapping[str, Sequence[int]] | None = None,
    log: bool = True,
    xlabel: str = "label",
    ax: Axes | None = None,
) -> Axes:
    r"""The training labels per evaluation bin, coloured by shot region, with group edges.

    The bins and regions are those that :func:`~dirloss.metrics.shot_metrics` gives the
    same arguments (here from the training labels alone): a bin with more than
    ``many_shot`` training labels is many-shot, fewer than ``few_shot`` few-shot (thin grey
    lines mark the two thresholds), or the fixed ``regions``. Empty bins, invisible on a log
    scale, are marked with a cross. Dotted vertical lines are the inner edges of the
    groups, e.g. a fitted :class:`~dirloss.GroupBinner`.

    Args:
        train_target: training labels (tensor on any device, array or sequence).
        groups: a fitted :class:`~dirloss.GroupBinner` or group edges, in the labels' units
            (for a binner fitted on ``y / 100``, pass ``binner.edges * 100``).
        bin_edges, bin_width, many_shot, few_shot, regions: the evaluation bins and shot
            regions, as in :func:`~dirloss.metrics.shot_metrics`.
        log: a log-scaled count axis (the tail is visible).
        xlabel: the x-axis label.
        ax: the axes to draw on; default a new figure.

    Returns:
        The matplotlib ``Axes``.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: as :func:`~dirloss.metrics.shot_metrics`; an unfitted binner.

    Example:
        >>> ax = plot_label_histogram(torch.rand(2000) ** 2 * 100, bin_width=5,
        ...                           groups=[0, 25, 50, 100])  # doctest: +SKIP
        >>> ax.figure.savefig("labels.png")  # doctest: +SKIP
    """
    train = as_float64_array(train_target).reshape(-1)
    edges, counts, names = _bins(train, None, bin_edges, bin_width, many_shot, few_shot,
                                 regions)
    group_edges = _group_edges(groups)
    ax = _axes(ax, (8.0, 3.4))
    _region_bars(ax, edges, counts, names)
    empty = counts == 0
    if empty.any():
        centres = (edges[:-1] + edges[1:]) / 2
        ax.plot(centres[empty], np.full(int(empty.sum()), 0.75 if log else 0.0), "x",
                color=REGION_COLOURS["few"], markersize=5, label="empty bins")
    for k, edge in enumerate(group_edges[1:-1]):
        ax.axvline(edge, color="0.35", linewidth=0.8, linestyle=":",
                   label=f"group edges ({group_edges.size - 1} groups)" if k == 0 else None)
    if regions is None:
        for threshold in (many_shot, few_shot):
            ax.axhline(threshold, color="0.6", linewidth=0.6)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(0.6, max(float(counts.max()), many_shot, 1.0) * 2.0)
    span = np.concatenate([edges[[0, -1]], group_edges])
    ax.set_xlim(float(span.min()), float(span.max()))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training labels per bin" + (" (log)" if log else ""))
    ax.legend(frameon=False, fontsize=8)
    return ax


def _per_bin(
    pred: np.ndarray, target: np.ndarray, bins: np.ndarray, num_bins: int, metric: str
) -> np.ndarray:
    """(B,) mean |e| or e^2 of the samples in each bin (NaN for a bin without samples)."""
    err = pred - target
    values = np.abs(err) if metric == "mae" else err**2
    counts = np.bincount(bins, minlength=num_bins)
    sums = np.bincount(bins, weights=values, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_per_bin_error(
    predictions: Mapping[str, ArrayLike] | ArrayLike,
    target: ArrayLike,
    train_target: ArrayLike,
    *,
    bin_edges: ArrayLike | None = None,
    bin_width: float = 1.0,
    many_shot: float = 100,
    few_shot: float = 20,
    regions: Mapping[str, Sequence[int]] | None = None,
    metric: str = "mae",
    log: bool = False,
    xlabel: str = "label",
    ax: Axes | None = None,
) -> Axes:
    r"""Per-bin test error of one or several models over the training label density.

    For each model, the mean absolute (``metric="mae"``) or squared (``"mse"``) error of
    the test samples in every bin, drawn at the bin centres (bins without test samples are
    skipped), over the training labels per bin as bars coloured by shot region. The bins
    and regions are those of :func:`~dirloss.metrics.shot_metrics` with the same
    arguments, so the curve averages, region by region, to its numbers.

    Args:
        predictions: one model's predictions (N,), or ``{name: predictions}`` for several.
            Predictions of shape (S, N) (e.g. S seeds on the same test set) draw the mean
            of the S per-bin errors with a band of one standard deviation.
        target: (N,) test labels.
        train_target: training labels (the density and the shot regions).
        bin_edges, bin_width, many_shot, few_shot, regions: as in
            :func:`~dirloss.metrics.shot_metrics`.
        metric: ``"mae"`` | ``"mse"``.
        log: a log-scaled training-density axis (shows the tail of a steep density).
        xlabel: the x-axis label.
        ax: the axes for the error curves; default a new figure. The training histogram
            goes on a twin axes (``ax.twinx()``, right-hand scale) drawn behind them.

    Returns:
        The matplotlib ``Axes`` of the error curves.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: an invalid ``metric``; predictions that do not match ``target``; as
            :func:`~dirloss.metrics.shot_metrics`.

    Example:
        >>> y, train = torch.rand(500) * 10, torch.rand(2000) ** 2 * 10  # doctest: +SKIP
        >>> ax = plot_per_bin_error({"model": y + 0.1 * y * torch.randn(500)}, y, train,
        ...                         many_shot=400, few_shot=100)  # doctest: +SKIP
    """
    if metric not in _PER_BIN:
        raise ValueError(f"expected metric in {_PER_BIN}, got {metric!r}")
    y = as_vector(target, "target")
    train = as_float64_array(train_target).reshape(-1)
    _check_finite(y, "target")
    runs: dict[str, np.ndarray] = {}
    items = predictions.items() if isinstance(predictions, Mapping) else [("model", predictions)]
    for name, values in items:
        pred = as_float64_array(values)
        if pred.ndim == 2 and pred.shape[1] == 1 and pred.shape[0] == y.size:
            pred = pred[:, 0]
        if pred.ndim == 1:
            pred = pred[None, :]
        if pred.ndim != 2 or pred.shape[1] != y.size:
            raise ValueError(
                f"expected predictions of shape ({y.size},) or (S, {y.size}) for {name!r}, "
                f"got {tuple(as_float64_array(values).shape)}"
            )
        _check_finite(pred, f"predictions[{name!r}]")
        runs[str(name)] = pred
    if not runs:
        raise ValueError("expected predictions of at least one model, got none")
    edges, counts, names = _bins(train, y, bin_edges, bin_width, many_shot, few_shot, regions)
    num_bins = edges.size - 1
    bins = _bin_index(y, edges)

    means: dict[str, np.ndarray] = {}
    bands: dict[str, np.ndarray] = {}
    for name, pred in runs.items():
        per_bin = np.stack([_per_bin(p, y, bins, num_bins, metric) for p in pred])
        means[name] = per_bin.mean(axis=0)
        if pred.shape[0] > 1:
            bands[name] = per_bin.std(axis=0)
    return plot_binned_error(means, edges, counts, bands=bands, bin_regions=names.tolist(),
                             metric=metric, log=log, xlabel=xlabel, ax=ax)


def plot_binned_error(
    errors: Mapping[str, ArrayLike],
    bin_edges: ArrayLike,
    train_counts: ArrayLike,
    *,
    bands: Mapping[str, ArrayLike] | None = None,
    bin_regions: Sequence[str | None] | None = None,
    metric: str = "mae",
    log: bool = False,
    xlabel: str = "label",
    ax: Axes | None = None,
) -> Axes:
    r"""Per-bin errors already computed (e.g. means over seeds read back from a results
    file), drawn as :func:`plot_per_bin_error` draws them.

    Args:
        errors: ``{name: (B,) per-bin error}``; NaN marks a bin without test samples (not
            drawn).
        bin_edges: (B + 1,) increasing edges.
        train_counts: (B,) training labels per bin (the bars).
        bands: ``{name: (B,) half-width}`` of a band around a curve (e.g. the std over
            seeds); names not in ``errors`` are ignored.
        bin_regions: the region of each bin (``"many"`` | ``"medium"`` | ``"few"`` | None),
            which colours its bar; default every bar in the "none" colour.
        metric: the error's name for the y-axis label (``"mae"`` | ``"mse"``).
        log: a log-scaled training-density axis.
        xlabel: the x-axis label.
        ax: the axes for the error curves; default a new figure.

    Returns:
        The matplotlib ``Axes`` of the error curves.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: shapes that do not match the B bins, edges not increasing, no curve.

    Example:
        >>> ax = plot_binned_error({"model": [1.0, 2.0, float("nan")]}, [0, 1, 2, 3],
        ...                        [50, 10, 1], bin_regions=["many", "medium", "few"])
        ... # doctest: +SKIP
    """
    if metric not in _PER_BIN:
        raise ValueError(f"expected metric in {_PER_BIN}, got {metric!r}")
    edges = as_float64_array(bin_edges).reshape(-1)
    if edges.size < 2 or not np.all(np.diff(edges) > 0) or not np.isfinite(edges).all():
        raise ValueError(f"expected (B + 1,) finite increasing bin_edges, got {edges.tolist()}")
    num_bins = edges.size - 1
    counts = as_float64_array(train_counts).reshape(-1)
    if counts.size != num_bins:
        raise ValueError(f"expected train_counts of shape ({num_bins},), got ({counts.size},)")
    if not errors:
        raise ValueError("expected the per-bin errors of at least one model, got none")
    regions = np.array(["none" if r is None else str(r) for r in (
        bin_regions if bin_regions is not None else [None] * num_bins)])
    if regions.size != num_bins:
        raise ValueError(f"expected {num_bins} bin_regions, got {regions.size}")
    curves = {}
    for name, values in errors.items():
        curve = as_float64_array(values).reshape(-1)
        band = None if bands is None or name not in bands else (
            as_float64_array(bands[name]).reshape(-1))
        for what, v in (("errors", curve), ("bands", band)):
            if v is not None and v.size != num_bins:
                raise ValueError(f"expected {what}[{name!r}] of shape ({num_bins},), got "
                                 f"({v.size},)")
        curves[str(name)] = (curve, band)
    centres = (edges[:-1] + edges[1:]) / 2

    ax = _axes(ax, (8.0, 3.8))
    hist = ax.twinx()
    _region_bars(hist, edges, counts, regions, alpha=0.35)
    hist.set_ylabel("training labels per bin" + (" (log)" if log else ""))
    if log:
        hist.set_yscale("log")
        hist.set_ylim(0.6, max(float(counts.max()), 1.0) * 2.0)
    ax.set_zorder(hist.get_zorder() + 1)  # the curves over the bars
    ax.patch.set_visible(False)
    for name, (mean, band) in curves.items():
        filled = np.isfinite(mean)
        (line,) = ax.plot(centres[filled], mean[filled], marker="o", markersize=3,
                          linewidth=1.5, label=name)
        if band is not None:
            b = np.nan_to_num(band)
            ax.fill_between(centres[filled], (mean - b)[filled], (mean + b)[filled],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlim(float(edges[0]), float(edges[-1]))
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {metric.upper()} per bin")
    handles = ax.get_legend_handles_labels()[0] + hist.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], frameon=False, fontsize=8)
    return ax


def _pareto(points: Mapping[str, tuple[float, float]]) -> list[tuple[float, float]]:
    """The points that no other point beats on both coordinates, by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points.values()):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def plot_inference_tradeoff(
    scores: InferenceChoice | Mapping[str, tuple[float, float]],
    *,
    chosen: str | None = None,
    max_mae_increase: float | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    r"""Overall against rare-label error of inference candidates: the trade-off curve.

    Every candidate is a point; the dashed line joins those on the Pareto front (no other
    candidate is better on both errors). From an :class:`~dirloss.InferenceChoice`, the
    points are its ``scores``, overall MAE (x) against balanced MAE (y) on the validation
    set, the candidates of each inference mode are joined in the order of ``tau``, and the
    pick is starred. ``max_mae_increase`` (the guard of
    :func:`~dirloss.select_inference`, which the choice does not record) shades the
    candidates it excluded: overall MAE above :math:`(1 + \text{max\_mae\_increase})`
    times the lowest.

    Args:
        scores: an :class:`~dirloss.InferenceChoice`, or ``{name: (overall error,
            rare-label error)}`` (e.g. all-MAE and few-shot MAE of several models).
        chosen: the name to star, for a mapping (an ``InferenceChoice`` stars its own).
        max_mae_increase: shade what this overall-error guard excludes; ``None`` shades
            nothing.
        xlabel, ylabel: axis labels; default "overall MAE" / "balanced MAE" for an
            ``InferenceChoice``, "overall error" / "rare-label error" for a mapping.
        ax: the axes to draw on; default a new figure.

    Returns:
        The matplotlib ``Axes``.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: no candidates, non-finite errors, or a ``chosen`` name not among them.

    Example:
        >>> ax = plot_inference_tradeoff({"MSE": (5.1, 9.8), "dirloss": (5.3, 6.2)},
        ...                              chosen="dirloss")  # doctest: +SKIP
    """
    curves: list[list[str]] = []
    if isinstance(scores, InferenceChoice):
        def name_of(mode: str, tau: float) -> str:
            return f"{mode}, tau={tau:g}"

        points = {name_of(m, t): (mae, bmae) for (m, t), (bmae, mae) in scores.scores.items()}
        for mode in dict.fromkeys(m for m, _ in scores.scores):
            taus = sorted(t for m, t in scores.scores if m == mode)
            curves.append([name_of(mode, t) for t in taus])
        chosen = name_of(scores.inference, scores.tau) if chosen is None else chosen
        xlabel = "overall MAE" if xlabel is None else xlabel
        ylabel = "balanced MAE" if ylabel is None else ylabel
    else:
        points = {str(k): (float(v[0]), float(v[1])) for k, v in scores.items()}
        xlabel = "overall error" if xlabel is None else xlabel
        ylabel = "rare-label error" if ylabel is None else ylabel
    if not points:
        raise ValueError("expected at least one candidate, got none")
    values = np.asarray(list(points.values()), dtype=np.float64)
    _check_finite(values, "the candidates' errors")
    if chosen is not None and chosen not in points:
        raise ValueError(f"expected chosen among {sorted(points)}, got {chosen!r}")
    if max_mae_increase is not None:
        check_non_negative("max_mae_increase", max_mae_increase)

    ax = _axes(ax, (5.5, 4.2))
    for names in curves:
        if len(names) > 1:
            ax.plot(*zip(*(points[n] for n in names)), color="0.6", linewidth=0.8)
    front = _pareto(points)
    ax.plot(*zip(*front), "--", color="0.35", linewidth=1.0, label="Pareto front")
    ax.scatter(values[:, 0], values[:, 1], s=24, zorder=3, label="candidates")
    for name, (x, y) in points.items():
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if chosen is not None:
        x, y = points[chosen]
        ax.scatter([x], [y], marker="*", s=200, color=REGION_COLOURS["few"], zorder=4,
                   label=f"chosen: {chosen}")
    if max_mae_increase is not None:
        limit = float(values[:, 0].min()) * (1 + max_mae_increase)
        ax.axvspan(limit, max(float(values[:, 0].max()), limit) * 1.05 + 1e-12, color="0.9",
                   zorder=0, label=f"excluded by the {max_mae_increase:g} guard")
        ax.axvline(limit, color="0.5", linewidth=0.8)
    ax.margins(0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8)
    return ax
