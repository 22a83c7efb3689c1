"""The input checks every component shares (``dirloss._validation``).

Out-of-range group indices raise ``ValueError`` for CPU tensors in every component (a CPU
check costs no device sync); on CUDA they are checked only with ``validate=True`` (the CUDA
cases skip without a GPU). Each component's own rejection is tested in its file
(test_heads.py, test_soft_labels.py, test_contrastive.py, test_functional.py,
test_objective.py); here the rules they share.
"""

from __future__ import annotations

import pytest
import torch
from _bad_groups import G, bad_groups, fitted_binner, range_error

from dirloss import (
    DescendingSoftLabelLoss,
    GroupContrastiveLoss,
    GroupDIRLoss,
    MultiExpertHead,
)
from dirloss.functional import group_contrastive_loss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


# ---------------------------------------------------------------------------------------------
# Group index >= G or < 0: the rules every component shares (check_group_range)
# ---------------------------------------------------------------------------------------------
def test_empty_batch_needs_no_range_check():
    empty = torch.zeros(0, dtype=torch.long)
    assert MultiExpertHead(3, G)(torch.randn(0, 3), empty).prediction.shape == (0, 1)
    assert DescendingSoftLabelLoss(G)(torch.randn(0, G), empty) == 0
    assert group_contrastive_loss(torch.randn(0, 3), empty, num_groups=G) == 0


def test_range_check_is_skipped_while_compiling():
    # A data-dependent ``if`` would break fullgraph=True: compiled code runs unchecked (and
    # the unchecked path clamps), eager code checks. Documented in check_group_range.
    head = MultiExpertHead(3, G)
    compiled = torch.compile(head, fullgraph=True, backend="eager")
    features, groups = torch.randn(6, 3), bad_groups(G + 3)
    got = compiled(features, groups).prediction
    torch.testing.assert_close(got, head(features, groups.clamp(0, G - 1)).prediction)
    with pytest.raises(ValueError, match=range_error("groups")):
        head(features, groups)


@cuda
def test_cuda_checks_groups_only_with_validate():
    device = torch.device("cuda")
    features, groups = torch.randn(6, 3, device=device), bad_groups(G).to(device)
    # The unchecked fast path clamps (no host sync) ...
    MultiExpertHead(3, G, device=device)(features, groups)
    GroupContrastiveLoss(G)(features, groups)
    # ... validate=True checks (a sync) and raises.
    with pytest.raises(ValueError, match=range_error("groups")):
        MultiExpertHead(3, G, validate=True, device=device)(features, groups)
    with pytest.raises(ValueError, match=range_error("labels")):
        GroupContrastiveLoss(G, validate=True)(features, groups)
    with pytest.raises(ValueError, match=range_error("target")):
        soft = DescendingSoftLabelLoss(G, validate=True).to(device)
        soft(torch.randn(6, G, device=device), groups)
    criterion = GroupDIRLoss(fitted_binner(), validate=True).to(device)
    output = MultiExpertHead(3, G, device=device)(features)
    with pytest.raises(ValueError, match=range_error("groups")):
        criterion(output, features, torch.rand(6, device=device), groups=groups)


@cuda
def test_cuda_passed_groups_do_not_sync_without_validate():
    device = torch.device("cuda")
    head = MultiExpertHead(3, G, device=device)
    criterion = GroupDIRLoss(fitted_binner(), tau=1.0).to(device)
    features = torch.randn(16, 3, device=device, requires_grad=True)
    groups = torch.arange(16, device=device) % G
    target = torch.rand(16, device=device) * 10
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        criterion(head(features, groups), features, target, groups=groups).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
