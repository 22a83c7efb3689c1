"""What the research code does, written from the equations, as speed baselines.

These are the per-step costs a library user would pay with the published implementations:
Rank-N-Contrast's column loop and the per-sample soft-label loop, and, for the newer losses
(issue 17), the way each one's official code computes it, written from the behaviour the
library's module docstrings describe: LDS weights looked up per sample in numpy, FDS's
Python loops over the bins with masked writes, Balanced MSE's vectorised tables (BMC, BNI,
GAI), RankSim's loop over the rows and ConR's per-anchor mask loop. They are benchmarks only
(the tests hold the float64 references used for correctness); ``tests/test_bench_ops.py``
checks that each computes what the library op computes, so that the timings compare like
with like.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


def lds_sample_weights(labels: np.ndarray, num_bins: int, window: np.ndarray) -> np.ndarray:
    r"""Per-training-sample LDS weights as the official code prepares them once, in numpy:
    integer bins :math:`\min(\lfloor y \rfloor, B - 1)`, square-root counts, convolved with
    the kernel window (zeros beyond the end bins), :math:`1 / \tilde n` rounded to float32,
    scaled to mean 1 over the training samples."""
    bins = np.minimum(labels.astype(np.int64), num_bins - 1)
    value = np.sqrt(np.bincount(bins, minlength=num_bins).astype(np.float64))
    smoothed = np.convolve(value, window, mode="same")  # the window is symmetric
    inverse = (1.0 / smoothed[bins]).astype(np.float32)
    return inverse * np.float32(inverse.size / inverse.sum(dtype=np.float64))


def lds_mse_loop(
    input: Tensor, target: Tensor, sample_weights: np.ndarray, batch_index: np.ndarray
) -> Tensor:
    """LDS-weighted MSE as the official code trains it: each sample's weight read from the
    numpy table as a one-element float32 array (its dataset's ``__getitem__``), the batch's
    arrays stacked (the collate step) and moved to the device, then
    ``mean(weight * (input - target) ** 2)``."""
    rows = [np.asarray([sample_weights[i]]).astype("float32") for i in batch_index]
    weight = torch.from_numpy(np.stack(rows)).to(input.device)[:, 0]
    return (weight * (input - target) ** 2).mean()


def _bin_mask(labels: Tensor, label: Tensor, b: int, last: int) -> Tensor:
    """The official code's samples of bin ``b``: the end bins also take the labels beyond."""
    if b == 0:
        return labels <= label
    return labels >= label if b == last else labels == label


def _calibrate_official(z: Tensor, m1: Tensor, v1: Tensor, m2: Tensor, v2: Tensor,
                        clip: tuple[float, float]) -> Tensor:
    """One bin's re-colouring, with the official code's two host reads on the variances."""
    if float(v1.sum()) < 1e-10:
        return z
    factor = (v2 / v1).clamp(clip[0], clip[1])
    if bool((v1 == 0).any()):  # zero-variance dimensions pass unchanged
        valid = v1 != 0
        z[:, valid] = (z[:, valid] - m1[valid]) * factor[valid].sqrt() + m2[valid]
        return z
    return (z - m1) * factor.sqrt() + m2


def fds_calibrate_loop(
    features: Tensor, labels: Tensor, mean: Tensor, var: Tensor, smoothed_mean: Tensor,
    smoothed_var: Tensor, clip: tuple[float, float] = (0.1, 10.0),
) -> Tensor:
    """FDS calibration as the official code runs it: a Python loop over the bins present in
    the batch (``torch.unique``, a host read), each writing its samples' calibrated features
    back in place through a boolean mask (``z[mask] = ...``), after two host reads on the
    bin's variances. Integer labels are the bins ``0 .. B - 1``. The features are cloned
    first: the official code overwrites the backbone's output, here a leaf."""
    z = features.clone()
    last = mean.shape[0] - 1
    for label in torch.unique(labels):
        b = int(label)
        if 0 <= b <= last:
            mask = _bin_mask(labels, label, b, last)
            z[mask] = _calibrate_official(z[mask], mean[b], var[b], smoothed_mean[b],
                                          smoothed_var[b], clip)
    return z


def _smooth_reflect(stats: Tensor, window: Tensor) -> Tensor:
    """(B, F) statistics smoothed across the bins: one ``conv1d`` of the reflect-padded
    statistics with the window divided by its sum."""
    half = window.numel() // 2
    padded = F.pad(stats.T[:, None, :], (half, half), mode="reflect")  # (F, 1, B + 2h)
    weights = (window / window.sum()).to(stats.dtype).view(1, 1, -1)
    return F.conv1d(padded, weights)[:, 0, :].T


def fds_update_loop(
    features: Tensor, labels: Tensor, running_mean: Tensor, running_var: Tensor,
    num_samples: Tensor, window: Tensor, *, momentum: float | None, first: bool,
) -> tuple[Tensor, Tensor]:
    """FDS's statistics of one epoch's features as the official code computes them: a Python
    loop over the bins present (``torch.unique``), each selecting its samples through a
    boolean mask and writing their mean and variance (unbiased; 0 for one sample) into the
    running statistics with momentum (taken as they are in the ``first`` epoch); then the
    smoothing across bins. Updates the running statistics in place; returns the smoothed
    mean and variance."""
    last = running_mean.shape[0] - 1
    for label in torch.unique(labels):
        b = int(label)
        if not 0 <= b <= last:
            continue
        current = features[_bin_mask(labels, label, b, last)]
        count = current.shape[0]
        num_samples[b] += count
        factor = momentum if momentum is not None else 1 - count / float(num_samples[b])
        factor = 0.0 if first else factor
        running_mean[b] = (1 - factor) * current.mean(0) + factor * running_mean[b]
        variance = current.var(0, correction=1 if count > 1 else 0)
        running_var[b] = (1 - factor) * variance + factor * running_var[b]
    return _smooth_reflect(running_mean, window), _smooth_reflect(running_var, window)


def bmc_official(input: Tensor, target: Tensor, noise_var: Tensor) -> Tensor:
    r"""BMC as the official code computes it: the (N, N) logits
    :math:`-(\hat y_i - y_j)^2 / 2\sigma^2` by broadcasting (N, 1) against (1, N),
    ``F.cross_entropy`` against ``arange(N)``, times :math:`2\sigma^2` detached. One
    vectorised op: the least a BMC loss costs."""
    logits = -(input - target.T).pow(2) / (2 * noise_var)
    labels = torch.arange(input.shape[0], device=input.device)
    return F.cross_entropy(logits, labels) * (2 * noise_var).detach()


def bni_official(input: Tensor, target: Tensor, noise_var: Tensor, centers: Tensor,
                 probs: Tensor) -> Tensor:
    r"""BNI as the official code computes it: the squared error over :math:`2\sigma^2`, and
    the bins' centres and probabilities repeated into (N, B) tables for one log-sum-exp."""
    n, b = input.shape[0], centers.shape[0]
    fit = F.mse_loss(input, target, reduction="none") / 2 / noise_var
    center, prob = centers[None, :].repeat(n, 1), probs[None, :].repeat(n, 1)
    balance = -0.5 * (input.expand(-1, b) - center).pow(2) / noise_var + prob.log()
    balance = torch.logsumexp(balance, dim=-1, keepdim=True)
    return ((fit + balance) * (2 * noise_var).detach()).mean()


def gai_official(input: Tensor, target: Tensor, noise_var: Tensor, means: Tensor,
                 variances: Tensor, weights: Tensor) -> Tensor:
    r"""GAI as the official code computes it: the mixture's parameters expanded to (N, K),
    each component's Gaussian at the prediction with variance :math:`v_k + \sigma^2`, one
    log-sum-exp."""
    n = input.shape[0]
    mu, var, phi = (t[None, :].expand(n, -1) for t in (means, variances, weights))
    fit = F.mse_loss(input, target, reduction="none") / 2 / noise_var + 0.5 * noise_var.log()
    total = var + noise_var
    balance = -0.5 * total.log() - 0.5 * (input - mu).pow(2) / total + phi.log()
    balance = torch.logsumexp(balance, dim=-1, keepdim=True)
    return ((fit + balance) * (2 * noise_var).detach()).mean()


def _descending_rank(scores: Tensor) -> Tensor:
    """Ranks along dim 1, 1 for the largest entry, divided by the row's length."""
    order = scores.argsort(dim=1, descending=True)
    return (order.argsort(dim=1) + 1).to(scores.dtype) / scores.shape[1]


class _DescendingRanker(torch.autograd.Function):
    r"""Descending ranks with the blackbox gradient as the official code takes it: the
    similarities perturbed by :math:`+\lambda g`, ranked again:
    :math:`(\operatorname{rk}(s + \lambda g) - \operatorname{rk}(s)) / \lambda`."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, interpolation_lambda: float) -> Tensor:
        ranks = _descending_rank(scores)
        ctx.lam = interpolation_lambda
        ctx.save_for_backward(scores, ranks)
        return ranks

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        scores, ranks = ctx.saved_tensors
        return (_descending_rank(scores + ctx.lam * grad_output) - ranks) / ctx.lam, None


def ranksim_row_loop(
    features: Tensor, labels: Tensor, interpolation_lambda: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RankSim as the official code runs it: with repeated labels, one random sample per
    label chosen in a Python loop (host reads); the (M, M) cosine similarities; then a Python
    loop over the M rows, each ranking its label similarities and, through the blackbox
    ranker, its feature similarities, and adding their mean squared difference."""
    unique = torch.unique(labels)
    if len(unique) < len(labels):
        keep = []
        for value in unique:
            where = (labels == value).nonzero()[:, 0]
            keep.append(int(where[int(torch.randint(len(where), (1,), generator=generator))]))
        features, labels = features[keep], labels[keep]
    z = F.normalize(features.flatten(1), dim=1)
    similarity = z @ z.T
    loss = similarity.new_zeros(())
    for i in range(labels.shape[0]):
        label_ranks = _descending_rank(-(labels[i] - labels).abs()[None, :])
        feature_ranks = _DescendingRanker.apply(  # type: ignore[no-untyped-call]
            similarity[i : i + 1], interpolation_lambda
        )
        loss = loss + F.mse_loss(feature_ranks, label_ranks)
    return loss


def conr_mask_loop(
    features: Tensor, labels: Tensor, predictions: Tensor, *, threshold: float,
    temperature: float, pushing_scale: float,
) -> Tensor:
    r"""ConR as the official (age) code computes it: the (M, M) label and prediction masks by
    broadcasting, then each anchor dropped from its own positives in a Python loop over the
    batch, one element at a time; the similarities zeroed outside the positives (and the
    negatives) *before* the exponential, so each zero adds :math:`e^0 = 1` to the
    denominator (``official_denominator=True``); pushing weights
    :math:`e^{\epsilon |y_j - y_q|}`; the mean over all samples, an anchor without a
    negative contributing 0."""
    z = F.normalize(features, dim=1)
    y, p = labels[:, None], predictions[:, None]
    distance = (y - y.T).abs()
    pos = distance <= threshold
    neg = ~pos & ((p - p.T).abs() <= threshold)
    for i in range(pos.shape[0]):
        pos[i][i] = False
    similarity = z @ z.T / temperature
    pos_s, neg_s = similarity * pos, similarity * neg
    pushed = (torch.exp(distance * pushing_scale) * neg_s.exp() * neg).sum(dim=1)
    denominator = pos_s.exp().sum(dim=1, keepdim=True) + pushed[:, None]
    per_anchor = (-torch.log(pos_s.exp() / denominator) * pos).sum(dim=1) / pos.sum(dim=1)
    return (per_anchor * neg.any(dim=1)).mean()
