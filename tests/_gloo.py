"""The 2-process gloo harness of the multi-process tests: one rendezvous, one spawn.

A test module defines a top-level ``_worker(rank, out_dir)`` that calls :func:`init_gloo`,
saves what it measured to ``out_dir/rank<r>.pt`` and destroys the group; its ``ranks``
fixture returns :func:`spawn_ranks` of that worker.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2

# A hung collective raises after COLLECTIVE_TIMEOUT; the whole spawn is killed after
# SPAWN_TIMEOUT (it takes ~10 s; a busy machine may take a few times that).
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
SPAWN_TIMEOUT = 180.0


def init_gloo(rank: int, out_dir: str) -> None:
    """Join the gloo group of this run, one thread per rank.

    Rendezvous through a file of this run's tmp dir: no TCP port to pick (a port found free
    and handed to the workers can be taken by another process before rank 0 binds it) and
    no MASTER_ADDR / MASTER_PORT read from the environment.
    """
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{Path(out_dir) / 'store'}", rank=rank, world_size=WORLD,
        timeout=COLLECTIVE_TIMEOUT,
    )


def spawn_ranks(worker: Callable[[int, str], None], out_dir: Path) -> list[dict[str, Any]]:
    """Run ``worker`` on WORLD spawned ranks and return what each saved, in rank order."""
    context = mp.start_processes(
        worker, args=(str(out_dir),), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT
    try:
        # join raises if a rank fails (and then ends the others); False while they run
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                pytest.fail(f"the {WORLD} gloo workers did not finish in {SPAWN_TIMEOUT:.0f} s")
    finally:  # no straggler outlives the test, whatever happened
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(10)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
