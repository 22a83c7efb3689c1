"""Fine-tuning one (method, seed) of the fine-tuning benchmark: :func:`run_one`.

For a seed every method starts from the same top layers and the same ``fc`` (drawn from the
seed), sees the training pairs in the same order, for the same epochs, with the same
optimiser and learning rates; only the head and the loss differ (:mod:`.methods`).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.finetune.config import SPLITS, FinetuneConfig, tqdm
from benchmarks.finetune.data import Packed, TopEncoder, load_encoder
from benchmarks.finetune.evaluation import evaluate, overall_errors, score_bin_counts
from benchmarks.finetune.methods import ALL_METHODS, Objective, Setup
from benchmarks.finetune.results import EpochRecord, FinetuneResult, InferenceRecord
from dirloss import MultiExpertHead, select_inference

__all__ = ["run_one"]


def _lr_lambda(steps: int, warmup: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` of the steps, then linear decay to 0."""
    ramp = max(1, round(steps * warmup))

    def f(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        return max(0.0, (steps - step) / max(1, steps - ramp))

    return f


def _prediction(head: nn.Module, features: Tensor) -> Tensor:
    if isinstance(head, MultiExpertHead):
        return head(features).prediction[:, 0]
    return head(features)[:, 0]


class _Model:
    """The top encoder and a method's objective on the cached splits; predictions in score
    units."""

    def __init__(self, top: TopEncoder, objective: Objective, data: dict[str, Packed],
                 mean: float, std: float) -> None:
        self.top, self.objective, self.data = top, objective, data
        self.head = objective.head
        self.mean, self.std = mean, std

    @torch.no_grad()
    def features(self, split: str) -> Tensor:
        self.top.eval()
        out = [self.top(*self.data[split].batch(index))
               for index in torch.arange(len(self.data[split])).split(128)]
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, features: Tensor) -> np.ndarray:
        self.head.eval()
        return _prediction(self.head, features).double().numpy() * self.std + self.mean

    def standardised(self, split: str) -> Tensor:
        return (self.data[split].y - self.mean) / self.std


def _train(model: _Model, config: FinetuneConfig, seed: int, labels: dict[str, np.ndarray],
           bar_name: str, progress: bool, position: int) -> list[EpochRecord]:
    """AdamW with warm-up and linear decay, gradient clipping, batch order seeded by ``seed``;
    returns the per-epoch records (stops after a non-finite epoch)."""
    top, head, train = model.top, model.head, model.data["train"]
    y_train = model.standardised("train")
    optimizer = torch.optim.AdamW(
        [{"params": top.parameters(), "lr": config.lr},
         {"params": head.parameters(), "lr": config.lr * config.head_lr_mult}],
        weight_decay=config.weight_decay,
    )
    n = len(train)
    per_epoch = math.ceil(n / config.batch_size)
    if n % config.batch_size == 1 and per_epoch > 1:
        per_epoch -= 1  # no batch of one (contrastive and ranking losses need pairs)
    steps = per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, config.warmup))
    order_gen = torch.Generator().manual_seed(seed)
    history: list[EpochRecord] = []
    bar = tqdm(total=steps, desc=bar_name, disable=not progress, position=position,
               leave=position == 0, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        top.train()
        head.train()
        order = torch.randperm(n, generator=order_gen)
        total, count = 0.0, 0
        for b in range(per_epoch):
            end = (b + 1) * config.batch_size if b < per_epoch - 1 else n
            index = order[b * config.batch_size:end]
            loss = model.objective.loss(top(*train.batch(index)), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*top.parameters(), *head.parameters()],
                                           config.clip_norm)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
            bar.update()
            bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
        seconds = time.perf_counter() - t0
        # the head's own inference (soft / argmax): a curve only
        val = model.predict(model.features("val"))
        mae, mse = overall_errors(val, labels["val"])
        history.append(EpochRecord(epoch + 1, total / count, seconds, mae, mse))
        if not math.isfinite(total):
            break
    bar.close()
    return history


def _pick_inference(model: _Model, val_features: Tensor) -> InferenceRecord | None:
    """A grouped head's inference setting: the library's rule on the dev split, or the
    paper's argmax."""
    head, binner = model.head, model.objective.binner
    if not isinstance(head, MultiExpertHead) or binner is None:
        return None
    head.eval()
    y_val = model.standardised("val")
    with torch.no_grad():
        if model.objective.library_rule:
            choice = select_inference(head, val_features, y_val, binner)
            mode, tau, rule = choice.inference, choice.tau, "select_inference on dev"
            scores = {f"{m}, tau={t:g}": list(v) for (m, t), v in choice.scores.items()}
        else:
            mode, tau, rule, scores = head.inference, 0.0, "paper: argmax", None
        hits = head(val_features).logits.argmax(1) == binner(y_val)
    return InferenceRecord(mode, tau, rule, scores, float(hits.double().mean()))


def run_one(
    method: str,
    seed: int,
    config: FinetuneConfig,
    cache_path: Path,
    *,
    threads: int = 1,
    progress: bool = True,
    position: int = 0,
) -> FinetuneResult:
    """Fine-tune ``method`` with ``seed``; return its result record (metrics in score units)."""
    if method not in ALL_METHODS:
        raise ValueError(f"expected a method in {tuple(ALL_METHODS)}, got {method!r}")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    cache = torch.load(cache_path, map_location="cpu", mmap=True, weights_only=True)
    data = {s: Packed(cache[s]) for s in SPLITS}
    labels = {s: data[s].y.double().numpy() for s in SPLITS}
    mean, std = float(labels["train"].mean()), float(labels["train"].std())

    _, encoder = load_encoder()
    frozen, layers = int(cache["frozen_layers"]), int(encoder.config.num_hidden_layers)
    if frozen + config.top_layers != layers:
        raise ValueError(f"the cache froze {frozen} layers, expected {layers - config.top_layers}")
    torch.manual_seed(seed)  # the same fc, dropout stream and data order for every method
    top = TopEncoder(copy.deepcopy(list(encoder.encoder.layer[frozen:])))
    fc = nn.Linear(int(data["train"].states.shape[1]), 1)
    nn.init.zeros_(fc.bias)  # start at the mean score (0 in standardised units)
    y_train = (data["train"].y - mean) / std  # standardised with training statistics
    objective = ALL_METHODS[method].build(Setup(fc, y_train, mean, std, config, seed))
    model = _Model(top, objective, data, mean, std)

    history = _train(model, config, seed, labels, f"{method} seed {seed}", progress, position)
    feats = {s: model.features(s) for s in ("val", "test")}
    inference = _pick_inference(model, feats["val"])
    return FinetuneResult(
        method=method, label=ALL_METHODS[method].label, seed=seed, config=config,
        target_mean=mean, target_std=std,
        counts={s: len(data[s]) for s in SPLITS},
        train_counts=score_bin_counts(labels["train"]),
        val=evaluate(model.predict(feats["val"]), labels["val"], labels["train"]),
        test=evaluate(model.predict(feats["test"]), labels["test"], labels["train"]),
        inference=inference, history=history,
        seconds=time.perf_counter() - start, threads=threads,
        versions={"torch": torch.__version__},
    )
