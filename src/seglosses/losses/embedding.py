r"""Metric-learning losses on pixel embeddings (SPEC section 5): contrastive, InfoNCE, triplet, center.

Every loss takes pixel embeddings ``(N, D, *S)`` (1 to 3 spatial dims) or flat ``(M, D)`` and integer
labels ``(N, *S')`` / ``(M,)`` where the other losses take ``(logits, target)``. Three visible steps, as
everywhere in seglosses: :func:`~seglosses.sampling.sample_pixels` turns the maps into flat rows ``x``
``(M, D)`` with labels ``y`` (labels resized by nearest neighbour; ``ignore_index`` never sampled; every
valid pixel by default, or capped per (image, class) and in total, at random or hard pixels first); the
loss's own formula over pairs or triplets of those rows, pairs across images included; then ``mean`` or
``sum`` (``reduction="none"`` raises: there is no per-pixel value). A pixel is never its own positive.
With no valid pair, anchor or triplet the loss is 0, attached to the graph.

**Masks and weight maps.** ``mask=`` (bool, the labels' shape; True where a pixel counts) is the
general form of ``ignore_index``: a pixel outside it is never sampled. The embedding losses take no
``weight_map=``: a weight as a multiplicity (a pixel counted ``ω`` times) would make a pixel its own
positive, which the pair losses exclude, so there is no weighted form that keeps their formulas; a
compound with a pixel loss called with ``weight_map=`` raises, naming the embedding term.

Pairwise work runs in row blocks of about ``ops.pairwise.BLOCK_ELEMENTS`` entries and is recomputed in
backward (closed-form for contrastive and InfoNCE, mining under ``no_grad`` for hard triplets, per-block
autograd for batch-all / semi-hard triplets), so forward+backward memory is ``O(M·(D + B))``, never
``O(M²)``: 16,384 pixels with ``D = 128`` stay far below 1 GB. Half-precision embeddings are computed in
float32.

**Scale.** A float32 square overflows from ``|x| ~ 1.8e19``, so no square of an embedding is formed where
only it would overflow: rows are L2-normalised after dividing by a power of two, and the pair losses
are computed on rows divided by one power of two ``s`` and scaled back (``L(x; m) = s^p L(x/s; m/s^p)``),
bit for bit the unscaled result in the normal range. So the normalised losses (InfoNCE, triplet by
default, ``contrastive(normalize=True)``) give the same value at any finite norm, and the others a
finite value wherever the formula's own value is finite. Where it is not (a mean of squared distances
beyond float32), the input checks raise ``SegLossError`` saying so; without them the loss is ``+inf``
(never NaN) and its gradient stays finite (under ``torch.func``, whose plain autograd multiplies by
``s²`` on the way, it may overflow there too).

**torch.compile and torch.func.** Without caps (the default), traced code (``torch.compile``,
``fullgraph=True`` and dynamic shapes included; ``torch.func``) keeps every pixel as a row and flags the
ignored ones instead of gathering the valid ones, so no shape depends on the data. ``torch.compile``
keeps the blockwise Functions (batch-all / semi-hard triplets: checkpointed blocks), so its memory is
``O(M·(D + B))`` too. Under ``torch.func`` transforms (``grad``, ``jacrev``, ``vmap``, ...) every loss
takes plain autograd through the same blocks: any order of derivative, memory ``O(M²)``. ``vmap`` works
without caps and ``sync``; with them (a random subset of data-dependent size), and for
:class:`CenterLoss`'s update in training mode, it raises ``SegLossError``. Caps keep data-dependent
shapes (host reads) out of ``fullgraph`` compilation.

**Across processes** (``sync=True`` in a ``torch.distributed`` group; contrastive, InfoNCE and triplet):
each process samples its own pixels, keeps them as anchors and pairs them with the sampled pixels of
every process, gathered with their gradients (unequal counts and empty shards allowed). The sums and
counts over anchors are then summed over the processes, so every process returns the loss of the whole
distributed batch and, after DDP's gradient averaging, the model gets the one-process gradient (each
process's rows receive the gradient of every process's pairs that use them). Every process must call
the loss. Sampling caps (``max_per_class``, ``max_total``) apply per process.

**pytorch-metric-learning.** Its ``TripletMarginLoss`` + ``BatchHardMiner`` equals :func:`triplet_loss`
with ``mining="hard", normalize=True, average="nonzero"`` (same margin), and its ``NTXentLoss`` equals
:func:`pixel_info_nce_loss` (same temperature) when every class has the same number of pixels: it
averages over positive pairs, we over anchors of their mean over positives. Its ``ContrastiveLoss`` is a
different loss: plain (not squared) distance hinges ``max(0, d - m_pos)`` and ``max(0, m_neg - d)`` on
L2-normalised embeddings, positive and negative pairs each averaged over their non-zero terms and then
added; ours is Hadsell et al.'s squared form, averaged over all pairs. Its ``SupConLoss`` puts the other
positives in the denominator, ``-log(e^{s_ap/τ} / Σ_{k≠a} e^{s_ak/τ})``; ours (Wang et al. 2021) has
only the negatives and the positive itself there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Literal, NamedTuple, Optional, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._core.errors import SegLossError, expected, unknown_choice
from .._core.numerics import LeanFunction, compute_dtype, first_order_backward, tracing, transformed
from .._core.options import call_input, check_bool, check_choice, check_ignore_index, check_int, check_number
from .._core.pixel_weights import mask_as_ignore
from .._core.reduction import reduce
from .._core.registry import register
from .._core.state import Accumulator
from .._core.targets import check_class_indices, input_checks_enabled
from ..distributed import (
    ProcessGroup,
    all_gather,
    all_reduce_sum,
    check_process_group,
    is_distributed,
    row_start,
)
from ..ops.pairwise import Distance, joint_scale, row_blocks, safe_sqrt
from ..sampling import SamplerOptions, Strategy, _sample_rows
from .base import LossModule, keyword_options, module_for

EmbeddingReduction = Literal["mean", "sum"]
Mining = Literal["all", "hard", "semi_hard"]
Average = Literal["all", "nonzero"]
Learn = Literal["buffer", "parameter"]

_SQUARED, _COSINE = Distance("squared_euclidean"), Distance("cosine")


# --- shared steps ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class EmbeddingOptions(SamplerOptions):
    """The options every embedding loss takes: ``ignore_index``, ``reduction`` and the sampler's."""

    ignore_index: Optional[int]
    reduction: EmbeddingReduction
    mask: Optional[Tensor] = call_input()

    def checked(self) -> Dict[str, Any]:
        return {
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_choice("reduction", self.reduction, ("mean", "sum")),
            **super().checked(),
        }


class _Sample(NamedTuple):
    """The sampled rows ``x`` ``(M, D)`` in the compute dtype, their labels ``y`` ``(M,)``, which rows are
    valid pixels (``keep`` ``(M,)``, None for all; see :func:`~seglosses.sampling.sample_rows`) and the
    call's one reading of the input-check switch."""

    x: Tensor
    y: Tensor
    keep: Optional[Tensor]
    checks: bool


def _vmapped() -> bool:
    """Whether a ``torch.func.vmap`` runs (at any level of the transforms)."""
    if not transformed():
        return False
    stack = torch._C._functorch.get_interpreter_stack() or []
    return any(level.key() == torch._C._functorch.TransformType.Vmap for level in stack)


def _check_vmap(name: str, opts: EmbeddingOptions, reason: Optional[str] = None) -> None:
    """Raise under ``vmap`` where the loss cannot be batched: a sampling cap (a random, data-dependent
    subset), ``sync`` in a process group, or ``reason``."""
    if not _vmapped():
        return
    if reason is None and (opts.max_per_class is not None or opts.max_total is not None):
        reason = "max_per_class / max_total (a random subset of data-dependent size)"
    if reason is None and isinstance(opts, PoolOptions) and opts.sync and is_distributed(opts.process_group):
        reason = "sync=True (rows gathered across processes)"
    if reason is not None:
        raise SegLossError(
            f"expected no torch.func.vmap around {name} with {reason}: vmap is not supported there"
        )


def _sampled(
    embeddings: Tensor, labels: Tensor, logits: Optional[Tensor], opts: EmbeddingOptions, name: str
) -> _Sample:
    """Sample the rows (see :class:`_Sample`). Under ``torch.compile`` or a ``torch.func`` transform,
    without caps, every pixel is a row and the ignored ones are flagged, not gathered (static shapes)."""
    _check_vmap(name, opts)
    checks = input_checks_enabled()
    labels, ignore_index = _masked_labels(labels, opts.mask, opts.ignore_index)
    pixels = _sample_rows(embeddings, labels, logits, ignore_index, opts, checks=checks, masked=tracing())
    x = pixels.x
    return _Sample(x.to(compute_dtype(x)), pixels.y, pixels.keep, checks)


def _masked_labels(
    labels: Tensor, mask: Optional[Tensor], ignore_index: Optional[int]
) -> Tuple[Tensor, Optional[int]]:
    """The labels with the pixels outside ``mask`` (bool, the labels' shape) set to ``ignore_index`` (-1
    when there is none): a masked pixel is never sampled, as an ignored one."""
    if mask is None:
        return labels, ignore_index
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise expected("mask as a bool tensor (True where a pixel counts)", getattr(mask, "dtype", mask))
    if not isinstance(labels, Tensor) or mask.shape != labels.shape or mask.device != labels.device:
        got = f"shape {tuple(mask.shape)} on {mask.device}"
        raise expected(f"mask of the labels' shape {tuple(labels.shape)} on {labels.device}", got)
    folded, value, _ = mask_as_ignore(labels, mask, ignore_index, binary=False)
    return folded, value


def _check_overflow(loss: Tensor, name: str, x: Tensor) -> Tensor:
    """With the input checks on (finite embeddings), a non-finite loss can only be an overflow of the
    formula itself (squared distances of embeddings this large): raise saying so (one host read)."""
    if not bool(torch.isfinite(loss)):
        peak = float(x.detach().abs().amax()) if x.numel() else 0.0
        raise SegLossError(
            f"expected {name} to fit in {loss.dtype}, got {float(loss.detach())}: the formula overflows for "
            f"embeddings this large (|x| up to {peak:.3g}); normalize them or compute in float64"
        )
    return loss


@dataclass(frozen=True, kw_only=True, eq=False)
class PoolOptions(EmbeddingOptions):
    """Embedding options plus ``sync`` and ``process_group``: the options of the losses over pairs of
    pixels (whose pool of rows ``sync`` gathers across processes)."""

    sync: bool
    process_group: Optional[ProcessGroup]

    def checked(self) -> Dict[str, Any]:
        return {
            "sync": check_bool("sync", self.sync),
            "process_group": check_process_group(self.process_group),
            **super().checked(),
        }


class _Pool(NamedTuple):
    """The rows that this process's anchors ``x`` are paired with.

    ``x`` is None when the pool is the anchors themselves (one process, or ``sync=False``), otherwise
    the sampled rows of every process in rank order (gathered with gradient), whose row ``start + i`` is
    anchor ``i``; ``y`` are the pool's labels; ``keep`` which pool rows are valid pixels (None: all).
    """

    x: Optional[Tensor]
    y: Tensor
    start: int
    keep: Optional[Tensor] = None

    def rows(self, anchors: Tensor) -> Tensor:
        return anchors if self.x is None else self.x

    def arguments(self) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], int]:
        """``pool_x, pool_y, keep, start`` for a custom Function, ``pool_y`` None when the pool is the
        anchors (``torch.compile`` refuses a tensor passed to a Function twice); see :meth:`unpack`."""
        return self.x, None if self.x is None else self.y, self.keep, self.start

    @staticmethod
    def unpack(
        y: Tensor, x: Optional[Tensor], pool_y: Optional[Tensor], keep: Optional[Tensor], start: int
    ) -> _Pool:
        """The pool from the anchors' labels ``y`` and :meth:`arguments`."""
        return _Pool(x, y if pool_y is None else pool_y, start, keep)

    def scaled(self, scale: Tensor) -> _Pool:
        """The pool with its rows divided by ``scale``."""
        return self if self.x is None else self._replace(x=self.x / scale)

    def counts(self, anchors: int) -> Tuple[Union[int, Tensor], Union[int, Tensor]]:
        """Valid pixels among the ``anchors`` anchors and the pool rows (ints, or tensors with ``keep``)."""
        if self.keep is None:
            return anchors, self.y.shape[0]
        return self.keep[self.start : self.start + anchors].sum(), self.keep.sum()


def _pool(sample: _Sample, opts: PoolOptions) -> _Pool:
    """Every process's sampled rows with ``sync`` in a process group (SPEC section 5, "Across
    processes"); else the anchors themselves. Every process must call the loss, an empty one too."""
    group = opts.process_group
    if not (opts.sync and is_distributed(group)):
        return _Pool(None, sample.y, 0, sample.keep)
    keep = None if sample.keep is None else all_gather(sample.keep.to(torch.uint8), group).bool()
    return _Pool(all_gather(sample.x, group), all_gather(sample.y, group), row_start(sample.x, group), keep)


def _pooled_reduce(
    total: Tensor,
    count: Union[Tensor, float],
    pool: _Pool,
    opts: PoolOptions,
    scale: Optional[Tensor] = None,
) -> Tensor:
    """``reduce`` of this process's anchors' sum ``total`` and ``count`` (what ``mean`` divides by), times
    ``scale`` when ``total`` is the sum divided by it (see :func:`_homogeneous_scale`).

    With a gathered pool both are summed over the processes first: every process returns the loss of
    the whole distributed batch, and the sum's backward (summed over ranks) gives each local anchor
    ``W`` times its one-process gradient, which DDP's averaging undoes.
    """
    count = torch.as_tensor(count, device=total.device, dtype=total.dtype)
    if pool.x is not None:
        total, count = all_reduce_sum(torch.stack([total, count.detach()]), opts.process_group).unbind(0)
    loss = reduce(total, opts.reduction, count)
    return loss if scale is None else loss * scale


def _same_label(y: Tensor, pool_y: Tensor, rows: slice) -> Tensor:
    """``(B, P)`` bool: anchor ``rows.start + i`` and pool row ``j`` share a label (self included)."""
    return y[rows, None] == pool_y[None, :]


def _pairs(y: Tensor, pool: _Pool, rows: slice) -> Tuple[Tensor, Tensor]:
    """``(B, P)`` masks of a block of anchors: positives (same label, not self) and negatives (another
    label), both among valid pixels only."""
    positive = _same_label(y, pool.y, rows)
    negative = ~positive
    positive[_diagonal(rows, pool.start, y.device)] = False  # a pixel is never its own positive
    if pool.keep is not None:
        kept = pool.keep[None, :] & pool.keep[pool.start + rows.start : pool.start + rows.stop, None]
        positive, negative = positive & kept, negative & kept
    return positive, negative


def _diagonal(rows: slice, start: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Index pairs ``(i, start + rows.start + i)`` of the anchors themselves in a ``(B, P)`` block."""
    anchors = torch.arange(rows.start, rows.stop, device=device)
    return anchors - rows.start, anchors + start


def _homogeneous_scale(x: Tensor, pool: _Pool) -> Tensor:
    """A power of two ``s >= 1`` (0-d, detached) with every ``|x / s| < 2``.

    The pair losses are homogeneous, ``L(x; m) = s^p L(x / s; m / s^p)`` (``p`` the power of the distance),
    so they are computed on ``x / s`` and scaled back: exact in the normal range (powers of two), and no
    square of an embedding overflows (from ``|x| ~ 1.8e19`` in float32) unless the loss itself does.
    ``s >= 1`` keeps ``m / s^p`` finite. Their sums are kept as ``Σ / s`` and multiplied by ``s`` after the
    mean (:func:`_pooled_reduce`): a sum over many pairs may exceed the dtype where their mean does not,
    and the custom backwards never form ``s²``.
    """
    rows = [x] if pool.x is None else [x, pool.x]
    return joint_scale(*rows).clamp_min(1.0)


def _in_place() -> bool:
    """Whether block buffers may be overwritten: without a graph (the custom Functions' forward and
    backward), not under autograd or ``torch.func`` (the plain path)."""
    return not (torch.is_grad_enabled() or transformed())


def _sum_blocks(parts: Iterable[Tuple[Tensor, ...]], like: Tensor, count: int) -> List[Tensor]:
    """The sums of ``count`` per-block parts, in block order (0-d tensors of ``like``'s dtype).

    Without a graph (the custom Functions' forward) into tensors allocated before the first block, in
    place: a small tensor allocated between blocks and kept would pin the freed blocks in the C
    allocator's heap, and resident memory would grow by a block per step. With autograd or under
    ``torch.func`` (``vmap``) out of place.
    """
    totals, inplace = [like.new_zeros(()) for _ in range(count)], _in_place()
    for part in parts:
        if inplace:
            for total, value in zip(totals, part):
                total += value
        else:
            totals = [total + value for total, value in zip(totals, part)]
        del part  # before the next block is computed
    return totals


# --- contrastive -------------------------------------------------------------------------------------


class _ContrastiveSum(LeanFunction):
    """``½ Σ_a Σ_{j≠a} [y_aj d_aj² + (1 - y_aj) max(0, m - d_aj)²]`` over anchors ``x`` against the pool
    (``x`` itself when ``pool_x`` is None: the sum over unordered pairs), blockwise: see
    :func:`_contrastive_sum`, which also serves ``torch.func`` transforms.

    Backward recomputes each block: with ``G_aj = ∂f/∂(d_aj²)`` (1 for positives, ``-max(0, m-d)/d`` for
    negatives, 0 at ``d = 0``) and ``∂d²_aj/∂x_a = 2(x_a - x_j)``, an anchor receives
    ``Σ_j G_aj x_a - Σ_j G_aj x_j`` and a pool row ``Σ_a G_aj x_j - Σ_a G_aj x_a``; when the pool is the
    anchors the two are equal, so one matrix product per block gives both. ``G`` is scale-free, so it is
    taken from the rows divided by :func:`_homogeneous_scale` (no square overflows).
    """

    @staticmethod
    def forward(
        x: Tensor,
        y: Tensor,
        pool_x: Optional[Tensor],
        pool_y: Tensor,
        keep: Optional[Tensor],
        start: int,
        margin: float,
        scale: Tensor,
    ) -> Tensor:
        return _contrastive_sum(x, y, _Pool.unpack(y, pool_x, pool_y, keep, start), margin, scale)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
        x, y, pool_x, pool_y, keep, start, margin, scale = inputs
        ctx.save_for_backward(x, y, pool_x, pool_y, keep, scale)
        ctx.start, ctx.margin = start, margin

    @staticmethod
    @first_order_backward("contrastive_loss")
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, y, pool_x, pool_y, keep, scale = ctx.saved_tensors
        pool = _Pool.unpack(y, pool_x, pool_y, keep, ctx.start)
        scaled_x, scaled_pool, margin = x / scale, pool.scaled(scale), ctx.margin / scale
        grad = grad / scale  # the output is the sum divided by s
        rows_of_pool = pool.rows(x)
        grad_x = torch.empty_like(x)
        grad_pool = None if pool_x is None else torch.zeros_like(pool_x)
        for rows in row_blocks(x.shape[0], pool.y.shape[0]):
            distance, same, counted = _contrastive_block(scaled_x, y, scaled_pool, rows)
            distance.sqrt_()
            coeff = (margin - distance).clamp_min_(0).div_(distance).neg_()  # -max(0, m - d) / d
            coeff.masked_fill_(distance == 0, 0.0).masked_fill_(same, 1.0)
            coeff[_diagonal(rows, ctx.start, x.device)] = 0.0
            if counted is not None:
                coeff.masked_fill_(~counted, 0.0)
            grad_x[rows] = coeff.sum(1, keepdim=True) * x[rows] - coeff @ rows_of_pool
            if grad_pool is not None:
                grad_pool += coeff.sum(0)[:, None] * rows_of_pool - coeff.T @ x[rows]
        if grad_pool is None:  # the anchors are the pool: both ends of every pair
            return grad_x.mul_(2 * grad), None, None, None, None, None, None, None
        return grad_x.mul_(grad), None, grad_pool.mul_(grad), None, None, None, None, None


def _contrastive_sum(x: Tensor, y: Tensor, pool: _Pool, margin: float, scale: Tensor) -> Tensor:
    """The forward of :class:`_ContrastiveSum`; with autograd on (under ``torch.func``, whose path it also
    is) out of place. On rows divided by ``s`` (:func:`_homogeneous_scale`)
    with margin ``m / s``, then times ``s²`` and divided by ``s``: the sum over pairs divided by ``s``."""
    inplace = _in_place()
    scaled_x, scaled_pool, scaled_margin = x / scale, pool.scaled(scale), margin / scale

    def blocks() -> Iterator[Tuple[Tensor]]:
        for rows in row_blocks(x.shape[0], pool.y.shape[0]):
            squared, same, counted = _contrastive_block(scaled_x, y, scaled_pool, rows, inplace)
            if inplace:  # one (B, P) buffer besides the squares
                hinge = squared.sqrt().neg_().add_(scaled_margin).clamp_min_(0).square_()
            else:
                hinge = (scaled_margin - safe_sqrt(squared)).clamp_min(0).square()
            terms = torch.where(same, squared, hinge)
            yield ((terms if counted is None else torch.where(counted, terms, 0.0)).sum(),)

    (total,) = _sum_blocks(blocks(), x, 1)
    return total / 2 * scale  # every unordered pair was counted twice, once from each end


def _contrastive_block(
    x: Tensor, y: Tensor, pool: _Pool, rows: slice, inplace: bool = True
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Squared distances (0 at the anchors themselves) of rows already divided by a power of two, the
    same-label mask and which pairs are among valid pixels (None: all) of a block of anchors."""
    squared = _SQUARED.block(x[rows], pool.rows(x), rescale=False)
    diagonal = _diagonal(rows, pool.start, x.device)
    if inplace:
        squared[diagonal] = 0.0
    else:
        squared = squared.index_put(diagonal, squared.new_zeros(()))
    counted = None
    if pool.keep is not None:
        counted = pool.keep[None, :] & pool.keep[pool.start + rows.start : pool.start + rows.stop, None]
    return squared, _same_label(y, pool.y, rows), counted


@dataclass(frozen=True, kw_only=True, eq=False)
class ContrastiveOptions(PoolOptions):
    """The options of :func:`contrastive_loss` (shared with its module)."""

    margin: float
    normalize: bool

    def checked(self) -> Dict[str, Any]:
        return {
            "margin": check_number("margin", self.margin, low=0.0),
            "normalize": check_bool("normalize", self.normalize),
            **super().checked(),
        }


def _contrastive(
    embeddings: Tensor, labels: Tensor, logits: Optional[Tensor], opts: ContrastiveOptions
) -> Tensor:
    """:func:`contrastive_loss` on checked options."""
    sample = _sampled(embeddings, labels, logits, opts, "contrastive_loss")
    x = Distance("euclidean", opts.normalize).prepare(sample.x)
    pool = _pool(sample._replace(x=x), opts)
    scale = _homogeneous_scale(x, pool)
    if transformed():  # torch.func: plain autograd through the same blocks, any order of derivative
        total = _contrastive_sum(x, sample.y, pool, opts.margin, scale)
    else:
        total = _ContrastiveSum.apply(x, sample.y, *pool.arguments(), opts.margin, scale)
    anchors, rows = pool.counts(x.shape[0])
    pairs = anchors * (rows - 1) / 2  # summed over the processes: M(M - 1) / 2
    loss = _pooled_reduce(total, pairs, pool, opts, scale)
    return _check_overflow(loss, "contrastive_loss", x) if sample.checks and not opts.normalize else loss


def contrastive_loss(
    embeddings: Tensor,
    labels: Tensor,
    logits: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    margin: float = 1.0,
    normalize: bool = False,
    ignore_index: Optional[int] = None,
    reduction: EmbeddingReduction = "mean",
    strategy: Strategy = "random",
    max_per_class: Optional[int] = None,
    max_total: Optional[int] = None,
    hard_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Pairwise contrastive loss (Hadsell, Chopra and LeCun 2006) over sampled pixels.

    ``L = 1/P Σ_{i<j} [y_ij d_ij² + (1 - y_ij) max(0, m - d_ij)²]`` with ``d`` the Euclidean distance of
    the (optionally L2-normalised) embeddings and ``y_ij = 1`` for equal labels. The sum runs over the
    ``P = M(M-1)/2`` unordered pairs of the ``M`` sampled pixels of the whole batch, pairs across images
    included; there is no ½ factor. ``mean`` divides by ``P``; ``sum`` is the sum over pairs; fewer
    than two pixels give 0. Memory ``O(M·(D + B))``: blocks of pairs are recomputed in backward.

    Differs from pytorch-metric-learning's ``ContrastiveLoss`` (see the module docstring).

    Args:
        embeddings: ``(N, D, *S)`` or flat ``(M, D)``.
        labels: integer ``(N, *S')`` (resized to ``S`` by nearest neighbour) or ``(M,)``.
        logits: segmentation logits for the ``hard`` / ``mix`` sampler (see
            :func:`~seglosses.sampling.sample_pixels`, which also documents the sampler's options).
        margin: ``m >= 0``, the distance beyond which negatives cost nothing.
        normalize: L2-normalise embeddings first.
        mask: bool, the labels' shape: True where a pixel counts; the others are never sampled
            (the general form of ``ignore_index``).
        ignore_index: label value never sampled.
        reduction: ``mean`` / ``sum`` -> scalar (``none`` raises).
        sync: in a ``torch.distributed`` group, pair this process's pixels with the sampled pixels of
            every process (gathered with their gradients; see the module docstring).
        process_group: the group for ``sync`` (default: the default group).

    Raises:
        SegLossError: bad shapes, dtypes or options; non-finite embeddings, or a loss beyond the dtype's
            range (embeddings too large for the formula; see the module docstring), with the input
            checks on; ``vmap`` with caps or ``sync``.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.5]])
        >>> contrastive_loss(x, torch.tensor([0, 0, 1]), margin=1.0)  # (25 + 0.5² + 0) / 3
        tensor(8.4167)
    """
    opts = ContrastiveOptions(
        margin=margin, normalize=normalize, mask=mask, ignore_index=ignore_index, reduction=reduction,
        strategy=strategy, max_per_class=max_per_class, max_total=max_total, hard_fraction=hard_fraction,
        generator=generator, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _contrastive(embeddings, labels, logits, opts)


# --- InfoNCE -----------------------------------------------------------------------------------------


class _InfoNCESum(LeanFunction):
    """``Σ_a ℓ_a`` over anchors with a positive, ``ℓ_a = 1/|P_a| Σ_p softplus(L_a - s_ap)``, blockwise, and
    the number of those anchors (see :func:`_info_nce_sum`, which also serves ``torch.func`` transforms).

    ``s = x poolᵀ / τ`` (the pool is ``x`` itself when ``pool_x`` is None) and ``L_a = log Σ_n e^{s_an}``
    over the anchor's negatives (``-inf`` without any), so
    ``softplus(L_a - s_ap) = -log(e^{s_ap} / (e^{s_ap} + Σ_n e^{s_an}))``. Backward recomputes each block:
    ``∂ℓ_a/∂s_ap = -σ(L_a - s_ap) / |P_a|`` and ``∂ℓ_a/∂s_an = w_a e^{s_an - L_a}`` with
    ``w_a = Σ_p σ(L_a - s_ap) / |P_a|``; then ``∂/∂x = G pool / τ`` and ``∂/∂pool = Gᵀ x / τ``.
    """

    @staticmethod
    def forward(
        x: Tensor,
        y: Tensor,
        pool_x: Optional[Tensor],
        pool_y: Tensor,
        keep: Optional[Tensor],
        start: int,
        temperature: float,
    ) -> Tuple[Tensor, Tensor]:
        return _info_nce_sum(x, y, _Pool.unpack(y, pool_x, pool_y, keep, start), temperature)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[Tensor, Tensor]) -> None:
        x, y, pool_x, pool_y, keep, start, temperature = inputs
        ctx.save_for_backward(x, y, pool_x, pool_y, keep)
        ctx.start, ctx.temperature = start, temperature
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    @first_order_backward("pixel_info_nce_loss")
    def backward(ctx: Any, grad: Tensor, _: Any) -> Tuple[Optional[Tensor], ...]:
        x, y, pool_x, pool_y, keep = ctx.saved_tensors
        pool = _Pool.unpack(y, pool_x, pool_y, keep, ctx.start)
        rows_of_pool = pool.rows(x)
        grad_x = torch.zeros_like(x)
        grad_pool = grad_x if pool_x is None else torch.zeros_like(pool_x)  # the anchors are the pool
        for rows in row_blocks(x.shape[0], pool.y.shape[0]):
            logits, positive, negative, lse, count = _info_nce_block(x, y, pool, rows, ctx.temperature)
            gap = logits.neg_().add_(lse[:, None])  # L_a - s_ab, in the logits' buffer
            pull = torch.sigmoid(gap).masked_fill_(~positive, 0.0).div_(count[:, None])
            push = gap.neg_().exp_().masked_fill_(~negative, 0.0).mul_(pull.sum(1, keepdim=True))
            coeff = push.sub_(pull)
            grad_x[rows] += coeff @ rows_of_pool
            grad_pool += coeff.T @ x[rows]
        scale = grad / ctx.temperature
        pool_out = None if pool_x is None else grad_pool.mul_(scale)  # else it is grad_x itself
        return grad_x.mul_(scale), None, pool_out, None, None, None, None


def _info_nce_sum(x: Tensor, y: Tensor, pool: _Pool, temperature: float) -> Tuple[Tensor, Tensor]:
    """The forward of :class:`_InfoNCESum`; with autograd on (under ``torch.func``, whose path it also is)
    out of place. Returns ``Σ_a ℓ_a`` and the number of anchors with a positive."""
    inplace = _in_place()

    def blocks() -> Iterator[Tuple[Tensor, Tensor]]:
        for rows in row_blocks(x.shape[0], pool.y.shape[0]):
            logits, positive, _, lse, count = _info_nce_block(x, y, pool, rows, temperature)
            if inplace:  # in the logits' buffer
                terms = F.softplus(logits.neg_().add_(lse[:, None])).masked_fill_(~positive, 0.0)
            else:
                terms = torch.where(positive, F.softplus(lse[:, None] - logits), 0.0)
            yield (terms.sum(1) / count).sum(), positive.any(1).sum()

    total, anchors = _sum_blocks(blocks(), x, 2)
    return total, anchors.detach()


def _info_nce_block(
    x: Tensor, y: Tensor, pool: _Pool, rows: slice, temperature: float
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``s / τ``, positive and negative masks, ``L_a`` and ``max(|P_a|, 1)`` of a block of anchors.

    ``L_a`` of an anchor without negatives is ``-inf``; with autograd on, through a ``logsumexp`` of zeros,
    so that its gradient is 0 rather than ``exp(-inf + inf) = NaN``.
    """
    logits = _COSINE.similarity(x[rows], pool.rows(x)).div_(temperature)
    positive, negative = _pairs(y, pool, rows)
    masked = logits.masked_fill(~negative, -torch.inf)
    if _in_place():  # no gradient to keep finite (the Function's forward and backward)
        lse = torch.logsumexp(masked, dim=1)  # over the negatives
    else:
        some = negative.any(1, keepdim=True)
        lse = torch.logsumexp(masked.masked_fill_(~some, 0.0), dim=1).masked_fill(~some[:, 0], -torch.inf)
    count = positive.sum(1).clamp_min(1).to(x.dtype)
    return logits, positive, negative, lse, count


@dataclass(frozen=True, kw_only=True, eq=False)
class InfoNCEOptions(PoolOptions):
    """The options of :func:`pixel_info_nce_loss` (shared with its module)."""

    temperature: float

    def checked(self) -> Dict[str, Any]:
        temperature = check_number("temperature", self.temperature, low=0.0, low_open=True)
        return {"temperature": temperature, **super().checked()}


def _info_nce(embeddings: Tensor, labels: Tensor, logits: Optional[Tensor], opts: InfoNCEOptions) -> Tensor:
    """:func:`pixel_info_nce_loss` on checked options."""
    sample = _sampled(embeddings, labels, logits, opts, "pixel_info_nce_loss")
    x = _COSINE.prepare(sample.x)
    pool = _pool(sample._replace(x=x), opts)
    if transformed():  # torch.func: plain autograd through the same blocks, any order of derivative
        total, anchors = _info_nce_sum(x, sample.y, pool, opts.temperature)
    else:
        total, anchors = _InfoNCESum.apply(x, sample.y, *pool.arguments(), opts.temperature)
    return _pooled_reduce(total, anchors, pool, opts)  # over the anchors with a positive


def pixel_info_nce_loss(
    embeddings: Tensor,
    labels: Tensor,
    logits: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    temperature: float = 0.1,
    ignore_index: Optional[int] = None,
    reduction: EmbeddingReduction = "mean",
    strategy: Strategy = "random",
    max_per_class: Optional[int] = None,
    max_total: Optional[int] = None,
    hard_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Supervised pixel-wise InfoNCE (Wang et al. 2021, "Exploring cross-image pixel contrast").

    With L2-normalised embeddings and ``s = x·x'``, each anchor ``a`` with at least one positive (another
    sampled pixel of its label) has
    ``ℓ_a = 1/|P_a| Σ_{p∈P_a} -log(e^{s_ap/τ} / (e^{s_ap/τ} + Σ_{n∈N_a} e^{s_an/τ}))`` over its negatives
    ``N_a`` (pixels of other labels, across images too); without negatives ``ℓ_a = 0``. ``mean`` is the
    mean of ``ℓ_a`` over the anchors with a positive; ``sum`` their sum; no such anchor gives 0. Computed
    in log space (``softplus(logsumexp_n s_an/τ - s_ap/τ)``) and blockwise with a closed-form backward,
    memory ``O(M·(D + B))``.

    Equals pytorch-metric-learning's ``NTXentLoss`` only when every class has the same pixel count; differs
    from its ``SupConLoss`` (see the module docstring).

    Args:
        embeddings: ``(N, D, *S)`` or flat ``(M, D)``.
        labels: integer ``(N, *S')`` (resized to ``S`` by nearest neighbour) or ``(M,)``.
        logits: segmentation logits for the ``hard`` / ``mix`` sampler (see
            :func:`~seglosses.sampling.sample_pixels` for the sampler's options).
        temperature: ``τ > 0``.
        mask: bool, the labels' shape: True where a pixel counts; the others are never sampled
            (the general form of ``ignore_index``).
        ignore_index: label value never sampled.
        reduction: ``mean`` / ``sum`` -> scalar (``none`` raises).
        sync: in a ``torch.distributed`` group, pair this process's pixels with the sampled pixels of
            every process (gathered with their gradients; see the module docstring).
        process_group: the group for ``sync`` (default: the default group).

    Raises:
        SegLossError: bad shapes, dtypes or options; non-finite embeddings (with the input checks on);
            ``vmap`` with caps or ``sync``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> loss = pixel_info_nce_loss(x, torch.tensor([0, 0, 1]), temperature=1.0)
        >>> torch.allclose(loss, torch.log1p(torch.exp(torch.tensor(-1.0))))  # -log(e / (e + 1))
        True
    """
    opts = InfoNCEOptions(
        temperature=temperature, mask=mask, ignore_index=ignore_index, reduction=reduction, strategy=strategy,
        max_per_class=max_per_class, max_total=max_total, hard_fraction=hard_fraction,
        generator=generator, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _info_nce(embeddings, labels, logits, opts)


# --- triplet -----------------------------------------------------------------------------------------


def _hardest_triplets(x: Tensor, y: Tensor, pool: _Pool, scale: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per anchor: its farthest positive and nearest negative in the pool, and whether it has both.

    Returns positive / negative indices into the pool ``(M,)`` (arbitrary where the anchor has no
    triplet) and the bool ``(M,)`` of anchors with a positive and a negative (NaN distances count as
    both, so that NaN stays in). Mined without gradient on squared distances (same order as plain ones)
    of the rows divided by :func:`_homogeneous_scale` (no square overflows), a block of anchors at a
    time, into preallocated outputs: small tensors kept alive between blocks would pin the freed blocks
    in the C allocator's heap, and resident memory would grow by a block per step. Under ``torch.compile``
    or ``torch.func`` the block results are concatenated instead (no ``out=`` there).
    """
    m = x.shape[0]
    preallocated = not tracing()
    far, near = x.new_empty(m), x.new_empty(m)
    positives, negatives = x.new_empty(m, dtype=torch.long), x.new_empty(m, dtype=torch.long)
    found: List[Tuple[Tensor, Tensor, Tensor, Tensor]] = []
    with torch.no_grad():
        scaled_x, scaled_pool = x.detach() / scale, pool.scaled(scale)
        pool_rows = scaled_pool.rows(scaled_x).detach()
        for rows in row_blocks(m, pool.y.shape[0]):
            squared = _SQUARED.block(scaled_x[rows], pool_rows, rescale=False)
            positive, negative = _pairs(y, pool, rows)
            if preallocated:
                torch.min(squared.masked_fill(~negative, torch.inf), 1, out=(near[rows], negatives[rows]))
                torch.max(squared.masked_fill_(~positive, -torch.inf), 1, out=(far[rows], positives[rows]))
            else:
                nearest = torch.min(squared.masked_fill(~negative, torch.inf), 1)
                farthest = torch.max(squared.masked_fill(~positive, -torch.inf), 1)
                found.append((nearest.values, nearest.indices, farthest.values, farthest.indices))
    if found:
        near, negatives, far, positives = (torch.cat(parts) for parts in zip(*found))
    return positives, negatives, (far != -torch.inf) & (near != torch.inf)


def _window_block(
    x: Tensor,
    y: Tensor,
    pool: _Pool,
    rows: slice,
    distance: Distance,
    margin: Union[float, Tensor],
    semi_hard: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Loss sum, mined count and non-zero count of every triplet of a block of anchors, by sorting.

    For an anchor, sort its negatives' distances ascending, ``e_1 <= e_2 <= ...``, with prefix sums
    ``E_k``. A positive at ``d`` meets the negatives with ``e < d + m`` (batch-all) or ``d < e <= d + m``
    (semi-hard), a run ``lo <= k < hi`` found by ``searchsorted``, whose losses sum to
    ``(hi - lo)(d + m) - (E_hi - E_lo)``. So the ``O(M³)`` triplets cost ``O(M² log M)`` time. The rows
    are already divided by a power of two (:func:`_homogeneous_scale`, ``margin`` with them).
    """
    d = distance.block(x[rows], pool.rows(x), rescale=False)
    plain = d.detach()
    positive, negative = _pairs(y, pool, rows)
    negatives, order = torch.sort(plain.masked_fill(~negative, torch.inf), dim=1)  # negatives first
    count = negative.sum(1, keepdim=True)
    ranked = d.gather(1, order).masked_fill(torch.arange(d.shape[1], device=d.device) >= count, 0.0)
    prefix = F.pad(torch.cumsum(ranked, 1), (1, 0))
    shifted = plain + margin
    strict = torch.searchsorted(negatives, shifted)  # negatives with e < d + m
    if semi_hard:
        lo = torch.searchsorted(negatives, plain, right=True)  # e <= d
        hi = torch.searchsorted(negatives, shifted, right=True)  # e <= d + m
        mined = (hi - lo).clamp_min(0)
    else:
        lo, hi, mined = torch.zeros_like(strict), strict, count.expand_as(strict)
    runs = hi - lo  # lo <= hi since m >= 0
    values = runs * (d + margin) - (prefix.gather(1, hi) - prefix.gather(1, lo))
    total = torch.where(positive, values, 0.0).sum()
    nonzero = torch.where(positive, (strict - lo).clamp_min(0), 0).sum().to(total.dtype)
    return total, torch.where(positive, mined, 0).sum().to(total.dtype), nonzero


class _TripletWindowSum(LeanFunction):
    """Batch-all or semi-hard triplets over blocks of anchors: loss sum, mined and non-zero counts.

    Anchors are the rows of ``x``; positives and negatives come from the pool (``x`` itself when
    ``pool_x`` is None). Forward runs :func:`_window_sum` without a graph; backward recomputes each
    block with autograd and adds its gradient, so no block (nor any per-block graph node) outlives its
    step. Both work on the rows divided by ``s`` (:func:`_homogeneous_scale`), margin ``m / s^p``
    (``p = 2`` for squared distances, else 1); the output is the sum divided by ``s``, ``s^(p-1)`` times
    theirs, and the gradient ``s^(p-2)`` times theirs.
    """

    @staticmethod
    def forward(
        x: Tensor,
        y: Tensor,
        pool_x: Optional[Tensor],
        pool_y: Tensor,
        keep: Optional[Tensor],
        start: int,
        options: Tuple[Distance, float, bool],
        scale: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        pool = _Pool.unpack(y, pool_x, pool_y, keep, start)
        total, mined, nonzero = _window_sum(x, y, pool, options, scale)
        return total, mined.clone(), nonzero.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[Tensor, Tensor, Tensor]) -> None:
        x, y, pool_x, pool_y, keep, start, options, scale = inputs
        ctx.save_for_backward(x, y, pool_x, pool_y, keep, scale)
        ctx.start, ctx.options = start, options
        ctx.mark_non_differentiable(output[1], output[2])

    @staticmethod
    @first_order_backward("triplet_loss")
    def backward(ctx: Any, grad: Tensor, *_: Any) -> Tuple[Optional[Tensor], ...]:
        x, y, pool_x, pool_y, keep, scale = ctx.saved_tensors
        distance, margin, semi_hard = ctx.options
        pool = _Pool.unpack(y, pool_x, pool_y, keep, ctx.start)
        margin = _scaled_margin(margin, scale, distance)
        leaf = (x / scale).requires_grad_()
        leaves = [leaf] if pool_x is None else [leaf, (pool_x / scale).requires_grad_()]
        pool = pool._replace(x=None if pool_x is None else leaves[1])
        grads = [torch.zeros_like(t) for t in leaves]
        for rows in row_blocks(x.shape[0], 4 * pool.y.shape[0]):
            with torch.enable_grad():
                total = _window_block(leaf, y, pool, rows, distance, margin, semi_hard)[0]
                for into, part in zip(grads, torch.autograd.grad(total, leaves)):  # both rows and pool used
                    into += part
        factor = grad if distance.squared else grad / scale  # s^(p-2) times the gradient on rows x / s
        grad_pool = None if pool_x is None else grads[1].mul_(factor)
        return grads[0].mul_(factor), None, grad_pool, None, None, None, None, None


def _scaled_margin(margin: float, scale: Tensor, distance: Distance) -> Tensor:
    """``m / s^p``: the margin for rows divided by ``s``."""
    scaled = margin / scale
    return scaled / scale if distance.squared else scaled


def _window_sum(
    x: Tensor,
    y: Tensor,
    pool: _Pool,
    options: Tuple[Distance, float, bool],
    scale: Tensor,
    *,
    checkpointed: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The forward of :class:`_TripletWindowSum`, differentiable by autograd too: the path of
    ``torch.func`` transforms and, with each block checkpointed (recomputed in backward, so that memory
    stays ``O(M·(D + B))``), of ``torch.compile``, which cannot trace the Function's backward. Returns the
    loss sum divided by ``s`` and the mined and non-zero counts."""
    distance, margin, semi_hard = options
    scaled_x, scaled_pool = x / scale, pool.scaled(scale)
    scaled_margin = _scaled_margin(margin, scale, distance)

    def blocks() -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        for rows in row_blocks(x.shape[0], 4 * pool.y.shape[0]):  # a block holds ~10 (B, P) tensors
            arguments = (scaled_x, y, scaled_pool, rows, distance, scaled_margin, semi_hard)
            if checkpointed:
                yield checkpoint(_window_block, *arguments, use_reentrant=False)
            else:
                yield _window_block(*arguments)

    total, mined, nonzero = _sum_blocks(blocks(), x, 3)  # loss, mined, non-zero
    total = total * scale if distance.squared else total  # s^(p-1)
    return total, mined.detach(), nonzero.detach()


@dataclass(frozen=True, kw_only=True, eq=False)
class TripletOptions(PoolOptions):
    """The options of :func:`triplet_loss` (shared with its module)."""

    margin: float
    mining: Mining
    squared: bool
    normalize: bool
    average: Average

    def checked(self) -> Dict[str, Any]:
        return {
            "margin": check_number("margin", self.margin, low=0.0),
            "mining": check_choice("mining", self.mining, ("all", "hard", "semi_hard")),
            "squared": check_bool("squared", self.squared),
            "normalize": check_bool("normalize", self.normalize),
            "average": check_choice("average", self.average, ("all", "nonzero")),
            **super().checked(),
        }


def _triplet(embeddings: Tensor, labels: Tensor, logits: Optional[Tensor], opts: TripletOptions) -> Tensor:
    """:func:`triplet_loss` on checked options."""
    sample = _sampled(embeddings, labels, logits, opts, "triplet_loss")
    distance = Distance("squared_euclidean" if opts.squared else "euclidean", opts.normalize)
    x = distance.prepare(sample.x)
    pool = _pool(sample._replace(x=x), opts)
    options, scale = (distance, opts.margin, opts.mining == "semi_hard"), _homogeneous_scale(x, pool)
    if opts.mining == "hard":
        total, mined, nonzero = _hard_sum(x, sample.y, pool, distance, opts.margin, scale)
    elif tracing():  # torch.func (any order of derivative) or torch.compile: autograd through the blocks
        total, mined, nonzero = _window_sum(x, sample.y, pool, options, scale, checkpointed=not transformed())
    else:
        total, mined, nonzero = _TripletWindowSum.apply(x, sample.y, *pool.arguments(), options, scale)
    loss = _pooled_reduce(total, nonzero if opts.average == "nonzero" else mined, pool, opts, scale)
    return _check_overflow(loss, "triplet_loss", x) if sample.checks and not opts.normalize else loss


def triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    logits: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    margin: float = 0.2,
    mining: Mining = "hard",
    squared: bool = False,
    normalize: bool = True,
    average: Average = "all",
    ignore_index: Optional[int] = None,
    reduction: EmbeddingReduction = "mean",
    strategy: Strategy = "random",
    max_per_class: Optional[int] = None,
    max_total: Optional[int] = None,
    hard_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Triplet margin loss ``max(0, d(a,p) - d(a,n) + m)`` over mined triplets of sampled pixels.

    ``d`` is the Euclidean distance (``squared=True``: its square) of the embeddings, L2-normalised first
    by default. A triplet is an anchor, a positive (another pixel of its label) and a negative (a pixel of
    another label), across images too. ``mining``:

    * ``hard`` (batch-hard, Hermans et al. 2017): per anchor its farthest positive and nearest negative;
      anchors without a positive or a negative are skipped. Memory ``O(M·(D + B))``.
    * ``all``: every triplet.
    * ``semi_hard``: every triplet with ``d(a,p) < d(a,n) <= d(a,p) + m`` (as pytorch-metric-learning's
      semi-hard miner, not FaceNet's one negative per pair).

    ``all`` and ``semi_hard`` range over ``O(M³)`` triplets; they are never enumerated but summed per
    anchor over sorted negative distances, in ``O(M² log M)`` time. ``average="all"``: ``mean`` divides
    by the number of mined triplets; ``"nonzero"``: by those with loss > 0. ``sum`` is the sum over mined
    triplets. No mined (or no non-zero) triplet gives 0.

    Equals pytorch-metric-learning's ``TripletMarginLoss`` + ``BatchHardMiner`` with ``mining="hard"``,
    ``normalize=True``, ``average="nonzero"`` and the same margin (its default margin is 0.05, ours 0.2).

    Args:
        embeddings: ``(N, D, *S)`` or flat ``(M, D)``.
        labels: integer ``(N, *S')`` (resized to ``S`` by nearest neighbour) or ``(M,)``.
        logits: segmentation logits for the ``hard`` / ``mix`` sampler (see
            :func:`~seglosses.sampling.sample_pixels` for the sampler's options).
        margin: ``m >= 0``.
        mining: ``hard``, ``all`` or ``semi_hard``.
        squared: use ``d²`` instead of ``d``.
        normalize: L2-normalise embeddings first.
        average: ``all`` or ``nonzero`` (what ``mean`` divides by).
        mask: bool, the labels' shape: True where a pixel counts; the others are never sampled
            (the general form of ``ignore_index``).
        ignore_index: label value never sampled.
        reduction: ``mean`` / ``sum`` -> scalar (``none`` raises).
        sync: in a ``torch.distributed`` group, pair this process's pixels with the sampled pixels of
            every process (gathered with their gradients; see the module docstring).
        process_group: the group for ``sync`` (default: the default group).

    Raises:
        SegLossError: bad shapes, dtypes or options; non-finite embeddings, or a loss beyond the dtype's
            range (embeddings too large for the formula; see the module docstring), with the input
            checks on; ``vmap`` with caps or ``sync``.

    Example:
        >>> x = torch.tensor([[0.0], [2.0], [3.0]])  # two mined triplets, (0, 1, 2) and (1, 0, 2)
        >>> y = torch.tensor([0, 0, 1])
        >>> triplet_loss(x, y, margin=1.0, normalize=False, mining="all")  # (max(0, 2-3+1) + (2-1+1)) / 2
        tensor(1.)
        >>> triplet_loss(x, y, margin=1.0, normalize=False, mining="all", average="nonzero")
        tensor(2.)
    """
    opts = TripletOptions(
        margin=margin, mining=mining, squared=squared, normalize=normalize, average=average,
        mask=mask, ignore_index=ignore_index, reduction=reduction, strategy=strategy,
        max_per_class=max_per_class,
        max_total=max_total, hard_fraction=hard_fraction, generator=generator, sync=sync,
        process_group=process_group,
    )  # fmt: skip
    return _triplet(embeddings, labels, logits, opts)


def _hard_sum(
    x: Tensor, y: Tensor, pool: _Pool, distance: Distance, margin: float, scale: Tensor
) -> Tuple[Tensor, Union[int, Tensor], Tensor]:
    """Loss sum divided by ``scale``, mined count and non-zero count of the batch-hard triplets (plain
    autograd)."""
    positives, negatives, mined = _hardest_triplets(x, y, pool, scale)
    pool_rows = pool.rows(x)
    if tracing():  # shapes that do not depend on the data: every anchor, those without a triplet masked
        gap = distance.gap(x, pool_rows[positives], pool_rows[negatives])
        terms = torch.where(mined, (gap + margin).clamp_min(0), 0.0)
        count: Union[int, Tensor] = mined.sum()
    else:
        anchors = torch.nonzero(mined).squeeze(1)
        gap = distance.gap(x[anchors], pool_rows[positives[anchors]], pool_rows[negatives[anchors]])
        terms, count = (gap + margin).clamp_min(0), anchors.numel()
    return (terms / scale).sum(), count, (terms > 0).sum()


# --- center loss -------------------------------------------------------------------------------------


def center_loss(
    embeddings: Tensor,
    labels: Tensor,
    centers: Tensor,
    logits: Optional[Tensor] = None,
    *,
    mask: Optional[Tensor] = None,
    ignore_index: Optional[int] = None,
    reduction: EmbeddingReduction = "mean",
    strategy: Strategy = "random",
    max_per_class: Optional[int] = None,
    max_total: Optional[int] = None,
    hard_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Center loss (Wen et al. 2016): ``½ mean_i ‖x_i - c_{y_i}‖²`` over sampled pixels.

    The pure function: ``centers`` ``(K, D)`` are given (and receive a gradient if they require one).
    :class:`CenterLoss` keeps them and updates them. ``mean`` divides by the number of sampled (valid)
    pixels; ``sum`` is the sum over them; none gives 0. No λ here: weight the loss where it is added.

    Args:
        embeddings: ``(N, D, *S)`` or flat ``(M, D)``.
        labels: integer ``(N, *S')`` with values in ``[0, K)`` or ``ignore_index``; or ``(M,)``.
        centers: ``(K, D)``, one center per class.
        logits: segmentation logits for the ``hard`` / ``mix`` sampler (see
            :func:`~seglosses.sampling.sample_pixels` for the sampler's options).
        mask: bool, the labels' shape: True where a pixel counts; the others are never sampled
            (the general form of ``ignore_index``).
        ignore_index: label value never sampled.
        reduction: ``mean`` / ``sum`` -> scalar (``none`` raises).

    Raises:
        SegLossError: bad shapes, dtypes or options; labels outside ``[0, K)``, non-finite embeddings or
            a loss beyond the dtype's range (with the input checks on); ``vmap`` with caps.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
        >>> center_loss(x, torch.tensor([0, 0]), torch.tensor([[2.0, 0.0]]))  # ½ (1 + 1) / 2
        tensor(0.5000)
    """
    opts = EmbeddingOptions(
        mask=mask, ignore_index=ignore_index, reduction=reduction, strategy=strategy,
        max_per_class=max_per_class,
        max_total=max_total, hard_fraction=hard_fraction, generator=generator,
    )  # fmt: skip
    return _center_value(_sampled(embeddings, labels, logits, opts, "center_loss"), centers, opts.reduction)


def _center_value(sample: _Sample, centers: Tensor, reduction: str) -> Tensor:
    x, y, keep = sample.x, sample.y, sample.keep
    if not isinstance(centers, Tensor) or centers.ndim != 2 or centers.shape[1] != x.shape[1]:
        got = f"shape {tuple(centers.shape)}" if isinstance(centers, Tensor) else type(centers).__name__
        raise expected(f"centers of shape (K, D) with D = {x.shape[1]}", got)
    if sample.checks:
        check_class_indices(y if keep is None else y[keep], centers.shape[0], "labels")
    centers = centers.to(x)
    scale = joint_scale(x, centers).clamp_min(1.0)  # the sum divided by s, times s after the mean
    if keep is None:
        total = ((x - centers[y]) / scale).square().sum() / 2 * scale
        count = torch.tensor(float(x.shape[0]), device=x.device)
    else:  # every pixel a row: the ignored ones (label ignore_index) counted out
        differences = x - centers[y.masked_fill(~keep, 0)]
        total = (torch.where(keep[:, None], differences, 0.0) / scale).square().sum() / 2 * scale
        count = keep.sum()
    loss = reduce(total, reduction, count) * scale
    return _check_overflow(loss, "center_loss", x) if sample.checks else loss


class _EmbeddingModule(LossModule):
    """An embedding-loss module: ``forward(embeddings, labels, *, logits=None, mask=None)``. As a term of a
    compound with pixel losses, ``criterion(logits, labels, embeddings=e, mask=m)`` calls it as
    ``loss(e, labels, logits=logits, mask=m)``, the logits only for a sampler that reads them (``hard`` /
    ``mix``: the misclassified pixels first)."""

    term_inputs = {"embeddings": True, "mask": False}

    # (embeddings, labels) where other losses take (logits, target); logits= feeds the sampler
    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        logits: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        return type(self).implementation(embeddings, labels, logits, self.masked_options(mask))

    def masked_options(self, mask: Optional[Tensor]) -> EmbeddingOptions:
        """The checked options carrying one call's ``mask`` (if any)."""
        options = cast(EmbeddingOptions, self.checked_options)
        return options if mask is None else options.with_values(mask=mask)

    def forward_term(self, logits: Tensor, target: Tensor, inputs: Dict[str, Tensor]) -> Tensor:
        reads_logits = cast(EmbeddingOptions, self.checked_options).strategy != "random"
        logits_for_sampler = logits if reads_logits else None
        return self(inputs["embeddings"], target, logits=logits_for_sampler, mask=inputs.get("mask"))


class CenterLoss(_EmbeddingModule, Accumulator):
    r"""Center loss with its centers ``(num_classes, dim)``, the tensor named ``centers``.

    The loss is :func:`center_loss` computed with the centers *before* this step's update (Wen et al.
    2016, Algorithm 1; unlike SPEC section 2's fold-first rule for adaptive statistics). Then, with
    ``learn="buffer"`` and in training mode only, the paper's rule updates them from the detached
    features of the sampled pixels: ``c_j ← c_j - α Σ_{i: y_i = j}(c_j - x_i) / (1 + n_j)`` (see
    :meth:`update_centers`). ``eval()`` never changes them. With ``learn="parameter"`` the centers are an
    ``nn.Parameter`` for the optimiser and the rule is not applied. Centers start at 0, in float32.
    ``state_dict`` holds ``centers`` either way. In a ``torch.distributed`` group the batch's sums and
    counts are summed over the processes before the update (attribute ``sync``, default True; every
    rank must run the training forward), so every process keeps the same centers.

    **λ** (the paper's ``L = L_S + λ L_C``) is not an option: weight the term where it is added,
    ``ce(logits, y) + 0.01 * center(embeddings, y)``.

    Args:
        num_classes: ``K >= 1``.
        dim: embedding channels ``D >= 1``.
        alpha: center learning rate ``α`` in ``[0, 1]``.
        learn: ``buffer`` (the paper's rule) or ``parameter`` (gradient descent).
        **options: the options of :func:`center_loss` (``ignore_index``, ``reduction`` and the sampler's).
    """

    function = staticmethod(center_loss)
    options_type = EmbeddingOptions

    def __init__(
        self, *, num_classes: int, dim: int, alpha: float = 0.5, learn: Learn = "buffer", **options: Any
    ) -> None:
        known = ["num_classes", "dim", "alpha", "learn", *keyword_options(center_loss)]
        for name in options:
            if name not in known:
                raise unknown_choice("an option of CenterLoss", name, known)
        super().__init__(**options)  # LossModule's options; then the Accumulator's defaults (sync on)
        self.num_classes = check_int("num_classes", num_classes)
        self.dim = check_int("dim", dim)
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0)
        self.learn = check_choice("learn", learn, ("buffer", "parameter"))
        if self.learn == "parameter":
            self.centers = nn.Parameter(torch.zeros(self.num_classes, self.dim))
        else:  # state: checked on load (finite), zeroed by reset(), float32
            self.add_state("centers", (self.num_classes, self.dim), dtype=torch.float32, kind="value")

    # (embeddings, labels) where other losses take (logits, target); logits= feeds the sampler
    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        logits: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        """``½ mean ‖x_i - c_{y_i}‖²`` with the current centers, then the update (training, buffers)."""
        options = self.masked_options(mask)
        sample = _sampled(embeddings, labels, logits, options, "CenterLoss")
        loss = _center_value(sample, self.centers, options.reduction)
        if self.training and self.learn == "buffer":
            x, y, keep = sample.x.detach(), sample.y, sample.keep
            if not transformed():
                self._learn(x, y, keep)
            else:  # torch.func: a side effect on the primal values, outside the transforms
                reason = (
                    "its center update in training mode (learn='buffer'; eval() or learn='parameter' work)"
                )
                _check_vmap("CenterLoss", options, reason)
                x, y, keep = _primal(x), _primal(y), None if keep is None else _primal(keep)
                with torch._functorch.pyfunctorch.temporarily_clear_interpreter_stack():
                    self._learn(x, y, keep)
        return loss

    def _learn(self, x: Tensor, y: Tensor, keep: Optional[Tensor]) -> None:
        sums, counts = self.synced(*self.batch_statistics(x, y, keep))  # the whole distributed batch's
        self.update_centers(sums, counts)

    def batch_statistics(self, x: Tensor, y: Tensor, keep: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Per-class sums ``(K, D)`` of the rows ``x`` ``(M, D)`` and pixel counts ``(K,)``, in the centers'
        dtype: what a distributed run all-reduces before :meth:`update_centers`. With ``keep`` ``(M,)``
        only those rows count. Counts by ``index_add_`` (a static shape, unlike ``bincount``'s)."""
        dtype = self.centers.dtype
        weight = x.new_ones(x.shape[0], dtype=dtype) if keep is None else keep.to(dtype)
        y = y if keep is None else y.masked_fill(~keep, 0)
        rows = x.to(dtype) if keep is None else x.to(dtype) * weight[:, None]
        sums = torch.zeros_like(self.centers).index_add_(0, y, rows)
        return sums, self.centers.new_zeros(self.classes).index_add_(0, y, weight)

    @torch.no_grad()
    def update_centers(self, sums: Tensor, counts: Tensor) -> None:
        """The paper's rule from batch sums ``s_j`` and counts ``n_j``:
        ``c_j ← c_j - α (n_j c_j - s_j) / (1 + n_j)``; classes absent from the batch keep their center."""
        centers = _primal(self.centers) if transformed() else self.centers  # the tensor itself
        centers.sub_(self.alpha * (counts[:, None] * centers - sums) / (1 + counts[:, None]))

    def extra_repr(self) -> str:
        own = f"num_classes={self.num_classes}, dim={self.dim}, alpha={self.alpha}, learn={self.learn!r}"
        return f"{own}, {super().extra_repr()}"


def _primal(tensor: Tensor) -> Tensor:
    """The plain tensor under ``torch.func`` wrappers (``grad`` / ``jvp`` levels): the values that a side
    effect without gradient (the center update) reads and writes."""
    while torch._C._functorch.is_functorch_wrapped_tensor(tensor):
        tensor = torch._C._functorch.get_unwrapped(tensor)
    return tensor


# --- modules and registry ----------------------------------------------------------------------------


_Module = _EmbeddingModule
ContrastiveLoss = module_for("ContrastiveLoss", contrastive_loss, ContrastiveOptions, _contrastive, _Module)
PixelInfoNCELoss = module_for("PixelInfoNCELoss", pixel_info_nce_loss, InfoNCEOptions, _info_nce, _Module)
TripletLoss = module_for("TripletLoss", triplet_loss, TripletOptions, _triplet, _Module)

_CENTER_SPEC = "center(num_classes=3, dim=3)"
for _name, _module, _text, _spec in (
    ("contrastive", ContrastiveLoss, "pairwise contrastive loss on pixel embeddings (Hadsell 2006)", ""),
    ("info_nce", PixelInfoNCELoss, "supervised pixel InfoNCE (Wang et al. 2021)", ""),
    ("triplet", TripletLoss, "triplet margin loss, hard / all / semi-hard mining", ""),
    ("center", CenterLoss, "center loss (Wen et al. 2016), updated or learned centers", _CENTER_SPEC),
):
    register(_name, _module, domain="embedding", kind="scalar", description=_text, minimal_spec=_spec)

__all__ = [
    "CenterLoss",
    "ContrastiveLoss",
    "PixelInfoNCELoss",
    "TripletLoss",
    "ContrastiveOptions",
    "EmbeddingOptions",
    "InfoNCEOptions",
    "PoolOptions",
    "TripletOptions",
    "center_loss",
    "contrastive_loss",
    "pixel_info_nce_loss",
    "triplet_loss",
]
