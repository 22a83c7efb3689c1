"""The tabular tables: :func:`load_tabular` reads a table in the
``<dir>/splits/<name>_{train,val,test}.csv`` layout, features and target standardised with
*training* statistics, missing-value codes imputed where the table declares one."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np

from benchmarks.data.paths import PathLike
from benchmarks.data.splits import Splits

__all__ = [
    "MISSING_VALUE",
    "MISSING_VALUE_CODES",
    "TABULAR_SETS",
    "load_tabular",
    "split_paths",
]

TABULAR_SETS = (
    "abalone",
    "acceleration",
    "airfoild",
    "available_power",
    "bank8FM",
    "concreteStrength",
    "cpu_small",
    "fuel_consumption_country",
)
"""The eight tables shipped in ``<data dir>/tabular`` (Steininger et al., 2021)."""

MISSING_VALUE = 9999.0
"""Missing-value code of the car-type tables (acceleration, available_power,
fuel_consumption_country); no other table holds this exact value."""

MISSING_VALUE_CODES: dict[str, float] = {
    "acceleration": MISSING_VALUE,
    "available_power": MISSING_VALUE,
    "fuel_consumption_country": MISSING_VALUE,
}
"""The tables that declare a missing-value code in their *feature* columns (``shared/data/
README.md``: the car-type tables), by name. :func:`load_tabular` applies a code only to a
table listed here (or one passed explicitly), and never to the target."""


def split_paths(path_prefix: PathLike) -> dict[str, Path]:
    """``{split: csv path}`` of the table ``<dir>/<name>``: in ``<dir>/splits``, else in
    ``<dir>`` itself."""
    prefix = Path(path_prefix)
    parent, name = prefix.parent, prefix.name
    for folder in (parent / "splits", parent):
        paths = {s: folder / f"{name}_{s}.csv" for s in ("train", "val", "test")}
        if all(p.is_file() for p in paths.values()):
            return paths
    raise FileNotFoundError(
        f"expected {parent / 'splits' / (name + '_train.csv')} (and _val, _test), "
        f"or the same files directly in {parent}; not found"
    )


def _read_csv(path: Path) -> tuple[list[str], np.ndarray, list[int]]:
    """A numeric CSV, with or without a header row (detected: a row that is not all numbers),
    and the file line number of each data row (for error messages)."""
    rows: list[list[str]] = []
    lines: list[int] = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        for r in reader:
            if r:
                rows.append(r)
                lines.append(reader.line_num)
    if not rows:
        raise ValueError(f"expected a non-empty CSV, got {path}")
    header: list[str] = []
    try:
        [float(v) for v in rows[0]]
    except ValueError:
        header, rows, lines = rows[0], rows[1:], lines[1:]
    width = len(rows[0]) if rows else len(header)
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    if bad:
        raise ValueError(f"expected {width} columns in every row of {path}, row {bad[0]} differs")
    try:
        data = np.asarray(rows, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"expected numeric (one-hot encoded) columns in {path}: {err}") from None
    return header or [f"col{i}" for i in range(width)], data.reshape(len(rows), width), lines


def _check_finite(
    path: Path, values: np.ndarray, lines: list[int], names: list[str], what: str
) -> None:
    """Raise naming the first non-finite cell of ``values`` (row, file line, column)."""
    bad = ~np.isfinite(values.reshape(values.shape[0], -1))
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    value = values.reshape(values.shape[0], -1)[row, col]
    raise ValueError(
        f"expected finite {what} in {path}, got {value} in data row {row} (line {lines[row]}), "
        f"column {names[col]!r} ({int(bad.sum())} non-finite {what} in the file)"
    )


def load_tabular(
    path_prefix: PathLike,
    *,
    missing_value: float | None | Literal["declared"] = "declared",
    missing_indicators: bool = True,
) -> Splits:
    r"""A regression table in the ``<dir>/splits/<name>_{train,val,test}.csv`` layout.

    ``path_prefix`` is ``<dir>/<name>``; the split files are looked up in ``<dir>/splits``
    and, failing that, in ``<dir>`` itself. Each file is a numeric CSV (one-hot encoding
    already done) whose *first* column is the target; a header row is detected and skipped.

    Preprocessing, all statistics from the *training* split only:

    1. **Missing values.** Only where the table declares a missing-value code: by default
       the code of :data:`MISSING_VALUE_CODES` for the table's name (9999 for the car-type
       tables; other tables have none, so a 9999 there is a value). A *feature* equal to the
       code is replaced by the median of that column's observed training values (0 if none
       is observed). With ``missing_indicators``, every column that has a missing value in
       the training split also gets a 0/1 "was missing" column appended, because
       missingness is informative there (some columns are 90 % missing). The code never
       applies to the *target*: a target equal to it is a value. A non-finite target or
       feature (NaN, inf) raises ``ValueError`` naming the file, row and column.
    2. **Standardisation.** Features :math:`x \mapsto (x - \mu_x)/\sigma_x` and target
       :math:`y \mapsto (y - \mu_y)/\sigma_y`, population std; a constant training column
       gets :math:`\sigma = 1` (it stays constant, at 0).

    Args:
        path_prefix: ``<dir>/<name>``, e.g. ``<data dir>/tabular/abalone``.
        missing_value: the missing-value code of the feature columns: ``"declared"`` (the
            default: the table's entry in :data:`MISSING_VALUE_CODES`, none for a table not
            listed), a number, or ``None`` (no code).
        missing_indicators: append "was missing" columns (see above).

    Returns:
        :class:`Splits` with ``y_mean``/``y_std`` the target's training mean and std;
        ``info`` holds the column names, the missing-value code applied (or ``None``), the
        imputed columns and their medians.
    """
    paths = split_paths(path_prefix)
    if isinstance(missing_value, str):
        if missing_value != "declared":
            raise ValueError(
                f"expected missing_value to be a number, None or 'declared', got {missing_value!r}"
            )
        missing_value = MISSING_VALUE_CODES.get(Path(path_prefix).name)
    header, train, train_lines = _read_csv(paths["train"])
    raw = {"train": train}
    lines = {"train": train_lines}
    for s in ("val", "test"):
        _, raw[s], lines[s] = _read_csv(paths[s])
        if raw[s].shape[1] != train.shape[1]:
            raise ValueError(
                f"expected {train.shape[1]} columns in {paths[s]}, got {raw[s].shape[1]}"
            )
    if train.shape[0] < 2 or train.shape[1] < 2:
        raise ValueError(
            f"expected >= 2 rows and >= 2 columns in {paths['train']}, got {train.shape}"
        )

    xs = {s: a[:, 1:].copy() for s, a in raw.items()}
    ys = {s: a[:, 0].copy() for s, a in raw.items()}
    for s in ys:
        _check_finite(paths[s], ys[s], lines[s], header[:1], "targets")
        _check_finite(paths[s], xs[s], lines[s], header[1:], "features")

    feature_names = list(header[1:])
    imputed: dict[str, float] = {}
    if missing_value is not None:
        miss = {s: x == missing_value for s, x in xs.items()}
        medians = np.zeros(xs["train"].shape[1])
        for j in range(xs["train"].shape[1]):
            observed = xs["train"][~miss["train"][:, j], j]
            medians[j] = float(np.median(observed)) if observed.size else 0.0
        for s in xs:
            cols = np.nonzero(miss[s].any(axis=0))[0]
            for c in cols:
                xs[s][miss[s][:, c], c] = medians[c]
                imputed[feature_names[c]] = float(medians[c])
        flagged = np.nonzero(miss["train"].any(axis=0))[0]
        if missing_indicators and flagged.size:
            for s in xs:
                xs[s] = np.concatenate([xs[s], miss[s][:, flagged].astype(np.float64)], axis=1)
            feature_names += [f"{feature_names[j]}_missing" for j in flagged]

    mu_x = xs["train"].mean(axis=0)
    sd_x = xs["train"].std(axis=0)
    sd_x[sd_x == 0] = 1.0
    mu_y = float(ys["train"].mean())
    sd_y = float(ys["train"].std()) or 1.0

    def f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    return Splits(
        name=Path(path_prefix).name,
        **{f"x_{s}": f32((xs[s] - mu_x) / sd_x) for s in xs},
        **{f"y_{s}": f32((ys[s] - mu_y) / sd_y) for s in ys},
        y_mean=mu_y,
        y_std=sd_y,
        info={
            "paths": {s: str(p) for s, p in paths.items()},
            "target": header[0],
            "feature_names": feature_names,
            "missing_value": missing_value,
            "imputed_medians": imputed,
        },
    )
