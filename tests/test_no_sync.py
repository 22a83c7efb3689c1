"""No host syncs: every forward and backward runs under ``set_sync_debug_mode("error")``.

CUDA only (it skips without a GPU); on the CPU, the ``torch.compile(fullgraph=True)`` tests
guard the same property, since a sync (``.item()``, data-dependent shapes) breaks the graph.
"""

import pytest
import torch

from dirloss import (
    DescendingSoftLabelLoss,
    GroupBinner,
    GroupContrastiveLoss,
    GroupDIRLoss,
    MultiExpertHead,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


class _NoSync:
    def __enter__(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc: object) -> None:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("inference", ["argmax", "soft"])
@pytest.mark.parametrize("chunk_size", [None, 16])
def test_training_and_inference_steps_do_not_sync(inference, chunk_size):
    device = torch.device("cuda")
    binner = GroupBinner(8).fit(torch.rand(500) * 10).to(device)
    head = MultiExpertHead(32, 8, inference=inference, device=device)
    criterion = GroupDIRLoss(binner, chunk_size=chunk_size, tau=1.0).to(device)
    features = torch.randn(64, 32, device=device, requires_grad=True)
    target = torch.rand(64, device=device) * 10
    with _NoSync():
        out = criterion(head(features, binner(target)), features, target)
        out.loss.backward()
        prediction = head(features.detach()).prediction
    assert torch.isfinite(out.loss).all() and prediction.shape == (64, 1)


@cuda
@pytest.mark.parametrize("labels", ["groups", "float"])
def test_losses_alone_do_not_sync(labels):
    device = torch.device("cuda")
    features = torch.randn(40, 16, device=device, requires_grad=True)
    groups = torch.randint(0, 5, (40,), device=device)
    logits = torch.randn(40, 5, device=device, requires_grad=True)
    soft = DescendingSoftLabelLoss(5).to(device)
    if labels == "groups":
        contrastive, y = GroupContrastiveLoss(num_groups=5), groups
    else:
        contrastive, y = GroupContrastiveLoss(), groups.float()
    with _NoSync():
        (contrastive(features, y) + soft(logits, groups)).backward()
    assert features.grad is not None and logits.grad is not None
