"""Percentile Hausdorff distance (HD95 by default) between the boundaries of integer label maps.

The boundary of a class mask is its pixels with a face neighbour outside it, the image border counting
as outside (the mask minus its erosion by the cross-shaped element, as scipy's and MONAI's). With ``d_PG`` the
distances from the predicted boundary pixels to the nearest target boundary pixel and ``d_GP`` the
reverse (exact, from :func:`seglosses.ops.distance_transform`, in ``spacing`` units)::

    HD_q = max(percentile_q(d_PG), percentile_q(d_GP))        (linear interpolation, as numpy)

as MONAI's ``compute_hausdorff_distance(percentile=95)``. Ignored pixels are background for every
class before the boundaries are taken and are removed from both boundaries afterwards.

**Defined values.** A class absent from both prediction and target scores 0 (perfect agreement) and
does not count in the data-set mean; a class present in only one of them scores the image diagonal
(``sqrt(Σ (n_a s_a)²)``, more than any distance inside the image), never inf or NaN.
:class:`HausdorffDistance` averages over the images where the class is present in either map and
scores 0 for a class never present; its state is a sum and a count per class, all-reducible.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._core.numerics import safe_divide
from .._core.options import check_ignore_index, check_int, check_number
from .._core.state import Accumulator, PerClass
from ..distributed import ProcessGroup
from ..ops.bands import face_boundary
from ..ops.distance import Spacing, check_spacing, distance_transform, spacing_steps
from .boundary import _class_masks, _prepare


def _percentile(values: Tensor, keep: Tensor, q: float) -> Tensor:
    """Per row of ``(B, P)``, the ``q``-th percentile of the entries where ``keep`` (numpy's linear rule);
    0 for a row with none."""
    count = keep.sum(-1)
    ordered = torch.where(keep, values, torch.inf).sort(dim=-1).values
    position = (count - 1).clamp(min=0).to(values.dtype) * (q / 100)
    low = position.floor().long()
    high = position.ceil().long()
    below, above = ordered.gather(-1, low[:, None])[:, 0], ordered.gather(-1, high[:, None])[:, 0]
    result = below + (above - below) * (position - low.to(values.dtype))
    return torch.where(count > 0, result, 0.0)


def hausdorff_terms(
    prediction: Tensor,
    target: Tensor,
    *,
    num_classes: Optional[int] = None,
    percentile: float = 95.0,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """``(distance, present)`` per (sample, class) ``(N, C)``: the distance of :func:`hausdorff_distance`
    and whether the class is in either map (the pairs a data-set mean counts)."""
    q = check_number("percentile", percentile, low=0.0, high=100.0)
    prediction, target, valid, c = _prepare(prediction, target, num_classes, ignore_index)
    spatial = tuple(target.shape[1:])
    steps = spacing_steps(spacing, len(spatial))
    masks = [_class_masks(m, c, valid) for m in (prediction, target)]
    edges = [face_boundary(m) for m in masks]
    if valid is not None:
        edges = [e & valid.unsqueeze(1) for e in edges]
    # distance of every pixel to the nearest boundary pixel of the other map
    to_edge = [distance_transform(~e, steps, spatial_dims=len(spatial)) for e in edges]
    n = target.shape[0]
    pixels = math.prod(spatial)  # not -1: an empty batch (N = 0) has no size to infer it from
    flat = [e.reshape(n * c, pixels) for e in edges]
    directed = [
        _percentile(to_edge[1].reshape(n * c, pixels), flat[0], q),  # predicted boundary -> target's
        _percentile(to_edge[0].reshape(n * c, pixels), flat[1], q),  # target boundary -> prediction's
    ]
    distance = torch.maximum(*directed)
    in_prediction, in_target = (f.any(-1) for f in flat)
    diagonal = math.hypot(*(size * step for size, step in zip(spatial, steps)))
    distance = torch.where(in_prediction & in_target, distance, diagonal)
    present = in_prediction | in_target
    return torch.where(present, distance, 0.0).reshape(n, c), present.reshape(n, c)


def hausdorff_distance(
    prediction: Tensor,
    target: Tensor,
    *,
    num_classes: Optional[int] = None,
    percentile: float = 95.0,
    spacing: Spacing = None,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """Percentile Hausdorff distance ``(N, C)`` (float32) of label maps ``(N, *S)``, 2-D or 3-D.

    See the module docstring for the definition and the values of absent classes.

    Example:
        >>> target = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> target[0, 2:5, 2:5] = 1
        >>> hausdorff_distance(torch.roll(target, 2, dims=-1), target)[0, 1].item()  # square moved 2 pixels
        2.0
    """
    distance, _ = hausdorff_terms(
        prediction, target, num_classes=num_classes, percentile=percentile, spacing=spacing,
        ignore_index=ignore_index,
    )  # fmt: skip
    return distance


class HausdorffDistance(Accumulator):
    """Accumulates the percentile Hausdorff distance per class over images: a sum and a count per class
    (the statistics of an :class:`~seglosses._core.state.Accumulator`); ``compute()`` gives the mean
    over images where the class is present in either map, 0 for a class never present. In a process
    group each ``update`` sums the batch's contribution over the processes (``sync=True``; every rank
    must call it)."""

    total: Tensor
    count: Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        percentile: float = 95.0,
        spacing: Spacing = None,
        ignore_index: Optional[int] = None,
        sync: bool = True,
        process_group: Optional[ProcessGroup] = None,
    ) -> None:
        super().__init__(check_int("num_classes", num_classes), sync=sync, process_group=process_group)
        self.percentile = check_number("percentile", percentile, low=0.0, high=100.0)
        self.spacing = check_spacing(spacing)
        self.ignore_index = check_ignore_index(ignore_index)
        self.add_state("total", (PerClass(),), dtype=torch.float64, kind="sum")
        self.add_state("count", (PerClass(),), dtype=torch.int64, kind="count")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add the per-image distances of a batch of label maps ``(N, *S)``."""
        distance, present = hausdorff_terms(
            prediction, target, num_classes=self.num_classes, percentile=self.percentile,
            spacing=self.spacing, ignore_index=self.ignore_index,
        )  # fmt: skip
        total, count = self.synced(distance.sum(0).to(self.total), present.sum(0).to(self.count))
        self.total += total
        self.count += count

    def compute(self) -> Tensor:
        """Per-class mean distance ``(C,)`` (float32)."""
        return safe_divide(self.total, self.count.to(self.total), 0.0).float()


__all__ = ["HausdorffDistance", "hausdorff_distance", "hausdorff_terms"]
