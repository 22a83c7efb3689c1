"""Retrofit an MLP regressor that already works on a tabular data set with Group-DIR.

The starting point is what a user already has: an ``nn.Sequential`` MLP trained with plain
MSE. Making it imbalance-aware takes a handful of changed lines (binner, head, loss, and
calling the backbone and the head separately while training); the whole diff is::

    # before: the model you have, trained with MSE
    model = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))
    loss = F.mse_loss(model(x)[:, 0], y)
    pred = model(x)[:, 0]

    # after: Group-DIR
    binner = GroupBinner(10).fit(y_train)                         # + label range -> groups
    model[-1] = MultiExpertHead.from_linear(model[-1], 10)         # + fc -> classifier + experts
    criterion = GroupDIRLoss(binner, validate=True)                # + the objective
    features = model[:-1](x)                                       # ~ backbone (shares weights)
    loss = criterion(model[-1](features, binner(y)), features, y).loss
    pred = model(x).prediction[:, 0]                               # ~ inference

``model[:-1]`` is a view of the same modules, so ``model.parameters()``, ``model.state_dict()``
and ``model.to(device)`` keep covering everything. The new head starts as copies of the trained
layer, so before fine-tuning it predicts exactly what the MSE model did; this example gives it
a larger learning rate (30x), since its group classifier starts from zero. ``--tau`` > 0
turns on logit adjustment of the classifier: rarer groups are predicted more often, trading
accuracy on the common labels for accuracy on the rare ones.

Data: ``<data dir>/tabular/splits/<table>_{train,val,test}.csv`` (target in the first column,
a header row; 9999 marks a missing value in the car tables), see ``shared/data/README.md``.
Features and target are standardised with training statistics; errors are reported in label
units on the test split, by many/medium/few-shot region (20 equal-width bins over the training
range; many-shot holds more than its uniform share of training labels, few-shot less than a
fifth of it, the rule of ``benchmarks/data/shots.py``). As a control, the MSE model is also trained
for the same extra epochs with plain MSE, so "after" is not credited for more training.

    python examples/retrofit_tabular.py                       # abalone, 10-30 s on 2 CPU cores
    python examples/retrofit_tabular.py --table concreteStrength
    python examples/retrofit_tabular.py --smoke               # CI
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dirloss import GroupBinner, GroupDIRLoss, MultiExpertHead
from dirloss.metrics import shot_metrics

from _shared import DEFAULT_DATA_DIR, print_table, tqdm  # examples/_shared.py

MISSING = 9999.0
HEADING = "Shot metrics (test split, label units)"

Split = tuple[Tensor, Tensor]


def load_table(folder: Path, name: str) -> tuple[dict[str, Split], float, float]:
    """Train/val/test ``(x, y)`` standardised with training statistics, and the target's mean/std.

    A feature equal to 9999 is missing: it gets the column's training median and a 0/1
    "was missing" column is appended (missingness carries information in the car tables).
    """
    raw = {}
    for split in ("train", "val", "test"):
        path = folder / "splits" / f"{name}_{split}.csv"
        raw[split] = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    x = {s: a[:, 1:].copy() for s, a in raw.items()}
    y = {s: a[:, 0] for s, a in raw.items()}
    missing = {s: v == MISSING for s, v in x.items()}
    flagged = np.flatnonzero(missing["train"].any(axis=0))
    for j in range(x["train"].shape[1]):
        observed = x["train"][~missing["train"][:, j], j]
        median = float(np.median(observed)) if observed.size else 0.0
        for s in x:
            x[s][missing[s][:, j], j] = median
    for s in x:
        x[s] = np.concatenate([x[s], missing[s][:, flagged]], axis=1)
    mu, sd = x["train"].mean(axis=0), x["train"].std(axis=0)
    sd[sd == 0] = 1.0
    y_mean, y_std = float(y["train"].mean()), float(y["train"].std())
    data = {
        s: (
            torch.tensor((x[s] - mu) / sd, dtype=torch.float32),
            torch.tensor((y[s] - y_mean) / y_std, dtype=torch.float32),
        )
        for s in x
    }
    return data, y_mean, y_std


def shot_kwargs(train_labels: np.ndarray, num_bins: int = 20) -> dict[str, Any]:
    """Bins and thresholds for ``shot_metrics``: many > N/B training labels, few < N/(5B).

    Integer labels (abalone's rings) get whole-number bin widths with half-integer edges, so
    every bin holds the same number of possible values.
    """
    lo, hi = float(train_labels.min()), float(train_labels.max())
    if np.allclose(train_labels, np.round(train_labels)):
        width = max(1, math.ceil((hi - lo) / num_bins))
        edges = lo - 0.5 + width * np.arange(math.ceil((hi - lo + 1) / width) + 1)
    else:
        edges = np.linspace(lo, hi, num_bins + 1)
    share = train_labels.size / (edges.size - 1)
    return {"bin_edges": edges, "many_shot": share, "few_shot": 0.2 * share}


def mlp(in_features: int, width: int) -> nn.Sequential:
    """The model the user already has: an MLP ending in a 1-output ``nn.Linear``."""
    return nn.Sequential(
        nn.Linear(in_features, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 1),
    )


def train(
    model: nn.Sequential,
    data: Split,
    epochs: int,
    args: argparse.Namespace,
    *,
    binner: GroupBinner | None = None,
    desc: str,
) -> None:
    """Adam over ``model``; plain MSE, or Group-DIR when a ``binner`` is given."""
    x, y = data
    criterion: GroupDIRLoss | None = None
    if binner is not None:
        criterion = GroupDIRLoss(binner, tau=args.tau, validate=True).to(x.device)
    groups = [{"params": model[:-1].parameters()}, {"params": model[-1].parameters()}]
    if binner is not None:  # the new classifier starts at zero: give it a larger step
        groups[1]["lr"] = args.head_lr
    optimizer = torch.optim.Adam(groups, lr=args.lr, weight_decay=args.weight_decay)
    order = torch.Generator().manual_seed(args.seed)
    model.train()
    bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=args.no_progress)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=order).split(args.batch_size):
            xb, yb = x[index.to(x.device)], y[index.to(x.device)]
            if criterion is None or binner is None:
                loss = F.mse_loss(model(xb)[:, 0], yb)
            else:
                features = model[:-1](xb)
                loss = criterion(model[-1](features, binner(yb)), features, yb).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()


@torch.no_grad()
def predict(model: nn.Sequential, x: Tensor) -> Tensor:
    model.eval()
    out = model(x)
    return (out.prediction if isinstance(model[-1], MultiExpertHead) else out)[:, 0]


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DIRLOSS_DATA_DIR", DEFAULT_DATA_DIR)),
                        help="holds tabular/ (default $DIRLOSS_DATA_DIR or <repo>/../shared/data)")
    parser.add_argument("--table", default="abalone", help="which table of tabular/")
    parser.add_argument("--groups", type=int, default=10, help="G, groups of the label range")
    parser.add_argument("--epochs", type=int, default=150, help="MSE training of the original")
    parser.add_argument("--finetune-epochs", type=int, default=100, help="after retrofitting")
    parser.add_argument("--batch-size", type=int, default=128, help="rows per step")
    parser.add_argument("--width", type=int, default=64, help="hidden width of the MLP")
    parser.add_argument("--lr", type=float, default=1e-3, help="backbone learning rate")
    parser.add_argument("--head-lr", type=float, default=3e-2,
                        help="of the retrofitted head (30x --lr)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay")
    parser.add_argument("--inference", choices=("argmax", "soft", "topk"), default="soft",
                        help="how the retrofitted head picks its expert at test time")
    parser.add_argument("--tau", type=float, default=0.0,
                        help="logit adjustment of the group classifier (> 0 favours rare groups)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--smoke", action="store_true", help="a few epochs (CI)")
    args = parser.parse_args(argv)
    for name, low in (("groups", 2), ("epochs", 0), ("finetune_epochs", 0), ("batch_size", 1),
                      ("width", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    splits = args.data_dir / "tabular" / "splits"
    if not (splits / f"{args.table}_train.csv").is_file():
        parser.error(
            f"no {args.table}_train.csv in {splits}: pass --data-dir DIR (the directory holding "
            f"tabular/splits/; looked in {args.data_dir}, the default is $DIRLOSS_DATA_DIR or "
            f"{DEFAULT_DATA_DIR})"
        )
    if args.smoke:
        args.epochs, args.finetune_epochs = 5, 3

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    data, y_mean, y_std = load_table(args.data_dir / "tabular", args.table)
    data = {s: (x.to(device), y.to(device)) for s, (x, y) in data.items()}
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    print(f"{args.table}: {len(x_train)} train / {len(data['val'][0])} val / {len(x_test)} test "
          f"rows, {x_train.shape[1]} features, on {device}")

    def to_labels(t: Tensor) -> np.ndarray:
        return t.double().cpu().numpy() * y_std + y_mean

    train_labels = to_labels(y_train)
    kwargs = shot_kwargs(train_labels)

    def evaluate(model: nn.Sequential) -> dict[str, Any]:
        return shot_metrics(to_labels(predict(model, x_test)), to_labels(y_test), train_labels,
                            **kwargs)

    # The model the user already has: an MLP trained with MSE.
    model = mlp(x_train.shape[1], args.width).to(device)
    train(model, data["train"], args.epochs, args, desc="MSE (original)")
    results = {"before": evaluate(model)}
    print_table(f"{HEADING}: before (plain MSE)", results["before"], width=10)

    # Control: the same extra epochs with plain MSE.
    control = copy.deepcopy(model)
    train(control, data["train"], args.finetune_epochs, args, desc="MSE (more epochs)")
    results["control"] = evaluate(control)

    # ---- The retrofit: these lines are the whole change. -------------------------------
    binner = GroupBinner(args.groups).fit(y_train).to(device)
    model[-1] = MultiExpertHead.from_linear(model[-1], args.groups, inference=args.inference)
    train(model, data["train"], args.finetune_epochs, args, binner=binner, desc="Group-DIR")
    # -----------------------------------------------------------------------------------
    print(f"training rows per group: {binner.counts.tolist()}")
    results["after"] = evaluate(model)
    print_table(f"{HEADING}: after (Group-DIR, {args.inference} inference)", results["after"],
                width=10)

    print(f"\n{'few-shot MAE / all MAE':<40} {'few':>8} {'all':>8}")
    for name, label in (("before", "before: MSE"),
                        ("control", f"control: MSE + {args.finetune_epochs} epochs"),
                        ("after", f"after: Group-DIR + {args.finetune_epochs} epochs")):
        m = results[name]
        print(f"{label:<40} {m['few']['mae']:>8.4f} {m['all']['mae']:>8.4f}")
    return results


if __name__ == "__main__":
    main()
