"""Boundary bands by min-pooling erosion, shared by the Boundary IoU metric and the boundary-IoU loss."""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.backend import implementation
from .._core.numerics import first_order_backward


def band_width(dilation_ratio: float, spatial_shape: Sequence[int]) -> int:
    """``d = max(1, round(r · diagonal))``, diagonal over all spatial axes, Python's half-to-even round.

    Capped at the largest extent: from there on every window covers its whole axis and reaches past the
    border, so a wider band is the same band (and a huge ratio such as 1e308 makes no giant padding, nor
    an inf that ``round`` refuses).
    """
    diagonal = math.sqrt(sum(extent**2 for extent in spatial_shape))
    widest = 1
    for extent in spatial_shape:  # a loop, not max(..., default=): torch.compile traces symbolic sizes
        widest = max(widest, extent)
    width = dilation_ratio * diagonal  # inf for a huge ratio: the widest band
    return widest if width >= widest else max(1, round(width))


def erode(values: Tensor, width: int) -> Tensor:
    """Min-pool of ``(N, C, *S)`` over a ``(2d + 1)^k`` window, outside the image counted as 0.

    On a 0/1 mask this is the erosion by a 3^k square element repeated ``d`` times, the image border
    padded with background. The square window is separable: a running minimum of length ``2d + 1`` along
    each spatial axis in turn, ``O(log d)`` elementwise minima per axis (:func:`running_min`) instead of
    the ``(2d + 1)^k`` comparisons per pixel of a max-pool; the same values, exactly.
    """
    rank = values.ndim - 2
    eroded = F.pad(values, [width, width] * rank, value=0.0)
    fused = implementation(values) == "cpu" and eroded.requires_grad
    for axis in range(2, values.ndim):
        eroded = (
            _RunningMin.apply(eroded, axis, 2 * width + 1)
            if fused
            else running_min(eroded, axis, 2 * width + 1)
        )
    return eroded


def running_min(values: Tensor, axis: int, length: int) -> Tensor:
    """``min(values[i : i + length])`` along ``axis`` for every ``i`` (size ``n - length + 1``), in plain
    differentiable torch (the reference of :class:`_RunningMin`).

    Doubling: after ``k`` steps ``m[i] = min(values[i : i + 2^k])``; the loop stops at the span
    ``length / 2 < span <= length``, where two overlapping spans cover each window:
    ``min(m[i], m[i + length - span])``.
    """
    m = values
    for offset, size in _doubling_steps(values.shape[axis], length):
        m = torch.minimum(m.narrow(axis, 0, size), m.narrow(axis, offset, size))
    return m


def _doubling_steps(extent: int, length: int) -> List[Tuple[int, int]]:
    """``(offset, size)`` of each step of :func:`running_min`: ``m' = min(m[:size], m[offset:][:size])``."""
    steps, span, current = [], 1, extent
    while 2 * span <= length:
        steps.append((span, current - span))
        current -= span
        span *= 2
    steps.append((length - span, extent - length + 1))
    return steps


class _RunningMin(torch.autograd.Function):
    """:func:`running_min` with a closed-form backward: the forward keeps, per output, where in its window
    the minimum is (an int16 offset, carried through the doubling steps), and the backward adds each
    gradient there with one ``scatter_add_`` (ties go to the leftmost candidate of each step: one valid
    subgradient, where autograd through ``torch.minimum`` splits ties in halves at several times the cost).
    Eager only (:func:`~seglosses._core.backend.implementation`); a double backward differentiates the
    reference."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, axis: int, length: int) -> Tensor:
        m: Tensor = values
        offset: Optional[Tensor] = None  # m[i] = values[i + offset[i]] along the axis
        for shift, size in _doubling_steps(values.shape[axis], length):
            left, right = m.narrow(axis, 0, size), m.narrow(axis, shift, size)
            take_left = left <= right
            if offset is None:
                offset = torch.where(take_left, 0, shift).to(torch.int16 if length < 2**15 else torch.int32)
            else:
                offset = torch.where(
                    take_left, offset.narrow(axis, 0, size), offset.narrow(axis, shift, size) + shift
                )
            m = torch.minimum(left, right)
        ctx.axis, ctx.length = axis, length
        ctx.save_for_backward(values, offset)
        return m

    @staticmethod
    def reference(ctx: Any, values: Tensor, *_: Tensor) -> Tuple[Tuple[Any, ...], Tuple[Tensor, ...]]:
        return (values, None, None), (running_min(values, ctx.axis, ctx.length),)

    @staticmethod
    @first_order_backward("the boundary bands' erosion", lambda *a: _RunningMin.reference(*a))
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None]:
        values, offset = ctx.saved_tensors
        axis = ctx.axis
        shape = [1] * grad.ndim
        shape[axis] = grad.shape[axis]
        position = torch.arange(grad.shape[axis], device=grad.device).view(shape) + offset.long()
        return grad.new_zeros(values.shape).scatter_add_(axis, position, grad), None, None


def boundary_band(values: Tensor, width: int) -> Tensor:
    """``B(x) = x - erode(x)``: the inner band of a mask, or its soft form on probabilities."""
    return values - erode(values, width)


def face_boundary(mask: Tensor) -> Tensor:
    """Pixels of a bool mask ``(N, C, *S)`` with a face neighbour outside it (the image border counts as
    outside): the mask minus its erosion by the cross-shaped element, as scipy's ``binary_erosion``
    default and MONAI's surface distances define the edge."""
    rank = mask.ndim - 2
    padded = F.pad(mask, [1, 1] * rank, value=False)
    inner = [slice(None), slice(None)] + [slice(1, -1)] * rank
    interior = mask.clone()
    for axis in range(2, mask.ndim):
        for start in (0, 2):
            index = list(inner)
            index[axis] = slice(start, start + mask.shape[axis])
            interior &= padded[tuple(index)]
    return mask & ~interior


__all__ = ["band_width", "boundary_band", "erode", "face_boundary", "running_min"]
