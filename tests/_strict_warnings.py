"""Test helper: every warning raises, torch's once-per-process warnings included."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def warnings_raise() -> Iterator[None]:
    """Inside the block every warning is an error, and torch warns each time instead of
    once per process (``torch.set_warn_always``), so a warning an earlier test already
    triggered still shows."""
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    finally:
        torch.set_warn_always(always)
