"""Segmentation metrics on hard predictions, accumulated over batches in all-reducible sums."""

from .confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
