"""Segmentation metrics on hard predictions, accumulated over batches in all-reducible sums."""

from .boundary import BoundaryIoU, boundary_iou, boundary_iou_counts, iou_from_counts, mask_iou
from .confusion import ConfusionMatrix
from .hausdorff import HausdorffDistance, hausdorff_distance, hausdorff_terms

__all__ = [
    "BoundaryIoU",
    "ConfusionMatrix",
    "HausdorffDistance",
    "boundary_iou",
    "boundary_iou_counts",
    "hausdorff_distance",
    "hausdorff_terms",
    "iou_from_counts",
    "mask_iou",
]
