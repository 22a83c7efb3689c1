"""Running the accuracy benchmark's jobs: which training run goes when, and what is done
with its result.

Each data set is a :class:`DatasetRun` with two plain queues of :class:`~benchmarks.training.Job`:

1. ``selection``: every method x grid setting x selection seed, queued at the start;
2. ``tests``: the extra test seeds of a method's chosen setting, queued as soon as that
   method's selection runs are all in (the selection seeds' models of the chosen setting
   are tested at once, without retraining).

:func:`run_all` keeps ``workers`` jobs running in a process pool (or runs them one by one in
this process with ``workers <= 1``). The next job is always taken from the *first* data set
that has one queued, its ``tests`` before its ``selection``: so data sets finish (and are
written) in the order given, and a data set's last runs overlap with the next one's first.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any

import numpy as np

from benchmarks import data as bd
from benchmarks.datasets import DataSpec, Prepared
from benchmarks.evaluation import SeedResult, bin_counts, bin_regions, evaluate_on_test
from benchmarks.methods import Method
from benchmarks.results import DatasetResult, MachineInfo, MethodResult, Protocol
from benchmarks.selection import Candidate, Chosen, score_candidates, select
from benchmarks.targets import dataset_checks
from benchmarks.training import Job, JobResult, TrainConfig, init_worker, run_job

__all__ = ["DatasetRun", "MethodRun", "RunOptions", "run_all"]

SELECTION_RULE = (
    "mean validation bMAE over seeds 0..{last}; inference setting of grouped heads picked on "
    "validation from the same models; dirloss: the library's rule (lowest bMAE within 2% of "
    "the best validation MAE)"
)
OPTIMIZER = "Adam, cosine-annealed lr, batch order from a generator seeded per seed"


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The command-line settings the scheduler needs (see ``python -m benchmarks.dir_bench
    --help``)."""

    seeds: int
    select_seeds: int
    max_grid: int | None
    workers: int
    data_dir: str | None
    cache_dir: str | None
    max_train: int | None
    quick: bool
    command: str
    progress: bool = True


@dataclasses.dataclass
class MethodRun:
    """One method on one data set while it runs."""

    method: Method
    settings: list[int]  # the grid settings it tries (``--max-grid``)
    selection: dict[int, dict[int, JobResult]] = dataclasses.field(default_factory=dict)
    candidates: list[Candidate] = dataclasses.field(default_factory=list)
    chosen: Chosen | None = None
    tested: dict[int, SeedResult] = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0

    def selection_done(self, select_seeds: int) -> bool:
        return sum(len(s) for s in self.selection.values()) == len(self.settings) * select_seeds


@dataclasses.dataclass
class DatasetRun:
    """One data set while it runs: its queues, its methods and how many jobs are left."""

    spec: DataSpec
    data: Prepared
    config: TrainConfig
    methods: dict[str, MethodRun]
    options: RunOptions
    selection: collections.deque[Job] = dataclasses.field(default_factory=collections.deque)
    tests: collections.deque[Job] = dataclasses.field(default_factory=collections.deque)
    remaining: int = 0
    started: float | None = None
    finished: float | None = None

    @classmethod
    def plan(cls, data: Prepared, config: TrainConfig, methods: Sequence[Method],
             options: RunOptions) -> DatasetRun:
        """Queue every selection run; count those and the extra test seeds still to come."""
        run = cls(data.spec, data, config, {}, options)
        extra_seeds = max(0, options.seeds - options.select_seeds)
        for m in methods:
            n = len(m.grid) if options.max_grid is None else min(len(m.grid), options.max_grid)
            run.methods[m.name] = MethodRun(m, list(range(n)))
            for k in range(n):
                for seed in range(options.select_seeds):
                    run.selection.append(Job(data.spec, m.name, k, seed, config))
            run.remaining += n * options.select_seeds + extra_seeds
        return run

    def next_job(self) -> Job | None:
        """The next job of this data set (test seeds first), or ``None``."""
        queue = self.tests or self.selection
        if not queue:
            return None
        if self.started is None:
            self.started = time.perf_counter()
        return queue.popleft()

    def add(self, result: JobResult) -> None:
        """Take in a finished job: store it, and once a method's selection runs are all in,
        pick its setting, test the selection seeds' models and queue the extra seeds."""
        job = result.job
        mr = self.methods[job.method]
        mr.train_seconds += result.record.train_seconds
        self.remaining -= 1
        if mr.chosen is not None:  # an extra test seed of the chosen setting
            self._test(mr, result)
        else:
            mr.selection.setdefault(job.setting, {})[job.seed] = result
            if mr.selection_done(self.options.select_seeds):
                self._choose(mr)
        if self.remaining == 0:
            self.finished = time.perf_counter()

    def _choose(self, mr: MethodRun) -> None:
        mr.candidates = score_candidates(mr.method, mr.selection, self.data)
        best = select(mr.candidates, mae_guard=mr.method.mae_guard,
                      metric=mr.method.select_metric)
        mr.chosen = Chosen.of(best)
        for seed in sorted(mr.selection[best.setting]):  # reuse: tested once, not retrained
            self._test(mr, mr.selection[best.setting][seed])
        mr.selection = {}  # the scores are in the candidates; drop the weights
        for seed in range(self.options.select_seeds, self.options.seeds):
            self.tests.append(Job(self.spec, mr.method.name, best.setting, seed, self.config))

    def _test(self, mr: MethodRun, result: JobResult) -> None:
        assert mr.chosen is not None and result.state is not None
        mr.tested[result.job.seed] = evaluate_on_test(
            self.data, mr.method, mr.chosen.setting, mr.chosen.inference, result.state,
            self.config, result.job.seed,
        )

    def wall_seconds(self) -> float:
        """From its first job's start to its last job's end (or now)."""
        end = self.finished or time.perf_counter()
        return end - (self.started or end)

    def result(self) -> DatasetResult:
        """The finished data set as its result record."""
        data, opts = self.data, self.options
        methods = {}
        for name, mr in self.methods.items():
            assert mr.chosen is not None
            seeds = [mr.tested[s] for s in sorted(mr.tested)]
            methods[name] = MethodResult.from_seeds(mr.method.label, mr.candidates, mr.chosen,
                                                    seeds, mr.train_seconds)
        edges = np.asarray(data.shot_kwargs["bin_edges"], dtype=np.float64)
        counts = bin_counts(data.labels["train"], edges)
        shot = {k: (np.asarray(v).tolist() if k == "bin_edges" else v)
                for k, v in data.shot_kwargs.items()}
        train = data.labels["train"]
        return DatasetResult(
            dataset=self.spec.name, spec=self.spec.spec, kind=self.spec.kind,
            command=opts.command, machine=MachineInfo.current(opts.workers),
            protocol=Protocol(
                seeds=opts.seeds, selection=SELECTION_RULE.format(last=opts.select_seeds - 1),
                select_seeds=opts.select_seeds, max_grid=opts.max_grid, quick=opts.quick,
                max_train=opts.max_train, config=self.config, optimizer=OPTIMIZER,
                target_scaling={"a": data.unscale_a, "b": data.unscale_b},
                split=self.spec.protocol,
            ),
            data=data.sizes, shot=shot,
            region_counts={s: bd.shot_region_counts(train, data.labels[s], **data.shot_kwargs)
                           for s in ("val", "test")},
            train_counts=counts.tolist(),
            bin_regions=bin_regions(counts, data.shot_kwargs),
            methods=methods,
            wall_seconds=self.wall_seconds(),
            checks=dataset_checks(self.spec.kind, methods),
        )


class _InThisProcess(Executor):
    """``--workers 1``: a stand-in for the pool that runs each job when it is submitted."""

    def __init__(self, *init: Any) -> None:
        init_worker(*init)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # surface in the caller like a pool would
            future.set_exception(err)
        return future


def _next_job(runs: Sequence[DatasetRun]) -> Job | None:
    """The next job of the first data set that has one queued."""
    for run in runs:
        job = run.next_job()
        if job is not None:
            return job
    return None


def run_all(runs: Sequence[DatasetRun], options: RunOptions,
            on_finished: Callable[[DatasetRun], None]) -> None:
    """Run every queued job of ``runs``; call ``on_finished`` as each data set completes."""
    from tqdm.auto import tqdm

    init = (options.data_dir, options.cache_dir, options.max_train)
    pool: Executor
    if options.workers <= 1:
        pool = _InThisProcess(*init)
    else:
        pool = ProcessPoolExecutor(options.workers, mp_context=get_context("spawn"),
                                   initializer=init_worker, initargs=init)
    by_name = {run.spec.name: run for run in runs}
    running: dict[Future[JobResult], Job] = {}
    bar = tqdm(total=sum(r.remaining for r in runs), desc="dir_bench", unit="run",
               disable=not options.progress, dynamic_ncols=True)
    try:
        while True:
            # Start jobs until every worker is busy (or nothing is queued).
            while len(running) < max(1, options.workers):
                job = _next_job(runs)
                if job is None:
                    break
                running[pool.submit(run_job, job)] = job
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                run = by_name[job.data.name]
                run.add(future.result())  # may queue the chosen setting's test seeds
                bar.update(1)
                bar.set_postfix_str(f"{job.data.name}/{job.method}", refresh=False)
                if run.remaining == 0:
                    on_finished(run)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
