r"""Data for the dirloss benchmarks: loaders, the synthetic task and the shot regions.

The data sets are read from a directory, never shipped with the package (their licences
differ from it). The directory is, in order of precedence, the ``data_dir`` argument (the
benchmarks' ``--data-dir``), the ``DIRLOSS_DATA_DIR`` environment variable, or
``<repository root>/../shared/data`` (:mod:`.paths`). See ``shared/data/README.md`` for what
is in it.

Every loader returns a :class:`~.splits.Splits` of float32 NumPy arrays (``Splits.tensors()``
gives torch tensors):

* :func:`~.tabular.load_tabular` — a table in the ``<dir>/splits/<name>_{train,val,test}.csv``
  layout, features and target standardised with *training* statistics;
* :func:`~.stsb.load_stsb` — STS-B-DIR sentence pairs as frozen all-MiniLM-L6-v2 pair
  features ``[u, v, |u - v|, u * v]`` (1536-d), embeddings cached on disk;
* :func:`~.synthetic.synthetic` — the long-tailed task of :mod:`dirloss.demo`;
* :func:`load_dataset` — any of them by name.

:func:`~.shots.tabular_shot_kwargs` is the one place that decides the many/medium/few-shot
regions of a tabular table; :func:`~.shots.stsb_shot_kwargs` gives the published STS-B-DIR
regions. Everything is importable from here (``from benchmarks import data as bd``).
"""

from __future__ import annotations

from benchmarks.data.paths import REPO_ROOT, PathLike, default_cache_dir, default_data_dir
from benchmarks.data.shots import (
    INTEGER_ATOL,
    SHOT_BINS,
    SHOT_FEW_FRACTION,
    SHOT_MANY_FRACTION,
    shot_region_counts,
    stsb_shot_kwargs,
    tabular_shot_kwargs,
)
from benchmarks.data.splits import Splits
from benchmarks.data.stsb import ENCODER_NAME, STSB_FILES, load_stsb, read_stsb
from benchmarks.data.synthetic import synthetic
from benchmarks.data.tabular import (
    MISSING_VALUE,
    MISSING_VALUE_CODES,
    TABULAR_SETS,
    load_tabular,
    split_paths,
)

__all__ = [
    "ENCODER_NAME",
    "INTEGER_ATOL",
    "MISSING_VALUE",
    "MISSING_VALUE_CODES",
    "REPO_ROOT",
    "SHOT_BINS",
    "SHOT_FEW_FRACTION",
    "SHOT_MANY_FRACTION",
    "STSB_FILES",
    "TABULAR_SETS",
    "PathLike",
    "Splits",
    "default_cache_dir",
    "default_data_dir",
    "load_dataset",
    "load_stsb",
    "load_tabular",
    "read_stsb",
    "shot_region_counts",
    "split_paths",
    "stsb_shot_kwargs",
    "synthetic",
    "tabular_shot_kwargs",
]


def load_dataset(
    spec: str, *, data_dir: PathLike | None = None, cache_dir: PathLike | None = None
) -> Splits:
    """Load a data set by name.

    ``spec`` is one of: a name in :data:`TABULAR_SETS` (read from ``<data dir>/tabular``),
    ``"tabular:<dir>/<name>"`` (any table in the split layout, see :func:`load_tabular`),
    ``"stsb"`` or ``"synthetic"``.
    """
    if spec in TABULAR_SETS:
        return load_tabular(default_data_dir(data_dir) / "tabular" / spec)
    if spec.startswith("tabular:"):
        return load_tabular(spec[len("tabular:"):])
    if spec in ("stsb", "sts-b", "stsb-dir"):
        return load_stsb(data_dir, cache_dir)
    if spec == "synthetic":
        return synthetic()
    raise ValueError(
        f"expected a data set among {TABULAR_SETS}, 'tabular:<dir>/<name>', 'stsb' or "
        f"'synthetic', got {spec!r}"
    )
