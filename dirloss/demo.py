"""Demo: plain MSE, the paper's Group-DIR and the dirloss defaults on a long-tailed task.

Run ``python -m dirloss.demo`` (under a minute on 2 CPU cores). The three models share the
backbone, optimiser, epochs, seed, training data and data order; only the head and the loss
differ. The dirloss model picks its inference setting on a held-out validation split
(:func:`dirloss.select_inference`); the table is on a balanced test set, whatever it shows.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .binning import GroupBinner
from .heads import MultiExpertHead
from .inference import select_inference
from .metrics import shot_metrics
from .objective import GroupDIRLoss

__all__ = ["make_long_tailed_regression", "main"]

LABEL_RANGE = (0.0, 100.0)


def make_long_tailed_regression(
    num_samples: int,
    *,
    num_features: int = 16,
    balanced: bool = False,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    r"""A synthetic imbalanced-regression task with labels in [0, 100].

    Labels follow a long-tailed law (most mass near 15-30, a thin tail up to 100, like ages
    in a face data set); ``balanced=True`` draws them uniformly instead, the way DIR test sets
    are built. Each feature is a fixed random smooth function of the label,
    :math:`x_j = \sin(a_j\,y / 100 + b_j) + \varepsilon`, so the label is recoverable but the
    map is non-linear; the same ``seed`` gives the same functions for every split.

    Args:
        num_samples: N.
        num_features: D.
        balanced: uniform labels (test sets) instead of long-tailed ones (training sets).
        noise: standard deviation of the Gaussian feature noise.
        seed: seeds the feature map; the samples use ``seed + 1`` (``+ 2`` when balanced).

    Returns:
        ``(x, y)`` of shapes (N, D) and (N,), float32.

    Example:
        >>> x, y = make_long_tailed_regression(1000)
        >>> x.shape, bool((y >= 0).all() and (y <= 100).all())
        (torch.Size([1000, 16]), True)
    """
    low, high = LABEL_RANGE
    maps = torch.Generator().manual_seed(seed)
    freq = 2.0 + 6.0 * torch.rand(num_features, generator=maps)
    phase = 2 * math.pi * torch.rand(num_features, generator=maps)
    draw = torch.Generator().manual_seed(seed + (2 if balanced else 1))
    if balanced:
        y = low + (high - low) * torch.rand(num_samples, generator=draw)
    else:
        # 5 + Gamma(shape 2, scale 8), drawn as a sum of two exponentials: a mode near 13,
        # half of the mass below 18, a long tail.
        uniform = torch.rand(2, num_samples, generator=draw)
        y = 5.0 - 8.0 * uniform.log().sum(dim=0)
        resample = y > high
        y[resample] = low + (high - low) * torch.rand(int(resample.sum()), generator=draw)
    x = torch.sin(freq * y[:, None] / high + phase)
    x = x + noise * torch.randn(num_samples, num_features, generator=draw)
    return x, y


class _Backbone(nn.Sequential):
    def __init__(self, in_features: int, width: int) -> None:
        super().__init__(
            nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )


def _groups_with_data(y: Tensor, num_groups: int) -> dict[str, Any]:
    """GroupBinner arguments: ``num_groups`` equal-width groups on the scaled label range
    [0, 1], each group that holds no training label merged into its lower neighbour (the
    first into the second). The long tail leaves no training label near 100, and an empty
    group's expert never trains (``GroupBinner.fit`` warns): merging keeps the groups where
    the data is and covers the whole range, so rare test labels still get the tail group."""
    edges = torch.linspace(0.0, 1.0, num_groups + 1, dtype=torch.float64)
    labels = y.to(torch.float64)
    while edges.numel() > 3:
        counts = torch.bincount(torch.bucketize(labels, edges[1:-1], right=True),
                                minlength=edges.numel() - 1)
        empty = (counts == 0).nonzero()
        if empty.numel() == 0:
            break
        k = int(empty[0, 0])
        edges = torch.cat([edges[: max(k, 1)], edges[max(k, 1) + 1:]])  # drop one inner edge
    return {"num_groups": edges.numel() - 1, "edges": edges}


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator)
    return iter(order.split(batch_size))


def _train(
    method: str, x: Tensor, y: Tensor, binner: GroupBinner, args: argparse.Namespace
) -> nn.ModuleDict:
    torch.manual_seed(args.seed)
    backbone = _Backbone(x.shape[1], args.width)
    linear = nn.Linear(args.width, 1)
    head: nn.Module = linear
    criterion = None
    if method == "paper":
        head = MultiExpertHead.from_linear(linear, binner.num_groups, residual=False,
                                           inference="argmax")
        # The paper's MSE is in the targets' units: with targets in [0, 1] a fitted MSE is
        # ~1e-4 against classification terms of ~1, so it needs lambda_mse ~ 1000 by hand.
        criterion = GroupDIRLoss.paper(binner, lambda_mse=args.paper_lambda_mse)
    elif method == "dirloss":
        head = MultiExpertHead.from_linear(linear, binner.num_groups)
        criterion = GroupDIRLoss(binner)  # the defaults: unit-free, no hand-scaling
    model = nn.ModuleDict({"backbone": backbone, "head": head})
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for index in _batches(len(x), args.batch_size, order):
            features, target = backbone(x[index]), y[index]
            if criterion is None:
                loss = F.mse_loss(head(features)[:, 0], target)
            else:
                loss = criterion(head(features, binner(target)), features, target).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return model


@torch.no_grad()
def _predict(model: nn.ModuleDict, x: Tensor) -> Tensor:
    head, features = model["head"], model["backbone"](x)
    if isinstance(head, MultiExpertHead):
        prediction: Tensor = head(features).prediction
    else:
        prediction = head(features)
    return prediction[:, 0]


def _format_table(results: dict[str, dict[str, Any]]) -> str:
    w = max(len("method"), *(len(name) for name in results))
    lines = [
        f"| {'method':<{w}} | all MAE | many MAE | medium MAE | few MAE |  bMAE | all GM |",
        f"|{'-' * (w + 2)}|--------:|---------:|-----------:|--------:|------:|-------:|",
    ]
    for name, m in results.items():
        lines.append(
            f"| {name:<{w}} | {m['all']['mae']:7.2f} | {m['many']['mae']:8.2f} | "
            f"{m['medium']['mae']:10.2f} | {m['few']['mae']:7.2f} | {m['bmae']:5.2f} | "
            f"{m['all']['gm']:6.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m dirloss.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--train-size", type=int, default=8000,
                        help="long-tailed training samples, 20%% held out for validation "
                        "(default 8000)")
    parser.add_argument("--test-size", type=int, default=4000,
                        help="balanced test samples (default 4000)")
    parser.add_argument("--groups", type=int, default=10,
                        help="equal-width groups on [0, 100] (default 10); a group without "
                        "training labels is merged into its neighbour")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--width", type=int, default=64, help="backbone width (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--paper-lambda-mse", type=float, default=1000.0,
                        help="lambda_mse of the paper's objective on targets in [0, 1] "
                        "(default 1000; the dirloss defaults need none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and order")
    args = parser.parse_args(argv)
    for name in ("train_size", "test_size", "groups", "epochs", "batch_size", "width"):
        if getattr(args, name) < (2 if name in ("groups", "train_size") else 1):
            parser.error(f"--{name.replace('_', '-')} must be a positive integer (>= 2 for "
                         "--groups and --train-size)")
    start = time.perf_counter()
    x_all, y_all = make_long_tailed_regression(args.train_size, seed=args.seed)
    x_test, y_test = make_long_tailed_regression(args.test_size, balanced=True, seed=args.seed)
    n_val = max(1, args.train_size // 5)
    x, y, x_val, y_val = x_all[n_val:], y_all[n_val:], x_all[:n_val], y_all[:n_val]
    # Train on targets scaled to [0, 1], as a user with normalised targets would; report in
    # label units.
    scale = LABEL_RANGE[1]
    binner = GroupBinner(**_groups_with_data(y / scale, args.groups)).fit(y / scale)
    edges = ", ".join(f"{e * scale:g}" for e in binner.edges.tolist())
    print(f"group edges: [{edges}]")
    print(f"training labels per group: {binner.counts.tolist()}")
    results = {}
    names = {"mse": "MSE", "paper": "Group-DIR (paper)", "dirloss": "dirloss defaults"}
    for method, name in names.items():
        model = _train(method, x, y / scale, binner, args)
        if method == "dirloss":  # pick soft/argmax and the logit adjustment on validation
            with torch.no_grad():
                features = model["backbone"](x_val)
            head = cast(MultiExpertHead, model["head"])
            choice = select_inference(head, features, y_val / scale, binner)
            name += f" ({choice.inference}, tau={choice.tau:g})"
        pred = _predict(model, x_test) * scale
        results[name] = shot_metrics(pred, y_test, y, bin_width=5.0)
    print(_format_table(results))
    print(f"(balanced test set of {args.test_size}; bins of width 5; done in "
          f"{time.perf_counter() - start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
