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

from .._core.numerics import binary_log_terms, sigmoid_f32
from .._core.stats import overlap_from_dense
from .triton_softmax import _acc, _compute_dtype, _grid_config, kernel_output, with_graph

_NAN = float("nan")


def _sums_reference(logits: Tensor, target: Tensor, valid: Tensor, has_valid: bool) -> Tensor:
    """``seglosses::sigmoid_region_sums`` in plain torch, ``(N, C, 3)``."""
    mask = valid.bool() if has_valid else None
    dtype = _compute_dtype(logits)
    clean = logits if mask is None else logits.masked_fill(~mask, 0.0)
    dense = target.to(dtype) if mask is None else target.to(dtype).masked_fill(~mask, 0)
    s = overlap_from_dense(sigmoid_f32(clean), dense, mask)
    return torch.stack([s.tp, s.tp + s.fp, s.tp + s.fn], -1)


@triton.jit
def _load_row(z_ptr, y_ptr, v_ptr, row, pb, P, HAS_VALID: tl.constexpr, ACC: tl.constexpr,
              BLOCK_P: tl.constexpr):  # fmt: skip
    """Row ``row``'s block ``pb``: logits, target, valid mask, addresses and the in-bounds mask."""
    offs = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    in_p = offs < P
    address = row.to(tl.int64) * P + offs
    z = tl.load(z_ptr + address, mask=in_p, other=0.0).to(ACC)
    y = tl.load(y_ptr + address, mask=in_p, other=0).to(ACC)
    valid = in_p
    if HAS_VALID:
        valid = valid & (tl.load(v_ptr + address, mask=in_p, other=0) != 0)
    return z, y, valid, address, in_p


@triton.jit
def _row_tile(z_ptr, y_ptr, v_ptr, row, pb, P, HAS_VALID: tl.constexpr, ACC: tl.constexpr,
              BLOCK_P: tl.constexpr):  # fmt: skip
    """:func:`_load_row` with ``p = σ(z)`` (NaN at ``+inf``) in place of the logits."""
    z, y, valid, address, in_p = _load_row(z_ptr, y_ptr, v_ptr, row, pb, P, HAS_VALID, ACC, BLOCK_P)
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
    partial = kernel_output(logits, (rows, blocks, 3), _compute_dtype(logits))
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
    out = kernel_output(logits)
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
    if torch.is_grad_enabled():
        return (
            with_graph(lambda: _sums_reference(logits, target, valid, ctx.has_valid), logits, grad_sums),
            None,
            None,
            None,
        )
    grad = sigmoid_region_sums_backward(logits, target, valid, ctx.has_valid, grad_sums[..., :2])
    return grad, None, None, None


sigmoid_region_sums.register_autograd(_backward, setup_context=_setup)


@triton.jit
def _log_sigmoids(z):
    """``(log σ(z), log σ(-z))`` in log space: ``min(±z, 0) - log1p(exp(-|z|))`` (``log1p`` by its series
    for small arguments: the interpreter has no libdevice ``log1p``)."""
    e = tl.exp(-tl.abs(z))
    l1p = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.minimum(z, 0.0) - l1p, tl.minimum(-z, 0.0) - l1p


@triton.jit
def _term_tile(z_ptr, y_ptr, v_ptr, pos_ptr, neg_ptr, row, pb, C, P, HAS_VALID: tl.constexpr,
               ACC: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    z, y, valid, address, in_p = _load_row(z_ptr, y_ptr, v_ptr, row, pb, P, HAS_VALID, ACC, BLOCK_P)
    channel = row % C
    a_pos = tl.load(pos_ptr + channel).to(ACC)
    a_neg = tl.load(neg_ptr + channel).to(ACC)
    log_p, log_q = _log_sigmoids(z)
    return z, y, valid, a_pos, a_neg, log_p, log_q, address, in_p


@triton.jit
def _term_forward_kernel(z_ptr, y_ptr, v_ptr, pos_ptr, neg_ptr, loss_ptr, C, P, gamma,
                         HAS_VALID: tl.constexpr, MODULATED: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_P: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    pb = tl.program_id(1)
    z, y, valid, a_pos, a_neg, log_p, log_q, address, in_p = _term_tile(
        z_ptr, y_ptr, v_ptr, pos_ptr, neg_ptr, row, pb, C, P, HAS_VALID, ACC, BLOCK_P
    )
    positive = tl.where(y > 0.0, y * log_p, 0.0)  # a log with weight 0 is 0, never 0 · -inf
    negative = tl.where(y < 1.0, (1.0 - y) * log_q, 0.0)
    if MODULATED:
        positive = positive * tl.exp(gamma * log_q)  # (1 - p)^γ
        negative = negative * tl.exp(gamma * log_p)  # p^γ
    loss = -(a_pos * positive + a_neg * negative)
    loss = tl.where(z == float("inf"), _NAN, loss)  # +inf is invalid (SPEC 6)
    tl.store(loss_ptr + address, tl.where(valid, loss, 0.0), mask=in_p)


@triton.jit
def _term_backward_kernel(z_ptr, y_ptr, v_ptr, pos_ptr, neg_ptr, g_ptr, grad_ptr, C, P, gamma,
                          HAS_VALID: tl.constexpr, MODULATED: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_P: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    pb = tl.program_id(1)
    z, y, valid, a_pos, a_neg, log_p, log_q, address, in_p = _term_tile(
        z_ptr, y_ptr, v_ptr, pos_ptr, neg_ptr, row, pb, C, P, HAS_VALID, ACC, BLOCK_P
    )
    p = tl.exp(log_p)
    q = tl.exp(log_q)
    if MODULATED:  # ∂/∂z of y q^γ log p and of (1 - y) p^γ log q
        p_log_p = tl.where(p > 0.0, p * log_p, 0.0)
        q_log_q = tl.where(q > 0.0, q * log_q, 0.0)
        d_pos = y * tl.exp(gamma * log_q) * (q - gamma * p_log_p)
        d_neg = (1.0 - y) * tl.exp(gamma * log_p) * (gamma * q_log_q - p)
    else:
        d_pos = y * q
        d_neg = -(1.0 - y) * p
    g = tl.load(g_ptr + address, mask=in_p, other=0.0).to(ACC)
    grad = -(a_pos * d_pos + a_neg * d_neg) * g
    grad = tl.where(z == float("inf"), _NAN, grad)
    tl.store(grad_ptr + address, tl.where(valid, grad, 0.0).to(grad_ptr.dtype.element_ty), mask=in_p)


@torch.library.custom_op("seglosses::sigmoid_term", mutates_args=())
def sigmoid_term(
    logits: Tensor, target: Tensor, valid: Tensor, has_valid: bool, pos_weight: Tensor, neg_weight: Tensor,
    gamma: float,
) -> Tensor:  # fmt: skip
    """Per element ``-[a⁺_c y (1-p)^γ log p + a⁻_c (1-y) p^γ log(1-p)]``, ``p = σ(z)``, of contiguous logits
    and a float target ``(N, C, P)``; ``pos_weight`` / ``neg_weight`` ``(C,)`` (BCE: ``ρ_c`` and 1; focal:
    ``α_c`` and ``1 - α_c``, or 1 and 1). 0 at ignored elements, NaN at a ``+inf`` logit."""
    n, c, pixels = logits.shape
    loss = kernel_output(logits, logits.shape, _compute_dtype(logits))
    _, block_p = _grid_config(1, pixels)
    if n * c and pixels:
        _term_forward_kernel[(n * c, triton.cdiv(pixels, block_p))](
            logits, target, valid, pos_weight, neg_weight, loss, c, pixels, gamma,
            HAS_VALID=has_valid, MODULATED=gamma != 0.0, ACC=_acc(logits), BLOCK_P=block_p,
        )  # fmt: skip
    return loss


@sigmoid_term.register_fake
def _(logits, target, valid, has_valid, pos_weight, neg_weight, gamma):  # type: ignore[no-untyped-def]
    return logits.new_empty(logits.shape, dtype=_compute_dtype(logits))


@torch.library.custom_op("seglosses::sigmoid_term_backward", mutates_args=())
def sigmoid_term_backward(
    logits: Tensor, target: Tensor, valid: Tensor, has_valid: bool, pos_weight: Tensor, neg_weight: Tensor,
    gamma: float, grad: Tensor,
) -> Tensor:  # fmt: skip
    """The gradient of the logits from the gradient of the per-element term."""
    n, c, pixels = logits.shape
    out = kernel_output(logits)
    _, block_p = _grid_config(1, pixels)
    if n * c and pixels:
        _term_backward_kernel[(n * c, triton.cdiv(pixels, block_p))](
            logits, target, valid, pos_weight, neg_weight, grad.contiguous(), out, c, pixels, gamma,
            HAS_VALID=has_valid, MODULATED=gamma != 0.0, ACC=_acc(logits), BLOCK_P=block_p,
        )  # fmt: skip
    return out


@sigmoid_term_backward.register_fake
def _(logits, target, valid, has_valid, pos_weight, neg_weight, gamma, grad):  # type: ignore[no-untyped-def]
    return torch.empty_like(logits)


def _term_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    logits, target, valid, has_valid, pos_weight, neg_weight, gamma = inputs
    ctx.save_for_backward(logits, target, valid, pos_weight, neg_weight)
    ctx.has_valid, ctx.gamma = has_valid, gamma


def _term_backward(ctx, grad):  # type: ignore[no-untyped-def]
    logits, target, valid, pos_weight, neg_weight = ctx.saved_tensors
    if torch.is_grad_enabled():

        def term() -> Tensor:
            mask = valid.bool() if ctx.has_valid else None
            clean = logits.to(_compute_dtype(logits))
            clean = clean if mask is None else clean.masked_fill(~mask, 0.0)
            positive, negative = binary_log_terms(clean, target.to(clean.dtype), ctx.gamma)
            loss = -(pos_weight.view(1, -1, 1) * positive + neg_weight.view(1, -1, 1) * negative)
            return loss if mask is None else loss.masked_fill(~mask, 0.0)

        return with_graph(term, logits, grad), None, None, None, None, None, None
    result = sigmoid_term_backward(
        logits, target, valid, ctx.has_valid, pos_weight, neg_weight, ctx.gamma, grad
    )
    return result, None, None, None, None, None, None


sigmoid_term.register_autograd(_term_backward, setup_context=_term_setup)
