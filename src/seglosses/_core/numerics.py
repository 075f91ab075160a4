"""Numerically careful helpers shared by the losses."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor


def safe_pow(base: Tensor, exponent: Union[float, Tensor]) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` with a finite gradient everywhere.

    ``d/db b^γ = γ b^(γ-1)`` is infinite at ``b = 0`` for ``γ < 1``; there the value is ``0^γ`` (1 for
    ``γ = 0``, else 0) and the gradient is taken as 0, the limit of the losses built on it.
    """
    zero = base == 0  # NaN stays NaN: only an exact 0 is special
    powered = torch.where(zero, 1.0, base) ** exponent
    zero_power = torch.as_tensor(exponent, device=base.device) == 0
    return torch.where(zero, zero_power.to(powered.dtype), powered)


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype losses compute and accumulate in: float32 for half inputs, else the tensor's own."""
    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype


def softmax_f32(logits: Tensor) -> Tensor:
    """Softmax over the class dim, in float32 for half inputs."""
    return torch.softmax(logits, dim=1, dtype=compute_dtype(logits))


def sigmoid_f32(logits: Tensor) -> Tensor:
    """Sigmoid, in float32 for half inputs."""
    return torch.sigmoid(logits.to(compute_dtype(logits)))
