"""Soft clDice (Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
Segmentation", CVPR 2021) and its mix with the Dice loss.

Per class ``c`` of one sample (or of the whole batch with ``batch=True``), with ``S(·)`` the soft
skeleton of :func:`seglosses.ops.morphology.soft_skeleton` (``iterations`` erosion steps, default 3)::

    Tprec = (Σ S(p)·y + s) / (Σ S(p) + s)      topology precision: the prediction's skeleton inside y
    Tsens = (Σ S(y)·p + s) / (Σ S(y) + s)      topology sensitivity: the target's skeleton inside p
    clDice loss = 1 - 2·Tprec·Tsens / (Tprec + Tsens)

with ``s = smooth = 1`` as in the authors' code. Swapping the roles of ``p`` and ``y`` swaps ``Tprec``
and ``Tsens``, so the loss is symmetric in the two masks, as the paper states. The mix
(``dice_cldice``) is the paper's ``(1 - α)·(1 - Dice) + α·clDice loss``, ``Dice = (2 TP + s) / (2 TP +
FP + FN + s)`` per class with the same ``s``, ``α = 0.5`` by default.

**Targets.** As every region loss: softmax losses take class indices ``(N, *S)`` or one-hot / soft
``(N, C, *S)``, ``binary_*`` losses a target of the logits' shape (bool, integer, or float in
``[0, 1]``). The skeleton of the target is that of the one-hot (or soft) target, per class.

**ignore_index.** Ignored pixels are background for every class in both ``p`` and ``y`` *before* the
skeletons are taken (the library's rule for spatial operators, SPEC section 4). The soft skeleton is 0
wherever its input is 0, so an ignored pixel adds to no sum: it adds no skeleton and is not penalised;
its logits get no gradient. Near the ignored region the structures of ``p`` and ``y`` are cut alike.
(The other choice, an ignored pixel *neutral* in the min / max like the image border, was rejected: a
one-pixel vessel surrounded by an ignored margin, a common annotation, would never erode and so would
have no skeleton at all.)

**weight_map and mask** (``(N, *S)``, issue 19). The skeletons are taken of the unweighted maps; the
weight ``ω`` multiplies the per-pixel products in every sum afterwards::

    Tprec = (Σ ω·S(p)·y + s) / (Σ ω·S(p) + s)      Tsens = (Σ ω·S(y)·p + s) / (Σ ω·S(y) + s)

and, for ``dice_cldice``, ``TP = Σ ω p y``, ``FP = Σ ω p (1 - y)``, ``FN = Σ ω (1 - p) y``. So ``ω``
weighs where a skeleton pixel counts, not how the skeleton is formed: a pixel's weight does not reach
its neighbours' skeleton values, and (the skeleton being spatial) an integer ``ω`` is not the pixel
repeated. ``mask`` False is ``ignore_index`` exactly: an index target (or an integer binary one) gets
the ignore value at the masked pixels before anything is computed; a floating or bool target's masked
pixels are likewise background in ``p`` and ``y`` before the skeletons, and their logits reach neither
value nor gradient (a NaN there neither).

**Relation to MONAI** (1.6.1, ``SoftclDiceLoss`` / ``SoftDiceclDiceLoss``): the same soft skeleton and
formula, but MONAI pools the sums over the channels (one clDice per sample, not per class) and adds
``smooth = 1e-4`` to the harmonic mean's denominator (so its loss of a perfect prediction is ``5e-5``,
not 0). With one channel (``binary_cldice`` on ``(N, 1, *S)``, or a two-class softmax with
``include_background=False``) and MONAI's ``smooth`` negligible, the two are equal, values and
gradients; per class, MONAI applied to each channel alone equals this loss's ``(N, C)`` output. MONAI's
``include_background=True`` default is kept. MONAI before 1.6 (its issue 8239, "zero loss") summed only
the channels ``1:`` and took no activation: on the usual single-channel sigmoid output every sum is
empty, so ``Tprec = Tsens = s / s = 1`` and the loss (and Dice's) is exactly 0 with no gradient. The
authors' ``soft_cldice`` pools everything, batch and channels: ``binary_cldice(..., batch=True)`` on one
channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, cast

import torch
from torch import Tensor

from .._core.numerics import safe_divide
from .._core.options import ClassValues, Reduction, check_bool, check_int, check_number, class_tensor
from .._core.pixel_weights import mask_as_ignore, pixel_weights
from .._core.reduction import reduce_region
from .._core.registry import register
from .._core.stats import Overlap
from ..ops.morphology import soft_skeleton
from .base import PixelWeightedModule, module_pair
from .boundary import _prepare
from .overlap import RegionOptions, dice_score


@dataclass(frozen=True, kw_only=True, eq=False)
class ClDiceOptions(RegionOptions):
    """Region options plus the number of soft-skeleton ``iterations`` (an int ``>= 0``) and whether the
    prediction's skeleton is recomputed in the backward (``checkpoint``)."""

    iterations: int
    checkpoint: bool

    def checked(self) -> Dict[str, Any]:
        return {
            **super().checked(),
            "iterations": check_int("iterations", self.iterations, low=0),
            "checkpoint": check_bool("checkpoint", self.checkpoint),
        }


@dataclass(frozen=True, kw_only=True, eq=False)
class DiceClDiceOptions(ClDiceOptions):
    """clDice options plus the weight ``alpha`` in ``[0, 1]`` of the clDice term."""

    alpha: float

    def checked(self) -> Dict[str, Any]:
        return {**super().checked(), "alpha": check_number("alpha", self.alpha, low=0.0, high=1.0)}


def _spatial_dot(a: Tensor, b: Tensor) -> Tensor:
    """``Σ_i a_i b_i`` over the spatial dims of two ``(N, C, *S)`` tensors: ``(N, C)`` (a product and a sum,
    not ``linalg.vecdot``, which autocast would run in half precision)."""
    return (a * b).flatten(2).sum(-1)


def _spatial_sum(a: Tensor) -> Tensor:
    return a.flatten(2).sum(-1)


def _sums(probs: Tensor, dense: Tensor, opts: ClDiceOptions, dice: bool, omega: Optional[Tensor]) -> Tensor:
    """The statistics ``(K, N, C)``: ``Σ ω S(p)·y``, ``Σ ω S(p)``, ``Σ ω S(y)·p``, ``Σ ω S(y)`` and, for
    ``dice``, ``Σ ω p·y``, ``Σ ω p``, ``Σ ω y`` (``ω`` ``(N, 1, *S)``, or None: 1). The skeletons are of
    the unweighted maps. One skeleton at a time, so the second is taken while only the first's autograd
    graph (not its temporaries) is held."""

    def weighted(x: Tensor) -> Tensor:
        return x if omega is None else x * omega

    skeleton = weighted(soft_skeleton(probs, opts.iterations, checkpoint=opts.checkpoint))
    sums = [_spatial_dot(skeleton, dense), _spatial_sum(skeleton)]
    skeleton = weighted(soft_skeleton(dense, opts.iterations, checkpoint=opts.checkpoint))
    sums += [_spatial_dot(skeleton, probs), _spatial_sum(skeleton)]
    if dice:
        probs = weighted(probs)
        sums += [_spatial_dot(probs, dense), _spatial_sum(probs), _spatial_sum(weighted(dense))]
    return torch.stack(sums)


def _pixel_inputs(
    logits: Tensor, target: Tensor, opts: RegionOptions, binary: bool
) -> Tuple[Tensor, Tensor, Optional[int], Optional[Tensor], Optional[Tensor]]:
    """``(logits, target, ignore_index, mask, ω)`` of a call with ``opts.pixel_weights``: the mask folded
    into an index target (or an integer binary target) as ``ignore_index`` (-1 where there is none); of a
    dense softmax, a floating or a bool target it is left, ``(N, 1, *S)``, with the logits set to 0 where
    it is False (so that nothing there, a NaN neither, reaches value or gradient); ``ω`` ``(N, 1, *S)``.
    Without pixel weights: the inputs as they are and two Nones."""
    pixels = opts.pixel_weights
    if pixels is None:
        return logits, target, opts.ignore_index, None, None
    mask, ignore_index = pixels.mask, opts.ignore_index
    if mask is not None and isinstance(target, Tensor):
        shape = logits.shape if binary else mask.shape  # a shape the target's check would refuse: left
        if target.shape == shape:
            target, ignore_index, mask = mask_as_ignore(target, mask, ignore_index, binary=binary)
    keep = None if mask is None else mask.unsqueeze(1)
    if keep is not None:
        logits = logits.masked_fill(~keep, 0.0)
    omega = None if pixels.weight is None else pixels.weight.unsqueeze(1)
    return logits, target, ignore_index, keep, omega


def _fraction(num: Tensor, den: Tensor, smooth: float) -> Tensor:
    """``num / den`` with 1 where ``den == 0`` exactly (both sets empty with ``s = 0``)."""
    if smooth >= torch.finfo(den.dtype).tiny:  # den >= s > 0: a plain division
        return num / den
    return safe_divide(num, den, 1.0)


def _cldice_terms(sums: Tensor, smooth: float) -> Tensor:
    """``1 - 2·Tprec·Tsens / (Tprec + Tsens)`` from the first four statistics of :func:`_sums`; the
    harmonic mean is 0 where ``Tprec + Tsens = 0`` (only with ``s = 0``: loss 1)."""
    precision = _fraction(sums[0] + smooth, sums[1] + smooth, smooth)
    sensitivity = _fraction(sums[2] + smooth, sums[3] + smooth, smooth)
    return 1 - safe_divide(2 * precision * sensitivity, precision + sensitivity, 0.0)


def _region(
    logits: Tensor,
    target: Tensor,
    opts: ClDiceOptions,
    binary: bool,
    per_class: Callable[[Tensor], Tensor],
    dice: bool,
) -> Tensor:
    """Prepare (mask folded in) -> skeleton statistics of the kept classes -> (pool) -> ``per_class`` ->
    reduce."""
    logits, target, ignore_index, mask, omega = _pixel_inputs(logits, target, opts, binary)
    probs, dense, _ = _prepare(logits, target, ignore_index, binary)  # both 0 at ignored pixels
    if mask is not None:  # masked pixels of a target that holds no ignore value: as ignored ones
        probs, dense = torch.where(mask, probs, 0.0), torch.where(mask, dense, 0.0)
    weight = class_tensor(cast(Optional[Tensor], opts.weight), logits, "weight")  # checked: a tensor
    if not binary and not opts.include_background:
        probs, dense = probs[:, 1:], dense[:, 1:]
        weight = weight[1:] if weight is not None and weight.ndim == 1 else weight
    sums = _sums(probs, dense, opts, dice, None if omega is None else omega.to(probs.dtype))
    if opts.batch:
        sums = sums.sum(1)
    return reduce_region(per_class(sums), opts.reduction, weight)


def _cldice(logits: Tensor, target: Tensor, opts: ClDiceOptions, binary: bool) -> Tensor:
    return _region(logits, target, opts, binary, lambda sums: _cldice_terms(sums, opts.smooth), dice=False)


def _dice_cldice(logits: Tensor, target: Tensor, opts: DiceClDiceOptions, binary: bool) -> Tensor:
    def per_class(sums: Tensor) -> Tensor:
        tp, prob_sum, target_sum = sums[4], sums[5], sums[6]
        dice = 1 - dice_score(Overlap(tp, prob_sum - tp, target_sum - tp), opts.smooth)
        return (1 - opts.alpha) * dice + opts.alpha * _cldice_terms(sums, opts.smooth)

    return _region(logits, target, opts, binary, per_class, dice=True)


_SHARED_DOC = """
    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: {target}
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, finite and ``>= 0``: they multiply every term of
            the sums after the skeletons are taken of the unweighted maps, ``Tprec = (Σ ω S(p)·y + s) /
            (Σ ω S(p) + s)``, ``Tsens = (Σ ω S(y)·p + s) / (Σ ω S(y) + s)``; a binary loss applies them
            to every channel. Ones give the loss without them.{dice_weights}
        mask: ``(N, *S)`` bool, True where a pixel counts: a pixel outside it is an ignored one (see
            ``ignore_index``), whatever the target holds there (a soft target too).{alpha}
        iterations: erosion steps of the soft skeleton (``>= 0``, default 3 as the paper); it reaches
            ``iterations + 1`` pixels deep, so choose it above the largest radius of the structures.
        checkpoint: recompute the prediction's skeleton step by step in the backward instead of keeping
            its autograd graph: the same values and gradients, bit for bit, in about a third of the
            memory (float32 3-D, forward + backward: about 125 instead of 350 bytes per pixel and class)
            for about 15-60 % more time (default True).{background}
        batch: pool the sums over the batch: one loss per class (the authors' code pools the batch).
        smooth: ``s >= 0`` in the numerators and denominators of ``Tprec``, ``Tsens``{dice_smooth}
            (default 1, the authors' value); with ``s = 0`` an empty skeleton gives a ratio of 1.
        weight: per-class weights ``(C,)`` of the class mean.
        ignore_index: target value whose pixels count nowhere: background for every class in ``p`` and
            ``y`` before the skeletons are taken (see the module docstring).
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``), multiplied by ``weight``;
            ``sum`` -> its sum; ``mean`` -> its sum over ``N · Σ_c w_c`` (``N · C`` without weights).
"""
_SOFTMAX_TARGET = "class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``; ``p = softmax(z)``."
_BINARY_TARGET = "the logits' shape; bool, integer or float in ``[0, 1]``; ``p = sigmoid(z)`` per channel."
_BACKGROUND_DOC = """
        include_background: keep class 0 (default True, as MONAI's ``SoftclDiceLoss``)."""
_DICE_WEIGHTS_DOC = """
            Dice's statistics alike: ``TP = Σ ω p y``, ``FP = Σ ω p (1 - y)``, ``FN = Σ ω (1 - p) y``."""
_ALPHA_DOC = """
        alpha: weight of the clDice term in ``(1 - α)·(1 - Dice) + α·clDice loss``, in ``[0, 1]``."""


def _document(function: Callable[..., Tensor], binary: bool, dice: bool) -> Callable[..., Tensor]:
    text = _SHARED_DOC.format(
        target=_BINARY_TARGET if binary else _SOFTMAX_TARGET,
        alpha=_ALPHA_DOC if dice else "",
        background="" if binary else _BACKGROUND_DOC,
        dice_smooth=" and Dice" if dice else "",
        dice_weights=_DICE_WEIGHTS_DOC if dice else "",
    )
    function.__doc__ = (function.__doc__ or "").rstrip() + "\n" + text
    return function


def cldice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    iterations: int = 3,
    checkpoint: bool = True,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Soft clDice loss per class (Shit et al., CVPR 2021), averaged over classes.

    ``Tprec = (Σ S(p)·y + s) / (Σ S(p) + s)``, ``Tsens = (Σ S(y)·p + s) / (Σ S(y) + s)``, loss
    ``1 - 2·Tprec·Tsens / (Tprec + Tsens)`` per (sample, class), ``S`` the soft skeleton
    (:func:`seglosses.ops.morphology.soft_skeleton`), ``p = softmax(z)``. A perfect prediction gives 0,
    and so does a class absent from both; a prediction that misses a thin structure of ``L`` skeleton
    pixels entirely gives ``1 - 2/(L + 2) = L / (L + 2)`` (with ``s = 1``). The loss does not see
    thickness (a prediction of only the centre line of a tube scores 0): combine it with a region loss,
    as :func:`dice_cldice_loss` does.

    Equal to MONAI's ``SoftclDiceLoss`` applied to each class's channel alone (MONAI pools the
    channels; see the module docstring for where the two differ).
    """
    opts = ClDiceOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        iterations=iterations, checkpoint=checkpoint, include_background=include_background, batch=batch,
        smooth=smooth, weight=weight, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _cldice(logits, target, opts, binary=False)


def binary_cldice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    iterations: int = 3,
    checkpoint: bool = True,
    batch: bool = False,
    smooth: float = 1.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Soft clDice loss per sigmoid channel, ``1 - 2·Tprec·Tsens / (Tprec + Tsens)`` (see
    :func:`cldice_loss`), ``p = sigmoid(z)``.

    On ``(N, 1, *S)`` it equals MONAI's ``SoftclDiceLoss(sigmoid=True)`` (up to MONAI's ``1e-4`` in the
    harmonic mean); with ``batch=True`` the authors' ``soft_cldice``.
    """
    opts = ClDiceOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        iterations=iterations, checkpoint=checkpoint, batch=batch, smooth=smooth, weight=weight,
        ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _cldice(logits, target, opts, binary=True)


def dice_cldice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.5,
    iterations: int = 3,
    checkpoint: bool = True,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The paper's mix ``(1 - α)·(1 - Dice) + α·clDice loss`` per class (Shit et al., CVPR 2021).

    ``Dice = (2 TP + s) / (2 TP + FP + FN + s)`` (:func:`seglosses.functional.dice_loss`'s score, on the
    same probabilities and pixels) and the clDice loss of :func:`cldice_loss`, both per (sample, class)
    with the same ``s`` (default 1, as the authors and MONAI's ``SoftDiceclDiceLoss``); ``α = 0`` is the
    Dice loss, ``α = 1`` the clDice loss.
    """
    opts = DiceClDiceOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, iterations=iterations, checkpoint=checkpoint, include_background=include_background,
        batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _dice_cldice(logits, target, opts, binary=False)


def binary_dice_cldice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.5,
    iterations: int = 3,
    checkpoint: bool = True,
    batch: bool = False,
    smooth: float = 1.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""``(1 - α)·(1 - Dice) + α·clDice loss`` per sigmoid channel (see :func:`dice_cldice_loss`).

    On ``(N, 1, *S)`` it equals MONAI's ``SoftDiceclDiceLoss(sigmoid=True)`` (up to MONAI's ``1e-4`` in
    the harmonic mean); with ``batch=True`` the authors' ``soft_dice_cldice``.
    """
    opts = DiceClDiceOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, iterations=iterations, checkpoint=checkpoint, batch=batch, smooth=smooth, weight=weight,
        ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _dice_cldice(logits, target, opts, binary=True)


for _function, _binary, _dice in (
    (cldice_loss, False, False),
    (binary_cldice_loss, True, False),
    (dice_cldice_loss, False, True),
    (binary_dice_cldice_loss, True, True),
):
    _document(_function, _binary, _dice)

ClDiceLoss, BinaryClDiceLoss = module_pair(
    "ClDice", cldice_loss, binary_cldice_loss, ClDiceOptions, _cldice, PixelWeightedModule
)
DiceClDiceLoss, BinaryDiceClDiceLoss = module_pair(
    "DiceClDice",
    dice_cldice_loss,
    binary_dice_cldice_loss,
    DiceClDiceOptions,
    _dice_cldice,
    PixelWeightedModule,
)

_REGISTERED: Tuple[Tuple[str, Any, str, str], ...] = (
    ("cldice", ClDiceLoss, "softmax", "soft clDice loss per class (Shit et al. 2021)"),
    ("binary_cldice", BinaryClDiceLoss, "binary", "soft clDice loss per sigmoid channel (Shit et al. 2021)"),
    ("dice_cldice", DiceClDiceLoss, "softmax", "(1 - α) Dice loss + α clDice loss (Shit et al. 2021)"),
    (
        "binary_dice_cldice",
        BinaryDiceClDiceLoss,
        "binary",
        "(1 - α) Dice + α clDice per channel (Shit et al. 2021)",
    ),
)
for _name, _module, _domain, _text in _REGISTERED:
    register(_name, _module, domain=_domain, description=_text, kind="region")

__all__ = [
    "BinaryClDiceLoss",
    "BinaryDiceClDiceLoss",
    "ClDiceLoss",
    "DiceClDiceLoss",
    "binary_cldice_loss",
    "binary_dice_cldice_loss",
    "cldice_loss",
    "dice_cldice_loss",
]
