"""Draw the figures of the documentation site: ``python docs/make_figures.py``.

Writes ``docs/img/histogram.png``: the training labels of the built-in long-tailed task
(:func:`dirloss.demo.make_long_tailed_regression`, the 8000 samples ``python -m
dirloss.demo`` trains on) in the demo's evaluation bins of width 5, on a log scale,
coloured by the shot region that :func:`dirloss.metrics.shot_metrics` gives each bin
(the grey lines are its thresholds, 100 and 20), with the edges of the 10 uniform groups
the demo uses. Needs matplotlib (the ``bench`` extra has it). The output
is deterministic: fixed data, no timestamp in the PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dirloss import GroupBinner  # noqa: E402
from dirloss.demo import make_long_tailed_regression  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"
BIN_WIDTH = 5.0
MANY_SHOT, FEW_SHOT = 100, 20  # shot_metrics defaults: training labels per bin
COLOURS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#c44e52"}


def histogram(path: Path) -> None:
    _, y = make_long_tailed_regression(8000)
    labels = y.numpy()
    edges = np.arange(0.0, 100.0 + BIN_WIDTH, BIN_WIDTH)
    counts, _ = np.histogram(labels, bins=edges)
    region = np.where(counts > MANY_SHOT, "many", np.where(counts < FEW_SHOT, "few", "medium"))
    groups = GroupBinner(10, low=0.0, high=100.0).fit(y)

    fig, ax = plt.subplots(figsize=(8.0, 3.4), dpi=110)
    for name, colour in COLOURS.items():
        keep = region == name
        ax.bar(edges[:-1][keep], counts[keep], width=BIN_WIDTH, align="edge", color=colour,
               edgecolor="white", linewidth=0.6,
               label=f"{name}-shot bins ({int(counts[keep].sum())} samples)")
    empty = edges[:-1][counts == 0] + BIN_WIDTH / 2
    ax.plot(empty, np.full(empty.shape, 0.75), "x", color=COLOURS["few"], markersize=5,
            label="empty bins (also few-shot)")
    for edge in groups.edges.tolist()[1:-1]:
        ax.axvline(edge, color="0.35", linewidth=0.8, linestyle=":")
    ax.text(0.995, 0.97, "dotted: edges of GroupBinner(10)", transform=ax.transAxes,
            ha="right", va="top", fontsize=8, color="0.3")
    ax.axhline(MANY_SHOT, color="0.6", linewidth=0.6)
    ax.axhline(FEW_SHOT, color="0.6", linewidth=0.6)
    ax.set_yscale("log")
    ax.set_ylim(0.6, 4000)
    ax.set_xlim(0, 100)
    ax.set_xlabel("label y (make_long_tailed_regression, 8000 training samples)")
    ax.set_ylabel("training labels per bin (log)")
    ax.legend(frameon=False, fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.9))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    histogram(OUT / "histogram.png")
    print(f"wrote {OUT / 'histogram.png'}")


if __name__ == "__main__":
    main()
