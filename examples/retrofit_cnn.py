"""Retrofit a CNN image regressor that already works with Group-DIR.

The task: 32x32 grayscale images of one disc (random position, brightness and edge blur, in
strong noise); the target is the disc's radius in pixels, 2..14. Training radii are
long-tailed (most discs are small, a few are large, as ages in a face data set); the test set
is balanced (radii uniform), as in the DIR protocol, so the rare large radii are tested as
often as the common small ones.

The model is a small ResNet written below; its last layer is ``self.fc = nn.Linear(..., 1)``
as in torchvision's ResNet, and the same change applies unchanged to the ``fc`` of
``torchvision.models.resnet18`` (or any model whose last layer is an ``nn.Linear``
attribute). The whole diff between the two training loops is::

    # before: the model you have, trained with MSE
    loss = F.mse_loss(model(x)[:, 0], y)
    pred = model(x)[:, 0]

    # after: Group-DIR
    binner = GroupBinner(12, low=2, high=14).fit(y_train)        # + label range -> groups
    head = MultiExpertHead.from_linear(model.fc, 12)              # + fc -> classifier + experts
    model.fc = nn.Identity()                                      # + model(x) is now the feature
    criterion = GroupDIRLoss(binner, validate=True)               # + the objective
    features = model(x)                                           # ~
    loss = criterion(head(features, binner(y)), features, y).loss
    pred = head(model(x)).prediction[:, 0]                        # ~ inference

The head starts as copies of the trained ``fc``, so before fine-tuning it predicts exactly
what the MSE model did. The optimiser must now include ``head.parameters()``; give them a
larger learning rate (30x here), since the group classifier starts from zero and has to be
learnt in the fine-tuning budget. As a control, the MSE model is also trained for the same
extra epochs with plain MSE, so "after" is not credited for more training.

    python examples/retrofit_cnn.py            # a few minutes on 2 CPU cores (8 when busy)
    python examples/retrofit_cnn.py --smoke    # seconds (CI)
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dirloss import GroupBinner, GroupDIRLoss, MultiExpertHead
from dirloss.metrics import shot_metrics

from _shared import print_table, tqdm  # examples/_shared.py

SIZE = 32
R_MIN, R_MAX = 2.0, 14.0
HEADING = "Shot metrics (balanced test set, radius in px)"


def make_discs(n: int, *, balanced: bool, seed: int) -> tuple[Tensor, Tensor]:
    r"""``n`` images (N, 1, 32, 32) of a disc and its radius (N,), float32.

    Training radii are :math:`2 + \text{Exp}(\text{mean } 2)`, redrawn above 14: half of
    them under 3.4 px, about 1 % over 11 px. ``balanced=True`` draws them uniformly on
    [2, 14]. The disc has a random brightness and a blurred edge (a linear ramp 0.5 to 3 px
    wide); its centre keeps it inside the image. Strong Gaussian noise (sigma 0.5, about the
    disc's brightness) makes the radius uncertain, so a model trained with MSE is pulled
    towards the common small radii.
    """
    g = torch.Generator().manual_seed(seed)
    if balanced:
        radius = R_MIN + (R_MAX - R_MIN) * torch.rand(n, generator=g)
    else:
        radius = R_MIN - 2.0 * torch.rand(n, generator=g).log()
        while bool((redo := radius > R_MAX).any()):
            radius[redo] = R_MIN - 2.0 * torch.rand(int(redo.sum()), generator=g).log()
    u = torch.rand(4, n, 1, 1, generator=g)
    r = radius[:, None, None]
    cx, cy = r + (SIZE - 2 * r) * u[0], r + (SIZE - 2 * r) * u[1]
    brightness, ramp = 0.3 + 0.5 * u[2], 0.5 + 2.5 * u[3]
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    dist = torch.sqrt((grid[None, None, :] - cx) ** 2 + (grid[None, :, None] - cy) ** 2)
    images = brightness * ((r - dist) / ramp + 0.5).clamp(0, 1)
    images = images + 0.5 * torch.randn(n, SIZE, SIZE, generator=g)
    return images[:, None], radius


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet for 32x32 inputs: stem, three stages (16, 32, 64 channels), pool, ``fc``."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.fc: nn.Module = nn.Linear(4 * width, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def train(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    epochs: int,
    args: argparse.Namespace,
    device: torch.device,
    *,
    head: MultiExpertHead | None = None,
    binner: GroupBinner | None = None,
    desc: str,
) -> None:
    """Adam with a cosine schedule; plain MSE, or Group-DIR when ``head`` and ``binner`` are
    given."""
    x, y = data
    groups = [{"params": model.parameters()}]
    if head is not None:  # the new classifier starts at zero: give it a larger step
        groups.append({"params": head.parameters(), "lr": args.head_lr})
    criterion: GroupDIRLoss | None = None
    if binner is not None:
        criterion = GroupDIRLoss(binner, lambda_mse=args.lambda_mse, validate=True).to(device)
    optimizer = torch.optim.Adam(groups, lr=args.lr)
    steps = epochs * -(-len(x) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    order = torch.Generator().manual_seed(args.seed)
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=args.no_progress)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=order).split(args.batch_size):
            xb, yb = x[index].to(device), y[index].to(device)
            if criterion is None or head is None or binner is None:
                loss = F.mse_loss(model(xb)[:, 0], yb)
            else:
                features = model(xb)
                loss = criterion(head(features, binner(yb)), features, yb).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, device: torch.device,
            head: MultiExpertHead | None = None) -> Tensor:
    model.eval()
    preds = []
    for xb in x.split(512):
        out = model(xb.to(device))
        preds.append((head(out).prediction if head is not None else out)[:, 0].cpu())
    return torch.cat(preds)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=6000, help="training images")
    parser.add_argument("--test-size", type=int, default=2400, help="test images")
    parser.add_argument("--epochs", type=int, default=10, help="MSE training of the original")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="after retrofitting")
    parser.add_argument("--width", type=int, default=8, help="channels of the first stage")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="backbone learning rate")
    parser.add_argument("--head-lr", type=float, default=6e-2,
                        help="of the retrofitted head (30x --lr)")
    parser.add_argument("--groups", type=int, default=12, help="G, groups of the label range")
    parser.add_argument("--lambda-mse", type=float, default=1.0,
                        help="weight of the expert MSE term")
    parser.add_argument("--inference", choices=("argmax", "soft", "topk"), default="soft",
                        help="how the retrofitted head picks its expert at test time")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (CI)")
    args = parser.parse_args(argv)
    for name, low in (("train_size", 2), ("test_size", 1), ("epochs", 0),
                      ("finetune_epochs", 0), ("width", 1), ("batch_size", 1), ("groups", 2)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.smoke:
        args.train_size, args.test_size, args.epochs, args.finetune_epochs = 768, 240, 2, 1

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    x_train, y_train = make_discs(args.train_size, balanced=False, seed=args.seed + 1)
    x_test, y_test = make_discs(args.test_size, balanced=True, seed=args.seed + 2)
    # Bins of 1 px; many-shot above the uniform share of training images per bin, few-shot
    # below a fifth of it (the STS-B-DIR thresholds, rescaled to the size of the set).
    share = args.train_size / (R_MAX - R_MIN)
    metric_kw = dict(bin_edges=np.arange(R_MIN, R_MAX + 0.5), many_shot=share, few_shot=share / 5)
    print(f"{args.train_size} training images (radius median {y_train.median():.1f} px, "
          f"{int((y_train > 10).sum())} over 10 px), {args.test_size} balanced test images, "
          f"on {device}")

    def evaluate(model: nn.Module, head: MultiExpertHead | None = None) -> dict[str, Any]:
        return shot_metrics(predict(model, x_test, device, head), y_test, y_train, **metric_kw)

    # The model the user already has: a CNN trained with MSE.
    model = SmallResNet(args.width).to(device)
    train(model, (x_train, y_train), args.epochs, args, device, desc="MSE (original)")
    results = {"before": evaluate(model)}
    print_table(f"{HEADING}: before (plain MSE)", results["before"])

    # Control: the same extra epochs with plain MSE.
    control = copy.deepcopy(model)
    train(control, (x_train, y_train), args.finetune_epochs, args, device, desc="MSE (more epochs)")
    results["control"] = evaluate(control)

    # ---- The retrofit: these lines are the whole change. -------------------------------
    binner = GroupBinner(args.groups, low=R_MIN, high=R_MAX).fit(y_train).to(device)
    head = MultiExpertHead.from_linear(model.fc, args.groups, inference=args.inference)
    model.fc = nn.Identity()  # model(x) now returns the pooled feature
    train(model, (x_train, y_train), args.finetune_epochs, args, device,
          head=head, binner=binner, desc="Group-DIR")
    # -----------------------------------------------------------------------------------
    print(f"training images per group: {binner.counts.tolist()}")
    results["after"] = evaluate(model, head)
    print_table(f"{HEADING}: after (Group-DIR, {args.inference} inference)", results["after"])

    print(f"\n{'few-shot MAE / all MAE':<40} {'few':>8} {'all':>8}")
    for name, label in (("before", "before: MSE"),
                        ("control", f"control: MSE + {args.finetune_epochs} epochs"),
                        ("after", f"after: Group-DIR + {args.finetune_epochs} epochs")):
        m = results[name]
        print(f"{label:<40} {m['few']['mae']:>8.4f} {m['all']['mae']:>8.4f}")
    return results


if __name__ == "__main__":
    main()
