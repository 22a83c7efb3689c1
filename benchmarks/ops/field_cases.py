"""The measured cases of the newer losses (issue 17): LDS-weighted MSE, FDS (its calibration
and its statistics), Balanced MSE (BMC, BNI, GAI), RankSim and ConR.

Each op has the library's call (``dirloss``), the official code's way of computing the same
thing (:mod:`benchmarks.reference_ops`: ``official-loop`` where that code loops in Python,
timed alone; ``official`` where it is vectorised, timed in alternation with ``dirloss``) and,
where the loss has an N x N core, the ``floor`` (that core alone, forward and backward).
:func:`field_variants` builds the variants' forwards on one set of inputs, so that the tests
check that the baseline computes what the library computes; :func:`field_step` is the step
that a case times.

Inputs are drawn from fixed seeds: integer ages ``0 .. 99`` (the official bins), imbalanced
(a normal around 35, sd 15, every age present once at least), with predictions 5 years off
on average. RankSim gets real-valued labels (no ties), so that it keeps every sample and its
core is N x N (the official code's sampling loop for repeated labels is then not entered:
the comparison most favourable to it); ConR gets the official two-view batch (each label
twice, so every sample has a positive).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.reference_ops import (
    bmc_official,
    bni_official,
    conr_mask_loop,
    fds_calibrate_loop,
    fds_update_loop,
    gai_official,
    lds_mse_loop,
    lds_sample_weights,
    ranksim_row_loop,
)
from dirloss import (
    BMCLoss,
    BNILoss,
    ConRLoss,
    FeatureDistributionSmoothing,
    GAILoss,
    LabelDensityWeights,
    RankSimLoss,
)
from dirloss.balanced_mse import fit_gmm
from dirloss.conr import DEFAULT_CONR_TEMPERATURE
from dirloss.functional import weighted_mse_loss
from dirloss.reweighting import lds_kernel_window

__all__ = [
    "BASELINES",
    "COMPILED",
    "FEATURE_OPS",
    "FIELD_OPS",
    "FLOORED",
    "NUM_BINS",
    "TITLES",
    "Variants",
    "field_impls",
    "field_step",
    "field_variants",
    "similarity_floor",
]

FIELD_OPS = ("lds_mse", "fds", "fds_update", "bmc", "bni", "gai", "ranksim", "conr")
TITLES = {
    "lds_mse": "LDS-weighted MSE", "fds": "FDS calibration", "fds_update": "FDS statistics",
    "bmc": "BMCLoss", "bni": "BNILoss", "gai": "GAILoss", "ranksim": "RankSimLoss",
    "conr": "ConRLoss",
}
BASELINES = {op: "official-loop" for op in ("lds_mse", "fds", "fds_update", "ranksim", "conr")}
BASELINES.update({op: "official" for op in ("bmc", "bni", "gai")})
"""The official code's variant of each op: a Python loop, or vectorised."""
FEATURE_OPS = ("fds", "fds_update", "ranksim", "conr")
"""The ops on (N, D) features (the others take (N, 1) predictions)."""
FLOORED = ("bmc", "ranksim", "conr")
"""The ops with an N x N core, and so a ``floor``."""
COMPILED = ("lds_mse", "fds", "bmc", "bni", "gai", "conr")
"""The ops whose library call compiles with ``fullgraph=True`` (RankSim's default keeps one
sample per label through ``torch.unique``; FDS's statistics are written in place)."""
NUM_BINS = 100
"""The label bins: the official age bins 0 .. 99."""
TRAIN_SIZE = 4000
"""Training labels the density-based methods are fitted on (besides one per bin)."""
GAI_COMPONENTS = 8
CONR_THRESHOLD = 1.0
"""ConR's window, in years (the official age setting)."""

Forward = Callable[[], Tensor]
M = TypeVar("M", bound=nn.Module)


@dataclasses.dataclass
class Variants:
    """One op at one size: each variant's forward on the same inputs, and the tensors whose
    gradients a step clears (the inputs and the learnable noise scales)."""

    forward: dict[str, Forward]
    leaves: list[Tensor]


def field_impls(op: str, compiled: bool) -> list[str]:
    """The variants a run measures for ``op``: dirloss, the official code, the floor (ops
    with an N x N core), and the compiled library call (``compiled`` runs, ops that
    compile)."""
    impls = ["dirloss", BASELINES[op]] + (["floor"] if op in FLOORED else [])
    return impls + (["dirloss+compile"] if compiled and op in COMPILED else [])


def similarity_floor(features: Tensor) -> Tensor:
    """The least a loss over the cosine similarities costs: normalise + the N x N matmul
    (its backward included when it is differentiated)."""
    z = F.normalize(features, dim=1)
    return z @ z.T


def _train_labels(gen: torch.Generator) -> Tensor:
    ages = (35 + 15 * torch.randn(TRAIN_SIZE, generator=gen)).round().clamp(0, NUM_BINS - 1)
    return torch.cat([torch.arange(NUM_BINS, dtype=torch.float32), ages])


def _leaf(t: Tensor, device: str, dtype: torch.dtype) -> Tensor:
    return t.to(device, dtype).requires_grad_()


def _noise(gen: torch.Generator, n: int) -> Tensor:
    return 5 * torch.randn(n, generator=gen)


def _on(module: M, device: str, dtype: torch.dtype) -> M:
    """``module`` on ``device``; cast to ``dtype`` only when it is not float32 (the library's
    float64 statistics stay as users keep them)."""
    module = module.to(device)
    return module if dtype == torch.float32 else module.to(dtype)


@functools.lru_cache(maxsize=1)
def _mixture(labels: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """GAI's mixture of the training labels, fitted once per run (EM takes most of a second,
    and every variant of every size rebuilds its inputs)."""
    means, variances, weights = fit_gmm(torch.tensor(labels), GAI_COMPONENTS)
    return means, variances, weights


def _lds_mse(gen: torch.Generator, train: Tensor, index: Tensor, device: str,
             dtype: torch.dtype) -> Variants:
    y = train[index]
    pred, target = _leaf(y + _noise(gen, y.numel()), device, dtype), y.to(device, dtype)
    lds = LabelDensityWeights(bin_edges=torch.arange(NUM_BINS + 1.0)).fit(train).to(device)
    weights = lds_sample_weights(train.numpy(), NUM_BINS, lds_kernel_window().numpy())
    batch = index.numpy()
    return Variants({
        "dirloss": lambda: weighted_mse_loss(pred, target, lds(target)),
        "official-loop": lambda: lds_mse_loop(pred, target, weights, batch),
    }, [pred])


def _fds(gen: torch.Generator, train: Tensor, index: Tensor, d: int, device: str,
         dtype: torch.dtype) -> Variants:
    fds = FeatureDistributionSmoothing(d, bin_edges=torch.arange(NUM_BINS + 1.0))
    fds.update(torch.randn(train.numel(), d, generator=gen), train)  # one epoch of statistics
    fds.step_epoch()
    fds.to(device).train()
    features = _leaf(torch.randn(index.numel(), d, generator=gen), device, dtype)
    target = train[index].to(device, dtype)
    mean, var, smoothed_mean, smoothed_var = (
        t.to(device, dtype) for t in (fds.running_mean, fds.running_var, fds.smoothed_mean,
                                      fds.smoothed_var)
    )
    return Variants({
        "dirloss": lambda: fds(features, target),
        "official-loop": lambda: fds_calibrate_loop(features, target, mean, var, smoothed_mean,
                                                    smoothed_var),
    }, [features])


def _fds_update(gen: torch.Generator, train: Tensor, index: Tensor, d: int, device: str,
                dtype: torch.dtype) -> Variants:
    """One epoch's statistics of N features: ``update`` + ``step_epoch`` against the official
    per-bin loop + smoothing (no backward). Each returns the four (B, F) tables stacked."""
    fds = FeatureDistributionSmoothing(d, bin_edges=torch.arange(NUM_BINS + 1.0)).to(device)
    features = torch.randn(index.numel(), d, generator=gen).to(device, dtype)
    target = train[index].to(device, dtype)
    mean = torch.zeros(NUM_BINS, d, device=device, dtype=dtype)  # the official initial state
    var = torch.ones(NUM_BINS, d, device=device, dtype=dtype)
    count = torch.zeros(NUM_BINS, device=device, dtype=dtype)
    window = lds_kernel_window().to(device, dtype)
    epochs: list[int] = []

    def ours() -> Tensor:
        fds.update(features, target)
        fds.step_epoch()
        return torch.stack([fds.running_mean, fds.running_var, fds.smoothed_mean,
                            fds.smoothed_var])

    @torch.no_grad()
    def official() -> Tensor:
        smoothed = fds_update_loop(features, target, mean, var, count, window,
                                   momentum=fds.momentum, first=not epochs)
        epochs.append(len(epochs))
        return torch.stack([mean, var, *smoothed])

    return Variants({"dirloss": ours, "official-loop": official}, [])


def _balanced_mse(op: str, gen: torch.Generator, train: Tensor, index: Tensor, device: str,
                  dtype: torch.dtype) -> Variants:
    y = train[index]
    pred = _leaf((y + _noise(gen, y.numel()))[:, None], device, dtype)
    target = y[:, None].to(device, dtype)
    forward: dict[str, Forward]
    if op == "bmc":
        bmc = _on(BMCLoss(), device, dtype)
        sigma = bmc.noise_sigma
        forward = {
            "dirloss": lambda: bmc(pred, target),
            "official": lambda: bmc_official(pred, target, sigma.pow(2)),
            "floor": lambda: (pred - target.T).pow(2).sum(),  # the N x N core alone
        }
    elif op == "bni":
        bni = _on(BNILoss(bin_edges=np.arange(-0.5, NUM_BINS + 0.5)).fit(train), device, dtype)
        sigma = bni.noise_sigma
        tables = [t.to(dtype) for t in (bni.bin_centers, bni.bin_probs)]
        forward = {"dirloss": lambda: bni(pred, target),
                   "official": lambda: bni_official(pred, target, sigma.pow(2), *tables)}
    else:
        gai = _on(GAILoss(GAI_COMPONENTS).set_mixture(*_mixture(tuple(train.tolist()))),
                  device, dtype)
        sigma = gai.noise_sigma
        mixture = [t.to(dtype) for t in (gai.gmm_means, gai.gmm_variances, gai.gmm_weights)]
        forward = {"dirloss": lambda: gai(pred, target),
                   "official": lambda: gai_official(pred, target, sigma.pow(2), *mixture)}
    return Variants(forward, [pred, sigma])


def _ranksim(gen: torch.Generator, n: int, d: int, device: str, dtype: torch.dtype) -> Variants:
    features = _leaf(torch.randn(n, d, generator=gen), device, dtype)
    labels = (NUM_BINS * torch.rand(n, generator=gen)).to(device, dtype)  # real-valued
    ranksim = RankSimLoss()
    choice = torch.Generator().manual_seed(0)
    return Variants({
        "dirloss": lambda: ranksim(features, labels),
        "official-loop": lambda: ranksim_row_loop(features, labels, ranksim.interpolation_lambda,
                                                  choice),
        "floor": lambda: similarity_floor(features).sum(),
    }, [features])


def _conr(gen: torch.Generator, train: Tensor, index: Tensor, d: int, device: str,
          dtype: torch.dtype) -> Variants:
    n = index.numel()
    labels = train[index[: (n + 1) // 2]].repeat(2)[:n]  # two views of each sample
    predictions = (labels + _noise(gen, n)).to(device, dtype)
    labels = labels.to(device, dtype)
    features = _leaf(torch.randn(n, d, generator=gen), device, dtype)
    conr = ConRLoss(CONR_THRESHOLD, official_denominator=True)  # the official code's sum
    loop = functools.partial(conr_mask_loop, threshold=CONR_THRESHOLD,
                             temperature=DEFAULT_CONR_TEMPERATURE,
                             pushing_scale=conr.pushing_scale)
    return Variants({
        "dirloss": lambda: conr(features, labels, predictions),
        "official-loop": lambda: loop(features, labels, predictions),
        "floor": lambda: similarity_floor(features).sum(),
    }, [features])


def field_variants(op: str, n: int, d: int | None, device: str,
                   dtype: torch.dtype = torch.float32) -> Variants:
    """Every variant of ``op`` at batch size ``n`` (feature width ``d`` for the
    :data:`FEATURE_OPS`) on one set of seeded inputs."""
    if op not in FIELD_OPS:
        raise ValueError(f"expected an op among {FIELD_OPS}, got {op!r}")
    if op in FEATURE_OPS and d is None:
        raise ValueError(f"expected d in a {op!r} case, got None")
    gen = torch.Generator().manual_seed(0)
    train = _train_labels(gen)
    index = torch.randint(train.numel(), (n,), generator=gen)
    if op == "lds_mse":
        return _lds_mse(gen, train, index, device, dtype)
    if op in ("bmc", "bni", "gai"):
        return _balanced_mse(op, gen, train, index, device, dtype)
    width = 0 if d is None else d
    if op == "fds":
        return _fds(gen, train, index, width, device, dtype)
    if op == "fds_update":
        return _fds_update(gen, train, index, width, device, dtype)
    if op == "ranksim":
        return _ranksim(gen, n, width, device, dtype)
    return _conr(gen, train, index, width, device, dtype)


def field_step(op: str, impl: str, n: int, d: int | None, device: str) -> Callable[[], None]:
    """Forward + backward of one variant (``fds_update``: the statistics, no backward); a
    ``+compile`` suffix compiles the forward with ``fullgraph=True``."""
    variants = field_variants(op, n, d, device)
    name = impl.replace("+compile", "")
    if name not in variants.forward:
        raise ValueError(f"expected an impl among {sorted(variants.forward)} for {op!r}, "
                         f"got {impl!r}")
    fn = variants.forward[name]
    if impl.endswith("+compile"):
        fn = torch.compile(fn, fullgraph=True)

    def step() -> None:
        for leaf in variants.leaves:
            leaf.grad = None
        out = fn()
        if out.requires_grad:
            (out if out.dim() == 0 else out.sum()).backward()

    return step
