"""Cross-entropy (document section 1; SPEC section 1)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.numerics import binary_log_terms, compute_dtype
from .._core.options import (
    ClassValues,
    Reduction,
    channel_tensor,
    check_ignore_index,
    check_number,
    check_reduction,
    class_tensor,
    class_values,
)
from .._core.reduction import reduce
from .._core.registry import register
from .._core.targets import IndexTarget, binary_target, num_valid, softmax_target
from .base import module_for


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Optional[ClassValues] = None,
    label_smoothing: float = 0.0,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Softmax cross-entropy, optionally class-weighted and label-smoothed.

    ``L_i = -Σ_c w_c y'_ic log p_ic`` with ``p = softmax(z)`` over the class dim and the smoothed target
    ``y' = (1 - ε) y + ε / C`` (``ε = label_smoothing``, PyTorch's convention). The gradient of ``L_i`` with
    respect to the logits is ``p_j Σ_c w_c y'_ic - w_j y'_ij``, which is ``p - y`` without weights and
    smoothing.

    ``mean`` divides by ``Σ_{i∈V} Σ_c w_c y_ic`` with the *unsmoothed* target: the number of valid pixels
    without weights, never the count of all pixels. For index targets this is exactly
    ``torch.nn.functional.cross_entropy``; for soft targets torch divides by the pixel count instead, and
    seglosses keeps ``Σ w y`` so that a one-hot target gives exactly what its index target gives.

    Args:
        logits: ``(N, C, *S)``, ``C >= 2``, one to three spatial dims.
        target: class indices ``(N, *S)`` (integer) or one-hot / soft probabilities ``(N, C, *S)``.
        weight: per-class weights ``(C,)``, non-negative.
        label_smoothing: ``ε`` in ``[0, 1)``.
        ignore_index: index-target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``; ``mean`` / ``sum`` -> scalar.

    Raises:
        SegLossError: bad shapes, dtypes, target values, weights or options.
    """
    opts = check_ce_options(
        weight=weight, label_smoothing=label_smoothing, ignore_index=ignore_index, reduction=reduction
    )
    eps = opts["label_smoothing"]
    prepared = softmax_target(logits, target, ignore_index)
    logits = logits.to(compute_dtype(logits))
    w = class_tensor(opts["weight"], logits, "weight")
    if isinstance(prepared, IndexTarget):
        # torch's own kernel, summed; the mean's denominator is ours so that all-ignored gives 0, not NaN
        loss = F.cross_entropy(
            logits,
            prepared.labels.long(),
            weight=w,
            ignore_index=-100 if ignore_index is None else ignore_index,
            reduction="none" if opts["reduction"] == "none" else "sum",
            label_smoothing=eps,
        )
        denominator = _index_denominator(prepared, w) if opts["reduction"] == "mean" else None
    else:
        dense = prepared.dense
        loss = F.cross_entropy(
            logits, dense.to(logits.dtype), weight=w, reduction="none", label_smoothing=eps
        )
        target_mass = dense.sum(1) if w is None else torch.einsum("nc...,c->n...", dense, w.to(dense.dtype))
        denominator = target_mass.sum(dtype=torch.float32)
    return reduce(loss, opts["reduction"], denominator)


def _index_denominator(prepared: IndexTarget, weight: Optional[Tensor]) -> Tensor:
    """``Σ_{i∈V} w_{y_i}``: the valid pixel count, or their summed class weights."""
    if weight is None:
        return num_valid(prepared.valid, prepared.labels.shape, prepared.labels.device)
    pixel_weight = weight[prepared.index()]
    if prepared.valid is not None:
        pixel_weight = pixel_weight * prepared.valid
    return pixel_weight.sum(dtype=torch.float32)


def binary_cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Optional[ClassValues] = None,
    pos_weight: Optional[ClassValues] = None,
    label_smoothing: float = 0.0,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Sigmoid binary cross-entropy per channel (binary or multi-label segmentation).

    ``L = -w_c [ρ_c y' log σ(z) + (1 - y') log(1 - σ(z))]`` with ``y' = (1 - ε) y + ε / 2``, ``w_c`` the
    channel ``weight`` and ``ρ_c`` the ``pos_weight`` (part of the formula, as in
    ``torch.nn.BCEWithLogitsLoss``). ``mean`` divides by the number of valid elements or, with ``weight``,
    by the summed weights of the valid elements.

    Args:
        logits: ``(N, C, *S)``.
        target: same shape; bool, integer (``ignore_index`` allowed) or float in ``[0, 1]``.
        weight: per-channel weights ``(C,)`` or a scalar.
        pos_weight: per-channel weight of the positive term ``(C,)`` or a scalar, ``>= 0``.
        label_smoothing: ``ε`` in ``[0, 1)``.
        ignore_index: integer-target value whose elements count nowhere.
        reduction: ``none`` -> ``(N, C, *S)``; ``mean`` / ``sum`` -> scalar.
    """
    opts = check_bce_options(
        weight=weight,
        pos_weight=pos_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    eps = opts["label_smoothing"]
    prepared = binary_target(logits, target, ignore_index)
    logits = logits.to(compute_dtype(logits))
    w = channel_tensor(class_tensor(opts["weight"], logits, "weight"), logits)
    rho = channel_tensor(class_tensor(opts["pos_weight"], logits, "pos_weight"), logits)
    y = prepared.dense if eps == 0 else prepared.dense * (1 - eps) + eps / 2
    positive, negative = binary_log_terms(logits, y)
    loss = -(positive + negative) if rho is None else -(rho * positive + negative)
    if w is not None:
        loss = loss * w
    if prepared.valid is not None:
        loss = loss.masked_fill(~prepared.valid, 0)
    if w is None:
        denominator = num_valid(prepared.valid, logits.shape, logits.device)
    else:
        element_weight = w.expand_as(logits)
        if prepared.valid is not None:
            element_weight = element_weight * prepared.valid
        denominator = element_weight.sum(dtype=torch.float32)
    return reduce(loss, reduction, denominator)


def check_ce_options(
    *, weight: Optional[ClassValues], label_smoothing: float, ignore_index: Optional[int], reduction: str
) -> Dict[str, Any]:
    """Validate the options of :func:`cross_entropy_loss` (shared with its module)."""
    return {
        "weight": class_values("weight", weight, allow_scalar=False),
        "label_smoothing": check_number(
            "label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True
        ),
        "ignore_index": check_ignore_index(ignore_index),
        "reduction": check_reduction(reduction),
    }


def check_bce_options(
    *,
    weight: Optional[ClassValues],
    pos_weight: Optional[ClassValues],
    label_smoothing: float,
    ignore_index: Optional[int],
    reduction: str,
) -> Dict[str, Any]:
    """Validate the options of :func:`binary_cross_entropy_loss` (shared with its module)."""
    return {
        "weight": class_values("weight", weight),
        "pos_weight": class_values("pos_weight", pos_weight),
        "label_smoothing": check_number(
            "label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True
        ),
        "ignore_index": check_ignore_index(ignore_index),
        "reduction": check_reduction(reduction),
    }


CrossEntropyLoss = module_for("CrossEntropyLoss", cross_entropy_loss, check_ce_options)
BinaryCrossEntropyLoss = module_for("BinaryCrossEntropyLoss", binary_cross_entropy_loss, check_bce_options)

register(
    "ce",
    CrossEntropyLoss,
    domain="softmax",
    description="softmax cross-entropy (class weights, label smoothing)",
)
register(
    "bce", BinaryCrossEntropyLoss, domain="binary", description="sigmoid binary cross-entropy per channel"
)
