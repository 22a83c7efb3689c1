"""Where the benchmarks read their data from and cache what they compute.

The data sets are read from a directory, never shipped with the package (their licences
differ from it). The directory is, in order of precedence, the ``data_dir`` argument (the
benchmarks' ``--data-dir``), the ``DIRLOSS_DATA_DIR`` environment variable, or
``<repository root>/../shared/data``. See ``shared/data/README.md`` for what is in it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["REPO_ROOT", "PathLike", "default_cache_dir", "default_data_dir"]

PathLike = Union[str, "os.PathLike[str]"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir(data_dir: PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$DIRLOSS_DATA_DIR``, else
    ``<repo>/../shared/data``."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("DIRLOSS_DATA_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def default_cache_dir(cache_dir: PathLike | None = None) -> Path:
    """The embedding cache: ``cache_dir``, else ``$DIRLOSS_CACHE_DIR``, else
    ``~/.cache/dirloss``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DIRLOSS_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "dirloss"
