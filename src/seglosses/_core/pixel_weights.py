"""Per-pixel weight maps and loss masks: the inputs ``weight_map=`` and ``mask=`` of the losses that take
them (issue 19, item 9).

* ``mask`` ``(N, *S)`` bool: True where a pixel counts. The general form of ``ignore_index``: a pixel
  outside the mask counts nowhere, as an ignored one, whatever the target holds there (a soft target
  too, which ``ignore_index`` cannot mark).
* ``weight_map`` ``(N, *S)``: non-negative finite per-pixel weights (U-Net's border weights, an
  uncertainty map). A pixel loss sums ``ω_i · L_i`` and its ``mean`` divides by the valid pixels' summed
  weights (times the class weight at the pixel where the loss has class weights, as ``mean`` divides
  by them); a region loss weights its statistics, ``TP = Σ ω p y``, ``FP = Σ ω p (1 - y)``,
  ``FN = Σ ω (1 - p) y`` (and MCC's valid count ``Σ ω``). ``ω = 1`` everywhere is the loss without it.

Both have the spatial shape of a softmax loss's index target; a binary loss applies them to every channel.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Tuple, cast

import torch
from torch import Tensor

from .deferred import check_count
from .errors import expected
from .numerics import compute_dtype
from .reduction import reduce
from .targets import input_checks_enabled


class PixelWeights(NamedTuple):
    """A checked weight map and mask, each ``(N, *S)`` or None."""

    weight: Optional[Tensor]
    mask: Optional[Tensor]

    def index_valid(self, valid: Optional[Tensor]) -> Optional[Tensor]:
        """An index target's valid mask ``(N, *S)`` (or None) and the mask."""
        if self.mask is None:
            return valid
        return self.mask if valid is None else valid & self.mask

    def dense_valid(self, valid: Optional[Tensor], shape: torch.Size) -> Optional[Tensor]:
        """A dense target's valid mask (``shape`` ``(N, C, *S)``, or None) and the mask, of that shape."""
        if self.mask is None:
            return valid
        mask = self.mask.unsqueeze(1).expand(shape)
        return mask if valid is None else valid & mask

    def dense_weight(self) -> Optional[Tensor]:
        """The weight map with a class dim of 1, ``(N, 1, *S)``, or None."""
        return None if self.weight is None else self.weight.unsqueeze(1)


def pixel_weights(
    logits: Tensor, weight_map: Optional[Tensor], mask: Optional[Tensor]
) -> Optional[PixelWeights]:
    """Check ``weight_map`` and ``mask`` against the logits ``(N, C, *S)``; None when neither is given.

    Shapes ``(N, *S)`` on the logits' device; ``mask`` bool; ``weight_map`` floating, and with the input
    checks on (one host read) finite and non-negative."""
    if weight_map is None and mask is None:
        return None
    if not isinstance(logits, Tensor) or logits.ndim < 3:
        raise expected("logits as a tensor (N, C, *S)", getattr(logits, "shape", type(logits).__name__))
    spatial = (logits.shape[0], *logits.shape[2:])
    checked: List[Optional[Tensor]] = []
    for name, value in (("weight_map", weight_map), ("mask", mask)):
        if value is None:
            checked.append(None)
            continue
        if not isinstance(value, Tensor):
            raise expected(f"{name} as a tensor (N, *S)", type(value).__name__)
        if tuple(value.shape) != spatial:
            raise expected(
                f"{name} of shape (N, *S) = {spatial}, the logits' without the class dim",
                f"shape {tuple(value.shape)}",
            )
        if value.device != logits.device:
            raise expected(f"{name} on the logits' device {logits.device}", f"device {value.device}")
        checked.append(value)
    if mask is not None and mask.dtype != torch.bool:
        raise expected("mask as a bool tensor (True where a pixel counts)", mask.dtype)
    if weight_map is not None:
        if not weight_map.is_floating_point():
            raise expected("weight_map as a floating-point tensor", weight_map.dtype)
        if input_checks_enabled() and weight_map.numel():
            _check_weight_values(weight_map)
    return PixelWeights(checked[0], checked[1])


def _check_weight_values(weight_map: Tensor) -> None:
    """Raise unless every weight is finite and ``>= 0`` (deferred on CUDA: no host synchronisation)."""
    bad = (~torch.isfinite(weight_map) | (weight_map < 0)).sum()
    check_count(
        bad, lambda n: f"expected weight_map values finite and >= 0, got {n} negative or non-finite values"
    )


def weighted_pixel_loss(
    implementation: Callable[[Tensor, Tensor, Any], Tensor],
    denominators: Callable[[Tensor, Tensor, Any], Tensor],
    logits: Tensor,
    target: Tensor,
    opts: Any,
    binary: bool,
) -> Tensor:
    """A pixel loss with ``opts.pixel_weights``: ``Σ ω_i L_i``, and for ``mean`` divided by ``Σ ω_i d_i``.

    ``implementation(logits, target, opts)`` is the loss; it runs unreduced, with the mask folded into the
    target where it can hold one: an integer target gets ``ignore_index`` at the masked pixels (its own,
    or -1), so every implementation (fused kernels included) treats them as ignored. A floating (soft)
    target's masked pixels get weight 0 and their logits 0 (a NaN there reaches nothing).
    ``denominators(logits, target, opts)`` gives each element's share ``d_i`` of the unweighted ``mean``'s
    denominator (1 at a valid pixel, or its class weight), of the unreduced loss's shape. ``binary``: the
    loss is per channel ``(N, C, *S)``, and ``ω`` applies to every channel.
    """
    pixels = cast(PixelWeights, opts.pixel_weights)
    target, ignore_index, mask = mask_as_ignore(target, pixels.mask, opts.ignore_index, binary=binary)
    if mask is not None:
        logits = logits.masked_fill(~mask.unsqueeze(1), 0.0)
    unweighted = opts.with_values(reduction="none", ignore_index=ignore_index, pixel_weights=None)
    loss, shares = implementation(logits, target, unweighted), denominators(logits, target, unweighted)
    weight = pixels.weight
    if binary:
        weight, mask = (None if t is None else t.unsqueeze(1) for t in (weight, mask))
    if weight is not None:
        loss, shares = loss * weight.to(loss.dtype), shares * weight.to(shares.dtype)
    if mask is not None:
        loss, shares = torch.where(mask, loss, 0.0), torch.where(mask, shares, 0.0)
    return reduce(loss, opts.reduction, shares.sum(dtype=compute_dtype(loss)))


def mask_as_ignore(
    target: Tensor, mask: Optional[Tensor], ignore_index: Optional[int], *, binary: bool
) -> Tuple[Tensor, Optional[int], Optional[Tensor]]:
    """``(target, ignore_index, mask left)``: an integer index target ``(N, *S)`` (or, for a ``binary``
    loss, an integer target of the logits' shape) with the masked pixels set to ``ignore_index`` (-1
    when there is none, in a dtype that holds it), nothing left of the mask; any other target (floating,
    bool, or a softmax loss's integer one-hot, which cannot hold an ignore value) as it is, with the
    mask."""
    if mask is None or not isinstance(target, Tensor):
        return target, ignore_index, mask
    if target.is_floating_point() or target.dtype == torch.bool:
        return target, ignore_index, mask
    dense = target.ndim != mask.ndim
    if dense and not binary:
        return target, ignore_index, mask
    value = -1 if ignore_index is None else ignore_index
    info = torch.iinfo(target.dtype)
    if not info.min <= value <= info.max:
        target = target.long()
    where = mask.unsqueeze(1) if dense else mask
    return target.masked_fill(~where, value), value, None


def pixel_inputs(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    pixels: Optional[PixelWeights],
    *,
    binary: bool,
) -> Tuple[Tensor, Tensor, Optional[int], Optional[Tensor]]:
    """``(logits, target, ignore_index, ω)`` of a loss with its own statistics and a weight map or mask.

    The mask is ``ignore_index`` where the target can hold it (:func:`mask_as_ignore`), folded in before
    anything is computed from the target. Elsewhere the masked pixels get weight 0 and logits 0 (a NaN
    there reaches neither value nor gradient). ``ω`` ``(N, *S)`` in the logits' compute dtype, or None
    when neither a weight map nor a mask is left to apply."""
    if pixels is None:
        return logits, target, ignore_index, None
    target, ignore_index, mask = mask_as_ignore(target, pixels.mask, ignore_index, binary=binary)
    omega = None if pixels.weight is None else pixels.weight.to(compute_dtype(logits))
    if mask is not None:
        logits = logits.masked_fill(~mask.unsqueeze(1), 0.0)
        kept = mask.to(compute_dtype(logits))
        omega = kept if omega is None else torch.where(mask, omega, 0.0)
    return logits, target, ignore_index, omega


__all__ = ["PixelWeights", "mask_as_ignore", "pixel_inputs", "pixel_weights", "weighted_pixel_loss"]
