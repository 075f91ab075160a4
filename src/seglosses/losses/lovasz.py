"""Lovász losses: the Lovász extension of the Jaccard loss on per-pixel errors (Berman et al., CVPR 2018).

For one class with errors ``e_i`` and ground truth ``g_i`` over the valid pixels, sort the errors in
decreasing order, ``e_(1) >= e_(2) >= ...``, and let ``J_k`` be the Jaccard loss of the set of the ``k``
largest errors::

    J_k = 1 - (G - Σ_{j<=k} g_(j)) / (G + Σ_{j<=k} (1 - g_(j)))        G = Σ_i g_i

The loss is ``Σ_k e_(k) (J_k - J_{k-1})`` (``J_0 = 0``): a convex, piecewise-linear surrogate of the
Jaccard loss that equals it at binary errors. Its gradient with respect to ``e_(k)`` is ``J_k - J_{k-1}``,
constant between reorderings, so the weights are computed once without gradient and the loss is
``Σ_i e_i w_i``. Ties in the errors do not change the value (the extension does not depend on how
ties are broken); the sort is stable, so the gradient is deterministic.

One batched sort per call (all classes, or all (image, class) rows, at once) replaces the per-class
sorts of the reference implementations.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor

from .._core.errors import expected
from .._core.numerics import safe_divide, softmax_f32
from .._core.options import Options, Reduction, check_bool, check_ignore_index, check_reduction
from .._core.registry import register
from .._core.targets import IndexTarget, binary_target, softmax_target
from ..ops.sort import descending_order
from .base import module_for

Classes = Union[Literal["present", "all"], Sequence[int]]


@dataclass(frozen=True, kw_only=True, eq=False)
class LovaszOptions(Options):
    """Options of the Lovász losses: the classes averaged (softmax only), per-image rows, ignore_index,
    reduction."""

    classes: Classes = "all"  # the binary losses have no classes to select
    per_image: bool
    ignore_index: Optional[int]
    reduction: str

    def checked(self) -> Dict[str, Any]:
        return {
            "classes": _check_classes(self.classes),
            "per_image": check_bool("per_image", self.per_image),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


def _check_classes(classes: Classes) -> Union[str, Tuple[int, ...]]:
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise expected('classes "present", "all" or a sequence of class indices', repr(classes))
        return classes
    try:
        values = tuple(classes)
    except TypeError:
        raise expected('classes "present", "all" or a sequence of class indices', repr(classes)) from None
    if not values or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise expected("classes as a non-empty sequence of class indices >= 0", repr(classes))
    if len(set(values)) != len(values):
        raise expected("classes without repeats", repr(classes))
    return tuple(int(v) for v in values)


@torch.no_grad()
def lovasz_weights(
    keys: Tensor, truth: Tensor, valid_count: Union[int, Tensor], *, nonnegative: bool = False
) -> Tensor:
    """The Lovász-Jaccard weights ``w`` (rows ``(R, L)``), ``loss_r = Σ_i e_ri w_ri`` (module docstring).

    ``keys`` are the errors, ``-inf`` at pixels that do not count (they sort last and get weight 0);
    ``truth`` the ground truth ``g`` in ``[0, 1]`` (0 where a pixel does not count; a soft value counts
    fractionally); ``valid_count`` the number of pixels that count per row (an int, or a tensor that
    broadcasts against ``(R, 1)``); ``nonnegative``: the keys are ``>= 0`` or ``-inf``. With
    ``a_k = Σ_{j<=k} g_(j)``: ``J_k = k / (G + k - a_k)`` and ``w_(k) = J_k - J_{k-1}`` up to the valid
    count, 0 after it.
    """
    if keys.shape[-1] == 0:  # no pixels (an empty batch)
        return torch.zeros_like(keys)
    order = descending_order(keys, nonnegative=nonnegative)
    g = truth.gather(-1, order).to(keys.dtype)
    before = g.cumsum(-1).sub_(g)  # a_{k-1}
    total = before[..., -1:] + g[..., -1:]  # G
    ahead_count = torch.arange(keys.shape[-1], device=keys.device, dtype=keys.dtype)  # k - 1
    # J_k - J_{k-1} = (G - a_{k-1} + (k-1) g_k) / (D_k (D_k + 1 - g_k)), D_k = G + k - 1 - a_{k-1}: every term
    # non-negative, no difference of nearly equal numbers (exact counts in float32 up to 2^24 pixels a row)
    steps = (ahead_count * g).add_(total).sub_(before)
    d = (ahead_count + total).sub_(before)
    steps.div_((d + 1).sub_(g).mul_(d))
    steps[..., 0] = torch.where(total[..., 0] > 0, steps[..., 0], 1.0)  # no foreground: D_1 = 0, J_1 = 1
    if not isinstance(valid_count, int) or valid_count < keys.shape[-1]:  # the ignored pixels, sorted last
        count = torch.as_tensor(valid_count, device=keys.device)
        steps.masked_fill_(ahead_count >= count, 0.0)
    return torch.empty_like(steps).scatter_(-1, order, steps)


def _rows(x: Tensor, per_image: bool) -> Tensor:
    """``(N, C, *S)`` as rows: ``(N, C, L)`` per image, else ``(C, N·L)`` (a copy)."""
    flat = x.flatten(2)
    return flat if per_image else flat.movedim(1, 0).flatten(1)


def _valid_count(valid: Optional[Tensor], shape: Tuple[int, ...], per_image: bool) -> Union[int, Tensor]:
    """The pixels that count in each row: ``(N, 1, 1)`` per image, else one number."""
    if valid is None:
        return math.prod(shape[1:]) if per_image else math.prod(shape)
    return valid.flatten(1).sum(-1).view(-1, 1, 1) if per_image else valid.sum()


def _reduce(per_row: Tensor, selected: Tensor, reduction: str, per_image: bool) -> Tensor:
    """``none``: the per-class losses ``(C,)`` (``(N, C)`` per image), 0 where a class is not selected;
    ``sum``: their sum; ``mean``: the mean over the selected classes (per image: then over images, an
    image without a selected class counting 0, as in the paper's code)."""
    loss = torch.where(selected, per_row, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    class_mean = safe_divide(loss.sum(-1), selected.sum(-1).to(loss.dtype), 0.0)  # (N,) per image, else ()
    if per_image:
        return class_mean.sum() / max(class_mean.numel(), 1)  # N = 0 gives 0
    return class_mean


def _lovasz_softmax(logits: Tensor, target: Tensor, opts: LovaszOptions) -> Tensor:
    prepared = softmax_target(logits, target, opts.ignore_index)
    n, c = logits.shape[:2]
    if isinstance(opts.classes, tuple) and max(opts.classes) >= c:
        raise expected(f"classes below C = {c}", opts.classes)
    probs = _rows(softmax_f32(prepared.clean(logits)), opts.per_image)
    valid = prepared.valid if isinstance(prepared, IndexTarget) else None
    truth, mask = _truth_rows(prepared, c, opts.per_image, probs.dtype)
    y = truth.to(probs.dtype)
    with torch.no_grad():  # the weights, and the errors' slope in p: e = |p - y| = sign(p - y) (p - y)
        difference = probs.detach() - y
        keys = difference.abs()
        if mask is not None:  # ignored pixels sort last
            keys += _minus_inf_where_not(mask, keys.dtype)
        count = _valid_count(valid, (n, *logits.shape[2:]), opts.per_image)
        coefficient = lovasz_weights(keys, truth, count, nonnegative=True).mul_(difference.sign_())
        offset = -(coefficient * y).sum(-1)  # Σ w e = Σ w s p - Σ w s y
    per_row = (probs * coefficient).sum(-1) + offset  # not linalg.vecdot: autocast would run it in half
    selected = _selected(cast(Union[str, Tuple[int, ...]], opts.classes), y, c)  # checked: str or tuple
    return _reduce(per_row, selected, opts.reduction, opts.per_image)


def _minus_inf_where_not(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``0`` where ``mask``, ``-inf`` elsewhere, in ``mask``'s (broadcastable) shape: added to the keys,
    it sends the pixels that do not count to the end of the sort."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -torch.inf)


def _truth_rows(
    prepared: Any, c: int, per_image: bool, dtype: torch.dtype
) -> Tuple[Tensor, Optional[Tensor]]:
    """The rows' ground truth (bool class masks for an index target, False where ignored; the soft target
    in ``dtype``) and the valid mask broadcastable to the rows (None: every pixel counts)."""
    if not isinstance(prepared, IndexTarget):
        return _rows(prepared.dense, per_image).to(dtype), None
    labels = prepared.index().unsqueeze(1)
    labels = labels.flatten(2) if per_image else labels.flatten(1).flatten(0)
    classes = torch.arange(c, device=labels.device).view(*([1] * per_image), c, 1)
    truth = labels == classes
    if prepared.valid is None:
        return truth, None
    mask = prepared.valid.flatten(1).unsqueeze(1) if per_image else prepared.valid.reshape(1, -1)
    return truth & mask, mask


def _selected(classes: Union[str, Tuple[int, ...]], y: Tensor, c: int) -> Tensor:
    """Which rows' classes enter the mean: ``(C,)`` or ``(N, C)`` bool (``y`` is 0 where ignored)."""
    if classes == "present":
        return y.sum(-1) > 0
    labels = torch.arange(c, device=y.device)
    mask = torch.ones_like(labels, dtype=torch.bool)
    if isinstance(classes, tuple):  # comparisons with Python ints: no host-to-device copy
        mask = functools.reduce(torch.logical_or, [labels == k for k in classes])
    return mask.expand(y.shape[:-1])


def _lovasz_hinge(logits: Tensor, target: Tensor, opts: LovaszOptions) -> Tensor:
    prepared = binary_target(logits, target, opts.ignore_index)
    truth, valid = prepared.dense, prepared.valid
    z = logits.to(truth.dtype)
    if valid is not None:
        z = z.masked_fill(~valid, 0.0)  # a non-finite logit at an ignored element reaches nothing
    z, truth = _rows(z, opts.per_image), _rows(truth, opts.per_image)
    margins = 1 - z * (2 * truth - 1)
    keys = margins.detach()
    count: Union[int, Tensor] = margins.shape[-1]
    if valid is not None:  # ignored elements sort last
        rows_valid = _rows(valid, opts.per_image)
        keys = keys + _minus_inf_where_not(rows_valid, keys.dtype)
        count = rows_valid.sum(-1, keepdim=True)
    hinge = margins.relu() + z.clamp_min(0) * 0  # a +inf logit stays non-finite; -inf at y = 0 is legal
    per_row = (hinge * lovasz_weights(keys, truth, count)).sum(-1)
    selected = torch.ones_like(per_row, dtype=torch.bool)
    return _reduce(per_row, selected, opts.reduction, opts.per_image)


def lovasz_loss(
    logits: Tensor,
    target: Tensor,
    *,
    classes: Classes = "present",
    per_image: bool = False,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Lovász-Softmax loss (Berman et al. 2018): per class, the Lovász extension of the Jaccard loss on
    the errors ``e_i = |y_ic - p_ic|``, ``p = softmax(z)``, over the valid pixels (module docstring).

    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (a soft ``y`` counts
            fractionally in the Jaccard sets; for hard targets this is the paper's loss).
        classes: the classes averaged: ``"present"`` (in the target, among the valid pixels of the
            batch, or of the image with ``per_image``), ``"all"``, or a list of class indices.
        per_image: one Lovász extension per (image, class) instead of per class over the batch.
        ignore_index: target value whose pixels count nowhere.
        reduction: ``none`` -> the per-class losses ``(C,)`` (``(N, C)`` with ``per_image``), 0 for a
            class not averaged; ``sum`` -> their sum; ``mean`` -> their mean over the averaged classes
            (with ``per_image``, then over images; an image without one counts 0, as in the authors'
            code), 0 when there is none.

    Equal to ``segmentation_models_pytorch.losses.LovaszLoss("multiclass")`` (``classes="present"``) for
    index targets. The gradient with respect to ``e_(k)`` is ``J_k - J_{k-1}``.
    """
    opts = LovaszOptions(classes=classes, per_image=per_image, ignore_index=ignore_index, reduction=reduction)
    return _lovasz_softmax(logits, target, opts)


def binary_lovasz_loss(
    logits: Tensor,
    target: Tensor,
    *,
    per_image: bool = False,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Lovász hinge loss (Berman et al. 2018) per channel: the Lovász extension of the Jaccard loss on
    the hinge errors ``max(0, 1 - z (2y - 1))`` of the logits ``z`` (sorted by the margins ``1 - z(2y-1)``).

    Args:
        logits: ``(N, C, *S)``; each channel is its own binary problem.
        target: the logits' shape; bool, integer or float in ``[0, 1]``.
        per_image: one extension per (image, channel) instead of per channel over the batch.
        ignore_index: integer-target value whose elements count nowhere.
        reduction: ``none`` -> ``(C,)`` (``(N, C)`` with ``per_image``); ``sum``; ``mean`` over channels
            (and images).

    With one channel equal to ``segmentation_models_pytorch.losses.LovaszLoss("binary")``; smp pools
    several channels into one set, this loss treats each channel alone and averages.
    """
    opts = LovaszOptions(per_image=per_image, ignore_index=ignore_index, reduction=reduction)
    return _lovasz_hinge(logits, target, opts)


LovaszLoss = module_for("LovaszLoss", lovasz_loss, LovaszOptions, _lovasz_softmax)
BinaryLovaszLoss = module_for("BinaryLovaszLoss", binary_lovasz_loss, LovaszOptions, _lovasz_hinge)

register(
    "lovasz",
    LovaszLoss,
    domain="softmax",
    description="Lovász-Softmax loss (Berman et al. 2018)",
    kind="class",
)
register(
    "binary_lovasz",
    BinaryLovaszLoss,
    domain="binary",
    description="Lovász hinge loss per channel",
    kind="class",
)

__all__ = [
    "BinaryLovaszLoss",
    "LovaszLoss",
    "LovaszOptions",
    "binary_lovasz_loss",
    "lovasz_loss",
    "lovasz_weights",
]
