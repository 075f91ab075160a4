"""Hausdorff losses (Karimi & Salcudean 2019): by morphological erosion, and the log of the DT form.

``hausdorff_er`` erodes the squared error map ``(p - y)²`` ``k`` times and sums the eroded maps with the
weights ``j^α``: an error blob that survives many erosions is thick, i.e. far from the other boundary. It
is kornia's ``HausdorffERLoss`` / ``HausdorffERLoss3D`` (same erosion, same normalisation), from logits,
with an index or dense target, in 1-D to 3-D, with ``ignore_index``.

``log_hausdorff_dt`` is ``log(1 + L)`` of :func:`~seglosses.functional.hausdorff_dt_loss`, as MONAI's
``LogHausdorffDTLoss``.

Ignored pixels are background for every class in prediction and target (their error is 0 before the
first erosion) and enter no sum, as in the boundary losses (:mod:`seglosses.losses.boundary`).

``weight_map`` ``ω`` and ``mask`` ``(N, *S)`` as there: the mask is ``ignore_index`` (a soft target is 0 and
counts nowhere outside it); the erosions and distances run on the unweighted maps and ``ω`` weighs each
pixel's term in the mean (``Σ ω_i H_i / Σ ω_i``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .._core.numerics import LeanFunction
from .._core.options import Reduction, check_int, check_number
from .._core.pixel_weights import pixel_weights
from .._core.registry import register
from ..ops.distance import Spacing
from .base import PixelWeightedModule, module_pair
from .boundary import (
    ClassOptions,
    HausdorffOptions,
    _first_class,
    _fold_mask,
    _hausdorff,
    _hausdorff_terms,
    _kept,
    _prepare,
    _reduce_pixels,
)

_THRESHOLD = 0.5  # the erosion keeps what exceeds half of a full neighbourhood (Karimi & Salcudean, kornia)


# --- Hausdorff loss by erosion -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class HausdorffEROptions(ClassOptions):
    """The shared class options plus the weight exponent ``alpha`` (``>= 0``) and the number of erosions
    ``k`` (``>= 1``); background kept by default, as in kornia."""

    include_background: bool = True
    alpha: float
    k: int

    def checked(self) -> Dict[str, Any]:
        return {
            **super().checked(),
            "alpha": check_number("alpha", self.alpha, low=0.0),
            "k": check_int("k", self.k, low=1),
        }


def _cross_weight(rank: int) -> float:
    """``1 / (2 · rank + 1)`` rounded to float32, as kornia's kernel buffer holds it (so that the erosion
    thresholds the same numbers in float64 too)."""
    return float(torch.tensor(1.0 / (2 * rank + 1), dtype=torch.float32))


def _cross_sum(values: Tensor) -> Tensor:
    """The pixel plus its face neighbours along every spatial axis of ``(B, 1, *S)``, zero padding: a new
    tensor, by in-place adds of shifted views."""
    total = values.clone()
    for axis in range(2, values.ndim):
        n = values.shape[axis]
        total.narrow(axis, 1, n - 1).add_(values.narrow(axis, 0, n - 1))
        total.narrow(axis, 0, n - 1).add_(values.narrow(axis, 1, n - 1))
    return total


class _CrossAverage(LeanFunction):
    """``K * x`` for ``(B, 1, *S)``: the face-neighbour sum (zero padding) times ``weight``. ``K`` is
    symmetric and the padding zero, so the operator is its own adjoint: the backward is ``K * grad``
    (through this Function again, so a double backward works). A ``conv3d`` with one channel is two orders
    of magnitude slower on CPU, and autocast would run it in half precision."""

    generate_vmap_rule = True

    @staticmethod
    def forward(values: Tensor, weight: float) -> Tensor:
        return _cross_sum(values).mul_(weight)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Tensor, float], output: Tensor) -> None:
        ctx.weight = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        return _CrossAverage.apply(grad, ctx.weight), None


def erosion_sum(error: Tensor, alpha: float, k: int) -> Tensor:
    """``Σ_{j=1..k} j^α E_j`` of an error map ``(B, 1, *S)``, each of the ``B`` maps on its own.

    ``E_0 = error``; ``E_j = norm(max(K * E_{j-1} - 1/2, 0))`` with ``K`` the face-neighbour average (the
    pixel and its ``2r`` face neighbours in ``r`` spatial dims, weight ``1 / (2r + 1)`` rounded to float32
    as in kornia; zero padding: outside the image is no error) and
    ``norm(x) = (x - min x) / (max x - min x)`` over the map, or ``x`` where ``max x = min x``.
    The threshold's derivative is 1 at exactly 1/2 (kornia's ``masked_fill``).
    """
    rank = error.ndim - 2
    if math.prod(error.shape[2:]) == 0:  # nothing to erode (amax has no identity)
        return error * 0
    weight = _cross_weight(rank)
    spatial = tuple(range(2, error.ndim))
    total, eroded = torch.zeros_like(error), error
    for step in range(1, k + 1):
        dilated = _CrossAverage.apply(eroded, weight)
        eroded = torch.where(dilated < _THRESHOLD, 0.0, dilated - _THRESHOLD)  # derivative 1 at 1/2
        low, high = eroded.amin(spatial, keepdim=True), eroded.amax(spatial, keepdim=True)
        span = high - low
        flat = span == 0  # a constant map is left as it is (its safe divisor 1 keeps the gradient finite)
        scale = torch.where(flat, 1.0, 1 / torch.where(flat, 1.0, span))  # per map: (B, 1, 1, ...)
        eroded = torch.addcmul(torch.where(flat, 0.0, -low * scale), eroded, scale)  # (x - low) / span
        total = total.add(eroded, alpha=float(step) ** alpha)
    return total


def _hausdorff_er(logits: Tensor, target: Tensor, opts: HausdorffEROptions, binary: bool) -> Tensor:
    folded = _fold_mask(logits, target, opts, binary)
    probs, dense, valid = _prepare(folded.logits, folded.target, folded.ignore_index, binary, folded.mask)
    probs, dense = _kept(_first_class(opts, binary), probs, dense)
    error = (probs - dense) ** 2
    n, c, *spatial = error.shape
    summed = erosion_sum(error.reshape(n * c, 1, *spatial), opts.alpha, opts.k).reshape(error.shape)
    return _reduce_pixels(summed, valid, opts.reduction, binary, folded.weight)


def hausdorff_er_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 2.0,
    k: int = 10,
    include_background: bool = True,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Hausdorff loss by morphological erosion (Karimi & Salcudean, IEEE TMI 2019), ``p = softmax(z)``.

    Per class ``c``, ``H_c = Σ_{j=1..k} j^α E_j`` with ``E_0 = (p_c - y_c)²`` and
    ``E_j = norm(max(K * E_{j-1} - 1/2, 0))``: ``K`` averages a pixel and its face neighbours (the
    cross, weight ``1/5`` in 2-D, ``1/7`` in 3-D, ``1/3`` in 1-D; zero padding), ``norm`` rescales each
    (sample, class) map to ``[0, 1]`` by its min and max (left as it is when constant). The loss is the
    class mean of ``H_c`` per pixel, averaged over pixels. A perfect prediction gives 0. No distance
    transform: ``E_j`` survives where the error region is at least about ``j`` pixels thick. Thin errors
    behave as the threshold says: a missed one-pixel-wide closed loop in 2-D never erodes (3/5 > 1/2, so
    it weighs ``Σ j^α``), a missed one-voxel-wide tube in 3-D erodes at once (3/7 < 1/2: loss 0).

    Equal to kornia's ``HausdorffERLoss`` (2-D) / ``HausdorffERLoss3D`` (3-D) on ``softmax(z)`` and an
    index target ``target[:, None]`` (which keep class 0): the same value for ``mean``; kornia's ``sum``
    is ``C`` times ours (it sums over classes, seglosses averages them per pixel) and its ``none`` is
    ``(C, N, 1, *S)``, whose class mean is ours.

    With a weight map ``ω`` the erosions run on the unweighted error maps ``(p - y)²`` and each eroded
    map's mean becomes a weighted mean: ``L = Σ_i ω_i mean_c H_ic / Σ_i ω_i`` over the valid pixels.

    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (``y`` as given).
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0``, multiplying each pixel's ``mean_c H_ic``
            (not the error maps the erosions see); ``mean`` divides by ``Σ_valid ω_i``.
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, background for every class: its error is 0 before the first
            erosion, and its pixels count nowhere).
        alpha: ``α >= 0``, the exponent of the step weights ``j^α``.
        k: the number of erosions, ``>= 1``.
        include_background: keep class 0 (default, as kornia).
        ignore_index: target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``, the class mean per pixel (0 at ignored pixels); ``mean`` ->
            its mean over valid pixels; ``sum``.
    """
    opts = HausdorffEROptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha,
        k=k,
        include_background=include_background,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _hausdorff_er(logits, target, opts, binary=False)


def binary_hausdorff_er_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 2.0,
    k: int = 10,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Hausdorff loss by erosion per sigmoid channel, ``Σ_{j=1..k} j^α E_j`` of ``E_0 = (σ(z) - y)²``
    (see :func:`hausdorff_er_loss`). ``none`` -> ``(N, C, *S)``; ``mean`` over valid elements. Equal to
    kornia's ``HausdorffERLoss`` per channel on ``[σ(z), 1 - σ(z)]`` with the target ``1 - y`` (kornia
    compares channel ``i`` with ``target == i``; both channels' error maps are then ``(σ(z) - y)²``).
    ``weight_map`` ``ω`` ``(N, *S)`` weighs every channel of a pixel in the mean (not the erosions);
    ``mask`` ``(N, *S)`` is ``ignore_index`` at the pixels outside it (a float or bool target is 0 there)."""
    opts = HausdorffEROptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, k=k, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _hausdorff_er(logits, target, opts, binary=True)


# --- log of the Hausdorff DT loss --------------------------------------------------------------------


def _log_hausdorff(logits: Tensor, target: Tensor, opts: HausdorffOptions, binary: bool) -> Tensor:
    if opts.reduction == "mean":  # MONAI: the log of the reduced loss (a weighted mean with a weight map)
        return torch.log1p(_hausdorff(logits, target, opts, binary))
    terms, valid, weight = _hausdorff_terms(logits, target, opts, binary)
    logged = torch.log1p(_reduce_pixels(terms, valid, "none", binary))  # log(1 + t_i), 0 where invalid
    if weight is not None:  # ω_i log(1 + t_i): the weight of a pixel loss
        logged = logged * (weight.unsqueeze(1) if binary else weight).to(logged.dtype)
    return logged if opts.reduction == "none" else logged.sum()


def log_hausdorff_dt_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 2.0,
    include_background: bool = False,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""``log(1 + L_HD-DT)``, the log of the Hausdorff distance-transform loss (MONAI's
    ``LogHausdorffDTLoss``; Karimi & Salcudean 2019 for ``L_HD-DT``).

    ``L_HD-DT = mean((p - y)² (d_G^α + d_P^α))`` as :func:`~seglosses.functional.hausdorff_dt_loss`
    (same options). The log is taken of the *reduced* loss for ``mean``, as MONAI does, so the default
    equals ``LogHausdorffDTLoss(softmax=True, to_onehot_y=True)``. A log of a mean has no per-pixel
    parts: ``none`` gives ``log(1 + t_i)`` of each pixel's term ``t_i`` (``(N, *S)``, 0 at ignored
    pixels) and ``sum`` its sum, so ``sum`` is not ``N · mean``. (MONAI's ``none`` and ``sum`` log
    per-(sample, class) means and their sum; no option here matches them.) A perfect prediction gives 0.

    With a weight map ``ω``: ``mean`` is ``log(1 + L_ω)`` of the weighted Hausdorff DT loss
    ``L_ω = Σ_i ω_i t_i / Σ_i ω_i`` (:func:`~seglosses.functional.hausdorff_dt_loss` with the same
    ``weight_map``); ``none`` gives ``ω_i log(1 + t_i)`` and ``sum`` its sum.

    Args:
        logits: ``(N, C, *S)``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, ``>= 0`` (above); the distances do not depend on
            them.
        mask: ``(N, *S)`` bool, True where a pixel counts: exactly ``ignore_index`` at the pixels outside
            it (a soft target is 0 there, background for every class, and its pixels count nowhere).
        alpha: the exponent ``α > 0``.
        include_background: supervise class 0 too (default: foreground classes only, as MONAI).
        spacing: pixel size per spatial axis.
        ignore_index: target value whose pixels count nowhere.
        reduction: ``mean`` -> ``log(1 + mean)``; ``none`` -> ``(N, *S)`` per-pixel logs; ``sum``.
    """
    opts = HausdorffOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, include_background=include_background, spacing=spacing, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    return _log_hausdorff(logits, target, opts, binary=False)


def binary_log_hausdorff_dt_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 2.0,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""``log(1 + L_HD-DT)`` per sigmoid channel (see :func:`log_hausdorff_dt_loss`); ``mean`` equals
    MONAI's ``LogHausdorffDTLoss(sigmoid=True, include_background=True)``. ``none`` -> ``(N, C, *S)``.
    ``weight_map`` ``ω`` ``(N, *S)`` weighs every channel of a pixel as there; ``mask`` ``(N, *S)`` is
    ``ignore_index`` at the pixels outside it (a float or bool target is 0 there)."""
    opts = HausdorffOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha, spacing=spacing, ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return _log_hausdorff(logits, target, opts, binary=True)


# --- modules and registry ----------------------------------------------------------------------------

HausdorffERLoss, BinaryHausdorffERLoss = module_pair(
    "HausdorffER", hausdorff_er_loss, binary_hausdorff_er_loss, HausdorffEROptions, _hausdorff_er,
    PixelWeightedModule,
)  # fmt: skip
LogHausdorffDTLoss, BinaryLogHausdorffDTLoss = module_pair(
    "LogHausdorffDT", log_hausdorff_dt_loss, binary_log_hausdorff_dt_loss, HausdorffOptions, _log_hausdorff,
    PixelWeightedModule,
)  # fmt: skip

for _name, _module, _domain, _text in (
    ("hausdorff_er", HausdorffERLoss, "softmax",
     "Hausdorff loss by morphological erosion, Σ j^α erode^j((p - y)²) (Karimi & Salcudean 2019)"),
    ("binary_hausdorff_er", BinaryHausdorffERLoss, "binary", "Hausdorff erosion loss per sigmoid channel"),
    ("log_hausdorff_dt", LogHausdorffDTLoss, "softmax",
     "log(1 + Hausdorff DT loss), MONAI's LogHausdorffDTLoss (Karimi & Salcudean 2019)"),
    ("binary_log_hausdorff_dt", BinaryLogHausdorffDTLoss, "binary", "log(1 + Hausdorff DT loss) per channel"),
):  # fmt: skip
    register(_name, _module, domain=_domain, description=_text, kind="pixel")

__all__ = [
    "BinaryHausdorffERLoss",
    "BinaryLogHausdorffDTLoss",
    "HausdorffERLoss",
    "LogHausdorffDTLoss",
    "binary_hausdorff_er_loss",
    "binary_log_hausdorff_dt_loss",
    "erosion_sum",
    "hausdorff_er_loss",
    "log_hausdorff_dt_loss",
]
