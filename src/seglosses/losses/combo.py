"""Combo loss (Taghanaki et al. 2019): a β-weighted cross-entropy and Dice, softmax and sigmoid forms.

Per class ``c`` of one sample (or of the whole batch with ``batch=True``)::

    L_c    = α · mBCE_c + (1 - α) · (1 - Dice_c)
    mBCE_c = -(1 / |V|) Σ_{i∈V} [β y_ic log p_ic + (1 - β)(1 - y_ic) log(1 - p_ic)]

``Dice_c = (2 TP + s) / (2 TP + FP + FN + s)`` from the shared region statistics (so ``α = 0`` is
:func:`~seglosses.functional.dice_loss`), and ``β`` weights the error on the class's pixels (false
negatives) against that on the others (false positives). The paper writes ``α · mBCE - (1 - α) · DSC``,
whose minimum is ``-(1 - α)``; this is the same loss shifted by the constant ``1 - α`` (the same
gradients), so that a perfect prediction gives 0 as every loss here does.

The softmax form applies the binary (one-vs-rest) terms to each class's softmax probability, as the
authors' code applies them to every output channel: ``log p_c`` is ``log_softmax`` and ``log(1 - p_c)``
is computed in log space (:func:`log_one_minus_softmax`), finite for saturated logits.

**Weight maps and masks.** ``weight_map`` ``ω`` ``(N, *S)`` weights every sum over pixels: Dice's
``TP = Σ ω p y``, ``FP = Σ ω p (1 - y)``, ``FN = Σ ω (1 - p) y`` and the cross-entropy's weighted mean
``Σ ω · terms / Σ ω`` over the valid pixels; ``mask`` is ``ignore_index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._core.numerics import binary_log_terms, compute_dtype
from .._core.options import ClassValues, Reduction, check_number
from .._core.pixel_weights import PixelWeights, pixel_inputs, pixel_weights
from .._core.registry import register
from .._core.stats import (
    Overlap,
    class_labels,
    sigmoid_overlap_from_dense,
    softmax_overlap_from_dense,
    softmax_overlap_from_index,
    valid_weights,
)
from .._core.targets import IndexTarget, check_binary_target, input_checks_enabled, softmax_target
from ..distributed import ProcessGroup
from .base import PixelWeightedModule, module_pair
from .overlap import RegionOptions, dice_score, region_loss
from .sensitivity import label_sums, without_target_class


class ComboStats(NamedTuple):
    """The overlap statistics, the summed cross-entropy terms and the valid pixels, each ``(N, C)`` (``(C,)``
    after :meth:`pooled`)."""

    tp: Tensor
    fp: Tensor
    fn: Tensor
    ce: Tensor  # Σ_{i∈V} -[β y log p + (1 - β)(1 - y) log(1 - p)]
    valid: Tensor  # |V|

    def pooled(self) -> "ComboStats":
        """Sum over the batch: ``(N, C) -> (C,)``."""
        return ComboStats(*(t.sum(0) for t in self))

    def select(self, start: int) -> "ComboStats":
        """Keep classes ``start:``."""
        return ComboStats(*(t[..., start:] for t in self))


_MAJOR = -0.5  # log p above it: p > e^(-1/2) ≈ 0.61, at most one class per pixel (whatever the rounding)


def log_one_minus_softmax(log_p: Tensor, floor: float = -math.inf) -> Tensor:
    """``log(1 - p_c)`` ``(N, C, ...)`` from ``log p = log_softmax(z)`` over dim 1, in log space.

    A class with ``p_c ≤ e^(-1/2)`` takes ``log1p(-p_c)`` (``1 - p_c ≥ 0.39``: no cancellation); the one
    class above it (if any) takes ``log Σ_{k≠c} p_k``, a ``logsumexp`` of the other classes' ``log p``,
    which stays exact where ``1 - p_c`` is below the dtype's resolution (``-200`` for logits ``(100, -100)``,
    not ``-inf``). Where every other logit is ``-inf`` (``p_c = 1`` exactly) it is ``floor`` (``-inf`` by
    default) with a zero gradient: the caller weights it 0, or the loss is infinite."""
    major = log_p > _MAJOR
    others = log_p.masked_fill(major, -math.inf)
    dead = torch.isneginf(others).all(1, keepdim=True)  # logsumexp's backward would be NaN there
    rest = others.masked_fill(dead, 0.0).logsumexp(1, keepdim=True).masked_fill(dead, floor)
    minor = torch.log1p(-torch.exp(log_p.clamp_max(_MAJOR)))
    return torch.where(major, rest, minor)


def _weighted(beta: float, positive: Tensor, negative: Tensor) -> Tensor:
    """``-(β positive + (1 - β) negative)``."""
    return -(beta * positive + (1 - beta) * negative)


def _index_ce(
    logits: Tensor, prepared: IndexTarget, beta: float, omega: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """``(Σ_{i∈V} mBCE terms, |V|)`` ``(N, C)``, ``(N, 1)`` for an index target, without a one-hot tensor:
    ``log p`` at each pixel's target class is summed by label, and ``log(1 - p_c)`` over the pixels of
    other classes is the logits-sized ``log(1 - p)`` with the target class's entries taken out exactly.
    With ``omega`` ``(N, *S)``: ``(Σ ω · terms, Σ ω)`` over the valid pixels."""
    dtype = compute_dtype(logits)
    log_p = torch.log_softmax(prepared.clean(logits).to(dtype), dim=1).flatten(2)  # finite where ignored
    index, c, valid = class_labels(prepared.labels, prepared.valid), log_p.shape[1], prepared.valid
    # the floor keeps log(1 - p_t) = -inf (p_t = 1 exactly) finite for the exact take-out, which drops it
    log_q = without_target_class(log_one_minus_softmax(log_p, torch.finfo(dtype).min), index)
    log_p_true = log_p.gather(1, index.unsqueeze(1)).squeeze(1)
    if omega is not None:  # ω, 0 at ignored pixels (whose terms are finite: their logits were cleaned)
        keep = omega.flatten(1) if valid is None else valid_weights(valid, dtype) * omega.flatten(1)
        positive = label_sums(index, log_p_true * keep, c)
        negative = torch.bmm(log_q, keep.unsqueeze(-1)).squeeze(-1)  # Σ_i ω_i log(1 - p_ic), y_i ≠ c
        return _weighted(beta, positive, negative), keep.sum(-1, keepdim=True)
    if valid is None:
        positive = label_sums(index, log_p_true, c)  # Σ_{y=c} log p_c
        negative = log_q.sum(-1)  # Σ_{y≠c} log(1 - p_c)
        return _weighted(beta, positive, negative), torch.full_like(positive[:, :1], index.shape[1])
    mask = valid.flatten(1)  # where, not a product: the masked temporary is not kept for the backward
    positive = label_sums(index, torch.where(mask, log_p_true, 0.0), c)
    negative = torch.where(mask.unsqueeze(1), log_q, 0.0).sum(-1)
    return _weighted(beta, positive, negative), valid_weights(valid, dtype).sum(-1, keepdim=True)


def _dense_ce(
    log_p: Tensor, log_q: Tensor, target: Tensor, beta: float, omega: Optional[Tensor] = None
) -> Tensor:
    """``Σ_i -[β y log p + (1 - β)(1 - y) log(1 - p)]`` ``(N, C)`` (each pixel's terms times ``ω_i`` with
    ``omega`` ``(N, *S)``); a log is replaced by 0 where its weight is 0, so ``0 · (-inf)`` is 0 (a legal
    ``-inf`` logit), never NaN."""
    y = target.to(log_p.dtype)
    positive = y * torch.where(y > 0, log_p, 0.0)
    negative = (1 - y) * torch.where(y < 1, log_q, 0.0)
    terms = _weighted(beta, positive, negative).flatten(2)
    if omega is None:
        return terms.sum(-1)
    w = omega.flatten(1).unsqueeze(-1).to(terms.dtype)
    return torch.bmm(torch.where(w.transpose(1, 2) > 0, terms, 0.0), w).squeeze(-1)


def _softmax_stats(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    opts: ComboOptions,
    pixels: Optional[PixelWeights] = None,
) -> ComboStats:
    """:class:`ComboStats` of ``p = softmax(z)``: the shared overlap statistics (unless ``α = 1``) and the
    cross-entropy's sums (unless ``α = 0``), weighted by the weight map and mask ``pixels`` when given."""
    logits, target, ignore_index, omega = pixel_inputs(logits, target, ignore_index, pixels, binary=False)
    soft = softmax_target(logits, target, ignore_index, log_terms=opts.alpha > 0)
    dtype = compute_dtype(logits)
    zeros = logits.new_zeros(logits.shape[:2], dtype=dtype)
    s = Overlap(zeros, zeros, zeros)
    ce, count = zeros, zeros[:, :1]
    if isinstance(soft, IndexTarget):
        if opts.alpha < 1:
            s = softmax_overlap_from_index(
                logits, soft.labels, soft.valid, soft.ignore_index, soft, weight=omega
            )
        if opts.alpha > 0:
            ce, count = _index_ce(logits, soft, opts.beta, omega)
    else:
        dense_omega = None if omega is None else omega.unsqueeze(1)
        if opts.alpha < 1:
            s = softmax_overlap_from_dense(logits, soft.dense, weight=dense_omega)
        if opts.alpha > 0:
            log_p = torch.log_softmax(logits.to(dtype), dim=1)
            ce = _dense_ce(log_p, log_one_minus_softmax(log_p), soft.dense, opts.beta, omega)
            if omega is None:
                count = count + math.prod(logits.shape[2:])
            else:
                count = omega.flatten(1).sum(-1, keepdim=True)
    return ComboStats(*s, ce, count.expand_as(ce))


def _binary_stats(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    opts: ComboOptions,
    pixels: Optional[PixelWeights] = None,
) -> ComboStats:
    """:class:`ComboStats` of ``p = σ(z)`` per channel (see :func:`_softmax_stats`)."""
    logits, target, ignore_index, omega = pixel_inputs(logits, target, ignore_index, pixels, binary=True)
    checks = input_checks_enabled()  # read once: the checks and the statistics' shortcut rely on one answer
    valid = check_binary_target(logits, target, ignore_index, checks=checks, log_terms=opts.alpha > 0)
    dtype = compute_dtype(logits)
    zeros = logits.new_zeros(logits.shape[:2], dtype=dtype)
    dense_omega = None if omega is None else omega.unsqueeze(1)  # every channel
    s = Overlap(zeros, zeros, zeros)
    if opts.alpha < 1:
        s = sigmoid_overlap_from_dense(logits, target, valid, finite=checks, weight=dense_omega)
    if opts.alpha == 0:
        return ComboStats(*s, zeros, zeros)
    y, clean = target.to(dtype), logits.to(dtype)
    if valid is not None:  # ignored elements: target 0 and logit 0 (a NaN there reaches nothing), dropped
        y, clean = y.masked_fill(~valid, 0), clean.masked_fill(~valid, 0.0)
    terms = _weighted(opts.beta, *binary_log_terms(clean, y))
    if dense_omega is not None:  # ω, 0 at ignored elements (whose terms are finite)
        w = dense_omega.expand_as(terms) if valid is None else torch.where(valid, dense_omega, 0.0)
        ce = torch.where(w > 0, terms, 0.0).mul(w).flatten(2).sum(-1)
        return ComboStats(*s, ce, w.flatten(2).sum(-1))
    if valid is None:
        return ComboStats(*s, terms.flatten(2).sum(-1), zeros + math.prod(logits.shape[2:]))
    ce = torch.where(valid, terms, 0.0).flatten(2).sum(-1)
    return ComboStats(*s, ce, valid.flatten(2).sum(-1, dtype=dtype))


@dataclass(frozen=True, kw_only=True, eq=False)
class ComboOptions(RegionOptions):
    """Region options plus ``alpha`` (the cross-entropy's share) and ``beta`` (the positive term's
    weight), each in ``[0, 1]``."""

    alpha: float
    beta: float

    def checked(self) -> Dict[str, Any]:
        alpha = check_number("alpha (the cross-entropy's share)", self.alpha, low=0.0, high=1.0)
        beta = check_number("beta (the weight of the positive term)", self.beta, low=0.0, high=1.0)
        return {**super().checked(), "alpha": alpha, "beta": beta}


def _combo(logits: Tensor, target: Tensor, opts: ComboOptions, binary: bool) -> Tensor:
    def statistics(logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool) -> ComboStats:
        compute = _binary_stats if binary else _softmax_stats
        return compute(logits, target, ignore_index, opts, opts.pixel_weights)

    def per_class(s: ComboStats, _: Dict[str, Optional[Tensor]]) -> Tensor:
        ce = torch.where(s.valid > 0, s.ce / s.valid.clamp_min(1), 0.0)  # the mean over valid pixels
        if opts.alpha == 1:
            return ce
        dice = 1 - dice_score(Overlap(s.tp, s.fp, s.fn), opts.smooth)
        return dice if opts.alpha == 0 else opts.alpha * ce + (1 - opts.alpha) * dice

    return region_loss(logits, target, opts, binary, per_class, statistics=statistics)


_ARGS = """
    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: {target}
        weight_map: ``ω`` ``(N, *S)``, non-negative per-pixel weights (the same for every {channel}): Dice's
            statistics ``TP = Σ ω p y``, ``FP = Σ ω p (1 - y)``, ``FN = Σ ω (1 - p) y`` and the
            cross-entropy's weighted mean ``Σ ω · terms / Σ ω`` over the valid pixels; an integer ``ω``
            counts the pixel ``ω`` times.
        mask: ``(N, *S)`` bool, True where a pixel counts: ``ignore_index`` at the others (a soft target's
            masked pixels count nowhere either).
        alpha: ``α`` in ``[0, 1]``, the cross-entropy's share (``1 - α`` the Dice loss's).
        beta: ``β`` in ``[0, 1]``, the weight of the positive term ``y log p`` (``1 - β`` that of
            ``(1 - y) log(1 - p)``): above 0.5 false negatives cost more, below 0.5
            false positives.{background}
        batch: pool the statistics over the batch (Dice's TP / FP / FN, the cross-entropy's sum and pixel
            count): one loss per class.
        smooth: ``s >= 0`` added to Dice's numerator and denominator.
        weight: per-class weights ``(C,)`` of the class mean.
        ignore_index: target value whose pixels count nowhere (the cross-entropy averages over the others).
        sync: with ``batch=True``, sum the statistics over the processes of ``process_group`` first.
        process_group: the ``torch.distributed`` group for ``sync``.
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``), multiplied by ``weight``;
            ``sum`` -> its sum; ``mean`` -> the (weighted) class mean averaged over samples.

    Raises:
        SegLossError: bad shapes, dtypes, target values or options (``alpha`` or ``beta`` outside
            ``[0, 1]``); with the input checks on, a ``-inf`` logit where the target has mass (its
            ``log p`` is ``-inf``).
"""


def combo_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Combo loss per class (Taghanaki et al. 2019), averaged over classes.

    ``L_c = α · mBCE_c + (1 - α) · (1 - Dice_c)``, with ``p = softmax(z)`` and the modified cross-entropy
    ``mBCE_c = -mean_{i∈V} [β y_ic log p_ic + (1 - β)(1 - y_ic) log(1 - p_ic)]``, the one-vs-rest binary
    terms of each class's softmax probability (the authors' code applies them to every output channel;
    the softmax cross-entropy has no ``(1 - y) log(1 - p)`` term for ``β`` to weigh). ``Dice_c`` is that
    of :func:`~seglosses.functional.dice_loss` with the same ``smooth``.

    **Shifted by a constant.** The paper's loss is ``α · mBCE - (1 - α) · DSC``, with minimum ``-(1 - α)``;
    this one adds ``1 - α`` (gradients unchanged), so a perfect prediction gives 0. ``α = 1`` is the
    weighted cross-entropy alone (with ``β = 0.5``, half the one-vs-rest binary cross-entropy), ``α = 0``
    the Dice loss. Defaults ``α = β = 0.5``, the authors' code's.

    **The authors' code differs** from the paper's formula: it multiplies both terms by ``β``
    (``-β [y log p + (1 - β)(1 - y) log(1 - p)]``), clips ``p`` to ``[1e-7, 1 - 1e-7]``, and computes one
    Dice over all channels flattened with ``s = 1``. Here the paper's formula holds, from the logits in log
    space (no clipping), and both terms are per class, then the class mean, as for every region loss.
    """
    opts = ComboOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, beta=beta, include_background=include_background, batch=batch, smooth=smooth,
        weight=weight, ignore_index=ignore_index, reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _combo(logits, target, opts, binary=False)


def binary_combo_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Combo loss per sigmoid channel (see :func:`combo_loss`), ``p = σ(z)``: ``α = 0`` is
    :func:`~seglosses.functional.binary_dice_loss`, ``α = 1, β = 0.5`` half the binary cross-entropy."""
    opts = ComboOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, beta=beta, batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index,
        reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _combo(logits, target, opts, binary=True)


combo_loss.__doc__ = (
    (combo_loss.__doc__ or "").rstrip()
    + "\n"
    + _ARGS.format(
        target="class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.",
        channel="class",
        background="\n        include_background: keep class 0.",
    )
)
binary_combo_loss.__doc__ = (
    (binary_combo_loss.__doc__ or "").rstrip()
    + "\n"
    + _ARGS.format(
        target="the logits' shape; bool, integer or float in ``[0, 1]``.", channel="channel", background=""
    )
)

ComboLoss, BinaryComboLoss = module_pair(
    "Combo", combo_loss, binary_combo_loss, ComboOptions, _combo, PixelWeightedModule
)

register(
    "combo",
    ComboLoss,
    domain="softmax",
    description="combo loss: β-weighted CE and Dice per class (Taghanaki et al. 2019)",
    kind="region",
)
register(
    "binary_combo",
    BinaryComboLoss,
    domain="binary",
    description="combo loss per sigmoid channel (Taghanaki et al. 2019)",
    kind="region",
)

__all__ = [
    "BinaryComboLoss",
    "ComboLoss",
    "ComboOptions",
    "binary_combo_loss",
    "combo_loss",
    "log_one_minus_softmax",
]
