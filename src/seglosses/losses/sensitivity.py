"""Sensitivity-specificity loss (Brosch et al. 2015), softmax and sigmoid forms.

Per class ``c`` over the valid pixels of one sample (or of the whole batch with ``batch=True``)::

    L_c = r · Σ (y - p)² y / (Σ y + s)  +  (1 - r) · Σ (y - p)² (1 - y) / (Σ (1 - y) + s)

the mean squared error over the class's pixels (the sensitivity term) and over the other pixels (the
specificity term), mixed by the sensitivity ratio ``r``. ``Σ (y - p)² y`` is not a function of
``TP / FP / FN`` for soft probabilities (it needs ``Σ p² y``), so the loss has statistics of its own:
with an index target ``Σ_{y=c} (1 - p_c)²`` is added into a per-(sample, class) table at each pixel's
target class and ``Σ_{y≠c} p_c²`` is ``Σ p_c²`` with the target class's terms taken out exactly (their
negatives added at the target class), so no one-hot tensor of the logits' size is built.

**Weight maps and masks.** ``weight_map`` ``ω`` ``(N, *S)`` multiplies every pixel's terms in all four
sums, ``Σ ω (y - p)² y / (Σ ω y + s)`` and ``Σ ω (y - p)² (1 - y) / (Σ ω (1 - y) + s)``, so each term is a
weighted mean squared error; ``mask`` is ``ignore_index`` (:func:`pixel_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional

import torch
from torch import Tensor

from .._core.numerics import compute_dtype, safe_divide, sigmoid_f32
from .._core.options import ClassValues, Reduction, check_number
from .._core.pixel_weights import PixelWeights, pixel_inputs, pixel_weights
from .._core.registry import register
from .._core.stats import class_labels, valid_weights
from .._core.targets import IndexTarget, binary_target, softmax_target
from ..distributed import ProcessGroup
from .base import PixelWeightedModule, module_pair
from .overlap import RegionOptions, region_loss


class SSStats(NamedTuple):
    """The sensitivity-specificity statistics, each ``(N, C)`` (``(C,)`` after :meth:`pooled`)."""

    sens: Tensor  # Σ (y - p)² y
    spec: Tensor  # Σ (y - p)² (1 - y)
    pos: Tensor  # Σ y
    neg: Tensor  # Σ (1 - y)

    @property
    def tp(self) -> Tensor:
        """An ``(N, C)`` table of the statistics' shape, dtype and device (what :func:`region_loss`
        checks the per-class options against)."""
        return self.pos

    def pooled(self) -> "SSStats":
        """Sum over the batch: ``(N, C) -> (C,)``."""
        return SSStats(*(t.sum(0) for t in self))

    def select(self, start: int) -> "SSStats":
        """Keep classes ``start:``."""
        return SSStats(*(t[..., start:] for t in self))


def label_sums(index: Tensor, values: Tensor, c: int) -> Tensor:
    """``(N, C)``: the sum of ``values`` ``(N, P)`` by label ``index`` ``(N, P)`` (int64), out of place
    (``torch.func`` transforms batch it)."""
    return values.new_zeros(index.shape[0], c).scatter_add(1, index, values)


def without_target_class(terms: Tensor, index: Tensor) -> Tensor:
    """``terms`` ``(N, C, P)`` with each pixel's entry at its target class set to exactly 0, by adding its
    negative there (``x + (-x) = 0`` in floating point; a finite ``terms`` is required). A scatter-add,
    not a one-hot mask: only ``(N, P)`` values and indices besides ``terms``."""
    at_target = index.unsqueeze(1)
    return terms.scatter_add(1, at_target, -terms.gather(1, at_target))


def _index_stats(
    logits: Tensor, prepared: IndexTarget, dtype: torch.dtype, omega: Optional[Tensor] = None
) -> SSStats:
    """Softmax probabilities and an index target: ``Σ_{y=c} (1 - p_c)²`` by label, ``Σ_{y≠c} p_c²`` as
    ``Σ p_c²`` less the target class's terms (exactly), the counts by label; each pixel's terms times its
    weight with ``omega`` ``(N, *S)``."""
    probs = torch.softmax(prepared.clean(logits).to(dtype), dim=1).flatten(2)  # finite where ignored
    index = class_labels(prepared.labels, prepared.valid)
    c, valid = probs.shape[1], prepared.valid
    p_true = probs.gather(1, index.unsqueeze(1)).squeeze(1)
    others = without_target_class(probs.square(), index)  # p_c² where c is not the pixel's class, else 0
    if omega is not None:  # ω, 0 at ignored pixels (whose terms are finite: their logits were cleaned)
        keep = omega.flatten(1) if valid is None else valid_weights(valid, dtype) * omega.flatten(1)
        sens = label_sums(index, (1 - p_true).square() * keep, c)
        spec = torch.bmm(others, keep.unsqueeze(-1)).squeeze(-1)  # Σ_i ω_i p_ic², no (N, C, P) product
    elif valid is None:
        keep = probs.new_ones(index.shape)
        sens, spec = label_sums(index, (1 - p_true).square(), c), others.sum(-1)
    else:  # masked sums (where, not a product: the temporary is not kept for the backward)
        keep, mask = valid_weights(valid, dtype), valid.flatten(1)
        sens = label_sums(index, torch.where(mask, (1 - p_true).square(), 0.0), c)
        spec = torch.where(mask.unsqueeze(1), others, 0.0).sum(-1)
    pos = label_sums(index, keep, c)
    return SSStats(sens, spec, pos, keep.sum(-1, keepdim=True) - pos)


def _dense_stats(
    probs: Tensor, target: Tensor, valid: Optional[Tensor], omega: Optional[Tensor] = None
) -> SSStats:
    """Probabilities and a dense target ``(N, C, *S)`` (0 at ignored elements, where ``valid`` is False);
    every element's terms times its pixel's weight with ``omega`` ``(N, *S)``."""
    p, y = probs.flatten(2), target.flatten(2).to(probs.dtype)
    if valid is not None:  # where, not a product: a NaN at an ignored element must reach nothing
        p = torch.where(valid.flatten(2), p, 0.0)
    error = (y - p).square()
    if omega is None:
        pos = y.sum(-1)
        count = y.shape[-1] if valid is None else valid.flatten(2).sum(-1, dtype=y.dtype)
        return SSStats((error * y).sum(-1), (error * (1 - y)).sum(-1), pos, count - pos)
    w = omega.flatten(1).unsqueeze(1).to(p.dtype)  # (N, 1, P)
    if valid is not None:
        w = torch.where(valid.flatten(2), w, 0.0)
    wy = w * y
    pos = wy.sum(-1)
    return SSStats((error * wy).sum(-1), (error * (w - wy)).sum(-1), pos, w.sum(-1) - pos)


def _statistics(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    binary: bool,
    pixels: Optional[PixelWeights] = None,
) -> SSStats:
    """:class:`SSStats` ``(N, C)`` of ``p = softmax(z)`` over classes, or ``σ(z)`` per channel, with the
    weight map and mask ``pixels`` when given."""
    dtype = compute_dtype(logits)
    logits, target, ignore_index, omega = pixel_inputs(logits, target, ignore_index, pixels, binary=binary)
    if binary:
        prepared = binary_target(logits, target, ignore_index)
        clean = logits if prepared.valid is None else logits.masked_fill(~prepared.valid, 0.0)
        return _dense_stats(sigmoid_f32(clean), prepared.dense, prepared.valid, omega)
    soft = softmax_target(logits, target, ignore_index)
    if isinstance(soft, IndexTarget):
        return _index_stats(logits, soft, dtype, omega)
    return _dense_stats(torch.softmax(logits.to(dtype), dim=1), soft.dense, None, omega)


def _ratio(num: Tensor, den: Tensor, smooth: float) -> Tensor:
    """``num / den`` with ``den`` holding ``s``; 0 where ``den == 0`` exactly (``s = 0`` and an empty set,
    whose numerator is 0 too: no pixels, no error)."""
    if smooth >= torch.finfo(den.dtype).tiny:
        return num / den
    return safe_divide(num, den, 0.0)


@dataclass(frozen=True, kw_only=True, eq=False)
class SensitivitySpecificityOptions(RegionOptions):
    """Region options plus the sensitivity ratio ``r`` in ``[0, 1]``."""

    r: float

    def checked(self) -> Dict[str, Any]:
        r = check_number("r (the sensitivity ratio)", self.r, low=0.0, high=1.0)
        return {**super().checked(), "r": r}


def _sensitivity_specificity(
    logits: Tensor, target: Tensor, opts: SensitivitySpecificityOptions, binary: bool
) -> Tensor:
    def per_class(s: SSStats, _: Dict[str, Optional[Tensor]]) -> Tensor:
        sensitivity = _ratio(s.sens, s.pos + opts.smooth, opts.smooth)
        specificity = _ratio(s.spec, s.neg + opts.smooth, opts.smooth)
        return opts.r * sensitivity + (1 - opts.r) * specificity

    def statistics(logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool) -> SSStats:
        return _statistics(logits, target, ignore_index, binary, opts.pixel_weights)

    return region_loss(logits, target, opts, binary, per_class, statistics=statistics)


_ARGS = """
    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: {target}
        weight_map: ``ω`` ``(N, *S)``, non-negative per-pixel weights (the same for every {channel}): every
            sum over pixels is weighted, ``Σ ω (y - p)² y / (Σ ω y + s)`` and
            ``Σ ω (y - p)² (1 - y) / (Σ ω (1 - y) + s)``; an integer ``ω`` counts the pixel ``ω`` times.
        mask: ``(N, *S)`` bool, True where a pixel counts: ``ignore_index`` at the others (a soft target's
            masked pixels count nowhere either).
        r: the sensitivity ratio in ``[0, 1]``, the weight of the error on the class's own pixels.{background}
        batch: pool the sums over the batch: one loss per class.
        smooth: ``s >= 0`` added to both denominators (not to the numerators); with ``s = 0`` a term whose
            pixel set is empty is 0.
        weight: per-class weights ``(C,)`` of the class mean.
        ignore_index: target value whose pixels count nowhere.
        sync: with ``batch=True``, sum the statistics over the processes of ``process_group`` first.
        process_group: the ``torch.distributed`` group for ``sync``.
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``), multiplied by ``weight``;
            ``sum`` -> its sum; ``mean`` -> the (weighted) class mean averaged over samples.

    Raises:
        SegLossError: bad shapes, dtypes, target values or options (``r`` outside ``[0, 1]``).
"""


def sensitivity_specificity_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    r: float = 0.05,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Sensitivity-specificity loss per class (Brosch et al. 2015), averaged over classes.

    ``L_c = r Σ (y - p)² y / (Σ y + s) + (1 - r) Σ (y - p)² (1 - y) / (Σ (1 - y) + s)`` over the valid
    pixels, ``p = softmax(z)``. ``r`` (the paper's *sensitivity ratio*) weights the mean squared error on
    the class's pixels, ``1 - r`` that on the others; with a large background a small ``r`` balances the
    two (default 0.05, NiftyNet's default; its documentation says the authors found values from 0.01 to 0.10
    to work alike). ``r = 1`` is the sensitivity term alone, ``r = 0`` the specificity term alone. A
    perfect prediction gives 0.

    NiftyNet and JunMa's SegLoss name the first term ``specificity_part`` and the second
    ``sensitivity_part``; the formula is the same (their ``r`` also multiplies the error on the class's own
    pixels). SegLoss's ``SSLoss`` is this loss with ``r = 0.1`` and ``smooth = 1``; NiftyNet's pools the
    batch (``batch=True``) and sums over classes where this averages. MONAI has no such loss.
    """
    opts = SensitivitySpecificityOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        r=r, include_background=include_background, batch=batch, smooth=smooth, weight=weight,
        ignore_index=ignore_index, reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _sensitivity_specificity(logits, target, opts, binary=False)


def binary_sensitivity_specificity_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    r: float = 0.05,
    batch: bool = False,
    smooth: float = 1e-5,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Sensitivity-specificity loss per sigmoid channel (see :func:`sensitivity_specificity_loss`),
    ``p = σ(z)``; an integer target's ``ignore_index`` elements count nowhere."""
    opts = SensitivitySpecificityOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        r=r, batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _sensitivity_specificity(logits, target, opts, binary=True)


_SOFTMAX_TARGET = "class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``."
_BINARY_TARGET = "the logits' shape; bool, integer or float in ``[0, 1]``."
sensitivity_specificity_loss.__doc__ = (
    (sensitivity_specificity_loss.__doc__ or "").rstrip()
    + "\n"
    + _ARGS.format(
        target=_SOFTMAX_TARGET, channel="class", background="\n        include_background: keep class 0."
    )
)
binary_sensitivity_specificity_loss.__doc__ = (
    (binary_sensitivity_specificity_loss.__doc__ or "").rstrip()
    + "\n"
    + _ARGS.format(target=_BINARY_TARGET, channel="channel", background="")
)

SensitivitySpecificityLoss, BinarySensitivitySpecificityLoss = module_pair(
    "SensitivitySpecificity",
    sensitivity_specificity_loss,
    binary_sensitivity_specificity_loss,
    SensitivitySpecificityOptions,
    _sensitivity_specificity,
    PixelWeightedModule,
)

register(
    "sensitivity_specificity",
    SensitivitySpecificityLoss,
    domain="softmax",
    description="sensitivity-specificity loss per class (Brosch et al. 2015)",
    kind="region",
)
register(
    "binary_sensitivity_specificity",
    BinarySensitivitySpecificityLoss,
    domain="binary",
    description="sensitivity-specificity loss per sigmoid channel (Brosch et al. 2015)",
    kind="region",
)

__all__ = [
    "BinarySensitivitySpecificityLoss",
    "SensitivitySpecificityLoss",
    "SensitivitySpecificityOptions",
    "binary_sensitivity_specificity_loss",
    "sensitivity_specificity_loss",
]
