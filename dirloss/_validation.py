"""Argument checks and small module helpers shared by the functional ops and modules
(private)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{reduction!r} is not a valid value for reduction; expected one of {REDUCTIONS}"
        )


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """Reduce a per-sample loss of shape (N,); ``"mean"`` of an empty batch is 0, not NaN."""
    if reduction == "none":
        return loss
    if reduction == "sum" or loss.shape[0] == 0:
        return loss.sum()
    return loss.mean()


def check_num_groups(num_groups: object) -> int:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
        raise ValueError(f"expected num_groups to be an int >= 2, got {num_groups!r}")
    return num_groups


def check_top_k(top_k: object) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"expected top_k to be a positive int, got {top_k!r}")
    return top_k


def check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected {name} to be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected {name} to be a positive finite number, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected {name} to be a non-negative number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected {name} to be a non-negative finite number, got {value!r}")
    return float(value)


def check_same_device(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.device != b.device:
        raise ValueError(
            f"expected {name_b} on the same device as {name_a} ({a.device}), got {b.device}"
        )


def check_group_targets(name: str, target: Tensor, n: int | None = None) -> None:
    """A 1-D integer tensor of group indices (of length ``n`` when given)."""
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(f"expected {name} to hold integer group indices, got dtype {target.dtype}")
    if target.dim() != 1 or (n is not None and target.shape[0] != n):
        expected = "(N,)" if n is None else f"({n},)"
        raise ValueError(f"expected {name} of shape {expected}, got {tuple(target.shape)}")


def check_group_range(name: str, groups: Tensor, num_groups: int, *, force: bool = False) -> None:
    """Raise if a group index lies outside ``[0, num_groups)``.

    The check reads tensor values, so it runs only where that is free of device syncs and
    graph breaks: always for CPU tensors, for other devices only when ``force`` (a module's
    ``validate=True``), and never while ``torch.compile`` traces (a data-dependent ``if``
    would break ``fullgraph=True``; compiled code runs unchecked); never on ``meta``,
    which has no values.
    """
    if not (force or groups.device.type == "cpu") or groups.numel() == 0 or groups.is_meta:
        return
    if torch.compiler.is_compiling():
        return
    low, high = torch.aminmax(groups)
    if int(low) < 0 or int(high) >= num_groups:
        bad = int(((groups < 0) | (groups >= num_groups)).sum())
        raise ValueError(
            f"expected {name} in [0, {num_groups}) (num_groups={num_groups}), got {bad} of "
            f"{groups.numel()} outside it (min {int(low)}, max {int(high)}); bin the labels "
            "with a GroupBinner of the same num_groups"
        )


def as_float64_array(values: Any) -> np.ndarray:
    """A tensor (any device), ndarray or sequence as a float64 numpy array on the host."""
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def as_vector(values: Any, name: str) -> np.ndarray:
    """:func:`as_float64_array` of (N,) or (N, 1) values, returned as (N,)."""
    array = as_float64_array(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"expected {name} to have shape (N,) or (N, 1), got {tuple(array.shape)}")
    return array


def check_sample_weight(
    weight: Tensor | None, n: int, like: Tensor, work: torch.dtype
) -> Tensor | None:
    """Check per-sample loss weights: None, or a floating (N,) tensor on ``like``'s device."""
    if weight is None:
        return None
    if weight.shape != (n,) or not weight.dtype.is_floating_point:
        raise ValueError(
            f"expected a floating-point weight of shape ({n},) (one per sample), got "
            f"{weight.dtype} of shape {tuple(weight.shape)}"
        )
    if weight.device != like.device:
        raise ValueError(f"expected weight on {like.device}, got {weight.device}")
    return weight.to(work)


def fit_labels(labels: Any, buffer: Tensor) -> np.ndarray:
    """Training labels for a ``fit`` that writes ``buffer``: a non-empty float64 vector of
    finite values (a fit-time check, values read on the host), and real buffers to fill."""
    if buffer.is_meta:
        raise ValueError(
            "expected real buffers to fit, got the meta device (call to_empty() first)"
        )
    y = as_float64_array(labels).reshape(-1)
    if y.size == 0 or not np.isfinite(y).all():
        raise ValueError(f"expected a non-empty array of finite labels, got {y.size} labels "
                         f"with {int((~np.isfinite(y)).sum())} NaN/inf")
    return y


def equal_width_edges(y: np.ndarray, num_bins: int) -> Tensor:
    """``num_bins + 1`` equal-width float64 edges over ``[min(y), max(y)]``, on the CPU."""
    low, high = float(y.min()), float(y.max())
    if not high > low:
        raise ValueError(f"expected labels with more than one value (or bin_edges), got all {low}")
    return torch.linspace(low, high, num_bins + 1, dtype=torch.float64)


def _has_meta_buffer(module: nn.Module) -> bool:
    return any(b.is_meta for b in module.buffers(recurse=False))


class DeferredInit(nn.Module):
    """A module whose buffers hold values fixed at construction (tables, settings, zeros),
    so that deferred initialisation works: built on the ``meta`` device (``device="meta"``
    or ``with torch.device("meta"):``), the module prints, runs shape-only forwards, and
    ``to_empty(device=...)`` refills those buffers with the constructor's values through
    :meth:`_init_buffers` instead of leaving uninitialised memory in them (only when they
    leave ``meta``: ``to_empty`` of a module with real data empties it, as in torch).
    Parameters are left to ``reset_parameters()`` or ``load_state_dict``, as for torch's
    own modules."""

    def _init_buffers(self) -> None:
        """Fill this module's own buffers (not its children's) as the constructor did."""

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        was_meta = _has_meta_buffer(self)
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if was_meta and not _has_meta_buffer(self):  # to_empty(): .to() cannot leave meta
            with torch.no_grad():
                self._init_buffers()
        return self


class Float64Buffers(DeferredInit):
    """A module whose buffers named in ``_float64_buffers`` stay float64: ``.half()`` /
    ``.to(dtype)`` must not round edges or settings (tau reads back exactly as set), so
    those buffers follow the device only."""

    _float64_buffers: tuple[str, ...] = ()

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        kept = {name: getattr(self, name) for name in self._float64_buffers}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:  # a cast: the old float64 values on the new device
                setattr(self, name, old.to(new.device))
        return self


def meta_repr(value: Tensor) -> str:
    """A 0-d buffer's value for ``extra_repr`` (a host read), or ``<meta>`` on ``meta``
    (where there is no value to read)."""
    return "<meta>" if value.is_meta else str(float(value))


def _autocast_check() -> Any:
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no per-device form
        return lambda device_type: True
    return torch.is_autocast_enabled


_autocast_enabled = _autocast_check()


def without_autocast(device_type: str) -> Any:
    """``torch.autocast(device_type, enabled=False)`` where autocast is on, else a no-op
    context: the autocast context costs a few microseconds a call, a fixed cost that shows
    at small batches. (Before torch 2.4, which has no per-device query, always the
    autocast context.)"""
    if device_type != "meta" and _autocast_enabled(device_type):  # meta has no autocast
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
