"""TP / FP / FN per (sample, class): the one overlap statistic shared by region losses and metrics.

For probabilities ``p`` and a target ``y`` over the valid pixels ``V``::

    TP_c = Σ_{i∈V} p_ic y_ic     FP_c = Σ_{i∈V} p_ic (1 - y_ic)     FN_c = Σ_{i∈V} (1 - p_ic) y_ic

With an index target no one-hot tensor is built: ``TP`` gathers ``p`` at the target class and
scatter-adds it per class, ``Σ p`` and the class counts are reductions, and the backward is fused
(:class:`_SoftmaxIndexSums`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


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


class _SoftmaxIndexSums(torch.autograd.Function):
    """``(Σ_i p_ic [y_i = c], Σ_i p_ic)`` over valid pixels, ``p = softmax(z)``, with a fused backward.

    With ``H = ∂L/∂TP`` and ``G = ∂L/∂Σp`` (each ``(N, C)``), ``∂L/∂p_ic = G_c + H_c [y_i = c]`` at valid
    pixels, and the softmax backward gives ``∂L/∂z_ic = p_ic (G_c + H_c [y_i = c] - s_i)`` with
    ``s_i = Σ_k p_ik G_k + p_{i,y_i} H_{y_i}``: one read of ``p`` and one write of the gradient, no
    one-hot and no zeros-then-scatter of the logits' size.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, index: Tensor, valid: Optional[Tensor], dtype: torch.dtype
    ) -> Tuple[Tensor, Tensor]:
        n, c = logits.shape[:2]
        probs = torch.softmax(logits.reshape(n, c, -1), dim=1, dtype=dtype)
        idx = index.reshape(n, 1, -1)
        p_true = probs.gather(1, idx)  # (N, 1, P)
        if valid is None:
            prob_sum = probs.sum(-1)
        else:
            mask = valid.reshape(n, -1, 1).to(dtype)
            prob_sum = torch.bmm(probs, mask).squeeze(-1)
            p_true = p_true * mask.transpose(1, 2)
        tp = torch.zeros(n, c, dtype=dtype, device=logits.device).scatter_add_(
            1, idx.squeeze(1), p_true.squeeze(1)
        )
        ctx.save_for_backward(probs, idx, valid)
        ctx.logits_shape, ctx.logits_dtype = logits.shape, logits.dtype
        return tp, prob_sum

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_tp: Tensor, grad_sum: Tensor) -> Tuple[Tensor, None, None, None]:
        probs, idx, valid = ctx.saved_tensors
        h_true = grad_tp.gather(1, idx.squeeze(1)).unsqueeze(1)  # (N, 1, P): H_{y_i}
        p_true = probs.gather(1, idx)
        s = torch.bmm(grad_sum.unsqueeze(1), probs) + p_true * h_true  # (N, 1, P)
        grad = (grad_sum.unsqueeze(-1) - s).mul_(probs)
        grad.scatter_add_(1, idx, p_true * h_true)
        if valid is not None:
            grad.mul_(valid.reshape(grad.shape[0], 1, -1))
        return grad.reshape(ctx.logits_shape).to(ctx.logits_dtype), None, None, None


def softmax_overlap_from_index(logits: Tensor, index: Tensor, valid: Optional[Tensor]) -> Overlap:
    """Statistics ``(N, C)`` from logits (softmax over C) and an index target ``(N, *S)`` (ignored set to 0).

    Half-precision logits are computed in float32. No one-hot of the logits' size is built.
    """
    dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
    tp, prob_sum = _SoftmaxIndexSums.apply(logits, index, valid, dtype)
    n, c = tp.shape
    flat_index = index.reshape(n, -1)
    if valid is None:
        pixel_weight = torch.ones(1, dtype=dtype, device=logits.device).expand_as(flat_index)
    else:
        pixel_weight = valid.reshape(n, -1).to(dtype)
    counts = torch.zeros(n, c, dtype=dtype, device=logits.device).scatter_add_(1, flat_index, pixel_weight)
    return Overlap(tp, prob_sum - tp, counts - tp)


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
