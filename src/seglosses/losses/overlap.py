"""Overlap (region) losses: Dice, Jaccard, Tversky, focal Tversky, generalised Dice (SPEC section 3).

Every loss here is built from the per-class statistics of :mod:`seglosses._core.stats` over the valid
pixels of one sample (or of the whole batch with ``batch=True``)::

    TP_c = Σ p y     FP_c = Σ p (1 - y)     FN_c = Σ (1 - p) y

Options shared by all: ``include_background`` (softmax losses: keep class 0), ``batch`` (pool the
statistics over the batch), ``smooth`` (``s``, added to numerator and denominator), ``weight`` (per-class
weights of the class mean), ``ignore_index`` and ``reduction`` (``none`` -> ``(N, C)``, or ``(C,)`` with
``batch=True``; see :mod:`seglosses._core.reduction`).

**Empty classes.** A class absent from the target and the prediction is a perfect match (loss 0); a class
absent from the target but predicted is a full miss (loss 1, up to ``s``). The rule applies where a
denominator is exactly 0 (only possible with ``s = 0``), so a NaN input stays NaN. Every class enters the
class mean, absent ones included (with the loss above), so that the loss is continuous in the prediction.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Protocol, Tuple, TypeVar, Union, cast

import torch
from torch import Tensor

from .._core.errors import expected
from .._core.numerics import compute_dtype, safe_divide, safe_pow
from .._core.options import (
    ClassValues,
    Options,
    Reduction,
    call_input,
    check_bool,
    check_ignore_index,
    check_number,
    check_reduction,
    class_tensor,
    class_values,
)
from .._core.pixel_weights import PixelWeights, pixel_weights
from .._core.reduction import reduce_region
from .._core.registry import register
from .._core.stats import (
    Confusion,
    Overlap,
    sigmoid_overlap_from_dense,
    softmax_overlap_from_dense,
    softmax_overlap_from_index,
)
from .._core.targets import (
    IndexTarget,
    _valid_mask,
    check_binary_target,
    input_checks_enabled,
    softmax_target,
)
from ..distributed import ProcessGroup, all_reduce_sum, check_process_group
from .base import PixelWeightedModule, module_pair


def _ratio(num: Tensor, den: Tensor, smooth: float) -> Tensor:
    """A score ``num / den`` whose denominator holds ``s = smooth``: 1 (a perfect match) where
    ``den == 0`` exactly, i.e. both sets empty with ``s = 0``. With ``s`` at least the smallest normal
    number the denominator is at least ``s`` (the statistics are non-negative), so a plain division
    has bounded gradients; smaller ``s`` takes :func:`safe_divide`."""
    if smooth >= torch.finfo(den.dtype).tiny:
        return num / den
    return safe_divide(num, den, 1.0)


def dice_score(s: Overlap, smooth: float) -> Tensor:
    """``(2 TP + s) / (2 TP + FP + FN + s)``."""
    return _ratio(2 * s.tp + smooth, 2 * s.tp + s.fp + s.fn + smooth, smooth)


def jaccard_score(s: Overlap, smooth: float) -> Tensor:
    """``(TP + s) / (TP + FP + FN + s)``."""
    return _ratio(s.tp + smooth, s.tp + s.fp + s.fn + smooth, smooth)


def tversky_score(s: Overlap, smooth: float, alpha: float, beta: float) -> Tensor:
    """``(TP + s) / (TP + α FP + β FN + s)``."""
    return _ratio(s.tp + smooth, s.tp + alpha * s.fp + beta * s.fn + smooth, smooth)


def score_loss(score: Tensor, log_loss: bool) -> Tensor:
    """``1 - score``, or ``-log(score)`` with ``log_loss`` (smp's option; with ``s > 0`` every score is
    positive, and one that rounds to 0 counts as the dtype's smallest normal number, a finite loss)."""
    if not log_loss:
        return 1 - score
    return -score.clamp_min(torch.finfo(score.dtype).tiny).log()


def _overlap(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    binary: bool,
    *,
    squared: bool = False,
    soft_label: bool = False,
    pixels: Optional[PixelWeights] = None,
) -> Overlap:
    """Statistics ``(N, C)`` from logits: softmax over classes, or sigmoid per channel for ``binary``; in
    the plain, ``squared`` or ``soft_label`` form (:mod:`seglosses._core.stats`), with a weight map and
    a mask (``pixels``) when given."""
    weight = None if pixels is None else pixels.weight
    if binary:  # the target as given: the statistics convert it a part at a time
        checks = input_checks_enabled()  # read once: the checks below and the shortcut rely on one answer
        valid = check_binary_target(logits, target, ignore_index, checks=checks)  # checked: no NaN, no +inf
        if pixels is not None:
            valid = pixels.dense_valid(valid, logits.shape)
            weight = pixels.dense_weight()
        return sigmoid_overlap_from_dense(
            logits, target, valid, finite=checks, squared=squared, soft_label=soft_label, weight=weight
        )
    # the Triton kernel of the plain form may count the data checks; the other forms do not call it
    plain = not squared and pixels is None
    soft = softmax_target(logits, target, ignore_index, kernel_checks=plain)
    if isinstance(soft, IndexTarget):  # a hard target: soft_label is the plain form
        valid = soft.valid if pixels is None else pixels.index_valid(soft.valid)
        return softmax_overlap_from_index(
            logits, soft.labels, valid, soft.ignore_index, soft, squared=squared, weight=weight
        )
    mask = None if pixels is None or pixels.mask is None else pixels.mask.unsqueeze(1)
    return softmax_overlap_from_dense(
        logits, soft.dense, squared=squared, soft_label=soft_label, valid=mask,
        weight=None if pixels is None else pixels.dense_weight(),
    )  # fmt: skip


_S = TypeVar("_S", bound="Stats")


class Stats(Protocol):
    """What :func:`region_loss` needs of a loss's statistics: a named tuple of ``(N, C)`` tensors
    (:class:`~seglosses._core.stats.Overlap`, :class:`~seglosses._core.stats.Confusion`, a loss's own)
    with ``tp`` (or another ``(N, C)`` tensor under that name: it gives the class count), the batch sum
    ``pooled()`` and the class cut ``select(start)``."""

    @property
    def tp(self) -> Tensor: ...

    def pooled(self: _S) -> _S: ...

    def select(self: _S, start: int) -> _S: ...

    def __iter__(self) -> Iterator[Tensor]: ...


PerClass = Callable[[Any, Dict[str, Optional[Tensor]]], Tensor]  # (Overlap or Confusion, class options)
Statistics = Callable[[Tensor, Tensor, Optional[int], bool], Stats]


def region_loss(
    logits: Tensor,
    target: Tensor,
    opts: RegionOptions,
    binary: bool,
    per_class: PerClass,
    class_options: Tuple[str, ...] = (),
    weight_in_reduction: bool = True,
    statistics: Optional[Statistics] = None,
) -> Tensor:
    """Prepare -> statistics -> per-class loss -> reduce, shared by every region loss.

    ``per_class(stats, tensors)`` gets the statistics and the per-class options named in
    ``class_options`` (and ``weight``), already checked against C and cut to the kept classes.
    ``statistics(logits, target, ignore_index, binary)`` gives the ``(N, C)`` overlap (default: of the
    probabilities, in the form ``opts.squared`` / ``opts.soft_label`` ask for; the boundary-IoU loss
    passes that of their boundary bands).
    """
    if statistics is None:
        stats: Stats = _overlap(
            logits, target, opts.ignore_index, binary, squared=opts.squared, soft_label=opts.soft_label,
            pixels=opts.pixel_weights,
        )  # fmt: skip
    else:  # statistics of a loss's own: they apply opts.pixel_weights if its function takes a weight map
        stats = statistics(logits, target, opts.ignore_index, binary)
    names = ("weight", *class_options)
    tensors = {name: class_tensor(getattr(opts, name), stats.tp, name) for name in names}
    if not binary and not opts.include_background:
        stats = stats.select(1)
        tensors = {k: v[1:] if v is not None and v.ndim == 1 else v for k, v in tensors.items()}
    if opts.batch:
        stats = stats.pooled()
    if opts.sync:  # one all-reduce of (TP, FP, FN); its backward sums the gradients over ranks
        stats = cast(Any, type(stats))(
            *all_reduce_sum(torch.stack(list(stats)), opts.process_group).unbind(0)
        )
    weight = tensors["weight"] if weight_in_reduction else None
    return reduce_region(per_class(stats, tensors), opts.reduction, weight)


@dataclass(frozen=True, kw_only=True, eq=False)
class RegionOptions(Options):
    """The options every region loss shares (see the module docstring); binary losses keep class 0."""

    include_background: bool = True
    batch: bool
    smooth: float
    weight: Optional[ClassValues]
    ignore_index: Optional[int]
    reduction: str
    sync: bool = False
    process_group: Optional[ProcessGroup] = None
    soft_label: bool = False  # the statistics' forms and -log(score): only the losses that take them
    squared: bool = False
    log_loss: bool = False
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        if check_bool("sync", self.sync) and not self.batch:
            raise expected(
                "batch=True with sync=True (only pooled statistics are summed over processes)", True
            )
        if check_bool("log_loss", self.log_loss) and self.smooth == 0:
            raise expected(
                "smooth > 0 with log_loss=True (-log(score) is infinite where a score is 0; the default "
                "smooth=1e-5 keeps every score positive)",
                self.smooth,
            )
        return {
            "soft_label": check_bool("soft_label", self.soft_label),
            "squared": check_bool("squared", self.squared),
            "include_background": check_bool("include_background", self.include_background),
            "batch": check_bool("batch", self.batch),
            "process_group": check_process_group(self.process_group),
            "smooth": check_number("smooth", self.smooth, low=0.0),
            "weight": class_values("weight", self.weight, allow_scalar=False),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


@dataclass(frozen=True, kw_only=True, eq=False)
class TverskyOptions(RegionOptions):
    """Region options plus the Tversky weights: ``alpha`` on FP, ``beta`` on FN."""

    alpha: float
    beta: float

    def checked(self) -> Dict[str, Any]:
        alpha, beta = check_number("alpha", self.alpha, low=0.0), check_number("beta", self.beta, low=0.0)
        if alpha + beta == 0:
            raise expected(
                "alpha + beta > 0 (with both 0 the index is 1 whatever the prediction)", (alpha, beta)
            )
        return {**super().checked(), "alpha": alpha, "beta": beta}


@dataclass(frozen=True, kw_only=True, eq=False)
class FocalTverskyOptions(TverskyOptions):
    """Tversky options plus the focal exponent ``gamma`` (a scalar or one per class, ``> 0``)."""

    gamma: Union[float, ClassValues]

    def checked(self) -> Dict[str, Any]:
        gamma = class_values("gamma", self.gamma, low=0.0, low_open=True)  # γ = 0: constant loss 1
        return {**super().checked(), "gamma": gamma}


# --- Dice --------------------------------------------------------------------------------------------

_SHARED_DOC = """
    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: {target}{background}
        batch: pool TP / FP / FN over the batch: one loss per class.
        smooth: ``s >= 0`` added to numerator and denominator.{forms}
        weight: per-class weights ``(C,)`` of the class mean.
        ignore_index: target value whose pixels count nowhere.
        sync: with ``batch=True``, sum TP / FP / FN over the processes of ``process_group`` (default:
            the default group) before the ratio, so every rank returns the global loss; a no-op outside a
            process group. Every rank must call the loss, with an empty shard too.
        process_group: the ``torch.distributed`` group for ``sync``.
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``), multiplied by ``weight``;
            ``sum`` -> its sum; ``mean`` -> its sum over ``N · Σ_c w_c`` (``N · C`` without weights),
            the (weighted) class mean averaged over samples.
"""
_FORMS_DOC = """
        soft_label: ``TP = (Σ p + Σ y - Σ |p - y|) / 2``, ``FP = Σ p - TP``, ``FN = Σ y - TP``: for a soft
            target the loss is then smallest at ``p = y`` (Wang & Blaschko 2023; MONAI's ``soft_label``,
            smp's form); the same numbers for a hard target.
        squared: the V-Net denominator (Milletari et al. 2016): ``FP = Σ p² - TP``, ``FN = Σ y² - TP``, so
            Dice is ``(2 TP + s) / (Σ p² + Σ y² + s)`` (MONAI's ``squared_pred``); ``soft_label`` is moot.
        log_loss: ``-log(score)`` instead of ``1 - score`` per class (smp's ``log_loss``); needs ``s > 0``.
            These three forms compute in plain torch, not the fused kernels of the default form."""
_SOFTMAX_TARGET = "class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``; ``p = softmax(z)``."
_BINARY_TARGET = "the logits' shape; bool, integer or float in ``[0, 1]``; ``p = sigmoid(z)`` per channel."


def _document(function: Callable[..., Tensor], binary: bool) -> Callable[..., Tensor]:
    background = "" if binary else "\n        include_background: keep class 0."
    forms = _FORMS_DOC if "log_loss" in inspect.signature(function).parameters else ""
    target = _BINARY_TARGET if binary else _SOFTMAX_TARGET
    function.__doc__ = (
        (function.__doc__ or "").rstrip()
        + "\n"
        + _SHARED_DOC.format(target=target, background=background, forms=forms)
    )
    return function


def _dice(logits: Tensor, target: Tensor, opts: RegionOptions, binary: bool) -> Tensor:
    return region_loss(
        logits, target, opts, binary, lambda s, _: score_loss(dice_score(s, opts.smooth), opts.log_loss)
    )


def dice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Soft Dice loss ``1 - (2 TP + s) / (2 TP + FP + FN + s)`` per class, averaged over classes (macro).

    **Erratum** (document section 3.1.3): the document's gradient is not the derivative of its own loss.
    With ``I = Σ y p``, ``U = Σ y + Σ p`` (one class), ``∂L/∂p_i = -(2 y_i (U + s) - (2 I + s)) / (U + s)^2``.
    """
    opts = RegionOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        include_background=include_background, batch=batch, smooth=smooth, soft_label=soft_label,
        squared=squared, log_loss=log_loss, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _dice(logits, target, opts, binary=False)


def binary_dice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Soft Dice loss per sigmoid channel, ``1 - (2 TP + s) / (2 TP + FP + FN + s)``, channel mean."""
    opts = RegionOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        batch=batch, smooth=smooth, soft_label=soft_label, squared=squared, log_loss=log_loss,
        weight=weight, ignore_index=ignore_index, reduction=reduction, sync=sync,
        process_group=process_group,
    )  # fmt: skip
    return _dice(logits, target, opts, binary=True)


# --- Jaccard -----------------------------------------------------------------------------------------


def _jaccard(logits: Tensor, target: Tensor, opts: RegionOptions, binary: bool) -> Tensor:
    return region_loss(
        logits, target, opts, binary, lambda s, _: score_loss(jaccard_score(s, opts.smooth), opts.log_loss)
    )


def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Soft Jaccard (IoU) loss ``1 - (TP + s) / (TP + FP + FN + s)`` per class, averaged over classes.

    For ``s = 0``, ``Dice = 2 IoU / (1 + IoU)`` class by class.
    """
    opts = RegionOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        include_background=include_background, batch=batch, smooth=smooth, soft_label=soft_label,
        squared=squared, log_loss=log_loss, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _jaccard(logits, target, opts, binary=False)


def binary_jaccard_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Soft Jaccard (IoU) loss per sigmoid channel, ``1 - (TP + s) / (TP + FP + FN + s)``."""
    opts = RegionOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        batch=batch, smooth=smooth, soft_label=soft_label, squared=squared, log_loss=log_loss,
        weight=weight, ignore_index=ignore_index, reduction=reduction, sync=sync,
        process_group=process_group,
    )  # fmt: skip
    return _jaccard(logits, target, opts, binary=True)


# --- Tversky -----------------------------------------------------------------------------------------


def _tversky(logits: Tensor, target: Tensor, opts: TverskyOptions, binary: bool) -> Tensor:
    def per_class(s: Overlap, _: Dict[str, Optional[Tensor]]) -> Tensor:
        return score_loss(tversky_score(s, opts.smooth, opts.alpha, opts.beta), opts.log_loss)

    return region_loss(logits, target, opts, binary, per_class)


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Tversky loss ``1 - (TP + s) / (TP + α FP + β FN + s)`` per class (Salehi et al. 2017).

    ``alpha`` weights false positives, ``beta`` false negatives (defaults 0.3 / 0.7, the paper's best);
    ``α = β = 0.5`` is Dice (with ``s`` halved), ``α = β = 1`` is Jaccard. The design document writes the
    index with the letters swapped (section 2.3.2); its ``α, β`` are this function's ``beta, alpha``.
    """
    opts = TverskyOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, beta=beta, include_background=include_background, batch=batch, smooth=smooth,
        soft_label=soft_label, squared=squared, log_loss=log_loss, weight=weight, ignore_index=ignore_index,
        reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _tversky(logits, target, opts, binary=False)


def binary_tversky_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Tversky loss per sigmoid channel, ``1 - (TP + s) / (TP + α FP + β FN + s)`` (α on FP, β on FN)."""
    opts = TverskyOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, beta=beta, batch=batch, smooth=smooth, soft_label=soft_label, squared=squared,
        log_loss=log_loss, weight=weight, ignore_index=ignore_index, reduction=reduction, sync=sync,
        process_group=process_group,
    )  # fmt: skip
    return _tversky(logits, target, opts, binary=True)


# --- Focal Tversky -----------------------------------------------------------------------------------


def _focal_tversky(logits: Tensor, target: Tensor, opts: FocalTverskyOptions, binary: bool) -> Tensor:
    def per_class(s: Overlap, tensors: Dict[str, Optional[Tensor]]) -> Tensor:
        index = tversky_score(s, opts.smooth, opts.alpha, opts.beta)
        gamma = tensors["gamma"]
        assert gamma is not None  # a required option, checked by FocalTverskyOptions
        loss = score_loss(index, opts.log_loss).clamp_min(0)  # rounding can push TI a hair past 1
        return safe_pow(loss, gamma)

    return region_loss(logits, target, opts, binary, per_class, class_options=("gamma",))


def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: Union[float, ClassValues] = 0.75,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Focal Tversky loss ``(1 - TI_c)^γ`` per class, then the class mean (Abraham & Khan 2019).

    ``TI_c`` is the Tversky index of :func:`tversky_loss` (α on FP, β on FN). ``gamma`` is the exponent
    itself, a scalar or one per class: the paper writes ``(1 - TI)^(1/γ)`` with ``γ = 4/3``, which is
    ``gamma = 0.75`` here (the default). The power's gradient, infinite at ``TI = 1`` for ``γ < 1``, is
    taken as 0 there.
    """
    opts = FocalTverskyOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, beta=beta, gamma=gamma, include_background=include_background, batch=batch,
        smooth=smooth, soft_label=soft_label, squared=squared, log_loss=log_loss, weight=weight,
        ignore_index=ignore_index, reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _focal_tversky(logits, target, opts, binary=False)


def binary_focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: Union[float, ClassValues] = 0.75,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Focal Tversky loss ``(1 - TI_c)^γ`` per sigmoid channel (see :func:`focal_tversky_loss`)."""
    opts = FocalTverskyOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, beta=beta, gamma=gamma, batch=batch, smooth=smooth, soft_label=soft_label,
        squared=squared, log_loss=log_loss, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _focal_tversky(logits, target, opts, binary=True)


# --- Generalised Dice --------------------------------------------------------------------------------


def _gdl_terms(s: Overlap, weight: Optional[Tensor], smooth: float) -> Tensor:
    """The generalised Dice loss split into class terms ``(N, C)`` whose class mean is the sample's loss."""
    volume = s.tp + s.fn  # Σ y_c
    present = volume > 0
    rarest = torch.where(present, volume, torch.inf).amin(-1, keepdim=True)
    rarest = torch.where(torch.isinf(rarest), 1.0, rarest)
    # Sudre's 1 / (Σ y_c)^2, scaled so the rarest present class has weight 1 (the ratio is unchanged);
    # absent classes get that largest weight, as MONAI does, so predicting them is penalised.
    w = torch.where(present, (rarest / torch.where(present, volume, 1.0)) ** 2, 1.0).detach()
    if weight is not None:
        w = w * weight
    den = (w * (2 * s.tp + s.fp + s.fn)).sum(-1, keepdim=True) + smooth
    return safe_divide(s.tp.shape[-1] * w * (s.fp + s.fn), den, 0.0)


def _generalized_dice(logits: Tensor, target: Tensor, opts: RegionOptions, binary: bool) -> Tensor:
    def per_class(s: Overlap, tensors: Dict[str, Optional[Tensor]]) -> Tensor:
        terms = _gdl_terms(s, tensors["weight"], opts.smooth)
        if not opts.log_loss:
            return terms
        # -log(score) = -log(1 - L): the class terms scaled by -log(1 - L) / L (1 at L = 0); L that
        # rounds to 1 (a score below the dtype's eps) counts as 1 - eps
        loss = terms.mean(-1, keepdim=True)
        below_one = loss.clamp_max(1 - torch.finfo(loss.dtype).eps)
        return terms * safe_divide(-torch.log1p(-below_one), loss, 1.0)

    return region_loss(logits, target, opts, binary, per_class, weight_in_reduction=False)


def generalized_dice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Generalised Dice loss (Sudre et al. 2017).

    ``L = 1 - (2 Σ_c w_c TP_c + s) / (Σ_c w_c (2 TP_c + FP_c + FN_c) + s)``.

    ``w_c = 1 / (Σ y_c)^2``, rescaled so that the rarest present class has weight 1 (for ``s = 0`` the
    ratio does not change); a class absent from the target gets that largest weight (MONAI's policy), so
    predicting it is penalised, and a sample with no class present uses ``w = 1``. ``weight`` multiplies
    these weights.

    The loss is one ratio across classes. Its unreduced form ``(N, C)`` splits it into class terms
    ``C · w_c (FP_c + FN_c) / (Σ_k w_k (2 TP_k + FP_k + FN_k) + s)`` whose class mean is the sample's loss,
    so ``mean`` gives the mean over samples of the loss above, as for every region loss. With
    ``log_loss`` the sample's loss is ``-log(1 - L)`` and its class terms are scaled by ``-log(1 - L) / L``.
    """
    opts = RegionOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        include_background=include_background, batch=batch, smooth=smooth, soft_label=soft_label,
        squared=squared, log_loss=log_loss, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _generalized_dice(logits, target, opts, binary=False)


def binary_generalized_dice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    batch: bool = False,
    smooth: float = 1e-5,
    soft_label: bool = False,
    squared: bool = False,
    log_loss: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Generalised Dice loss over sigmoid channels (see :func:`generalized_dice_loss`)."""
    opts = RegionOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        batch=batch, smooth=smooth, soft_label=soft_label, squared=squared, log_loss=log_loss,
        weight=weight, ignore_index=ignore_index, reduction=reduction, sync=sync,
        process_group=process_group,
    )  # fmt: skip
    return _generalized_dice(logits, target, opts, binary=True)


# --- Log-cosh Dice and penalty GDL ---------------------------------------------------------------------


def _log_cosh_dice(logits: Tensor, target: Tensor, opts: RegionOptions, binary: bool) -> Tensor:
    return region_loss(
        logits, target, opts, binary, lambda s, _: torch.cosh(1 - dice_score(s, opts.smooth)).log()
    )


def log_cosh_dice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Log-cosh Dice loss ``log(cosh(1 - Dice_c))`` per class, then the class mean (Jadon 2020).

    A smoothed Dice loss: ``log cosh x ≈ x²/2`` near 0 and ``≈ |x| - log 2`` for large ``x``, with the
    gradient of Dice scaled by ``tanh(1 - Dice_c)``. Jadon applies ``log cosh`` to the class-averaged Dice
    loss; here it is applied per class, before the mean, as focal Tversky applies its exponent.
    """
    opts = RegionOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        include_background=include_background, batch=batch, smooth=smooth, weight=weight,
        ignore_index=ignore_index, reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _log_cosh_dice(logits, target, opts, binary=False)


def binary_log_cosh_dice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Log-cosh Dice loss ``log(cosh(1 - Dice_c))`` per sigmoid channel (see :func:`log_cosh_dice_loss`)."""
    opts = RegionOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _log_cosh_dice(logits, target, opts, binary=True)


@dataclass(frozen=True, kw_only=True, eq=False)
class PenaltyGDLOptions(RegionOptions):
    """Region options plus the penalty ``k >= 0``."""

    k: float

    def checked(self) -> Dict[str, Any]:
        return {**super().checked(), "k": check_number("k", self.k, low=0.0)}


def _penalty_gdl(logits: Tensor, target: Tensor, opts: PenaltyGDLOptions, binary: bool) -> Tensor:
    def per_class(s: Overlap, tensors: Dict[str, Optional[Tensor]]) -> Tensor:
        terms = _gdl_terms(s, tensors["weight"], opts.smooth)
        loss = terms.mean(-1, keepdim=True)  # the sample's generalised Dice loss
        return terms / (1 + opts.k * (1 - loss))

    return region_loss(logits, target, opts, binary, per_class, weight_in_reduction=False)


def penalty_gdl_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    k: float = 2.5,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Penalty generalised Dice loss ``L_GD / (1 + k (1 - L_GD))`` per sample (Yang et al. 2019, k = 2.5).

    ``L_GD`` is :func:`generalized_dice_loss`; the penalty lowers the loss of good predictions relative
    to bad ones, which emphasises the false positives and negatives left. ``k = 0`` is the generalised
    Dice loss. ``none`` gives the class terms of :func:`generalized_dice_loss` scaled by
    ``1 / (1 + k (1 - L_GD))``, so their class mean is the sample's loss.
    """
    opts = PenaltyGDLOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        k=k, include_background=include_background, batch=batch, smooth=smooth, weight=weight,
        ignore_index=ignore_index, reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _penalty_gdl(logits, target, opts, binary=False)


def binary_penalty_gdl_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    k: float = 2.5,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Penalty generalised Dice loss over sigmoid channels (see :func:`penalty_gdl_loss`)."""
    opts = PenaltyGDLOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        k=k, batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _penalty_gdl(logits, target, opts, binary=True)


# --- Matthews correlation ----------------------------------------------------------------------------


def _valid_pixels(
    logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool, pixels: Optional[PixelWeights]
) -> Union[int, Tensor]:
    """The pixels that count per (sample, class): ``(N, C)`` for a binary integer target with
    ``ignore_index``, ``(N, 1)`` for a softmax index target with it, else every pixel (an int); with a
    weight map or mask, their summed weights ``Σ ω`` over the valid pixels, ``(N, C)`` or ``(N, 1)``."""
    integer = not (target.is_floating_point() or target.dtype == torch.bool)
    dense = not binary and target.shape == logits.shape
    kept = _valid_mask(target, ignore_index) if integer and not dense else None  # the checks' own mask
    if pixels is not None:
        return _weighted_valid(logits, kept, binary, pixels)
    if kept is None:
        return math.prod(logits.shape[2:])
    return kept.flatten(2).sum(-1) if binary else kept.flatten(1).sum(-1, keepdim=True)


def _weighted_valid(logits: Tensor, kept: Optional[Tensor], binary: bool, pixels: PixelWeights) -> Tensor:
    """``Σ ω`` over the valid pixels: ``(N, C)`` for a binary loss (``kept`` of the logits' shape),
    ``(N, 1)`` for a softmax one (``kept`` ``(N, *S)``)."""
    if binary:
        shape, kept, weight = logits.shape, pixels.dense_valid(kept, logits.shape), pixels.dense_weight()
    else:
        shape, kept, weight = (
            torch.Size((logits.shape[0], *logits.shape[2:])),
            pixels.index_valid(kept),
            pixels.weight,
        )
    dtype = compute_dtype(logits)
    ones = torch.ones((), dtype=dtype, device=logits.device)
    counted = (ones if weight is None else weight.to(dtype)).expand(shape)
    if kept is not None:
        counted = torch.where(kept, counted, 0.0)
    return counted.flatten(2).sum(-1) if binary else counted.flatten(1).sum(-1, keepdim=True)


def _confusion(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    binary: bool,
    pixels: Optional[PixelWeights] = None,
) -> Confusion:
    """The overlap and the valid pixels per (sample, class), ``(N, C)``: ``TN = valid - TP - FP - FN``."""
    s = _overlap(logits, target, ignore_index, binary, pixels=pixels)
    valid = _valid_pixels(logits, target, ignore_index, binary, pixels)
    if isinstance(valid, int):  # a fill, not a copy from the host
        return Confusion(*s, torch.full_like(s.tp, float(valid)))
    return Confusion(*s, valid.to(s.tp.dtype).expand_as(s.tp))


@dataclass(frozen=True, kw_only=True, eq=False)
class MCCOptions(RegionOptions):
    """Region options with ``smooth > 0``: MCC's denominator is a square root that vanishes whenever one
    of its four factors does (a one-pixel image, an empty class), where its gradient would be infinite."""

    def checked(self) -> Dict[str, Any]:
        smooth = check_number(
            "smooth (MCC's denominator is a square root)", self.smooth, low=0.0, low_open=True
        )
        return {**super().checked(), "smooth": smooth}


def _mcc(logits: Tensor, target: Tensor, opts: RegionOptions, binary: bool) -> Tensor:
    def per_class(s: Confusion, _: Dict[str, Optional[Tensor]]) -> Tensor:
        tp, fp, fn, valid = (t.double() for t in s)  # products of pixel counts: in float64
        tn = valid - tp - fp - fn
        product = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
        mcc = (tp * tn - fp * fn) / (product.clamp_min(0) + opts.smooth).sqrt()  # rounding: TN a hair < 0
        return torch.where((fp == 0) & (fn == 0), 0.0, 1 - mcc).to(s.tp.dtype)

    def statistics(logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool) -> Confusion:
        return _confusion(logits, target, ignore_index, binary, opts.pixel_weights)

    return region_loss(logits, target, opts, binary, per_class, statistics=statistics)


def mcc_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Matthews correlation loss ``1 - MCC`` per class (Abhishek & Hamarneh 2021), averaged over classes.

    ``MCC = (TP·TN - FP·FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN) + s)`` on the soft statistics,
    with ``TN = Σ (1 - p)(1 - y)`` over the valid pixels (``= valid - TP - FP - FN``). Unlike Dice it
    counts the true negatives, so a background that dominates the image does not make every prediction
    look good. A class with ``FP = FN = 0`` exactly is a perfect match (loss 0), whatever the product
    (exactly: whether a saturated softmax rounds to 0 depends on the dtype, so the rule can hold in float32
    and not in float64, as in MONAI). A
    class absent from the target (``TP = FN = 0``) has MCC 0, loss 1, for any prediction with ``FP > 0``
    however small: MCC does not score an absent class; exclude it (``include_background=False``), pool
    the batch (``batch=True``), or weight it 0.
    Equal to MONAI's ``MCCLoss(softmax=True, to_onehot_y=True, smooth_dr=s)`` (its ``smooth_nr = 0``).
    """
    opts = MCCOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        include_background=include_background, batch=batch, smooth=smooth, weight=weight,
        ignore_index=ignore_index, reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _mcc(logits, target, opts, binary=False)


def binary_mcc_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Matthews correlation loss ``1 - MCC`` per sigmoid channel (see :func:`mcc_loss`); equal to MONAI's
    ``MCCLoss(sigmoid=True, smooth_dr=s)``."""
    opts = MCCOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _mcc(logits, target, opts, binary=True)


for _softmax in (
    dice_loss, jaccard_loss, tversky_loss, focal_tversky_loss, generalized_dice_loss, mcc_loss,
    log_cosh_dice_loss, penalty_gdl_loss,
):  # fmt: skip
    _document(_softmax, binary=False)
for _binary in (
    binary_dice_loss, binary_jaccard_loss, binary_tversky_loss, binary_focal_tversky_loss,
    binary_generalized_dice_loss, binary_mcc_loss, binary_log_cosh_dice_loss, binary_penalty_gdl_loss,
):  # fmt: skip
    _document(_binary, binary=True)


DiceLoss, BinaryDiceLoss = module_pair(
    "Dice", dice_loss, binary_dice_loss, RegionOptions, _dice, PixelWeightedModule
)
JaccardLoss, BinaryJaccardLoss = module_pair(
    "Jaccard", jaccard_loss, binary_jaccard_loss, RegionOptions, _jaccard, PixelWeightedModule
)
TverskyLoss, BinaryTverskyLoss = module_pair(
    "Tversky", tversky_loss, binary_tversky_loss, TverskyOptions, _tversky, PixelWeightedModule
)
FocalTverskyLoss, BinaryFocalTverskyLoss = module_pair(
    "FocalTversky",
    focal_tversky_loss,
    binary_focal_tversky_loss,
    FocalTverskyOptions,
    _focal_tversky,
    PixelWeightedModule,
)
GeneralizedDiceLoss, BinaryGeneralizedDiceLoss = module_pair(
    "GeneralizedDice",
    generalized_dice_loss,
    binary_generalized_dice_loss,
    RegionOptions,
    _generalized_dice,
    PixelWeightedModule,
)
MCCLoss, BinaryMCCLoss = module_pair("MCC", mcc_loss, binary_mcc_loss, MCCOptions, _mcc, PixelWeightedModule)
LogCoshDiceLoss, BinaryLogCoshDiceLoss = module_pair(
    "LogCoshDice",
    log_cosh_dice_loss,
    binary_log_cosh_dice_loss,
    RegionOptions,
    _log_cosh_dice,
    PixelWeightedModule,
)
PenaltyGDLLoss, BinaryPenaltyGDLLoss = module_pair(
    "PenaltyGDL",
    penalty_gdl_loss,
    binary_penalty_gdl_loss,
    PenaltyGDLOptions,
    _penalty_gdl,
    PixelWeightedModule,
)

for _name, _module, _domain, _text in (
    ("dice", DiceLoss, "softmax", "soft Dice loss per class, macro mean"),
    ("binary_dice", BinaryDiceLoss, "binary", "soft Dice loss per sigmoid channel"),
    ("jaccard", JaccardLoss, "softmax", "soft Jaccard (IoU) loss per class"),
    ("binary_jaccard", BinaryJaccardLoss, "binary", "soft Jaccard (IoU) loss per sigmoid channel"),
    ("tversky", TverskyLoss, "softmax", "Tversky loss (α on FP, β on FN)"),
    ("binary_tversky", BinaryTverskyLoss, "binary", "Tversky loss per sigmoid channel"),
    ("focal_tversky", FocalTverskyLoss, "softmax", "focal Tversky loss (1 - TI)^γ per class"),
    ("binary_focal_tversky", BinaryFocalTverskyLoss, "binary", "focal Tversky loss per sigmoid channel"),
    ("gdl", GeneralizedDiceLoss, "softmax", "generalised Dice loss (Sudre et al. 2017)"),
    ("binary_gdl", BinaryGeneralizedDiceLoss, "binary", "generalised Dice loss over sigmoid channels"),
    ("mcc", MCCLoss, "softmax", "Matthews correlation loss 1 - MCC per class"),
    ("binary_mcc", BinaryMCCLoss, "binary", "Matthews correlation loss per sigmoid channel"),
    ("log_cosh_dice", LogCoshDiceLoss, "softmax", "log-cosh Dice loss per class (Jadon 2020)"),
    ("binary_log_cosh_dice", BinaryLogCoshDiceLoss, "binary", "log-cosh Dice loss per sigmoid channel"),
    ("penalty_gdl", PenaltyGDLLoss, "softmax", "penalty generalised Dice loss (Yang et al. 2019)"),
    ("binary_penalty_gdl", BinaryPenaltyGDLLoss, "binary", "penalty generalised Dice over sigmoid channels"),
):
    register(_name, _module, domain=_domain, description=_text, kind="region")
