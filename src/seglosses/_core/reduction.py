"""One reduction for every loss: ``none | mean | sum``.

What ``mean`` divides by (the convention of the whole library):

* **Pixel losses** (cross-entropy, focal): ``none`` returns the per-element loss with the target's
  element shape, ``(N, *S)`` for softmax losses and ``(N, C, *S)`` for ``binary_*`` losses, 0 at ignored
  elements. ``mean`` divides the sum by the number of valid elements or, with class weights, by the sum of
  the weights of the valid elements (as ``torch.nn.functional.cross_entropy`` does). Factors that belong
  to a loss's own formula (focal's ``α_t (1-p_t)^γ``) are not weights in that sense.
* **Region losses** (Dice, Jaccard, Tversky, ...): ``none`` returns ``(N, C)``, one loss per sample and
  class, or ``(C,)`` with ``batch=True``, already multiplied by the class weight when one is given;
  ``mean`` divides the sum by ``N · Σ_c w_c`` (``N · C`` without weights), i.e. the weighted mean over
  classes averaged over samples.

A batch with no valid element, or no sample at all (``N = 0``, e.g. an empty shard of a distributed
batch), gives 0, attached to the graph, never NaN.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from .numerics import compute_dtype, safe_divide


def reduce(loss: Tensor, reduction: str, denominator: Union[None, int, Tensor] = None) -> Tensor:
    """Reduce an element-wise loss whose ignored entries are already 0.

    ``mean`` is ``loss.sum() / denominator`` (default: ``loss.numel()``; a count known on the host as an
    int, or a tensor); a zero denominator gives 0.
    """
    if reduction == "none":
        return loss
    dtype = compute_dtype(loss)
    total = loss if loss.ndim == 0 and loss.dtype == dtype else loss.sum(dtype=dtype)
    if reduction == "sum":
        return total
    if denominator is None:
        denominator = loss.numel()
    if isinstance(denominator, int):  # a zero count means a zero total: 0 / 1
        return total / max(denominator, 1)
    if not denominator.is_floating_point():  # a count: 0 or at least 1, so 1 / count needs no bound
        count = denominator.to(total.dtype)
        return torch.where(count == 0, 0.0, total / count.clamp_min(1))
    return safe_divide(total, denominator.to(total.dtype), 0.0)


def reduce_region(loss: Tensor, reduction: str, weight: Optional[Tensor] = None) -> Tensor:
    """Reduce a per-(sample, class) loss ``(N, C)`` or per-class loss ``(C,)`` (see module docstring)."""
    if weight is not None:
        loss = loss * weight.to(loss)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    samples = loss.numel() // loss.shape[-1]
    if samples == 0:  # an empty batch (an empty shard of a distributed batch): 0 on the graph
        return loss.sum()
    if weight is None:
        return loss.mean()
    return safe_divide(loss.sum(), weight.to(loss).sum() * samples, 0.0)
