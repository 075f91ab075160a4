"""Marginal losses for partially labelled data (Shi et al. 2021; Fidon et al. 2021).

A data set that annotated only some classes labels the others as whatever it lumped them with: in a
liver data set without spleen annotations, "background" also covers the spleen. ``label_sets[j]`` lists
the model's classes that annotated label ``j`` may stand for; the probabilities of a set are summed,
``p'_j = Σ_{c ∈ S_j} p_c``, and the loss is computed on ``p'`` against the annotated labels. The sets
partition the model's classes, so ``p'`` is the softmax of the merged logits
``z'_j = log Σ_{c ∈ S_j} exp(z_c)``: the marginal losses are :func:`cross_entropy_loss` and
:func:`dice_loss` on ``z'``, with all their options, checks and kernels. ``label_sets=[[0], [1], [2]]``
is plain ``ce`` / ``dice``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._core.errors import expected, show
from .._core.options import ClassValues, Reduction
from .._core.pixel_weights import pixel_weights
from .._core.registry import register
from ..distributed import ProcessGroup
from .base import PixelWeightedModule, module_for
from .cross_entropy import CrossEntropyOptions, _cross_entropy
from .overlap import RegionOptions, _dice

LabelSets = Sequence[Sequence[int]]
CheckedSets = Optional[Tuple[Tuple[int, ...], ...]]


def _check_label_sets(label_sets: Optional[LabelSets]) -> CheckedSets:
    """Non-empty sets of class indices ``>= 0``, no class in two sets (that it covers ``range(C)`` is checked
    at the call, where C is known); None: every class its own label."""
    if label_sets is None:
        return None
    wanted = "label_sets as a list of non-empty lists of class indices, e.g. [[0, 3], [1], [2]]"
    try:
        sets = tuple(tuple(members) for members in label_sets)
    except TypeError:
        raise expected(wanted, show(label_sets)) from None
    flat = [c for members in sets for c in members]
    if not sets or any(not members for members in sets):
        raise expected(wanted, show(label_sets))
    if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0 for c in flat):
        raise expected(wanted, show(label_sets))
    if len(set(flat)) != len(flat):
        raise expected(
            "label_sets in which every class appears once (a partition of the classes)", show(label_sets)
        )
    return tuple(tuple(int(c) for c in members) for members in sets)


@dataclass(frozen=True, kw_only=True, eq=False)
class MarginalCEOptions(CrossEntropyOptions):
    """Cross-entropy options (over the annotated labels, without a weight schedule) and the ``label_sets``."""

    label_sets: Optional[LabelSets]
    weight_schedule: None = None  # marginal_ce_loss has no schedule
    step: float = 0.0

    def checked(self) -> Dict[str, Any]:
        return {**super().checked(), "label_sets": _check_label_sets(self.label_sets)}


@dataclass(frozen=True, kw_only=True, eq=False)
class MarginalDiceOptions(RegionOptions):
    """Region options (over the annotated labels) and the ``label_sets``."""

    label_sets: Optional[LabelSets]

    def checked(self) -> Dict[str, Any]:
        return {**super().checked(), "label_sets": _check_label_sets(self.label_sets)}


def merge_logits(logits: Tensor, label_sets: Optional[LabelSets]) -> Tensor:
    """``(N, C, *S)`` -> ``(N, J, *S)``: ``z'_j = log Σ_{c ∈ S_j} exp(z_c)``, so ``softmax(z')_j`` is the
    summed probability of set ``j``. The sets must partition ``range(C)``; None: the logits as they are."""
    if label_sets is None:
        return logits
    c = logits.shape[1] if logits.ndim >= 2 else 0
    covered = sorted(cls for members in label_sets for cls in members)
    if covered != list(range(c)):
        raise expected(
            f"label_sets that partition the C = {c} classes of the logits (each of 0..{c - 1} in one set)",
            f"{[list(m) for m in label_sets]}",
        )
    if all(len(members) == 1 for members in label_sets):
        order = [members[0] for members in label_sets]
        return logits if order == list(range(c)) else logits[:, order]
    merged = [
        logits[:, members[0]] if len(members) == 1 else torch.logsumexp(logits[:, list(members)], dim=1)
        for members in label_sets
    ]
    return torch.stack(merged, dim=1)


def _marginal_ce(logits: Tensor, target: Tensor, opts: MarginalCEOptions) -> Tensor:
    return _cross_entropy(merge_logits(logits, opts.label_sets), target, opts)


def _marginal_dice(logits: Tensor, target: Tensor, opts: MarginalDiceOptions) -> Tensor:
    return _dice(merge_logits(logits, opts.label_sets), target, opts, binary=False)


def marginal_ce_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    label_sets: Optional[LabelSets] = None,
    weight: Optional[ClassValues] = None,
    label_smoothing: float = 0.0,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Marginal cross-entropy ``-Σ_j y_j log Σ_{c ∈ S_j} p_c`` for partially labelled data (see the module).

    Args:
        logits: ``(N, C, *S)``, the model's ``C`` classes.
        target: annotated labels ``(N, *S)`` in ``[0, J)`` (``J = len(label_sets)``) or one-hot / soft
            ``(N, J, *S)``.
        label_sets: ``J`` lists of model classes, one per annotated label, partitioning ``range(C)``;
            None (default): every class its own label, plain cross-entropy.
        weight_map, mask: as :func:`cross_entropy_loss`.
        weight, label_smoothing, ignore_index, reduction: as :func:`cross_entropy_loss`, over the ``J``
            annotated labels.
    """
    opts = MarginalCEOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        label_sets=label_sets, weight=weight, label_smoothing=label_smoothing, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    return _marginal_ce(logits, target, opts)


def marginal_dice_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    label_sets: Optional[LabelSets] = None,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Marginal Dice loss: :func:`dice_loss` on the summed probabilities ``p'_j = Σ_{c ∈ S_j} p_c`` of the
    ``J`` annotated labels (module docstring).

    Args:
        logits: ``(N, C, *S)``, the model's ``C`` classes.
        target: annotated labels ``(N, *S)`` in ``[0, J)`` or one-hot / soft ``(N, J, *S)``.
        label_sets: ``J`` lists of model classes, one per annotated label, partitioning ``range(C)``;
            None (default): every class its own label, plain Dice.
        weight_map, mask: as :func:`dice_loss`.
        include_background, batch, smooth, weight, ignore_index, reduction, sync, process_group: as
            :func:`dice_loss`, over the ``J`` labels (``include_background=False`` drops label 0).
    """
    opts = MarginalDiceOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        label_sets=label_sets, include_background=include_background, batch=batch, smooth=smooth,
        weight=weight, ignore_index=ignore_index, reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _marginal_dice(logits, target, opts)


MarginalCELoss = module_for(
    "MarginalCELoss", marginal_ce_loss, MarginalCEOptions, _marginal_ce, PixelWeightedModule
)
MarginalDiceLoss = module_for(
    "MarginalDiceLoss", marginal_dice_loss, MarginalDiceOptions, _marginal_dice, PixelWeightedModule
)

for _name, _module, _kind in (
    ("marginal_ce", MarginalCELoss, "pixel"),
    ("marginal_dice", MarginalDiceLoss, "region"),
):
    _text = f"marginal {'CE' if _kind == 'pixel' else 'Dice'} for partially labelled data (Shi et al. 2021)"
    register(_name, _module, domain="softmax", kind=_kind, description=_text)

__all__ = [
    "MarginalCELoss", "MarginalCEOptions", "MarginalDiceLoss", "MarginalDiceOptions", "marginal_ce_loss",
    "marginal_dice_loss", "merge_logits",
]  # fmt: skip
