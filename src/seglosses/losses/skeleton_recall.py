"""Skeleton Recall loss (Kirchhoff et al., "Skeleton Recall Loss for Connectivity Conserving and Resource
Efficient Segmentation of Thin Tubular Structures", ECCV 2024).

The target's skeleton, thickened into a tube, should be covered by the prediction: per class ``c``::

    L_c = 1 - (Σ p_c S_c + s) / (Σ S_c + s)

with ``S_c`` the tubed skeleton of class ``c`` and sums over the valid pixels of one sample (or of the
batch). The skeleton depends on the target only: compute it once per sample with
:class:`SkeletonTransform` (or :func:`target_skeletons`) and pass it as ``skeletons``; without it the loss
computes it on the logits' device at every call (:func:`seglosses.ops.skeleton.skeletonize`, which reads
the host while it thins).

**The tubed skeleton, as the authors' nnU-Net fork (MIC-DKFZ/Skeleton-Recall, ``SkeletonTransform``)
makes it.** Softmax losses: the union of the foreground classes ``1..C-1`` is skeletonised once (classes
that touch share one skeleton), the skeleton is dilated ``tube`` times by the cross (the city-block ball
of radius ``tube``; the fork's tube is 2) and cut by each class's mask: ``S_c = tube(skel(∪ M_k)) ∩ M_c``.
The background class, where kept, gets its own: ``S_0 = tube(skel(M_0)) ∩ M_0``. ``binary_*`` losses
skeletonise each channel on its own. Class masks are ``y == c`` for an index target and ``y > 0.5`` for a
dense one; ignored pixels belong to no class before the skeletonisation (the fork counts them as
foreground there and masks them afterwards) and enter neither sum.

**weight_map and mask** (``(N, *S)``, issue 19). ``L_c = 1 - (Σ ω p_c S_c + s) / (Σ ω S_c + s)``: the
skeletons are those of the unweighted target (the weights never change them), and ``ω`` multiplies each
pixel's terms in both sums. Given the skeletons the loss is pixel-local, so an integer ``ω`` is the pixel
(with its skeleton value) repeated ``ω`` times. ``mask`` False is ``ignore_index`` exactly: the masked
pixels of an index target (or an integer binary one) get the ignore value before the skeletons are
computed; a floating or bool target's masked pixels likewise belong to no class before the
skeletonisation, and their logits reach neither value nor gradient. Precomputed ``skeletons`` are used as
given, cut by the mask: compute them with the masked pixels as ``ignore_index`` to get exactly the loss
that computes them on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .._core.deferred import check_count
from .._core.errors import expected
from .._core.numerics import safe_divide, sigmoid_f32, softmax_f32
from .._core.options import ClassValues, Reduction, check_bool, check_ignore_index, check_int
from .._core.pixel_weights import pixel_weights
from .._core.registry import register
from .._core.stats import Overlap
from .._core.targets import (
    IndexTarget,
    SoftmaxTarget,
    check_binary_target,
    input_checks_enabled,
    softmax_target,
)
from ..distributed import ProcessGroup
from ..ops.skeleton import dilate_cross, skeletonize
from .base import PrecomputedInputModule, module_pair
from .boundary import _target_masks
from .cldice import _pixel_inputs
from .overlap import RegionOptions, Statistics, region_loss

TUBE = 2  # the fork's tube: two dilations by the cross


# --- tubed skeletons of a target ---------------------------------------------------------------------


def _tubes(sets: Tensor, tube: int, preserve_topology: bool) -> Tensor:
    """Tubed skeletons of bool ``(N, K, *S)`` masks, each ``(n, k)`` on its own, not yet cut by a mask."""
    rank = sets.ndim - 2
    skeletons = skeletonize(sets.flatten(0, 1), preserve_topology=preserve_topology).view(sets.shape)
    return dilate_cross(skeletons, tube, rank)


def skeleton_masks(
    masks: Tensor, tube: int, *, softmax: bool, background: bool = True, preserve_topology: bool = True
) -> Tensor:
    """Tubed skeletons ``(N, C, *S)`` bool of class masks ``(N, C, *S)`` bool (see the module docstring).

    ``softmax``: the classes partition the image, so the foreground classes ``1..C-1`` share the skeleton
    of their union, and class 0 gets its own when ``background`` (else it is empty); otherwise every
    channel is skeletonised on its own. ``preserve_topology``: as :func:`~seglosses.ops.skeleton.skeletonize`.
    """
    if not softmax:
        return _tubes(masks, tube, preserve_topology) & masks
    foreground = masks[:, 1:].any(1, keepdim=True)
    sets = torch.cat([masks[:, :1], foreground], 1) if background else foreground
    tubes = _tubes(sets, tube, preserve_topology)
    first = tubes[:, :1] & masks[:, :1] if background else torch.zeros_like(masks[:, :1])
    return torch.cat([first, tubes[:, -1:] & masks[:, 1:]], 1)


def _binary_masks(target: Tensor, valid: Optional[Tensor]) -> Tensor:
    """``y > 0.5`` of a binary target (bool as it is), ignored elements in no mask."""
    masks = target if target.dtype == torch.bool else target > 0.5
    return masks if valid is None else masks & valid


def target_skeletons(
    target: Tensor,
    num_classes: Optional[int] = None,
    *,
    tube: int = TUBE,
    ignore_index: Optional[int] = None,
    include_background: bool = False,
    preserve_topology: bool = True,
) -> Tensor:
    """The tubed skeletons ``(N, C, *S)`` (bool) that :func:`skeleton_recall_loss` computes on the fly.

    Args:
        target: an index target ``(N, *S)`` (with ``num_classes``: the softmax loss's), or a binary /
            multi-label target ``(N, C, *S)`` (``num_classes=None``: the ``binary_`` loss's, each channel
            skeletonised on its own).
        num_classes: ``C`` for an index target.
        tube: dilations of the skeleton by the cross (the fork's 2; 0 keeps the bare skeleton).
        ignore_index: target value that belongs to no class.
        include_background: also the background's skeleton (class 0 of an index target; one more
            thinning per sample), for a loss that keeps class 0; False (the loss's default) leaves
            channel 0 empty.
        preserve_topology: as :func:`seglosses.ops.skeleton.skeletonize` (3-D only); False gives the
            fork's skeletons exactly (scikit-image's), which can lose a thin plate.

    Pass the result as ``skeletons`` to skip the computation during training.
    """
    tube = check_int("tube", tube, low=0)
    ignore_index = check_ignore_index(ignore_index)
    background = check_bool("include_background", include_background)
    keep = check_bool("preserve_topology", preserve_topology)
    if not isinstance(target, Tensor) or target.is_complex():
        raise expected("target to be a real or bool torch.Tensor", getattr(target, "dtype", type(target)))
    valid = None if ignore_index is None or target.dtype == torch.bool else target != ignore_index
    if num_classes is None:
        if not 3 <= target.ndim <= 5:
            raise expected("a binary target (N, C, *S) with 1 to 3 spatial dims", tuple(target.shape))
        return skeleton_masks(_binary_masks(target, valid), tube, softmax=False, preserve_topology=keep)
    if target.is_floating_point() or target.dtype == torch.bool or not 2 <= target.ndim <= 4:
        shown = f"dtype {target.dtype}, shape {tuple(target.shape)}"
        raise expected("an integer index target (N, *S) with 1 to 3 spatial dims for num_classes", shown)
    masks = _target_masks(IndexTarget(target, valid), check_int("num_classes", num_classes, low=2), 0)
    return skeleton_masks(masks, tube, softmax=True, background=background, preserve_topology=keep)


class SkeletonTransform:
    """Dataset transform: a target sample -> its tubed skeletons ``(C, *S)`` bool, computed once.

    With ``num_classes``: a label map ``(*S)`` (the softmax loss's target); without: a binary target
    ``(C, *S)`` (the ``binary_`` loss's). Options as :func:`target_skeletons`. Stack the results to
    ``(N, C, *S)`` and pass them as ``skeletons``.

    Example:
        >>> labels = torch.ones(5, 5, dtype=torch.long)
        >>> labels[2, 2] = 0  # a ring of class 1
        >>> SkeletonTransform(num_classes=2, tube=0)(labels)[1].int().tolist()
        [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    """

    def __init__(
        self,
        num_classes: Optional[int] = None,
        *,
        tube: int = TUBE,
        ignore_index: Optional[int] = None,
        include_background: bool = False,
        preserve_topology: bool = True,
    ):
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, low=2)
        self.tube = check_int("tube", tube, low=0)
        self.ignore_index = check_ignore_index(ignore_index)
        self.include_background = check_bool("include_background", include_background)
        self.preserve_topology = check_bool("preserve_topology", preserve_topology)

    def __call__(self, target: Tensor) -> Tensor:
        if not isinstance(target, Tensor):
            raise expected("a target sample as a torch.Tensor", type(target).__name__)
        return target_skeletons(
            target.unsqueeze(0), self.num_classes, tube=self.tube, ignore_index=self.ignore_index,
            include_background=self.include_background, preserve_topology=self.preserve_topology,
        )[0]  # fmt: skip


# --- the loss ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class SkeletonRecallOptions(RegionOptions):
    """Region options plus ``tube``, the dilations of the skeleton computed on the fly (``>= 0``)."""

    tube: int

    def checked(self) -> Dict[str, Any]:
        return {**super().checked(), "tube": check_int("tube", self.tube, low=0)}


def _check_skeletons(skeletons: Tensor, logits: Tensor) -> Tensor:
    """Shape, device and dtype of precomputed skeletons; with the input checks on, values in ``[0, 1]``."""
    if not isinstance(skeletons, Tensor) or skeletons.is_complex():
        raise expected("skeletons as a real or bool tensor", getattr(skeletons, "dtype", type(skeletons)))
    if skeletons.shape != logits.shape:
        shape = tuple(skeletons.shape)
        raise expected(f"skeletons of the logits' shape {tuple(logits.shape)}", f"shape {shape}")
    if skeletons.device != logits.device:
        raise expected(f"skeletons on the logits' device {logits.device}", f"device {skeletons.device}")
    if skeletons.dtype != torch.bool and input_checks_enabled() and skeletons.numel():
        outside = (~((skeletons >= 0) & (skeletons <= 1))).sum()  # NaN is outside; deferred on CUDA
        check_count(
            outside, lambda n: f"expected skeletons with values in [0, 1] (a mask), got {n} values outside"
        )
    return skeletons


def _prepare(
    logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool, mask: Optional[Tensor] = None
) -> Tuple[Tensor, Union[SoftmaxTarget, Tensor], Optional[Tensor]]:
    """Probabilities (0 at ignored pixels), the checked target (prepared for softmax, the tensor for
    binary) and the valid mask broadcastable to ``(N, C, *S)``, or None; ``mask`` ``(N, 1, *S)`` (a
    call's mask left after :func:`~seglosses.losses.cldice._pixel_inputs`) is part of the valid mask."""
    prepared: Union[SoftmaxTarget, Tensor]
    if binary:
        valid = check_binary_target(logits, target, ignore_index)
        probs, prepared = sigmoid_f32(logits), target
    else:
        prepared = softmax_target(logits, target, ignore_index)
        probs = softmax_f32(logits)
        valid = getattr(prepared, "valid", None)
        valid = None if valid is None else valid.unsqueeze(1)
    if mask is not None:
        valid = mask if valid is None else valid & mask
    if valid is not None:
        probs = torch.where(valid, probs, 0.0)
    return probs, prepared, valid


def _recall_statistics(skeletons: Optional[Tensor], opts: SkeletonRecallOptions) -> Statistics:
    def statistics(logits: Tensor, target: Tensor, ignore_index: Optional[int], binary: bool) -> Overlap:
        """``TP = Σ ω p S``, ``FN = Σ ω S - TP`` (``FP`` is not used: 0)."""
        logits, target, ignore_index, mask, omega = _pixel_inputs(logits, target, opts, binary)
        probs, prepared, valid = _prepare(logits, target, ignore_index, binary, mask)
        if skeletons is not None:
            tubes = _check_skeletons(skeletons, logits)
        elif binary:
            assert isinstance(prepared, Tensor)
            tubes = skeleton_masks(_binary_masks(prepared, valid), opts.tube, softmax=False)
        else:
            assert not isinstance(prepared, Tensor)
            masks = _target_masks(prepared, logits.shape[1], 0)
            if mask is not None:  # a dense target's masked pixels: in no class, as ignored ones
                masks = masks & mask
            tubes = skeleton_masks(masks, opts.tube, softmax=True, background=opts.include_background)
        weights = tubes.to(probs.dtype)
        if valid is not None:
            weights = torch.where(valid, weights, 0.0)
        if omega is not None:
            weights = weights * omega.to(probs.dtype)
        covered = (probs * weights).flatten(2).sum(-1)
        total = weights.flatten(2).sum(-1)
        return Overlap(covered, torch.zeros_like(covered), total - covered)

    return statistics


def _skeleton_recall(
    logits: Tensor, target: Tensor, skeletons: Optional[Tensor], opts: SkeletonRecallOptions, binary: bool
) -> Tensor:
    smooth = opts.smooth

    def per_class(s: Overlap, _: Dict[str, Optional[Tensor]]) -> Tensor:
        num, den = s.tp + smooth, s.tp + s.fn + smooth
        recall = num / den if smooth >= torch.finfo(den.dtype).tiny else safe_divide(num, den, 1.0)
        return 1 - recall

    statistics = _recall_statistics(skeletons, opts)
    return region_loss(logits, target, opts, binary, per_class, statistics=statistics)


def skeleton_recall_loss(
    logits: Tensor,
    target: Tensor,
    skeletons: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    tube: int = TUBE,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Skeleton Recall loss ``1 - (Σ p_c S_c + s) / (Σ S_c + s)`` per class (Kirchhoff et al., ECCV 2024).

    ``p = softmax(z)``; ``S_c`` is the tubed skeleton of class ``c`` (module docstring: the skeleton of
    the foreground classes' union by :func:`seglosses.ops.skeleton.skeletonize`, dilated ``tube`` times
    by the cross, cut by the class's mask). A perfect prediction gives 0 (``p_c = 1`` on ``S_c``), and so
    does a class without skeleton pixels. The authors' ``SoftSkeletonRecallLoss`` returns ``-recall``
    averaged over the foreground classes: this loss (``include_background=False``, the default) is that
    plus 1 (same gradient). ``smooth`` is theirs, 1.

    Args:
        logits: ``(N, C, *S)``, one to three spatial dims.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)`` (class mask ``y > 0.5``).
        skeletons: precomputed ``S`` ``(N, C, *S)`` (bool, or numbers in ``[0, 1]``), e.g. stacked from
            :class:`SkeletonTransform`; None computes them from the target at every call, on the logits'
            device (the thinning reads the host: precompute them for training).
        weight_map: per-pixel weights ``ω`` ``(N, *S)``, finite and ``>= 0``, in both sums:
            ``1 - (Σ ω p_c S_c + s) / (Σ ω S_c + s)``; the skeletons are the unweighted target's. Ones
            give the loss without them.
        mask: ``(N, *S)`` bool, True where a pixel counts: a pixel outside it is an ignored one (see
            ``ignore_index``; module docstring), whatever the target holds there (a soft target too).
        tube: dilations of the skeleton computed on the fly (the fork's 2; 0 keeps the bare skeleton).
        include_background: also class 0, with the skeleton of the background (default False: the
            foreground classes only, as the paper and the fork; ``none`` is then ``(N, C - 1)``).
        batch: pool the sums over the batch: one loss per class.
        smooth: ``s >= 0`` added to numerator and denominator.
        weight: per-class weights ``(C,)`` of the class mean.
        ignore_index: target value whose pixels count nowhere (and belong to no class's skeleton).
        sync: with ``batch=True``, sum the statistics over the processes of ``process_group``.
        process_group: the ``torch.distributed`` group for ``sync``.
        reduction: ``none`` -> ``(N, C)`` (``(C,)`` with ``batch=True``), multiplied by ``weight``;
            ``sum``; ``mean`` -> the (weighted) class mean averaged over samples.
    """
    opts = SkeletonRecallOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        tube=tube, include_background=include_background, batch=batch, smooth=smooth, weight=weight,
        ignore_index=ignore_index, reduction=reduction, sync=sync, process_group=process_group,
    )  # fmt: skip
    return _skeleton_recall(logits, target, skeletons, opts, binary=False)


def binary_skeleton_recall_loss(
    logits: Tensor,
    target: Tensor,
    skeletons: Optional[Tensor] = None,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    tube: int = TUBE,
    batch: bool = False,
    smooth: float = 1.0,
    weight: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
    sync: bool = False,
    process_group: Optional[ProcessGroup] = None,
) -> Tensor:
    r"""Skeleton Recall loss per sigmoid channel, ``1 - (Σ p_c S_c + s) / (Σ S_c + s)``, ``p = sigmoid(z)``.

    Each channel's mask (``y > 0.5``) is skeletonised on its own; target and ``skeletons`` have the
    logits' shape (:class:`SkeletonTransform` without ``num_classes`` precomputes them). Options,
    ``weight_map`` and ``mask`` as :func:`skeleton_recall_loss` (``ω`` applies to every channel);
    ``none`` -> ``(N, C)``.
    """
    opts = SkeletonRecallOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        tube=tube, batch=batch, smooth=smooth, weight=weight, ignore_index=ignore_index, reduction=reduction,
        sync=sync, process_group=process_group,
    )  # fmt: skip
    return _skeleton_recall(logits, target, skeletons, opts, binary=True)


class _WithSkeletons(PrecomputedInputModule):
    """A Skeleton Recall module: ``forward(logits, target, skeletons=None, weight_map=None, mask=None)``."""

    precomputed_input = "skeletons"

    def forward(  # type: ignore[override]
        self,
        logits: Tensor,
        target: Tensor,
        skeletons: Optional[Tensor] = None,
        weight_map: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        return self.call(logits, target, skeletons, weight_map, mask)


SkeletonRecallLoss, BinarySkeletonRecallLoss = module_pair(
    "SkeletonRecall",
    skeleton_recall_loss,
    binary_skeleton_recall_loss,
    SkeletonRecallOptions,
    _skeleton_recall,
    _WithSkeletons,
)

register(
    "skeleton_recall",
    SkeletonRecallLoss,
    domain="softmax",
    description="Skeleton Recall: 1 - recall of the target's tubed skeleton per class (Kirchhoff 2024)",
    kind="region",
)
register(
    "binary_skeleton_recall",
    BinarySkeletonRecallLoss,
    domain="binary",
    description="Skeleton Recall per sigmoid channel",
    kind="region",
)

__all__ = [
    "BinarySkeletonRecallLoss",
    "SkeletonRecallLoss",
    "SkeletonTransform",
    "binary_skeleton_recall_loss",
    "skeleton_masks",
    "skeleton_recall_loss",
    "target_skeletons",
]
