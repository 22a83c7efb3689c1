"""examples/ddp_train.py runs under torchrun with 2 gloo processes and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddp_train.py"
# What a launcher (torchrun, an outer distributed job) leaves in the environment; passed on,
# it would steer this run: torchrun reads its options from PET_* variables, and
# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 makes it pick the workers' port free-then-reuse.
LAUNCHER_VARIABLES = {
    "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME",
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
}


@pytest.mark.slow
def test_ddp_example_smoke_under_torchrun() -> None:
    # --standalone: the rendezvous store binds a port the OS assigns (and the workers share
    # it); --local-addr: no host-name lookup for the address the workers connect to.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "--local-addr=127.0.0.1", str(EXAMPLE), "--smoke", "--timeout", "60",
    ]
    env = {
        k: v for k, v in os.environ.items()
        if k not in LAUNCHER_VARIABLES and not k.startswith(("PET_", "TORCHELASTIC_"))
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # gloo on CPU
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGKILL: torchrun then stops its workers (each runs in a session
            # of its own, out of reach of a kill of torchrun alone) before it exits.
            process.terminate()
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            pytest.fail(f"torchrun did not finish in 120 s:\n{stdout}{stderr}")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "world size 2 on cpu" in result.stdout, output
    assert "Shot metrics on the balanced test set" in result.stdout, output
    for row in ("all", "many", "medium", "few"):
        assert any(line.split()[:1] == [row] for line in result.stdout.splitlines()), output
    assert "balanced MAE (bMAE):" in result.stdout, output
