"""Numerically careful helpers shared by the losses."""

from __future__ import annotations

import functools
from typing import Any, Callable, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Backward = Callable[..., Any]


def safe_divide(num: Tensor, den: Tensor, empty: float) -> Tensor:
    """``num / den``, and ``empty`` where ``den == 0`` exactly (a stated policy, never 0/0 = NaN).

    Only an exact 0 is special, so a NaN input stays NaN; the gradient there is 0.
    """
    zero = den == 0
    return torch.where(zero, empty, num / torch.where(zero, 1.0, den))


def safe_pow(base: Tensor, exponent: Union[float, Tensor]) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` with a finite gradient everywhere.

    ``d/db b^γ = γ b^(γ-1)`` is infinite at ``b = 0`` for ``γ < 1``; there the value is ``0^γ`` (1 for
    ``γ = 0``, else 0) and the gradient is taken as 0, the limit of the losses built on it.
    """
    zero = base == 0  # NaN stays NaN: only an exact 0 is special
    powered = torch.where(zero, 1.0, base) ** exponent
    zero_power = torch.as_tensor(exponent, device=base.device) == 0
    return torch.where(zero, zero_power.to(powered.dtype), powered)


def first_order_backward(name: str) -> Callable[[Backward], Backward]:
    """Decorate a closed-form ``autograd.Function.backward`` that is not itself differentiable.

    Asked for a graph (``create_graph=True``, e.g. a double backward) it raises instead of returning a
    silently wrong second derivative; otherwise it runs without recording.
    """

    def decorate(backward: Backward) -> Backward:
        @functools.wraps(backward)
        def run(ctx: Any, *grads: Tensor) -> Any:
            if torch.is_grad_enabled():
                from .errors import SegLossError

                raise SegLossError(
                    f"expected first-order gradients of {name}; got a backward with create_graph=True, "
                    "which its closed-form backward does not support"
                )
            with torch.no_grad():
                return backward(ctx, *grads)

        return run

    return decorate


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
    with target 0 gives 0 and a zero gradient, never ``0 · inf = NaN``.
    """
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    positive = target * torch.where(target > 0, log_p, 0.0)
    negative = (1 - target) * torch.where(target < 1, log_q, 0.0)
    if gamma > 0:
        positive = positive * torch.exp(gamma * log_q)
        negative = negative * torch.exp(gamma * log_p)
    return positive, negative
