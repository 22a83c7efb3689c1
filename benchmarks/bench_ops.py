"""Speed and memory of the dirloss ops against the research-code baselines and the floor.

Times forward + backward (median and inter-quartile range over repeats, after warm-up) and
measures peak extra memory in a fresh subprocess (CPU: the process's peak RSS above the
set-up, reset through /proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated). The
variants of one size (ours, the floor, eager and compiled) are timed in alternation, so
that drift of a shared machine hits them alike; the Python-loop baselines run alone.

    python benchmarks/bench_ops.py                    # full CPU run (~5 min on 2 cores)
    python benchmarks/bench_ops.py --quick            # CI smoke run
    python benchmarks/bench_ops.py --device cuda

Writes benchmarks/results/ops-<device>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_ops import rnc_column_loop, soft_label_loop  # noqa: E402

from dirloss import DescendingSoftLabelLoss, GroupBinner, GroupDIRLoss, MultiExpertHead  # noqa: E402
from dirloss.functional import DEFAULT_TEMPERATURE, group_contrastive_loss  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # the bench extra brings tqdm; run without a bar otherwise
    def tqdm(iterable, **_):  # type: ignore[no-redef]
        return iterable

RESULTS = Path(__file__).resolve().parent / "results"
NUM_GROUPS = 10
LOOP_BUDGET_S = 60.0  # skip the O(n^3) loop where one forward+backward would exceed this
# The loop's autograd graph keeps one n x (n - 1) float mask per column: O(n^3) memory
# (34 GB at n = 2048, which the 24 GB machine this was written on cannot hold).
LOOP_MEMORY_BUDGET_GB = 8.0
SPANS = [16, 64, 128, 256, 512]  # label spans of the "span" op (inferred-groups cutoff)
MIN_TIMED_S = 0.5  # fast cases repeat until about this much time is timed (full runs)


# ---------------------------------------------------------------------------- the cases
def contrastive_step(impl: str, n: int, d: int, device: str, chunk: int = 0) -> Callable[[], None]:
    """Forward + backward of one contrastive variant on fresh random features.

    ``dirloss`` passes ``num_groups``; ``dirloss-default`` is the call users write first,
    ``group_contrastive_loss(features, groups)`` on the same integer groups (G inferred from
    the batch, one host read); ``continuous`` gives real-valued labels (uniform, no ties):
    the sort kernel of Rank-N-Contrast-style use.
    """
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    groups = torch.randint(0, NUM_GROUPS, (n,), generator=gen).to(device)
    real_labels = torch.rand(n, generator=gen).to(device)

    def floor() -> Tensor:
        z = F.normalize(features, dim=1)
        eps = torch.finfo(z.dtype).eps
        return (2 - 2 * z @ z.T).clamp_min(eps).sqrt().sum()

    def ours() -> Tensor:
        return group_contrastive_loss(
            features, groups, num_groups=NUM_GROUPS, chunk_size=chunk or None
        )

    def default() -> Tensor:
        return group_contrastive_loss(features, groups)

    def continuous() -> Tensor:
        return group_contrastive_loss(features, real_labels)

    def loop() -> Tensor:
        return rnc_column_loop(features, groups, DEFAULT_TEMPERATURE)

    fn = {"floor": floor, "dirloss": ours, "dirloss-default": default, "continuous": continuous,
          "rnc-loop": loop}[impl.replace("+compile", "")]
    if impl.endswith("+compile"):
        fn = torch.compile(fn, fullgraph=True)

    def step() -> None:
        features.grad = None
        fn().backward()

    return step


def span_step(impl: str, n: int, d: int, span: int, device: str) -> Callable[[], None]:
    """Integer labels spanning ``span`` values, through the fused kernel (``grouped``,
    G = span) or the continuous one (the same values as floats): where the default call's
    cutoff for inferring G (``_MAX_INFERRED_GROUPS``) belongs."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    labels = torch.randint(0, span, (n,), generator=gen).to(device)
    reals = labels.float()

    def step() -> None:
        features.grad = None
        if impl == "grouped":
            group_contrastive_loss(features, labels, num_groups=span).backward()
        else:
            group_contrastive_loss(features, reals).backward()

    return step


def soft_label_step(impl: str, n: int, device: str) -> Callable[[], None]:
    logits = torch.randn(n, NUM_GROUPS, device=device, requires_grad=True)
    groups = torch.randint(0, NUM_GROUPS, (n,), device=device)
    module = DescendingSoftLabelLoss(NUM_GROUPS).to(device)

    def loss() -> Tensor:
        if impl == "dirloss":
            return module(logits, groups)
        if impl == "floor":  # the least any loss of the logits costs: one op and its backward
            return logits.sum()
        return soft_label_loop(logits, groups, NUM_GROUPS)

    def step() -> None:
        logits.grad = None
        loss().backward()

    return step


def head_step(impl: str, n: int, d: int, device: str) -> Callable[[], None]:
    features = torch.randn(n, d, device=device, requires_grad=True)
    groups = torch.randint(0, NUM_GROUPS, (n,), device=device)
    linear = nn.Linear(d, 1).to(device)
    head = MultiExpertHead(d, NUM_GROUPS).to(device)

    def step() -> None:
        features.grad = None
        out = linear(features) if impl == "linear" else head(features, groups).prediction
        out.sum().backward()

    return step


class SmallResNet(nn.Module):
    """A small ResNet-style image regressor: stem, three residual stages, pooled 128-d feature."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.stages = nn.ModuleList([self._block(32, 32), self._block(32, 64), self._block(64, 128)])
        self.skips = nn.ModuleList([nn.Identity(), nn.Conv2d(32, 64, 1, 2), nn.Conv2d(64, 128, 1, 2)])

    @staticmethod
    def _block(cin: int, cout: int) -> nn.Sequential:
        stride = 1 if cin == cout else 2
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block, skip in zip(self.stages, self.skips):
            x = F.relu(block(x) + skip(x))
        return x.mean(dim=(2, 3))


def train_step(impl: str, model: str, device: str) -> Callable[[], None]:
    """One optimiser step: MSE + Linear head, or the full Group-DIR objective + experts.

    Two more variants say what bounds the Group-DIR step: ``mse+floor`` adds to the MSE
    step the least any contrastive term on the features costs (the floor: normalise + the
    N x N distance matrix and its backward), ``group-dir-no-grc`` is the full objective
    with ``lambda_grc=0`` (head and head terms only)."""
    torch.manual_seed(0)
    batch = 256
    if model == "cnn":
        backbone: nn.Module = SmallResNet()
        x, width = torch.randn(batch, 1, 64, 64), 128
    else:
        backbone = nn.Sequential(nn.Linear(384, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        x, width = torch.randn(batch, 384), 128
    y = torch.rand(batch)
    binner = GroupBinner(NUM_GROUPS, low=0.0, high=1.0).fit(y)
    group_dir = impl.startswith("group-dir")
    head: nn.Module = MultiExpertHead(width, NUM_GROUPS) if group_dir else nn.Linear(width, 1)
    criterion = GroupDIRLoss(binner, lambda_grc=0.0 if "no-grc" in impl else 0.1)
    backbone, head, criterion = backbone.to(device), head.to(device), criterion.to(device)
    x, y = x.to(device), y.to(device)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-3)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        features = backbone(x)
        if group_dir:
            return criterion(head(features, binner(y)), features, y).loss
        mse = F.mse_loss(head(features)[:, 0], y)
        if impl.startswith("mse+floor"):
            z = F.normalize(features, dim=1)
            floor = (2 - 2 * z @ z.T).clamp_min(torch.finfo(z.dtype).eps).sqrt().mean()
            return mse + 0.1 * floor
        return mse

    if impl.endswith("+compile"):
        loss_fn = torch.compile(loss_fn, fullgraph=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        optimizer.step()

    return step


def make_step(case: dict) -> Callable[[], None]:
    kind, device = case["op"], case["device"]
    if kind == "contrastive":
        return contrastive_step(case["impl"], case["n"], case["d"], device, case.get("chunk", 0))
    if kind == "span":
        return span_step(case["impl"], case["n"], case["d"], case["span"], device)
    if kind == "soft_label":
        return soft_label_step(case["impl"], case["n"], device)
    if kind == "head":
        return head_step(case["impl"], case["n"], case["d"], device)
    return train_step(case["impl"], case["model"], device)


# ---------------------------------------------------------------------------- measuring
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    cases: list[dict], warmup: int, reps: int, min_total_s: float = 0.0
) -> list[dict[str, float]]:
    """Time several cases in alternation (ABAB...), so slow drifts of a shared machine hit
    every variant alike; the ratio of medians is then a fair comparison. Sub-millisecond
    steps get more repeats (and a tenth of them as more warm-up), up to ``min_total_s`` of
    timed steps, so that the median is not that of a handful of cold calls."""
    torch._dynamo.reset()  # each case compiles fresh closures: do not pile up recompiles
    steps = [make_step(case) for case in cases]
    for _ in range(warmup):
        for step in steps:
            step()
    _sync(cases[0]["device"])
    if min_total_s:
        start = time.perf_counter()
        for step in steps:
            step()
        _sync(cases[0]["device"])
        per_round = time.perf_counter() - start
        reps = max(reps, min(2000, int(min_total_s / max(per_round, 1e-9))))
        for _ in range(reps // 10):
            for step in steps:
                step()
        _sync(cases[0]["device"])
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(reps):
        for step, acc in zip(steps, times):
            start = time.perf_counter()
            step()
            _sync(cases[0]["device"])
            acc.append(time.perf_counter() - start)
    return [_summary(t) for t in times]


def _summary(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": 1e3 * statistics.median(times), "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2]}


def time_case(case: dict, warmup: int, reps: int, min_total_s: float = 0.0) -> dict[str, float]:
    return time_interleaved([case], warmup, reps, min_total_s)[0]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory_here(case: dict) -> float:
    """Peak extra memory (MB) of one step, measured in this (fresh) process."""
    step = make_step(case)
    if case["device"] == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    step()  # first call allocates caches and lazy state; measure the second
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    step()
    return (_rss_kib("VmHWM") - base) / 1024


def measure_memory(case: dict) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-case", json.dumps(case)],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the plan
def plan(quick: bool, device: str) -> list[dict]:
    sizes = [64, 256] if quick else [64, 256, 1024, 2048, 4096]
    dims = [128] if quick else [128, 512]
    impls = ["dirloss", "floor", "rnc-loop", *CONTRAST_EXTRA] + (
        [] if quick else ["dirloss+compile", "floor+compile"]
    )
    cases = [
        {"op": "contrastive", "impl": impl, "n": n, "d": d, "device": device}
        for d in dims for n in sizes for impl in impls
    ]
    if not quick:
        cases.append({"op": "contrastive", "impl": "dirloss", "n": 16384, "d": 128,
                      "device": device, "chunk": 1024, "memory_only": True})
    cases += [{"op": "span", "impl": impl, "n": 256 if quick else 1024, "d": 128, "span": span,
               "device": device}
              for span in ([16, 256] if quick else SPANS) for impl in ("grouped", "continuous")]
    cases += [{"op": "soft_label", "impl": impl, "n": n, "device": device}
              for n in ([256] if quick else [256, 4096]) for impl in ("dirloss", "loop", "floor")]
    cases += [{"op": "head", "impl": impl, "n": n, "d": 512, "device": device}
              for n in ([256] if quick else [256, 4096]) for impl in ("linear", "multi-expert")]
    models = ["mlp"] if quick else ["mlp", "cnn"]
    variants = ["mse", "group-dir"] + ([] if quick else ["mse+compile", "group-dir+compile"])
    cases += [{"op": "train_step", "impl": v, "model": m, "device": device}
              for m in models for v in variants]
    if not quick:  # what bounds the MLP step
        cases += [{"op": "train_step", "impl": v, "model": "mlp", "device": device}
                  for v in ("mse+floor", "group-dir-no-grc")]
    return cases


def loop_skip_reason(case: dict, timed: dict[tuple, dict]) -> str:
    """Why the O(n^3) loop is skipped at this size ("" to run it): memory, or time
    extrapolated from the largest size timed so far."""
    n = case["n"]
    graph_gb = 4 * n * (n - 1) ** 2 / 1e9
    if graph_gb > LOOP_MEMORY_BUDGET_GB:
        return f"its autograd graph would hold ~{graph_gb:.0f} GB of masks"
    done = [(m, r["median_ms"]) for (op, impl, m, d), r in timed.items()
            if impl == "rnc-loop" and d == case["d"]]
    if done:
        n0, ms = max(done)
        if ms / 1e3 * (n / n0) ** 3 > LOOP_BUDGET_S:
            return f"one step extrapolated over {LOOP_BUDGET_S:.0f} s"
    return ""


BASELINE_LOOPS = ("rnc-loop", "loop")  # Python loops: timed alone, they churn the caches
# Contrastive rows beside the main table (issue 12): the default call without num_groups and
# the continuous-label (sort) kernel, timed in alternation with dirloss and the floor.
CONTRAST_EXTRA = ("dirloss-default", "continuous")
EAGER_MEASURED = ("dirloss", "floor", "mse", "group-dir", *CONTRAST_EXTRA)  # peak memory rows


def _repeats(case: dict, quick: bool) -> tuple[int, int]:
    if quick:
        return 1, 3
    slow = case.get("n", 0) >= 2048 or case["op"] == "train_step"
    return (2, 7) if slow else (3, 15)


def run(cases: list[dict], quick: bool, memory: bool) -> list[dict]:
    """Time every case: the variants of one size (ours, the floor, compiled or not) in
    alternation, the Python-loop baselines alone right after; then measure memory."""
    rows = [dict(case) for case in cases]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not row.get("memory_only"):
            key = (row["op"], row.get("n"), row.get("d"), row.get("model"), row.get("span"))
            groups.setdefault(key, []).append(row)
    timed: dict[tuple, dict] = {}
    min_total_s = 0.0 if quick else MIN_TIMED_S
    for members in tqdm(list(groups.values()), desc="sizes"):
        together = [r for r in members if r["impl"] not in BASELINE_LOOPS]
        if together:
            warmup, reps = _repeats(together[0], quick)
            if any(r["impl"].endswith("+compile") for r in together):
                warmup += 2
            for row, timing in zip(together, time_interleaved(together, warmup, reps, min_total_s)):
                row.update(timing, interleaved=True)
        for row in (r for r in members if r["impl"] in BASELINE_LOOPS):
            skip = loop_skip_reason(row, timed) if row["impl"] == "rnc-loop" else ""
            if skip:
                row["skipped"] = skip
                continue
            row.update(time_case(row, 1, 3, min_total_s))
            timed[(row["op"], row["impl"], row.get("n"), row.get("d"))] = row
    for row in tqdm(rows, desc="memory") if memory else []:
        eager = row["impl"] in EAGER_MEASURED
        if row["op"] in ("contrastive", "train_step") and eager:
            keys = ("op", "impl", "n", "d", "model", "device", "chunk")
            row["peak_extra_mb"] = measure_memory({k: row[k] for k in keys if k in row})
    return rows


# ---------------------------------------------------------------------------- reporting
def _fmt(row: dict) -> str:
    if "skipped" in row:
        return "skipped"
    if "median_ms" not in row:
        return "-"
    return f"{row['median_ms']:.2f} ({row['q1_ms']:.2f}-{row['q3_ms']:.2f})"


def tables(rows: list[dict]) -> str:
    out = []
    every = [r for r in rows if r["op"] == "contrastive" and not r.get("memory_only")]
    contrast = [r for r in every if r["impl"] not in CONTRAST_EXTRA]
    impls = sorted({r["impl"] for r in contrast}, key=["dirloss", "floor", "rnc-loop",
                   "dirloss+compile", "floor+compile"].index)
    out.append("### GroupContrastiveLoss forward+backward, ms: median (IQR)\n")
    out.append("| D | N | " + " | ".join(impls) + " | vs floor | vs loop | compiled vs floor | peak MB (ours / floor) |")
    out.append("|---" * (len(impls) + 6) + "|")
    keyed = {(r["impl"], r["n"], r["d"]): r for r in contrast}
    for d, n in sorted({(r["d"], r["n"]) for r in contrast}):
        get = lambda impl: keyed.get((impl, n, d), {})  # noqa: E731
        ours, floor, loop = get("dirloss"), get("floor"), get("rnc-loop")
        ratio = lambda a, b: f"{a['median_ms'] / b['median_ms']:.2f}x" if "median_ms" in a and "median_ms" in b else "-"  # noqa: E731
        speedup = f"{loop['median_ms'] / ours['median_ms']:.0f}x" if "median_ms" in loop else "-"
        mem = f"{ours.get('peak_extra_mb', float('nan')):.0f} / {floor.get('peak_extra_mb', float('nan')):.0f}"
        out.append(f"| {d} | {n} | " + " | ".join(_fmt(get(i)) for i in impls)
                   + f" | {ratio(ours, floor)} | {speedup} | {ratio(get('dirloss+compile'), get('floor+compile'))} | {mem} |")
    for r in rows:
        if r.get("memory_only"):
            out.append(f"\nChunked (chunk_size={r['chunk']}) N={r['n']}, D={r['d']}: peak extra "
                       f"memory {r.get('peak_extra_mb', float('nan')):.0f} MB")
    out += extra_contrast_table(every)
    out += span_table([r for r in rows if r["op"] == "span"])
    for op, title in (("soft_label", "DescendingSoftLabelLoss vs per-sample loop"),
                      ("head", "MultiExpertHead vs nn.Linear(512, 1)"),
                      ("train_step", "One training step (batch 256)")):
        part = [r for r in rows if r["op"] == op]
        out.append(f"\n### {title}, ms: median (IQR)\n")
        out.append("| case | impl | time | ratio to first | peak MB |")
        out.append("|---|---|---|---|---|")
        groups: dict[str, list[dict]] = {}
        for r in part:
            key = r.get("model") or f"N={r['n']}"
            groups.setdefault(key + (" compiled" if r["impl"].endswith("+compile") else ""), []).append(r)
        for key, members in groups.items():
            base = members[0]["median_ms"]
            for r in members:
                mem = f"{r['peak_extra_mb']:.0f}" if "peak_extra_mb" in r else "-"
                out.append(f"| {key} | {r['impl']} | {_fmt(r)} | {r['median_ms'] / base:.3f}x | {mem} |")
    return "\n".join(out)


def _n2_floats(row: dict) -> str:
    """Peak extra memory in units of N^2 float32 values (the unit of issue 12's targets)."""
    if "peak_extra_mb" not in row:
        return "-"
    return f"{row['peak_extra_mb'] * 2**20 / (4 * row['n'] ** 2):.1f}"


def extra_contrast_table(contrast: list[dict]) -> list[str]:
    """The default call (no num_groups) and the continuous kernel, against dirloss with
    num_groups and the floor of the same size (timed in alternation with them)."""
    keyed = {(r["impl"], r["n"], r["d"]): r for r in contrast}
    sizes = sorted({(r["d"], r["n"]) for r in contrast if r["impl"] in CONTRAST_EXTRA})
    if not sizes:
        return []
    out = ["\n### Default call and continuous labels, forward+backward, ms: median (IQR)\n",
           "`dirloss-default`: `group_contrastive_loss(features, groups)`, integer groups "
           "without `num_groups`; `continuous`: real-valued labels (the sort kernel).\n",
           "| D | N | dirloss-default | continuous | default vs floor | continuous vs dirloss "
           "| peak MB (default / continuous) | peak N^2 floats (default / continuous) |",
           "|---|---|---|---|---|---|---|---|"]
    for d, n in sizes:
        get = lambda impl: keyed.get((impl, n, d), {})  # noqa: E731
        default, cont = get("dirloss-default"), get("continuous")
        ratio = lambda a, b: f"{a['median_ms'] / b['median_ms']:.2f}x" if "median_ms" in a and "median_ms" in b else "-"  # noqa: E731
        mem = " / ".join(f"{r['peak_extra_mb']:.0f}" if "peak_extra_mb" in r else "-"
                         for r in (default, cont))
        out.append(f"| {d} | {n} | {_fmt(default)} | {_fmt(cont)} | {ratio(default, get('floor'))} "
                   f"| {ratio(cont, get('dirloss'))} | {mem} | {_n2_floats(default)} / "
                   f"{_n2_floats(cont)} |")
    return out


def span_table(rows: list[dict]) -> list[str]:
    """Fused kernel (G = span) against the continuous kernel, by the labels' span."""
    if not rows:
        return []
    keyed = {(r["impl"], r["span"]): r for r in rows}
    n, d = rows[0]["n"], rows[0]["d"]
    out = [f"\n### Integer labels by span: fused kernel (G = span) vs continuous, N={n}, D={d}, "
           "ms: median (IQR)\n",
           "| span | grouped | continuous | grouped / continuous |", "|---|---|---|---|"]
    for span in sorted({r["span"] for r in rows}):
        grouped, cont = keyed.get(("grouped", span), {}), keyed.get(("continuous", span), {})
        ratio = (f"{grouped['median_ms'] / cont['median_ms']:.2f}x"
                 if "median_ms" in grouped and "median_ms" in cont else "-")
        out.append(f"| {span} | {_fmt(grouped)} | {_fmt(cont)} | {ratio} |")
    return out


def issue_targets(rows: list[dict]) -> list[str]:
    """Issue 12's done-when ratios from this run's rows ("-" where a size was not run)."""
    keyed = {(r["op"], r["impl"], r.get("n"), r.get("d"), r.get("model")): r for r in rows
             if not r.get("memory_only")}

    def get(impl: str, n: int, d: int) -> dict:
        return keyed.get(("contrastive", impl, n, d, None), {})

    def ratio(a: dict, b: dict) -> str:
        return f"{a['median_ms'] / b['median_ms']:.2f}x" if "median_ms" in a and "median_ms" in b else "-"

    out = ["\n### Issue 12 targets (this run)\n", "| target | limit | measured |", "|---|---|---|"]
    for n in (256, 1024, 2048):
        out.append(f"| default call vs floor, N={n}, D=512 | <= 1.5x "
                   f"| {ratio(get('dirloss-default', n, 512), get('floor', n, 512))} |")
    out.append(f"| default call peak memory, N=4096, D=128 | <= 4 N^2 floats "
               f"| {_n2_floats(get('dirloss-default', 4096, 128))} |")
    out.append(f"| continuous vs integer kernel, N=1024, D=512 | <= 2.5x "
               f"| {ratio(get('continuous', 1024, 512), get('dirloss', 1024, 512))} |")
    out.append(f"| continuous peak memory, N=4096, D=128 | <= 8 N^2 floats "
               f"| {_n2_floats(get('continuous', 4096, 128))} |")
    out.append(f"| integer kernel vs floor, N=256, D=128 | <= 1.1x "
               f"| {ratio(get('dirloss', 256, 128), get('floor', 256, 128))} |")
    mse = keyed.get(("train_step", "mse", None, None, "mlp"), {})
    group_dir = keyed.get(("train_step", "group-dir", None, None, "mlp"), {})
    out.append(f"| MLP step, GroupDIRLoss vs MSE, eager | <= 1.5x | {ratio(group_dir, mse)} |")
    bound = keyed.get(("train_step", "mse+floor", None, None, "mlp"), {})
    out.append(f"| (bound) MLP step, MSE + the contrastive floor vs MSE | - | {ratio(bound, mse)} |")
    return out


def machine() -> dict[str, str]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "threads": str(torch.get_num_threads()), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (CI)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--ops", nargs="*", choices=["contrastive", "span", "soft_label", "head", "train_step"],
                        help="only these ops (contrastive, span, soft_label, head, train_step)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/ops-<device>.json)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.memory_case:
        print(measure_memory_here(json.loads(args.memory_case)))
        return
    start = time.perf_counter()
    cases = [c for c in plan(args.quick, args.device) if not args.ops or c["op"] in args.ops]
    rows = run(cases, args.quick, memory=not args.no_memory)
    report = tables(rows) + "\n" + "\n".join(issue_targets(rows))
    print(report)
    out = args.out or RESULTS / f"ops-{args.device}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_ops.py " + " ".join(sys.argv[1:])
    out.write_text(json.dumps({"machine": machine(), "command": command.strip(),
                               "wall_s": time.perf_counter() - start, "rows": rows}, indent=1))
    print(f"\nwrote {out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
