"""The sdist is a source a user can test and document from: it holds the licence, the
README, the whole test suite (conftest.py and _references.py included, without which its
tests fail to collect) and the documentation sources (docs/ and mkdocs.yml).

Builds the sdist with ``python -m build --sdist --no-isolation`` (no network: the current
environment's setuptools); skips when ``build`` is not installed.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("build") is None or importlib.util.find_spec("setuptools") is None,
    reason="needs the 'build' and 'setuptools' packages (pip install build)",
)


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    out = tmp_path_factory.mktemp("sdist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out),
         str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]  # dirloss-<version>
    return {name[len(top) + 1:] for name in names if name.startswith(top + "/")}


def test_sdist_has_licence_readme_and_build_files(sdist_members):
    for name in ("LICENSE", "README.md", "pyproject.toml", "MANIFEST.in", "dirloss/py.typed"):
        assert name in sdist_members, name


def test_sdist_has_every_test_file_and_their_helpers(sdist_members):
    assert {"tests/conftest.py", "tests/_references.py"} <= sdist_members
    tests = {f"tests/{p.name}" for p in (ROOT / "tests").glob("*.py")}
    assert tests - sdist_members == set()


def test_sdist_has_the_docs_sources(sdist_members):
    assert "mkdocs.yml" in sdist_members
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    pages = set(re.findall(r"^\s*- [^:]+: (\S+\.md)\s*$", mkdocs, flags=re.M))
    assert pages, "no nav pages found in mkdocs.yml"
    assert {f"docs/{page}" for page in pages} - sdist_members == set()
    # the docs build's own code (the docstring extension named in mkdocs.yml) and the
    # figures the pages show
    assert "docs/griffe_rst.py" in sdist_members
    shown = {
        f"docs/{m}" for p in (ROOT / "docs").glob("*.md")
        for m in re.findall(r"\((img/[^)\s]+)\)", p.read_text())
    }
    assert "docs/img/histogram.png" in shown
    assert shown - sdist_members == set()


def test_sdist_has_no_bytecode(sdist_members):
    assert not [n for n in sdist_members if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
