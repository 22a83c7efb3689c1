"""examples/lightning_train.py: the Lightning retrofit trains, selects on validation and prints
test shot metrics, in one process and under Lightning's 2-process DDP strategy (gloo)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lightning_train.py"

pytestmark = [
    pytest.mark.skipif(not EXAMPLE.is_file(), reason="examples/ is not in this tree (sdist)"),
    pytest.mark.skipif(
        importlib.util.find_spec("lightning") is None,
        reason="needs the lightning extra (pip install torch==2.13.0 -e '.[lightning]')",
    ),
]


def _run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--smoke", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "hold no training label" not in output, output  # no warning of our own
    return done.stdout


def _check_table(stdout: str, world_size: int) -> None:
    assert f"world size {world_size} on cpu" in stdout, stdout
    assert "select_inference on validation: inference=" in stdout, stdout
    assert "Shot metrics on the balanced test set" in stdout, stdout
    for row in ("all", "many", "medium", "few"):
        assert any(line.split()[:1] == [row] for line in stdout.splitlines()), stdout
    assert stdout.count("Shot metrics") == 1, stdout  # printed by rank 0 only


def test_lightning_example_smoke():
    _check_table(_run(), 1)


@pytest.mark.slow
def test_lightning_example_smoke_ddp_two_processes():
    _check_table(_run("--devices", "2"), 2)


_WITHOUT_LIGHTNING = r'''
import importlib.abc, runpy, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "lightning":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1], "--help"]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_without_lightning_the_example_names_the_extra():
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LIGHTNING, str(EXAMPLE)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "needs PyTorch Lightning: pip install torch==2.13.0 -e '.[lightning]'" in done.stderr
