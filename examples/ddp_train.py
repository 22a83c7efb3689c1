"""Group-DIR training with DistributedDataParallel on a synthetic long-tailed regression task.

Launch one process per device (gloo on the CPU, NCCL when CUDA is available)::

    torchrun --nproc_per_node=2 examples/ddp_train.py
    torchrun --nproc_per_node=2 examples/ddp_train.py --smoke   # a few steps, for CI
    python examples/ddp_train.py                                # one process, no group

What is distributed:

* every rank draws the same data set (fixed seed) and a ``DistributedSampler`` gives each
  rank its shard of every epoch;
* the ``GroupBinner`` is fitted on rank 0 only and broadcast (``broadcast_binner``), then
  ``check_binner_consistent`` fails loudly if any rank's group edges differ;
* ``GroupDIRLoss(gather_distributed=True)`` contrasts each rank's samples against the
  global batch of all ranks, with gradients flowing back to the rank that owns a sample;
* rank 0 evaluates on a balanced test set and prints the many/medium/few-shot table.

The process group has a timeout, so a rank that fails does not leave the others waiting
forever.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

import torch
import torch.distributed as dist

# Imported before init_process_group on purpose: torch.distributed.nn binds the default
# process group into default arguments when first imported (DDP imports it lazily), and
# imported after init_process_group those keep the group alive past destroy_process_group,
# and gloo's threads with it (see main).
import torch.distributed.nn  # noqa: F401
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from dirloss import GroupBinner, GroupDIRLoss, HeadOutput, MultiExpertHead
from dirloss.distributed import broadcast_binner, check_binner_consistent
from dirloss.metrics import shot_metrics

from _shared import print_table  # examples/_shared.py

IN_FEATURES = 16


def make_data(n: int, *, balanced: bool, seed: int) -> tuple[Tensor, Tensor]:
    r"""``x`` in R^16 and a long-tailed target ``y = exp(0.8 s) + noise``, ``s = <x, w>``.

    Training data has ``s ~ N(0, 1)``, so ``y`` is log-normal: dense around 1, a thin tail
    up to ~10. The balanced test set draws ``s`` uniformly on [-2.5, 2.5] instead, so the
    tail is tested as often as the bulk (the DIR protocol). ``w`` is the same for both.
    """
    direction = torch.randn(IN_FEATURES, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    if balanced:  # move each x along w so that its projection is uniform
        s = torch.rand(n, generator=g) * 5.0 - 2.5
        x += (s - x @ direction)[:, None] * direction
    s = x @ direction
    y = torch.exp(0.8 * s) + 0.05 * torch.randn(n, generator=g)
    return x, y


class Regressor(nn.Module):
    """MLP backbone and a multi-expert head; returns the features too (for L_grc)."""

    def __init__(self, hidden: int, num_groups: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(IN_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = MultiExpertHead(hidden, num_groups)

    def forward(self, x: Tensor) -> tuple[Tensor, HeadOutput]:
        features = self.backbone(x)
        return features, self.head(features)


def setup(timeout_s: float) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes, if any: ``(rank, world_size, device)``."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" not in os.environ:  # plain `python ddp_train.py`: one process, no group
        return 0, 1, device
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--groups", type=int, default=10, help="G, groups of the label range")
    parser.add_argument("--train-size", type=int, default=8000, help="training samples in all")
    parser.add_argument("--timeout", type=float, default=120.0, help="collective timeout, s")
    parser.add_argument("--smoke", action="store_true", help="1 epoch on a small set (CI)")
    args = parser.parse_args()
    for name, low in (("epochs", 0), ("batch_size", 1), ("groups", 2), ("train_size", 2)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    if args.smoke:
        args.epochs, args.train_size, args.batch_size = 1, 512, 64

    rank, world_size, device = setup(args.timeout)
    try:
        train_and_evaluate(args, rank, world_size, device)
    finally:
        if dist.is_initialized():
            # gloo's worker threads stop when the last reference to the process group goes.
            # The DDP model holds one; it is gone with train_and_evaluate's frame, so this
            # drops the last and joins the threads now. Left running into interpreter
            # shutdown, a thread still releasing a finished collective's tensors aborts the
            # process ("terminate called without an active exception"), about one run in 20
            # on a busy 2-core machine.
            dist.destroy_process_group()


def train_and_evaluate(
    args: argparse.Namespace, rank: int, world_size: int, device: torch.device
) -> None:
    """Fit the binner, train with DDP, print rank 0's test metrics. Every object that holds
    the process group lives in here, so none is left when :func:`main` tears it down."""
    distributed = dist.is_initialized()
    x_train, y_train = make_data(args.train_size, balanced=False, seed=1)
    x_test, y_test = make_data(max(args.train_size // 4, 256), balanced=True, seed=2)

    # Fit on rank 0 only (with streamed or sharded labels the ranks could not even agree
    # on a quantile fit), copy to the others, and check before training starts.
    binner = GroupBinner(args.groups).to(device)
    if rank == 0:
        binner.fit(y_train)
    broadcast_binner(binner)
    check_binner_consistent(binner)

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts)
    model = Regressor(hidden=64, num_groups=args.groups).to(device)
    ddp_model: nn.Module = model
    if distributed:
        ddp_model = DDP(model, device_ids=[device] if device.type == "cuda" else None)
    criterion = GroupDIRLoss(binner, gather_distributed=True, validate=True).to(device)
    optimizer = torch.optim.Adam(ddp_model.parameters(), lr=args.lr)

    sampler: DistributedSampler[tuple[Tensor, ...]] = DistributedSampler(
        TensorDataset(x_train, y_train), num_replicas=world_size, rank=rank, seed=0
    )
    loader = DataLoader(TensorDataset(x_train, y_train), args.batch_size, sampler=sampler)
    if rank == 0:
        print(f"world size {world_size} on {device}; {len(loader)} steps per epoch per rank")

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        totals = torch.zeros(2, device=device)  # sum of loss * n, n
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            features, output = ddp_model(x)
            parts = criterion(output, features, y)
            optimizer.zero_grad(set_to_none=True)
            parts.loss.backward()
            optimizer.step()
            totals[0] += parts.loss.detach() * len(y)
            totals[1] += len(y)
        if distributed:
            dist.all_reduce(totals)
        if rank == 0 and (epoch % 5 == 4 or epoch == args.epochs - 1):
            print(f"epoch {epoch + 1:3d}  train loss {float(totals[0] / totals[1]):.4f}")

    if rank == 0:
        model.eval()
        with torch.no_grad():
            pred = model(x_test.to(device))[1].prediction[:, 0]
        metrics = shot_metrics(pred, y_test, y_train, bin_width=0.5)
        print_table("Shot metrics on the balanced test set", metrics)
    if distributed:
        # Leave together: a rank that tears its process group down while rank 0 still
        # evaluates can make rank 0's gloo threads abort at exit.
        dist.barrier()


if __name__ == "__main__":
    main()
