"""Soft (grey-value) morphology by min / max pooling and the soft skeleton of clDice (Shit et al. 2021).

Every function takes ``(N, C, *S)`` with one to three spatial dims and returns that shape; values are
probabilities (or a 0/1 mask). Outside the image is *neutral*: a pooling window that reaches past the
border takes the min / max over its pixels inside the image (the authors' code pads with ``-inf`` in
``max_pool``), so the border neither erodes nor dilates a mask.

* :func:`soft_erode`: the minimum over the cross-shaped element (the pixel and its ``2k`` face
  neighbours), i.e. the smallest of ``k`` one-dimensional 3-pixel min-pools, one per axis.
* :func:`soft_dilate`: the maximum over the ``3^k`` square (cube) element.
* :func:`soft_open`: ``dilate(erode(x))``.
* :func:`soft_skeleton`: ``S_0 = relu(x - open(x))``, then for ``j = 1..iterations`` with
  ``E_j = erode^j(x)``: ``δ_j = relu(E_j - open(E_j))`` and ``S_j = S_{j-1} + relu(δ_j - S_{j-1} δ_j)``.

In 2-D and 3-D these are the functions of the clDice authors' code (``jocpae/clDice``,
``cldice_loss/pytorch/soft_skeleton.py``) and of MONAI's ``monai.losses.cldice`` (``soft_erode``,
``soft_dilate``, ``soft_skel``): the same values, bit for bit, and the same subgradients where pixels
tie (within a window the first in raster order takes the gradient, as ``max_pool`` gives it; between the
per-axis pools of an erosion ties split it evenly, as ``torch.min`` does), to rounding. In 1-D,
where those functions are not defined, the cross and the square are both the 3-pixel segment: the soft
skeleton of a segment of ``2m + 1`` ones is its middle pixel (of ``2m`` ones, its middle two).

Implementation: 3-D pools run as 2-D pools on folded views (``(3, 1, 1)`` along depth is a ``(3, 1)``
pool over ``(D, H·W)``; the ``3×3×3`` max is a ``3×3`` pool per slice, then a ``(3, 1)`` pool along depth),
which selects the same pixels as ``max_pool3d`` (the first of tied pixels in raster order), is faster
on the CPU, and runs under ``torch.use_deterministic_algorithms(True)``, which refuses ``max_pool3d``'s
backward on CUDA. The skeleton computes each
erosion ``E_j`` once (the authors' loop computes ``E_{j+1}`` twice, once inside ``open(E_j)``), so its
autograd graph holds ``iterations + 1`` erosions and dilations.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from .._core.errors import expected


def _rank(x: Tensor) -> int:
    """The number of spatial dims of ``(N, C, *S)``, checked to be 1, 2 or 3."""
    if not isinstance(x, Tensor) or not 3 <= x.ndim <= 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise expected("a tensor (N, C, *S) with one to three spatial dims", f"shape {shape}")
    return x.ndim - 2


def _max_along(x: Tensor, axis: int) -> Tensor:
    """Max over the 3 pixels centred on each pixel along spatial ``axis`` (neutral border), shape kept."""
    rank = x.ndim - 2
    if rank == 1:
        return F.max_pool1d(x, 3, 1, 1)
    if rank == 2:
        kernel, padding = ((3, 1), (1, 0)) if axis == 0 else ((1, 3), (0, 1))
        return F.max_pool2d(x, kernel, 1, padding)
    n, c, d, h, w = x.shape
    x = x.contiguous()
    if axis == 0:  # depth: (D, H·W) planes, a (3, 1) window
        return F.max_pool2d(x.view(n, c, d, h * w), (3, 1), 1, (1, 0)).view(n, c, d, h, w)
    kernel, padding = ((3, 1), (1, 0)) if axis == 1 else ((1, 3), (0, 1))
    return F.max_pool2d(x.view(n, c * d, h, w), kernel, 1, padding).view(n, c, d, h, w)


def soft_erode(x: Tensor) -> Tensor:
    """Soft erosion: the minimum over the cross-shaped element (the pixel and its face neighbours).

    ``erode(x)_i = min(x_i, x_j : j a face neighbour of i inside the image)``; computed as
    ``-max_a maxpool_a(-x)`` over one 3-pixel pool per spatial axis ``a``. Shape ``(N, C, *S)`` kept.
    """
    rank = _rank(x)
    negated = -x
    out = _max_along(negated, 0)
    for axis in range(1, rank):  # the authors' order: min(min(p1, p2), p3)
        out = torch.maximum(out, _max_along(negated, axis))
    return -out


def soft_dilate(x: Tensor) -> Tensor:
    """Soft dilation: the maximum over the ``3^k`` square (cube) element, border neutral; shape kept."""
    rank = _rank(x)
    if rank == 1:
        return F.max_pool1d(x, 3, 1, 1)
    if rank == 2:
        return F.max_pool2d(x, 3, 1, 1)
    n, c, d, h, w = x.shape
    planes = F.max_pool2d(x.contiguous().view(n, c * d, h, w), 3, 1, 1)  # 3×3 in each slice, then depth
    return _max_along(planes.view(n, c, d, h, w), 0)


def soft_open(x: Tensor) -> Tensor:
    """Soft opening ``dilate(erode(x))`` (cross-shaped erosion, square dilation, as the authors)."""
    return soft_dilate(soft_erode(x))


def _first_step(x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(E_1, S_0)``: the first erosion and ``relu(x - open(x))``."""
    eroded = soft_erode(x)
    return eroded, F.relu(x - soft_dilate(eroded))


def _next_step(x: Tensor, skeleton: Tensor) -> Tuple[Tensor, Tensor]:
    """``(E_{j+1}, S_j)`` from ``x = E_j`` and ``S_{j-1}``: ``open(E_j) = dilate(E_{j+1})``, so each erosion
    is computed once."""
    eroded = soft_erode(x)
    delta = F.relu(x - soft_dilate(eroded))
    return eroded, skeleton + F.relu(delta - skeleton * delta)


def _can_checkpoint(x: Tensor) -> bool:
    """Whether a checkpoint saves anything: ``x`` has a graph, and no ``torch.func`` transform is active
    (``torch.func.grad`` refuses the saved-tensor hooks a checkpoint uses; the plain graph serves it)."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return False
    return torch.compiler.is_compiling() or not torch._C._functorch.is_functorch_wrapped_tensor(x)


def soft_skeleton(x: Tensor, iterations: int = 3, *, checkpoint: bool = False) -> Tensor:
    """Soft skeleton of ``x`` ``(N, C, *S)`` (values in ``[0, 1]``) by ``iterations`` erosion steps.

    ``S_0 = relu(x - open(x))``; for ``j = 1..iterations``, ``E_j = erode^j(x)``,
    ``δ_j = relu(E_j - open(E_j))`` and ``S_j = S_{j-1} + relu(δ_j - S_{j-1} δ_j)`` (a soft union:
    ``S + δ - S δ`` for values in ``[0, 1]``). Zero wherever ``x`` is 0, and at most 1. On a 0/1 mask it
    is the union of the pixels that the first ``iterations + 1`` openings remove, so it reaches only
    ``iterations + 1`` pixels deep: a band wider than ``2 · iterations + 2`` pixels (across the image)
    has an empty skeleton. Choose ``iterations`` above the largest radius of the structures.

    ``checkpoint=True`` keeps only ``E_j`` and ``S_j`` between the steps and recomputes each step's
    pooling in the backward (:func:`torch.utils.checkpoint.checkpoint`): the same values and gradients,
    bit for bit, with about a third of the memory (float32, 3-D: about 125 instead of 350 bytes per
    pixel for forward and backward) for about 15-60 % more time. It applies only where ``x`` requires
    grad, and not under ``torch.func`` transforms.

    Example: a one-pixel-wide line is its own skeleton (its erosion by the cross is empty, so its
    opening is empty and ``S_0 = x``); a ``3 × 3`` tube along an axis of the image has its centre line
    as its skeleton.
    """
    _rank(x)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise expected("iterations to be an int >= 0", repr(iterations))
    if not (checkpoint and _can_checkpoint(x)):
        eroded, skeleton = _first_step(x)
        for _ in range(iterations):
            eroded, skeleton = _next_step(eroded, skeleton)
        return skeleton
    eroded, skeleton = _checkpoint(_first_step, x, use_reentrant=False)
    for _ in range(iterations):
        eroded, skeleton = _checkpoint(_next_step, eroded, skeleton, use_reentrant=False)
    return skeleton


__all__ = ["soft_dilate", "soft_erode", "soft_open", "soft_skeleton"]
