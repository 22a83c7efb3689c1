"""Smoke tests of benchmarks/bench_ops.py: the CI-sized run works end to end and its
rules (which loop sizes are skipped, how memory is measured) do what they say; the newer
losses' baselines compute what the library computes, so that their rows time like with
like."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not (Path(__file__).resolve().parents[1] / "benchmarks").is_dir():  # e.g. the sdist
    pytest.skip("needs the repository's benchmarks/ (not shipped in the sdist)",
                allow_module_level=True)

from benchmarks import bench_ops  # noqa: E402
from benchmarks.ops.field_cases import (  # noqa: E402
    BASELINES,
    COMPILED,
    FEATURE_OPS,
    FIELD_OPS,
    field_impls,
    field_step,
    field_variants,
)
from benchmarks.ops.runner import plan  # noqa: E402
from benchmarks.reference_ops import ranksim_row_loop  # noqa: E402

SCRIPT = Path(bench_ops.__file__)


def test_quick_run_times_every_case_and_writes_json(tmp_path):
    out = tmp_path / "ops.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-memory", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert "### GroupContrastiveLoss forward+backward" in done.stdout
    report = json.loads(out.read_text())
    assert report["command"].startswith("python benchmarks/bench_ops.py --quick")
    rows = report["rows"]
    assert {r["op"] for r in rows} == {"contrastive", "span", "soft_label", "head", "train_step",
                                       *FIELD_OPS}
    assert {(r["op"], r["impl"]) for r in rows if r["op"] in FIELD_OPS} == {
        (op, impl) for op in FIELD_OPS for impl in field_impls(op, compiled=False)
    }
    assert {r["n"] for r in rows if r["op"] in FIELD_OPS} == {256}
    assert "### Newer losses vs their official code" in done.stdout
    assert "### Issue 17 targets (this run)" in done.stdout
    assert {(r["impl"], r["span"]) for r in rows if r["op"] == "span"} == {
        (impl, span) for impl in ("grouped", "continuous") for span in (16, 256)
    }
    assert "### Integer labels by span" in done.stdout
    contrast = {(r["impl"], r["n"]) for r in rows if r["op"] == "contrastive"}
    impls = ("dirloss", "floor", "rnc-loop", "dirloss-default", "continuous")
    assert contrast == {(i, n) for i in impls for n in (64, 256)}
    assert "### Default call and continuous labels" in done.stdout
    assert "### Issue 12 targets (this run)" in done.stdout
    assert {r["impl"] for r in rows if r["op"] == "train_step"} == {"mse", "group-dir"}
    for row in rows:
        assert 0 < row["q1_ms"] <= row["median_ms"] <= row["q3_ms"], row
    # the variants of one size are timed in alternation, the Python loops alone
    for row in rows:
        assert row.get("interleaved", False) == (row["impl"] not in bench_ops.BASELINE_LOOPS)


def test_memory_of_a_case_is_measured_in_a_fresh_process():
    # N x N float32 buffers of 64 MB are above glibc's largest mmap threshold (32 MB), so
    # each is fresh memory that the peak RSS sees.
    case = {"op": "contrastive", "impl": "dirloss", "n": 4096, "d": 16, "device": "cpu"}
    peak_mb = bench_ops.measure_memory(case)
    n_squared_mb = 4096**2 * 4 / 2**20
    # it must hold the similarities it keeps for backward, and stays within issue #3's
    # budget of 4 N^2 floats
    assert n_squared_mb <= peak_mb <= 4 * n_squared_mb


def test_default_call_takes_the_fused_kernel_memory_budget():
    # integer groups without num_groups: the fused kernel (G inferred), so the same budget
    # of 4 N^2 floats as dirloss with num_groups, not the sort kernel's ~17 N^2
    case = {"op": "contrastive", "impl": "dirloss-default", "n": 4096, "d": 16, "device": "cpu"}
    peak_mb = bench_ops.measure_memory(case)
    n_squared_mb = 4096**2 * 4 / 2**20
    assert n_squared_mb <= peak_mb <= 4 * n_squared_mb


def test_continuous_kernel_memory_budget():
    # issue 12: the sort kernel within 8 N^2 floats (it keeps one (N, N) table for backward
    # and sorts in row blocks; ~17 N^2 before)
    case = {"op": "contrastive", "impl": "continuous", "n": 4096, "d": 16, "device": "cpu"}
    peak_mb = bench_ops.measure_memory(case)
    n_squared_mb = 4096**2 * 4 / 2**20
    assert n_squared_mb <= peak_mb <= 8 * n_squared_mb


def test_issue_targets_read_the_rows_they_name():
    def row(impl, n, d, ms, **kw):
        return {"op": "contrastive", "impl": impl, "n": n, "d": d, "median_ms": ms,
                "q1_ms": ms, "q3_ms": ms, **kw}

    n2_mb = 4096**2 * 4 / 2**20
    rows = [
        row("floor", 256, 512, 2.0), row("dirloss-default", 256, 512, 3.0),
        row("dirloss", 1024, 512, 10.0), row("continuous", 1024, 512, 20.0),
        row("floor", 4096, 128, 1.0, peak_extra_mb=4 * n2_mb),
        row("dirloss-default", 4096, 128, 1.0, peak_extra_mb=3 * n2_mb),
        row("continuous", 4096, 128, 1.0, peak_extra_mb=7.5 * n2_mb),
        {"op": "train_step", "impl": "mse", "model": "mlp", "median_ms": 2.0},
        {"op": "train_step", "impl": "group-dir", "model": "mlp", "median_ms": 3.0},
    ]
    lines = bench_ops.issue_targets(rows)
    measured = {line.split(" | ")[0].lstrip("| "): line.rsplit(" | ", 1)[1].rstrip(" |")
                for line in lines if line.startswith("| ") and "limit" not in line}
    assert measured["default call vs floor, N=256, D=512"] == "1.50x"
    assert measured["default call vs floor, N=1024, D=512"] == "-"  # not run
    assert measured["default call peak memory, N=4096, D=128"] == "3.0"
    assert measured["continuous vs integer kernel, N=1024, D=512"] == "2.00x"
    assert measured["continuous peak memory, N=4096, D=128"] == "7.5"
    assert measured["MLP step, GroupDIRLoss vs MSE, eager"] == "1.50x"
    table = "\n".join(bench_ops.extra_contrast_table([r for r in rows if r["op"] == "contrastive"]))
    assert "| 128 | 4096 |" in table and "| 3.0 / 7.5 |" in table


def test_loop_is_skipped_by_memory_and_by_extrapolated_time():
    big = {"op": "contrastive", "impl": "rnc-loop", "n": 2048, "d": 128}
    assert "GB of masks" in bench_ops.loop_skip_reason(big, {})
    case = {"op": "contrastive", "impl": "rnc-loop", "n": 1024, "d": 128}
    timed = {("contrastive", "rnc-loop", 256, 128): {"median_ms": 2000.0}}  # 2 s at 256
    assert "extrapolated" in bench_ops.loop_skip_reason(case, timed)  # ~128 s at 1024
    timed = {("contrastive", "rnc-loop", 256, 128): {"median_ms": 50.0}}
    assert bench_ops.loop_skip_reason(case, timed) == ""


def test_full_plan_has_every_newer_loss_at_every_size_with_its_baseline():
    cases = [c for c in plan(quick=False, device="cpu") if c.op in FIELD_OPS]
    for op in FIELD_OPS:
        sizes = {c.n for c in cases if c.op == op}
        assert 256 in sizes and len(sizes) > 1
        for n in sizes:
            impls = {c.impl for c in cases if c.op == op and c.n == n}
            assert {"dirloss", BASELINES[op]} <= impls
            assert ("floor" in impls) == (op in ("bmc", "ranksim", "conr"))
            assert ("dirloss+compile" in impls) == (op in COMPILED)
        assert all((c.d is not None) == (op in FEATURE_OPS) for c in cases if c.op == op)


@pytest.mark.parametrize("op", FIELD_OPS)
def test_every_newer_loss_step_runs(op):
    for impl in field_impls(op, compiled=False):
        step = field_step(op, impl, 16, 8, "cpu")
        step()
        step()  # again: state kept between steps (FDS's epochs, gradients) is fine


@pytest.mark.inductor  # torch.compile's default backend; out of the ATEN_CPU_CAPABILITY runs
@pytest.mark.parametrize("op", COMPILED)
def test_compiled_newer_loss_step_runs(op):
    torch._dynamo.reset()
    step = field_step(op, "dirloss+compile", 16, 8, "cpu")
    step()
    step()


# LDS: the official weights round 1 / n to float32 (relative 6e-8) before scaling
_RTOL = {"lds_mse": 1e-6}


@pytest.mark.parametrize("op", FIELD_OPS)
def test_baseline_computes_what_dirloss_computes(op):
    # float64, one set of inputs: the loss (FDS: the calibrated features, or the four tables
    # of statistics) and its gradient in every input and noise scale under one cotangent
    variants = field_variants(op, 24, 6, "cpu", torch.float64)
    results = {}
    for impl in ("dirloss", BASELINES[op]):
        for leaf in variants.leaves:
            leaf.grad = None
        out = variants.forward[impl]()
        grads = []
        if out.requires_grad:
            cotangent = torch.randn(out.shape, dtype=out.dtype,
                                    generator=torch.Generator().manual_seed(1))
            out.backward(cotangent)
            grads = [leaf.grad.clone() for leaf in variants.leaves]
        results[impl] = (out.detach().clone(), grads)
    (ours, our_grads), (base, base_grads) = results["dirloss"], results[BASELINES[op]]
    rtol = _RTOL.get(op, 1e-10)
    assert ours.abs().sum() > 0  # not a trivial zero (ConR: some anchors have negatives)
    torch.testing.assert_close(base.to(ours.dtype), ours, rtol=rtol, atol=rtol)
    assert len(our_grads) == len(base_grads) == len(variants.leaves)
    for a, b in zip(base_grads, our_grads):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol)


def test_ranksim_loop_keeps_one_sample_per_repeated_label():
    # integer labels repeat: the official code's sampling loop runs and ranks M < N rows
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(32, 8, generator=gen, requires_grad=True)
    labels = torch.randint(0, 10, (32,), generator=gen).double()
    loss = ranksim_row_loop(features.double(), labels, 2.0, gen)
    loss.backward()
    assert torch.isfinite(loss) and features.grad is not None
    kept = int((features.grad.abs().sum(dim=1) > 0).sum())
    assert kept <= len(torch.unique(labels))


def test_issue_17_targets_say_met_or_missed_per_loss():
    def row(op, impl, ms):
        return {"op": op, "impl": impl, "n": 256, "median_ms": ms, "q1_ms": ms, "q3_ms": ms}

    rows = [row("bmc", "dirloss", 1.0), row("bmc", "official", 2.0),
            row("conr", "dirloss", 3.0), row("conr", "official-loop", 2.0)]
    lines = bench_ops.issue_targets(rows)
    measured = {line.split(" | ")[0].lstrip("| "): line.rsplit(" | ", 1)[1].rstrip(" |")
                for line in lines if line.startswith("| ") and "limit" not in line}
    assert measured["BMCLoss (bmc) vs official code, N=256"] == "0.50x MET"
    assert measured["ConRLoss (conr) vs official code, N=256"] == "1.50x MISSED"
    assert measured["RankSimLoss (ranksim) vs official code, N=256"] == "-"  # not run
    assert measured["none slower than the official code, N=256"] == "MISSED: conr"
    met = [row(op, impl, 1.0) for op in FIELD_OPS for impl in ("dirloss", BASELINES[op])]
    assert bench_ops.issue_targets(met)[-1].endswith("| MET |")
