"""Tensor operations the losses build on: exact distance transforms on the tensor's device."""

from .distance import distance_transform, signed_distance_map, two_sided_distance

__all__ = ["distance_transform", "signed_distance_map", "two_sided_distance"]
