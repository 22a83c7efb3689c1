"""Draw the figures of the documentation site: ``python docs/make_figures.py``.

All three come from the public plotting functions (:mod:`dirloss.plots`) on the built-in
long-tailed task of ``python -m dirloss.demo``
(:func:`dirloss.demo.make_long_tailed_regression`: 8000 long-tailed samples, 20 % of them held
out for validation, a balanced test set of 4000), in the demo's evaluation bins of width 5
with :func:`dirloss.metrics.shot_metrics`' default thresholds (100 and 20 training labels):

* ``docs/img/histogram.png``: the training labels per bin, on a log scale, coloured by shot
  region, with the edges of the 10 uniform groups (:func:`dirloss.plot_label_histogram`);
* ``docs/img/per-bin-error.png``: the per-bin test MAE of the demo's three models (plain MSE,
  the paper's Group-DIR, the dirloss defaults, trained exactly as the demo trains them) over
  the training density (:func:`dirloss.plot_per_bin_error`);
* ``docs/img/tradeoff.png``: validation MAE against balanced MAE of the dirloss model's
  inference candidates, soft and argmax with tau from 0 to 1, with the pick of
  :func:`dirloss.select_inference` and what its 2 % guard excludes
  (:func:`dirloss.plot_inference_tradeoff`).

Needs matplotlib (``pip install 'dirloss[plot]'``); trains the three demo models (about a
minute on 2 CPU cores). The output is deterministic: fixed data and seeds, no timestamp in
the PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dirloss import (  # noqa: E402
    GroupBinner,
    MultiExpertHead,
    plot_inference_tradeoff,
    plot_label_histogram,
    plot_per_bin_error,
    select_inference,
)
from dirloss.demo import (  # noqa: E402
    LABEL_RANGE,
    _groups_with_data,
    _predict,
    _train,
    make_long_tailed_regression,
)
from dirloss.inference import DEFAULT_MAE_GUARD  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"
BIN_WIDTH = 5.0
TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)
# The demo's defaults (python -m dirloss.demo --help).
DEMO = argparse.Namespace(epochs=30, batch_size=256, width=64, lr=3e-3, paper_lambda_mse=1000.0,
                          seed=0)


def _save(ax: object, path: Path) -> None:
    fig = ax.figure  # type: ignore[attr-defined]  (laid out by the plots: constrained)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    scale = LABEL_RANGE[1]
    x_all, y_all = make_long_tailed_regression(8000)
    x_test, y_test = make_long_tailed_regression(4000, balanced=True)
    n_val = 8000 // 5
    x, y, x_val, y_val = x_all[n_val:], y_all[n_val:], x_all[:n_val], y_all[:n_val]

    ax = plot_label_histogram(y_all, groups=GroupBinner(10, low=0.0, high=100.0).fit(y_all),
                              bin_edges=np.arange(0.0, 100.0 + BIN_WIDTH, BIN_WIDTH),
                              xlabel="label y (make_long_tailed_regression, 8000 samples)")
    _save(ax, OUT / "histogram.png")

    binner = GroupBinner(**_groups_with_data(y / scale, 10)).fit(y / scale)
    predictions = {}
    tradeoff = None
    for method, name in (("mse", "MSE"), ("paper", "Group-DIR (paper)"),
                         ("dirloss", "dirloss defaults")):
        model = _train(method, x, y / scale, binner, DEMO)
        if method == "dirloss":
            head = cast(MultiExpertHead, model["head"])
            with torch.no_grad():
                features = model["backbone"](x_val)
            grid = [(mode, tau) for mode in ("soft", "argmax") for tau in TAUS]
            tradeoff = select_inference(head, features, y_val / scale, binner, candidates=grid)
            choice = select_inference(head, features, y_val / scale, binner)  # the demo's pick
            name += f" ({choice.inference}, tau={choice.tau:g})"
        predictions[name] = _predict(model, x_test) * scale
    ax = plot_per_bin_error(predictions, y_test, y, bin_width=BIN_WIDTH, log=True,
                            xlabel="label y (balanced test set of 4000)")
    ax.figure.set_size_inches(8.0, 3.8)
    _save(ax, OUT / "per-bin-error.png")

    assert tradeoff is not None
    ax = plot_inference_tradeoff(tradeoff, max_mae_increase=DEFAULT_MAE_GUARD,
                                 xlabel="validation MAE (targets / 100)",
                                 ylabel="validation balanced MAE (targets / 100)")
    _save(ax, OUT / "tradeoff.png")


if __name__ == "__main__":
    main()
