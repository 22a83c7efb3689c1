"""Stage 3 of the accuracy benchmark: training one (method, setting, seed).

:func:`train` is the shared loop (:func:`optimise`) around a method's model and loss;
:func:`run_job` is what a worker process does with one :class:`Job`: train it and return the
validation predictions and the weights as a :class:`JobResult`. The test split is never
touched here: the main process evaluates it only for the setting each method selects.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks import methods
from benchmarks.datasets import DataSpec, Prepared, prepare
from benchmarks.methods import METHODS, InfeasibleSetting, Method
from benchmarks.models import Regressor
from dirloss import MultiExpertHead

__all__ = [
    "Job",
    "JobResult",
    "TrainConfig",
    "TrainRecord",
    "init_worker",
    "optimise",
    "predict",
    "run_job",
    "train",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Shared by every method on a data set."""

    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainRecord:
    """How a training run went: wall seconds, the last epoch's loss, whether it stayed finite."""

    train_seconds: float
    final_loss: float
    finite: bool


def optimise(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor, Tensor], Tensor],
    extra: Sequence[nn.Parameter],
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    seed: int,
    weight_decay: float = 0.0,
) -> tuple[float, bool]:
    """The shared training loop: Adam with a cosine-annealed learning rate over all steps,
    batch order from a generator seeded with ``seed``, the last incomplete batch kept unless
    it holds a single sample. A loss with an ``end_epoch`` attribute has it called after each
    epoch (FDS finalises its statistics there). Returns the last epoch's loss and whether it
    stayed finite."""
    end_epoch = getattr(loss_fn, "end_epoch", None)
    params = [*model.parameters(), *extra]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=weight_decay)
    n = x.shape[0]
    per_epoch = max(1, math.ceil(n / config.batch_size))
    if n % config.batch_size == 1 and per_epoch > 1:
        per_epoch -= 1
    steps = per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    order_gen = torch.Generator().manual_seed(seed)
    model.train()
    last = math.nan
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=order_gen)
        for b in range(per_epoch):
            end = (b + 1) * config.batch_size if b < per_epoch - 1 else n
            index = order[b * config.batch_size:end]
            loss = loss_fn(model, x[index], y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if end_epoch is not None:
            end_epoch()
        last = float(loss.detach())
        if not math.isfinite(last):
            return last, False
    return last, True


def train(
    method: Method,
    params: Mapping[str, Any],
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    seed: int,
) -> tuple[Regressor, TrainRecord]:
    """Train ``method`` with ``params`` on standardised ``(x, y)``; returns the model in eval
    mode and its :class:`TrainRecord`.

    The data order is drawn from a generator seeded with ``seed`` (the same for every
    method); the last incomplete batch is kept unless it holds a single sample (contrastive
    and batch-softmax losses need pairs). Adam, learning rate cosine-annealed to 0 over all
    steps; ``weight_decay`` from ``params`` (0 unless given).
    """
    start = time.perf_counter()
    model = methods.build_model(
        method, params, x.shape[1], config.hidden, seed=seed, dropout=config.dropout
    )
    loss_fn, extra = methods.make_loss(method, params, y, seed=seed)
    last, finite = optimise(model, loss_fn, extra, x, y, config, seed=seed,
                            weight_decay=float(params.get("weight_decay", 0.0)))
    model.eval()
    if isinstance(model.head, MultiExpertHead):  # the group prior, for logit adjustment
        model.head.set_logit_adjustment(0.0, methods.fit_binner(params, y).counts)
    return model, TrainRecord(time.perf_counter() - start, last, finite)


@torch.no_grad()
def predict(model: Regressor, x: Tensor, inference: Any = "argmax") -> np.ndarray:
    """Predictions in model units, shape (N,), float64; ``inference`` (a mode or a
    ``(mode, tau)`` pair) applies to grouped heads."""
    model.eval()
    if isinstance(model.head, MultiExpertHead):
        mode, tau = (inference, 0.0) if isinstance(inference, str) else inference
        model.head.inference = mode
        model.head.set_logit_adjustment(float(tau))
    _, out = model(x)
    pred = out.prediction if isinstance(model.head, MultiExpertHead) else out
    return pred[:, 0].to(torch.float64).numpy()


# ---------------------------------------------------------------------------------------------
# One job, run in a worker process
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: ``method``'s grid setting ``setting`` with ``seed`` on ``data``."""

    data: DataSpec
    method: str
    setting: int
    seed: int
    config: TrainConfig


@dataclasses.dataclass
class JobResult:
    """What a worker sends back for a :class:`Job`.

    Attributes:
        job: the job.
        record: its training record (zero seconds, not finite, when infeasible).
        val_pred: standardised validation predictions per inference key (one key,
            ``"argmax"``, for a linear head).
        state: the trained weights, to evaluate on the test split if this setting is chosen
            (``None`` when infeasible).
        infeasible: why the setting cannot be built on this data set, or ``None``.
    """

    job: Job
    record: TrainRecord
    val_pred: dict[str, np.ndarray]
    state: dict[str, Tensor] | None
    infeasible: str | None = None


@dataclasses.dataclass
class _Worker:
    """A worker process's settings and its one cached data set (one at a time keeps memory
    flat; jobs come mostly grouped by data set, so it is rarely reloaded)."""

    data_dir: str | None = None
    cache_dir: str | None = None
    max_train: int | None = None
    data: Prepared | None = None

    def prepared(self, spec: DataSpec) -> Prepared:
        if self.data is None or self.data.spec != spec:
            self.data = None  # free the previous data set first
            self.data = prepare(
                spec, data_dir=self.data_dir, cache_dir=self.cache_dir, max_train=self.max_train
            )
        return self.data


_WORKER = _Worker()


def init_worker(data_dir: str | None, cache_dir: str | None, max_train: int | None) -> None:
    """Set up a worker process (one torch thread; where the data are)."""
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = _Worker(data_dir, cache_dir, max_train)


def run_job(job: Job) -> JobResult:
    """Train one (method, setting, seed); return validation predictions and the weights."""
    data = _WORKER.prepared(job.data)
    method = METHODS[job.method]
    params = method.grid[job.setting]
    try:
        model, record = train(method, params, data.x["train"], data.y["train"], job.config,
                              seed=job.seed)
    except InfeasibleSetting as err:
        return JobResult(job, TrainRecord(0.0, math.nan, False), {}, None, infeasible=str(err))
    val = {key: predict(model, data.x["val"], methods.parse_inference(key))
           for key in method.inference_keys}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return JobResult(job, record, val, state)
