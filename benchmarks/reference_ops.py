"""What the research code does, written from the equations, as speed baselines.

These are the per-step costs a library user would pay with the published implementations:
Rank-N-Contrast's column loop and the per-sample soft-label loop. They are benchmarks only
(the tests hold the float64 references used for correctness).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rnc_column_loop(features: Tensor, labels: Tensor, temperature: float) -> Tensor:
    r"""Rank-N-Contrast as its research code runs it: a loop over the n - 1 columns.

    Logits :math:`s_{ij} = -\lVert z_i - z_j \rVert / T` with the diagonal dropped (n, n - 1);
    for each column k the n x (n - 1) negative mask :math:`d_{il} \ge d_{ik}` is built and
    the positive's log-probability accumulated: O(n^3) time.
    """
    z = F.normalize(features, dim=1)
    n = z.shape[0]
    logits = -torch.cdist(z, z) / temperature
    diffs = (labels[:, None] - labels[None, :]).abs().float()
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits[off_diagonal].view(n, n - 1)
    diffs = diffs[off_diagonal].view(n, n - 1)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    exp_logits = logits.exp()
    loss = logits.new_zeros(())
    for k in range(n - 1):
        neg_mask = (diffs >= diffs[:, k : k + 1]).float()
        log_prob = logits[:, k] - (neg_mask * exp_logits).sum(dim=1).log()
        loss = loss - (log_prob / (n * (n - 1))).sum()
    return loss


def soft_label_loop(logits: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Descending soft labels built per sample in Python every step, then stacked."""
    rows = []
    for g in groups.tolist():
        r = [float(num_groups - 1 - abs(j - g)) for j in range(num_groups)]
        rows.append(torch.tensor(r).clamp(0, num_groups - 1).softmax(dim=0))
    soft = torch.stack(rows).to(logits.device)
    return -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()
