"""TP / FP / FN per (sample, class): the one overlap statistic shared by region losses and metrics.

For probabilities ``p`` and a target ``y`` over the valid pixels ``V``::

    TP_c = Σ_{i∈V} p_ic y_ic     FP_c = Σ_{i∈V} p_ic (1 - y_ic)     FN_c = Σ_{i∈V} (1 - p_ic) y_ic

With an index target no one-hot tensor is built: ``TP`` takes ``p`` at the target class and adds it
into a per-(sample, class) table, ``Σ p`` is a reduction, and the backward is fused
(:class:`_SoftmaxIndexSums`).

Two other forms of the same three numbers (MONAI's ``compute_tp_fp_fn``), in plain torch:

* ``squared`` (the V-Net denominator, Milletari et al. 2016): ``TP = Σ p y``, ``FP = Σ p² - TP``,
  ``FN = Σ y² - TP``, so that ``2 TP + FP + FN = Σ p² + Σ y²``;
* ``soft_label`` (Wang & Blaschko 2023): ``TP = (Σ p + Σ y - Σ |p - y|) / 2``, ``FP = Σ p - TP``,
  ``FN = Σ y - TP``, whose Dice is largest at ``p = y`` for a soft target too. For a hard target
  (``y`` in {0, 1}) it is the plain form, which is then computed instead.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .backend import implementation
from .numerics import compute_dtype, first_order_backward, sigmoid_f32, softmax_f32
from .targets import IndexTarget, defer_kernel_checks


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


class Confusion(NamedTuple):
    """The overlap statistics and the valid pixels, each ``(N, C)``: the true negatives are
    ``Σ (1 - p)(1 - y) = valid - TP - FP - FN``."""

    tp: Tensor
    fp: Tensor
    fn: Tensor
    valid: Tensor

    def pooled(self) -> "Confusion":
        """Sum over the batch: ``(N, C) -> (C,)``."""
        return Confusion(*(t.sum(0) for t in self))

    def select(self, start: int) -> "Confusion":
        """Keep classes ``start:``."""
        return Confusion(*(t[..., start:] for t in self))


def valid_weights(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """The valid mask ``(N, *S)`` as 1.0 / 0.0, flattened to ``(N, P)`` (see :func:`_numbers`)."""
    return _numbers(valid.flatten(1), dtype)


def _numbers(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` as numbers in ``dtype`` (itself when it has that dtype); a bool tensor through a ``uint8``
    view (converting bool directly is several times slower on CPU)."""
    return (t.view(torch.uint8) if t.dtype == torch.bool else t).to(dtype)


def class_labels(labels: Tensor, valid: Optional[Tensor]) -> Tensor:
    """The labels ``(N, P)`` as int64, class 0 at ignored pixels; the target itself when it is int64 and
    nothing is ignored."""
    flat = labels.flatten(1).long()
    return flat if valid is None else torch.where(valid.flatten(1), flat, 0)


def _zero_ignored(probs: Tensor, valid: Optional[Tensor], keep: Optional[Tensor]) -> Tensor:
    """Set ``probs`` ``(N, C, P)`` to exactly 0 at ignored pixels, in place, and return ``Σ_i p_ic``.

    A NaN at an ignored pixel must not reach the sums. It multiplies by the float mask ``keep`` (a boolean
    mask over ``(N, C, P)`` is several times slower on the CPU) and, only when a sum comes out
    non-finite (a NaN or +inf logit somewhere), redoes the masking with ``masked_fill_``, which clears a
    NaN.
    """
    if valid is None or keep is None:  # keep: the valid mask as 1.0 / 0.0, (N, P)
        return probs.sum(-1)
    probs.mul_(keep.unsqueeze(1))
    prob_sum = probs.sum(-1)
    if bool(prob_sum.isfinite().all()):
        return prob_sum
    probs.masked_fill_(~valid.flatten(1).unsqueeze(1), 0.0)
    return probs.sum(-1)


def _binary_sums(probs: Tensor, y: Tensor, valid: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """``C = 2``: ``TP`` ``(N, 2)`` = ``Σ_i p_i0 (1 - y_i)``, ``Σ_i p_i1 y_i``, and ``Σ_{i∈V} y_i`` ``(N,)``,
    for labels ``y`` ``(N, P)`` as numbers (any value at ignored pixels, where ``p = 0``). An eighth of
    the pixels at a time, so that the products' temporaries stay a fraction of the logits' size."""
    n, pixels = y.shape
    tp, ones = probs.new_zeros(n, 2), probs.new_zeros(n)
    keep = None if valid is None else valid.flatten(1)
    for start, stop in even_parts(pixels, 8):
        p, t = probs[..., start:stop], y[:, start:stop]
        tp[:, 0] += torch.linalg.vecdot(p[:, 0], 1 - t)
        tp[:, 1] += torch.linalg.vecdot(p[:, 1], t)
        if keep is None:
            ones += t.sum(-1)
        else:
            ones += torch.linalg.vecdot(t, valid_weights(keep[:, start:stop], t.dtype))
    return tp, ones


def _table_bins(labels: Tensor, c: int) -> Tensor:
    """``n·C + y_i`` per pixel ``(N, P)`` int64: the pixel's entry in a flat ``(N, C)`` table."""
    n = labels.shape[0]
    return labels + torch.arange(0, n * c, c, device=labels.device).unsqueeze(1)


def _positions(rows: Tensor) -> Tensor:
    """``r_i·P + i`` for ``rows`` ``(N, P)`` int64: with table bins ``n·C + y``, the address of each
    pixel's target class in the whole contiguous ``(N, C, P)`` tensor."""
    pixels = rows.shape[1]
    return torch.add(torch.arange(pixels, device=rows.device), rows, alpha=pixels)


def _label_sums(index: Tensor, values: Tensor, c: int) -> Tensor:
    """``(N, C)``: the sum of ``values`` ``(N, P)`` by label, a ``scatter_add_`` per sample (parallel over
    the batch). The table's rows are padded to 64 bytes: threads adding into neighbouring rows of one
    cache line slow each other down several times (false sharing)."""
    width = -(-c // 16) * 16
    return values.new_zeros(index.shape[0], width).scatter_add_(1, index, values)[:, :c]


def row_gather(probs: Tensor, index: Tensor) -> Tensor:
    """``p_{i,y_i}`` ``(N, P)`` from ``probs`` ``(N, C, P)``: ``gather`` along each sample's flat ``(C·P)``
    row at ``y_i·P + i`` (parallel over the batch, each sample's loop contiguous; ``gather`` along the
    class dim itself has an inner loop of length 1 and is several times slower on CPU). The int64
    addresses are made for a quarter of the pixels at a time, to keep them a fraction of the logits."""
    rows = probs.flatten(1)
    out = probs.new_empty(index.shape)
    for start, stop in _pixel_parts(index.shape[1]):
        torch.gather(rows, 1, _part_addresses(index, start, stop), out=out[:, start:stop])
    return out


def row_scatter_add(grad: Tensor, index: Tensor, values: Tensor) -> None:
    """Add ``values`` ``(N, P)`` into ``grad`` ``(N, C, P)`` (contiguous) at each pixel's target class,
    the transpose of :func:`row_gather`."""
    rows = grad.flatten(1)  # a view: grad is contiguous
    for start, stop in _pixel_parts(index.shape[1]):
        rows.scatter_add_(1, _part_addresses(index, start, stop), values[:, start:stop])


MIN_PART = 16384  # pixels: a smaller input is worked whole (its temporaries are small anyway)


def even_parts(size: int, count: int) -> List[Tuple[int, int]]:
    """``(start, stop)`` of ``count`` about equal parts of ``range(size)``, each of at least
    :data:`MIN_PART` pixels: a small input is one part, so it pays no per-part operations."""
    count = max(1, min(count, size // MIN_PART))
    step = max(1, -(-size // count))
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def _pixel_parts(pixels: int) -> List[Tuple[int, int]]:
    """``(start, stop)`` of four about equal parts of ``range(pixels)``."""
    return even_parts(pixels, 4)


def _part_addresses(index: Tensor, start: int, stop: int) -> Tensor:
    """``y_i·P + i`` for the pixels ``start:stop`` of ``index`` ``(N, P)``."""
    pixel = torch.arange(start, stop, device=index.device)
    return torch.add(pixel, index[:, start:stop], alpha=index.shape[1])


def _softmax(flat: Tensor, dtype: torch.dtype) -> Tensor:
    """Softmax over the class dim of ``flat`` ``(N, C, P)`` in ``dtype`` (the fused CPU Functions). Two
    classes, when every logit is finite: ``(σ(-δ), σ(δ))`` with ``δ = z_1 - z_0``, which is the softmax
    (each to full relative precision) at about half the cost of the softmax kernel over a class dim of
    two. Else torch's softmax (a NaN or ``±inf`` logit keeps its softmax result: ``+inf`` gives NaN,
    which the sigmoid would not)."""
    if flat.shape[1] == 2 and flat.dtype == dtype:
        probs = torch.empty_like(flat, memory_format=torch.contiguous_format)
        delta = torch.sub(flat[:, 1], flat[:, 0], out=probs[:, 1])
        if bool(delta.sum().isfinite()):  # every δ finite: every logit finite
            torch.neg(delta, out=probs[:, 0])
            return probs.sigmoid_()
    return torch.softmax(flat, dim=1, dtype=dtype)


class _SoftmaxIndexSums(torch.autograd.Function):
    """``TP = Σ_i p_ic [y_i = c]``, ``Σ_i p_ic`` and the class counts over valid pixels, ``p = softmax(z)``.

    Backward, with ``H = ∂L/∂TP`` and ``G = ∂L/∂Σp`` (each ``(N, C)``): ``∂L/∂p_ic = G_c + H_c [y_i = c]``
    at valid pixels, so the softmax backward is ``∂L/∂z_ic = p_ic (A_ic - s_i)`` with
    ``A_ic = G_c + H_c [y_i = c]`` and ``s_i = Σ_k p_ik A_ik``. No one-hot of the logits' size is built:

    * ``C = 2``: elementwise arithmetic on the labels as numbers (``[y = 1] = y``): ``TP_1 = Σ p_1 y``,
      ``TP_0 = Σ p_0 (1 - y)``, and since ``p_0 + p_1 = 1`` the gradient is
      ``∂L/∂z_1 = -∂L/∂z_0 = p_0 p_1 (A_1 - A_0)``, with ``A_1 - A_0`` linear in ``y``.
    * ``C > 2``: ``p_{i,y_i}`` is read at each pixel's target class, summed by label into the ``(N, C)``
      table, and the backward is ``p_ic (G_c - s_i)`` plus ``p_{i,y_i} H_{y_i}`` added at the target class.
      These are ``gather`` / ``scatter_add_`` along each sample's flat ``(C·P)`` row (parallel over the
      batch, each pixel's loop contiguous; ``scatter_add_`` or ``gather`` along the class dim itself runs
      an inner loop of length 1 and is several times slower).

    Ignored pixels get ``p = 0`` in the forward, so they add nothing and their gradient is 0.

    Memory: ``p`` is the only logits-sized tensor kept, and the first backward turns it into the gradient
    in place, so a step holds about one logits-sized tensor besides the returned gradient itself. A second
    backward through a retained graph recomputes ``p`` from the logits. Eager CPU only
    (:func:`~seglosses._core.backend.implementation`): ``torch.compile`` traces the reference.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, labels: Tensor, valid: Optional[Tensor], dtype: torch.dtype
    ) -> Tuple[Tensor, Tensor, Tensor]:
        c = logits.shape[1]
        probs = _softmax(logits.flatten(2), dtype)  # flatten: N = 0 works too
        keep = None if valid is None else valid_weights(valid, dtype)
        prob_sum = _zero_ignored(probs, valid, keep)
        p_true = None
        if c == 2:  # the labels as numbers: [y_i = 1] = y_i
            total = torch.full_like(prob_sum[:, 0], probs.shape[-1]) if keep is None else keep.sum(-1)
            keep = None
            tp, ones = _binary_sums(probs, labels.flatten(1).to(dtype), valid)
            counts = torch.stack([total - ones, ones], 1)
        else:
            index = class_labels(labels, valid)
            counts = _label_sums(index, probs.new_ones(1).expand_as(index) if keep is None else keep, c)
            keep = None
            p_true = row_gather(probs, index)  # 0 at ignored pixels
            tp = _label_sums(index, p_true, c)
        ctx.logits_shape, ctx.logits_dtype, ctx.dtype = logits.shape, logits.dtype, dtype
        ctx.probs, ctx.p_true = probs, p_true  # the backward reuses ``probs`` as its gradient buffer
        ctx.save_for_backward(logits, None, labels, valid)
        ctx.mark_non_differentiable(counts)
        return tp, prob_sum, counts

    @staticmethod
    def reference(ctx: Any, logits: Tensor, _: Optional[Tensor], labels: Tensor,
                  valid: Optional[Tensor]) -> Tuple[Tuple[Any, ...], Tuple[Tensor, ...]]:  # fmt: skip
        """The sums by autograd (what a double backward differentiates)."""
        return (logits, None, None, None), _index_sums_reference(logits, labels, valid, ctx.dtype)

    @staticmethod
    @first_order_backward("the overlap losses", lambda *a: _SoftmaxIndexSums.reference(*a))
    def backward(ctx: Any, grad_tp: Tensor, grad_sum: Tensor, _: Tensor) -> Tuple[Tensor, None, None, None]:
        saved, p_true, labels, valid = ctx.saved_tensors
        n, c = grad_tp.shape
        if ctx.probs is not None:  # the first backward writes the gradient into ``probs``
            probs, p_true, ctx.probs, ctx.p_true = ctx.probs, ctx.p_true, None, None
        else:  # a later backward through a retained graph
            probs = _softmax(saved.flatten(2), ctx.dtype)
            _zero_ignored(probs, valid, None if valid is None else valid_weights(valid, ctx.dtype))
        if c == 2:
            g, h = grad_sum, grad_tp
            offset = (g[:, 1] - g[:, 0] - h[:, 0]).unsqueeze(1)  # A_1 - A_0 = offset + slope · y
            slope = (h[:, 1] + h[:, 0]).unsqueeze(1)
            diff = labels.flatten(1).to(probs.dtype).mul_(slope).add_(offset)  # any value at ignored pixels,
            diff.mul_(probs[:, 0]).mul_(probs[:, 1])  # where p_0 p_1 = 0
            grad = probs
            grad[:, 1].copy_(diff)
            torch.neg(diff, out=grad[:, 0])
        else:
            index = class_labels(labels, valid)
            if p_true is None:  # recomputed probabilities
                p_true = probs.view(-1).take(_positions(_table_bins(index, c))).view_as(index)
            true_term = grad_tp.gather(1, index)
            true_term.mul_(p_true.view_as(true_term))  # p_{i,y_i} H_{y_i}, (N, P)
            del p_true
            s = torch.baddbmm(true_term.unsqueeze(1), grad_sum.unsqueeze(1), probs).squeeze(1)  # (N, P)
            grad, shifted = probs, torch.empty_like(s)
            for k in range(c):  # p (G - s) class by class: no logits-sized temporary
                grad[:, k].mul_(torch.sub(grad_sum[:, k : k + 1], s, out=shifted))
            del shifted
            del s  # freed before the int64 addresses below
            row_scatter_add(grad, index, true_term)
        # p = 0 at ignored pixels, so their gradient is 0 unless G or H is not finite (0 · inf)
        if valid is not None and not _finite(grad_tp, grad_sum):
            grad.masked_fill_(~valid.flatten(1).unsqueeze(1), 0.0)
        return grad.reshape(ctx.logits_shape).to(ctx.logits_dtype), None, None, None


def _finite(*tables: Tensor) -> bool:
    return all(bool(t.isfinite().all()) for t in tables)


def softmax_overlap_from_index(
    logits: Tensor,
    labels: Tensor,
    valid: Optional[Tensor],
    ignore_index: Optional[int] = None,
    prepared: Optional[IndexTarget] = None,
    *,
    squared: bool = False,
    weight: Optional[Tensor] = None,
) -> Overlap:
    """Statistics ``(N, C)`` from logits (softmax over C) and an index target ``(N, *S)``.

    ``labels`` are the class indices in any integer dtype; at ignored pixels (``valid`` False) they may
    hold anything, ``ignore_index`` say. Half-precision logits are computed in float32. No one-hot of the
    logits' size is built. ``squared``: the V-Net form (module docstring; ``Σ y² = Σ y`` for a hard
    target); ``weight``: per-pixel weights ``ω`` ``(N, *S)`` in every sum. Both by
    :func:`_index_sums_reference`.
    """
    dtype = compute_dtype(logits)
    if squared or weight is not None:
        tp, prob_sum, counts = _index_sums_reference(logits, labels, valid, dtype, squared, weight)
        return Overlap(tp, prob_sum - tp, counts - tp)
    chosen = implementation(logits)
    if chosen == "triton":
        tp, prob_sum, counts = _triton_index_sums(logits, labels, ignore_index, prepared)
    else:
        sums = _SoftmaxIndexSums.apply if chosen == "cpu" else _index_sums_reference
        tp, prob_sum, counts = sums(logits, labels, valid, dtype)
    return Overlap(tp, prob_sum - tp, counts - tp)


def _triton_index_sums(
    logits: Tensor, labels: Tensor, ignore_index: Optional[int], prepared: Optional[IndexTarget]
) -> Tuple[Tensor, ...]:
    """``(TP, Σp, counts)`` by the Triton kernel ``seglosses::softmax_region_sums``, which also counts the
    deferred data checks when ``prepared`` leaves them to it."""
    from ..ops import triton_softmax

    check = prepared is not None and prepared.kernel_checks is not None
    sums, _, counted = triton_softmax.softmax_region_sums(
        logits.flatten(2), labels.flatten(1),
        0 if ignore_index is None else ignore_index, ignore_index is not None, check,
    )  # fmt: skip
    if prepared is not None and check:
        defer_kernel_checks(prepared, logits.shape[1], counted)
    return sums.unbind(1)


def _index_sums_reference(
    logits: Tensor,
    labels: Tensor,
    valid: Optional[Tensor],
    dtype: torch.dtype,
    squared: bool = False,
    weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(TP, Σp, Σy)`` per (sample, class) as :class:`_SoftmaxIndexSums` gives them, in plain
    differentiable torch (``gather`` of ``p_t`` and ``scatter_add`` into the class table; the reference
    that ``torch.func`` transforms use); ``Σp²`` in place of ``Σp`` with ``squared``; every term times
    the pixel's weight with ``weight`` ``(N, *S)``."""
    n, c = logits.shape[:2]
    flat = logits.flatten(2).to(dtype)
    index = class_labels(labels, valid)
    if valid is not None:  # a NaN or inf at an ignored pixel must reach neither the sums nor a gradient
        flat = flat.masked_fill(~valid.flatten(1).unsqueeze(1), 0.0)
    probs = torch.softmax(flat, dim=1)
    if valid is not None:
        probs = torch.where(valid.flatten(1).unsqueeze(1), probs, 0.0)
    keep = probs.new_ones(index.shape) if valid is None else valid_weights(valid, dtype)
    p_true = probs.gather(1, index.unsqueeze(1)).squeeze(1)
    powers = probs * probs if squared else probs
    if weight is not None:  # (N, *S) -> (N, P)
        omega = weight.flatten(1).to(dtype)
        keep, p_true, powers = keep * omega, p_true * omega, powers * omega.unsqueeze(1)
    table = probs.new_zeros(n, c)
    tp = table.scatter_add(1, index, p_true)
    return tp, powers.sum(-1), table.scatter_add(1, index, keep)


_SIGMOID_PARTS = 4  # the dense sigmoid statistics' temporaries are a quarter of the logits' size


def _sigmoid_probs(
    flat: Tensor, valid: Optional[Tensor], dtype: torch.dtype, finite: bool
) -> Tuple[Tensor, bool]:
    """``p = σ(z)`` ``(N, C, P)`` in ``dtype`` from the flattened logits, NaN at ``+inf`` (an invalid logit,
    as in :func:`~seglosses._core.numerics.sigmoid_f32`) and 0 at ignored elements, and whether the
    ignored elements are still to be zeroed (by the caller's float mask, part by part).

    When the data checks have just found no NaN or ``+inf`` logit (``finite``) or a read of the logits'
    sum finds it finite, a product with the float mask zeroes the ignored elements (the caller's, part by
    part); else ``masked_fill_`` sets NaN at ``+inf`` and then 0 at ignored elements, which clears a NaN
    there."""
    probs = torch.sigmoid(flat) if flat.dtype == dtype else flat.to(dtype).sigmoid_()
    if finite or bool(flat.sum(dtype=dtype).isfinite()):
        return probs, valid is not None
    probs.masked_fill_(flat == torch.inf, torch.nan)
    if valid is not None:
        probs.masked_fill_(~valid, 0.0)
    return probs, False


def _part_target(target: Tensor, dtype: torch.dtype, keep: Optional[Tensor]) -> Tensor:
    """A part of the target as numbers in ``dtype``, times the float mask ``keep`` (0 at ignored elements,
    whose target may hold ``ignore_index``) when given; never the caller's tensor when it is changed."""
    if keep is None:
        return _numbers(target, dtype)
    return _numbers(target, dtype).mul_(keep) if target.dtype != dtype else target * keep


class _SigmoidDenseSums(torch.autograd.Function):
    """``TP = Σ_i p_i y_i``, ``Σ_i p_i`` and ``Σ_i y_i`` over the valid elements of each ``(n, c)`` row,
    ``p = σ(z)`` per element and a dense target ``y`` of the logits' shape (bool, integer or float; soft
    values allowed; any value at ignored elements).

    Backward, with ``H = ∂L/∂TP`` and ``G = ∂L/∂Σp`` (each ``(N, C)``): ``∂L/∂p_i = G_c + H_c y_i`` and
    ``σ' = p (1 - p)``, so ``∂L/∂z_i = p_i (1 - p_i) (G_c + H_c y_i)`` at valid elements, 0 at ignored
    ones (``p = 0`` there), by torch's ``sigmoid_backward`` kernel (``(1 - p)`` formed per element, as in
    autograd through ``torch.sigmoid``).

    Memory: ``p`` is the only logits-sized tensor made; the target is converted (and masked) a quarter
    at a time, and the first backward turns ``p`` into the gradient in place, so a step holds about one
    logits-sized tensor besides the gradient it returns, which is that tensor. A second backward through
    a retained graph recomputes ``p`` from the logits. Eager CPU only
    (:func:`~seglosses._core.backend.implementation`): ``torch.compile`` traces the reference.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, target: Tensor, valid: Optional[Tensor], dtype: torch.dtype, finite: bool
    ) -> Tuple[Tensor, Tensor, Tensor]:
        flat, y = logits.flatten(2), target.flatten(2)  # flatten: N = 0 works too
        keep_mask = None if valid is None else valid.flatten(2)
        probs, zero_ignored = _sigmoid_probs(flat, keep_mask, dtype, finite)
        n, c, pixels = probs.shape
        if keep_mask is None and y.dtype == dtype:
            tp = probs.new_zeros(n, c)
            for start, stop in even_parts(pixels, _SIGMOID_PARTS):  # a product a part at a time
                tp += torch.mul(probs[..., start:stop], y[..., start:stop]).sum(-1)
            y_sum = y.sum(-1)
        else:
            tp, y_sum = probs.new_zeros(n, c), probs.new_zeros(n, c)
            for start, stop in even_parts(pixels, _SIGMOID_PARTS):
                p = probs[..., start:stop]
                keep = None
                if keep_mask is not None:
                    keep = _numbers(keep_mask[..., start:stop], dtype)
                    if zero_ignored:
                        p.mul_(keep)
                part = _part_target(y[..., start:stop], dtype, keep)
                tp += torch.mul(p, part).sum(-1)
                y_sum += part.sum(-1)
        prob_sum = probs.sum(-1)
        ctx.logits_shape, ctx.logits_dtype, ctx.dtype, ctx.finite = logits.shape, logits.dtype, dtype, finite
        ctx.probs = probs  # the backward reuses ``probs`` as its gradient buffer (see the class docstring)
        ctx.save_for_backward(logits, target, valid)
        ctx.mark_non_differentiable(y_sum)
        return tp, prob_sum, y_sum

    @staticmethod
    def reference(ctx: Any, logits: Tensor, target: Tensor,
                  valid: Optional[Tensor]) -> Tuple[Tuple[Any, ...], Tuple[Tensor, ...]]:  # fmt: skip
        """The sums by autograd (what a double backward differentiates)."""
        dense = target.to(ctx.dtype) if valid is None else target.to(ctx.dtype).masked_fill(~valid, 0)
        s = overlap_from_dense(sigmoid_f32(logits), dense, valid)
        return (logits, None, None, None, None), (s.tp, s.fp + s.tp, s.fn + s.tp)

    @staticmethod
    @first_order_backward("the overlap losses", lambda *a: _SigmoidDenseSums.reference(*a))
    def backward(ctx: Any, grad_tp: Tensor, grad_sum: Tensor, _: Tensor) -> Tuple[Optional[Tensor], ...]:
        saved, target, valid = ctx.saved_tensors
        y, dtype = target.flatten(2), ctx.dtype
        keep_mask = None if valid is None else valid.flatten(2)
        if ctx.probs is not None:  # the first backward writes the gradient into ``probs``
            probs, ctx.probs = ctx.probs, None
        else:  # a later backward through a retained graph: the same operations as the first time
            probs, zero_ignored = _sigmoid_probs(saved.flatten(2), keep_mask, dtype, ctx.finite)
            if zero_ignored and keep_mask is not None:
                for start, stop in even_parts(probs.shape[-1], _SIGMOID_PARTS):
                    probs[..., start:stop].mul_(_numbers(keep_mask[..., start:stop], dtype))
        g, h = grad_sum.unsqueeze(-1), grad_tp.unsqueeze(-1)  # G, H as (N, C, 1)
        grad = probs
        for start, stop in even_parts(probs.shape[-1], _SIGMOID_PARTS):
            p = grad[..., start:stop]
            # G + H y, from two products with one (N, C, 1) operand each (vectorised on CPU)
            factor = torch.mul(_numbers(y[..., start:stop], dtype), h).add_(g)
            torch.ops.aten.sigmoid_backward.grad_input(factor, p, grad_input=p)  # (G + H y)(1 - p) p
        # p = 0 at ignored elements, so their gradient is 0 unless G or H is not finite (0 · inf)
        if keep_mask is not None and not _finite(grad_tp, grad_sum):
            grad.masked_fill_(~keep_mask, 0.0)
        return grad.reshape(ctx.logits_shape).to(ctx.logits_dtype), None, None, None, None


def sigmoid_overlap_from_dense(
    logits: Tensor,
    target: Tensor,
    valid: Optional[Tensor],
    *,
    finite: bool = False,
    squared: bool = False,
    soft_label: bool = False,
    weight: Optional[Tensor] = None,
) -> Overlap:
    """Statistics ``(N, C)`` of ``p = σ(z)`` per element and a dense target of the logits' shape.

    ``target`` is bool, integer or float (soft values allowed), as given: at ignored elements (``valid``
    False) it may hold anything finite (``ignore_index``). Half-precision logits are computed in float32;
    a ``+inf`` logit gives NaN statistics (it is invalid, SPEC section 6). The closed-form backward of
    :class:`_SigmoidDenseSums` builds no logits-sized temporary. A target that requires a gradient takes
    :func:`overlap_from_dense` (autograd through both inputs). ``finite``: the caller's data checks have
    found no NaN or ``+inf`` logit (saves a read of the logits). ``squared``, ``soft_label``: the other
    forms of the module docstring; ``weight``: per-element weights broadcastable to the logits; these
    by :func:`overlap_from_dense`.
    """
    dtype = compute_dtype(logits)
    soft_label = soft_label and target.is_floating_point()  # a hard target: the plain form, the same numbers
    plain = not (target.requires_grad or squared or soft_label or weight is not None)
    chosen = implementation(logits) if plain else "reference"
    if chosen == "reference":  # autograd through both inputs
        dense = target.to(dtype) if valid is None else target.to(dtype).masked_fill(~valid, 0)
        clean = logits if valid is None else logits.masked_fill(~valid, 0.0)  # NaN there: no NaN gradient
        probs = sigmoid_f32(clean)
        return overlap_from_dense(probs, dense, valid, squared=squared, soft_label=soft_label, weight=weight)
    if chosen == "triton":
        tp, prob_sum, y_sum = _triton_sigmoid_sums(logits, target, valid).unbind(-1)
    else:
        tp, prob_sum, y_sum = _SigmoidDenseSums.apply(logits, target, valid, dtype, finite)
    return Overlap(tp, prob_sum - tp, y_sum - tp)


def _triton_sigmoid_sums(logits: Tensor, target: Tensor, valid: Optional[Tensor]) -> Tensor:
    """``(N, C, 3)`` = ``(TP, Σp, Σy)`` by the Triton kernel ``seglosses::sigmoid_region_sums``."""
    from ..ops import triton_sigmoid

    def rows(t: Tensor) -> Tensor:
        t = t.view(torch.uint8) if t.dtype == torch.bool else t
        return t.flatten(2).contiguous()

    flat = rows(logits)
    mask = flat if valid is None else rows(valid)  # unread without a mask
    return triton_sigmoid.sigmoid_region_sums(flat, rows(target), mask, valid is not None)


def softmax_overlap_from_dense(
    logits: Tensor,
    target: Tensor,
    *,
    squared: bool = False,
    soft_label: bool = False,
    valid: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
) -> Overlap:
    """Statistics ``(N, C)`` from logits (softmax over C) and a one-hot / soft target ``(N, C, *S)``: the
    Triton kernel ``seglosses::softmax_dense_sums`` when the backend picks it (and the target needs no
    gradient), else :func:`overlap_from_dense` of the softmax (the only way for the ``squared`` and
    ``soft_label`` forms, a ``valid`` mask ``(N, 1, *S)`` and per-pixel weights)."""
    if squared or soft_label or valid is not None or weight is not None:
        if valid is not None:  # a NaN or inf there must reach neither the sums nor a gradient
            logits, target = logits.masked_fill(~valid, 0.0), target.masked_fill(~valid, 0)
        probs = softmax_f32(logits)
        return overlap_from_dense(probs, target, valid, squared=squared, soft_label=soft_label, weight=weight)
    if implementation(logits) == "triton" and not target.requires_grad:
        from ..ops import triton_softmax

        sums = triton_softmax.softmax_dense_sums(
            logits.flatten(2), target.to(compute_dtype(logits)).flatten(2)
        )
        tp, prob_sum, y_sum = sums.unbind(1)
        return Overlap(tp, prob_sum - tp, y_sum - tp)
    return overlap_from_dense(softmax_f32(logits), target)


def overlap_from_dense(
    probs: Tensor,
    target: Tensor,
    valid: Optional[Tensor] = None,
    *,
    squared: bool = False,
    soft_label: bool = False,
    weight: Optional[Tensor] = None,
) -> Overlap:
    """Statistics from probabilities and a dense target of the same shape ``(N, C, *S)``, in the plain,
    ``squared`` or ``soft_label`` form (module docstring; ``squared`` makes ``soft_label`` moot: both give
    ``TP = Σ p y``).

    ``valid`` (broadcastable, or None) masks elements out; the target must already be 0 there.
    ``weight`` (broadcastable, or None): every element's terms times its weight ``ω``, e.g.
    ``TP = Σ ω p y``, ``Σ p² -> Σ ω p²``, ``Σ |p - y| -> Σ ω |p - y|``.
    """
    flat_p = probs.flatten(2)
    flat_y = target.flatten(2).to(flat_p.dtype)
    if valid is not None:  # where, not a product: a NaN at an ignored element must not reach the sums
        flat_p = torch.where(valid.flatten(2), flat_p, 0.0)
    omega = None if weight is None else weight.flatten(2).to(flat_p.dtype)

    def total(terms: Tensor) -> Tensor:  # the sum over the pixels, each term times its ω
        return (terms if omega is None else omega * terms).sum(-1)

    tp = total(flat_p * flat_y)
    if squared:
        return Overlap(tp, total(flat_p * flat_p) - tp, total(flat_y * flat_y) - tp)
    prob_sum, target_sum = total(flat_p), total(flat_y)
    if soft_label:
        tp = (prob_sum + target_sum - total((flat_p - flat_y).abs())) / 2
    return Overlap(tp, prob_sum - tp, target_sum - tp)
