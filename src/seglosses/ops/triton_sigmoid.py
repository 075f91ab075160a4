"""Triton kernel of the sigmoid region statistics, registered as ``torch.library`` custom ops.

``seglosses::sigmoid_region_sums`` over logits and a dense target of the same shape, viewed as rows
``(R, P)`` with ``R = N·C``: per row ``TP = Σ_i p_i y_i``, ``Σ_i p_i`` and ``Σ_i y_i`` over the valid
elements, ``p = σ(z)``. Forward: one read of the logits and the target, per-block partial sums added in
a fixed order (deterministic, no atomics). Backward from ``∂L/∂TP = H`` and ``∂L/∂Σp = G``:
``∂L/∂z_i = p_i (1 - p_i) (G + H y_i)``, one read and one write.

Ignored elements (``valid`` 0) add nothing and get gradient 0 whatever their logits hold. A ``+inf``
logit is invalid (SPEC section 6) and gives NaN statistics, as the reference does. The target is not
differentiated (a target that requires a gradient takes the reference). Arithmetic in float32 (float64
for float64 logits); the gradient comes back in the logits' dtype.
"""

# no ``from __future__ import annotations``: torch.library reads the custom ops' annotations at runtime

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_softmax import _acc, _compute_dtype, _grid_config

_NAN = float("nan")


@triton.jit
def _row_tile(z_ptr, y_ptr, v_ptr, row, pb, P, HAS_VALID: tl.constexpr, ACC: tl.constexpr,
              BLOCK_P: tl.constexpr):  # fmt: skip
    """Row ``row``'s block ``pb``: ``p`` (NaN at ``+inf``), the target and the valid mask."""
    offs = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    in_p = offs < P
    address = row.to(tl.int64) * P + offs
    z = tl.load(z_ptr + address, mask=in_p, other=0.0).to(ACC)
    y = tl.load(y_ptr + address, mask=in_p, other=0).to(ACC)
    valid = in_p
    if HAS_VALID:
        valid = valid & (tl.load(v_ptr + address, mask=in_p, other=0) != 0)
    p = tl.where(z == float("inf"), _NAN, tl.sigmoid(z))
    return p, y, valid, address, in_p


@triton.jit
def _sums_forward_kernel(z_ptr, y_ptr, v_ptr, part_ptr, P, blocks, HAS_VALID: tl.constexpr,
                         ACC: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    pb = tl.program_id(1)
    p, y, valid, address, in_p = _row_tile(z_ptr, y_ptr, v_ptr, row, pb, P, HAS_VALID, ACC, BLOCK_P)
    p = tl.where(valid, p, 0.0)
    y = tl.where(valid, y, 0.0)
    base = (row.to(tl.int64) * blocks + pb) * 3  # partials (R, blocks, 3)
    tl.store(part_ptr + base, tl.sum(p * y, 0))
    tl.store(part_ptr + base + 1, tl.sum(p, 0))
    tl.store(part_ptr + base + 2, tl.sum(y, 0))


@triton.jit
def _sums_backward_kernel(z_ptr, y_ptr, v_ptr, g_ptr, grad_ptr, P, HAS_VALID: tl.constexpr,
                          ACC: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """``g_ptr``: ``(R, 2)``, the gradients of TP and of Σp per row."""
    row = tl.program_id(0)
    pb = tl.program_id(1)
    p, y, valid, address, in_p = _row_tile(z_ptr, y_ptr, v_ptr, row, pb, P, HAS_VALID, ACC, BLOCK_P)
    g_tp = tl.load(g_ptr + row.to(tl.int64) * 2).to(ACC)
    g_sum = tl.load(g_ptr + row.to(tl.int64) * 2 + 1).to(ACC)
    grad = tl.where(valid, p * (1.0 - p) * (g_sum + g_tp * y), 0.0)
    tl.store(grad_ptr + address, grad.to(grad_ptr.dtype.element_ty), mask=in_p)


@torch.library.custom_op("seglosses::sigmoid_region_sums", mutates_args=())
def sigmoid_region_sums(logits: Tensor, target: Tensor, valid: Tensor, has_valid: bool) -> Tensor:
    """``(N, C, 3)``: ``(TP, Σp, Σy)`` of contiguous logits and target ``(N, C, P)``; ``valid`` uint8 of
    the same shape when ``has_valid`` (else any tensor, unread)."""
    n, c = logits.shape[:2]
    rows, pixels = n * c, logits.shape[2]
    _, block_p = _grid_config(1, pixels)
    blocks = triton.cdiv(pixels, block_p)
    partial = logits.new_empty((rows, blocks, 3), dtype=_compute_dtype(logits))
    if rows and pixels:
        _sums_forward_kernel[(rows, blocks)](
            logits, target, valid, partial, pixels, blocks,
            HAS_VALID=has_valid, ACC=_acc(logits), BLOCK_P=block_p,
        )  # fmt: skip
    return partial.sum(1).view(n, c, 3)  # the second stage: a fixed-order reduction over the blocks


@sigmoid_region_sums.register_fake
def _(logits: Tensor, target: Tensor, valid: Tensor, has_valid: bool) -> Tensor:
    return logits.new_empty((*logits.shape[:2], 3), dtype=_compute_dtype(logits))


@torch.library.custom_op("seglosses::sigmoid_region_sums_backward", mutates_args=())
def sigmoid_region_sums_backward(
    logits: Tensor, target: Tensor, valid: Tensor, has_valid: bool, grad_sums: Tensor
) -> Tensor:
    """The gradient of the logits from ``grad_sums`` ``(N, C, 2)`` (of TP and Σp)."""
    rows, pixels = logits.shape[0] * logits.shape[1], logits.shape[2]
    out = torch.empty_like(logits)
    _, block_p = _grid_config(1, pixels)
    if rows and pixels:
        _sums_backward_kernel[(rows, triton.cdiv(pixels, block_p))](
            logits, target, valid, grad_sums.to(_compute_dtype(logits)).contiguous(), out, pixels,
            HAS_VALID=has_valid, ACC=_acc(logits), BLOCK_P=block_p,
        )  # fmt: skip
    return out


@sigmoid_region_sums_backward.register_fake
def _(logits, target, valid, has_valid, grad_sums):  # type: ignore[no-untyped-def]
    return torch.empty_like(logits)


def _setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    logits, target, valid, has_valid = inputs
    ctx.save_for_backward(logits, target, valid)
    ctx.has_valid = has_valid


def _backward(ctx, grad_sums):  # type: ignore[no-untyped-def]
    logits, target, valid = ctx.saved_tensors
    grad = sigmoid_region_sums_backward(logits, target, valid, ctx.has_valid, grad_sums[..., :2])
    return grad, None, None, None


sigmoid_region_sums.register_autograd(_backward, setup_context=_setup)
