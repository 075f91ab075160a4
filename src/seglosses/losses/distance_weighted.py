"""Boundary-weighted losses from the target's geometry: Boundary DoU, region-wise, distance-penalised CE.

* ``boundary_dou`` — Boundary Difference over Union (Sun et al., MICCAI 2023), a region loss whose
  ``α`` comes from the target's boundary / area ratio per (sample, class).
* ``region_wise`` — region-wise loss with rectified region-wise (RRW) maps (Valverde & Tohka, Pattern
  Recognition 2023): ``mean_c p_c Z_c`` with ``Z`` from the distance transform of each class mask.
* ``distance_ce`` — distance-map-penalised cross-entropy (Calivá et al., MIDL 2019): ``CE · (1 + D)``,
  ``D`` largest next to the target's boundaries.

Class masks, ``ignore_index`` and distances follow :mod:`seglosses.losses.boundary`: a dense target's
class mask is ``y > 0.5``; ignored pixels belong to no class mask (they are outside every class) and
enter no sum. Maps are computed without gradient by :func:`seglosses.ops.distance_transform` on the
logits' device; ``region_wise`` and ``distance_ce`` also take them precomputed (``dist_maps``, see
:func:`rectified_region_maps` and :func:`boundary_penalty_maps`).

``weight_map`` ``ω`` and ``mask`` ``(N, *S)`` (:mod:`seglosses._core.pixel_weights`), as in
:mod:`seglosses.losses.boundary`: the mask is ``ignore_index`` (an integer target gets the ignore value
outside it; a soft or bool target is 0 there, in no class mask, and its pixels count nowhere); maps, face
boundaries and ``α`` come from the unweighted (masked) target, and ``ω`` multiplies the per-pixel terms
that are summed: ``ω_i L_i`` of the pixel losses (``mean`` divides by the valid pixels' summed weights, as
their class weights do), and ``TP = Σ ω p y``, ``Σ ω p²``, ``Σ ω y²`` of Boundary DoU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Union, cast

import torch
from torch import Tensor

from .._core.numerics import binary_log_terms, compute_dtype, safe_divide, sigmoid_f32, softmax_f32
from .._core.options import (
    ClassValues,
    Options,
    Reduction,
    call_input,
    channel_tensor,
    check_ignore_index,
    check_number,
    check_reduction,
    class_tensor,
    class_values,
)
from .._core.pixel_weights import PixelWeights, pixel_weights
from .._core.reduction import reduce
from .._core.registry import register
from .._core.stats import (
    Overlap,
    sigmoid_overlap_from_dense,
    softmax_overlap_from_dense,
    softmax_overlap_from_index,
)
from .._core.targets import (
    BinaryTarget,
    DenseTarget,
    IndexTarget,
    SoftmaxTarget,
    binary_target,
    check_binary_target,
    num_valid,
    softmax_target,
)
from ..ops.bands import face_boundary
from ..ops.distance import Spacing, check_spacing, distance_transform
from .base import PixelWeightedModule, module_pair
from .boundary import (
    BoundaryOptions,
    _check_maps,
    _first_class,
    _fold_mask,
    _Folded,
    _reduce_pixels,
    _target_masks,
    _with_mask,
    _WithMaps,
)
from .cross_entropy import CrossEntropyOptions, ce_from_prepared
from .overlap import RegionOptions, Statistics, region_loss

# --- maps from class masks ---------------------------------------------------------------------------


def _depth(masks: Tensor, spacing: Spacing) -> Tensor:
    """Each pixel's distance to the nearest pixel outside its mask (0 outside), ``(N, C, *S)``."""
    return distance_transform(masks, spacing, spatial_dims=masks.ndim - 2)


def _per_map(values: Tensor, reduce_fn: str) -> Tensor:
    """The max or min of each ``(n, c)`` map, shaped to broadcast over ``(N, C, *S)``."""
    flat = values.flatten(2)
    out = flat.amax(-1) if reduce_fn == "max" else flat.amin(-1)
    return out.view(*out.shape, *[1] * (values.ndim - 2))


def rectified_region_maps(masks: Tensor, spacing: Spacing = None) -> Tensor:
    """Rectified region-wise (RRW) maps (Valverde & Tohka 2023) of bool class masks ``(N, C, *S)``.

    ``Z = -D / max D`` inside the mask (``D`` the distance to the nearest pixel outside it, ``max`` over
    the map: -1 at the deepest pixel, ``-1/max D`` next to the boundary) and ``Z = 1`` outside; an empty
    mask gives ``Z ≡ 1``. As the authors' ``rrwmap`` (which divides by ``max D + 1e-15``); a mask filling
    the image counts as surrounded by background (:func:`seglosses.ops.distance_transform`). float32.

    Example:
        >>> rectified_region_maps(torch.tensor([[[0, 1, 1, 1, 0]]]).bool()).tolist()
        [[[1.0, -0.5, -1.0, -0.5, 1.0]]]
    """
    masks = masks.bool()
    depth = _depth(masks, spacing)
    if depth.numel() == 0:
        return depth
    deepest = _per_map(depth, "max").clamp_min(torch.finfo(depth.dtype).tiny)  # > 0 wherever a mask is
    return torch.where(masks, -depth / deepest, 1.0)


def boundary_penalty_maps(masks: Tensor, spacing: Spacing = None) -> Tensor:
    """Boundary penalty maps (Calivá et al. 2019) of bool class masks ``(N, C, *S)``.

    Inside a mask, the depth ``d`` (distance to the nearest pixel outside) inverted and scaled to
    ``[0, 1]``: ``D = (max d - d) / (max d - min d)`` over the mask's pixels, 1 next to the boundary, 0 at
    the deepest pixels; ``D = 1`` where every pixel of the mask is equally deep (a one-pixel-wide line);
    ``D = 0`` outside. Per side of a binary boundary this is the scaling of JunMa11/SegLossOdyssey's
    ``compute_edts_forPenalizedLoss``; a binary map is ``boundary_penalty_maps(M) +
    boundary_penalty_maps(~M)``. float32.

    Example:
        >>> boundary_penalty_maps(torch.tensor([[[0, 1, 1, 1, 1, 1, 0]]]).bool()).tolist()
        [[[0.0, 1.0, 0.5, 0.0, 0.5, 1.0, 0.0]]]
    """
    masks = masks.bool()
    depth = _depth(masks, spacing)
    if depth.numel() == 0:
        return depth
    deepest = _per_map(depth, "max")
    shallowest = _per_map(torch.where(masks, depth, torch.inf), "min")
    span = deepest - shallowest  # NaN-free: -inf only for an empty mask, whose pixels are all outside
    flat = ~(span > 0)
    inverted = torch.where(flat, 1.0, (deepest - depth) / torch.where(flat, 1.0, span))
    return torch.where(masks, inverted, 0.0)


def _binary_masks(prepared: BinaryTarget) -> Tensor:
    """The foreground masks of a prepared binary target (ignored elements: not foreground)."""
    return prepared.dense > 0.5


# --- Boundary DoU ------------------------------------------------------------------------------------


class DoUStats(NamedTuple):
    """The squared-form overlap (``TP = Σ p y``, ``FP = Σ p² - TP``, ``FN = Σ y² - TP``) and the target's
    boundary pixel count ``edge`` and area ``area``, each ``(N, C)`` (or ``(C,)`` after :meth:`pooled`)."""

    tp: Tensor
    fp: Tensor
    fn: Tensor
    edge: Tensor
    area: Tensor

    def pooled(self) -> "DoUStats":
        return DoUStats(*(t.sum(0) for t in self))

    def select(self, start: int) -> "DoUStats":
        return DoUStats(*(t[..., start:] for t in self))


def _dou_statistics(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    binary: bool,
    mask: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
) -> DoUStats:
    """The squared-form overlap, weighted by ``weight`` ``(N, *S)`` (``Σ ω p y``, ``Σ ω p²``, ``Σ ω y²``),
    and the unweighted edge and area of the target's masks; ``mask`` ``(N, *S)``: the mask left of a soft
    or bool target (:func:`~seglosses.losses.boundary._fold_mask`, which set the target to 0 outside it)."""
    overlap: Overlap
    omega = None if weight is None else weight.unsqueeze(1)
    if binary:
        valid = _with_mask(check_binary_target(logits, target, ignore_index), mask)
        valid = None if valid is None else valid.expand(logits.shape)
        overlap = sigmoid_overlap_from_dense(logits, target, valid, squared=True, weight=omega)
        masks = target > 0.5 if target.dtype != torch.bool else target
        masks = masks if valid is None else masks & valid
    else:
        soft = softmax_target(logits, target, ignore_index)
        if isinstance(soft, IndexTarget):  # a mask is folded into its ignore_index
            overlap = softmax_overlap_from_index(
                logits, soft.labels, soft.valid, soft.ignore_index, soft, squared=True, weight=weight
            )
        else:
            inside = None if mask is None else mask.unsqueeze(1)
            overlap = softmax_overlap_from_dense(logits, soft.dense, squared=True, valid=inside, weight=omega)
        masks = _target_masks(soft, logits.shape[1], 0)
    dtype = overlap.tp.dtype
    edge = face_boundary(masks).flatten(2).sum(-1).to(dtype)
    area = masks.flatten(2).sum(-1).to(dtype)
    return DoUStats(overlap.tp, overlap.fp, overlap.fn, edge, area)


@dataclass(frozen=True, kw_only=True, eq=False)
class BoundaryDoUOptions(RegionOptions):
    """Region options plus ``max_alpha``, the upper clip of ``α`` (in ``[-1, 1)``)."""

    max_alpha: float

    def checked(self) -> Dict[str, Any]:
        max_alpha = check_number("max_alpha", self.max_alpha, low=-1.0, high=1.0, high_open=True)
        return {**super().checked(), "max_alpha": max_alpha}


def _ratio(num: Tensor, den: Tensor, smooth: float) -> Tensor:
    """``(num + s) / (den + s)``, 0 where the denominator is exactly 0 (``s = 0``, both empty)."""
    if smooth >= torch.finfo(den.dtype).tiny:
        return (num + smooth) / (den + smooth)
    return safe_divide(num, den, 0.0)


def _dou_per_class(opts: BoundaryDoUOptions):  # noqa: ANN202 - region_loss's PerClass
    def per_class(s: DoUStats, _: Dict[str, Optional[Tensor]]) -> Tensor:
        alpha = (1 - 2 * _ratio(s.edge, s.area, opts.smooth)).clamp(max=opts.max_alpha)
        difference = s.fp + s.fn  # Σ p² + Σ y² - 2 Σ p y = |G ∪ P| - |G ∩ P| in the squared form
        return _ratio(difference, difference + (1 - alpha) * s.tp, opts.smooth)

    return per_class


def _boundary_dou(logits: Tensor, target: Tensor, opts: BoundaryDoUOptions, binary: bool) -> Tensor:
    folded = _fold_mask(logits, target, opts, binary)

    def statistics(logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool) -> DoUStats:
        return _dou_statistics(logits, target, ignore_index, binary, folded.mask, folded.weight)

    plain = opts.with_values(ignore_index=folded.ignore_index, pixel_weights=None)
    return region_loss(  # region_loss needs only pooled / select / tp of the statistics
        folded.logits, folded.target, plain, binary, _dou_per_class(opts),
        statistics=cast(Statistics, statistics),
    )  # fmt: skip


def boundary_dou_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    max_alpha: float = 0.8,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 0.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Boundary Difference over Union loss (Sun et al., MICCAI 2023), per (sample, class).

    ``L = (|G ∪ P| - |G ∩ P| + s) / (|G ∪ P| - α |G ∩ P| + s)`` in the authors' squared soft form:
    ``I = Σ p y``, ``|G ∪ P| = Σ p² + Σ y² - I``, so ``L = (FP + FN + s) / (FP + FN + (1 - α) TP + s)``
    with ``FP = Σ p² - I``, ``FN = Σ y² - I``. ``α = min(1 - 2 (C + s) / (S + s), max_alpha)`` from the
    target: ``S`` its pixels, ``C`` those with a face neighbour outside it (the image border counts as
    outside; the authors' cross kernel). A thin structure (``C = S``) has ``α = -1``: ``L`` is
    ``1 - Dice``; a large one ``α -> 1``, clipped at 0.8 as the authors recommend, puts the weight on the
    boundary. ``α`` carries no gradient.

    The authors' ``BoundaryDoULoss`` (sunfan-bvb/BoundaryDoULoss) is ``batch=True, smooth=1e-5`` (it pools
    over the batch, keeps class 0 and averages the classes). Here ``s = 0`` by default, as the other
    region losses: a (sample, class) absent from target and prediction gives 0 (with ``s > 0``: 1, the
    authors' value), and a perfect prediction gives exactly 0 (with ``s > 0``:
    ``s / ((1 - α) S + s)``). A class absent from the target but predicted gives 1 with no gradient, in
    both.

    With a weight map ``ω`` the overlap is weighted, ``I = Σ ω p y``, ``FP = Σ ω p² - I``,
    ``FN = Σ ω y² - I``, while ``α`` stays the target's geometry: ``C`` and ``S`` are pixel counts of the
    unweighted (masked) target, since ``α`` describes its shape, not the weights.

    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (``y`` as given; the masks for
            ``C`` and ``S``: ``y > 0.5``).
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0``, in the overlap's sums (not in ``α``).
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, in no class mask, and its pixels count nowhere).
        max_alpha: the upper clip of ``α``, in ``[-1, 1)``.
        include_background: keep class 0 (default, as the authors).
        batch: pool the sums and counts over the batch: one loss per class (the authors' form).
        smooth: ``s >= 0``.
        weight: per-class weights ``(C,)`` of the class mean.
        ignore_index: target value whose pixels count nowhere (and belong to no class mask).
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``); ``mean``; ``sum``.
    """
    opts = BoundaryDoUOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        max_alpha=max_alpha, include_background=include_background, batch=batch, smooth=smooth,
        weight=weight, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _boundary_dou(logits, target, opts, binary=False)


def binary_boundary_dou_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    max_alpha: float = 0.8,
    batch: bool = False,
    smooth: float = 0.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Boundary DoU loss per sigmoid channel (see :func:`boundary_dou_loss`); ``none`` -> ``(N, C)``.
    ``weight_map`` ``ω`` ``(N, *S)`` weighs every channel's overlap sums (not ``α``); ``mask`` ``(N, *S)``
    is ``ignore_index`` at the pixels outside it (a float or bool target is 0 there)."""
    opts = BoundaryDoUOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        max_alpha=max_alpha, batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    return _boundary_dou(logits, target, opts, binary=True)


# --- region-wise loss --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class RegionWiseOptions(BoundaryOptions):
    """The distance-map options (``spacing``), every class kept by default as the authors."""

    include_background: bool = True


def _region_wise(
    logits: Tensor, target: Tensor, dist_maps: Optional[Tensor], opts: RegionWiseOptions, binary: bool
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
        if isinstance(prepared, BinaryTarget):
            masks = _binary_masks(prepared)
        else:
            masks = _target_masks(prepared, logits.shape[1], start)
        maps = rectified_region_maps(masks, opts.spacing)
    else:
        maps = _check_maps(dist_maps, logits)[:, start:]
    loss = maps.to(probs.dtype) * probs[:, start:]
    if valid is not None:  # a NaN logit at an ignored pixel reaches nothing
        loss = torch.where(valid, loss, 0.0)
    return _reduce_pixels(loss, valid, opts.reduction, binary, folded.weight)


def region_wise_loss(
    logits: Tensor,
    target: Tensor,
    dist_maps: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    include_background: bool = True,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Region-wise loss with rectified region-wise maps (Valverde & Tohka, Pattern Recognition 2023).

    ``L = mean_i mean_c p_ic Z_ic``, ``p = softmax(z)``, with the RRW map of each class's target mask
    (:func:`rectified_region_maps`): ``Z = -D / max D`` inside the class (``D`` the distance to the
    class's boundary), ``Z = 1`` outside. Each pixel's loss is smallest when all its mass is on its
    target class, so the loss has its minimum at the perfect prediction, where it is negative (as the
    surface loss, not 0): ``-mean_i (D_i / max D) / C``. Equal to the authors' ``RWLoss``
    (jmlipman/RegionWiseLoss), ``mean(softmax(z) · rrwmap)``.

    Any region-wise map can be passed as ``dist_maps`` (e.g. precomputed RRW maps, or class-weighted maps:
    the RW framework of the paper), then used as given.

    With a weight map ``ω``: ``L = Σ_i ω_i mean_c p_ic Z_ic / Σ_i ω_i`` over the valid pixels, ``Z`` the
    maps of the unweighted (masked) target.

    Args:
        logits: ``(N, C, *S)``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (class mask ``y > 0.5``).
        dist_maps: maps ``Z`` of the logits' shape, or None to compute the RRW maps from the target
            without gradient. A map that requires grad gets ``∂L/∂Z = p`` (divided as the loss). Used as
            given with a ``mask``: compute them from the masked target.
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0``, multiplying each pixel's term (not
            ``Z``); ``mean`` divides by ``Σ_valid ω_i``.
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, in no class mask, and its pixels count nowhere).
        include_background: keep class 0 (default, as the authors).
        spacing: pixel size per spatial axis for the distances.
        ignore_index: target value whose pixels count nowhere (outside every class mask).
        reduction: ``none`` -> ``(N, *S)``, the class mean per pixel (0 at ignored pixels); ``mean`` ->
            its mean over valid pixels; ``sum``.
    """
    opts = RegionWiseOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        include_background=include_background, spacing=spacing, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    return _region_wise(logits, target, dist_maps, opts, binary=False)


def binary_region_wise_loss(
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
    r"""Region-wise loss per sigmoid channel, ``mean(σ(z) · Z)`` with the RRW map ``Z`` of each channel's
    foreground (as :func:`~seglosses.functional.binary_boundary_loss` uses the foreground's map only; the
    two-class form is :func:`region_wise_loss` on two channels). ``none`` -> ``(N, C, *S)``.
    ``weight_map`` ``ω`` ``(N, *S)`` weighs every channel of a pixel (its term, not ``Z``); ``mask``
    ``(N, *S)`` is ``ignore_index`` at the pixels outside it (a float or bool target is 0 there)."""
    opts = RegionWiseOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        spacing=spacing, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _region_wise(logits, target, dist_maps, opts, binary=True)


# --- distance-penalised cross-entropy ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class DistanceCEOptions(Options):
    """Cross-entropy's class ``weight`` and ``ignore_index``, the ``spacing`` of the maps, ``reduction``."""

    weight: Optional[ClassValues]
    spacing: Spacing
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "weight": class_values("weight", self.weight, allow_scalar=False),
            "spacing": check_spacing(self.spacing),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


_CE_NONE = CrossEntropyOptions(
    weight=None, weight_schedule=None, step=0.0, label_smoothing=0.0, ignore_index=None, reduction="none"
)


def _weighted_reduce(loss: Tensor, shares: Tensor, reduction: str, weight: Optional[Tensor]) -> Tensor:
    """``reduce`` of ``ω_i L_i`` with ``mean`` over ``Σ ω_i d_i`` (``shares`` ``d``: each element's share of
    the unweighted mean's denominator, 0 where invalid; ``weight`` ``ω`` broadcastable, or None)."""
    if weight is not None:
        omega = weight.to(loss.dtype)
        loss, shares = loss * omega, shares * omega
    return reduce(loss, reduction, shares.sum(dtype=loss.dtype))


def _distance_ce(
    logits: Tensor, target: Tensor, dist_maps: Optional[Tensor], opts: DistanceCEOptions, binary: bool
) -> Tensor:
    folded = _fold_mask(logits, target, opts, binary)
    if binary:
        return _binary_distance_ce(dist_maps, opts, folded)
    logits, target, omega = folded.logits, folded.target, folded.weight
    prepared = softmax_target(logits, target, folded.ignore_index, log_terms=True)
    work = logits.to(compute_dtype(logits))
    if dist_maps is None:
        maps = boundary_penalty_maps(_target_masks(prepared, logits.shape[1], 0), opts.spacing)
    else:
        maps = _check_maps(dist_maps, logits)
    maps = maps.to(work.dtype)
    w = class_tensor(cast(Optional[Tensor], opts.weight), work, "weight")
    ce_opts = _CE_NONE.with_values(weight=w, ignore_index=folded.ignore_index)
    if isinstance(prepared, IndexTarget):  # a mask is folded into its ignore_index
        index = prepared.index()
        factor = 1 + maps.gather(1, index.unsqueeze(1)).squeeze(1)
        loss = ce_from_prepared(work, prepared, ce_opts) * factor  # w_t ce (0 at ignored pixels) (1 + D_t)
        if prepared.valid is not None:  # a non-finite map at an ignored pixel reaches nothing
            loss = torch.where(prepared.valid, loss, 0.0)
        if w is None and omega is None:
            return reduce(loss, opts.reduction, prepared.num_valid())
        pixel_w = (
            work.new_ones(index.shape) if w is None else torch.take(w, index.clamp(0, work.shape[1] - 1))
        )
        pixel_w = pixel_w if prepared.valid is None else pixel_w * prepared.valid
        return _weighted_reduce(loss, pixel_w, opts.reduction, omega)
    dense = prepared.dense.to(work.dtype)  # 0 outside a mask (_fold_mask)
    loss = ce_from_prepared(work, DenseTarget(dense * (1 + maps)), ce_opts)  # -Σ_c w_c (1 + D_c) y_c log p_c
    if folded.mask is not None:  # a non-finite given map there reaches nothing
        loss = torch.where(folded.mask, loss, 0.0)
    mass = dense.sum(1) if w is None else torch.einsum("nc...,c->n...", dense, w)
    return _weighted_reduce(loss, mass, opts.reduction, omega)


def _binary_distance_ce(dist_maps: Optional[Tensor], opts: DistanceCEOptions, folded: _Folded) -> Tensor:
    logits = folded.logits
    prepared = binary_target(logits, folded.target, folded.ignore_index, log_terms=True)
    work = logits.to(compute_dtype(logits))
    valid = _with_mask(prepared.valid, folded.mask)
    valid = None if valid is None else valid.expand(logits.shape)
    if dist_maps is None:
        foreground = _binary_masks(prepared)
        background = ~foreground if valid is None else ~foreground & valid
        maps = boundary_penalty_maps(torch.cat([foreground, background]), opts.spacing)
        inside, outside = maps.chunk(2)
        maps = inside + outside
    else:
        maps = _check_maps(dist_maps, logits)
    if valid is not None:  # a NaN logit at an ignored element must reach nothing
        work = work.masked_fill(~valid, 0.0)
    positive, negative = binary_log_terms(work, prepared.dense)
    loss = -(positive + negative) * (1 + maps.to(work.dtype))
    w = channel_tensor(class_tensor(cast(Optional[Tensor], opts.weight), work, "weight"), work)
    if w is not None:
        loss = loss * w
    if valid is not None:
        loss = torch.where(valid, loss, 0.0)
    omega = None if folded.weight is None else folded.weight.unsqueeze(1)  # every channel
    if w is None and omega is None:
        return reduce(loss, opts.reduction, num_valid(valid, loss.shape))
    element_w = (work.new_ones(()) if w is None else w).expand_as(loss)
    return _weighted_reduce(loss, element_w if valid is None else element_w * valid, opts.reduction, omega)


def distance_ce_loss(
    logits: Tensor,
    target: Tensor,
    dist_maps: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    weight: Optional[ClassValues] = None,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Distance-map-penalised cross-entropy (Calivá et al., MIDL 2019): ``L_i = (1 + D_i) · CE_i``.

    ``CE_i = -Σ_c w_c y_ic log p_ic`` as :func:`~seglosses.functional.cross_entropy_loss` (class weights,
    ignore_index, and ``mean`` over ``Σ_{i valid} w_{t_i}``: the penalty belongs to the formula, it is
    not a weight). ``D`` is the boundary penalty map of the pixel's own class region
    (:func:`boundary_penalty_maps`): 1 at the pixels next to a boundary of the target, falling linearly
    in the distance to 0 at the deepest pixel of the region, so boundary pixels weigh up to twice as
    much. For a dense target, class ``c``'s term takes ``1 + D_c``. A perfect prediction gives 0.

    For two classes this is the map of the authors' benchmark re-implementation (JunMa11/SegLossOdyssey,
    ``compute_edts_forPenalizedLoss``, used there with ``+ 1``); a one-pixel-wide line, where that
    function divides 0 by 0, gets ``D = 1``.

    With a weight map ``ω``: ``Σ_i ω_i (1 + D_i) CE_i / Σ_i ω_i w_{t_i}`` over the valid pixels (for a
    dense target the denominator is ``Σ_i ω_i Σ_c w_c y_ic``), ``D`` the maps of the unweighted (masked)
    target: ``ω`` and ``D`` both multiply the pixel's term, but only ``ω`` enters the denominator.

    Args:
        logits: ``(N, C, *S)``, ``C >= 2``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (class mask ``y > 0.5``).
        dist_maps: per-class maps ``D`` of the logits' shape, or None to compute them from the target
            without gradient; a pixel takes its target class's map. Used as given with a ``mask``:
            compute them from the masked target.
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0`` (above).
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, in no class region, and its pixels count nowhere).
        weight: per-class weights ``(C,)``.
        spacing: pixel size per spatial axis for the distances.
        ignore_index: target value whose pixels count nowhere (outside every class region).
        reduction: ``none`` -> ``(N, *S)``; ``mean`` / ``sum`` -> scalar.
    """
    opts = DistanceCEOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        weight=weight, spacing=spacing, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _distance_ce(logits, target, dist_maps, opts, binary=False)


def binary_distance_ce_loss(
    logits: Tensor,
    target: Tensor,
    dist_maps: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    weight: Optional[ClassValues] = None,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Distance-penalised binary cross-entropy per channel, ``(1 + D) · BCE`` with
    ``D = boundary_penalty_maps(M) + boundary_penalty_maps(¬M)`` of the channel's foreground ``M`` (the
    background ``¬M`` without the ignored elements). Equal to :func:`distance_ce_loss` on the two-class
    logits ``[0, z]``. ``weight``: per channel ``(C,)``; ``none`` -> ``(N, C, *S)``. ``weight_map`` ``ω``
    ``(N, *S)`` weighs every channel of a pixel: ``Σ ω w_c (1 + D) BCE / Σ_valid ω w_c``; ``mask``
    ``(N, *S)`` is ``ignore_index`` at the pixels outside it (a float or bool target is 0 there, in
    neither the foreground nor the background map)."""
    opts = DistanceCEOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        weight=weight, spacing=spacing, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _distance_ce(logits, target, dist_maps, opts, binary=True)


# --- modules and registry ----------------------------------------------------------------------------

BoundaryDoULoss, BinaryBoundaryDoULoss = module_pair(
    "BoundaryDoU", boundary_dou_loss, binary_boundary_dou_loss, BoundaryDoUOptions, _boundary_dou,
    PixelWeightedModule,
)  # fmt: skip
RegionWiseLoss, BinaryRegionWiseLoss = module_pair(
    "RegionWise", region_wise_loss, binary_region_wise_loss, RegionWiseOptions, _region_wise, _WithMaps
)
DistanceCELoss, BinaryDistanceCELoss = module_pair(
    "DistanceCE", distance_ce_loss, binary_distance_ce_loss, DistanceCEOptions, _distance_ce, _WithMaps
)

for _name, _module, _domain, _kind, _text in (
    ("boundary_dou", BoundaryDoULoss, "softmax", "region",
     "Boundary Difference over Union, α from the boundary / area ratio (Sun et al. 2023)"),
    ("binary_boundary_dou", BinaryBoundaryDoULoss, "binary", "region", "Boundary DoU loss per channel"),
    ("region_wise", RegionWiseLoss, "softmax", "pixel",
     "region-wise loss mean(p · Z) with rectified region-wise maps (Valverde & Tohka 2023)"),
    ("binary_region_wise", BinaryRegionWiseLoss, "binary", "pixel", "region-wise (RRW) loss per channel"),
    ("distance_ce", DistanceCELoss, "softmax", "pixel",
     "distance-map-penalised cross-entropy (1 + D) · CE (Calivá et al. 2019)"),
    ("binary_distance_ce", BinaryDistanceCELoss, "binary", "pixel", "distance-penalised BCE per channel"),
):  # fmt: skip
    register(_name, _module, domain=_domain, description=_text, kind=_kind)

__all__ = [
    "BinaryBoundaryDoULoss",
    "BinaryDistanceCELoss",
    "BinaryRegionWiseLoss",
    "BoundaryDoULoss",
    "DistanceCELoss",
    "RegionWiseLoss",
    "binary_boundary_dou_loss",
    "binary_distance_ce_loss",
    "binary_region_wise_loss",
    "boundary_dou_loss",
    "boundary_penalty_maps",
    "distance_ce_loss",
    "rectified_region_maps",
    "region_wise_loss",
]
