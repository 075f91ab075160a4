"""Boundary-aware losses (SPEC section 4): surface (boundary), Hausdorff DT, boundary IoU, active contour.

Targets are those of every other loss: softmax losses take class indices ``(N, *S)`` or one-hot / soft
``(N, C, *S)``; ``binary_*`` losses a target of the logits' shape. Where a loss needs a class *mask*
(for a distance map) a dense target counts as the class where ``y > 0.5``; where the formula uses
``y`` itself, the soft value is used.

**ignore_index in spatial operators.** Before any distance, erosion or difference, ignored pixels are
background for every class in both prediction and target; a finite difference that touches an ignored
pixel is dropped; ignored pixels enter no sum. All-ignored gives 0 with a gradient.

**weight_map and mask** (``(N, *S)``, :mod:`seglosses._core.pixel_weights`). ``mask`` is ``ignore_index``:
an index (or integer binary) target gets the ignore value at the masked pixels before anything is
computed from it; a floating (soft) or bool target is set to 0 there (background for every class, as an
ignored pixel) and the masked pixels count nowhere, their logits reaching neither value nor gradient.
Distances, bands and finite differences are computed on these unweighted maps; the weight ``ω``
multiplies the per-pixel terms that are summed afterwards (a binary loss's ``ω`` applies to every
channel). Precomputed ``dist_maps`` / ``bands`` are used as given: compute them from the masked target.

Distances are computed without gradient by :func:`seglosses.ops.distance_transform` on the logits'
device; precompute target maps once with :func:`target_distance_maps` / :class:`DistanceMapTransform`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .._core.deferred import check_count
from .._core.errors import expected
from .._core.numerics import compute_dtype, safe_divide, sigmoid_f32, softmax_f32
from .._core.options import (
    ClassValues,
    Options,
    Reduction,
    call_input,
    check_bool,
    check_ignore_index,
    check_int,
    check_number,
    check_reduction,
)
from .._core.pixel_weights import PixelWeights, mask_as_ignore, pixel_weights
from .._core.reduction import reduce, reduce_region
from .._core.registry import register
from .._core.stats import Overlap
from .._core.targets import (
    BinaryTarget,
    DenseTarget,
    IndexTarget,
    SoftmaxTarget,
    binary_target,
    input_checks_enabled,
    num_valid,
    softmax_target,
)
from ..ops.bands import band_width, boundary_band
from ..ops.distance import Spacing, check_spacing, sample_extremes, signed_distance_map, two_sided_distance
from .base import PixelWeightedModule, PrecomputedInputModule, module_pair
from .overlap import RegionOptions, Statistics, jaccard_score, region_loss

_LENGTH_EPS = 1e-8  # inside the square root of the active contour's length term (Chen et al.)


# --- shared preparation ------------------------------------------------------------------------------


class _Folded(NamedTuple):
    """One call's inputs with its ``mask`` folded in (:func:`_fold_mask`): the logits and target to use,
    the ignore value, the mask left ``(N, *S)`` (a floating or bool target's; None when folded into the
    target or absent) and the weight map ``(N, *S)`` or None."""

    logits: Tensor
    target: Tensor
    ignore_index: Optional[int]
    mask: Optional[Tensor]
    weight: Optional[Tensor]


def _fold_mask(logits: Tensor, target: Tensor, opts: Any, binary: bool) -> _Folded:
    """``opts.pixel_weights`` applied to the inputs, before anything is computed from the target.

    An integer target gets ``ignore_index`` (its own, or -1) at the masked pixels, so the loss is exactly
    that of the ignored pixels. A floating or bool target of the logits' shape is set to 0 at the masked
    pixels (background for every class, as an ignored pixel) and their logits to 0 (a NaN there reaches
    nothing); the mask is left for the valid masks of the loss."""
    pixels: Optional[PixelWeights] = getattr(opts, "pixel_weights", None)
    if pixels is None:
        return _Folded(logits, target, opts.ignore_index, None, None)
    target, ignore_index, mask = mask_as_ignore(target, pixels.mask, opts.ignore_index, binary=binary)
    if mask is not None and isinstance(target, Tensor) and target.shape == logits.shape:
        outside = ~mask.unsqueeze(1)
        logits, target = logits.masked_fill(outside, 0.0), target.masked_fill(outside, 0)
    elif mask is not None:  # a target the loss's checks reject: leave it to them
        logits = logits.masked_fill(~mask.unsqueeze(1), 0.0)
    return _Folded(logits, target, ignore_index, mask, pixels.weight)


def _with_mask(valid: Optional[Tensor], mask: Optional[Tensor]) -> Optional[Tensor]:
    """A valid mask ``(N, 1 | C, *S)`` (or None) and a pixel mask ``(N, *S)`` (or None), as one."""
    if mask is None:
        return valid
    return mask.unsqueeze(1) if valid is None else valid & mask.unsqueeze(1)


def _prepare(
    logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool, mask: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Probabilities and dense target ``(N, C, *S)`` in the compute dtype, both 0 at ignored pixels
    (background for every class), and the valid mask broadcastable to them, or None. ``mask``
    ``(N, *S)``: pixels outside it are invalid too (the target must already be 0 there,
    :func:`_fold_mask`)."""
    probs, masks, valid = _probabilities(logits, target, ignore_index, binary, masks=True, mask=mask)
    assert masks is not None
    return probs, masks, valid


def _probabilities(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    binary: bool,
    masks: bool,
    mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """:func:`_prepare`; with ``masks=False`` no dense form of an index target is made (None)."""
    dense: Optional[Tensor]
    valid: Optional[Tensor]
    if binary:
        prepared = binary_target(logits, target, ignore_index)  # its dense target is 0 at ignored pixels
        probs, dense, valid = sigmoid_f32(logits), prepared.dense, prepared.valid
    else:
        soft = softmax_target(logits, target, ignore_index)
        probs = softmax_f32(logits)
        if isinstance(soft, DenseTarget):
            dense, valid = soft.dense.to(probs.dtype), None
        else:
            dense = _target_masks(soft, logits.shape[1], 0).to(probs.dtype) if masks else None  # ignored: 0
            valid = None if soft.valid is None else soft.valid.unsqueeze(1)
    valid = _with_mask(valid, mask)
    if valid is None:
        return probs, dense, None
    return torch.where(valid, probs, 0.0), dense, valid


def _kept(start: int, *tensors: Tensor) -> Tuple[Tensor, ...]:
    """Channels ``start:`` of each ``(N, C, *S)`` tensor."""
    return tuple(t[:, start:] for t in tensors)


def _first_class(opts: ClassOptions, binary: bool) -> int:
    return 0 if binary or opts.include_background else 1


def _reduce_pixels(
    loss: Tensor, valid: Optional[Tensor], reduction: str, binary: bool, weight: Optional[Tensor] = None
) -> Tensor:
    """Pixel-loss reduction of ``(N, C', *S)`` terms: the class mean per pixel (softmax), then ``reduce``
    over valid pixels (SPEC: mean over valid pixels and supervised classes). With a weight map ``ω``
    ``(N, *S)`` (on every channel of a binary loss): ``ω_i L_i``, and ``mean`` divides by ``Σ_valid ω_i``."""
    if not binary:
        loss = loss.mean(1)
        valid = None if valid is None else valid[:, 0]
    elif valid is not None:
        valid = valid.expand_as(loss)  # a pixel mask (N, 1, *S) holds for every channel
    if valid is not None:
        loss = torch.where(valid, loss, 0.0)
    if weight is None:
        return reduce(loss, reduction, num_valid(valid, loss.shape))
    omega = (weight.unsqueeze(1) if binary else weight).to(loss.dtype)
    loss = loss * omega
    shares = omega.expand_as(loss) if valid is None else torch.where(valid, omega, 0.0)
    return reduce(loss, reduction, shares.sum(dtype=compute_dtype(loss)))


def _spatial_sum(values: Tensor) -> Tensor:
    return values.flatten(2).sum(-1)


@dataclass(frozen=True, kw_only=True, eq=False)
class ClassOptions(Options):
    """The options the boundary, Hausdorff and active contour losses share; binary losses keep every
    channel whatever ``include_background`` says."""

    include_background: bool
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "include_background": check_bool("include_background", self.include_background),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


# --- target distance maps ----------------------------------------------------------------------------


def target_distance_maps(
    target: Tensor,
    num_classes: int,
    *,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """Signed distance maps ``(N, C, *S)`` of an index target ``(N, *S)``, one per class, as
    :func:`boundary_loss` computes them on the fly (ignored pixels background for every class).

    Pass the result as ``dist_maps`` to skip the computation during training.
    """
    if not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        raise expected("an integer index target (N, *S)", getattr(target, "dtype", type(target).__name__))
    num_classes = check_int("num_classes", num_classes)  # also within int64: 10**400 overflows torch
    valid = None if ignore_index is None else target != ignore_index
    masks = _target_masks(IndexTarget(target, valid), num_classes, 0)
    return signed_distance_map(masks, check_spacing(spacing), spatial_dims=target.ndim - 1)


class DistanceMapTransform:
    """Dataset transform: a label map ``(*S)`` -> its signed distance maps ``(C, *S)`` (computed once).

    Example:
        >>> transform = DistanceMapTransform(num_classes=2)
        >>> transform(torch.tensor([[0, 1, 1, 1, 0]])).shape
        torch.Size([2, 1, 5])
    """

    def __init__(self, num_classes: int, *, spacing: Spacing = None, ignore_index: Optional[int] = None):
        self.num_classes = num_classes
        self.spacing = check_spacing(spacing)
        self.ignore_index = check_ignore_index(ignore_index)

    def __call__(self, labels: Tensor) -> Tensor:
        maps = target_distance_maps(
            labels.unsqueeze(0), self.num_classes, spacing=self.spacing, ignore_index=self.ignore_index
        )
        return maps[0]


# --- surface (boundary) loss -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class BoundaryOptions(ClassOptions):
    """The options of the distance-based losses: the shared ones plus the pixel ``spacing`` of the maps."""

    include_background: bool = False
    spacing: Spacing

    def checked(self) -> Dict[str, Any]:
        return {**super().checked(), "spacing": check_spacing(self.spacing)}


def _check_maps(dist_maps: Tensor, logits: Tensor, name: str = "dist_maps") -> Tensor:
    """Shape, dtype and device of precomputed maps (``name``: the argument, for the messages); with the
    input checks on, also finite values (a NaN or ±inf distance is no distance; with the checks off it
    makes the loss non-finite, never finite). The maps keep their graph: a map that requires grad gets
    ``∂L/∂φ = p`` (SPEC section 6)."""
    if not isinstance(dist_maps, Tensor) or not dist_maps.is_floating_point():
        raise expected(f"{name} as a floating-point tensor", getattr(dist_maps, "dtype", type(dist_maps)))
    if dist_maps.shape != logits.shape:
        shape = tuple(dist_maps.shape)
        raise expected(f"{name} of the logits' shape {tuple(logits.shape)}", f"shape {shape}")
    if dist_maps.device != logits.device:
        raise expected(f"{name} on the logits' device {logits.device}", f"device {dist_maps.device}")
    if input_checks_enabled() and dist_maps.numel():  # deferred on CUDA: no host synchronisation
        bad = (~torch.isfinite(dist_maps)).sum()
        check_count(bad, lambda n: f"expected finite {name}, got {n} NaN or ±inf values")
    return dist_maps


def _target_masks(prepared: Union[SoftmaxTarget, BinaryTarget], num_classes: int, start: int) -> Tensor:
    """Bool class masks ``(N, C - start, *S)`` of a prepared target, ignored pixels background; no float
    one-hot is built for an index target."""
    if not isinstance(prepared, IndexTarget):
        return prepared.dense[:, start:] > 0.5
    labels = prepared.labels
    classes = torch.arange(start, num_classes, device=labels.device).view(1, -1, *[1] * (labels.ndim - 1))
    masks = labels.unsqueeze(1) == classes
    return masks if prepared.valid is None else masks & prepared.valid.unsqueeze(1)


def _surface(
    logits: Tensor, target: Tensor, dist_maps: Optional[Tensor], opts: BoundaryOptions, binary: bool
) -> Tensor:
    folded = _fold_mask(logits, target, opts, binary)
    logits, target = folded.logits, folded.target
    start = _first_class(opts, binary)
    prepared: Union[SoftmaxTarget, BinaryTarget]
    if binary:
        prepared = binary_target(logits, target, folded.ignore_index)
        probs, valid = sigmoid_f32(logits), prepared.valid
    else:
        prepared = softmax_target(logits, target, folded.ignore_index)
        probs, valid = softmax_f32(logits), getattr(prepared, "valid", None)
        valid = None if valid is None else valid.unsqueeze(1)
    valid = _with_mask(valid, folded.mask)
    if dist_maps is None:
        masks = _target_masks(prepared, logits.shape[1], start)
        phi = signed_distance_map(masks, opts.spacing, spatial_dims=logits.ndim - 2)
    else:
        phi = _check_maps(dist_maps, logits)[:, start:]
    loss = phi.to(probs.dtype) * probs[:, start:]
    return _reduce_pixels(loss, valid, opts.reduction, binary, folded.weight)


def boundary_loss(
    logits: Tensor,
    target: Tensor,
    dist_maps: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    include_background: bool = False,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Surface (boundary) loss ``mean(φ_G · p)`` (Kervadec et al. 2019), ``p = softmax(z)``.

    ``φ_G`` is the signed distance map of each class's target mask
    (:func:`seglosses.ops.signed_distance_map`: negative inside, 0 on the inner boundary, positive
    outside; ``φ ≡ 0`` for a class absent from the sample). The loss is negative for a good prediction
    and not 0 for a perfect one; combine it with a region loss as ``α R + (1 - α) B``, ``α`` decreasing
    from 1 with the epoch (a schedule).

    With a weight map ``ω`` the loss is ``Σ_i ω_i mean_c φ_ic p_ic / Σ_i ω_i`` over the valid pixels: the
    maps ``φ`` are those of the unweighted (masked) target, the weight multiplies each pixel's term.

    Args:
        logits: ``(N, C, *S)``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (class mask ``y > 0.5``).
        dist_maps: precomputed ``φ`` of shape ``(N, C, *S)`` (e.g. by :func:`target_distance_maps`), or
            None to compute them from the target without gradient. With the input checks on
            (:func:`seglosses.set_input_checks`) a NaN or ±inf in them raises; with them off it makes the
            loss non-finite where it enters the formula. Used as given with a ``mask``: compute them from
            the masked target (``target_distance_maps(target.masked_fill(~mask, i), C, ignore_index=i)``).
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0``: ``ω_i mean_c φ_ic p_ic`` per pixel,
            ``mean`` divides by ``Σ_valid ω_i``; ``φ`` does not depend on ``ω``.
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, background for every class, and its pixels count nowhere).
        include_background: supervise class 0 too (default: foreground classes only).
        spacing: pixel size per spatial axis for the maps.
        ignore_index: target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``, the class mean per pixel (0 at ignored pixels); ``mean`` ->
            its mean over valid pixels; ``sum``.
    """
    opts = BoundaryOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        include_background=include_background, spacing=spacing, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    return _surface(logits, target, dist_maps, opts, binary=False)


def binary_boundary_loss(
    logits: Tensor,
    target: Tensor,
    dist_maps: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Surface loss per sigmoid channel, ``mean(φ_G · p)``, ``p = sigmoid(z)``; ``none`` -> ``(N, C, *S)``,
    ``mean`` over valid elements. Target and ``dist_maps`` have the logits' shape.

    ``weight_map`` ``ω`` ``(N, *S)`` (``>= 0``) weighs every channel of a pixel: ``ω_i φ_ic p_ic``, ``mean``
    divides by ``Σ_valid ω_i`` (counted per channel); ``mask`` ``(N, *S)`` is ``ignore_index`` at the
    pixels outside it (a float or bool target is 0 there and they count nowhere). ``φ`` does not depend on
    ``ω``."""
    opts = BoundaryOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        spacing=spacing, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _surface(logits, target, dist_maps, opts, binary=True)


# --- Hausdorff distance-transform loss ---------------------------------------------------------------


def _distance_fields(masks: Tensor, spacing: Spacing) -> Tensor:
    """``d_M = EDT(M) + EDT(¬M)`` per ``(…, *S)`` mask, 0 where ``M`` is empty or fills the image."""
    rank = masks.ndim - 2
    fields = two_sided_distance(masks, spacing, spatial_dims=rank)
    full, present = sample_extremes(masks, rank)
    mixed = present & ~full
    return fields * mixed.view(*mixed.shape, *[1] * rank)


@dataclass(frozen=True, kw_only=True, eq=False)
class HausdorffOptions(BoundaryOptions):
    """Boundary options plus the distance exponent ``alpha`` (``> 0``)."""

    alpha: float

    def checked(self) -> Dict[str, Any]:
        alpha = check_number("alpha", self.alpha, low=0.0, low_open=True)
        return {**super().checked(), "alpha": alpha}


def _hausdorff_terms(
    logits: Tensor, target: Tensor, opts: HausdorffOptions, binary: bool
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """The Hausdorff DT loss's unreduced terms ``(p - y)² (d_G^α + d_P^α)`` ``(N, C', *S)`` (the mask of
    ``opts.pixel_weights`` folded in), their valid mask and the weight map ``(N, *S)`` (or None)."""
    folded = _fold_mask(logits, target, opts, binary)
    probs, dense, valid = _prepare(folded.logits, folded.target, folded.ignore_index, binary, folded.mask)
    probs, dense = _kept(_first_class(opts, binary), probs, dense)
    masks = torch.cat([dense > 0.5, probs.detach() > 0.5])  # target and prediction in one transform
    d_target, d_prediction = _distance_fields(masks, opts.spacing).to(probs.dtype).chunk(2)
    alpha = opts.alpha
    loss = (probs - dense) ** 2 * (d_target**alpha + d_prediction**alpha)
    return loss, valid, folded.weight


def _hausdorff(logits: Tensor, target: Tensor, opts: HausdorffOptions, binary: bool) -> Tensor:
    loss, valid, weight = _hausdorff_terms(logits, target, opts, binary)
    return _reduce_pixels(loss, valid, opts.reduction, binary, weight)


def hausdorff_dt_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 2.0,
    include_background: bool = False,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Hausdorff distance-transform loss ``mean((p - y)² (d_G^α + d_P^α))`` (Karimi & Salcudean 2019).

    For a mask ``M``, ``d_M = EDT(M) + EDT(¬M)`` (0 if ``M`` is empty or full); ``G`` is the class's
    target mask, ``P = {p > 0.5}``; distances carry no gradient. ``α = 2`` as in the paper and MONAI's
    ``HausdorffDTLoss``. Perfect prediction gives 0.

    With a weight map ``ω``: ``Σ_i ω_i mean_c (p_ic - y_ic)² (d_G^α + d_P^α)_ic / Σ_i ω_i`` over the valid
    pixels; the distance fields are those of the unweighted (masked) target and prediction.

    Args:
        logits: ``(N, C, *S)``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0``, multiplying each pixel's term (not the
            distances); ``mean`` divides by ``Σ_valid ω_i``.
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, background for every class, and its pixels count nowhere).
        alpha: the exponent ``α > 0``.
        include_background: supervise class 0 too (default: foreground classes only).
        spacing: pixel size per spatial axis.
        ignore_index: target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)`` (class mean per pixel); ``mean`` over valid pixels; ``sum``.
    """
    opts = HausdorffOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, include_background=include_background, spacing=spacing, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    return _hausdorff(logits, target, opts, binary=False)


def binary_hausdorff_dt_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 2.0,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Hausdorff DT loss per sigmoid channel, ``mean((p - y)² (d_G^α + d_P^α))``.

    ``none`` -> ``(N, C, *S)``. ``weight_map`` ``ω`` ``(N, *S)`` weighs every channel of a pixel (its
    term, not the distances; ``mean`` divides by ``Σ_valid ω_i`` per channel); ``mask`` ``(N, *S)`` is
    ``ignore_index`` at the pixels outside it (a float or bool target is 0 there, counting nowhere).
    """
    opts = HausdorffOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, spacing=spacing, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _hausdorff(logits, target, opts, binary=True)


# --- boundary-IoU loss -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class BoundaryIoUOptions(RegionOptions):
    """Region options plus the band width ``dilation_ratio`` (relative to the image diagonal, ``>= 0``)."""

    dilation_ratio: float

    def checked(self) -> Dict[str, Any]:
        ratio = check_number("dilation_ratio", self.dilation_ratio, low=0.0)
        return {**super().checked(), "dilation_ratio": ratio}


def target_boundary_bands(
    target: Tensor,
    num_classes: Optional[int] = None,
    *,
    dilation_ratio: float = 0.02,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """The target's boundary bands ``B(y) = y - erode(y)`` ``(N, C, *S)``, as :func:`boundary_iou_loss`
    computes them on the fly: what the loss needs of the target alone.

    ``target``: class indices ``(N, *S)`` with ``num_classes`` (ignored pixels background for every
    class), or a dense target ``(N, C, *S)`` without it (one-hot or soft for the softmax loss, the
    binary loss's target; an integer one may hold ``ignore_index``). The band width comes from the
    spatial shape, so compute the bands of the patch the loss sees (crop the target first). Float64 for
    a float64 target, else float32 (a hard target's bands are 0 / 1, exact in either). Pass the result as
    ``bands``: the loss then computes only the prediction's band.
    """
    ratio = check_number("dilation_ratio", dilation_ratio, low=0.0)
    ignore_index = check_ignore_index(ignore_index)
    if not isinstance(target, Tensor):
        raise expected("target as a tensor", type(target).__name__)
    dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
    if num_classes is not None:
        if target.is_floating_point() or target.dtype == torch.bool:
            raise expected("an integer index target (N, *S) with num_classes", target.dtype)
        valid = None if ignore_index is None else target != ignore_index
        masks = _target_masks(IndexTarget(target, valid), check_int("num_classes", num_classes), 0).to(dtype)
    else:
        if target.ndim < 3:
            raise expected(
                "a dense target (N, C, *S) (or class indices with num_classes)", tuple(target.shape)
            )
        masks = target.to(dtype)
        if ignore_index is not None and not (target.is_floating_point() or target.dtype == torch.bool):
            masks = masks.masked_fill(target == ignore_index, 0.0)
    return boundary_band(masks, band_width(ratio, masks.shape[2:]))


class BoundaryBandTransform:
    """Dataset transform: a label map ``(*S)`` -> its boundary bands ``(C, *S)`` for
    :func:`boundary_iou_loss` (:func:`target_boundary_bands` of one sample; the band width comes from
    ``(*S)``, so apply it to the patch the loss sees).

    Example:
        >>> transform = BoundaryBandTransform(num_classes=2, dilation_ratio=0.0)
        >>> transform(torch.tensor([0, 1, 1, 1, 0]))[1]  # a 1-D label map: the band is the run's ends
        tensor([0., 1., 0., 1., 0.])
    """

    def __init__(self, num_classes: int, *, dilation_ratio: float = 0.02, ignore_index: Optional[int] = None):
        self.num_classes = check_int("num_classes", num_classes)
        self.dilation_ratio = check_number("dilation_ratio", dilation_ratio, low=0.0)
        self.ignore_index = check_ignore_index(ignore_index)

    def __call__(self, labels: Tensor) -> Tensor:
        bands = target_boundary_bands(
            labels.unsqueeze(0), self.num_classes, dilation_ratio=self.dilation_ratio,
            ignore_index=self.ignore_index,
        )  # fmt: skip
        return bands[0]


def _band_statistics(ratio: float, bands: Optional[Tensor], folded: Optional[_Folded] = None) -> Statistics:
    """The statistics of the soft bands; ``folded``: a call's mask (left of a soft target) and weights."""
    mask = None if folded is None else folded.mask
    weight = None if folded is None else folded.weight

    def statistics(logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool) -> Overlap:
        """Overlap of the soft bands: ``I = Σ ω B(p) B(y)``, ``FP = Σ ω B(p) - I``, ``FN = Σ ω B(y) - I``
        (``ω = 1`` without a weight map; 0 outside a mask left of a soft target)."""
        probs, dense, _ = _probabilities(logits, target, ignore_index, binary, masks=bands is None, mask=mask)
        width = band_width(ratio, logits.shape[2:])
        if bands is None:
            assert dense is not None
            band_y = boundary_band(dense, width)
        else:
            band_y = _check_maps(bands, logits, "bands").to(probs.dtype)
        band_p = boundary_band(probs, width)
        if mask is not None:  # a given band counts nowhere outside the mask (one computed here is 0)
            band_y = torch.where(mask.unsqueeze(1), band_y, 0.0)
        if weight is None:
            intersection = _spatial_sum(band_p * band_y)
            return Overlap(
                intersection, _spatial_sum(band_p) - intersection, _spatial_sum(band_y) - intersection
            )
        omega = weight.unsqueeze(1).to(probs.dtype)  # the bands of the unweighted maps, terms times ω
        weighted_p = band_p * omega
        intersection = _spatial_sum(weighted_p * band_y)
        return Overlap(
            intersection, _spatial_sum(weighted_p) - intersection, _spatial_sum(band_y * omega) - intersection
        )

    return statistics


def _boundary_iou(
    logits: Tensor, target: Tensor, bands: Optional[Tensor], opts: BoundaryIoUOptions, binary: bool
) -> Tensor:
    folded = _fold_mask(logits, target, opts, binary)
    statistics = _band_statistics(opts.dilation_ratio, bands, folded)
    plain = opts.with_values(ignore_index=folded.ignore_index, pixel_weights=None)
    return region_loss(
        folded.logits, folded.target, plain, binary, lambda s, _: 1 - jaccard_score(s, opts.smooth),
        statistics=statistics,
    )  # fmt: skip


def boundary_iou_loss(
    logits: Tensor,
    target: Tensor,
    bands: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    dilation_ratio: float = 0.02,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 0.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Boundary-IoU loss ``1 - (I + s) / (U + s)`` on soft boundary bands, per (sample, class).

    ``B(x) = x - minpool(x)`` over a ``(2d + 1)^k`` window with zero padding (outside the image is
    background), ``d = max(1, round(r · diagonal))`` as in :func:`seglosses.metrics.boundary_iou`; on
    the probabilities and on the (one-hot) target: ``I = Σ B(p) B(y)``, ``U = Σ B(p) + Σ B(y) - I``;
    ``U + s = 0`` gives 0. At saturated logits it equals ``1 -`` the Boundary IoU metric. With ``s = 0`` a
    class absent from the target but with any predicted band has loss 1 (and no gradient), as in the
    region losses; ``smooth > 0`` makes the loss continuous there.

    With a weight map ``ω`` the bands are those of the unweighted (masked) maps and the statistics their
    weighted sums: ``I = Σ ω B(p) B(y)``, ``U = Σ ω B(p) + Σ ω B(y) - I``.

    Args:
        logits: ``(N, C, *S)``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.
        bands: the target's bands ``(N, C, *S)`` precomputed by :func:`target_boundary_bands` (or
            :class:`BoundaryBandTransform` per sample) with the same ``dilation_ratio`` and
            ``ignore_index``; None computes them on the fly, about half the loss's time. Used as given
            with a ``mask`` (compute them from the masked target), except that a soft target's masked
            pixels count nowhere.
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0``, in every sum of the band statistics.
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, background for every class, and its pixels count nowhere).
        dilation_ratio: ``r >= 0``, the band width relative to the image diagonal.
        include_background, batch, smooth, weight, ignore_index: as the region losses
            (:func:`seglosses.functional.dice_loss`).
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``); ``mean`` -> the (weighted)
            class mean averaged over samples; ``sum``.
    """
    opts = BoundaryIoUOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        dilation_ratio=dilation_ratio, include_background=include_background, batch=batch, smooth=smooth,
        weight=weight, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _boundary_iou(logits, target, bands, opts, binary=False)


def binary_boundary_iou_loss(
    logits: Tensor,
    target: Tensor,
    bands: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    dilation_ratio: float = 0.02,
    batch: bool = False,
    smooth: float = 0.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Boundary-IoU loss per sigmoid channel, ``1 - (I + s) / (U + s)`` on soft bands ``x - minpool(x)``.

    ``weight_map`` ``ω`` ``(N, *S)`` weighs every channel's band sums (``I = Σ ω B(p) B(y)``, ...; the
    bands of the unweighted maps); ``mask`` ``(N, *S)`` is ``ignore_index`` at the pixels outside it (a
    float or bool target is 0 there, counting nowhere)."""
    opts = BoundaryIoUOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        dilation_ratio=dilation_ratio, batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    return _boundary_iou(logits, target, bands, opts, binary=True)


# --- active contour loss -----------------------------------------------------------------------------


def _window(values: Tensor, shifted_axis: Optional[int]) -> Tensor:
    """The ``(n_1 - 1) × … × (n_k - 1)`` grid of ``values`` ``(N, C, *S)``, moved by one along
    ``shifted_axis`` (a spatial axis index) or not moved (None)."""
    index = [slice(None), slice(None)]
    index += [slice(1, None) if a == shifted_axis else slice(None, -1) for a in range(values.ndim - 2)]
    return values[tuple(index)]


def _contour_sums(
    probs: Tensor, dense: Tensor, valid: Optional[Tensor], weight: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(length, pairs, region, pixels)``, each summed over space ``(N, C)`` (counts ``(N, 1|C)``).

    ``weight`` ``ω`` ``(N, *S)``: each region term times its pixel's ``ω`` and each length term (a point
    of the gradient magnitude map) times the ``ω`` of the pixel it starts from (the grid point, before the
    forward differences); the counts become the summed weights."""
    rank = probs.ndim - 2
    base = _window(probs, None)
    squares = torch.zeros_like(base)
    for axis in range(rank):
        squares = squares + (_window(probs, axis) - base) ** 2
    length = torch.sqrt(squares + _LENGTH_EPS)
    region = probs * (1 - dense) ** 2 + (1 - probs) * dense**2
    if valid is None and weight is None:
        n = probs.shape[0]
        pairs = torch.tensor(float(math.prod(base.shape[2:])), device=probs.device).expand(n, 1)
        pixels = torch.tensor(float(math.prod(probs.shape[2:])), device=probs.device).expand(n, 1)
        return _spatial_sum(length), pairs, _spatial_sum(region), pixels
    grid: Optional[Tensor] = None
    if valid is not None:
        grid = _window(valid, None)
        for a in range(rank):
            grid = grid & _window(valid, a)
        length = torch.where(grid, length, 0.0)
        region = torch.where(valid, region, 0.0)
    if weight is None:
        assert grid is not None and valid is not None
        pairs, pixels = _spatial_sum(grid.float()), _spatial_sum(valid.float())
        return _spatial_sum(length), pairs, _spatial_sum(region), pixels
    omega = weight.unsqueeze(1).to(probs.dtype)  # (N, 1, *S)
    at_grid = _window(omega, None)
    length, region = length * at_grid, region * omega
    pairs = at_grid if grid is None else torch.where(grid, at_grid, 0.0)
    pixels = omega if valid is None else torch.where(valid, omega, 0.0)
    return _spatial_sum(length), _spatial_sum(pairs), _spatial_sum(region), _spatial_sum(pixels)


@dataclass(frozen=True, kw_only=True, eq=False)
class ActiveContourOptions(ClassOptions):
    """The shared options plus the region weight ``lam`` (``>= 0``), ``normalize`` and ``batch``."""

    include_background: bool = True
    lam: float
    normalize: bool
    batch: bool

    def checked(self) -> Dict[str, Any]:
        return {
            **super().checked(),
            "lam": check_number("lam", self.lam, low=0.0),
            "normalize": check_bool("normalize", self.normalize),
            "batch": check_bool("batch", self.batch),
        }


def _active_contour(logits: Tensor, target: Tensor, opts: ActiveContourOptions, binary: bool) -> Tensor:
    folded = _fold_mask(logits, target, opts, binary)
    probs, dense, valid = _prepare(folded.logits, folded.target, folded.ignore_index, binary, folded.mask)
    probs, dense = _kept(_first_class(opts, binary), probs, dense)
    length, pairs, region, pixels = _contour_sums(probs, dense, valid, folded.weight)
    pairs, pixels = pairs.expand_as(length), pixels.expand_as(length)
    if opts.batch:
        length, pairs, region, pixels = (t.sum(0) for t in (length, pairs, region, pixels))
    if opts.normalize:
        length, region = safe_divide(length, pairs, 0.0), safe_divide(region, pixels, 0.0)
    return reduce_region(length + opts.lam * region, opts.reduction)


def active_contour_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    lam: float = 1.0,
    normalize: bool = True,
    include_background: bool = True,
    batch: bool = False,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Active contour loss ``length + λ · region`` per (sample, class) (Chen et al. 2019).

    ``length = Σ sqrt(Σ_a (∂_a p)² + ε)`` over the ``(n_1 - 1) × … × (n_k - 1)`` grid of forward
    differences taken at the same pixels (``ε = 1e-8``); ``region = Σ p (1 - y)² + (1 - p) y²`` (inside
    value ``c1 = 1``, outside ``c2 = 0``). With ``normalize`` (default) each term is divided by its
    number of terms (valid difference tuples, valid pixels), so the loss does not grow with the image;
    ``normalize=False`` gives the paper's plain sums. Not 0 for a perfect prediction (its length remains).

    With a weight map ``ω``: ``region = Σ_i ω_i (p_i (1 - y_i)² + (1 - p_i) y_i²)``, and the length term
    is weighted per point of the gradient magnitude map, each point by the ``ω`` of the pixel its forward
    differences start from: ``length = Σ_i ω_i sqrt(Σ_a (p_{i + e_a} - p_i)² + ε)``; ``normalize`` divides
    each by its summed weights (``Σ ω`` over the valid difference tuples, over the valid pixels). The
    differences are those of the unweighted probabilities.

    Args:
        logits: ``(N, C, *S)``, any spatial size, 1-D to 3-D.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0``, on the region and length terms (above).
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, background for every class; its pixels and the differences
            touching them count nowhere).
        lam: ``λ >= 0``, the weight of the region term.
        normalize: divide each term by its number of terms.
        include_background: keep class 0.
        batch: pool the sums (and counts) over the batch: one loss per class.
        ignore_index: target value whose pixels count nowhere (differences touching them are dropped).
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``); ``mean`` over pairs; ``sum``.
    """
    opts = ActiveContourOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        lam=lam, normalize=normalize, include_background=include_background, batch=batch,
        ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _active_contour(logits, target, opts, binary=False)


def binary_active_contour_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    lam: float = 1.0,
    normalize: bool = True,
    batch: bool = False,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Active contour loss per sigmoid channel, ``length + λ · region`` (see :func:`active_contour_loss`).

    ``weight_map`` ``ω`` ``(N, *S)`` weighs every channel's region and length terms as there; ``mask``
    ``(N, *S)`` is ``ignore_index`` at the pixels outside it (a float or bool target is 0 there)."""
    opts = ActiveContourOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        lam=lam, normalize=normalize, batch=batch, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _active_contour(logits, target, opts, binary=True)


# --- modules and registry ----------------------------------------------------------------------------


class _WithBands(PrecomputedInputModule):
    """A boundary-IoU module: ``forward(logits, target, bands=None, weight_map=None, mask=None)``."""

    precomputed_input = "bands"

    def forward(  # type: ignore[override]
        self,
        logits: Tensor,
        target: Tensor,
        bands: Optional[Tensor] = None,
        weight_map: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        return self.call(logits, target, bands, weight_map, mask)


class _WithMaps(PrecomputedInputModule):
    """A surface-loss module: ``forward(logits, target, dist_maps=None, weight_map=None, mask=None)``."""

    precomputed_input = "dist_maps"

    def forward(  # type: ignore[override]
        self,
        logits: Tensor,
        target: Tensor,
        dist_maps: Optional[Tensor] = None,
        weight_map: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        return self.call(logits, target, dist_maps, weight_map, mask)


BoundaryLoss, BinaryBoundaryLoss = module_pair(
    "Boundary", boundary_loss, binary_boundary_loss, BoundaryOptions, _surface, _WithMaps
)
HausdorffDTLoss, BinaryHausdorffDTLoss = module_pair(
    "HausdorffDT", hausdorff_dt_loss, binary_hausdorff_dt_loss, HausdorffOptions, _hausdorff,
    PixelWeightedModule,
)  # fmt: skip
BoundaryIoULoss, BinaryBoundaryIoULoss = module_pair(
    "BoundaryIoU", boundary_iou_loss, binary_boundary_iou_loss, BoundaryIoUOptions, _boundary_iou, _WithBands
)
ActiveContourLoss, BinaryActiveContourLoss = module_pair(
    "ActiveContour", active_contour_loss, binary_active_contour_loss, ActiveContourOptions, _active_contour,
    PixelWeightedModule,
)  # fmt: skip

for _name, _module, _domain, _kind, _text in (
    ("boundary", BoundaryLoss, "softmax", "pixel", "surface loss mean(φ_G · p) on signed distance maps"),
    ("binary_boundary", BinaryBoundaryLoss, "binary", "pixel", "surface loss per sigmoid channel"),
    ("hausdorff_dt", HausdorffDTLoss, "softmax", "pixel", "Hausdorff distance-transform loss (Karimi 2019)"),
    ("binary_hausdorff_dt", BinaryHausdorffDTLoss, "binary", "pixel", "Hausdorff DT loss per channel"),
    ("boundary_iou", BoundaryIoULoss, "softmax", "region", "1 - IoU of soft boundary bands per class"),
    ("binary_boundary_iou", BinaryBoundaryIoULoss, "binary", "region", "boundary-IoU loss per channel"),
    ("active_contour", ActiveContourLoss, "softmax", "region", "active contour loss: length + λ·region"),
    ("binary_active_contour", BinaryActiveContourLoss, "binary", "region", "active contour loss per channel"),
):
    register(_name, _module, domain=_domain, description=_text, kind=_kind)
