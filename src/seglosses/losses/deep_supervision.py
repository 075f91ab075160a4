"""Deep supervision: one loss over the outputs of several decoder scales (nnU-Net's default training).

``L = Σ_i w_i · loss(z_i, y_i)`` over the scales ``z_0`` (highest resolution) ... ``z_{n-1}``; ``y_i`` is
the target resized to scale ``i`` (or the targets given per scale). The default weights are nnU-Net's:
``w_i ∝ 1 / 2^i``, the lowest scale's set to 0, normalised to sum to 1.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.errors import expected, show

Scales = Union[Tensor, Sequence[Tensor]]
PerScale = Union[Tensor, Sequence[Tensor]]


def default_weights(n: int) -> List[float]:
    """nnU-Net's weights for ``n`` scales: ``1 / 2^i``, the lowest scale 0 (when ``n > 1``), summing to 1."""
    weights = [1 / 2**i for i in range(n)]
    if n > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def resize_target(target: Tensor, size: Tuple[int, ...], index: bool) -> Tensor:
    """``target`` at spatial ``size``: class indices ``(N, *S)`` (or an integer / bool map) by nearest
    neighbour at the pixel centres (torch's ``nearest-exact``: output pixel ``j`` takes input pixel
    ``floor((j + 1/2) · scale)``, as MONAI's ``DeepSupervisionLoss`` and nnU-Net's order-0 resampling), a
    floating one by area averaging (each output pixel the mean of the input pixels it covers)."""
    if tuple(target.shape[-len(size) :]) == tuple(size):
        return target
    x = target.unsqueeze(1) if index else target
    if target.is_floating_point():
        resized = F.interpolate(x, size=size, mode="area")
    else:  # labels up to 2^53 are exact in float64
        resized = F.interpolate(x.to(torch.float64), size=size, mode="nearest-exact").to(target.dtype)
    return resized.squeeze(1) if index else resized


class DeepSupervision(nn.Module):
    """Apply ``loss`` to each scale of a deep-supervised output and sum with weights.

    Args:
        loss: any seglosses loss module (or a :class:`~seglosses.CompoundLoss`; ``create_loss`` builds
            one from a spec, and ``create_loss("deep_supervision(ce + dice)")`` this wrapper).
        weights: one non-negative weight per scale, highest resolution first (not all 0); default
            :func:`default_weights` of the number of scales given at each call (nnU-Net's). A scale with
            weight 0 is not computed.

    ``forward(logits, target)``: ``logits`` a list or tuple of ``(N, C, *S_i)`` tensors, highest
    resolution first (one tensor: the plain loss); ``target`` at the highest resolution, resized to each
    scale once per call (nearest for index and integer targets, area for floating ones: see
    :func:`resize_target`), or a list of targets, one per scale, used as given (nnU-Net's data loader
    makes them). ``weight_map`` ``(N, *S)`` and ``mask`` ``(N, *S)`` (optional; passed on only when
    given, so the loss must take them: every registered loss does) are resized like the target: the
    weight map by area (each coarse pixel the mean weight of the pixels it covers), the mask by nearest;
    or given as lists, one per scale. Equal to nnU-Net's ``DeepSupervisionWrapper`` given the same weights
    and targets, and to
    MONAI's ``DeepSupervisionLoss(weights=...)`` (it resizes targets by ``nearest-exact`` too; its
    default weights differ: ``max(0.5^i, 1/16)``, unnormalised).
    """

    def __init__(self, loss: nn.Module, weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise expected("loss to be a loss module (e.g. seglosses.create_loss('ce + dice'))", show(loss))
        if getattr(loss, "reduction", "mean") == "none":
            raise expected(
                "a loss that reduces to a scalar (scales have different shapes)", "reduction='none'"
            )
        if _stateful(loss):
            raise expected(
                "a loss without running statistics (an adaptive loss would update them once per scale, from "
                "resized targets): wrap its static form, or supervise the top scale with it and add it alone",
                type(loss).__name__,
            )
        self.loss = loss
        self.weights = None if weights is None else _check_weights(weights)

    def scale_weights(self, n: int) -> List[float]:
        """The weights of ``n`` scales."""
        if self.weights is None:
            return default_weights(n)
        if len(self.weights) != n:
            raise expected(f"one weight per scale ({len(self.weights)} weights)", f"{n} scales")
        return list(self.weights)

    def forward(
        self,
        logits: Scales,
        target: PerScale,
        weight_map: Optional[PerScale] = None,
        mask: Optional[PerScale] = None,
    ) -> Tensor:
        if isinstance(logits, Tensor):
            return self.loss(logits, target, **_given(weight_map=weight_map, mask=mask))
        scales = _check_scales(logits)
        targets = _per_scale(scales, target, "target")
        weight_maps = _per_scale(scales, weight_map, "weight_map")
        masks = _per_scale(scales, mask, "mask")
        total: Optional[Tensor] = None
        for i, (weight, z) in enumerate(zip(self.scale_weights(len(scales)), scales)):
            if weight == 0:
                continue
            inputs = _given(weight_map=weight_maps[i], mask=masks[i])
            term = weight * self.loss(z, targets[i], **inputs)
            total = term if total is None else total + term
        assert total is not None  # the weights are not all 0
        return total

    def set_step(self, step: float) -> None:
        """Pass the step to the wrapped loss's schedules (a no-op for a loss without them)."""
        set_step = getattr(self.loss, "set_step", None)
        if callable(set_step):
            set_step(step)

    def extra_repr(self) -> str:
        return f"weights={self.weights if self.weights is not None else 'nnU-Net (1/2^i, lowest 0)'}"


def _stateful(loss: nn.Module) -> bool:
    """Whether ``loss`` or a term of it keeps statistics that each forward updates."""
    return any(getattr(module, "stateful", False) for module in loss.modules())


def _check_weights(weights: Sequence[float]) -> Tuple[float, ...]:
    values = tuple(weights) if not isinstance(weights, Tensor) else tuple(weights.tolist())
    if not values or any(isinstance(w, bool) or not isinstance(w, numbers.Real) for w in values):
        raise expected("weights as a non-empty sequence of numbers, one per scale", show(weights))
    if any(not math.isfinite(w) or w < 0 for w in values) or not any(w > 0 for w in values):
        raise expected("finite, non-negative weights, not all 0", show(weights))
    return tuple(float(w) for w in values)


def _check_scales(logits: Sequence[Tensor]) -> List[Tensor]:
    scales = list(logits)
    if not scales or not all(isinstance(z, Tensor) for z in scales):
        raise expected("logits as a tensor or a non-empty list of tensors, one per scale", show(logits))
    first = scales[0]
    for i, z in enumerate(scales[1:], 1):
        if z.ndim != first.ndim or z.shape[:2] != first.shape[:2]:
            wanted = f"every scale (N, C, *S_i) with the N, C = {tuple(first.shape[:2])} and dims of scale 0"
            raise expected(wanted, f"scale {i} of shape {tuple(z.shape)}")
    return scales


def _given(**inputs: Any) -> Dict[str, Any]:
    """The inputs that were given (a loss that takes no weight map is not handed ``weight_map=None``)."""
    return {name: value for name, value in inputs.items() if value is not None}


def _per_scale(scales: List[Tensor], value: Optional[PerScale], name: str) -> List[Optional[Tensor]]:
    """One ``value`` per scale: the given list, or the tensor resized to each scale (each size once)."""
    if value is None:
        return [None] * len(scales)
    if not isinstance(value, Tensor):
        given: List[Optional[Tensor]] = list(value)
        if len(given) != len(scales):
            raise expected(f"one {name} per scale ({len(scales)})", f"{len(given)} of them")
        return given
    index = value.ndim == scales[0].ndim - 1
    cache: Dict[Tuple[int, ...], Tensor] = {}
    resized: List[Optional[Tensor]] = []
    for z in scales:
        size = tuple(z.shape[2:])
        if size not in cache:
            cache[size] = resize_target(value, size, index)
        resized.append(cache[size])
    return resized


__all__ = ["DeepSupervision", "default_weights", "resize_target"]
