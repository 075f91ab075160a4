"""Exact Euclidean distance transforms and signed distance maps on the tensor's device (SPEC section 4).

The torch implementation is the separable exact algorithm: the squared distance to the nearest zero is
found along the first spatial axis in one cumulative pass, then each further axis takes the lower
envelope of parabolas ``min_j f(j) + s² (i - j)²`` of the previous result, computed for every line at
once (in memory-bounded chunks of lines, never per sample). It serves CUDA and is the fallback; on CPU
the work goes to the compiled ``edt`` package, else to scipy, when one is installed, one call per sample.

**No zero pixel.** scipy returns garbage for a sample without a zero pixel and ``edt`` returns inf. Here
such a sample is treated as if surrounded by background: each pixel gets the distance to the nearest
point just outside the image, ``min_a s_a · min(i_a + 1, n_a - i_a)``. Never inf.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from typing import Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._core.errors import expected, show
from .._core.numerics import tracing
from .._core.options import check_choice, check_number

Spacing = Union[float, Sequence[float], None]
Backend = Literal["auto", "torch", "edt", "scipy"]
BACKENDS = ("auto", "torch", "edt", "scipy")
_CHUNK_ELEMENTS = 1 << 24  # elements of the (lines, n, n) parabola tensor built at once


def _spatial_rank(mask: Tensor, spacing: Spacing, spatial_dims: Optional[int]) -> int:
    if spatial_dims is not None:
        if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral):
            raise expected("spatial_dims to be an int", show(spatial_dims))
        rank = int(spatial_dims)
    elif isinstance(spacing, Sequence) and not isinstance(spacing, str):
        rank = len(spacing)
    else:
        rank = mask.ndim - 1
    if not 1 <= rank <= 3 or rank > mask.ndim:
        raise expected(
            "1 to 3 spatial dims, at most the mask's (give spacing or spatial_dims for (N, C, *S) masks)",
            f"{show(rank)} spatial dims for a mask of shape {tuple(mask.shape)}",
        )
    return rank


def check_spacing(spacing: Spacing) -> Spacing:
    """None, one positive finite number (every axis), or a tuple of them (one per spatial axis)."""
    if spacing is None:
        return None
    if isinstance(spacing, numbers.Real) and not isinstance(spacing, bool):
        return check_number("spacing", spacing, low=0.0, low_open=True)
    if not isinstance(spacing, Sequence) or isinstance(spacing, str) or len(spacing) == 0:
        raise expected("spacing as a number or one number per spatial axis", repr(spacing))
    return tuple(check_number("spacing", v, low=0.0, low_open=True) for v in spacing)


def spacing_steps(spacing: Spacing, rank: int) -> Tuple[float, ...]:
    """The checked spacing as one step per spatial axis."""
    spacing = check_spacing(spacing)
    if spacing is None:
        return (1.0,) * rank
    steps = (spacing,) * rank if isinstance(spacing, float) else tuple(spacing)  # type: ignore[arg-type]
    if len(steps) != rank:
        raise expected(f"spacing of {rank} values (one per spatial axis)", repr(spacing))
    return steps


def _check_mask(mask: Tensor) -> None:
    if not isinstance(mask, Tensor):
        raise expected("mask to be a torch.Tensor", type(mask).__name__)
    if mask.is_complex():
        raise expected("a real or bool mask", f"dtype {mask.dtype}")


def _lines_last(values: Tensor, axis: int) -> Tuple[Tensor, Tuple[int, ...]]:
    """``values`` with ``axis`` moved last and flattened to ``(lines, n)``; the moved shape to undo it."""
    moved = values.movedim(axis, -1)
    return moved.reshape(-1, moved.shape[-1]), tuple(moved.shape)


def _first_axis_squared(foreground: Tensor, axis: int, step: float) -> Tensor:
    """Squared distance to the nearest zero on the same line along ``axis`` (inf if the line has none)."""
    lines, shape = _lines_last(foreground, axis)
    n = lines.shape[-1]
    position = torch.arange(n, device=lines.device, dtype=torch.float32).expand_as(lines)
    zero_at = torch.where(lines, torch.tensor(-math.inf, device=lines.device), position)
    before = position - torch.cummax(zero_at, dim=-1).values
    zero_at = torch.where(lines, torch.tensor(math.inf, device=lines.device), position)
    after = torch.flip(torch.cummin(torch.flip(zero_at, [-1]), dim=-1).values, [-1]) - position
    nearest = torch.minimum(before, after) * step
    return (nearest * nearest).reshape(shape).movedim(-1, axis)


def _envelope_squared(squared: Tensor, axis: int, step: float) -> Tensor:
    """``min_j squared[j] + (step (i - j))²`` along ``axis``: the exact 1-D pass of the separable EDT."""
    lines, shape = _lines_last(squared, axis)
    n = lines.shape[-1]
    offsets = torch.arange(n, device=lines.device, dtype=torch.float32) * step
    parabola = (offsets[:, None] - offsets[None, :]) ** 2  # (i, j)
    chunk = max(1, _CHUNK_ELEMENTS // (n * n))
    out = torch.empty_like(lines)
    for start in range(0, lines.shape[0], chunk):
        block = lines[start : start + chunk]
        out[start : start + chunk] = (block[:, None, :] + parabola).amin(dim=-1)
    return out.reshape(shape).movedim(-1, axis)


def _torch_edt(foreground: Tensor, spacing: Tuple[float, ...]) -> Tensor:
    """Exact EDT of ``(B, *S)`` bool on its device; inf where a sample has no zero pixel."""
    rank = len(spacing)
    squared = _first_axis_squared(foreground, 1, spacing[0])
    for axis in range(1, rank):
        squared = _envelope_squared(squared, axis + 1, spacing[axis])
    return squared.sqrt()


def _numpy_edt(foreground: Tensor, spacing: Tuple[float, ...], backend: str, two_sided: bool) -> Tensor:
    """EDT of ``(B, *S)`` bool on the CPU by ``edt`` or scipy, one call per sample; inf for a sample with
    nothing to measure to (where scipy would return garbage). ``two_sided``: every pixel's distance to
    the nearest pixel of the other value (``edt`` does it in one call, on labels 1 and 2)."""
    array = np.ascontiguousarray(foreground.numpy())
    out = np.empty(array.shape, dtype=np.float32)
    if backend == "edt":
        import edt

        anisotropy = spacing[0] if len(spacing) == 1 else spacing  # edt takes a scalar in 1-D
        labels = array.view(np.uint8) + 1 if two_sided else array
        threads = torch.get_num_threads()
        for b in range(array.shape[0]):
            out[b] = edt.edt(labels[b], anisotropy=anisotropy, black_border=False, parallel=threads)
        return torch.from_numpy(out)
    from scipy import ndimage

    for b, sample in enumerate(array):
        if sample.all() or (two_sided and not sample.any()):
            out[b] = np.inf
        elif two_sided:
            out[b] = ndimage.distance_transform_edt(sample, sampling=spacing)
            out[b] += ndimage.distance_transform_edt(~sample, sampling=spacing)
        else:
            out[b] = ndimage.distance_transform_edt(sample, sampling=spacing)
    return torch.from_numpy(out)


def _to_outside(shape: Sequence[int], spacing: Tuple[float, ...], device: torch.device) -> Tensor:
    """``min_a s_a · min(i_a + 1, n_a - i_a)``: distance to the nearest point just outside the image."""
    result: Optional[Tensor] = None
    for axis, (n, step) in enumerate(zip(shape, spacing)):
        i = torch.arange(n, device=device, dtype=torch.float32)
        along = torch.minimum(i + 1, n - i) * step
        along = along.reshape([n if a == axis else 1 for a in range(len(shape))])
        result = along if result is None else torch.minimum(result, along)
    assert result is not None
    return result.expand(*shape)


def sample_extremes(mask: Tensor, rank: int) -> Tuple[Tensor, Tensor]:
    """Per sample (all but the last ``rank`` axes) of a bool mask: ``(all, any)`` as bool tensors.

    Reduced as uint8 min / max, several times faster on CPU than ``all`` / ``any`` of bool.
    """
    flat = mask.view(torch.uint8).flatten(mask.ndim - rank)
    if flat.shape[-1] == 0:  # a zero-size spatial axis: no pixel, so every pixel is set and none is
        return torch.ones(flat.shape[:-1], dtype=torch.bool, device=mask.device), torch.zeros(
            flat.shape[:-1], dtype=torch.bool, device=mask.device
        )
    return flat.amin(dim=-1).bool(), flat.amax(dim=-1).bool()


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend in ("edt", "scipy"):
        if device.type != "cpu":
            raise expected(f"a CPU mask for backend={backend!r}", f"device {device}")
        if not _installed(backend):
            raise expected(f"the {backend!r} package installed for backend={backend!r}", "not installed")
        return backend
    if backend == "torch" or device.type != "cpu" or tracing():  # compile and torch.func: the torch path
        return "torch"
    return next((name for name in ("edt", "scipy") if _installed(name)), "torch")


def _transform(
    mask: Tensor, spacing: Spacing, spatial_dims: Optional[int], backend: str, two_sided: bool
) -> Tuple[Tensor, float]:
    """Check the arguments, dispatch, and apply the no-zero-pixel rule; also return ``min(spacing)``."""
    _check_mask(mask)
    rank = _spatial_rank(mask, spacing, spatial_dims)
    steps = spacing_steps(spacing, rank)
    check_choice("backend", backend, BACKENDS)
    shape = tuple(mask.shape)
    spatial = shape[mask.ndim - rank :]
    if mask.numel() == 0:  # an empty batch or a zero-size axis: nothing to measure, an empty result
        return torch.zeros(shape, dtype=torch.float32, device=mask.device), min(steps)
    # Measured in units of a power of two near the largest step (exact to divide and multiply back), so
    # that the squared distances of a tiny or huge spacing (1e-30, 1e20) neither underflow to 0 nor
    # overflow float32; the distances themselves (at most twice the diagonal) must fit in float32.
    scale = math.ldexp(1.0, math.frexp(max(steps))[1])
    if 2 * max(steps) * math.hypot(*spatial) > _FLOAT32_MAX:
        raise expected(
            f"spacing that keeps float32 distances finite (the image diagonal below {_FLOAT32_MAX:.3g})",
            f"spacing {steps} for spatial shape {spatial}",
        )
    units = tuple(step / scale for step in steps)
    foreground = (mask if mask.dtype == torch.bool else mask != 0).reshape(-1, *spatial)
    chosen = _pick_backend(backend, mask.device)
    if chosen == "torch":
        if two_sided:
            distance = _torch_edt(torch.cat([foreground, ~foreground]), units)
            inside, outside = distance.chunk(2)
            distance = inside + outside
        else:
            distance = _torch_edt(foreground, units)
        distance = torch.where(distance.isinf(), _to_outside(spatial, units, mask.device), distance)
    else:
        distance = _numpy_edt(foreground, units, chosen, two_sided)
        lonely = distance.flatten(1)[:, 0].isinf()  # such a sample is inf everywhere
        if bool(lonely.any()):
            distance[lonely] = _to_outside(spatial, units, mask.device)
    if scale != 1.0:
        distance = distance * scale
    return distance.reshape(shape), min(steps)


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def distance_transform(
    mask: Tensor,
    spacing: Spacing = None,
    *,
    spatial_dims: Optional[int] = None,
    backend: Backend = "auto",
) -> Tensor:
    """Exact Euclidean distance transform: for every nonzero pixel, the distance to the nearest zero pixel.

    ``D(q) = min_{z: mask(z) = 0} ‖(q - z) ⊙ spacing‖`` for nonzero ``q``; zero pixels get 0. Each sample
    (every index of the leading dims) is transformed on its own over the last ``k`` axes. A sample with
    no zero pixel counts as surrounded by background (module docstring): finite, never inf.

    Args:
        mask: ``(N, *S)`` or ``(N, C, *S)``, any real or bool dtype; nonzero is foreground.
        spacing: pixel size per spatial axis (or one number for all); default 1.
        spatial_dims: ``k``, the number of trailing spatial axes, when ``spacing`` does not give it;
            default ``mask.ndim - 1`` (so ``(N, C, *S)`` masks need one of the two). 1 to 3.
        backend: ``auto`` (CPU: ``edt``, else scipy, else torch; other devices: torch), or one of
            ``torch``, ``edt``, ``scipy`` (the last two on CPU only).

    Returns:
        float32 distances of the mask's shape, on its device (empty for an empty mask: N = 0 or a
        zero-size axis).

    Raises:
        SegLossError: not a tensor, complex, a bad spacing / rank, a spacing so large that the distances
            overflow float32, or an unavailable backend.

    Example:
        >>> mask = torch.tensor([[0, 1, 1, 1, 1]])
        >>> distance_transform(mask).tolist()
        [[0.0, 1.0, 2.0, 3.0, 4.0]]
    """
    return _transform(mask, spacing, spatial_dims, backend, two_sided=False)[0]


def two_sided_distance(
    mask: Tensor,
    spacing: Spacing = None,
    *,
    spatial_dims: Optional[int] = None,
    backend: Backend = "auto",
) -> Tensor:
    """Every pixel's distance to the nearest pixel of the other value: ``EDT(M) + EDT(¬M)``.

    A sample of one value throughout counts as surrounded by the other (distances to just outside the
    image). Arguments and result as :func:`distance_transform`.

    Example:
        >>> two_sided_distance(torch.tensor([[0, 0, 1, 1, 1]])).tolist()
        [[2.0, 1.0, 1.0, 2.0, 3.0]]
    """
    return _transform(mask, spacing, spatial_dims, backend, two_sided=True)[0]


def signed_distance_map(
    mask: Tensor,
    spacing: Spacing = None,
    *,
    spatial_dims: Optional[int] = None,
    backend: Backend = "auto",
) -> Tensor:
    """Signed distance map in the boundary-loss convention (Kervadec et al. 2019), per sample.

    ``φ = D_out · [q ∉ G] - (D_in - h) · [q ∈ G]`` with ``D_out`` the distance of an outside pixel to
    ``G``, ``D_in`` that of an inside pixel to the outside and ``h = min(spacing)`` (1 by default): pixels
    face-adjacent to the outside are 0, deeper ones negative, outside ones positive. A sample whose
    ``G`` is empty has ``φ ≡ 0``; one filling the image is finite and ≤ 0 (surrounded by background).

    Args and Returns: as :func:`distance_transform` (``mask`` nonzero is ``G``).

    Example:
        >>> signed_distance_map(torch.tensor([[0, 1, 1, 1, 0, 0]])).tolist()
        [[1.0, 0.0, -1.0, 0.0, 1.0, 2.0]]
    """
    distance, step = _transform(mask, spacing, spatial_dims, backend, two_sided=True)
    inside = mask if mask.dtype == torch.bool else mask != 0
    phi = torch.where(inside, step - distance, distance)
    rank = _spatial_rank(mask, spacing, spatial_dims)
    present = sample_extremes(inside, rank)[1]
    return phi * present.reshape(*present.shape, *([1] * rank))


__all__ = ["distance_transform", "sample_extremes", "signed_distance_map", "two_sided_distance"]
