"""The documentation's code runs, and the API page covers the public names.

Every fenced ```python block of README.md and docs/*.md is executed. The blocks of one page
run in order in **one namespace**, as a script: a page may build up state (the guide
defines a model in its first block and trains it in a later one). Each page starts from a
fresh namespace with ``torch.manual_seed(0)``. A block that must not run is preceded by the
line ``<!-- docs-test: skip -->`` (invisible in the rendered page); avoid needing it.

The site build itself (``mkdocs build --strict``) needs the ``docs`` extra and runs from
``.ci/run``, not here.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SKIP_MARK = "<!-- docs-test: skip -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
# A warning a page's code gives on purpose, hidden for that page only: the guide fits 10
# groups on [0, 1] to the demo's long-tailed labels, which leave [0.9, 1] empty (the guide
# says to check binner.counts), so GroupBinner.fit warns there.
EXPECTED_WARNINGS = {"guide.md": "hold no training label"}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of each fenced python block that is not marked skip.

    Fences may be indented (inside an admonition or a list); the code is dedented. A block
    is python when its info string starts with ``python`` or ``py`` (``pycon`` and
    ``python-console`` are not run).
    """
    lines = text.splitlines()
    blocks: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, ticks = match.group("indent"), match.group("ticks")
        lang = (match.group("info").split() or [""])[0].lstrip("{.").rstrip("}")
        start = i
        i += 1
        body = []
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(ticks[0] * len(ticks)) and set(stripped) == {ticks[0]}:
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        previous = lines[start - 1].strip() if start > 0 else ""
        if lang in ("python", "py") and previous != SKIP_MARK:
            blocks.append((start + 1, textwrap.dedent("\n".join(body))))
    return blocks


def test_fence_parser() -> None:
    text = "\n".join([
        "```python", "a = 1", "```",
        "```bash", "echo no", "```",
        SKIP_MARK, "```python", "raise SystemExit", "```",
        "!!! note", "    ```py", "    b = a + 1", "    ```",
        "```pycon", ">>> c", "```",
    ])
    assert python_blocks(text) == [(1, "a = 1"), (12, "b = a + 1")]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_run(page: Path) -> None:
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"no python blocks in {page.name}")
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"__docs_{page.stem}__"}
    for line, code in blocks:
        compiled = compile(code, f"{page.relative_to(ROOT)}:{line}", "exec")
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            if page.name in EXPECTED_WARNINGS:
                warnings.filterwarnings(
                    "ignore", message=f".*{EXPECTED_WARNINGS[page.name]}", category=UserWarning
                )
            exec(compiled, namespace)  # noqa: S102 - the documentation's own examples


def test_guide_and_home_have_code() -> None:
    """The parser finds the pages' examples (a broken fence would silently skip them)."""
    assert len(python_blocks((ROOT / "docs" / "guide.md").read_text(encoding="utf-8"))) >= 10
    assert len(python_blocks((ROOT / "docs" / "index.md").read_text(encoding="utf-8"))) == 1
    assert len(python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))) >= 1


def test_home_page_retrofit_is_the_readme_one() -> None:
    readme = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    home = python_blocks((ROOT / "docs" / "index.md").read_text(encoding="utf-8"))
    assert home[0][1] in [code for _, code in readme]


def _public_names() -> list[str]:
    import dirloss
    import dirloss.distributed
    import dirloss.functional
    import dirloss.metrics

    names = [f"dirloss.{name}" for name in dirloss.__all__]
    for module in (dirloss.functional, dirloss.metrics, dirloss.distributed):
        names += [f"{module.__name__}.{name}" for name in module.__all__]
    return names + ["dirloss.demo.make_long_tailed_regression"]


def test_api_page_covers_public_names() -> None:
    """Every public name has an entry (``::: path``) or, for modules, a mention."""
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    entries = set(re.findall(r"^::: ([\w.]+)\s*$", api, flags=re.MULTILINE))
    missing = [name for name in _public_names() if name not in entries and name not in api]
    assert not missing, f"add to docs/api.md: {missing}"
    for short in __import__("dirloss").__all__:
        assert short in api


def test_api_page_entries_exist() -> None:
    """Every ``::: path`` on the API page imports (catches renames before mkdocs does)."""
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for path in re.findall(r"^::: ([\w.]+)\s*$", api, flags=re.MULTILINE):
        module_path, _, attr = path.rpartition(".")
        try:
            importlib.import_module(path)
            continue
        except ImportError:
            pass
        assert hasattr(importlib.import_module(module_path), attr), path


def test_one_version_source() -> None:
    """pyproject reads the version from dirloss.__version__; the citation quotes it."""
    import importlib.metadata

    import dirloss

    assert importlib.metadata.version("dirloss") == dirloss.__version__
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^dynamic = \["version"\]', pyproject, flags=re.MULTILINE)
    assert not re.search(r'^version = "', pyproject, flags=re.MULTILINE)  # no literal
    cite = (ROOT / "docs" / "cite.md").read_text(encoding="utf-8")
    assert f"version = {{{dirloss.__version__}}}" in cite
    cff = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(rf"^version: {re.escape(dirloss.__version__)}$", cff, flags=re.MULTILINE)
    assert "preferred-citation:" in cff and "10.1609/aaai.v39i19.34200" in cff  # the paper
    changelog = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")
    assert f"## {dirloss.__version__} (" in changelog  # the release has its section


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
