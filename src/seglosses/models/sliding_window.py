"""Sliding-window inference: logits of an image larger than the training patch, window by window.

Windows of ``patch`` pixels per axis overlap by ``overlap`` of a window (the last one flush with the
image's end); each window's logits are weighted by a Gaussian centred on the window (σ = patch / 8 per
axis, as nnU-Net does, so that a pixel's logits come mostly from windows that see its surroundings)
and the weighted sum is divided by the summed weights. An axis no longer than ``patch`` is one window
of the whole extent.
"""

from __future__ import annotations

import math
from typing import Callable, List, Sequence, Union

import torch
from torch import Tensor

from .._core.errors import expected


def window_starts(extent: int, patch: int, overlap: float) -> List[int]:
    """Window starts along one axis: evenly spread from 0 to ``extent - patch``, at most
    ``patch · (1 - overlap)`` apart."""
    if extent <= patch:
        return [0]
    step = max(1.0, patch * (1 - overlap))
    count = math.ceil((extent - patch) / step) + 1
    return sorted({round(k * (extent - patch) / (count - 1)) for k in range(count)})


def gaussian_weights(size: Sequence[int], device: torch.device) -> Tensor:
    """``(*size)`` weights, a Gaussian of σ = size / 8 per axis scaled to a peak of 1, floored at 1e-3."""
    weights = torch.ones((), device=device)
    for extent in size:
        position = torch.arange(extent, device=device, dtype=torch.float32) - (extent - 1) / 2
        axis = torch.exp(-0.5 * (position / max(extent / 8, 1e-3)) ** 2)
        weights = weights[..., None] * axis
    return (weights / weights.max()).clamp_min(1e-3)


def sliding_window_inference(
    model: Callable[[Tensor], Tensor],
    image: Tensor,
    patch: Union[int, Sequence[int]],
    *,
    overlap: float = 0.5,
    batch: int = 4,
) -> Tensor:
    """Logits ``(N, out, *S)`` of ``image (N, C, *S)``, ``model`` applied to windows of ``patch`` pixels
    (one number, or one per spatial axis; ``batch`` windows at a time) and blended (see the module
    docstring).

    Example:
        >>> model = torch.nn.Conv2d(1, 2, 3, padding=1)
        >>> image = torch.randn(1, 1, 40, 30)
        >>> sliding_window_inference(model, image, 16).shape
        torch.Size([1, 2, 40, 30])
    """
    if not 0 <= overlap < 1:
        raise expected("overlap in [0, 1)", overlap)
    spatial = tuple(image.shape[2:])
    patches = [patch] * len(spatial) if isinstance(patch, int) else list(patch)
    if len(patches) != len(spatial) or min(patches) < 1:
        raise expected(f"a positive patch size or one per spatial axis of {spatial}", patch)
    size = tuple(min(p, extent) for p, extent in zip(patches, spatial))
    starts = [torch.tensor(window_starts(e, p, overlap)) for e, p in zip(spatial, patches)]
    grids = torch.meshgrid(*starts, indexing="ij")
    corners = torch.stack([g.flatten() for g in grids], 1).tolist()
    weights = gaussian_weights(size, image.device)
    total = None
    norm = torch.zeros(spatial, device=image.device)
    for first in range(0, len(corners), batch):
        chunk = corners[first : first + batch]
        windows = [tuple(slice(c, c + s) for c, s in zip(corner, size)) for corner in chunk]
        logits = model(torch.cat([image[(Ellipsis,) + w] for w in windows]))
        if total is None:
            total = torch.zeros((*image.shape[:1], logits.shape[1], *spatial), device=image.device)
        for k, window in enumerate(windows):
            part = logits[k * image.shape[0] : (k + 1) * image.shape[0]].float()
            total[(Ellipsis,) + window] += part * weights
            norm[window] += weights
    assert total is not None
    return total / norm
