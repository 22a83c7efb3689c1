"""Retrofit a PyTorch Lightning regressor with Group-DIR.

The starting point is a ``LightningModule`` that trains an existing regressor with MSE. The
retrofit changes three things and keeps the Trainer, the data loaders and the logging:

* ``__init__``: the last ``nn.Linear`` becomes a ``MultiExpertHead`` (``from_linear``), and
  a ``GroupDIRLoss`` is built on a ``GroupBinner`` fitted on the training labels;
* ``training_step``: the backbone and the head are called separately, the loss is
  ``criterion(head(features, binner(y)), features, y).loss``;
* a ``SelectInference`` callback runs :func:`dirloss.select_inference` on the validation set
  when fitting ends (``on_fit_end``), so soft or argmax inference and the logit adjustment
  are picked on validation, not test.

Under DDP (``--devices 2``: Lightning's ``ddp`` strategy, one process per device, gloo on the
CPU) ``GroupDIRLoss(gather_distributed=True)`` contrasts every rank's samples against the
global batch, and every rank runs the same selection on the whole validation set, so all
ranks end with the same head. Rank 0 prints the shot metrics on a balanced test set.

Needs the ``lightning`` extra (``pip install torch==2.13.0 -e ".[lightning]"``)::

    python examples/lightning_train.py                  # 1 CPU process, ~1 min
    python examples/lightning_train.py --devices 2      # DDP, 2 processes
    python examples/lightning_train.py --smoke          # a few steps (CI)
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning as L
except ModuleNotFoundError as err:  # the example's one optional dependency
    raise SystemExit(
        f"{__file__} needs PyTorch Lightning: pip install torch==2.13.0 -e '.[lightning]' "
        f"(from the repository root); {err}"
    ) from err

from dirloss import GroupBinner, GroupDIRLoss, MultiExpertHead, select_inference
from dirloss.demo import make_long_tailed_regression
from dirloss.metrics import REGIONS, shot_metrics

SCALE = 100.0  # the demo's labels lie in [0, 100]; the model trains on labels / SCALE


def mlp(in_features: int, width: int) -> nn.Sequential:
    """The regressor the user already has: an MLP ending in a 1-output ``nn.Linear``."""
    return nn.Sequential(
        nn.Linear(in_features, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 1),
    )


class GroupDIRRegressor(L.LightningModule):
    """An MSE regressor's LightningModule after the retrofit (the changed lines are marked)."""

    def __init__(self, model: nn.Sequential, binner: GroupBinner, lr: float) -> None:
        super().__init__()
        model[-1] = MultiExpertHead.from_linear(model[-1], binner.num_groups)  # + retrofit
        self.model, self.binner, self.lr = model, binner, lr
        self.criterion = GroupDIRLoss(binner, gather_distributed=True)  # + retrofit

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).prediction[:, 0]  # ~ the head returns a HeadOutput

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        features = self.model[:-1](x)  # ~ backbone and head called separately
        out = self.criterion(self.model[-1](features, self.binner(y)), features, y)
        self.log("train_loss", out.loss, prog_bar=True)
        return out.loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_mae", F.l1_loss(self(x), y) * SCALE, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class SelectInference(L.Callback):
    """Choose the head's inference setting on validation data when fitting ends.

    Every rank scores the whole validation set (no sampler), so under DDP all ranks reach
    the same choice without communicating.
    """

    def __init__(self, x_val: Tensor, y_val: Tensor) -> None:
        self.x_val, self.y_val = x_val, y_val

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, GroupDIRRegressor):
            raise TypeError(f"expected a GroupDIRRegressor, got {type(pl_module).__name__}")
        pl_module.eval()
        x = self.x_val.to(pl_module.device)
        features, head = pl_module.model[:-1](x), pl_module.model[-1]
        if not isinstance(head, MultiExpertHead):
            raise TypeError(f"expected a MultiExpertHead last, got {type(head).__name__}")
        choice = select_inference(head, features, self.y_val, pl_module.binner)
        if trainer.is_global_zero:
            print(f"select_inference on validation: inference={choice.inference}, "
                  f"tau={choice.tau:g}")


def print_table(metrics: dict[str, Any]) -> None:
    print("Shot metrics on the balanced test set (label units)")
    print(f"{'region':<8}{'count':>7}{'MAE':>9}{'GM':>9}")
    for region in ("all", *REGIONS):
        m = metrics[region]
        print(f"{region:<8}{m['count']:>7}{m['mae']:>9.3f}{m['gm']:>9.3f}")
    print(f"balanced MAE (bMAE): {metrics['bmae']:.3f}")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1, help="CPU processes (2: DDP)")
    parser.add_argument("--train-size", type=int, default=8000, help="long-tailed samples")
    parser.add_argument("--test-size", type=int, default=4000, help="balanced test samples")
    parser.add_argument("--groups", type=int, default=8, help="equal-width label groups")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=256, help="per process")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="data, weights and order")
    parser.add_argument("--smoke", action="store_true", help="a small, short run (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_size, args.test_size, args.epochs, args.groups = 1500, 500, 2, 4
    if args.devices < 1 or args.groups < 2 or args.epochs < 1:
        parser.error("expected --devices >= 1, --groups >= 2 and --epochs >= 1")

    L.seed_everything(args.seed, verbose=False)
    x_all, y_all = make_long_tailed_regression(args.train_size, seed=args.seed)
    x_test, y_test = make_long_tailed_regression(args.test_size, balanced=True, seed=args.seed)
    n_val = args.train_size // 5
    x, y = x_all[n_val:], y_all[n_val:] / SCALE
    x_val, y_val = x_all[:n_val], y_all[:n_val] / SCALE
    # Equal-width groups on the training range (the tail is thin but never empty here).
    binner = GroupBinner(args.groups).fit(y)  # + retrofit: label range -> groups

    module = GroupDIRRegressor(mlp(x.shape[1], 64), binner, args.lr)
    train = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=1024)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=args.epochs,
        callbacks=[SelectInference(x_val, y_val)],  # + retrofit
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        deterministic=True,
    )
    trainer.fit(module, train, val)
    if not trainer.is_global_zero:
        return None
    print(f"world size {trainer.world_size} on cpu; group edges "
          f"{[round(e * SCALE, 1) for e in binner.edges.tolist()]}")
    module.eval()
    with torch.no_grad():
        pred = module(x_test) * SCALE
    metrics = shot_metrics(pred, y_test, y * SCALE, bin_width=5.0)
    print_table(metrics)
    return metrics


if __name__ == "__main__":
    main()
