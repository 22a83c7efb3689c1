r"""ConR: a contrastive regulariser for deep imbalanced regression (Keramati, Meng, Evans,
ICLR 2024).

ConR looks for *confusions*: pairs whose labels are far apart but whose predictions are
close. A sample with at least one such pair is an **anchor**; it is pulled towards the
samples with similar labels (its positives) and pushed away from the confused ones (its
negatives), each negative with a weight that grows with the label distance, so that rare
(minority) samples are not collapsed onto their majority neighbours. Two augmented views of
each sample are contrasted together, so every sample's other view is a positive.

Which variant: the paper's loss (in :func:`conr_loss`) with the choices of the official
code made explicit. A pair is similar when its distance is *at most* :math:`\omega` (``le``
in the code), for labels and predictions alike. The pushing weight is
:math:`S_{jq} = w_j\, e^{\epsilon |y_j - y_q|}` (:math:`w_j` the anchor's sample weight,
e.g. LDS; :math:`\epsilon` = ``pushing_scale``), as in the age (AgeDB-DIR, IMDB-WIKI-DIR)
code; the depth (NYUD2-DIR) code pushes linearly, :math:`\epsilon\, w_j |y_j - y_q|`
(``pushing="linear"``), on each sample's mean depth. Each anchor's term is scaled by
:math:`w_j` again and the terms are averaged over *all* samples, anchors or not (the age
code's final ``(weights * loss * has_negative).mean()``). Features are L2-normalised. The
temperature is 0.07: the default of the README's and of the IMDB-WIKI loss; the AgeDB loss
overwrites its argument with 0.07, whatever the command line's ``-t`` says.

Two deliberate differences. An anchor without any positive contributes 0 (the official
code divides by zero there, giving NaN; with two views every sample has a positive, so it
does not happen there). The official denominator's spurious term is an option
(``official_denominator=True``): the code sums :math:`e^{s}` over the whole row with the
non-positive entries *zeroed before* the exponential, so each of them adds :math:`e^0 = 1`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _views
from ._validation import (
    check_non_negative,
    check_positive,
    check_reduction,
    check_same_device,
    reduce,
    without_autocast,
)

__all__ = ["DEFAULT_CONR_TEMPERATURE", "PUSHING", "ConRLoss", "conr_loss"]

PUSHING = ("exponential", "linear")
r"""Pushing weights :math:`S_{jq}` of :func:`conr_loss`: :math:`w_j e^{\epsilon d_{jq}}`
(official age code) or :math:`\epsilon\, w_j d_{jq}` (official depth code)."""

DEFAULT_CONR_TEMPERATURE = 0.07
"""The temperature the official ConR code trains with (hard-coded in its loss)."""


def _check_hyper(
    threshold: float, temperature: float, pushing_scale: float, pushing: str
) -> None:
    check_non_negative("threshold", threshold)
    check_positive("temperature", temperature)
    check_non_negative("pushing_scale", pushing_scale)
    if pushing not in PUSHING:
        raise ValueError(f"expected pushing in {PUSHING}, got {pushing!r}")


def _column(name: str, t: Tensor, lead: tuple[int, ...]) -> Tensor:
    """``t`` of shape ``lead`` or ``lead + (1,)``, without the trailing 1."""
    if tuple(t.shape) not in (lead, lead + (1,)):
        shapes = f"{lead} or {lead + (1,)}"
        raise ValueError(f"expected {name} of shape {shapes}, got {tuple(t.shape)}")
    return t.reshape(lead)


def conr_loss(
    features: Tensor,
    target: Tensor,
    prediction: Tensor,
    *,
    threshold: float,
    temperature: float = DEFAULT_CONR_TEMPERATURE,
    pushing_scale: float = 0.01,
    pushing: str = "exponential",
    weight: Tensor | None = None,
    normalize: bool = True,
    official_denominator: bool = False,
    view_dim: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""The ConR regulariser (Keramati et al., ICLR 2024), before its weight :math:`\beta`.

    Over the :math:`M` samples (:math:`M = N V` with V views), with
    :math:`s_{jk} = \langle z_j, z_k \rangle / \tau` (:math:`z` the normalised features),
    labels :math:`y`, predictions :math:`\hat y` and window :math:`\omega`:

    .. math::
        P_j = \{ i \ne j : |y_i - y_j| \le \omega \}, \qquad
        Q_j = \{ q : |y_q - y_j| > \omega,\ |\hat y_q - \hat y_j| \le \omega \},

    .. math::
        \mathcal{L}_j = -\frac{1}{|P_j|} \sum_{i \in P_j} \log
        \frac{e^{s_{ji}}}{\sum_{p \in P_j} e^{s_{jp}}
        + \sum_{q \in Q_j} S_{jq}\, e^{s_{jq}}},
        \qquad S_{jq} = w_j\, e^{\epsilon\, |y_j - y_q|}
        \ \text{or}\ \epsilon\, w_j |y_j - y_q|,

    .. math::
        \mathcal{L}_{\text{ConR}} = \frac{1}{M} \sum_{j=1}^{M}
        w_j\, \mathbb{1}[Q_j \ne \emptyset]\, \mathcal{L}_j .

    :math:`j` is an anchor when :math:`Q_j` is not empty; :math:`\mathcal{L}_j = 0` when
    :math:`P_j` is empty. With ``official_denominator=True`` the denominator also gets
    :math:`M - |P_j|` (one :math:`e^0` per non-positive entry of the row, the diagonal
    included), as the official code computes it. Predictions only select the negatives:
    no gradient flows through them. See the module docstring for the choices of the
    official code reproduced here.

    Args:
        features: (N, D) features, or V augmented views of each sample along ``view_dim``
            (official: two views, concatenated).
        target: (N,) or (N, 1) labels (one-dimensional labels: the official code reduces a
            dense label, e.g. a depth map, to its mean first).
        prediction: the model's predictions, (N,) or (N, 1); with views, one per view in
            the features' layout, (N, V) or (N, V, 1) for ``view_dim=1``.
        threshold: :math:`\omega \ge 0`, in label units (official: 1 for ages, 0.2 for
            depth in metres).
        temperature: :math:`\tau > 0` (official 0.07).
        pushing_scale: :math:`\epsilon \ge 0` of the pushing weight (official 0.01 for
            ages with ``"exponential"``, 0.2 for depth with ``"linear"``).
        pushing: ``"exponential"`` :math:`S_{jq} = w_j e^{\epsilon |y_j - y_q|}` (official
            age code) | ``"linear"`` :math:`S_{jq} = \epsilon w_j |y_j - y_q|` (official
            depth code).
        weight: optional (N,) or (N, 1) sample weights :math:`w` (e.g. LDS or inverse
            frequency; 1 when None), shared by the views. Treated as constants.
        normalize: L2-normalise the features (official: yes).
        official_denominator: add the official code's :math:`M - |P_j|`.
        view_dim: the dimension of ``features`` holding the views: ``1`` for (N, V, D) (the
            official code's pair of views), ``0`` for (V, N, D); None (default): (N, D).
        reduction: ``"mean"`` over all M samples (official) | ``"sum"`` | ``"none"``: the
            per-sample terms :math:`w_j \mathbb{1}[Q_j \ne \emptyset] \mathcal{L}_j`, shape
            (N,), or (N, V) / (V, N) with views.

    Returns:
        A scalar, or the per-sample terms; 0 in the graph when no sample is an anchor.
        Computed in at least float32.

    Example:
        >>> z = torch.randn(4, 2, 8, requires_grad=True)  # two views of 4 samples
        >>> y = torch.tensor([20.0, 21.0, 40.0, 60.0])
        >>> pred = torch.tensor([[30.0, 30.5], [31.0, 30.0], [30.2, 29.9], [59.0, 61.0]])
        >>> loss = conr_loss(z, y, pred, threshold=1.0, view_dim=1)
        >>> loss.backward()
        >>> z.grad.shape
        torch.Size([4, 2, 8])
    """
    _check_hyper(threshold, temperature, pushing_scale, pushing)
    check_reduction(reduction)
    _views.check_view_dim(view_dim)
    if features.dim() != (2 if view_dim is None else 3) or not features.dtype.is_floating_point:
        hint = " (pass view_dim=1 for (N, V, D) views)" if features.dim() == 3 else ""
        raise ValueError(
            f"expected floating features of shape {_views.feature_shape(view_dim)}{hint}, got "
            f"{tuple(features.shape)} {features.dtype}"
        )
    n = _views.num_samples(features, view_dim)
    views = 1 if view_dim is None else features.shape[view_dim]
    y = _column("target", target, (n,))
    lead = tuple(features.shape[:-1])
    y_hat = _views.flatten(_column("prediction", prediction, lead), view_dim)
    for name, t in (("target", target), ("prediction", prediction)):
        check_same_device("features", features, name, t)
    w = None
    if weight is not None:
        check_same_device("features", features, "weight", weight)
        w = _column("weight", weight, (n,))
    work_dtype = torch.promote_types(features.dtype, torch.float32)
    x = _views.flatten(features, view_dim).to(work_dtype)
    if x.shape[0] == 0:
        return reduce(x.sum(dim=1) * 0.0, reduction)
    y = _views.repeat_per_view(y.detach().to(work_dtype), views)
    y_hat = y_hat.detach().to(work_dtype)
    if w is not None:
        w = _views.repeat_per_view(w.detach().to(work_dtype), views)
    with without_autocast(x.device.type):
        per_sample = _conr(
            x, y, y_hat, w, float(threshold), float(temperature), float(pushing_scale),
            pushing, normalize, official_denominator,
        )
    if reduction == "none":
        return _views.unflatten(per_sample, n, view_dim)
    return reduce(per_sample, reduction)


def _conr(
    x: Tensor,
    y: Tensor,
    y_hat: Tensor,
    w: Tensor | None,
    threshold: float,
    temperature: float,
    pushing_scale: float,
    pushing: str,
    normalize: bool,
    official_denominator: bool,
) -> Tensor:
    """Per-sample terms (M,): every anchor's row in one (M, M) log-sum-exp."""
    m = x.shape[0]
    z = F.normalize(x, dim=1) if normalize else x
    s = (z @ z.T) / temperature
    d = (y[:, None] - y[None, :]).abs()
    eye = torch.eye(m, dtype=torch.bool, device=x.device)
    pos = (d <= threshold) & ~eye
    neg = (d > threshold) & ((y_hat[:, None] - y_hat[None, :]).abs() <= threshold)
    n_pos = pos.sum(dim=1)
    valid = (n_pos > 0) & neg.any(dim=1)
    if pushing == "exponential":
        log_push = d * pushing_scale  # log S_jq
    else:  # log(eps d): d > threshold >= 0 on the negatives, where it is read
        log_push = _safe_log(d * pushing_scale)
    if w is not None:  # w_j = 0 pushes nothing
        log_push = log_push + _safe_log(w)[:, None]
    terms = torch.where(pos, s, torch.where(neg, s + log_push, -torch.inf))
    if official_denominator:  # one e^0 per non-positive entry of the row
        spurious = (m - n_pos).to(s.dtype).log()[:, None]
        terms = torch.cat([terms, spurious], dim=1)
    # rows without a term (no positive and no negative) are not anchors: keep them finite
    terms = torch.where(valid[:, None], terms, 0.0)
    log_denom = torch.logsumexp(terms, dim=1)
    pulled = torch.where(pos, s, 0.0).sum(dim=1) / n_pos.clamp_min(1).to(s.dtype)
    per_anchor = log_denom - pulled
    if w is not None:
        per_anchor = per_anchor * w
    return torch.where(valid, per_anchor, 0.0)


def _safe_log(t: Tensor) -> Tensor:
    """``log t`` for ``t >= 0``, ``-inf`` at 0 without a NaN gradient."""
    return torch.where(t > 0, t.clamp_min(torch.finfo(t.dtype).tiny).log(), -torch.inf)


class ConRLoss(nn.Module):
    r"""Module form of :func:`conr_loss`; add :math:`\beta` times it to the task loss
    (official :math:`\beta`: 4 on AgeDB-DIR).

    Args:
        threshold: :math:`\omega`, the similarity window in label units (official: 1 year for
            ages, 0.2 m for depth).
        temperature, pushing_scale, pushing: see :func:`conr_loss`.
        normalize, official_denominator, view_dim, reduction: see :func:`conr_loss`.

    Shape:
        - features: (N, D), or (N, V, D) / (V, N, D) with ``view_dim`` 1 / 0; target: (N,)
          or (N, 1); prediction: (N,) or (N, 1), with views (N, V) / (V, N) (or with a
          trailing 1); weight (optional): (N,) or (N, 1).
        - output: scalar, or (N,) ((N, V) / (V, N) with views) for ``reduction="none"``.

    Example:
        >>> criterion = ConRLoss(threshold=1.0, view_dim=1)
        >>> z, y = torch.randn(6, 2, 8), torch.tensor([1.0, 1.5, 5.0, 5.2, 9.0, 9.1])
        >>> criterion(z, y, torch.full((6, 2), 5.0)).shape  # every prediction confused
        torch.Size([])
    """

    def __init__(
        self,
        threshold: float,
        *,
        temperature: float = DEFAULT_CONR_TEMPERATURE,
        pushing_scale: float = 0.01,
        pushing: str = "exponential",
        normalize: bool = True,
        official_denominator: bool = False,
        view_dim: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_hyper(threshold, temperature, pushing_scale, pushing)
        _views.check_view_dim(view_dim)
        check_reduction(reduction)
        self.threshold, self.temperature = float(threshold), float(temperature)
        self.pushing_scale, self.pushing = float(pushing_scale), pushing
        self.normalize, self.official_denominator = bool(normalize), bool(official_denominator)
        self.view_dim, self.reduction = view_dim, reduction

    def forward(
        self, features: Tensor, target: Tensor, prediction: Tensor, weight: Tensor | None = None
    ) -> Tensor:
        return conr_loss(
            features, target, prediction, threshold=self.threshold,
            temperature=self.temperature, pushing_scale=self.pushing_scale,
            pushing=self.pushing, weight=weight,
            normalize=self.normalize, official_denominator=self.official_denominator,
            view_dim=self.view_dim, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"threshold={self.threshold}, temperature={self.temperature}, "
            f"pushing_scale={self.pushing_scale}, pushing={self.pushing!r}, "
            f"normalize={self.normalize}, official_denominator={self.official_denominator}, "
            f"view_dim={self.view_dim}, reduction={self.reduction!r}"
        )
