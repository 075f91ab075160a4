"""The asymmetric Unified Focal loss (Yeung et al. 2022), softmax and sigmoid forms.

Yeung, Sala, Schönlieb & Rundo, "Unified Focal loss: Generalising Dice and cross entropy-based losses to
handle class imbalanced medical image segmentation", Computerized Medical Imaging and Graphics 95 (2022)
102026. The loss mixes a pixel term and a region term::

    L = λ · L_aF + (1 - λ) · L_aFT

* **Asymmetric focal loss** ``L_aF``, the mean over the valid pixels of ``Σ_c y_c w_c (1 - p_c)^{γ_c}
  (-log p_c)``: the background (class 0) has ``w_0 = 1 - δ`` and the focal suppression ``γ_0 = γ``; every
  foreground class ``c >= 1`` (the rare classes) has ``w_c = δ`` and plain cross-entropy, ``γ_c = 0``.
* **Asymmetric focal Tversky loss** ``L_aFT``, the mean over classes of ``1 - mTI_0`` for the background
  and ``(1 - mTI_c)^{1-γ}`` (focal enhancement) for every foreground class, with the modified Tversky index
  ``mTI_c = (TP_c + s) / (TP_c + δ FN_c + (1 - δ) FP_c + s)``.

One ``δ`` (0.6) weights the foreground in both parts (in the index, ``δ > 0.5`` penalises false negatives
more than false positives), one ``γ`` (0.5) both suppresses the background's easy pixels and enhances the
foreground's region term; the paper's defaults are ``δ = 0.6, γ = 0.5, λ = 0.5``.

The per-(sample, class) quantities travel together (:class:`UnifiedStats`): the overlap statistics of
:mod:`seglosses._core.stats`, the number of valid pixels and each class's sum of focal terms, so that
``batch=True`` pools all of them over the batch (the focal part becomes the mean over the batch's valid
pixels) and ``reduction="none"`` gives ``(N, C)`` terms whose class mean is each sample's loss.

**Weight maps and masks.** A weight map ``ω`` ``(N, *S)`` weights every one of those sums: the focal part
is the weighted mean ``Σ_i ω_i (terms) / Σ_i ω_i`` over the valid pixels and the Tversky statistics are
``TP = Σ ω p y``, ``FP = Σ ω p (1 - y)``, ``FN = Σ ω (1 - p) y``; a mask is ``ignore_index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.numerics import binary_log_terms, compute_dtype, safe_divide, safe_pow
from .._core.options import ClassValues, Reduction, check_number
from .._core.pixel_weights import PixelWeights, pixel_inputs, pixel_weights
from .._core.reduction import reduce_region
from .._core.registry import register
from .._core.stats import (
    Overlap,
    sigmoid_overlap_from_dense,
    softmax_overlap_from_dense,
    softmax_overlap_from_index,
)
from .._core.targets import (
    IndexTarget,
    SoftmaxTarget,
    check_binary_target,
    input_checks_enabled,
    softmax_target,
)
from .base import PixelWeightedModule, module_pair
from .focal import focal_modulation, index_cross_entropy
from .overlap import RegionOptions, tversky_score


class UnifiedStats(NamedTuple):
    """The sums the loss is made of, each ``(N, C)`` (``(C,)`` after :meth:`pooled`): the overlap
    statistics, the valid pixels and each class's sum of focal terms over them."""

    tp: Tensor
    fp: Tensor
    fn: Tensor
    valid: Tensor
    focal: Tensor

    def pooled(self) -> "UnifiedStats":
        """Sum over the batch: ``(N, C) -> (C,)``."""
        return UnifiedStats(*(t.sum(0) for t in self))


@dataclass(frozen=True, kw_only=True, eq=False)
class UnifiedFocalOptions(RegionOptions):
    """Region options (``batch``, ``smooth``, ``ignore_index``, ``reduction``) plus ``delta`` (the
    foreground's weight, in ``[0, 1]``), ``gamma`` (in ``[0, 1)``) and ``lam`` (the focal part's share,
    in ``[0, 1]``). Class weights, ``include_background`` and ``sync`` are not offered: the loss itself
    gives each class its role."""

    weight: Optional[ClassValues] = None  # not an option of this loss: always None
    delta: float
    gamma: float
    lam: float

    def checked(self) -> Dict[str, Any]:
        gamma = check_number(
            "gamma (the foreground's region term is (1 - mTI)^(1 - gamma): constant at 1, infinite at a "
            "perfect prediction above)",
            self.gamma, low=0.0, high=1.0, high_open=True,
        )  # fmt: skip
        return {
            **super().checked(),
            "delta": check_number("delta", self.delta, low=0.0, high=1.0),
            "gamma": gamma,
            "lam": check_number("lam", self.lam, low=0.0, high=1.0),
        }


# --- the focal part: per-(sample, class) sums of the pixel terms ------------------------------------------


def _softmax_focal_sums(
    work: Tensor, prepared: SoftmaxTarget, opts: UnifiedFocalOptions, omega: Optional[Tensor] = None
) -> Tensor:
    """``Σ_i y_ic w_c (1 - p_ic)^{γ_c} (-log p_ic)`` per (sample, class), ``(N, C)``, over valid pixels
    (each pixel's term times its weight ``ω_i`` with ``omega`` ``(N, *S)``).

    An index target takes the per-pixel cross-entropy ``-log p_t`` (no one-hot of the logits' size) and
    adds each pixel's term into its class's entry; a dense target computes the class terms ``(N, C, *S)``.
    The power is :func:`~seglosses.losses.focal.focal_modulation`'s, with a finite gradient for every
    ``γ`` at saturated logits."""
    n, c = work.shape[:2]
    delta, gamma = opts.delta, opts.gamma
    if isinstance(prepared, IndexTarget):
        ce = index_cross_entropy(work, prepared, prepared.ignore_index)  # (N, *S), 0 where ignored
        index = prepared.index()
        background = index == 0 if prepared.valid is None else (index == 0) & prepared.valid
        terms = torch.where(background, (1 - delta) * _suppressed(ce, background, gamma), delta * ce)
        if omega is not None:  # finite terms (0 at ignored pixels): a product
            terms = terms * omega
        table = terms.new_zeros(n, c)
        return table.scatter_add(1, index.flatten(1), terms.flatten(1))
    y = prepared.dense.to(work.dtype)
    ce = torch.where(y > 0, -torch.log_softmax(work, dim=1), 0.0)  # no 0 · inf where p = 0 without mass
    background = y[:, 0] > 0
    first = torch.where(background, y[:, 0] * (1 - delta) * _suppressed(ce[:, 0], background, gamma), 0.0)
    rest = delta * y[:, 1:] * ce[:, 1:]
    if omega is not None:  # finite terms: ce is 0 where the target has no mass
        first, rest = first * omega, rest * omega.unsqueeze(1)
    return torch.cat([first.flatten(1).sum(-1, keepdim=True), rest.flatten(2).sum(-1)], dim=1)


def _suppressed(ce: Tensor, where: Tensor, gamma: float) -> Tensor:
    """``(1 - p)^γ ce`` from the cross-entropy ``ce = -log p`` at the pixels ``where`` (anything elsewhere),
    by :func:`~seglosses.losses.focal.focal_modulation` (finite gradient for every ``γ`` at saturated
    logits). The other pixels get ``ce = 1``: their ``ce = 0`` (``p = 1``, ignored pixels) would put
    ``u^γ`` at ``u = 0`` into a double backward, whose second derivative is NaN there."""
    if gamma == 0:
        return ce
    return focal_modulation(torch.where(where, ce, 1.0), gamma)


def _binary_focal_sums(
    work: Tensor,
    y: Tensor,
    valid: Optional[Tensor],
    opts: UnifiedFocalOptions,
    omega: Optional[Tensor] = None,
) -> Tensor:
    """``Σ_i [δ y (-log p) + (1 - δ)(1 - y) p^γ (-log(1 - p))]`` per (sample, channel), ``(N, C)``, with
    ``p = σ(z)``, in log space (:func:`~seglosses._core.numerics.binary_log_terms`, ``p^γ = exp(γ log p)``):
    finite values and gradients at saturated logits, 0 for a ``-inf`` logit with target 0. With ``omega``
    ``(N, *S)`` each pixel's terms (every channel's) times its weight."""
    if valid is not None:  # a NaN or inf at an ignored element reaches nothing
        work = work.masked_fill(~valid, 0.0)
    positive, negative = binary_log_terms(work, y)
    if opts.gamma > 0:
        negative = negative * torch.exp(opts.gamma * F.logsigmoid(work))
    terms = -(opts.delta * positive + (1 - opts.delta) * negative)
    if valid is not None:
        terms = terms.masked_fill(~valid, 0.0)
    if omega is not None:  # 0 · (-log 0) where ω = 0 is 0, not NaN
        w = omega.unsqueeze(1).to(terms.dtype)
        terms = torch.where(w > 0, terms, 0.0) * w
    return terms.flatten(2).sum(-1)


# --- statistics -------------------------------------------------------------------------------------------


def _counts(
    valid: Optional[Tensor], like: Tensor, pixels: int, binary: bool, omega: Optional[Tensor] = None
) -> Tensor:
    """The valid pixels per (sample, class) as numbers, ``(N, C)``: per element for a binary target, per
    sample for a softmax one (``valid`` ``(N, *S)``), every pixel without a mask; their summed weights
    ``Σ ω`` with ``omega`` ``(N, *S)``."""
    if omega is not None:  # binary: (N, 1, *S), the same for every channel
        w = omega.to(like.dtype).unsqueeze(1) if binary else omega.to(like.dtype)
        counted = w if valid is None else torch.where(valid, w, 0.0)
        counts = counted.flatten(2 if binary else 1).sum(-1)
        return counts.expand_as(like) if binary else counts.unsqueeze(-1).expand_as(like)
    if valid is None:
        return torch.full_like(like, float(pixels))
    counts = valid.flatten(2 if binary else 1).sum(-1, dtype=like.dtype)
    return counts if binary else counts.unsqueeze(-1).expand_as(like)


def _softmax_stats(
    logits: Tensor, target: Tensor, opts: UnifiedFocalOptions, pixels: Optional[PixelWeights] = None
) -> UnifiedStats:
    ignore_index = opts.ignore_index
    logits, target, ignore_index, omega = pixel_inputs(logits, target, ignore_index, pixels, binary=False)
    prepared = softmax_target(logits, target, ignore_index, log_terms=True)
    work = logits.to(compute_dtype(logits))
    focal = _softmax_focal_sums(work, prepared, opts, omega)
    if isinstance(prepared, IndexTarget):
        s = softmax_overlap_from_index(
            logits, prepared.labels, prepared.valid, prepared.ignore_index, prepared, weight=omega
        )
        valid = prepared.valid
    else:
        weight = None if omega is None else omega.unsqueeze(1)
        s, valid = softmax_overlap_from_dense(logits, prepared.dense, weight=weight), None
    counts = _counts(valid, s.tp, math.prod(logits.shape[2:]), False, omega)
    return UnifiedStats(*s, counts, focal.to(s.tp.dtype))


def _binary_stats(
    logits: Tensor, target: Tensor, opts: UnifiedFocalOptions, pixels: Optional[PixelWeights] = None
) -> UnifiedStats:
    ignore_index = opts.ignore_index
    logits, target, ignore_index, omega = pixel_inputs(logits, target, ignore_index, pixels, binary=True)
    checks = input_checks_enabled()  # read once: the checks and the statistics' shortcut rely on one answer
    valid = check_binary_target(logits, target, ignore_index, checks=checks, log_terms=True)
    weight = None if omega is None else omega.unsqueeze(1)  # every channel
    s = sigmoid_overlap_from_dense(logits, target, valid, finite=checks, weight=weight)
    work = logits.to(compute_dtype(logits))
    y = target.to(work.dtype) if valid is None else target.to(work.dtype).masked_fill(~valid, 0.0)
    focal = _binary_focal_sums(work, y, valid, opts, omega)
    counts = _counts(valid, s.tp, math.prod(logits.shape[2:]), True, omega)
    return UnifiedStats(*s, counts, focal.to(s.tp.dtype))


# --- the loss ---------------------------------------------------------------------------------------------


def _focal_tversky_terms(s: Overlap, opts: UnifiedFocalOptions) -> Tuple[Tensor, Tensor]:
    """``(1 - mTI_0, (1 - mTI_c)^(1-γ))`` for the background and the foreground statistics ``s`` (same
    shapes), ``mTI = (TP + s) / (TP + δ FN + (1 - δ) FP + s)`` (α on FP = 1 - δ, β on FN = δ). The power's
    gradient, infinite at ``mTI = 1`` for ``γ > 0``, is taken as 0 there."""
    index = tversky_score(s, opts.smooth, 1 - opts.delta, opts.delta)
    return 1 - index, safe_pow((1 - index).clamp_min(0), 1 - opts.gamma)  # rounding: mTI a hair past 1


def _per_class(s: UnifiedStats, opts: UnifiedFocalOptions, binary: bool) -> Tensor:
    """The ``(N, C)`` (or ``(C,)``) terms whose class mean is the loss (see the functions' docstrings)."""
    focal = safe_divide(s.focal, s.valid, 0.0)  # each class's share of the mean over valid pixels
    if binary:  # each channel is one two-class problem: background 1 - p (its TP is the channel's TN)
        tn = (s.valid.double() - s.tp.double() - s.fp.double() - s.fn.double()).clamp_min(0).to(s.tp.dtype)
        background, _ = _focal_tversky_terms(Overlap(tn, s.fn, s.fp), opts)
        _, foreground = _focal_tversky_terms(Overlap(s.tp, s.fp, s.fn), opts)
        return opts.lam * focal + (1 - opts.lam) * (background + foreground) / 2
    plain, enhanced = _focal_tversky_terms(Overlap(s.tp, s.fp, s.fn), opts)
    region = torch.cat([plain[..., :1], enhanced[..., 1:]], dim=-1)
    return opts.lam * s.tp.shape[-1] * focal + (1 - opts.lam) * region


def _unified_focal(logits: Tensor, target: Tensor, opts: UnifiedFocalOptions, binary: bool) -> Tensor:
    """Prepare -> statistics (pooled with ``batch``) -> per-class terms -> reduce."""
    compute = _binary_stats if binary else _softmax_stats
    s = compute(logits, target, opts, opts.pixel_weights)
    if opts.batch:
        s = s.pooled()
    return reduce_region(_per_class(s, opts, binary), opts.reduction)


_SHARED_DOC = """
    Args:
        logits: ``(N, C, *S)``, one to three spatial dims{classes}.
        target: {target}
        weight_map: ``ω`` ``(N, *S)``, non-negative per-pixel weights{every}: the focal part is the weighted
            mean ``Σ ω · terms / Σ ω`` over the valid pixels, the Tversky statistics ``TP = Σ ω p y``,
            ``FP = Σ ω p (1 - y)``, ``FN = Σ ω (1 - p) y``{tn}; an integer ``ω`` counts the pixel ``ω`` times.
        mask: ``(N, *S)`` bool, True where a pixel counts: ``ignore_index`` at the others (a soft target's
            masked pixels count nowhere either).
        delta: ``δ`` in ``[0, 1]``, the foreground's weight: ``δ`` on its cross-entropy (``1 - δ`` on the
            background's) and on false negatives in ``mTI`` (``1 - δ`` on false positives).
        gamma: ``γ`` in ``[0, 1)``: the background's focal suppression ``(1 - p)^γ`` and the foreground's
            enhancement ``(1 - mTI)^(1-γ)``.
        lam: ``λ`` in ``[0, 1]``, the share of the focal part (``lambda`` is a Python keyword; the
            library writes λ as ``lam`` throughout).
        batch: pool the statistics over the batch (the focal part then averages over the batch's valid
            pixels): one term per class.
        smooth: ``s >= 0`` added to numerator and denominator of ``mTI``.
        ignore_index: {ignore}
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``), the terms above;
            ``sum`` -> their sum; ``mean`` -> their mean, i.e. the loss of each sample averaged over samples.

    Returns:
        The loss: a scalar, or the unreduced terms.

    Raises:
        SegLossError: for a bad option value, a target of the wrong shape, dtype or range, or (with the
            input checks on) non-finite logits.
"""


def unified_focal_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    delta: float = 0.6,
    gamma: float = 0.5,
    lam: float = 0.5,
    batch: bool = False,
    smooth: float = 1e-6,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Asymmetric Unified Focal loss ``λ L_aF + (1 - λ) L_aFT`` (Yeung et al. 2022), softmax over C classes.

    Class 0 is the background, every class ``c >= 1`` foreground (rare). With ``p = softmax(z)``::

        L_aF  = 1/|V| Σ_{i∈V} [ (1-δ) y_i0 (1 - p_i0)^γ (-log p_i0) + δ Σ_{c>=1} y_ic (-log p_ic) ]
        L_aFT = 1/C [ (1 - mTI_0) + Σ_{c>=1} (1 - mTI_c)^(1-γ) ]
        mTI_c = (TP_c + s) / (TP_c + δ FN_c + (1 - δ) FP_c + s)

    per sample (``V`` its valid pixels), then the mean over samples. The unreduced ``(N, C)`` term of
    class c is ``λ C A_c + (1 - λ) T_c``, with ``A_c`` class c's part of ``L_aF`` (its pixels' terms over
    ``|V|``) and ``T_c`` its ``L_aFT`` term, so the class mean is the sample's loss.

    **Special cases** (exact): ``γ = 0`` gives ``λ`` times :func:`~seglosses.functional.focal_loss` with
    ``gamma=0, alpha=[1-δ, δ, ..., δ]`` plus ``1 - λ`` times :func:`~seglosses.functional.tversky_loss`
    with ``alpha=1-δ, beta=δ``; with ``δ = 0.5`` as well, ``λ = 1`` is half the cross-entropy and
    ``λ = 0`` the Dice loss with ``smooth = 2s`` (the Combo-like mixture in between).

    **Conventions.** The paper writes ``L_aF`` as a sum over classes averaged over pixels (so does the
    authors' code) and ``L_aFT`` as a sum over classes, which the authors' code and MONAI average; here the
    class mean is used for ``L_aFT``, as for every region loss of this library. δ sits on false negatives
    in ``mTI`` as in the authors' code and MONAI (``δ > 0.5`` favours recall). MONAI's
    ``AsymmetricUnifiedFocalLoss`` (binary only) takes *probabilities* and averages ``L_aF`` over classes
    as well, i.e. halves it: ``MONAI(weight=w) = (1 - w/2) · L(lam = w / (2 - w))`` for two classes
    (``smooth = 1e-7``, its epsilon). A dense target counts every pixel as valid.
    """
    opts = UnifiedFocalOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        delta=delta, gamma=gamma, lam=lam, batch=batch, smooth=smooth,
        ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _unified_focal(logits, target, opts, binary=False)


def binary_unified_focal_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    delta: float = 0.6,
    gamma: float = 0.5,
    lam: float = 0.5,
    batch: bool = False,
    smooth: float = 1e-6,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Asymmetric Unified Focal loss per sigmoid channel (see :func:`unified_focal_loss`).

    Each channel is a two-class problem, foreground ``p = σ(z)`` with target ``y`` and background ``1 - p``
    with target ``1 - y``; its loss is the softmax form's for two classes::

        L_aF  = 1/|V| Σ_{i∈V} [ δ y_i (-log p_i) + (1-δ)(1 - y_i) p_i^γ (-log(1 - p_i)) ]
        L_aFT = [ (1 - mTI_bg) + (1 - mTI_fg)^(1-γ) ] / 2

    with ``mTI_fg`` from ``TP, FP, FN`` and ``mTI_bg`` from the background's ``(TN, FN, FP)``,
    ``TN = |V| - TP - FP - FN``. The unreduced ``(N, C)`` terms are the channels' losses; ``mean`` is their
    mean. Equal to :func:`unified_focal_loss` on the logits ``(0, z)`` of each channel.

    Relation to MONAI's ``AsymmetricUnifiedFocalLoss(weight=w, delta=δ, gamma=γ)`` on one channel: it takes
    the probabilities ``σ(z)`` (its docstring promises a sigmoid it does not apply), clamps them to
    ``[1e-7, 1 - 1e-7]``, and averages ``L_aF`` over the two classes as well as the pixels, half of the
    paper's (and the authors' code's) value, so that ``MONAI = (1 - w/2) · L(lam = w / (2 - w),
    smooth = 1e-7)``. Its ``ignore_index`` keeps the ignored pixels in ``L_aF``'s denominator and gives
    them an ``ε = 1e-7`` false positive each; here they are dropped.
    """
    opts = UnifiedFocalOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        delta=delta, gamma=gamma, lam=lam, batch=batch, smooth=smooth,
        ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _unified_focal(logits, target, opts, binary=True)


def _document(function: Any, binary: bool) -> None:
    if binary:
        target = "the logits' shape; bool, integer or float in ``[0, 1]``; ``p = sigmoid(z)`` per channel."
        ignore = "integer-target value whose elements count nowhere."
    else:
        target = "class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``; ``p = softmax(z)``."
        ignore = "index-target value whose pixels count nowhere."
    classes = "" if binary else ", ``C >= 2`` (class 0 the background)"
    function.__doc__ = (
        (function.__doc__ or "").rstrip()
        + "\n"
        + _SHARED_DOC.format(
            classes=classes,
            target=target,
            ignore=ignore,
            every=" (the same for every channel)" if binary else "",
            tn=" (``TN = Σ ω - TP - FP - FN``)" if binary else "",
        )
    )


_document(unified_focal_loss, binary=False)
_document(binary_unified_focal_loss, binary=True)

UnifiedFocalLoss, BinaryUnifiedFocalLoss = module_pair(
    "UnifiedFocal",
    unified_focal_loss,
    binary_unified_focal_loss,
    UnifiedFocalOptions,
    _unified_focal,
    PixelWeightedModule,
)

register(
    "unified_focal", UnifiedFocalLoss, domain="softmax", kind="region",
    description="asymmetric Unified Focal loss λ·aF + (1-λ)·aFT (Yeung et al. 2022)",
)  # fmt: skip
register(
    "binary_unified_focal", BinaryUnifiedFocalLoss, domain="binary", kind="region",
    description="asymmetric Unified Focal loss per sigmoid channel (Yeung et al. 2022)",
)  # fmt: skip

__all__ = [
    "BinaryUnifiedFocalLoss",
    "UnifiedFocalLoss",
    "binary_unified_focal_loss",
    "unified_focal_loss",
]
