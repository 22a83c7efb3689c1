"""Out-of-range group indices, shared by the range-check tests of every component (issue 11).

Out-of-range group indices raise ``ValueError`` for CPU tensors in every component (a CPU
check costs no device sync); on CUDA they are checked only with ``validate=True``. Each
component's test file checks its own rejection (``test_<component>.py``); the rules they
share (empty batches, compiled code, CUDA) are in ``test_validation.py``.
"""

from __future__ import annotations

import pytest
import torch

from dirloss import GroupBinner

G = 4
OUT_OF_RANGE = [pytest.param(-1, id="negative"), pytest.param(G, id="G"), pytest.param(9, id="9")]


def bad_groups(value: int, n: int = 6) -> torch.Tensor:
    """``n`` valid groups in ``[0, G)`` with the one at index 2 replaced by ``value``."""
    groups = torch.arange(n) % G
    groups[2] = value
    return groups


def range_error(name: str) -> str:
    """The message (a regex) for one bad entry of 6 in ``name``."""
    return rf"expected {name} in \[0, {G}\) \(num_groups={G}\), got 1 of 6 outside it"


def fitted_binner(num_groups: int = G) -> GroupBinner:
    return GroupBinner(num_groups).fit(torch.linspace(0.0, 10.0, 200))
