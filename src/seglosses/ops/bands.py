"""Boundary bands by min-pooling erosion, shared by the Boundary IoU metric and the boundary-IoU loss."""

from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


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
    padded with background.
    """
    rank = values.ndim - 2
    padded = F.pad(-values, [width, width] * rank, value=0.0)
    return -_MAX_POOL[rank](padded, kernel_size=2 * width + 1, stride=1)


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


__all__ = ["band_width", "boundary_band", "erode", "face_boundary"]
