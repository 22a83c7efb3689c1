"""examples/ddp_train.py runs under torchrun with 2 gloo processes and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddp_train.py"


@pytest.mark.slow
def test_ddp_example_smoke_under_torchrun() -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(EXAMPLE), "--smoke", "--timeout", "60",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "world size 2 on cpu" in result.stdout, output
    assert "Shot metrics on the balanced test set" in result.stdout, output
    for row in ("all", "many", "medium", "few"):
        assert any(line.split()[:1] == [row] for line in result.stdout.splitlines()), output
    assert "balanced MAE (bMAE):" in result.stdout, output
