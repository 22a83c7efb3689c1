"""The standard battery every loss and head passes (STYLE.md, "Tests", 13 and 15).

One call per module, in the module's own test file (as kornia's ``BaseTester`` and
torchmetrics' ``MetricTester`` make each check a call)::

    from _battery import Spec, battery

    TestBattery = battery(
        Spec(
            "my-loss",
            build=lambda **kw: MyLoss(5, temperature=0.5, **kw),  # kw: reduction= only
            inputs=lambda dtype, device: (
                torch.randn(8, 5, dtype=dtype, device=device),
                torch.randint(0, 5, (8,), device=device),
            ),
            function=lambda m, x, y: my_loss(x, y, temperature=0.5, reduction=m.reduction),
        ),
        Spec("my-loss-other-case", ...),  # more cases of the same module, same call
    )

The name must start with ``Test`` for pytest to collect it. Each :class:`Spec` is one case
(hyper-parameters and inputs); every check below runs once per case (node ids read
``test_<file>.py::TestBattery::test_gradcheck[my-loss]``):

* ``test_gradcheck``: float64 ``gradcheck`` (and ``gradgradcheck`` with ``gradgrad=True``)
  w.r.t. the ``grad_inputs`` and the module's parameters, for every reduction (``gradcheck``
  narrows what it differentiates, for a backward that is by design not the derivative);
* ``test_module_equals_function``: the module and its functional twin give the same
  outputs and gradients (bit for bit when ``forward`` calls the function once: the same
  kernels run twice; else to ``function_tol`` in float64), for every reduction;
* ``test_reductions`` (when ``reductions``): the ``"none"`` shape, scalar ``"mean"`` and
  ``"sum"``, ``sum == none.sum()``, ``mean == none.mean()``;
* ``test_invalid_reduction_raises`` (when ``reductions``): the constructor, the functional
  twin and the forward raise ``ValueError(... is not a valid value for reduction)``;
* ``test_compile_fullgraph``: ``torch.compile(fullgraph=True, backend="aot_eager")`` of the
  module and of the twin equals eager (values and input gradients), every reduction;
  ``test_compile_fullgraph_inductor`` (``slow``, ``inductor``) once, for ``inductor=True``;
* ``test_autocast_bf16``: bf16 inputs under ``torch.autocast``: finite outputs of
  ``autocast_dtype`` (float32 for a loss that accumulates in float32), close to float32
  eager on the same values, finite gradients;
* ``test_state_dict_round_trip``: ``state_dict`` (keys ``state_keys``) through
  ``torch.save`` / ``torch.load(weights_only=True)`` into ``fresh()``, which then holds the
  same tensors and gives the same outputs;
* ``test_device_and_dtype``: ``.to(device, dtype)`` (the conftest fixtures: CUDA cases skip
  without a GPU) moves every buffer; outputs and gradients follow.

Conventions a spec must follow:

* ``build(**kw)`` builds the module; with ``reductions``, ``build(reduction=r)`` must work.
  It runs under a fixed seed (``fresh`` under another), so random weights are
  reproducible.
* ``inputs(dtype, device)`` returns a tuple of tensors (fresh each call, under a fixed
  seed); floating ones are cast to ``dtype``. ``grad_inputs`` are the indices of the
  differentiable ones (labels, groups and real-valued labels that only get compared are
  not).
* ``function(module, *inputs)`` is the functional twin: the same result from the pure
  functions, reading the hyper-parameters from the module (``module.reduction`` included,
  so that an invalid one reaches the function) or from the spec's closure; it must not read
  tensors on the host (``float(buffer)``), or it will not compile with ``fullgraph=True``.
* ``call(module, *inputs)`` runs the module (default ``module(*inputs)``); ``outputs(out)``
  gives the tensors to compare (default: the tensor, or the fields of a NamedTuple) and
  ``differentiable(out)`` those to back-propagate (default: ``outputs``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

REDUCTIONS = ("none", "mean", "sum")
BAD_REDUCTIONS = ("avg", "Mean", "MEAN", "", None, "batchmean", "elementwise_mean")
_REDUCTION_ERROR = "is not a valid value for reduction"
_MODULE_SEED, _FRESH_SEED, _INPUT_SEED = 0, 1, 2
CPU = torch.device("cpu")


def _call(module: nn.Module, *inputs: Tensor) -> Any:
    return module(*inputs)


def _fields(out: Any) -> tuple[Tensor, ...]:
    return (out,) if isinstance(out, Tensor) else tuple(out)


@dataclass(frozen=True)
class Spec:
    """One case of a loss or head for :func:`battery` (see the module docstring)."""

    name: str
    build: Callable[..., nn.Module]
    inputs: Callable[[torch.dtype, torch.device], tuple[Tensor, ...]]
    function: Callable[..., Any]
    call: Callable[..., Any] = _call
    outputs: Callable[[Any], tuple[Tensor, ...]] = _fields
    differentiable: Callable[[Any], tuple[Tensor, ...]] | None = None
    grad_inputs: tuple[int, ...] = (0,)
    #: The reductions ``build(reduction=...)`` accepts; () for a module without one.
    reductions: tuple[str, ...] = REDUCTIONS
    #: (N,) by default: the first input's batch size.
    none_shape: Callable[[tuple[Tensor, ...]], tuple[int, ...]] | None = None
    #: ``forward`` calls the function once with the same arguments: bit-equal. Otherwise
    #: the twin composes other kernels (another summation order): ``function_tol``.
    exact_function: bool = True
    function_tol: float = 1e-12
    gradgrad: bool = False
    #: What ``test_gradcheck`` differentiates: ``"all"`` (the ``grad_inputs`` and the
    #: parameters), ``"inputs"`` (a parameter whose gradient is by design not the derivative
    #: of the output, e.g. through a detached scale: say why in the spec) or ``"none"`` (a
    #: surrogate backward, e.g. a blackbox rank, whose forward is piecewise constant: finite
    #: differences give 0, not the surrogate; no test_gradcheck case for the spec).
    gradcheck: str = "all"
    #: compiled vs eager: aot_eager regroups the traced aten ops and inductor fuses and
    #: reorders sums, so not bit for bit; {} is assert_close's float32 default.
    compile_tol: dict[str, float] | None = None
    inductor: bool = False
    #: Inputs cast to bf16 under autocast (default ``grad_inputs``): what a bf16 layer
    #: before the module hands over.
    autocast_inputs: tuple[int, ...] | None = None
    autocast_dtype: torch.dtype | None = torch.float32
    autocast_tol: float = 0.05
    fresh: Callable[[], nn.Module] | None = None
    state_keys: frozenset[str] | None = None

    def __str__(self) -> str:
        return self.name


class _Bound(nn.Module):
    """``spec.call(module, *inputs)`` as a module: its parameters (``module.*``) can be
    swapped by ``functional_call`` and the whole call compiled."""

    def __init__(self, spec: Spec, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self._call = spec.call

    def forward(self, *inputs: Tensor) -> Any:
        return self._call(self.module, *inputs)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _build(spec: Spec, reduction: str | None = None, seed: int = _MODULE_SEED) -> nn.Module:
    torch.manual_seed(seed)
    return spec.build() if reduction is None else spec.build(reduction=reduction)


def _inputs(
    spec: Spec, dtype: torch.dtype, device: torch.device, *, grad: bool = True
) -> list[Tensor]:
    """Fresh inputs (fixed seed); floating ones in ``dtype``, ``grad_inputs`` as leaves."""
    torch.manual_seed(_INPUT_SEED)
    inputs = []
    for i, x in enumerate(spec.inputs(dtype, device)):
        x = x.to(device)
        if x.is_floating_point():
            x = x.to(dtype)
        if grad and i in spec.grad_inputs:
            x = x.detach().requires_grad_()
        inputs.append(x)
    return inputs


def _reductions(spec: Spec) -> Sequence[str | None]:
    return spec.reductions or (None,)


def _differentiable(spec: Spec, out: Any) -> tuple[Tensor, ...]:
    return (spec.differentiable or spec.outputs)(out)


def _grads(spec: Spec, out: Any, wrt: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    total = sum(t.float().sum() if t.dtype.is_floating_point else 0 for t in
                _differentiable(spec, out))
    assert isinstance(total, Tensor)
    return torch.autograd.grad(total, list(wrt), allow_unused=True)


def _leaves(spec: Spec, inputs: Sequence[Tensor]) -> list[Tensor]:
    return [inputs[i] for i in spec.grad_inputs]


def _close(got: Sequence[Tensor | None], want: Sequence[Tensor | None], **tol: Any) -> None:
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        if a is None or b is None:
            assert a is None and b is None, k
            continue
        torch.testing.assert_close(a, b, msg=lambda m, k=k: f"output {k}: {m}", **tol)


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------
def check_gradcheck(spec: Spec) -> None:
    for reduction in _reductions(spec):
        _gradcheck(spec, reduction)


def _gradcheck(spec: Spec, reduction: str | None) -> None:
    bound = _Bound(spec, _build(spec, reduction).double())
    inputs = _inputs(spec, torch.float64, CPU, grad=False)
    named = list(bound.named_parameters()) if spec.gradcheck == "all" else []
    names = [name for name, _ in named]
    params = [p.detach().clone().requires_grad_() for _, p in named]
    leaves = [inputs[i].detach().clone().requires_grad_() for i in spec.grad_inputs]
    k = len(leaves)

    def fn(*args: Tensor) -> tuple[Tensor, ...]:
        xs = list(inputs)
        for i, x in zip(spec.grad_inputs, args[:k]):
            xs[i] = x
        out = torch.func.functional_call(bound, dict(zip(names, args[k:])), tuple(xs))
        return _differentiable(spec, out)

    assert torch.autograd.gradcheck(fn, (*leaves, *params)), reduction
    if spec.gradgrad:
        assert torch.autograd.gradgradcheck(fn, (*leaves, *params)), reduction


def check_module_equals_function(spec: Spec, device: torch.device) -> None:
    # float64: a tolerance that only summation order can explain (when not exact).
    tol = {"rtol": 0.0, "atol": 0.0}
    if not spec.exact_function:
        tol = {"rtol": spec.function_tol, "atol": spec.function_tol}
    for reduction in _reductions(spec):
        module = _build(spec, reduction).to(device, torch.float64)
        params = list(module.parameters())
        a = _inputs(spec, torch.float64, device)
        b = _inputs(spec, torch.float64, device)
        got, want = spec.call(module, *a), spec.function(module, *b)
        _close(spec.outputs(got), spec.outputs(want), **tol)
        _close(_grads(spec, got, _leaves(spec, a) + params),
               _grads(spec, want, _leaves(spec, b) + params), **tol)


def check_reductions(spec: Spec, device: torch.device) -> None:
    inputs = _inputs(spec, torch.float64, device, grad=False)
    out = {
        r: spec.outputs(spec.call(_build(spec, r).to(device, torch.float64), *inputs))[0]
        for r in spec.reductions
    }
    n = inputs[0].shape[0]
    none_shape = spec.none_shape(tuple(inputs)) if spec.none_shape else (n,)
    if "none" in out:
        assert out["none"].shape == none_shape
    for r in ("mean", "sum"):
        if r in out:
            assert out[r].shape == (), r
    # A fused kernel sums in another order than torch.sum of the per-sample vector: equal
    # to float64 rounding, not bit for bit.
    f64 = {"rtol": 1e-12, "atol": 1e-12}
    if "none" in out and "sum" in out:
        torch.testing.assert_close(out["sum"], out["none"].sum(), **f64)
    if "none" in out and "mean" in out:
        torch.testing.assert_close(out["mean"], out["none"].mean(), **f64)


def check_invalid_reduction(spec: Spec, bad: Any) -> None:
    with pytest.raises(ValueError, match=_REDUCTION_ERROR):
        spec.build(reduction=bad)
    module = _build(spec, spec.reductions[0])
    module.reduction = bad  # set after a valid construction: the call must check it too
    inputs = _inputs(spec, torch.float32, CPU)
    with pytest.raises(ValueError, match=_REDUCTION_ERROR):
        spec.function(module, *inputs)
    with pytest.raises(ValueError, match=_REDUCTION_ERROR):
        spec.call(module, *inputs)


def check_compile(spec: Spec, device: torch.device, backend: str) -> None:
    tol = spec.compile_tol or {}
    reductions = _reductions(spec) if backend == "aot_eager" else [None]  # one inductor build
    for reduction in reductions:
        torch._dynamo.reset()
        module = _build(spec, reduction).to(device)
        bound = _Bound(spec, module)
        twin = _Bound(Spec(**{**spec.__dict__, "call": spec.function}), module)
        cases = [(bound, torch.compile(bound, fullgraph=True, backend=backend))]
        if backend == "aot_eager":
            cases.append((twin, torch.compile(twin, fullgraph=True, backend=backend)))
        for eager_fn, compiled_fn in cases:
            a = _inputs(spec, torch.float32, device)
            b = _inputs(spec, torch.float32, device)
            eager, got = eager_fn(*a), compiled_fn(*b)
            _close(spec.outputs(got), spec.outputs(eager), **tol)
            _close(_grads(spec, got, _leaves(spec, b)), _grads(spec, eager, _leaves(spec, a)),
                   **tol)


def check_autocast(spec: Spec, device: torch.device) -> None:
    module = _build(spec).to(device)
    cast = spec.grad_inputs if spec.autocast_inputs is None else spec.autocast_inputs
    inputs = _inputs(spec, torch.float32, device, grad=False)
    low = [x.to(torch.bfloat16) if i in cast else x for i, x in enumerate(inputs)]
    low = [x.requires_grad_() if i in spec.grad_inputs else x for i, x in enumerate(low)]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = spec.call(module, *low)
    outs = spec.outputs(out)
    if spec.autocast_dtype is not None:
        assert outs[0].dtype == spec.autocast_dtype, outs[0].dtype
    for t in outs:
        assert torch.isfinite(t.float()).all()
    # float32 eager on the same (bf16-rounded) values: only the module's bf16 work differs
    ref = spec.outputs(spec.call(module, *[x.detach().float() if x.is_floating_point() else x
                                           for x in low]))
    tol = spec.autocast_tol
    _close([t.float() for t in outs], [t.float() for t in ref], rtol=tol, atol=tol)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = _grads(spec, out, _leaves(spec, low) + params)
    for leaf, g in zip(_leaves(spec, low), grads):
        assert g is not None and g.dtype == leaf.dtype and torch.isfinite(g.float()).all()
    for g in grads[len(spec.grad_inputs):]:
        assert g is None or torch.isfinite(g).all()


def check_state_dict(spec: Spec) -> None:
    module = _build(spec)
    state = module.state_dict()
    if spec.state_keys is not None:
        assert set(state) == set(spec.state_keys)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    if spec.fresh is not None:
        torch.manual_seed(_FRESH_SEED)
        fresh = spec.fresh()
    else:
        fresh = _build(spec, seed=_FRESH_SEED)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.train(module.training)
    loaded = fresh.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():  # a copy: bit for bit (NaN where unset, e.g. low)
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, equal_nan=True,
                                   msg=key)
    # the same kernels on the same values and weights: bit for bit
    inputs = _inputs(spec, torch.float32, CPU, grad=False)
    for a, b in zip(spec.outputs(spec.call(fresh, *inputs)),
                    spec.outputs(spec.call(module, *inputs))):
        assert torch.equal(a, b)


def check_device_and_dtype(spec: Spec, device: torch.device, dtype: torch.dtype) -> None:
    module = _build(spec).to(device=device, dtype=dtype)
    for name, value in [*module.named_parameters(), *module.named_buffers()]:
        assert value.device.type == device.type, name
    for name, p in module.named_parameters():
        assert p.dtype == dtype, name
    inputs = _inputs(spec, dtype, device)
    out = spec.call(module, *inputs)
    for t in spec.outputs(out):
        assert t.device.type == device.type
        if t.is_floating_point():
            assert t.dtype == dtype, t.dtype
    for leaf, g in zip(_leaves(spec, inputs), _grads(spec, out, _leaves(spec, inputs))):
        assert g is not None and g.dtype == leaf.dtype and g.device == leaf.device


# ---------------------------------------------------------------------------------------------
# The test class
# ---------------------------------------------------------------------------------------------
def battery(*specs: Spec) -> type:
    """A test class (assign it to a ``Test*`` name) running every check on every spec."""
    if not specs:
        raise ValueError("expected at least one Spec")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"expected distinct spec names, got {names}")
    for spec in specs:
        if spec.gradcheck not in ("all", "inputs", "none"):
            raise ValueError(
                f"expected gradcheck in ('all', 'inputs', 'none'), got {spec.gradcheck!r} "
                f"for {spec}"
            )

    def over(selected: Sequence[Spec]) -> Any:
        return pytest.mark.parametrize("spec", list(selected), ids=[s.name for s in selected])

    every = over(specs)
    checked = [s for s in specs if s.gradcheck != "none"]
    reducing = [s for s in specs if s.reductions]
    compiled = [s for s in specs if s.inductor]

    class TestBattery:
        if checked:

            @over(checked)
            def test_gradcheck(self, spec: Spec) -> None:
                check_gradcheck(spec)

        @every
        def test_module_equals_function(self, spec: Spec, device: torch.device) -> None:
            check_module_equals_function(spec, device)

        if reducing:

            @over(reducing)
            def test_reductions(self, spec: Spec, device: torch.device) -> None:
                check_reductions(spec, device)

            @pytest.mark.parametrize("bad", BAD_REDUCTIONS)
            @over(reducing)
            def test_invalid_reduction_raises(self, spec: Spec, bad: Any) -> None:
                check_invalid_reduction(spec, bad)

        @every
        def test_compile_fullgraph(self, spec: Spec, device: torch.device) -> None:
            check_compile(spec, device, "aot_eager")

        if compiled:

            @pytest.mark.slow
            @pytest.mark.inductor
            @over(compiled)
            def test_compile_fullgraph_inductor(self, spec: Spec, device: torch.device) -> None:
                check_compile(spec, device, "inductor")

        @every
        def test_autocast_bf16(self, spec: Spec, device: torch.device) -> None:
            check_autocast(spec, device)

        @every
        def test_state_dict_round_trip(self, spec: Spec) -> None:
            check_state_dict(spec)

        @every
        def test_device_and_dtype(
            self, spec: Spec, device: torch.device, dtype: torch.dtype
        ) -> None:
            check_device_and_dtype(spec, device, dtype)

    return TestBattery
