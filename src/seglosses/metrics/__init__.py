"""Segmentation metrics on hard predictions, accumulated over batches in all-reducible sums."""

from .boundary import boundary_iou, boundary_iou_counts, iou_from_counts, mask_iou
from .confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix", "boundary_iou", "boundary_iou_counts", "iou_from_counts", "mask_iou"]
