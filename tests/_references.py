"""Plain-loop references shared by several test files, written straight from the math.

Each test file keeps the references only it uses; the ones here are needed by more than one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def ref_share_table(num_groups: int, share: float) -> list[list[float]]:
    """w[k][g] = exp(-|g - k| / s) / sum_h exp(-|h - k| / s); w[k][g] = [g == k] for s = 0."""
    if share == 0:
        return [[float(g == k) for g in range(num_groups)] for k in range(num_groups)]
    rows = []
    for k in range(num_groups):
        e = [math.exp(-abs(g - k) / share) for g in range(num_groups)]
        rows.append([v / sum(e) for v in e])
    return rows


def ref_argmax(row: Sequence[float]) -> int:
    """The first index of the largest value (as torch.argmax breaks ties)."""
    best = 0
    for k, v in enumerate(row):
        if v > row[best]:
            best = k
    return best


def ref_expert_mse(experts, target, groups, weights, scale=1.0) -> float:
    """1 / (N O s^2) sum_i sum_g w[g_i][g] sum_o (experts[i][g][o] - y[i][o])^2 for experts
    (N, G, O), targets (N,) or (N, O) and the weights ``w`` (G x G lists, e.g.
    :func:`ref_share_table`); 0 for an empty batch."""
    n, num_groups, out_features = experts.shape
    e = experts.detach().double().cpu().tolist()
    y = target.detach().double().cpu().reshape(n, out_features).tolist()
    total = 0.0
    for i in range(n):
        k = int(groups[i])
        for g in range(num_groups):
            total += weights[k][g] * sum((e[i][g][o] - y[i][o]) ** 2 for o in range(out_features))
    return total / (max(n * out_features, 1) * float(scale) ** 2)


def ref_mixture_mse(logits, experts, target, scale=1.0) -> float:
    """1 / (N O s^2) sum_i sum_o (sum_g softmax(z_i)_g experts[i][g][o] - y[i][o])^2, with a
    max-subtracted softmax; 0 for an empty batch."""
    n, num_groups, out_features = experts.shape
    z = logits.detach().double().cpu().tolist()
    e = experts.detach().double().cpu().tolist()
    y = target.detach().double().cpu().reshape(n, out_features).tolist()
    total = 0.0
    for i in range(n):
        m = max(z[i])
        w = [math.exp(v - m) for v in z[i]]
        w = [v / sum(w) for v in w]
        for o in range(out_features):
            total += (sum(w[g] * e[i][g][o] for g in range(num_groups)) - y[i][o]) ** 2
    return total / (max(n * out_features, 1) * float(scale) ** 2)


def ref_combine(logits, experts, inference, adjustment=None, top_k=3):
    """z~ = z - a; argmax: the expert of the largest z~; soft: sum_g softmax(z~)_g expert_g;
    topk: the soft mixture over the top_k groups of largest z~ only (no ties in the tests)."""
    out = []
    for z, rows in zip(logits.double().tolist(), experts.double().tolist()):
        if adjustment is not None:
            z = [v - a for v, a in zip(z, adjustment.double().tolist())]
        if inference == "argmax":
            out.append(rows[ref_argmax(z)])
            continue
        kept = sorted(range(len(z)), key=lambda g: -z[g])
        kept = kept[:top_k] if inference == "topk" else kept
        m = max(z)
        e = {g: math.exp(z[g] - m) for g in kept}
        total = sum(e.values())
        out.append([sum(e[g] / total * rows[g][o] for g in kept) for o in range(len(rows[0]))])
    return out


def ref_bin(y, edges):
    """Bin k holds edges[k] <= y < edges[k+1]; below the first edge: 0; from the last: B-1."""
    num_bins = len(edges) - 1
    for k in range(num_bins - 1):
        if y < edges[k + 1]:
            return k
    return num_bins - 1


def ref_balanced_mae(pred, target, edges):
    """Mean over the non-empty bins of the bin's mean |pred - y|."""
    errors = {}
    for p, y in zip(pred, target):
        errors.setdefault(ref_bin(y, edges), []).append(abs(p - y))
    return sum(sum(v) / len(v) for v in errors.values()) / len(errors)
