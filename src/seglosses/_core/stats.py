"""TP / FP / FN per (sample, class): the one overlap statistic shared by region losses and metrics.

For probabilities ``p`` and a target ``y`` over the valid pixels ``V``::

    TP_c = Σ_{i∈V} p_ic y_ic     FP_c = Σ_{i∈V} p_ic (1 - y_ic)     FN_c = Σ_{i∈V} (1 - p_ic) y_ic

With an index target no one-hot tensor is built: ``TP`` gathers ``p`` at the target class and
scatter-adds it per class, ``Σ p`` and the class counts are reductions.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class Overlap(NamedTuple):
    """Overlap statistics, each ``(N, C)`` (or ``(C,)`` after :meth:`pooled`)."""

    tp: Tensor
    fp: Tensor
    fn: Tensor

    def pooled(self) -> "Overlap":
        """Sum over the batch: ``(N, C) -> (C,)``."""
        return Overlap(self.tp.sum(0), self.fp.sum(0), self.fn.sum(0))

    def select(self, start: int) -> "Overlap":
        """Keep classes ``start:`` (``start = 1`` drops the background class)."""
        return Overlap(self.tp[..., start:], self.fp[..., start:], self.fn[..., start:])


def overlap_from_index(probs: Tensor, index: Tensor, valid: Optional[Tensor]) -> Overlap:
    """Statistics from probabilities ``(N, C, *S)`` and an index target ``(N, *S)`` (ignored set to 0)."""
    n, c = probs.shape[:2]
    flat = probs.reshape(n, c, -1)
    idx = index.reshape(n, 1, -1)
    p_true = flat.gather(1, idx).squeeze(1)
    if valid is None:
        prob_sum = flat.sum(-1)
        ones = torch.ones_like(p_true)
    else:
        ones = valid.reshape(n, -1).to(flat.dtype)
        prob_sum = torch.bmm(flat, ones.unsqueeze(-1)).squeeze(-1)
        p_true = p_true * ones
    zeros = torch.zeros(n, c, dtype=flat.dtype, device=flat.device)
    tp = zeros.scatter_add(1, idx.squeeze(1), p_true)
    count = zeros.scatter_add(1, idx.squeeze(1), ones)
    return Overlap(tp, prob_sum - tp, count - tp)


def overlap_from_dense(probs: Tensor, target: Tensor, valid: Optional[Tensor] = None) -> Overlap:
    """Statistics from probabilities and a dense target of the same shape ``(N, C, *S)``.

    ``valid`` (same shape, or None) masks elements out; the target must already be 0 there.
    """
    n, c = probs.shape[:2]
    flat_p = probs.reshape(n, c, -1)
    flat_y = target.reshape(n, c, -1).to(flat_p.dtype)
    if valid is not None:
        flat_p = flat_p * valid.reshape(n, c, -1)
    tp = (flat_p * flat_y).sum(-1)
    return Overlap(tp, flat_p.sum(-1) - tp, flat_y.sum(-1) - tp)
