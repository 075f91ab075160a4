"""Pixel sampling for the embedding losses (SPEC section 5): from ``(N, D, *S)`` maps to flat rows.

:func:`sample_pixels` picks pixels of each (image, class) group: every valid one by default, or up to
``max_per_class`` per group and ``max_total`` in all, at random or hard ones (misclassified by the
segmentation logits) first. Ignored pixels are never sampled. The work is vectorised (a sort and a few
``bincount`` over the valid pixels); the few host synchronisations it needs make it unfit for
``torch.compile`` graphs, like any data-dependent shape: gathering the valid pixels (with an
``ignore_index``) and the caps give a number of rows that depends on the data. :func:`sample_rows` can
instead keep every pixel as a row and flag the valid ones (``masked=True``, without caps): shapes that do
not depend on the data, for ``torch.compile`` (``fullgraph=True``, dynamic shapes) and ``torch.func.vmap``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._core.errors import SegLossError, expected
from ._core.options import Options, check_choice, check_ignore_index, check_int, check_number
from ._core.targets import _valid_mask, input_checks_enabled

Strategy = Literal["random", "hard", "mix"]
STRATEGIES = ("random", "hard", "mix")


@dataclass
class Pixels:
    """Valid pixels as flat rows: embeddings ``x`` ``(P, D)``, labels ``y`` ``(P,)`` (int64), the image
    each came from ``(P,)`` out of ``images`` and, given logits, whether it is misclassified ``(P,)``.

    ``keep`` is None when every row is a valid pixel. Otherwise (``masked`` rows, see :func:`sample_rows`)
    the rows are every pixel, ``keep`` ``(P,)`` says which are valid, and the other rows are 0 (so that
    whatever the embeddings hold at ignored pixels, NaN included, reaches nothing).
    """

    x: Tensor
    y: Tensor
    image: Tensor
    images: int
    hard: Optional[Tensor] = None
    keep: Optional[Tensor] = None


@dataclass(frozen=True, kw_only=True, eq=False)
class SamplerOptions(Options):
    """The sampler's options (see :func:`sample_pixels`), shared by every embedding loss; checked once
    when the object is made."""

    strategy: Strategy
    max_per_class: Optional[int]
    max_total: Optional[int]
    hard_fraction: float
    generator: Optional[torch.Generator]

    def checked(self) -> Dict[str, Any]:
        generator = self.generator
        if generator is not None and not isinstance(generator, torch.Generator):
            raise expected("generator to be a torch.Generator or None", type(generator).__name__)
        max_per_class, max_total = self.max_per_class, self.max_total
        return {
            "strategy": check_choice("strategy", self.strategy, STRATEGIES),
            "max_per_class": None if max_per_class is None else check_int("max_per_class", max_per_class),
            "max_total": None if max_total is None else check_int("max_total", max_total),
            "hard_fraction": check_number("hard_fraction", self.hard_fraction, low=0.0, high=1.0),
            "generator": generator,
        }


def sample_pixels(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ignore_index: Optional[int] = None,
    logits: Optional[Tensor] = None,
    strategy: Strategy = "random",
    max_per_class: Optional[int] = None,
    max_total: Optional[int] = None,
    hard_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Sample pixel embeddings per (image, class) and return them as flat rows with their labels.

    Labels are resized to the embeddings' spatial size by nearest neighbour,
    ``F.interpolate(labels[:, None].float(), size=S, mode="nearest")`` (exact for labels below ``2**24``),
    and so is ``argmax(logits)``; embeddings are never resized. Pixels labelled ``ignore_index`` are never
    sampled.

    With neither cap (the default) every valid pixel is returned, in image-then-raster order. Otherwise
    each (image, class) group keeps at most ``max_per_class`` pixels, and with ``max_total`` the groups'
    quotas are lowered evenly (water-filling: every group keeps ``min(n_g, t)`` for the largest level
    ``t`` that fits, the remainder going one pixel each to randomly chosen larger groups) so that the
    total is ``max_total``. Within a group, ``random`` picks uniformly; ``hard`` picks misclassified
    pixels (``argmax(logits) != label``) first, then fills with correct ones; ``mix`` picks
    ``round(hard_fraction · quota)`` hard pixels (half to even) and fills the rest with correct ones,
    taking more of either kind when the other runs short. Kept pixels stay in their original order. Every
    random choice draws from ``generator`` (the global generator when None), so a seeded generator gives
    the same pixels every time.

    Args:
        embeddings: ``(N, D, *S)`` with 1 to 3 spatial dims, or flat ``(M, D)`` (one image).
        labels: integer ``(N, *S')`` with ``len(S') = len(S)``, or ``(M,)`` for flat embeddings.
        ignore_index: label value never sampled.
        logits: segmentation logits ``(N, C, *S'')`` (``(M, C)`` for flat embeddings); needed by ``hard``
            and ``mix``, read only through their argmax (no gradient).
        strategy: ``random``, ``hard`` or ``mix``.
        max_per_class: cap per (image, class), or None.
        max_total: cap on the number of sampled pixels, or None.
        hard_fraction: share of hard pixels for ``mix``, in ``[0, 1]``.
        generator: ``torch.Generator`` for the random choices.

    Returns:
        ``x`` ``(M, D)`` (differentiable rows of ``embeddings``) and ``y`` ``(M,)`` int64.

    Raises:
        SegLossError: bad shapes, dtypes or options; ``hard`` / ``mix`` without logits; non-finite
            embeddings at valid pixels (with the input checks on).

    Example:
        >>> emb = torch.randn(2, 8, 16, 16)
        >>> labels = torch.randint(0, 3, (2, 32, 32))  # resized to 16 x 16
        >>> x, y = sample_pixels(emb, labels, max_per_class=10, generator=torch.Generator().manual_seed(0))
        >>> x.shape, y.shape
        (torch.Size([60, 8]), torch.Size([60]))
    """
    pixels = sample_rows(
        embeddings,
        labels,
        ignore_index=ignore_index,
        logits=logits,
        strategy=strategy,
        max_per_class=max_per_class,
        max_total=max_total,
        hard_fraction=hard_fraction,
        generator=generator,
    )
    return pixels.x, pixels.y


def sample_rows(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ignore_index: Optional[int] = None,
    logits: Optional[Tensor] = None,
    strategy: Strategy = "random",
    max_per_class: Optional[int] = None,
    max_total: Optional[int] = None,
    hard_fraction: float = 0.5,
    generator: Optional[torch.Generator] = None,
    checks: Optional[bool] = None,
    masked: bool = False,
) -> Pixels:
    """:func:`sample_pixels` as :class:`Pixels`.

    ``checks`` is the caller's one reading of :func:`~seglosses._core.targets.input_checks_enabled`
    (read here when None). With ``masked`` and no cap, every pixel is a row and ``keep`` flags the valid
    ones (the others are zeroed) instead of the valid ones being gathered: the same pixels, in shapes that
    do not depend on the data. With a cap the sample is gathered whatever ``masked`` says.
    """
    opts = SamplerOptions(
        strategy=strategy,
        max_per_class=max_per_class,
        max_total=max_total,
        hard_fraction=hard_fraction,
        generator=generator,
    )
    return _sample_rows(embeddings, labels, logits, ignore_index, opts, checks=checks, masked=masked)


def _sample_rows(
    embeddings: Tensor,
    labels: Tensor,
    logits: Optional[Tensor],
    ignore_index: Optional[int],
    opts: SamplerOptions,
    *,
    checks: Optional[bool],
    masked: bool,
) -> Pixels:
    """:func:`sample_rows` with checked sampler options (``ignore_index`` is checked here): what the
    embedding losses call."""
    if opts.strategy != "random" and logits is None:
        raise expected(
            f"logits= for strategy {opts.strategy!r} (hard pixels are the misclassified ones)", "None"
        )
    capped = opts.max_per_class is not None or opts.max_total is not None
    ignore_index = check_ignore_index(ignore_index)
    pixels = valid_pixels(
        embeddings, labels, ignore_index, logits, checks=checks, gather=capped or not masked
    )
    if not capped:
        return pixels
    keep = _select(pixels, opts)
    hard = None if pixels.hard is None else pixels.hard[keep]
    return Pixels(pixels.x[keep], pixels.y[keep], pixels.image[keep], pixels.images, hard)


def valid_pixels(
    embeddings: Tensor,
    labels: Tensor,
    ignore_index: Optional[int],
    logits: Optional[Tensor] = None,
    *,
    checks: Optional[bool] = None,
    gather: bool = True,
) -> Pixels:
    """Check the inputs (see :func:`sample_pixels`) and gather every valid pixel as a flat row, or, with
    ``gather=False``, keep every pixel and flag the valid ones (:attr:`Pixels.keep`). ``checks``: the
    caller's reading of the input-check switch (read here when None)."""
    _check_embeddings(embeddings)
    flat = embeddings.ndim == 2
    size = (embeddings.shape[0],) if flat else tuple(embeddings.shape[2:])
    labels = _labels_at(labels, embeddings, size)
    valid = _valid_mask(labels, ignore_index)
    rows = embeddings if flat else embeddings.movedim(1, -1)
    keep = None if gather or valid is None else valid.reshape(-1)
    if keep is not None:  # every pixel a row; the ignored ones zeroed, so that nothing they hold gets in
        valid = None
        rows = torch.where(keep[:, None], rows.reshape(-1, embeddings.shape[1]), 0.0)
    x = rows.reshape(-1, embeddings.shape[1]) if valid is None else rows[valid]
    y = (labels.reshape(-1) if valid is None else labels[valid]).long()
    if input_checks_enabled() if checks is None else checks:
        _check_finite(x)
    images = 1 if flat else labels.shape[0]
    image = torch.arange(images, device=labels.device).view(-1, *([1] * len(size)))
    image = image.expand(images, *size) if not flat else image.expand(1, *size)[0]
    image = image.reshape(-1) if valid is None else image[valid]
    hard = None
    if logits is not None:
        predicted = _predictions_at(logits, embeddings, size)
        hard = (predicted.reshape(-1) if valid is None else predicted[valid]) != y
    return Pixels(x, y, image, images, hard, keep)


def _check_embeddings(embeddings: Tensor) -> None:
    if not isinstance(embeddings, Tensor):
        raise expected("embeddings to be a torch.Tensor", type(embeddings).__name__)
    if embeddings.ndim not in (2, 3, 4, 5):
        raise expected(
            "embeddings of shape (N, D, *S) with 1 to 3 spatial dims, or flat (M, D)",
            f"shape {tuple(embeddings.shape)}",
        )
    if not embeddings.is_floating_point():
        raise expected("floating-point embeddings", f"dtype {embeddings.dtype}")
    if embeddings.shape[1] == 0:
        raise expected("embeddings with D >= 1 channels", f"shape {tuple(embeddings.shape)}")


def _check_finite(x: Tensor) -> None:
    """Raise on NaN or ±inf among the valid pixels' embeddings (one host sync; counts only on failure)."""
    if x.numel() and not torch.isfinite(x.sum(dtype=torch.float32)):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        if nan or inf:
            parts = [f"{nan} NaN"] * bool(nan) + [f"{inf} inf"] * bool(inf)
            raise SegLossError(f"expected finite embeddings, got {' and '.join(parts)}")


def _labels_at(labels: Tensor, embeddings: Tensor, size: Tuple[int, ...]) -> Tensor:
    """Checked integer labels at the embeddings' spatial size (nearest-neighbour resize if needed)."""
    if not isinstance(labels, Tensor):
        raise expected("labels to be a torch.Tensor", type(labels).__name__)
    if labels.device != embeddings.device:
        raise expected(f"labels on the embeddings' device {embeddings.device}", f"device {labels.device}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise expected("integer labels (class indices, e.g. torch.long)", f"dtype {labels.dtype}")
    if embeddings.ndim == 2:
        if labels.shape != size:
            raise expected(
                f"labels of shape (M,) = {size} for flat embeddings",
                f"shape {tuple(labels.shape)}",
            )
        return labels
    if labels.ndim != embeddings.ndim - 1 or labels.shape[0] != embeddings.shape[0]:
        raise expected(
            f"labels of shape (N, *S) with N = {embeddings.shape[0]} and {len(size)} spatial dims",
            f"shape {tuple(labels.shape)}",
        )
    return _nearest(labels, size)


def _predictions_at(logits: Tensor, embeddings: Tensor, size: Tuple[int, ...]) -> Tensor:
    """``argmax(logits)`` over classes at the embeddings' spatial size."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise expected("logits to be a floating-point torch.Tensor", type(logits).__name__)
    n = embeddings.shape[0]
    if logits.ndim != embeddings.ndim or logits.shape[0] != n or logits.device != embeddings.device:
        layout = f"(M, C) with M = {n}" if embeddings.ndim == 2 else f"(N, C, *S) with N = {n}"
        raise expected(f"logits of shape {layout} on {embeddings.device}", f"shape {tuple(logits.shape)}")
    predicted = logits.detach().argmax(1)
    return predicted if embeddings.ndim == 2 else _nearest(predicted, size)


def _nearest(labels: Tensor, size: Tuple[int, ...]) -> Tensor:
    """Labels ``(N, *S')`` at spatial size ``S`` by nearest neighbour (SPEC: through float)."""
    if tuple(labels.shape[1:]) == size:
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
    return resized.to(labels.dtype)


def _select(pixels: Pixels, opts: SamplerOptions) -> Tensor:
    """Indices of the kept rows, in their original order (see :func:`sample_pixels`)."""
    values, classes = torch.unique(pixels.y, return_inverse=True)
    num_classes = max(values.numel(), 1)
    group = pixels.image * num_classes + classes
    num_groups = pixels.images * num_classes
    counts = torch.bincount(group, minlength=num_groups)
    quota = counts if opts.max_per_class is None else counts.clamp_max(opts.max_per_class)
    if opts.max_total is not None:
        quota = _fill_budget(quota, opts.max_total, opts.generator)
    if opts.strategy == "random":
        subgroup, allowed = group, quota
    else:
        assert pixels.hard is not None  # checked by sample_pixels
        hard_counts = torch.bincount(group[pixels.hard], minlength=num_groups)
        fraction = 1.0 if opts.strategy == "hard" else opts.hard_fraction
        want_hard = torch.round(quota * fraction).long()
        take_easy = torch.minimum(counts - hard_counts, quota - torch.minimum(hard_counts, want_hard))
        subgroup = group * 2 + (~pixels.hard).long()  # hard pixels of group g in 2g, correct ones in 2g+1
        allowed = torch.stack([quota - take_easy, take_easy], 1).reshape(-1)
    rank = _random_rank(subgroup, allowed.numel(), opts.generator)
    return torch.nonzero(rank < allowed[subgroup]).squeeze(1)


def _randperm(n: int, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    source = device if generator is None else generator.device
    return torch.randperm(n, generator=generator, device=source).to(device)


def _random_rank(subgroup: Tensor, num_subgroups: int, generator: Optional[torch.Generator]) -> Tensor:
    """Each element's position ``0, 1, ...`` within its subgroup, in a uniformly random order."""
    count = subgroup.numel()
    perm = _randperm(count, generator, subgroup.device)
    ordered, order = torch.sort(subgroup[perm], stable=True)
    sizes = torch.bincount(subgroup, minlength=num_subgroups)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(subgroup)
    rank[perm[order]] = torch.arange(count, device=subgroup.device) - starts[ordered]
    return rank


def _fill_budget(quota: Tensor, budget: int, generator: Optional[torch.Generator]) -> Tensor:
    """Lower the quotas to sum to ``budget``: ``min(q, t)`` for the largest level ``t`` that fits, plus one
    pixel each for randomly chosen groups above ``t`` until the budget is spent."""
    if int(quota.sum()) <= budget:
        return quota
    ordered = torch.sort(quota).values
    groups = ordered.numel()
    below = torch.cumsum(ordered, 0) - ordered  # sum of the smaller quotas
    reach = below + ordered * (groups - torch.arange(groups, device=quota.device))  # Σ min(q, ordered_i)
    full = int((reach <= budget).sum())  # reach is non-decreasing; full < groups since reach[-1] > budget
    level = (budget - int(below[full])) // (groups - full)
    lowered = quota.clamp_max(level)
    left = budget - int(lowered.sum())
    perm = _randperm(groups, generator, quota.device)
    above = (quota > level)[perm]
    extra = torch.zeros_like(above)
    extra[perm] = above & (torch.cumsum(above.long(), 0) <= left)
    return lowered + extra.long()


__all__ = [
    "Pixels",
    "STRATEGIES",
    "SamplerOptions",
    "Strategy",
    "sample_pixels",
    "sample_rows",
    "valid_pixels",
]
