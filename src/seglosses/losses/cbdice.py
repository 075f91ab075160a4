"""Centerline boundary Dice (cbDice; Shi et al., "Centerline Boundary Dice Loss for Vascular
Segmentation", MICCAI 2024): clDice's topology precision and sensitivity with the skeleton pixels
weighted by the radius the distance transform gives them.

**Radius maps of a mask.** For a hard mask ``M`` (one sample, one class) with skeleton ``K`` (the soft
skeleton of :func:`seglosses.ops.morphology.soft_skeleton` of the 0/1 mask, ``iterations`` steps, as the
authors take it; on a 0/1 mask it is 0/1 itself, and :func:`binary_skeleton` computes it, bit for bit,
with boolean operations), ``D`` its Euclidean distance transform
(:func:`seglosses.ops.distance.distance_transform`: 0 off ``M``), ``R = D`` on ``K`` and 0 elsewhere,
``R_max = max(max R, 1)``, ``R_min = max(min R, 1)`` (the minimum over every pixel, so 1 unless the
skeleton fills the image) and ``d`` the number of spatial dims::

    D̂ = min(D, R_max) / R_max                           the clipped, normalised distance map
    R̂ = R / R_max                                       the normalised radius, on K
    I = ((R_max - R + R_min) / R_max)^(d - 1)  on K, 0 elsewhere   the inverse radius weight

(the exponent is the authors' 1 in 2-D and 2 in 3-D; 0 in 1-D, where a structure's cross-section is a
point). Both the target's mask ``Y`` and the prediction's hard mask ``P = {p > 0.5}`` get these maps,
without gradient; ``p`` enters linearly (and once squared)::

    Tprec = (Σ I_P·p·D̂_Y + s) / (Σ I_P·p·[R̂_Y on K_Y, else R̂_P·p] + s)
    Tsens = (Σ I_Y·D̂_P·p + s) / (Σ I_Y·[R̂_P·p on K_P, else R̂_Y] + s)
    cbDice loss = 1 - 2·Tprec·Tsens / (Tprec + Tsens)

per class ``c`` of one sample (``batch=True`` pools the four sums over the batch; the maps stay per
sample). These are the sums of the authors' ``SoftcbDiceLoss`` (repository PengchengShi1220/cbDice,
``loss/cbdice_loss.py``: ``get_weights`` gives ``q_vl = D̂_Y``, ``q_slvl = R̂_Y``, ``q_sl = I_Y``,
``q_vp = D̂_P·p``, ``q_spvp = R̂_P·p``, ``q_sp = I_P·p`` and ``combine_tensors`` the bracketed choice);
their loss is ``-2·Tprec·Tsens / (Tprec + Tsens)``, this one 1 plus it (the same gradient).

**Properties.** Where the hard prediction equals the target (``P = Y``), ``Tprec = Tsens = 1`` whatever
the probabilities: the loss is 0 with a zero gradient (``D̂ = R̂`` on the skeleton), so cbDice is a
complement to a region loss (the authors add it to Dice + CE), not a replacement. For hard inputs it is
symmetric in the two masks (swapping them swaps ``Tprec`` and ``Tsens``). On structures one or two pixels
thin (``R_max = 1`` in both masks: every weight is 1) and a saturated prediction it is clDice on the same
skeletons (:func:`seglosses.functional.cldice_loss` with the same ``iterations``). Like clDice it does not
see thickness where the centre lines agree (a prediction of only the centre line of a tube scores 0: each
mask's radii are normalised by its own ``R_max``).

**The authors' inputs.** ``SoftcbDiceLoss`` merges the foreground classes: ``p = softmax([z_0, max_{c≥1}
z_c])_1``, the target ``labels > 0``, sums over the whole batch. That is :func:`binary_cbdice_loss` of the
single logit ``max_{c≥1} z_c - z_0`` ``(N, 1, *S)`` with ``batch=True``, plus 1 (for two classes also
:func:`cbdice_loss` with ``batch=True``, whose default leaves class 0 out); their defaults are
``iter_=10`` (these losses' ``iterations``) and ``smooth=1`` (their nnU-Net trainers pass
``smooth=1e-3``). They differ only for a mask that fills its whole sample, where their distance transform
(scipy's, through MONAI) is undefined and this one measures to just outside the image. Their optional
topology-preserving skeleton (``t_skeletonize_flage=True``) is not offered.

**Targets and the precomputed part.** Softmax losses take class indices ``(N, *S)`` or one-hot / soft
``(N, C, *S)`` (class mask ``y > 0.5``), ``binary_*`` losses a target of the logits' shape. The target's
maps ``(D̂_Y, R̂_Y, I_Y)`` depend on the target alone: compute them once per sample with
:class:`CbDiceMapTransform` (or :func:`target_cbdice_maps`) and pass them as ``cbdice_maps``; without them
the loss computes them at every call on the logits' device. The prediction's maps are computed at every
call (a distance transform of ``P``: on the CPU by the ``edt`` / scipy package, elsewhere and under
``torch.compile`` in torch, with no host read).

**ignore_index.** Ignored pixels belong to no class in ``p`` and ``y`` before the skeletons and distances
are taken (the library's rule for spatial operators): they add to no sum and get no gradient; near them
the structures of both masks end as at a background pixel.

**weight_map and mask** (``(N, *S)``, issue 19). The maps (skeletons, distances, radii, the hard
prediction ``P``) are taken of the unweighted masks; the weight ``ω`` multiplies every pixel's term of the
four sums::

    Tprec = (Σ ω·I_P·p·D̂_Y + s) / (Σ ω·I_P·p·[R̂_Y on K_Y, else R̂_P·p] + s)
    Tsens = (Σ ω·I_Y·D̂_P·p + s) / (Σ ω·I_Y·[R̂_P·p on K_P, else R̂_Y] + s)

so it weighs where a skeleton pixel counts, not the maps (an integer ``ω`` is not the pixel repeated: the
maps are spatial). ``mask`` False is ``ignore_index`` exactly: the masked pixels of an index target (or an
integer binary one) get the ignore value before the maps are computed; a floating or bool target's masked
pixels likewise belong to no class in ``p`` and ``y``, and their logits reach neither value nor gradient.
Precomputed ``cbdice_maps`` are used as given, cut by the mask: compute them with the masked pixels as
``ignore_index`` to get exactly the loss that computes them on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union, cast

import torch
from torch import Tensor

from .._core.deferred import check_count
from .._core.errors import expected
from .._core.options import (
    ClassValues,
    Reduction,
    check_bool,
    check_ignore_index,
    check_int,
    class_tensor,
)
from .._core.pixel_weights import pixel_weights
from .._core.reduction import reduce_region
from .._core.registry import register
from .._core.targets import IndexTarget, SoftmaxTarget, input_checks_enabled
from ..ops.distance import distance_transform
from .base import PrecomputedInputModule, module_pair
from .boundary import _target_masks
from .cldice import _cldice_terms, _pixel_inputs
from .overlap import RegionOptions
from .skeleton_recall import _binary_masks
from .skeleton_recall import _prepare as _probabilities

ITERATIONS = 10  # the authors' iter_ (SoftcbDiceLoss and their trainers)
MAPS = 3  # D̂, R̂, I


# --- radius maps -------------------------------------------------------------------------------------


def _erode(x: Tensor) -> Tensor:
    """Binary erosion of bool ``(B, C, *S)`` by the cross (the pixel and its face neighbours), the image
    border neutral: ``soft_erode`` of a 0/1 mask."""
    out = x.clone()
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        out.narrow(axis, 1, n - 1).bitwise_and_(x.narrow(axis, 0, n - 1))
        out.narrow(axis, 0, n - 1).bitwise_and_(x.narrow(axis, 1, n - 1))
    return out


def _dilate(x: Tensor) -> Tensor:
    """Binary dilation of bool ``(B, C, *S)`` by the ``3^k`` square, one axis after the other, the image
    border neutral: ``soft_dilate`` of a 0/1 mask."""
    for axis in range(2, x.ndim):
        n, out = x.shape[axis], x.clone()
        out.narrow(axis, 1, n - 1).bitwise_or_(x.narrow(axis, 0, n - 1))
        out.narrow(axis, 0, n - 1).bitwise_or_(x.narrow(axis, 1, n - 1))
        x = out
    return x


def binary_skeleton(masks: Tensor, iterations: int = ITERATIONS) -> Tensor:
    """:func:`seglosses.ops.morphology.soft_skeleton` of bool masks ``(B, C, *S)``, computed with boolean
    operations: on a 0/1 input min and max are AND and OR, ``relu(a - b)`` is ``a AND NOT b`` and the soft
    union ``S + relu(δ - S δ)`` is ``S OR δ``, so the result is the same, bit for bit, tens of times faster
    than the pooling on the CPU. ``S = x AND NOT dilate(E_1)``, then ``S |= E_j AND NOT dilate(E_{j+1})``
    for ``j = 1..iterations``, ``E_j`` the ``j``-th erosion by the cross."""
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or not 3 <= masks.ndim <= 5:
        shown = f"dtype {masks.dtype}, shape {tuple(masks.shape)}" if isinstance(masks, Tensor) else masks
        raise expected("bool masks (B, C, *S) with 1 to 3 spatial dims", shown)
    iterations = check_int("iterations", iterations, low=0)
    eroded = _erode(masks)
    skeleton = masks & ~_dilate(eroded)
    for _ in range(iterations):
        current, eroded = eroded, _erode(eroded)
        skeleton |= current & ~_dilate(eroded)
    return skeleton


def radius_maps(masks: Tensor, iterations: int = ITERATIONS) -> Tensor:
    """The maps ``(D̂, R̂, I)`` of bool masks ``(B, C, *S)``, each ``(b, c)`` on its own: ``(3, B, C, *S)``
    float32 (module docstring), without gradient.

    Example: a band three pixels wide has its centre row as skeleton, ``D = 2`` there and 1 on its
    edges, so ``R_max = 2``, ``D̂ = 1`` on the centre and ``1/2`` on the edges, ``R̂ = 1`` and (2-D)
    ``I = (2 - 2 + 1) / 2 = 1/2`` on the centre.
    """
    rank = masks.ndim - 2
    skeleton = binary_skeleton(masks, iterations)
    distance = distance_transform(masks, spatial_dims=rank)  # float32, 0 off the mask
    radius = torch.where(skeleton, distance, 0.0)
    flat = radius.flatten(2)
    view = (*flat.shape[:2], *[1] * rank)
    r_max = flat.amax(-1).clamp_min(1.0).view(view)  # per (b, c): N = 0 gives empty maps
    r_min = flat.amin(-1).clamp_min(1.0).view(view)
    inverse = (r_max - radius + r_min) / r_max
    if rank == 3:
        inverse = inverse * inverse
    elif rank == 1:
        inverse = torch.ones_like(inverse)
    maps = (torch.minimum(distance, r_max) / r_max, radius / r_max, torch.where(skeleton, inverse, 0.0))
    return torch.stack(maps)


def target_cbdice_maps(
    target: Tensor,
    num_classes: Optional[int] = None,
    *,
    iterations: int = ITERATIONS,
    ignore_index: Optional[int] = None,
    include_background: bool = False,
) -> Tensor:
    """The target's maps ``(N, 3, C, *S)`` float32 (``D̂_Y, R̂_Y, I_Y`` along dim 1) that
    :func:`cbdice_loss` computes on the fly.

    Args:
        target: an index target ``(N, *S)`` with ``num_classes``; or, without it, a dense target
            ``(N, C, *S)``: a binary / multi-label target (the ``binary_`` loss's) or a one-hot / soft
            target of the softmax loss (class mask ``y > 0.5``; an integer one may hold ``ignore_index``).
        num_classes: ``C`` for an index target.
        iterations: soft-skeleton steps of the target's skeleton (the loss's default, the authors' 10).
        ignore_index: target value that belongs to no class.
        include_background: also class 0 of an index target, for a softmax loss that keeps it; False
            (the loss's default) leaves channel 0 empty (a dense target's channels are all computed).

    Pass the result as ``cbdice_maps`` to skip the computation during training.
    """
    iterations = check_int("iterations", iterations, low=0)
    ignore_index = check_ignore_index(ignore_index)
    background = check_bool("include_background", include_background)
    if not isinstance(target, Tensor) or target.is_complex():
        raise expected("target to be a real or bool torch.Tensor", getattr(target, "dtype", type(target)))
    valid = None if ignore_index is None or target.dtype == torch.bool else target != ignore_index
    if num_classes is None:
        if not 3 <= target.ndim <= 5:
            raise expected(
                "a dense target (N, C, *S) with 1 to 3 spatial dims (or class indices with num_classes)",
                tuple(target.shape),
            )
        return radius_maps(_binary_masks(target, valid), iterations).movedim(0, 1)
    if target.is_floating_point() or target.dtype == torch.bool or not 2 <= target.ndim <= 4:
        shown = f"dtype {target.dtype}, shape {tuple(target.shape)}"
        raise expected("an integer index target (N, *S) with 1 to 3 spatial dims for num_classes", shown)
    start = 0 if background else 1
    masks = _target_masks(IndexTarget(target, valid), check_int("num_classes", num_classes, low=2), start)
    maps = radius_maps(masks, iterations)
    if not background:
        maps = torch.cat([torch.zeros_like(maps[:, :, :1]), maps], 2)
    return maps.movedim(0, 1)


class CbDiceMapTransform:
    """Dataset transform: a target sample -> its cbDice maps ``(3, C, *S)`` float32, computed once.

    With ``num_classes``: a label map ``(*S)`` (the softmax loss's target); without: a dense target
    ``(C, *S)`` (the ``binary_`` loss's, or a one-hot one). Options as :func:`target_cbdice_maps`. Stack
    the results to ``(N, 3, C, *S)`` (the default collate does) and pass them as ``cbdice_maps``.

    Example:
        >>> labels = torch.zeros(5, 8, dtype=torch.long)
        >>> labels[1:4] = 1  # a band three pixels wide across the image
        >>> maps = CbDiceMapTransform(num_classes=2)(labels)
        >>> maps[:, 1, :, 0].tolist()  # D̂, R̂, I of class 1 down the first column
        [[0.0, 0.5, 1.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0, 0.0]]
    """

    def __init__(
        self,
        num_classes: Optional[int] = None,
        *,
        iterations: int = ITERATIONS,
        ignore_index: Optional[int] = None,
        include_background: bool = False,
    ):
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, low=2)
        self.iterations = check_int("iterations", iterations, low=0)
        self.ignore_index = check_ignore_index(ignore_index)
        self.include_background = check_bool("include_background", include_background)

    def __call__(self, target: Tensor) -> Tensor:
        if not isinstance(target, Tensor):
            raise expected("a target sample as a torch.Tensor", type(target).__name__)
        return target_cbdice_maps(
            target.unsqueeze(0), self.num_classes, iterations=self.iterations,
            ignore_index=self.ignore_index, include_background=self.include_background,
        )[0]  # fmt: skip


# --- the loss ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class CbDiceOptions(RegionOptions):
    """Region options plus the soft-skeleton ``iterations`` (an int ``>= 0``) of the skeletons."""

    iterations: int

    def checked(self) -> Dict[str, Any]:
        return {**super().checked(), "iterations": check_int("iterations", self.iterations, low=0)}


def _check_maps(maps: Tensor, logits: Tensor) -> Tensor:
    """Shape, dtype and device of precomputed maps; with the input checks on, values in ``[0, 1]``."""
    if not isinstance(maps, Tensor) or not maps.is_floating_point():
        raise expected("cbdice_maps as a floating-point tensor", getattr(maps, "dtype", type(maps)))
    shape = (logits.shape[0], MAPS, *logits.shape[1:])
    if maps.shape != shape:
        raise expected(
            f"cbdice_maps of shape (N, 3, C, *S) = {shape} (target_cbdice_maps gives them)",
            f"shape {tuple(maps.shape)}",
        )
    if maps.device != logits.device:
        raise expected(f"cbdice_maps on the logits' device {logits.device}", f"device {maps.device}")
    if input_checks_enabled() and maps.numel():  # deferred on CUDA: no host synchronisation
        outside = (~((maps >= 0) & (maps <= 1))).sum()  # NaN is outside
        check_count(outside, lambda n: f"expected cbdice_maps with values in [0, 1], got {n} values outside")
    return maps


def _spatial_sum(values: Tensor) -> Tensor:
    return values.flatten(2).sum(-1)


def _sums(probs: Tensor, target_maps: Tensor, pred_maps: Tensor, omega: Optional[Tensor]) -> Tensor:
    """The four sums ``(4, N, C)``: Tprec's numerator and denominator, then Tsens's (module docstring),
    every pixel's term times ``ω`` ``(N, 1, *S)`` when given."""
    d_y, r_y, i_y = target_maps.unbind(0)
    d_p, r_p, i_p = pred_maps.unbind(0)
    weighted = i_p * probs  # the authors' q_sp
    if omega is not None:  # ω in the factor that every term of a sum has: I_P·p in Tprec, I_Y in Tsens
        weighted, i_y = weighted * omega, i_y * omega
    return torch.stack(
        [
            _spatial_sum(weighted * d_y),
            _spatial_sum(weighted * torch.where(r_y > 0, r_y, r_p * probs)),
            _spatial_sum(i_y * d_p * probs),
            _spatial_sum(i_y * torch.where(r_p > 0, r_p * probs, r_y)),
        ]
    )


def _masks(
    prepared: Union[SoftmaxTarget, Tensor],
    valid: Optional[Tensor],
    logits: Tensor,
    start: int,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """The target's class masks ``(N, C - start, *S)`` bool, ignored (and masked) pixels in none."""
    if isinstance(prepared, Tensor):  # a binary target; valid holds the mask
        return _binary_masks(prepared, valid)
    masks = _target_masks(prepared, logits.shape[1], start)
    return masks if mask is None else masks & mask


def _cbdice(
    logits: Tensor, target: Tensor, cbdice_maps: Optional[Tensor], opts: CbDiceOptions, binary: bool
) -> Tensor:
    """Prepare (mask folded in) -> the target's and the prediction's maps -> the four sums -> (pool) ->
    loss -> reduce."""
    logits, target, ignore_index, mask, omega = _pixel_inputs(logits, target, opts, binary)
    probs, prepared, valid = _probabilities(logits, target, ignore_index, binary, mask)  # p 0 at ignored
    start = 0 if binary or opts.include_background else 1
    probs = probs[:, start:]
    hard = probs.detach() > 0.5
    if cbdice_maps is None:
        masks = _masks(prepared, valid, logits, start, mask)
        target_maps, pred_maps = radius_maps(torch.cat([masks, hard]), opts.iterations).chunk(2, 1)
    else:
        target_maps = _check_maps(cbdice_maps, logits).movedim(1, 0)[:, :, start:]
        if valid is not None:
            target_maps = torch.where(valid, target_maps, 0.0)  # (N, C or 1, *S) broadcasts
        pred_maps = radius_maps(hard, opts.iterations)
    omega = None if omega is None else omega.to(probs.dtype)
    sums = _sums(probs, target_maps.to(probs.dtype), pred_maps.to(probs.dtype), omega)
    if opts.batch:
        sums = sums.sum(1)
    weight = class_tensor(cast(Optional[Tensor], opts.weight), logits, "weight")
    if weight is not None and weight.ndim == 1:
        weight = weight[start:]
    return reduce_region(_cldice_terms(sums, opts.smooth), opts.reduction, weight)


_SHARED_DOC = """
    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: {target}
        cbdice_maps: the target's maps ``(N, 3, C, *S)`` (``D̂_Y, R̂_Y, I_Y`` along dim 1), e.g. stacked
            from :class:`CbDiceMapTransform` (computed with the same ``ignore_index`` and, for the softmax
            loss, ``include_background``); None computes them from the target at every call.
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, finite and ``>= 0``: every pixel's term of the
            four sums times ``ω`` (``Σ ω·I_P·p·D̂_Y``, ...; module docstring), the maps taken of the
            unweighted masks{binary_weights}. Ones give the loss without them.
        mask: ``(N, *S)`` bool, True where a pixel counts: a pixel outside it is an ignored one (see
            ``ignore_index``), whatever the target holds there (a soft target too).
        iterations: soft-skeleton steps (``>= 0``; the authors' 10) of the prediction's skeleton and of
            the target's when computed here; the skeleton reaches ``iterations + 1`` pixels deep, so
            choose it above the largest radius.{background}
        batch: pool the four sums over the batch: one loss per class (the authors' code pools the batch).
        smooth: ``s >= 0`` in the numerators and denominators of ``Tprec`` and ``Tsens`` (default 1, the
            authors' default; their trainers pass 1e-3); with ``s = 0`` an empty sum gives a ratio of 1.
        weight: per-class weights ``(C,)`` of the class mean.
        ignore_index: target value whose pixels count nowhere (background for every class in ``p`` and
            ``y`` before the skeletons and distances are taken).
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``), multiplied by ``weight``;
            ``sum`` -> its sum; ``mean`` -> its sum over ``N · Σ_c w_c`` (``N · C`` without weights).
"""
_SOFTMAX_TARGET = (
    "class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (class mask ``y > 0.5``); "
    "``p = softmax(z)``, ``P = {p > 0.5}``."
)
_BINARY_TARGET = (
    "the logits' shape; bool, integer or float in ``[0, 1]`` (mask ``y > 0.5``); ``p = sigmoid(z)`` "
    "per channel, ``P = {p > 0.5}``."
)
_BACKGROUND_DOC = """
        include_background: keep class 0 (default False: the foreground classes, as the authors; ``none``
            is then ``(N, C - 1)``)."""


def _document(function: Callable[..., Tensor], binary: bool) -> Callable[..., Tensor]:
    text = _SHARED_DOC.format(
        target=_BINARY_TARGET if binary else _SOFTMAX_TARGET,
        background="" if binary else _BACKGROUND_DOC,
        binary_weights="; the same ``ω`` for every channel" if binary else "",
    )
    function.__doc__ = (function.__doc__ or "").rstrip() + "\n" + text
    return function


def cbdice_loss(
    logits: Tensor,
    target: Tensor,
    cbdice_maps: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    iterations: int = ITERATIONS,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Centerline boundary Dice loss per class (Shi et al., MICCAI 2024), averaged over classes.

    ``1 - 2·Tprec·Tsens / (Tprec + Tsens)`` per (sample, class) with clDice's topology precision and
    sensitivity weighted by the skeleton radii of the target's mask ``Y`` and the prediction's hard mask
    ``P = {p > 0.5}`` (module docstring)::

        Tprec = (Σ I_P·p·D̂_Y + s) / (Σ I_P·p·[R̂_Y on K_Y, else R̂_P·p] + s)
        Tsens = (Σ I_Y·D̂_P·p + s) / (Σ I_Y·[R̂_P·p on K_P, else R̂_Y] + s)

    ``D̂`` the distance map clipped at and divided by the largest skeleton radius ``R_max``, ``R̂`` the
    skeleton radius over ``R_max``, ``I`` the inverse radius weight on the skeleton ``K``. 0 where ``P``
    equals the target's mask (whatever the confidence, with zero gradient), and for a class absent from
    both; a thin structure of ``L`` skeleton pixels missed entirely gives ``L / (L + 2)`` (``s = 1``), as
    clDice. The authors' ``SoftcbDiceLoss`` is ``binary_cbdice_loss(max_{c≥1} z_c - z_0, labels > 0,
    batch=True) - 1`` (for two classes: this loss with ``batch=True``, minus 1).
    """
    opts = CbDiceOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        iterations=iterations, include_background=include_background, batch=batch, smooth=smooth,
        weight=weight, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _cbdice(logits, target, cbdice_maps, opts, binary=False)


def binary_cbdice_loss(
    logits: Tensor,
    target: Tensor,
    cbdice_maps: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    iterations: int = ITERATIONS,
    batch: bool = False,
    smooth: float = 1.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Centerline boundary Dice loss per sigmoid channel, ``1 - 2·Tprec·Tsens / (Tprec + Tsens)`` (see
    :func:`cbdice_loss`), ``p = sigmoid(z)``; each channel's mask (``y > 0.5``) on its own.

    On ``(N, 1, *S)`` with ``batch=True`` it is the authors' ``SoftcbDiceLoss`` plus 1 (their single
    foreground logit is ``max_{c≥1} z_c - z_0``, their target ``labels > 0``).
    """
    opts = CbDiceOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        iterations=iterations, batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    return _cbdice(logits, target, cbdice_maps, opts, binary=True)


_document(cbdice_loss, binary=False)
_document(binary_cbdice_loss, binary=True)


class _WithCbDiceMaps(PrecomputedInputModule):
    """A cbDice module: ``forward(logits, target, cbdice_maps=None, weight_map=None, mask=None)``."""

    precomputed_input = "cbdice_maps"

    def forward(  # type: ignore[override]
        self,
        logits: Tensor,
        target: Tensor,
        cbdice_maps: Optional[Tensor] = None,
        weight_map: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        return self.call(logits, target, cbdice_maps, weight_map, mask)


CbDiceLoss, BinaryCbDiceLoss = module_pair(
    "CbDice", cbdice_loss, binary_cbdice_loss, CbDiceOptions, _cbdice, _WithCbDiceMaps
)

_REGISTERED: Tuple[Tuple[str, Any, str, str], ...] = (
    (
        "cbdice",
        CbDiceLoss,
        "softmax",
        "centerline boundary Dice: radius-weighted clDice per class (Shi 2024)",
    ),
    ("binary_cbdice", BinaryCbDiceLoss, "binary", "centerline boundary Dice per sigmoid channel (Shi 2024)"),
)
for _name, _module, _domain, _text in _REGISTERED:
    register(_name, _module, domain=_domain, description=_text, kind="region")

__all__ = [
    "BinaryCbDiceLoss",
    "CbDiceLoss",
    "CbDiceMapTransform",
    "binary_cbdice_loss",
    "cbdice_loss",
    "binary_skeleton",
    "radius_maps",
    "target_cbdice_maps",
]
