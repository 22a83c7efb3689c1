r"""Stage 1 of the accuracy benchmark: which data sets a run names, and each one as the
benchmark sees it.

:func:`expand_datasets` turns the ``--datasets`` entries into :class:`DataSpec` records;
:func:`prepare` loads one (through :mod:`benchmarks.data`) and standardises its targets with
training statistics, giving the :class:`Prepared` data set that the workers train on and
the evaluation scores in label units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import data as bd
from dirloss import dir_split

__all__ = [
    "DIR_EVAL_FRACTION",
    "PROTOCOLS",
    "DataSizes",
    "DataSpec",
    "Prepared",
    "check_data_present",
    "expand_datasets",
    "prepare",
    "prepare_or_exit",
]

SPLITS = ("train", "val", "test")
PROTOCOLS = ("natural", "dir")
"""``natural``: the data set's own splits (random for the tables, as skewed as training);
``dir``: balanced validation and test sets built by :func:`dirloss.dir_split` (STS-B-DIR is
balanced already and keeps its splits under both)."""
DIR_EVAL_FRACTION = 0.15
"""Under ``dir``: ``per_bin`` is this fraction of the mean rows per shot bin (at least
:data:`DIR_MIN_PER_BIN`), so validation and test each hold at most 15 % of the rows."""
DIR_MIN_PER_BIN = 5
DIR_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One data set of a run.

    Attributes:
        name: the result name (``<name>.json``, the tables' row label).
        spec: what :func:`benchmarks.data.load_dataset` loads.
        kind: ``"stsb"`` | ``"tabular"`` | ``"synthetic"`` (backbone widths, shot rule).
        protocol: one of :data:`PROTOCOLS`, how validation and test are drawn.
    """

    name: str
    spec: str
    kind: str
    protocol: str = "natural"


def expand_datasets(
    entries: Sequence[str], data_dir: Path, protocol: str = "natural"
) -> list[DataSpec]:
    """The ``--datasets`` entries as :class:`DataSpec` records, in order, under ``protocol``.

    ``all-tabular`` expands to the eight tables under ``<data_dir>/tabular``; a bare table
    name reads from there too; ``tabular:<dir>/<name>`` is any table in the split layout.
    Exits on an unknown entry or on a name given twice.
    """
    if protocol not in PROTOCOLS:
        raise SystemExit(f"unknown protocol {protocol!r}: expected one of {PROTOCOLS}")
    out: list[DataSpec] = []
    for entry in entries:
        if entry == "all-tabular":
            out += [_table(name, data_dir) for name in bd.TABULAR_SETS]
        elif entry in ("stsb", "sts-b", "stsb-dir"):
            out.append(DataSpec("stsb-dir", "stsb", "stsb"))
        elif entry == "synthetic":
            out.append(DataSpec("synthetic", "synthetic", "synthetic"))
        elif entry in bd.TABULAR_SETS:
            out.append(_table(entry, data_dir))
        elif entry.startswith("tabular:"):
            out.append(DataSpec(Path(entry[len("tabular:"):]).name, entry, "tabular"))
        else:
            raise SystemExit(
                f"unknown data set {entry!r}: expected stsb-dir, synthetic, all-tabular, one "
                f"of {', '.join(bd.TABULAR_SETS)} or tabular:<dir>/<name>"
            )
    names = [d.name for d in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SystemExit(f"data set names must be unique, got {dupes} more than once")
    return [dataclasses.replace(d, protocol=protocol) for d in out]


def _table(name: str, data_dir: Path) -> DataSpec:
    return DataSpec(name, f"tabular:{data_dir / 'tabular' / name}", "tabular")


@dataclasses.dataclass(frozen=True)
class DataSizes:
    """The ``"data"`` entry of a result: feature count and split sizes (after subsampling)."""

    num_features: int
    n_train: int
    n_val: int
    n_test: int


@dataclasses.dataclass
class Prepared:
    r"""A data set as the workers and the evaluation see it.

    Attributes:
        spec: which data set.
        x, y: per split, float32 features and *standardised* targets :math:`t`.
        labels: per split, the targets in original label units, float64.
        unscale_a, unscale_b: label :math:`= a\,t + b`.
        shot_kwargs: the keyword arguments of :func:`dirloss.metrics.shot_metrics` (bin
            edges and the shot rule of the data set).
        sizes: feature count and split sizes.
    """

    spec: DataSpec
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    labels: dict[str, np.ndarray]
    unscale_a: float
    unscale_b: float
    shot_kwargs: dict[str, Any]
    sizes: DataSizes

    def to_labels(self, pred: np.ndarray) -> np.ndarray:
        """Standardised predictions to label units."""
        return self.unscale_a * np.asarray(pred, dtype=np.float64) + self.unscale_b


def prepare(
    spec: DataSpec, *, data_dir: str | None, cache_dir: str | None, max_train: int | None = None
) -> Prepared:
    """Load ``spec`` and standardise its targets with training statistics.

    The tables come standardised from the loader; STS-B (0..5) and the synthetic task (0..1)
    do not, so the targets are (re)standardised here, once, the same way for all: a model
    predicts :math:`t`, and :math:`y = a t + b` maps it back to label units.
    ``max_train`` keeps a seeded random subset of the training split (smoke runs only).
    """
    splits = bd.load_dataset(spec.spec, data_dir=data_dir, cache_dir=cache_dir)
    if spec.protocol == "dir" and spec.kind != "stsb":
        splits = rebalance(splits)
    x_tr, y_tr = splits.x_train, splits.y_train
    if max_train is not None and max_train < len(y_tr):
        rng = np.random.default_rng(0)
        keep = np.sort(rng.choice(len(y_tr), size=max_train, replace=False))
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    raw = {"train": (x_tr, y_tr), "val": (splits.x_val, splits.y_val),
           "test": (splits.x_test, splits.y_test)}
    mu = float(np.mean(y_tr, dtype=np.float64))
    sd = float(np.std(y_tr, dtype=np.float64)) or 1.0
    labels = {s: np.asarray(splits.unscale(y.astype(np.float64)), dtype=np.float64)
              for s, (_, y) in raw.items()}
    if spec.kind == "stsb":
        shot = bd.stsb_shot_kwargs()
    else:
        shot = bd.tabular_shot_kwargs(labels["train"])
    return Prepared(
        spec=spec,
        x={s: torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
           for s, (x, _) in raw.items()},
        y={s: torch.as_tensor(((y.astype(np.float64) - mu) / sd).astype(np.float32))
           for s, (_, y) in raw.items()},
        labels=labels,
        unscale_a=sd * splits.y_std,
        unscale_b=mu * splits.y_std + splits.y_mean,
        shot_kwargs=shot,
        sizes=DataSizes(int(splits.x_train.shape[1]), *(int(len(y)) for _, y in raw.values())),
    )


def rebalance(splits: bd.Splits) -> bd.Splits:
    r"""The ``dir`` protocol: pool the three splits and draw balanced validation and test sets
    with :func:`dirloss.dir_split` over the shot bins of the pooled labels
    (:func:`benchmarks.data.tabular_shot_kwargs`), ``per_bin`` :math:`= \max(5, \lfloor 0.15
    N / B \rfloor)`, at most a third of a bin each, seed 0 (the same split for every
    training seed, as the natural splits are fixed files). The features keep the loader's
    scaling (training statistics of the natural split: no label of any split enters it)."""
    x = np.concatenate([splits.x_train, splits.x_val, splits.x_test])
    y = np.concatenate([splits.y_train, splits.y_val, splits.y_test])
    edges = bd.tabular_shot_kwargs(splits.unscale(y.astype(np.float64)))["bin_edges"]
    per_bin = max(DIR_MIN_PER_BIN, int(DIR_EVAL_FRACTION * len(y) / (len(edges) - 1)))
    rows = dir_split(splits.unscale(y.astype(np.float64)), per_bin=per_bin, bin_edges=edges,
                     seed=DIR_SPLIT_SEED)
    parts = {s: (x[r.numpy()], y[r.numpy()]) for s, r in zip(SPLITS, rows[:3])}
    return dataclasses.replace(
        splits,
        x_train=parts["train"][0], y_train=parts["train"][1],
        x_val=parts["val"][0], y_val=parts["val"][1],
        x_test=parts["test"][0], y_test=parts["test"][1],
        info={**splits.info, "protocol": "dir", "per_bin": per_bin},
    )


def _no_data(name: str, err: Exception, data_dir: str | None) -> SystemExit:
    return SystemExit(
        f"no data for {name!r}: {err}. Pass --data-dir DIR (looked in "
        f"{bd.default_data_dir(data_dir)}; the default is $DIRLOSS_DATA_DIR or "
        f"{bd.REPO_ROOT.parent / 'shared' / 'data'})"
    )


def check_data_present(specs: Sequence[DataSpec], data_dir: str | None) -> None:
    """Exit, naming ``--data-dir`` and the directory looked in, when a planned data set's files
    are missing (a cheap check before any work; the synthetic task needs none)."""
    root = bd.default_data_dir(data_dir)
    for spec in specs:
        try:
            if spec.kind == "tabular":
                bd.split_paths(spec.spec.split(":", 1)[1])
            elif spec.kind == "stsb":
                for file in bd.STSB_FILES.values():
                    if not (root / "stsb-dir" / file).is_file():
                        raise FileNotFoundError(f"expected {root / 'stsb-dir' / file}; not found")
        except FileNotFoundError as err:
            raise _no_data(spec.name, err, data_dir) from None


def prepare_or_exit(
    spec: DataSpec, *, data_dir: str | None, cache_dir: str | None, max_train: int | None
) -> Prepared:
    """:func:`prepare`, exiting with a message that names ``--data-dir`` when the files (or
    the STS-B encoder) are missing."""
    try:
        return prepare(spec, data_dir=data_dir, cache_dir=cache_dir, max_train=max_train)
    except FileNotFoundError as err:
        raise _no_data(spec.name, err, data_dir) from None
    except ModuleNotFoundError as err:
        raise SystemExit(f"dir_bench: {err}") from None
