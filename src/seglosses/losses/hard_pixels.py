"""Cross-entropy on the hardest pixels only: TopK (nnU-Net) and online hard example mining (mmsegmentation).

Both compute the per-pixel cross-entropy of :func:`~seglosses.functional.cross_entropy_loss` (class
weights, ``ignore_index``) and keep a data-dependent subset of the valid pixels; the loss averages over
the kept pixels. The subset is chosen on the device without reading a count on the host: TopK takes the
largest ``⌊k · V / 100⌋`` losses of a row (``V`` its valid pixels) out of ``torch.topk`` with the bound
for ``V = all pixels``; OHEM sorts ``p_t`` once.

A ``weight_map`` makes each pixel a multiplicity (an integer weight is the pixel repeated) and a ``mask``
is ``ignore_index`` (issue 19): the selection then runs in weighted mass, by a full sort and a cumulative
sum of the weights in float64 (how many pixels TopK keeps is no longer bounded by ``k`` % of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .._core.numerics import safe_divide
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
    class_values,
)
from .._core.pixel_weights import PixelWeights, pixel_inputs, pixel_weights
from .._core.registry import register
from .._core.targets import _valid_mask
from ..ops.sort import descending_order
from .base import PixelWeightedModule, module_for
from .cross_entropy import CrossEntropyOptions, _cross_entropy


@dataclass(frozen=True, kw_only=True, eq=False)
class TopKOptions(Options):
    """``k`` (percent of the valid pixels kept, in ``(0, 100]``), ``per_image``, class weights, ignore,
    reduction."""

    k: float
    per_image: bool
    weight: Optional[ClassValues]
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "k": check_number(
                "k (a percentage of the valid pixels)", self.k, low=0.0, high=100.0, low_open=True
            ),
            "per_image": check_bool("per_image", self.per_image),
            "weight": class_values("weight", self.weight, allow_scalar=False),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


@dataclass(frozen=True, kw_only=True, eq=False)
class OHEMOptions(Options):
    """``thresh`` (a probability in ``[0, 1]``), ``min_kept`` (pixels per image, ``>= 0``), class weights,
    ignore, reduction."""

    thresh: float
    min_kept: int
    weight: Optional[ClassValues]
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "thresh": check_number("thresh", self.thresh, low=0.0, high=1.0),
            "min_kept": check_int("min_kept", self.min_kept, low=0),
            "weight": class_values("weight", self.weight, allow_scalar=False),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


_PIXEL_CE = CrossEntropyOptions(
    weight=None, weight_schedule=None, step=0.0, label_smoothing=0.0, ignore_index=None, reduction="none"
)


def _pixel_ce(
    logits: Tensor, target: Tensor, weight: Optional[ClassValues], ignore_index: Optional[int]
) -> Tensor:
    """The per-pixel CE ``(N, *S)`` (0 at ignored pixels) of :func:`cross_entropy_loss`, with the weights and
    ignore value already checked (by this loss's options)."""
    return _cross_entropy(logits, target, _PIXEL_CE.with_values(weight=weight, ignore_index=ignore_index))


def _valid(logits: Tensor, target: Tensor, ignore_index: Optional[int]) -> Optional[Tensor]:
    """The valid pixels ``(N, *S)`` of an index target with ``ignore_index``, else None (all valid)."""
    return None if target.shape == logits.shape else _valid_mask(target, ignore_index)


def _kept_sum(losses: Tensor, kept: Tensor, bound: int, with_mask: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Sum of the ``kept`` largest values of each row ``(R, L)`` (``kept`` ``(R,)`` int64, at most ``bound``
    and at most the row's valid count, so the ignored zeros are never needed); and, ``with_mask``, the
    mask ``(R, L)`` of the pixels kept."""
    top = losses.topk(min(bound, losses.shape[-1]), dim=-1, sorted=True)
    rank = torch.arange(top.values.shape[-1], device=losses.device)
    chosen = rank < kept[:, None]
    total = torch.where(chosen, top.values, 0.0).sum(-1)
    if not with_mask:
        return total, None
    return total, torch.zeros_like(losses, dtype=torch.bool).scatter_(-1, top.indices, chosen)


def _mass(weight: Tensor, valid: Optional[Tensor]) -> Tensor:
    """The weights as multiplicities in float64 (sums and cumulative sums of integer weights are exact),
    0 at the pixels that are not valid."""
    mass = weight.to(torch.float64)
    return mass if valid is None else torch.where(valid, mass, 0.0)


def _topk_ce(logits: Tensor, target: Tensor, opts: TopKOptions) -> Tensor:
    if opts.pixel_weights is not None:
        logits, target, ignore, weight = pixel_inputs(
            logits, target, opts.ignore_index, opts.pixel_weights, binary=False
        )
        opts = opts.with_values(ignore_index=ignore, pixel_weights=None)
        if weight is not None:
            return _weighted_topk_ce(logits, target, weight, opts)
    ce = _pixel_ce(logits, target, opts.weight, opts.ignore_index)
    rows = ce.flatten(1) if opts.per_image else ce.reshape(1, -1)
    valid = _valid(logits, target, opts.ignore_index)
    length = rows.shape[-1]
    counts = (
        torch.full((rows.shape[0],), length, device=ce.device)  # a fill: no host-to-device copy
        if valid is None
        else (valid.flatten(1) if opts.per_image else valid.reshape(1, -1)).sum(-1)
    )
    kept = torch.where(counts > 0, (counts.double() * opts.k / 100).floor().long().clamp_min(1), 0)
    bound = max(1, math.floor(length * opts.k / 100))  # the most any row keeps: known without a host read
    total, mask = _kept_sum(rows, kept, bound, with_mask=opts.reduction == "none")
    if mask is not None:
        return torch.where(mask, rows, 0.0).view_as(ce)
    if opts.reduction == "sum":
        return total.sum()
    if opts.per_image:  # each image's mean, then the mean over the images with a valid pixel
        means = safe_divide(total, kept.to(total.dtype), 0.0)
        return safe_divide(means.sum(), (kept > 0).sum().to(total.dtype), 0.0)
    return safe_divide(total.sum(), kept.sum().to(total.dtype), 0.0)


def _weighted_topk_ce(logits: Tensor, target: Tensor, weight: Tensor, opts: TopKOptions) -> Tensor:
    """:func:`topk_ce_loss` with per-pixel multiplicities ``ω`` ``(N, *S)`` (0 where a soft target is
    masked): the pixels in decreasing CE, each kept with the part of its weight that keeps the row's
    kept mass within ``K``; ``Σ ω`` kept is then exactly ``K`` (see the function's docstring)."""
    ce = _pixel_ce(logits, target, opts.weight, opts.ignore_index)
    mass = _mass(weight, _valid(logits, target, opts.ignore_index))
    if opts.per_image:
        rows, row_mass = ce.flatten(1), mass.flatten(1)
    else:
        rows, row_mass = ce.reshape(1, -1), mass.reshape(1, -1)
    total_mass = row_mass.sum(-1)
    share = (total_mass.detach() * opts.k / 100).floor().clamp_min(1)
    budget = total_mass.detach() if opts.k == 100 else torch.minimum(share, total_mass.detach())
    budget = torch.where(total_mass > 0, budget, 0.0)  # K: the mass kept of each row
    order = descending_order(torch.nan_to_num(rows.detach(), nan=torch.inf))  # a NaN is kept: visible
    ordered, ordered_mass = rows.gather(-1, order), row_mass.gather(-1, order)
    before = ordered_mass.cumsum(-1) - ordered_mass  # exact for integer weights (float64)
    taken = torch.minimum((budget[:, None] - before).clamp_min(0.0), ordered_mass)
    terms = torch.where(taken > 0, taken.to(ce.dtype) * ordered, 0.0)
    if opts.reduction == "none":
        return torch.zeros_like(rows).scatter(-1, order, terms).view_as(ce)
    total = terms.sum(-1)
    if opts.reduction == "sum":
        return total.sum()
    budget = budget.to(total.dtype)
    if opts.per_image:  # each image's mean, then the mean over the images with a weighted pixel
        means = safe_divide(total, budget, 0.0)
        return safe_divide(means.sum(), (budget > 0).sum().to(total.dtype), 0.0)
    return safe_divide(total.sum(), budget.sum(), 0.0)


def _ohem_ce(logits: Tensor, target: Tensor, opts: OHEMOptions) -> Tensor:
    weight = None
    if opts.pixel_weights is not None:  # a soft target's masked pixels: weight 0, never counted or kept
        logits, target, ignore, weight = pixel_inputs(
            logits, target, opts.ignore_index, opts.pixel_weights, binary=False
        )
        opts = opts.with_values(ignore_index=ignore, pixel_weights=None)
    ce = _pixel_ce(logits, target, opts.weight, opts.ignore_index)
    valid = _valid(logits, target, opts.ignore_index)
    if ce.numel() == 0:
        return ce if opts.reduction == "none" else ce.sum()
    with torch.no_grad():  # p_t = exp(-CE) unweighted (Π_c p_c^y_c for a soft target); no gradient
        plain = ce if opts.weight is None else _pixel_ce(logits.detach(), target, None, opts.ignore_index)
        p_true = torch.exp(-plain.detach()).flatten()
        valid_flat = None if valid is None else valid.flatten()
        most = min(opts.min_kept * logits.shape[0], 2**62)  # m, a Python bound: no copy
        if weight is None:
            keys = -p_true if valid_flat is None else torch.where(valid_flat, -p_true, -torch.inf)
            order = descending_order(keys.unsqueeze(0))[0]  # ascending p_t, ignored pixels last
            count = (
                torch.full((), p_true.numel(), device=ce.device) if valid_flat is None else valid_flat.sum()
            )
            index = (count - 1).clamp(max=most)
        else:  # the m-th smallest p_t in weighted mass: the first pixel whose cumulative weight exceeds m
            mass = _mass(weight.detach(), valid).flatten()
            counted = mass > 0  # a pixel of weight 0 is not there (repeated 0 times)
            order = descending_order(torch.where(counted, -p_true, -torch.inf).unsqueeze(0))[0]
            count = counted.sum()
            index = torch.minimum((mass.gather(0, order).cumsum(0) <= most).sum(), count - 1)
        at = p_true.gather(0, order.gather(0, index.clamp_min(0).view(1)))[0]  # the index-th smallest p_t
        floor = torch.where(count > 0, at, 0.0)
        threshold = torch.clamp(floor, min=opts.thresh)
        kept = ~(p_true >= threshold)  # below it; a NaN (non-finite logits, checks off) is kept: never hidden
        if valid_flat is not None:
            kept &= valid_flat
        kept = kept.view_as(ce)
    if weight is None:
        losses, kept_mass = torch.where(kept, ce, 0.0), kept.sum().to(ce.dtype)
    else:
        omega = weight.to(ce.dtype)
        losses, kept_mass = torch.where(kept, ce * omega, 0.0), torch.where(kept, omega, 0.0).sum()
    if opts.reduction == "none":
        return losses
    if opts.reduction == "sum":
        return losses.sum()
    return safe_divide(losses.sum(), kept_mass, 0.0)


def topk_ce_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    k: float = 10.0,
    per_image: bool = False,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""TopK cross-entropy: the mean CE of the ``k`` % hardest valid pixels (nnU-Net's ``TopKLoss``).

    With ``V`` valid pixels (of the batch, or of each image with ``per_image``), the ``max(1, ⌊k V / 100⌋)``
    largest per-pixel losses ``L_i = -w_t log p_t`` are kept (ties: any of them; the sum is the same).

    **Pixel weights** are multiplicities: an integer ``ω_i`` is pixel i repeated ``ω_i`` times. The pixels
    are ranked by their CE ``L_i`` (not by ``ω_i L_i``), and the ``k`` % hardest of the weighted mass is
    kept: with ``W = Σ_{i∈V} ω_i``, the kept mass is ``K = min(W, max(1, ⌊k W / 100⌋))`` (``W`` at
    ``k = 100``; 0 when ``W = 0``; the pixel-count rule, with ``min(W, ·)`` only for ``W < 1``), and in
    decreasing ``L`` each
    pixel keeps ``κ_i = clamp(K - Σ_{j before i} ω_j, 0, ω_i)`` of its weight (the pixel at the boundary
    a part of it), so ``Σ κ = K``. ``mean = Σ κ_i L_i / K`` (per image with ``per_image``), ``sum =
    Σ κ_i L_i``; ``ω = 1`` gives the loss without weights.

    Args:
        logits: ``(N, C, *S)``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.
        weight_map: per-pixel weights ``(N, *S)``, ``>= 0``, as multiplicities (above): the selection
            and ``mean``'s denominator are in weighted mass. The sort reads no weight (no host read).
        mask: ``(N, *S)`` bool, True where a pixel counts (the general form of ``ignore_index``; on a
            soft target a masked pixel has weight 0 and is never kept).
        k: the percentage kept, in ``(0, 100]``; ``k = 100`` is plain CE (with a weight map too: it keeps
            all of ``W``, whole number or not).
        per_image: keep each image's own ``k`` % and average the images' means (over images with a
            valid pixel) instead of the batch's ``k`` %.
        weight: class weights ``(C,)`` of the per-pixel CE (they change which pixels are hardest; ``mean``
            still divides by the number kept).
        ignore_index: target value whose pixels are never kept and not counted in ``V``.
        reduction: ``none`` -> ``(N, *S)``, the kept pixels' CE and 0 elsewhere (``κ_i L_i`` with
            weights); ``sum``; ``mean``.

    nnU-Net counts ignored pixels in ``V`` (they have loss 0); here they are not.
    """
    opts = TopKOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        k=k,
        per_image=per_image,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _topk_ce(logits, target, opts)


def ohem_ce_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    thresh: float = 0.7,
    min_kept: int = 100000,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Cross-entropy with online hard example mining (mmsegmentation's ``OHEMPixelSampler``).

    The valid pixels whose true-class probability ``p_t`` is below ``max(thresh, p_(m))`` are kept, where
    ``p_(m)`` is the ``m``-th smallest ``p_t`` of the batch (0-based, at most the last) and
    ``m = min_kept · N``: at least ``min_kept`` pixels per image when there are that many. ``p_t`` is
    the unweighted softmax probability; the selection carries no gradient.

    **Pixel weights** are multiplicities (an integer ``ω_i`` is pixel i repeated ``ω_i`` times): ``p_(m)``
    is the ``m``-th smallest in weighted mass, the first pixel in increasing ``p_t`` whose cumulative
    weight exceeds ``m`` (the last pixel of positive weight when none does; pixels of weight 0 are not
    counted), the kept set is the valid pixels with ``p_t < max(thresh, p_(m))``, and ``mean = Σ_kept ω_i
    L_i / Σ_kept ω_i``.

    Args:
        logits: ``(N, C, *S)``.
        target: class indices ``(N, *S)`` (or one-hot / soft ``(N, C, *S)``: ``p_t = exp(-CE)``, the
            geometric mean ``Π_c p_c^{y_c}``).
        weight_map: per-pixel weights ``(N, *S)``, ``>= 0``, as multiplicities (above); ``p_t`` stays
            unweighted.
        mask: ``(N, *S)`` bool, True where a pixel counts (the general form of ``ignore_index``; on a
            soft target a masked pixel is never kept).
        thresh: the probability below which a pixel is hard, in ``[0, 1]``.
        min_kept: pixels per image kept at least (``>= 0``).
        weight: class weights ``(C,)`` of the per-pixel CE.
        ignore_index: target value whose pixels are never kept.
        reduction: ``none`` -> ``(N, *S)``, the kept pixels' CE (``ω_i L_i``) and 0 elsewhere; ``sum``;
            ``mean`` over the kept pixels (mmsegmentation divides by every pixel of the batch, kept or
            not, so its value is this one times the kept fraction).
    """
    opts = OHEMOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        thresh=thresh,
        min_kept=min_kept,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _ohem_ce(logits, target, opts)


TopKCELoss = module_for("TopKCELoss", topk_ce_loss, TopKOptions, _topk_ce, PixelWeightedModule)
OHEMCELoss = module_for("OHEMCELoss", ohem_ce_loss, OHEMOptions, _ohem_ce, PixelWeightedModule)

register("topk_ce", TopKCELoss, domain="softmax", description="mean CE of the k % hardest pixels (nnU-Net)")
register("ohem_ce", OHEMCELoss, domain="softmax", description="CE with online hard example mining (mmseg)")

__all__ = ["OHEMCELoss", "OHEMOptions", "TopKCELoss", "TopKOptions", "ohem_ce_loss", "topk_ce_loss"]
