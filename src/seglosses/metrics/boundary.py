"""Boundary IoU (Cheng et al. 2021) and mask IoU on integer label maps (SPEC section 4).

The band of a mask is the mask minus its erosion by ``d = max(1, round(r · diagonal))`` iterations of a
3×3 (3×3×3) square element, the image border padded with background; ``diagonal`` runs over all spatial
axes and ``round`` is Python's (half to even). Ignored pixels are background for every class before the
erosion and are removed from both bands afterwards. Boundary IoU = ``|Bp ∩ Bg| / |Bp ∪ Bg|`` per
(sample, class); a class absent from both scores 1.0. Over a data set, sum the intersections and
unions per class before dividing (:func:`boundary_iou_counts`, or the accumulating :class:`BoundaryIoU`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._core.errors import expected
from .._core.numerics import safe_divide
from .._core.options import check_ignore_index, check_int, check_number
from .._core.state import Accumulator, PerClass
from .._core.targets import check_class_indices
from ..distributed import ProcessGroup
from ..ops.bands import band_width, boundary_band


def _class_masks(labels: Tensor, num_classes: int, valid: Optional[Tensor]) -> Tensor:
    """``(N, C, *S)`` bool masks; ignored pixels are background for every class."""
    masks = labels.unsqueeze(1) == torch.arange(num_classes, device=labels.device).view(
        1, -1, *[1] * (labels.ndim - 1)
    )
    return masks if valid is None else masks & valid.unsqueeze(1)


def _prepare(
    prediction: Tensor, target: Tensor, num_classes: Optional[int], ignore_index: Optional[int]
) -> Tuple[Tensor, Tensor, Optional[Tensor], int]:
    for name, tensor in (("prediction", prediction), ("target", target)):
        if not isinstance(tensor, Tensor) or tensor.is_floating_point() or tensor.dtype == torch.bool:
            raise expected(f"an integer label map as {name}", getattr(tensor, "dtype", type(tensor).__name__))
    if prediction.shape != target.shape or target.ndim not in (3, 4) or 0 in target.shape[1:]:
        raise expected("prediction and target label maps of one shape (N, H, W) or (N, D, H, W)",
                       f"{tuple(prediction.shape)} and {tuple(target.shape)}")  # fmt: skip
    ignore_index = check_ignore_index(ignore_index)
    if num_classes is not None:  # an int, not 2.5, True or 10**400 (an OverflowError in torch)
        num_classes = check_int("num_classes", num_classes)
    valid = None if ignore_index is None else target != ignore_index
    kept = target if valid is None else target[valid]
    if num_classes is None and target.shape[0] == 0:  # an empty batch (an empty distributed shard)
        raise expected("num_classes with an empty batch", tuple(target.shape))
    if num_classes is None:
        num_classes = max(int(kept.max()) if kept.numel() else 0, int(prediction.max())) + 1
    check_class_indices(kept, num_classes, "target")
    check_class_indices(prediction.flatten(), num_classes, "predicted")
    return prediction, target, valid, num_classes


def boundary_iou_counts(
    prediction: Tensor,
    target: Tensor,
    *,
    num_classes: Optional[int] = None,
    dilation_ratio: float = 0.02,
    ignore_index: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """``(intersection, union)`` band pixel counts ``(N, C)``, int64, to be summed over a data set."""
    check_number("dilation_ratio", dilation_ratio, low=0.0)
    prediction, target, valid, c = _prepare(prediction, target, num_classes, ignore_index)
    d = band_width(dilation_ratio, target.shape[1:])
    bands = [boundary_band(_class_masks(m, c, valid).float(), d) > 0 for m in (prediction, target)]
    return _overlap_counts(*bands)


def _overlap_counts(prediction_masks: Tensor, target_masks: Tensor) -> Tuple[Tensor, Tensor]:
    """``|P ∩ G|`` and ``|P ∪ G|`` per (sample, class); the masks already exclude ignored pixels."""
    dims = tuple(range(2, prediction_masks.ndim))
    return (prediction_masks & target_masks).sum(dims), (prediction_masks | target_masks).sum(dims)


def iou_from_counts(intersection: Tensor, union: Tensor) -> Tensor:
    """``intersection / union`` as float32, 1.0 where the union is empty (a class absent from both)."""
    return safe_divide(intersection.double(), union.double(), 1.0).float()


def boundary_iou(
    prediction: Tensor,
    target: Tensor,
    *,
    num_classes: Optional[int] = None,
    dilation_ratio: float = 0.02,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """Boundary IoU ``(N, C)`` of integer label maps (see the module docstring)."""
    intersection, union = boundary_iou_counts(
        prediction, target, num_classes=num_classes, dilation_ratio=dilation_ratio, ignore_index=ignore_index
    )
    return iou_from_counts(intersection, union)


def mask_iou(
    prediction: Tensor,
    target: Tensor,
    *,
    num_classes: Optional[int] = None,
    dilation_ratio: float = 0.02,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """Mask IoU ``(N, C)`` of integer label maps over valid pixels; a class absent from both scores 1.0.

    ``dilation_ratio`` is accepted for the same signature as :func:`boundary_iou` and not used.
    """
    check_number("dilation_ratio", dilation_ratio, low=0.0)
    prediction, target, valid, c = _prepare(prediction, target, num_classes, ignore_index)
    return iou_from_counts(
        *_overlap_counts(_class_masks(prediction, c, valid), _class_masks(target, c, valid))
    )


class BoundaryIoU(Accumulator):
    """Accumulates Boundary IoU per class over a data set: band intersections and unions summed over
    images (int64 statistics ``intersection`` and ``union`` of an
    :class:`~seglosses._core.state.Accumulator`); ``compute()`` divides, 1.0 for a
    class absent from every band. In a process group each ``update`` sums the batch's counts over the
    processes (``sync=True``, the default; every rank must call it), so every process holds the same
    state.

    Example:
        >>> metric = BoundaryIoU(2)
        >>> labels = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> labels[:, 2:6, 2:6] = 1
        >>> metric.update(labels, labels)
        >>> metric.compute()
        tensor([1., 1.])
    """

    intersection: Tensor
    union: Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        dilation_ratio: float = 0.02,
        ignore_index: Optional[int] = None,
        sync: bool = True,
        process_group: Optional[ProcessGroup] = None,
    ) -> None:
        super().__init__(check_int("num_classes", num_classes), sync=sync, process_group=process_group)
        self.dilation_ratio = check_number("dilation_ratio", dilation_ratio, low=0.0)
        self.ignore_index = check_ignore_index(ignore_index)
        self.add_state("intersection", (PerClass(),), dtype=torch.int64, kind="count")
        self.add_state("union", (PerClass(),), dtype=torch.int64, kind="count")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add the band counts of a batch of label maps ``(N, *S)``."""
        counts = boundary_iou_counts(
            prediction, target, num_classes=self.num_classes, dilation_ratio=self.dilation_ratio,
            ignore_index=self.ignore_index,
        )  # fmt: skip
        both, either = self.synced(*(count.sum(0).to(self.intersection) for count in counts))
        self.intersection += both
        self.union += either

    def compute(self) -> Tensor:
        """Per-class Boundary IoU ``(C,)`` (float32) over everything added so far."""
        return iou_from_counts(self.intersection, self.union)
