r"""Generalised Wasserstein Dice loss (Fidon et al. 2017), a region loss with a distance between classes.

A pixel's error is the Wasserstein distance between its prediction and its label, with a ground cost
``M`` between classes: ``M[l, c]`` is what it costs to predict class ``c`` where the truth is ``l``. For a
one-hot label that distance is the expected cost of the prediction::

    ε_i = Σ_c M[y_i, c] p_ic            (index target)
    ε_i = Σ_{l,c} y_il M[l, c] p_ic      (one-hot or soft target)

Everything the loss needs is a per-(sample, class) sum over the valid pixels, written with the soft
confusion matrix ``S_lc = Σ_i y_il p_ic`` (true class ``l``, predicted class ``c``)::

    R_l = Σ_c M[l, c] S_lc = Σ_i y_il ε_i      the Wasserstein error of the pixels of class l
    V_l = Σ_i y_il                              the volume of class l

``S`` is formed without a one-hot of the logits' size: an index target adds each pixel's probabilities
into the row of its label (one ``scatter_add`` with the labels broadcast over the classes, a view), a
dense target is one batched matrix product. Without a matrix (``M = 1 - I``) ``R = FN`` and
``V = TP + FN``, the statistics the overlap losses share (:mod:`seglosses._core.stats`).

**Weight maps and masks.** A weight map ``ω`` ``(N, *S)`` weights every sum over pixels:
``S_lc = Σ_i ω_i y_il p_ic``, so ``R_l = Σ_i ω_i y_il ε_i`` and ``V_l = Σ_i ω_i y_il`` (the ``gdl``
weights ``1 / (V_l + 1)`` count weighted volumes too); a mask is ``ignore_index``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Dict, Literal, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._core.errors import expected, show
from .._core.numerics import compute_dtype, safe_divide
from .._core.options import (
    Options,
    Reduction,
    call_input,
    check_bool,
    check_choice,
    check_ignore_index,
    check_number,
    check_reduction,
)
from .._core.pixel_weights import PixelWeights, pixel_inputs, pixel_weights
from .._core.reduction import reduce_region
from .._core.registry import register
from .._core.stats import (
    class_labels,
    softmax_overlap_from_dense,
    softmax_overlap_from_index,
    valid_weights,
)
from .._core.targets import IndexTarget, check_logits, input_checks_enabled, softmax_target
from ..distributed import ProcessGroup, all_reduce_sum, check_process_group
from .base import PixelWeightedModule, module_for

DistMatrix = Union[Sequence[Sequence[float]], Tensor, np.ndarray]
Weighting = Literal["default", "gdl"]
WEIGHTINGS = ("default", "gdl")


# --- options -----------------------------------------------------------------------------------------


def check_dist_matrix(value: Optional[DistMatrix]) -> Optional[Tensor]:
    """Validate a class-distance matrix and return it as a float tensor ``(C, C)``, or None.

    ``value`` is a nested sequence, a numpy array or a tensor of real numbers, square with ``C >= 2``
    (the number of classes, checked against the logits at call time). Its values must be finite and
    non-negative, with a zero diagonal (a class is at distance 0 from itself) and at least one positive
    entry (the loss divides ``M`` by its largest entry). Nested sequences become float64 (exact for
    Python floats); a numpy array or a tensor keeps its floating dtype (an integer one becomes float64).
    Python and numpy values are always checked; a tensor's values are read only with the data checks on
    (one host sync per check), as for class weights.
    """
    if value is None:
        return None
    if isinstance(value, (bool, str, numbers.Number)):
        raise expected(
            "dist_matrix as a (C, C) matrix of class distances (nested lists or a tensor)", show(value)
        )
    from_python = not isinstance(value, Tensor)
    try:
        matrix = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise expected("dist_matrix as a (C, C) matrix of real numbers", repr(value)) from error
    if matrix.dtype == torch.bool or matrix.is_complex():
        raise expected("dist_matrix with real values", f"dtype {matrix.dtype}")
    if from_python and not isinstance(value, np.ndarray):  # Python floats: float64 holds them exactly
        matrix = torch.as_tensor(value, dtype=torch.float64)
    elif not matrix.is_floating_point():
        matrix = matrix.to(torch.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise expected("dist_matrix of shape (C, C) with C >= 2 classes", f"shape {tuple(matrix.shape)}")
    if from_python or (input_checks_enabled() and not torch.compiler.is_compiling()):
        _check_distances(matrix.detach())
    return matrix


def _check_distances(matrix: Tensor) -> None:
    """Finite, non-negative, zero diagonal, not all zero: one host sync for the four answers."""
    flags = torch.stack([
        torch.isfinite(matrix).all(), (matrix >= 0).all(),
        (matrix.diagonal() == 0).all(), (matrix > 0).any(),
    ]).tolist()  # fmt: skip
    finite, non_negative, zero_diagonal, positive = flags
    values = matrix.tolist()
    if not finite:
        raise expected("dist_matrix with finite values", values)
    if not non_negative:
        raise expected("dist_matrix with non-negative distances", values)
    if not zero_diagonal:
        raise expected(
            "dist_matrix with a zero diagonal (a class is at distance 0 from itself)",
            f"diagonal {matrix.diagonal().tolist()}",
        )
    if not positive:
        raise expected(
            "dist_matrix with at least one positive distance (it is divided by its largest entry)",
            "all zeros",
        )


def check_weighting(value: object) -> str:
    """``"default"`` or ``"gdl"``; MONAI's spelling ``"GDL"`` gets a hint."""
    if isinstance(value, str) and value not in WEIGHTINGS and value.lower() in WEIGHTINGS:
        raise expected(
            f"weighting to be one of 'default', 'gdl' (lower case: MONAI's weighting_mode={value!r} is "
            f"weighting={value.lower()!r})",
            repr(value),
        )
    return check_choice("weighting", value, WEIGHTINGS)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True, eq=False)
class GWDLOptions(Options):
    """The options of :func:`gwdl_loss`: the distance matrix (None: ``1 - I``), the weighting, and the
    region options ``batch``, ``smooth``, ``ignore_index``, ``reduction``, ``sync``, ``process_group``, and
    a call's weight map and mask (``pixel_weights``)."""

    dist_matrix: Optional[DistMatrix]
    weighting: str
    batch: bool
    smooth: float
    ignore_index: Optional[int]
    reduction: str
    sync: bool = False
    process_group: Optional[ProcessGroup] = None
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        if check_bool("sync", self.sync) and not self.batch:
            raise expected(
                "batch=True with sync=True (only pooled statistics are summed over processes)", True
            )
        return {
            "dist_matrix": check_dist_matrix(self.dist_matrix),
            "weighting": check_weighting(self.weighting),
            "batch": check_bool("batch", self.batch),
            "smooth": check_number("smooth", self.smooth, low=0.0),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
            "process_group": check_process_group(self.process_group),
        }


# --- statistics --------------------------------------------------------------------------------------


class ClassErrors(NamedTuple):
    """Per (sample, class) ``(N, C)``, or per class ``(C,)`` after :meth:`pooled`: ``error``
    ``R_l = Σ_i y_il ε_i`` and ``volume`` ``V_l = Σ_i y_il``, over the valid pixels."""

    error: Tensor
    volume: Tensor

    def pooled(self) -> "ClassErrors":
        """Sum over the batch: ``(N, C) -> (C,)``."""
        return ClassErrors(self.error.sum(0), self.volume.sum(0))


def _distances(matrix: Tensor, logits: Tensor) -> Tensor:
    """``M / max(M)`` on the logits' device and compute dtype, its shape checked against their C."""
    c = logits.shape[1]
    if tuple(matrix.shape) != (c, c):
        raise expected(
            f"dist_matrix of shape (C, C) = ({c}, {c}) for logits with C = {c} classes",
            f"shape {tuple(matrix.shape)}",
        )
    dtype = compute_dtype(logits)
    wide = matrix.to(device=logits.device, dtype=torch.promote_types(matrix.dtype, dtype))
    return (wide / wide.amax()).to(dtype)  # normalised first: a float64 M may not fit the logits' dtype


def _class_errors(
    logits: Tensor,
    target: Tensor,
    matrix: Optional[Tensor],
    ignore_index: Optional[int],
    pixels: Optional[PixelWeights] = None,
) -> ClassErrors:
    """``R`` and ``V`` ``(N, C)`` (see the module docstring), ``M`` normalised to a largest entry of 1;
    every pixel's terms times its weight with a weight map (``pixels``), a mask as ``ignore_index``."""
    check_logits(logits, min_classes=2)
    logits, target, ignore_index, omega = pixel_inputs(logits, target, ignore_index, pixels, binary=False)
    distances = None if matrix is None else _distances(matrix, logits)
    plain = distances is None and omega is None
    prepared = softmax_target(logits, target, ignore_index, kernel_checks=plain)
    if distances is None:  # M = 1 - I: ε_i = 1 - p_{i,y_i}, so R = FN
        if isinstance(prepared, IndexTarget):
            s = softmax_overlap_from_index(
                logits, prepared.labels, prepared.valid, prepared.ignore_index, prepared, weight=omega
            )
        else:
            weight = None if omega is None else omega.unsqueeze(1)
            s = softmax_overlap_from_dense(logits, prepared.dense, weight=weight)
        return ClassErrors(s.fn, s.tp + s.fn)
    dtype = compute_dtype(logits)
    if isinstance(prepared, IndexTarget):
        confusion, volume = _index_confusion(prepared.clean(logits), prepared, dtype, omega)
    else:
        probs = torch.softmax(logits.flatten(2), dim=1, dtype=dtype)
        dense = prepared.dense.to(dtype).flatten(2)
        if omega is not None:  # y_il ω_i
            dense = dense * omega.flatten(1).unsqueeze(1).to(dtype)
        confusion = torch.bmm(dense, probs.transpose(1, 2))  # S_lc = Σ_i (ω_i) y_il p_ic
        volume = dense.sum(-1)
    return ClassErrors((confusion * distances).sum(-1), volume)


def _index_confusion(
    logits: Tensor, prepared: IndexTarget, dtype: torch.dtype, omega: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """The soft confusion matrix ``S`` ``(N, C, C)`` (true, predicted) and the class volumes ``(N, C)``
    of an index target: each valid pixel's probabilities added into the row of its label, one
    ``scatter_add`` over the pixel dim with the labels broadcast over the classes (a view, not a
    one-hot). Ignored pixels have ``p = 0`` (their logits were cleaned, so a NaN there reaches nothing).
    With ``omega`` ``(N, *S)`` each pixel's probabilities and count are times its weight."""
    n, c = logits.shape[:2]
    probs = torch.softmax(logits.flatten(2), dim=1, dtype=dtype)  # (N, C, P); flatten: N = 0 works
    labels = class_labels(prepared.labels, prepared.valid)  # (N, P), class 0 at ignored pixels
    if prepared.valid is None:
        weights = probs.new_ones(()).expand(labels.shape)
    else:
        weights = valid_weights(prepared.valid, dtype)
        probs = torch.where(prepared.valid.flatten(1).unsqueeze(1), probs, 0.0)
    if omega is not None:
        flat = omega.flatten(1).to(dtype)
        weights, probs = weights * flat, probs * flat.unsqueeze(1)
    table = probs.new_zeros(n, c, c).scatter_add(2, labels.unsqueeze(1).expand(n, c, -1), probs)
    volume = probs.new_zeros(n, c).scatter_add(1, labels, weights)
    return table.transpose(1, 2), volume  # table[n, c, l] = S[n, l, c]


# --- the loss ----------------------------------------------------------------------------------------


def _gwdl_terms(errors: ClassErrors, weighting: str, smooth: float) -> Tensor:
    """The loss split into class terms ``C · a_l R_l / (D + s)`` whose class mean is the sample's loss.

    ``α`` weights the true positives ``TP = Σ_l α_l (V_l - R_l)``, ``a`` the errors in
    ``D = 2 TP + Σ_l a_l R_l``: ``default``: ``α = (0, 1, ..., 1)``, ``a = 1``; ``gdl``:
    ``α_l = a_l = 1 / (V_l + 1)``. A denominator of exactly 0 (no true positive and no error, with
    ``s = 0``) is a perfect match: 0.
    """
    error, volume = errors
    c = error.shape[-1]
    if weighting == "gdl":
        alpha = 1 / (volume + 1)
        weighted = alpha * error
    else:
        alpha = (torch.arange(c, device=error.device) > 0).to(error.dtype)  # background: no true positives
        weighted = error
    true_positive = (alpha * (volume - error)).sum(-1, keepdim=True)
    den = 2 * true_positive + weighted.sum(-1, keepdim=True) + smooth
    return safe_divide(c * weighted, den, 0.0)


def _gwdl(logits: Tensor, target: Tensor, opts: GWDLOptions) -> Tensor:
    matrix = opts.dist_matrix
    assert matrix is None or isinstance(matrix, Tensor)  # GWDLOptions.checked made it one
    errors = _class_errors(logits, target, matrix, opts.ignore_index, opts.pixel_weights)
    if opts.batch:
        errors = errors.pooled()
    if opts.sync:  # one all-reduce of (R, V); its backward sums the gradients over ranks
        errors = ClassErrors(*all_reduce_sum(torch.stack(errors), opts.process_group).unbind(0))
    return reduce_region(_gwdl_terms(errors, opts.weighting, opts.smooth), opts.reduction)


def gwdl_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    dist_matrix: Optional[DistMatrix] = None,
    weighting: Weighting = "default",
    batch: bool = False,
    smooth: float = 1e-5,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Generalised Wasserstein Dice loss (Fidon et al. 2017; ``gdl`` weighting: Tilborghs et al. 2020).

    With ``M`` the class distances divided by their largest entry, the pixel error
    ``ε_i = Σ_c M[y_i, c] p_ic`` (the Wasserstein distance between the one-hot label and ``p_i``) and, over
    the valid pixels of a sample (of the batch with ``batch=True``)::

        TP = Σ_i α_{y_i} (1 - ε_i)          D = 2 TP + Σ_i a_{y_i} ε_i
        L  = 1 - (2 TP + s) / (D + s)      = Σ_i a_{y_i} ε_i / (D + s)

    ``weighting="default"`` (the paper): ``α_0 = 0`` for the background (class 0), ``α_l = 1`` for the
    others, ``a = 1``. ``weighting="gdl"``: ``α_l = a_l = 1 / (V_l + 1)`` with ``V_l`` the pixel count of
    class ``l``, so ``D = Σ_i α_{y_i} (2 - ε_i)``. A denominator of exactly 0 (possible only with
    ``s = 0``: no true positive and no error) gives 0. In ``default`` weighting an image with only
    background has no true positives, so its loss ``E / (E + s)`` (``E`` its error) relies on ``s``.

    **Without a matrix** (``dist_matrix=None``: every confusion costs 1, ``M = 1 - I``)
    ``ε_i = 1 - p_{i,y_i}`` and, with the overlap statistics ``TP_c``, ``FP_c``, ``FN_c`` of
    :func:`dice_loss` (``Σ_c FP_c = Σ_c FN_c`` over the valid pixels), the loss is a generalised Dice
    loss::

        default:  1 - (2 Σ_{c≥1} TP_c + s) / (2 Σ_{c≥1} TP_c + ½ Σ_c (FP_c + FN_c) + s)
        gdl:      1 - (2 Σ_c α_c TP_c + s) / (Σ_c α_c (2 TP_c + FN_c) + s),   α_c = 1 / (TP_c + FN_c + 1)

    ``default`` pools the foreground classes into one Dice in which each misplaced probability counts
    once (Dice counts it twice, as an FP of one class and an FN of another); for ``C = 2`` it is exactly
    the Dice loss of class 1 (:func:`dice_loss` with ``include_background=False``).

    **Soft targets.** ``ε_i = Σ_{l,c} y_il M[l, c] p_ic``, the expected cost when label and prediction are
    drawn independently; it is the Wasserstein distance for a one-hot target (an upper bound on it
    otherwise), and every sum above is taken with the target's mass (``α_{y_i}`` becomes ``Σ_l y_il α_l``),
    so a one-hot target gives what its index target gives.

    **Softmax only.** The Wasserstein distance compares two distributions over the label space; sigmoid
    channels are not one, and a single binary channel (two classes) leaves one distance, which the
    normalisation makes 1: that loss is the binary Dice loss (``binary_dice``).

    **MONAI.** Equal to ``monai.losses.GeneralizedWassersteinDiceLoss(dist_matrix,
    weighting_mode="default" | "GDL", smooth_nr=s, smooth_dr=s)`` (softmax over the logits, index target),
    values and gradients; MONAI computes the ``GDL`` weights in float32, so in float64 the two agree to
    about 1e-7 relative there. Conventions that differ: one ``smooth`` in numerator and denominator
    (MONAI's ``smooth_nr``, ``smooth_dr``); ``reduction="none"`` gives ``(N, C)`` class terms whose class
    mean is MONAI's ``(N,)``, so ``mean`` is MONAI's and ``sum`` is ``C`` times MONAI's; MONAI has no
    ``ignore_index``, ``batch`` or dense targets. As MONAI, ``M`` is divided by its largest entry, so only
    the ratios of the distances matter, and ``M`` need not be symmetric (row: true class, column:
    predicted).

    Args:
        logits: ``(N, C, *S)``, one to three spatial dims; ``p = softmax(z)`` over ``C >= 2`` classes.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.
        weight_map: ``ω`` ``(N, *S)``, non-negative per-pixel weights: every sum over pixels is weighted,
            ``TP = Σ_i ω_i α_{y_i} (1 - ε_i)``, ``Σ_i ω_i a_{y_i} ε_i``, and with ``gdl`` the class volumes
            ``V_l = Σ_{i: y_i = l} ω_i`` of the class weights; an integer ``ω`` counts the pixel ``ω``
            times.
        mask: ``(N, *S)`` bool, True where a pixel counts: ``ignore_index`` at the others (a soft target's
            masked pixels count nowhere either).
        dist_matrix: ``M`` ``(C, C)`` as nested lists, a numpy array or a tensor: finite, non-negative,
            zero diagonal, not all zero; ``M[l, c]`` is the cost of predicting ``c`` where the truth is
            ``l``, background is class 0. None: ``1 - I``. A tensor that requires grad gets its gradient.
        weighting: ``"default"`` (Fidon et al.) or ``"gdl"`` (class weights ``1 / (V_l + 1)``).
        batch: pool the sums over the batch: one loss for the batch, ``(C,)`` class terms.
        smooth: ``s >= 0`` added to numerator and denominator.
        ignore_index: target value whose pixels count nowhere.
        sync: with ``batch=True``, sum ``R`` and ``V`` over the processes of ``process_group`` (default:
            the default group) first, so every rank returns the global loss; a no-op outside a process
            group. Every rank must call the loss, with an empty shard too.
        process_group: the ``torch.distributed`` group for ``sync``.
        reduction: ``none`` -> the class terms ``(N, C)`` (``(C,)`` with ``batch=True``),
            ``C · a_l R_l / (D + s)`` with ``R_l = Σ_{i: y_i = l} ε_i`` the error of class ``l``'s pixels,
            whose class mean is the sample's loss; ``sum`` -> their sum; ``mean`` -> their mean (the mean
            over samples of ``L``). ``N = 0`` or no valid pixel gives 0, attached to the graph.

    Raises:
        SegLossError: a bad option (``dist_matrix`` not ``(C, C)``, negative, non-finite, with a non-zero
            diagonal or all zero; ``weighting`` not ``default`` / ``gdl``; ...), a ``dist_matrix`` whose
            ``C`` is not the logits', or a bad input (see :mod:`seglosses._core.targets`).

    Example:
        >>> import torch
        >>> from seglosses.losses.wasserstein import gwdl_loss
        >>> M = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]
        >>> logits = torch.tensor([[[100.0, 0.0], [0.0, 100.0], [0.0, 0.0]]])  # (1, 3, 2): perfect
        >>> round(gwdl_loss(logits, torch.tensor([[0, 1]]), dist_matrix=M).item(), 6)
        0.0
    """
    opts = GWDLOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        dist_matrix=dist_matrix, weighting=weighting, batch=batch, smooth=smooth, ignore_index=ignore_index,
        reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _gwdl(logits, target, opts)


GWDLoss = module_for("GWDLoss", gwdl_loss, GWDLOptions, _gwdl, PixelWeightedModule)

register(
    "gwdl",
    GWDLoss,
    domain="softmax",
    description="generalised Wasserstein Dice loss (Fidon et al. 2017)",
    kind="region",
)

__all__ = ["GWDLOptions", "GWDLoss", "check_dist_matrix", "gwdl_loss"]
