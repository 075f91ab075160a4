"""Lovász losses: the Lovász extension of the Jaccard loss on per-pixel errors (Berman et al., CVPR 2018).

For one class with errors ``e_i`` and ground truth ``g_i`` over the valid pixels, sort the errors in
decreasing order, ``e_(1) >= e_(2) >= ...``, and let ``J_k`` be the Jaccard loss of the set of the ``k``
largest errors::

    J_k = 1 - (G - Σ_{j<=k} g_(j)) / (G + Σ_{j<=k} (1 - g_(j)))        G = Σ_i g_i

The loss is ``Σ_k e_(k) (J_k - J_{k-1})`` (``J_0 = 0``): a convex, piecewise-linear surrogate of the
Jaccard loss that equals it at binary errors. Its gradient with respect to ``e_(k)`` is ``J_k - J_{k-1}``,
constant between reorderings, so the weights are computed once without gradient and the loss is
``Σ_i e_i w_i``. Ties in the errors do not change the value (the extension does not depend on how
ties are broken); the sort is stable, so the gradient is deterministic.

One batched sort per call (all classes, or all (image, class) rows, at once) replaces the per-class
sorts of the reference implementations. On the eager CPU path (index targets) the rows go through an
exact sort of packed (key, index) integers (:mod:`seglosses.ops.sort`) and, in float32, are processed
row by row with numpy in torch's intra-op threads; the loss is ``Σ_i (p_i - y_i) s_i`` with the signed slopes
``s = sign(p - y) w`` handed to autograd as the gradient (no backward through the sort, no copy of the
probabilities in the graph). The plain autograd form is the reference (and serves other devices, traced
code, soft targets and small inputs).

**Weight maps** (``weight_map=`` ``ω``, multiplicities): the pixels are sorted by error as without weights
and every count becomes a weighted sum, ``G = Σ ω g``, ``A_k = Σ_{j<=k} ω_(j) g_(j)``,
``B_k = Σ_{j<=k} ω_(j) (1 - g_(j))``, ``J_k = 1 - (G - A_k) / (G + B_k)``; an integer ``ω`` is the pixel
repeated ``ω`` times, ``ω = 0`` removes it, ``ω = 1`` is the loss without weights. ``mask=`` is
``ignore_index``.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
from torch import Tensor

from .._core.backend import fused_cpu
from .._core.errors import expected
from .._core.numerics import LeanFunction, safe_divide, softmax_f32
from .._core.options import (
    Options,
    Reduction,
    call_input,
    check_bool,
    check_ignore_index,
    check_reduction,
)
from .._core.pixel_weights import PixelWeights, mask_as_ignore, pixel_weights
from .._core.registry import register
from .._core.targets import IndexTarget, binary_target, softmax_target
from ..ops.sort import descending_order, each_row, fused_sort_available, order_of_row
from .base import PixelWeightedModule, module_for

Classes = Union[Literal["present", "all"], Sequence[int]]


@dataclass(frozen=True, kw_only=True, eq=False)
class LovaszOptions(Options):
    """Options of the Lovász losses: the classes averaged (softmax only), per-image rows, ignore_index,
    reduction."""

    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask
    classes: Classes = "all"  # the binary losses have no classes to select
    per_image: bool
    ignore_index: Optional[int]
    reduction: str

    def checked(self) -> Dict[str, Any]:
        return {
            "classes": _check_classes(self.classes),
            "per_image": check_bool("per_image", self.per_image),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


def _check_classes(classes: Classes) -> Union[str, Tuple[int, ...]]:
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise expected('classes "present", "all" or a sequence of class indices', repr(classes))
        return classes
    try:
        values = tuple(classes)
    except TypeError:
        raise expected('classes "present", "all" or a sequence of class indices', repr(classes)) from None
    if not values or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise expected("classes as a non-empty sequence of class indices >= 0", repr(classes))
    if len(set(values)) != len(values):
        raise expected("classes without repeats", repr(classes))
    return tuple(int(v) for v in values)


@torch.no_grad()
def lovasz_weights(
    keys: Tensor,
    truth: Tensor,
    valid_count: Union[int, Tensor],
    *,
    nonnegative: bool = False,
    weight: Optional[Tensor] = None,
) -> Tensor:
    """The Lovász-Jaccard weights ``w`` (rows ``(R, L)``), ``loss_r = Σ_i e_ri w_ri`` (module docstring).

    ``keys`` are the errors, ``-inf`` at pixels that do not count (they sort last and get weight 0);
    ``truth`` the ground truth ``g`` in ``[0, 1]`` (0 where a pixel does not count; a soft value counts
    fractionally); ``valid_count`` the number of pixels that count per row (an int, or a tensor that
    broadcasts against ``(R, 1)``); ``nonnegative``: the keys are ``>= 0`` or ``-inf``. With
    ``a_k = Σ_{j<=k} g_(j)``: ``J_k = k / (G + k - a_k)`` and ``w_(k) = J_k - J_{k-1}`` up to the valid
    count, 0 after it.

    ``weight``: per-pixel multiplicities ``ω >= 0`` broadcastable to ``keys`` (0 where a pixel does not
    count; ``valid_count`` is then not read). The counts become weighted sums over the sorted pixels,
    ``A_k = Σ_{j<=k} ω_(j) g_(j)``, ``B_k = Σ_{j<=k} ω_(j) (1 - g_(j))``, ``G = A_L``:
    ``J_k = 1 - (G - A_k) / (G + B_k)`` (``J = 0`` while ``G + B_k = 0``, nothing in the union yet), so
    that an integer ``ω`` is the pixel repeated ``ω`` times.
    """
    if keys.shape[-1] == 0:  # no pixels (an empty batch)
        return torch.zeros_like(keys)
    order = descending_order(keys, nonnegative=nonnegative)
    g = truth.gather(-1, order).to(keys.dtype)
    steps, _ = _sorted_steps(g, order, valid_count, weight)
    return torch.empty_like(steps).scatter_(-1, order, steps)


def _sorted_steps(
    g: Tensor, order: Tensor, valid_count: Union[int, Tensor], weight: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """The steps ``J_k - J_{k-1}`` in sorted order (``g`` the sorted truth, ``order`` the sort) and the
    rows' foreground mass ``G`` ``(R, 1)``."""
    if weight is None:
        return _counted_steps(g, valid_count)
    return _weighted_steps(g, weight.to(g.dtype).expand(order.shape).gather(-1, order))


def _counted_steps(g: Tensor, valid_count: Union[int, Tensor]) -> Tuple[Tensor, Tensor]:
    """``J_k - J_{k-1}`` in sorted order, every pixel counted once, 0 from the ``valid_count``-th on; and
    ``G``."""
    before = g.cumsum(-1).sub_(g)  # a_{k-1}
    total = before[..., -1:] + g[..., -1:]  # G
    ahead_count = torch.arange(g.shape[-1], device=g.device, dtype=g.dtype)  # k - 1
    # J_k - J_{k-1} = (G - a_{k-1} + (k-1) g_k) / (D_k (D_k + 1 - g_k)), D_k = G + k - 1 - a_{k-1}: every term
    # non-negative, no difference of nearly equal numbers (exact counts in float32 up to 2^24 pixels a row)
    steps = (ahead_count * g).add_(total).sub_(before)
    d = (ahead_count + total).sub_(before)
    steps.div_((d + 1).sub_(g).mul_(d))
    steps[..., 0] = torch.where(total[..., 0] > 0, steps[..., 0], 1.0)  # no foreground: D_1 = 0, J_1 = 1
    if not isinstance(valid_count, int) or valid_count < g.shape[-1]:  # the ignored pixels, sorted last
        count = torch.as_tensor(valid_count, device=g.device)
        steps.masked_fill_(ahead_count >= count, 0.0)
    return steps, total


def _weighted_steps(g: Tensor, omega: Tensor) -> Tuple[Tensor, Tensor]:
    """``J_k - J_{k-1}`` in sorted order with multiplicities ``ω`` (sorted too).

    With ``A``, ``B`` the weighted sums before pixel ``k``, ``W = A + B``, ``D = G + B`` and
    ``D' = D + ω_k (1 - g_k)``: ``J_k - J_{k-1} = ω_k (G - A + g_k W) / (D D')``, every term non-negative;
    where ``D = 0`` (no foreground and nothing counted yet) ``J_{k-1} = 0`` and ``J_k`` is 1 if ``D' > 0``.
    """
    positive = omega * g  # ω g
    negative = omega - positive  # ω (1 - g)
    a = positive.cumsum(-1)
    total = a[..., -1:].clone()  # G
    a.sub_(positive)  # A_{k-1}
    b = negative.cumsum(-1).sub_(negative)  # B_{k-1}
    steps = (a + b).mul_(g).add_(torch.sub(total, a).clamp_min_(0)).mul_(omega)
    d = b.add_(total)  # D
    after = d + negative  # D'
    steps.div_(after * d)
    return torch.where(d > 0, steps, (after > 0).to(steps.dtype)), total


def _rows(x: Tensor, per_image: bool) -> Tensor:
    """``(N, C, *S)`` as rows: ``(N, C, L)`` per image, else ``(C, N·L)`` (a copy)."""
    flat = x.flatten(2)
    return flat if per_image else flat.movedim(1, 0).flatten(1)


def _valid_count(valid: Optional[Tensor], shape: Tuple[int, ...], per_image: bool) -> Union[int, Tensor]:
    """The pixels that count in each row: ``(N, 1, 1)`` per image, else one number."""
    if valid is None:
        return math.prod(shape[1:]) if per_image else math.prod(shape)
    return valid.flatten(1).sum(-1).view(-1, 1, 1) if per_image else valid.sum()


def _reduce(per_row: Tensor, selected: Tensor, reduction: str, per_image: bool) -> Tensor:
    """``none``: the per-class losses ``(C,)`` (``(N, C)`` per image), 0 where a class is not selected;
    ``sum``: their sum; ``mean``: the mean over the selected classes (per image: then over images, an
    image without a selected class counting 0, as in the paper's code)."""
    loss = torch.where(selected, per_row, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    class_mean = safe_divide(loss.sum(-1), selected.sum(-1).to(loss.dtype), 0.0)  # (N,) per image, else ()
    if per_image:
        return class_mean.sum() / max(class_mean.numel(), 1)  # N = 0 gives 0
    return class_mean


def _lovasz_softmax(logits: Tensor, target: Tensor, opts: LovaszOptions) -> Tensor:
    pixels = opts.pixel_weights
    target, ignore_index, mask = mask_as_ignore(target, _mask_of(pixels), opts.ignore_index, binary=False)
    if mask is not None:  # a soft target's masked pixels: their logits reach nothing (not the checks)
        logits = logits.masked_fill(~mask.unsqueeze(1), 0.0)
    prepared = softmax_target(logits, target, ignore_index)
    n, c = logits.shape[:2]
    if isinstance(opts.classes, tuple) and max(opts.classes) >= c:
        raise expected(f"classes below C = {c}", opts.classes)
    softmax = softmax_f32(prepared.clean(logits))
    valid = prepared.valid if isinstance(prepared, IndexTarget) else mask
    truth, row_mask = _truth_rows(prepared, valid, c, opts.per_image, softmax.dtype)
    omega = _weight_rows(pixels, valid, opts.per_image, softmax.dtype)
    classes = cast(Union[str, Tuple[int, ...]], opts.classes)  # checked: str or tuple
    if isinstance(prepared, IndexTarget) and fused_cpu(logits):
        needed = _needed_rows(classes, truth, omega, c)
        per_row, present = _fused_softmax_rows(softmax, truth, row_mask, omega, opts.per_image, needed)
    else:
        probs = _rows(softmax, opts.per_image)
        count = _valid_count(valid, (n, *logits.shape[2:]), opts.per_image)
        y = truth.to(probs.dtype)
        with torch.no_grad():  # the weights, and the errors' slope in p: e = |p - y| = sign(p - y) (p - y)
            difference = probs.detach() - y
            keys = difference.abs()
            if row_mask is not None:  # ignored pixels sort last
                keys.masked_fill_(~row_mask, -torch.inf)
            coefficient = lovasz_weights(keys, truth, count, nonnegative=True, weight=omega)
            coefficient.mul_(difference.sign_())
            offset = -(coefficient * y).sum(-1)  # Σ w e = Σ w s p - Σ w s y
            present = y.sum(-1) if omega is None else (y * omega).sum(-1)  # Σ ω y over the valid pixels
        per_row = (probs * coefficient).sum(-1) + offset  # not linalg.vecdot: autocast would run it in half
    selected = _selected(classes, present, c)
    return _reduce(per_row, selected, opts.reduction, opts.per_image)


def _needed_rows(
    classes: Union[str, Tuple[int, ...]], truth: Tensor, omega: Optional[Tensor], c: int
) -> Optional[Tensor]:
    """The rows whose loss enters the result (bool, the rows' shape without ``L``), or None for all: a
    class outside ``classes``, or absent (``Σ ω y = 0``) with ``"present"``, is neither sorted nor
    differentiated (its loss is masked to 0 anyway). Read on the host: the eager-CPU path only."""
    if classes == "present":
        return (truth if omega is None else truth & (omega > 0)).any(-1)
    if isinstance(classes, tuple):
        return _selected(classes, truth[..., 0], c)
    return None


def _fused_softmax_rows(
    probs: Tensor,
    truth: Tensor,
    row_mask: Optional[Tensor],
    omega: Optional[Tensor],
    per_image: bool,
    needed: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """The eager-CPU form of the rows' losses for an index target (``truth`` bool rows): the same
    weights, with fewer passes and copies. ``probs`` is the softmax ``(N, C, *S)``; the loss per row is
    ``Σ_i (p_i - y_i) s_i`` with the signed slopes ``s = sign(p - y) w`` (``-w`` at the class's pixels, ``w``
    elsewhere, 0 where ``p = y``), and its gradient ``s`` goes to autograd directly (:class:`_ConstantSlope`,
    no copy of the probabilities in the graph). Rows not ``needed`` get 0 (loss, slopes and ``G``).
    Returns the per-row losses and ``G`` per row."""
    with torch.no_grad():
        difference = _rows(probs.detach(), per_image)
        difference = difference.clone() if per_image else difference  # a copy either way
        difference.sub_(truth.view(torch.uint8))  # p - y
        keys = difference.abs()
        if row_mask is not None:  # ignored pixels sort last
            keys.masked_fill_(~row_mask, -torch.inf)
        if fused_sort_available(keys):
            slopes, per_row, total = _rows_on_host(difference, keys, truth, omega, needed)
        else:
            slopes, per_row, total = _rows_in_torch(difference, keys, truth, omega)
    return _constant_slope(probs, per_row, slopes, per_image), total


def _rows_in_torch(
    difference: Tensor, keys: Tensor, truth: Tensor, omega: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`_rows_on_host` in torch ops (any dtype): the slopes, the rows' losses and ``G`` per row."""
    order = descending_order(keys, nonnegative=True)
    g = truth.gather(-1, order)
    if omega is None:
        steps, total, g = _counted_steps_lean(g, keys.dtype)
    else:
        g = g.to(keys.dtype)
        steps, total = _sorted_steps(g, order, keys.shape[-1], omega)
    steps.addcmul_(g, steps, value=-2.0)  # sign(p - y) = 1 - 2 g where e > 0
    # e = 0 (slope 0, as |.|'s gradient at 0 in torch) or ignored (-inf): slope 0
    dead = keys <= 0
    slopes = keys.scatter_(-1, order, steps).masked_fill_(dead, 0.0)  # the keys' buffer, no longer needed
    return slopes, difference.mul_(slopes).sum(-1), total.squeeze(-1)


def _constant_slope(probs: Tensor, per_row: Tensor, slopes: Tensor, per_image: bool) -> Tensor:
    """The rows' losses attached to ``probs`` ``(N, C, *S)`` with the gradient ``slopes`` (rows)."""
    if not per_image:  # the slopes in the probabilities' layout (a view)
        slopes = slopes.view(probs.shape[1], probs.shape[0], -1).transpose(0, 1)
    return _ConstantSlope.apply(probs, per_row, slopes.reshape(probs.shape))


def _rows_on_host(
    difference: Tensor, keys: Tensor, truth: Tensor, omega: Optional[Tensor], needed: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`_fused_softmax_rows` for float32 rows on the eager CPU path, row by row with numpy (the
    packed sort, the sorted truth, the steps, their scatter and the row's loss, in one thread per row and
    in cache), the rows spread over torch's intra-op threads. Returns the slopes (rows), the losses and
    ``G`` per row (0 for the rows not ``needed``). ``difference`` (``p - y``) is overwritten."""
    length = keys.shape[-1]
    keys_np = keys.view(-1, length).numpy()
    difference_np = difference.view(-1, length).numpy()
    truth_np = truth.reshape(-1, length).numpy()
    rows = keys_np.shape[0]
    slopes = torch.empty(keys.shape, dtype=keys.dtype)
    slopes_np = slopes.view(-1, length).numpy()
    weight_np = None if omega is None else omega.reshape(-1, length).numpy()
    group = 1 if weight_np is None else rows // weight_np.shape[0]  # rows per weight row
    values, totals = np.zeros(rows), np.zeros(rows)
    ahead = np.arange(length, dtype=np.int32)  # k - 1
    ahead_f = ahead.astype(np.float32)
    needed_np = None if needed is None else needed.reshape(-1).numpy()

    def row(r: int) -> None:
        if needed_np is not None and not needed_np[r]:
            slopes_np[r] = 0.0
            return
        order = order_of_row(keys_np[r])
        g = truth_np[r].take(order)
        if weight_np is None:
            steps, totals[r] = _host_counted_steps(g, ahead, ahead_f)
        else:
            steps, totals[r] = _host_weighted_steps(g, weight_np[r // group].take(order))
        out = slopes_np[r]  # the steps come signed with sign(p - y)
        out[order] = steps
        out[keys_np[r] <= 0] = 0.0  # e = 0 (slope 0, as |.|'s gradient at 0) or ignored (-inf)
        values[r] = np.multiply(difference_np[r], out, out=difference_np[r]).sum()

    each_row(rows, row, keys_np.size)
    shape = keys.shape[:-1]
    return slopes, torch.from_numpy(values).to(keys.dtype).view(shape), torch.from_numpy(totals).view(shape)


def _host_counted_steps(g: np.ndarray, ahead: np.ndarray, ahead_f: np.ndarray) -> Tuple[np.ndarray, float]:
    """:func:`_counted_steps_lean` for one row in numpy: exact int32 counts, float32 steps, signed with
    ``sign(p - y)`` (``-`` at the class's pixels)."""
    d = np.cumsum(g, dtype=np.int32)
    total = int(d[-1])
    np.subtract(ahead, d, out=d)
    d += g
    d += total  # D_k = G + (k-1) - a_{k-1}
    d_f = d.astype(np.float32)
    # signed: sign(p - y) = -1 at the class's pixels (numerator D_k), +1 elsewhere (D_k - (k-1))
    steps = np.where(g, np.negative(d_f), np.subtract(d_f, ahead_f))
    denominator = np.subtract(d_f, g, dtype=np.float32)
    denominator += 1.0
    denominator *= d_f
    with np.errstate(divide="ignore", invalid="ignore"):
        steps /= denominator
    if total == 0:  # no foreground: D_1 = 0, J_1 = 1 (a background pixel: sign +1)
        steps[0] = 1.0
    return steps, float(total)


def _host_weighted_steps(g: np.ndarray, omega: np.ndarray) -> Tuple[np.ndarray, float]:
    """:func:`_weighted_steps` for one row in numpy: float64 sums, float32 steps signed as
    :func:`_host_counted_steps`'s; blocks of
    :data:`_BLOCK` pixels (the running sums carried), so that the temporaries stay in cache."""
    steps = np.empty(g.shape, dtype=np.float32)
    total = float(np.add.reduce(np.multiply(omega, g, dtype=np.float64)))  # G, in float64
    a_carry = b_carry = 0.0
    for start in range(0, g.size, _BLOCK):
        gb, wb = g[start : start + _BLOCK], omega[start : start + _BLOCK].astype(np.float64)
        positive = wb * gb
        negative = wb - positive
        a, b = _cumsum(positive), _cumsum(negative)  # torch's: numpy's is not vectorised
        a += a_carry - positive  # A_{k-1}
        b += b_carry - negative  # B_{k-1}
        a_carry, b_carry = a[-1] + positive[-1], b[-1] + negative[-1]
        out = a + b  # W_{k-1}
        out *= gb
        np.subtract(total, a, out=a)
        np.maximum(a, 0.0, out=a)  # G - A_{k-1}
        out += a
        out *= wb
        b += total  # D
        negative += b  # D'
        np.multiply(negative, b, out=a)
        with np.errstate(divide="ignore", invalid="ignore"):
            out /= a
        empty = b <= 0  # nothing counted yet and no foreground: J_{k-1} = 0, J_k = [D' > 0]
        out[empty] = negative[empty] > 0
        np.negative(out, out=out, where=gb)  # signed with sign(p - y): - at the class's pixels
        steps[start : start + _BLOCK] = out
    return steps, total


_BLOCK = 1 << 15  # pixels per block of the host steps


def _cumsum(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).cumsum(0).numpy()


def _counted_steps_lean(g: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`_counted_steps` over every pixel (the caller zeroes the ignored tail) from the sorted bool
    truth ``g``, with fewer temporaries and exact int32 counts: ``D_k = G + (k-1) - a_{k-1}``, numerator
    ``D_k - (k-1)(1 - g_k)``. Returns the steps, ``G`` and ``g`` in ``dtype``."""
    ahead = torch.arange(g.shape[-1], device=g.device, dtype=torch.int32)  # k - 1
    d = g.cumsum(-1, dtype=torch.int32)
    total = d[..., -1:].clone()  # G
    d.neg_().add_(g.view(torch.uint8)).add_(ahead).add_(total)  # D_k
    d = d.to(dtype)
    gf = g.to(dtype)
    ahead_f = ahead.to(dtype)
    steps = torch.addcmul(d, ahead_f, gf).sub_(ahead_f)  # D_k - (k-1)(1 - g_k)
    steps.div_(torch.sub(d, gf).add_(1.0).mul_(d))
    steps[..., 0] = torch.where(total[..., 0] > 0, steps[..., 0], 1.0)  # no foreground: D_1 = 0, J_1 = 1
    return steps, total.to(dtype), gf


class _ConstantSlope(LeanFunction):
    """``value`` (computed without a graph) as a function of ``x`` with the gradient ``slope · grad``: the
    Lovász loss is linear in the probabilities between reorderings of the errors. The gradient of a
    gradient is 0 (``slope`` is a constant), as the plain form's."""

    @staticmethod
    def forward(x: Tensor, value: Tensor, slope: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None]:
        (slope,) = ctx.saved_tensors
        # the rows' gradient (C,) or (N, C) against the slopes in the probabilities' layout (N, C, *S)
        grad = grad.view(*([1] * (2 - grad.ndim)), *grad.shape, *([1] * (slope.ndim - 2)))
        if torch.is_grad_enabled():  # a double backward: differentiable in grad
            return slope * grad, None, None
        out = torch.empty(slope.shape, dtype=slope.dtype, device=slope.device)  # (N, C, *S) contiguous
        return torch.mul(slope, grad, out=out), None, None


def _mask_of(pixels: Optional[PixelWeights]) -> Optional[Tensor]:
    return None if pixels is None else pixels.mask


def _weight_rows(
    pixels: Optional[PixelWeights], valid: Optional[Tensor], per_image: bool, dtype: torch.dtype
) -> Optional[Tensor]:
    """The weight map ``(N, *S)`` as rows that broadcast against the loss's (``(1, N·L)``, or ``(N, 1, L)``
    per image), 0 where a pixel does not count (``valid``: ``(N, *S)``, or a binary loss's ``(N, C, *S)``,
    which widens the rows to its own); None without a weight map."""
    if pixels is None or pixels.weight is None:
        return None
    weight = pixels.weight.to(dtype).unsqueeze(1)
    if valid is not None:
        weight = torch.where(valid.unsqueeze(1) if valid.ndim < weight.ndim else valid, weight, 0.0)
    return _rows(weight, per_image)


def _truth_rows(
    prepared: Any, valid: Optional[Tensor], c: int, per_image: bool, dtype: torch.dtype
) -> Tuple[Tensor, Optional[Tensor]]:
    """The rows' ground truth (bool class masks for an index target; the soft target in ``dtype``), 0 / False
    where ``valid`` ``(N, *S)`` is False, and the valid mask broadcastable to the rows (None: every pixel
    counts)."""
    mask = None
    if valid is not None:
        mask = valid.flatten(1).unsqueeze(1) if per_image else valid.reshape(1, -1)
    if not isinstance(prepared, IndexTarget):
        dense = _rows(prepared.dense, per_image).to(dtype)
        return (dense if mask is None else dense.masked_fill(~mask, 0.0)), mask
    labels = prepared.index().unsqueeze(1)
    labels = labels.flatten(2) if per_image else labels.flatten(1).flatten(0)
    classes = torch.arange(c, device=labels.device).view(*([1] * per_image), c, 1)
    truth = labels == classes
    return (truth if mask is None else truth & mask), mask


def _selected(classes: Union[str, Tuple[int, ...]], present: Tensor, c: int) -> Tensor:
    """Which rows' classes enter the mean: ``(C,)`` or ``(N, C)`` bool; ``present`` the rows' (weighted)
    target mass over the valid pixels."""
    if classes == "present":
        return present > 0
    labels = torch.arange(c, device=present.device)
    mask = torch.ones_like(labels, dtype=torch.bool)
    if isinstance(classes, tuple):  # comparisons with Python ints: no host-to-device copy
        mask = functools.reduce(torch.logical_or, [labels == k for k in classes])
    return mask.expand(present.shape)


def _lovasz_hinge(logits: Tensor, target: Tensor, opts: LovaszOptions) -> Tensor:
    pixels = opts.pixel_weights
    target, ignore_index, mask = mask_as_ignore(target, _mask_of(pixels), opts.ignore_index, binary=True)
    if mask is not None:  # a float or bool target's masked elements: their logits reach nothing
        logits = logits.masked_fill(~mask.unsqueeze(1), 0.0)
    prepared = binary_target(logits, target, ignore_index)
    truth, valid = prepared.dense, prepared.valid
    if mask is not None:  # a float or bool target's mask: every channel
        wide = mask.unsqueeze(1).expand(logits.shape)
        valid = wide if valid is None else valid & wide
        truth = truth.masked_fill(~valid, 0.0)
    z = logits.to(truth.dtype)
    if valid is not None:
        z = z.masked_fill(~valid, 0.0)  # a non-finite logit at an ignored element reaches nothing
    omega = _weight_rows(pixels, valid, opts.per_image, truth.dtype)
    z, truth = _rows(z, opts.per_image), _rows(truth, opts.per_image)
    margins = 1 - z * (2 * truth - 1)
    keys = margins.detach()
    count: Union[int, Tensor] = margins.shape[-1]
    if valid is not None:  # ignored elements sort last
        rows_valid = _rows(valid, opts.per_image)
        keys = keys.masked_fill(~rows_valid, -torch.inf)
        count = rows_valid.sum(-1, keepdim=True)
    hinge = margins.relu() + z.clamp_min(0) * 0  # a +inf logit stays non-finite; -inf at y = 0 is legal
    per_row = (hinge * lovasz_weights(keys, truth, count, weight=omega)).sum(-1)
    selected = torch.ones_like(per_row, dtype=torch.bool)
    return _reduce(per_row, selected, opts.reduction, opts.per_image)


def lovasz_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    classes: Classes = "present",
    per_image: bool = False,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Lovász-Softmax loss (Berman et al. 2018): per class, the Lovász extension of the Jaccard loss on
    the errors ``e_i = |y_ic - p_ic|``, ``p = softmax(z)``, over the valid pixels (module docstring).

    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (a soft ``y`` counts
            fractionally in the Jaccard sets; for hard targets this is the paper's loss).
        weight_map: per-pixel multiplicities ``ω >= 0`` ``(N, *S)``: the weighted Lovász extension. The
            pixels are sorted by error as without weights; each class's counts become weighted sums,
            ``G = Σ ω y``, ``I_k = G - Σ_{j<=k} ω_(j) y_(j)``, ``U_k = G + Σ_{j<=k} ω_(j) (1 - y_(j))``,
            ``J_k = 1 - I_k / U_k``, and the loss is ``Σ_k e_(k) (J_k - J_{k-1})``. An integer ``ω``
            is the pixel repeated ``ω`` times, ``ω = 0`` removes it (also from ``"present"``: a class
            is present when ``Σ ω y > 0``), ``ω = 1`` is the loss without weights. The classes'
            mean is not weighted.
        mask: ``(N, *S)`` bool, True where a pixel counts: a masked pixel is ``ignore_index`` (for a
            soft target, it counts nowhere and its logits reach neither the value nor the gradient).
        classes: the classes averaged: ``"present"`` (in the target, among the valid pixels of the
            batch, or of the image with ``per_image``), ``"all"``, or a list of class indices.
        per_image: one Lovász extension per (image, class) instead of per class over the batch.
        ignore_index: target value whose pixels count nowhere.
        reduction: ``none`` -> the per-class losses ``(C,)`` (``(N, C)`` with ``per_image``), 0 for a
            class not averaged; ``sum`` -> their sum; ``mean`` -> their mean over the averaged classes
            (with ``per_image``, then over images; an image without one counts 0, as in the authors'
            code), 0 when there is none.

    Equal to ``segmentation_models_pytorch.losses.LovaszLoss("multiclass")`` (``classes="present"``) for
    index targets. The gradient with respect to ``e_(k)`` is ``J_k - J_{k-1}``.
    """
    opts = LovaszOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        classes=classes,
        per_image=per_image,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _lovasz_softmax(logits, target, opts)


def binary_lovasz_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    per_image: bool = False,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Lovász hinge loss (Berman et al. 2018) per channel: the Lovász extension of the Jaccard loss on
    the hinge errors ``max(0, 1 - z (2y - 1))`` of the logits ``z`` (sorted by the margins ``1 - z(2y-1)``).

    Args:
        logits: ``(N, C, *S)``; each channel is its own binary problem.
        target: the logits' shape; bool, integer or float in ``[0, 1]``.
        weight_map: per-pixel multiplicities ``ω >= 0`` ``(N, *S)``, the same for every channel: the
            weighted Lovász extension on the hinge errors (sorted by margin as without weights),
            ``G = Σ ω y``, ``J_k = 1 - (G - Σ_{j<=k} ω_(j) y_(j)) / (G + Σ_{j<=k} ω_(j) (1 - y_(j)))``,
            loss ``Σ_k hinge_(k) (J_k - J_{k-1})``. An integer ``ω`` is the pixel repeated ``ω`` times;
            ``ω = 1`` is the loss without weights.
        mask: ``(N, *S)`` bool, True where a pixel counts, in every channel: a masked element is
            ``ignore_index`` (a float or bool target's masked elements count nowhere; their logits
            reach neither the value nor the gradient).
        per_image: one extension per (image, channel) instead of per channel over the batch.
        ignore_index: integer-target value whose elements count nowhere.
        reduction: ``none`` -> ``(C,)`` (``(N, C)`` with ``per_image``); ``sum``; ``mean`` over channels
            (and images).

    With one channel equal to ``segmentation_models_pytorch.losses.LovaszLoss("binary")``; smp pools
    several channels into one set, this loss treats each channel alone and averages.
    """
    opts = LovaszOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        per_image=per_image,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _lovasz_hinge(logits, target, opts)


LovaszLoss = module_for("LovaszLoss", lovasz_loss, LovaszOptions, _lovasz_softmax, PixelWeightedModule)
BinaryLovaszLoss = module_for(
    "BinaryLovaszLoss", binary_lovasz_loss, LovaszOptions, _lovasz_hinge, PixelWeightedModule
)

register(
    "lovasz",
    LovaszLoss,
    domain="softmax",
    description="Lovász-Softmax loss (Berman et al. 2018)",
    kind="class",
)
register(
    "binary_lovasz",
    BinaryLovaszLoss,
    domain="binary",
    description="Lovász hinge loss per channel",
    kind="class",
)

__all__ = [
    "BinaryLovaszLoss",
    "LovaszLoss",
    "LovaszOptions",
    "binary_lovasz_loss",
    "lovasz_loss",
    "lovasz_weights",
]
