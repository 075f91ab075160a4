"""Numerically careful helpers shared by the losses."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SegLossError

Backward = Callable[..., Any]


def tracing() -> bool:
    """Whether ``torch.compile`` traces or a ``torch.func`` transform (``grad``, ``vmap``, ...) runs: then
    nothing reads data on the host, and the plain differentiable torch paths serve every loss."""
    return torch.compiler.is_compiling() or transformed()


def transformed() -> bool:
    """Whether a ``torch.func`` transform runs: then every primitive takes its plain differentiable torch
    reference (custom autograd Functions with closed-form backwards stay out of ``grad`` and ``vmap``)."""
    return torch._C._are_functorch_transforms_active()


class LeanFunction(torch.autograd.Function):
    """Base of the ``forward`` / ``setup_context`` (``torch.func``-form) autograd Functions: ``apply`` with
    every argument positional skips torch's per-call ``inspect.signature`` binding of defaults (about
    10 µs, a tenth of a small loss call) outside ``torch.func`` transforms, which get torch's own
    ``apply``. Subclasses' ``forward`` has no default arguments."""

    @classmethod
    def apply(cls, *args: Any) -> Any:  # type: ignore[override]
        if transformed():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)  # type: ignore[misc]  # the C++ apply


FUSED_MIN = 1 << 17  # elements (logits): below, torch's kernels and the plain references cost less


def small(tensor: Tensor) -> bool:
    """Whether ``tensor`` is too small for the fused implementations to pay their fixed cost (a custom
    autograd Function, parts, shortcuts): below :data:`FUSED_MIN` elements, e.g. (2, 5, 64, 64)."""
    return tensor.numel() < FUSED_MIN


def safe_divide(num: Tensor, den: Tensor, empty: float) -> Tensor:
    """``num / den``, and ``empty`` where ``den == 0`` exactly (a stated policy, never 0/0 = NaN).

    Only an exact 0 is special, so a NaN input stays NaN; the gradient there is 0. Elsewhere the gradient
    is ``1 / den`` and ``-(num / den) / den``, with ``|den|`` taken as at least ``tiny / eps`` (the
    dtype's smallest normal number over its epsilon, about 1e-31 in float32): at a smaller ``den`` (a class
    whose probabilities all underflowed, e.g. logit margins above ~70 in float32) the exact
    ``grad / den`` overflows to inf for a class weight or upstream gradient above ``den · max`` (50 at
    ``den = 5e-38``), and an inf gradient times a zero factor further down (an empty target, an empty
    band) would be NaN. Below that bound the gradient is capped, not exact.
    """
    if torch.is_grad_enabled() and isinstance(num, Tensor) and isinstance(den, Tensor):
        if num.requires_grad or den.requires_grad:
            return _SafeDivide.apply(num, den, empty)
    return _divide(num, den, empty)


def _divide(num: Tensor, den: Tensor, empty: float) -> Tensor:
    zero = den == 0
    return torch.where(zero, empty, num / torch.where(zero, 1.0, den))


def sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to an input's ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    grad = grad.sum(tuple(range(extra))) if extra else grad
    dims = tuple(d for d, size in enumerate(shape) if size == 1 and grad.shape[d] != 1)
    return grad.sum(dims, keepdim=True) if dims else grad


class _SafeDivide(LeanFunction):
    """:func:`safe_divide` with gradients bounded at subnormal denominators (see there). The backward is
    made of differentiable operations on the inputs, so a double backward differentiates it
    (``forward`` / ``setup_context``: the form ``torch.func`` transforms need)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(num: Tensor, den: Tensor, empty: float) -> Tensor:
        return _divide(num, den, empty)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Tensor, Tensor, float], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], None]:
        num, den = ctx.saved_tensors
        zero = den == 0
        dtype = den.dtype if den.is_floating_point() else num.dtype
        info = torch.finfo(dtype) if dtype.is_floating_point else None
        tiny = info.tiny / info.eps if info is not None else 1.0
        bounded = torch.where(zero, 1.0, den)
        bounded = torch.where(bounded.abs() < tiny, torch.where(bounded < 0, -tiny, tiny), bounded)
        inverse = torch.where(zero, 0.0, grad / bounded)
        grad_num = sum_to(inverse, num.shape) if ctx.needs_input_grad[0] else None
        grad_den = sum_to(-inverse * (num / bounded), den.shape) if ctx.needs_input_grad[1] else None
        return grad_num, grad_den, None


def safe_pow(base: Tensor, exponent: Union[float, Tensor]) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` with a finite gradient everywhere.

    ``d/db b^γ = γ b^(γ-1)`` is infinite at ``b = 0`` for ``γ < 1``; there the value is ``0^γ`` (1 for
    ``γ = 0``, else 0) and the gradient is taken as 0, the limit of the losses built on it.
    """
    zero = base == 0  # NaN stays NaN: only an exact 0 is special
    powered = torch.where(zero, 1.0, base) ** exponent
    zero_power = torch.as_tensor(exponent, device=base.device) == 0
    return torch.where(zero, zero_power.to(powered.dtype), powered)


Reference = Callable[..., Tuple[Tuple[Any, ...], Any]]


def first_order_backward(name: str, reference: Optional[Reference] = None) -> Callable[[Backward], Backward]:
    """Decorate a closed-form ``autograd.Function.backward`` that is not itself differentiable.

    Asked for a graph (``create_graph=True``, e.g. a double backward) it differentiates ``reference``
    instead: the Function's formula in plain differentiable torch, ``reference(ctx, *saved_tensors)``
    returning ``(inputs, outputs)`` — the forward's inputs as the saved tensors (None where not
    differentiated) and the outputs recomputed from them — so second derivatives are those of the
    formula. Without a reference (or with ``ctx.no_reference`` set) it raises rather than return a
    silently wrong second derivative. Otherwise the closed form runs without recording.
    """

    def decorate(backward: Backward) -> Backward:
        @functools.wraps(backward)
        def run(ctx: Any, *grads: Tensor) -> Any:
            if torch.is_grad_enabled() and not transformed():  # torch.func runs backwards with grad on
                if reference is None or getattr(ctx, "no_reference", False):
                    raise SegLossError(
                        f"expected first-order gradients of {name}; got a backward with create_graph=True, "
                        "which its closed-form backward does not support"
                    )
                return differentiate(reference, ctx, grads)
            with torch.no_grad():
                return backward(ctx, *grads)

        return run

    return decorate


def differentiate(reference: Reference, ctx: Any, grads: Tuple[Tensor, ...]) -> Tuple[Optional[Tensor], ...]:
    """The gradients of :func:`first_order_backward`'s ``reference`` with respect to the inputs that need
    one, with a graph (``create_graph=True``)."""
    with torch.enable_grad():
        inputs, outputs = reference(ctx, *ctx.saved_tensors)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    pairs = [(out, grad) for out, grad in zip(outputs, grads) if out.requires_grad and grad is not None]
    wanted = [k for k, x in enumerate(inputs) if isinstance(x, Tensor) and ctx.needs_input_grad[k]]
    found = torch.autograd.grad(
        [out for out, _ in pairs], [inputs[k] for k in wanted], [grad for _, grad in pairs],
        create_graph=True, allow_unused=True,
    )  # fmt: skip
    result: list = [None] * len(inputs)
    for k, grad in zip(wanted, found):
        result[k] = torch.zeros_like(inputs[k]) if grad is None else grad
    return tuple(result)


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype losses compute and accumulate in: float32 for half inputs, else the tensor's own."""
    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype


def softmax_f32(logits: Tensor) -> Tensor:
    """Softmax over the class dim, in float32 for half inputs."""
    return torch.softmax(logits, dim=1, dtype=compute_dtype(logits))


def sigmoid_f32(logits: Tensor) -> Tensor:
    """Sigmoid, in float32 for half inputs; NaN at ``+inf`` (an invalid logit, as softmax makes it), so
    that a region loss is never finite for it when input checks are off."""
    logits = logits.to(compute_dtype(logits))
    return torch.where(logits == torch.inf, torch.nan, torch.sigmoid(logits))


def binary_log_terms(logits: Tensor, target: Tensor, gamma: float = 0.0) -> Tuple[Tensor, Tensor]:
    """``y (1-p)^γ log p`` and ``(1-y) p^γ log(1-p)`` with ``p = σ(z)``, from ``logσ(±z)`` (log space).

    A log is replaced by 0 where its target weight is 0 before any product, so a legal ``-inf`` logit
    with target 0 gives 0 and a zero gradient, never ``0 · inf = NaN``. A ``+inf`` logit is invalid (SPEC
    section 6) and gives NaN, as in :func:`sigmoid_f32`, also where the target is 1.
    """
    logits = torch.where(logits == torch.inf, torch.nan, logits)
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    positive = target * torch.where(target > 0, log_p, 0.0)
    negative = (1 - target) * torch.where(target < 1, log_q, 0.0)
    if gamma > 0:
        positive = positive * torch.exp(gamma * log_q)
        negative = negative * torch.exp(gamma * log_p)
    return positive, negative
