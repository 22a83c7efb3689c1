"""What the example scripts share: the shot-metrics table, the STS-B-DIR reader, the data dir.

Not an example itself. Each script in ``examples/`` imports it as ``from _shared import ...``,
which works however the script is started (``python examples/x.py`` from the repository root,
``python x.py`` inside ``examples/``, ``torchrun examples/ddp_train.py``): Python puts the
script's own directory first on ``sys.path``. Copying an example elsewhere, copy this file
next to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dirloss.metrics import REGIONS

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional: no progress bar without it

    class tqdm:  # type: ignore[no-redef]
        def __init__(self, *args: object, **kwargs: object) -> None: ...
        def update(self, n: int = 1) -> None: ...
        def set_postfix(self, **kwargs: object) -> None: ...
        def close(self) -> None: ...


__all__ = ["DEFAULT_DATA_DIR", "print_table", "read_stsb", "tqdm"]

#: The benchmark data next to the repository (``<repo>/../shared/data``); the scripts'
#: ``--data-dir`` defaults to ``$DIRLOSS_DATA_DIR``, then to this.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def print_table(heading: str, metrics: Mapping[str, Any], *, width: int = 8) -> None:
    """Print a :func:`dirloss.metrics.shot_metrics` result after a blank line and ``heading``:
    count, MAE, MSE and GM of all test rows and of each many/medium/few-shot region, then the
    balanced MAE. ``width`` is that of the MAE, MSE and GM columns."""
    print(f"\n{heading}")
    print(f"{'region':<8} {'count':>6} {'MAE':>{width}} {'MSE':>{width}} {'GM':>{width}}")
    for region in ("all", *REGIONS):
        r = metrics[region]
        print(f"{region:<8} {r['count']:>6d} {r['mae']:>{width}.4f} {r['mse']:>{width}.4f} "
              f"{r['gm']:>{width}.4f}")
    print(f"balanced MAE (bMAE): {metrics['bmae']:.4f}")


def read_stsb(path: Path) -> tuple[list[str], list[str], list[float]]:
    """Sentence 1, sentence 2 and score of every row of an STS-B-DIR ``.tsv`` file (tab
    separated, columns 7, 8 and 9, a header row; quoting off since sentences contain ``"``).
    """
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) >= 10:
                s1.append(cols[7])
                s2.append(cols[8])
                scores.append(float(cols[9]))
    return s1, s2, scores
