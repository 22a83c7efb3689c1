"""Running the fine-tuning benchmark: every (method, seed) not yet done, resumably.

The runs are independent, so the schedule is a plain list: seeds in order, every method
within a seed. With ``workers > 1`` they are handed to a process pool (each worker writes
its result file itself and draws its progress bar on its own line); with one worker they
run here, one after the other.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from benchmarks.finetune.config import FinetuneConfig, tqdm
from benchmarks.finetune.data import build_cache
from benchmarks.finetune.results import FinetuneResult, is_done, result_path, write_result
from benchmarks.finetune.training import run_one

__all__ = ["run_all"]

_WORKER_SLOT = 0
"""This worker's number (0..workers-1): its progress bar's line."""


def _init_worker(slots: Any, threads: int) -> None:
    global _WORKER_SLOT
    _WORKER_SLOT = slots.get()
    torch.set_num_threads(threads)


def _run_and_write(method: str, seed: int, config: FinetuneConfig, cache_path: Path,
                   threads: int, progress: bool, out_dir: Path,
                   position: int | None = None) -> FinetuneResult:
    """One run, its result file written at once."""
    position = _WORKER_SLOT + 1 if position is None else position
    result = run_one(method, seed, config, cache_path, threads=threads, progress=progress,
                     position=position)
    write_result(result_path(out_dir, method, seed), result)
    return result


def run_all(
    methods: Sequence[str],
    seeds: Sequence[int],
    config: FinetuneConfig,
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    workers: int = 2,
    threads: int = 1,
    progress: bool = True,
) -> None:
    """Run every (method, seed) not yet done with this ``config``; write each JSON at once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for seed in seeds:
        for method in methods:
            path = result_path(out_dir, method, seed)
            if is_done(path, config):
                print(f"skip {method} seed {seed}: {path} is done", flush=True)
            else:
                todo.append((method, seed))
    if not todo:
        return
    t0 = time.perf_counter()
    cache_path = build_cache(config, data_dir, cache_dir, progress=progress)
    print(f"cache: {cache_path} ({time.perf_counter() - t0:.0f} s); {len(todo)} runs on "
          f"{workers} worker(s) x {threads} thread(s)", flush=True)
    overall = tqdm(total=len(todo), desc="runs", disable=not progress, position=0)
    if workers <= 1:
        for method, seed in todo:
            result = _run_and_write(method, seed, config, cache_path, threads, progress,
                                    out_dir, position=1)
            overall.update()
            tqdm.write(f"done {method} seed {seed}: {result.seconds:.0f} s, "
                       f"test MSE {result.test.all.mse:.3f}")
    else:
        ctx = mp.get_context("spawn")
        slots = ctx.Manager().Queue()
        for k in range(workers):
            slots.put(k)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(slots, threads)) as pool:
            pending = {pool.submit(_run_and_write, m, s, config, cache_path, threads, progress,
                                   out_dir): (m, s) for m, s in todo}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    method, seed = pending.pop(future)
                    overall.update()
                    tqdm.write(f"done {method} seed {seed}: {future.result().seconds:.0f} s")
    overall.close()
    print(f"wall time of the runs: {time.perf_counter() - t0:.0f} s", flush=True)
