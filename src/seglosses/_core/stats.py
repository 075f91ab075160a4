"""TP / FP / FN per (sample, class): the one overlap statistic shared by region losses and metrics.

For probabilities ``p`` and a target ``y`` over the valid pixels ``V``::

    TP_c = Σ_{i∈V} p_ic y_ic     FP_c = Σ_{i∈V} p_ic (1 - y_ic)     FN_c = Σ_{i∈V} (1 - p_ic) y_ic

With an index target no one-hot tensor is built: ``TP`` takes ``p`` at the target class and adds it
into a per-(sample, class) table, ``Σ p`` is a reduction, and the backward is fused
(:class:`_SoftmaxIndexSums`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .numerics import compute_dtype, first_order_backward


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


def _table_bins(index: Tensor, valid: Optional[Tensor], c: int) -> Tensor:
    """``n·C + y_i`` per pixel, ``(N·P,)`` int64, into a flat ``(N, C)`` table; ignored pixels go to an
    extra bin ``N·C``."""
    n = index.shape[0]
    rows = torch.arange(0, n * c, c, device=index.device).unsqueeze(1)
    bins = index.flatten(1) + rows
    if valid is not None:
        bins = bins.masked_fill_(~valid.flatten(1), n * c)
    return bins.reshape(-1)


def _bin_sums(bins: Tensor, values: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """Per bin: the sum of ``values`` and the number of entries, ``(size,)`` each in ``values``' dtype.

    CPU: ``index_add_`` into the flat table. CUDA (eager): ``bincount``, whose per-block histograms avoid
    the contention of millions of atomic adds into a few ``N·C`` bins. ``torch.compile`` traces the
    ``index_add_`` form (``bincount``'s output size depends on the data), and so does CUDA under
    ``torch.use_deterministic_algorithms(True)``: a weighted CUDA ``bincount`` has no deterministic
    implementation (it raises there), ``index_add_`` has.
    """
    fast = not torch.compiler.is_compiling() and not torch.are_deterministic_algorithms_enabled()
    if values.is_cuda and fast:
        sums = torch.bincount(bins, weights=values, minlength=size)[:size].to(values.dtype)
        return sums, torch.bincount(bins, minlength=size)[:size].to(values.dtype)
    table = torch.zeros(2, size, dtype=values.dtype, device=values.device)
    sums = table[0].index_add_(0, bins, values)
    ones = torch.ones(1, dtype=values.dtype, device=values.device).expand_as(values)
    counts = table[1].index_add_(0, bins, ones)
    return sums, counts


class _SoftmaxIndexSums(torch.autograd.Function):
    """``TP = Σ_i p_ic [y_i = c]``, ``Σ_i p_ic`` and the class counts over valid pixels, ``p = softmax(z)``.

    Per-class sums by label use a flat ``index_add_`` (much faster on CPU than
    ``scatter_add_`` along the class dim). Backward, with ``H = ∂L/∂TP`` and ``G = ∂L/∂Σp`` (each
    ``(N, C)``): ``∂L/∂p_ic = G_c + H_c [y_i = c]`` at valid pixels, so the softmax backward is
    ``∂L/∂z_ic = p_ic (G_c - s_i) + [y_i = c] p_ic H_c`` with ``s_i = Σ_k p_ik G_k + p_{i,y_i} H_{y_i}``:
    one read of ``p``, one write of the gradient, one indexed add; no one-hot of the logits' size.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, index: Tensor, valid: Optional[Tensor], dtype: torch.dtype
    ) -> Tuple[Tensor, Tensor, Tensor]:
        n, c = logits.shape[:2]
        probs = torch.softmax(logits.flatten(2), dim=1, dtype=dtype)  # flatten: N = 0 works too
        bins = _table_bins(index, valid, c)
        p_true = probs.gather(1, index.flatten(1).unsqueeze(1)).reshape(-1)
        tp, counts = _bin_sums(bins, p_true, n * c + 1)
        if valid is None:
            prob_sum = probs.sum(-1)
        else:  # where, not a product with the mask: a NaN at an ignored pixel must not reach the sum
            prob_sum = torch.where(valid.flatten(1).unsqueeze(1), probs, 0.0).sum(-1)
        ctx.save_for_backward(probs, p_true, index, valid)
        ctx.logits_shape, ctx.logits_dtype = logits.shape, logits.dtype
        ctx.mark_non_differentiable(counts)
        return tp[:-1].view(n, c), prob_sum, counts[:-1].view(n, c)

    @staticmethod
    @first_order_backward("the overlap losses")
    def backward(ctx: Any, grad_tp: Tensor, grad_sum: Tensor, _: Tensor) -> Tuple[Tensor, None, None, None]:
        probs, p_true, index, valid = ctx.saved_tensors
        n, c = grad_tp.shape
        bins = _table_bins(index, valid, c)
        h_table = torch.cat([grad_tp.reshape(-1), grad_tp.new_zeros(1)])  # the extra bin: ignored pixels
        true_term = h_table.take(bins).mul_(p_true)  # p_{i,y_i} H_{y_i}, 0 at ignored pixels
        if valid is not None:  # even where p is NaN there: the indexed add below sends them to pixel 0
            true_term.masked_fill_(~valid.reshape(-1), 0.0)
        pixels = probs.shape[-1]
        s = torch.baddbmm(true_term.view(n, 1, pixels), grad_sum.unsqueeze(1), probs)  # (N, 1, P)
        grad = (grad_sum.unsqueeze(-1) - s).mul_(probs)
        # flat address (n·C + y_i)·P + i of each pixel's target class; an indexed add there is much faster
        # on CPU than scatter_add_ along the class dim
        positions = (
            bins.view(n, pixels).mul_(pixels).add_(torch.arange(pixels, device=grad.device))
        )  # reuses bins
        if valid is not None:  # ignored pixels point past the end; send them to class 0 (they add 0)
            positions = positions.masked_fill_(~valid.flatten(1), 0)
        grad.view(-1).index_add_(0, positions.view(-1), true_term)
        if valid is not None:  # exactly 0 at ignored pixels, whatever their logits (NaN included)
            grad.masked_fill_(~valid.flatten(1).unsqueeze(1), 0.0)
        return grad.reshape(ctx.logits_shape).to(ctx.logits_dtype), None, None, None


def softmax_overlap_from_index(logits: Tensor, index: Tensor, valid: Optional[Tensor]) -> Overlap:
    """Statistics ``(N, C)`` from logits (softmax over C) and an index target ``(N, *S)``.

    ``index`` is int64 with ignored pixels set to any class (``valid`` marks them). Half-precision logits
    are computed in float32. No one-hot of the logits' size is built.
    """
    dtype = compute_dtype(logits)
    tp, prob_sum, counts = _SoftmaxIndexSums.apply(logits, index, valid, dtype)
    return Overlap(tp, prob_sum - tp, counts - tp)


def overlap_from_dense(probs: Tensor, target: Tensor, valid: Optional[Tensor] = None) -> Overlap:
    """Statistics from probabilities and a dense target of the same shape ``(N, C, *S)``.

    ``valid`` (same shape, or None) masks elements out; the target must already be 0 there.
    """
    n, c = probs.shape[:2]
    flat_p = probs.flatten(2)
    flat_y = target.flatten(2).to(flat_p.dtype)
    if valid is not None:  # where, not a product: a NaN at an ignored element must not reach the sums
        flat_p = torch.where(valid.flatten(2), flat_p, 0.0)
    tp = (flat_p * flat_y).sum(-1)
    return Overlap(tp, flat_p.sum(-1) - tp, flat_y.sum(-1) - tp)
