"""Boundary IoU and mask IoU against hand-derived values and a scipy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import seglosses as sl
from seglosses.metrics import BoundaryIoU, boundary_iou, boundary_iou_counts, mask_iou


def square(top: int, left: int, size: int = 7) -> torch.Tensor:
    """A (1, 7, 7) label map: class 1 on a 3×3 square, class 0 elsewhere."""
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[0, top : top + 3, left : left + 3] = 1
    return labels


def test_identical_maps_score_one_and_absent_classes_score_one():
    target = square(2, 2)
    scores = boundary_iou(target, target, num_classes=3)
    assert scores.tolist() == [[1.0, 1.0, 1.0]]  # class 2 is absent from both


def test_shifted_square_by_hand():
    """d = max(1, round(0.02 · 7√2)) = 1: each 3×3 square's band is its 8-pixel ring.

    Shifted by one column, the rings share 4 pixels: 4 / (8 + 8 - 4) = 1/3. The masks share 6 of 12.
    """
    target, prediction = square(2, 2), square(2, 3)
    intersection, union = boundary_iou_counts(prediction, target)
    assert intersection[0, 1] == 4 and union[0, 1] == 12
    torch.testing.assert_close(boundary_iou(prediction, target)[0, 1], torch.tensor(1 / 3))
    torch.testing.assert_close(mask_iou(prediction, target)[0, 1], torch.tensor(6 / 12))


def test_accumulating_metric_sums_counts_over_batches():
    """Two batches: the shifted squares (4 of 12 ring pixels shared) and a perfect pair (8 of 8): 12 / 20,
    not the mean of the two ratios; class 2 is absent from every band and scores 1."""
    metric = BoundaryIoU(3)
    metric.update(square(2, 3), square(2, 2))
    metric.update(square(2, 2), square(2, 2))
    assert metric.intersection.tolist()[1] == 12 and metric.union.tolist()[1] == 20
    torch.testing.assert_close(metric.compute()[1:], torch.tensor([12 / 20, 1.0]))
    assert set(metric.state_dict()) == {"intersection", "union"}
    metric.reset()
    assert metric.union.sum() == 0 and metric.compute().tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(sl.SegLossError, match="num_classes"):
        BoundaryIoU(0)


def test_larger_dilation_widens_the_band():
    """With d = 2 the 3×3 square erodes to nothing, so its band is the whole square."""
    target, prediction = square(2, 2), square(2, 3)
    intersection, union = boundary_iou_counts(prediction, target, dilation_ratio=0.2)  # round(1.98) = 2
    assert intersection[0, 1] == 6 and union[0, 1] == 12


def test_ignored_pixels_are_removed_after_the_bands():
    target, prediction = square(2, 2), square(2, 3)
    target[0, :, 4:] = 255  # ignore columns 4..6
    intersection, union = boundary_iou_counts(prediction, target, ignore_index=255)
    # target band, with its column 4 ignored (background for the erosion): the 3×2 block at cols 2-3 is
    # all band (d = 1 erodes it away); prediction band restricted to cols 0-3: (2,3), (3,3), (4,3)
    assert intersection[0, 1] == 3 and union[0, 1] == 6
    everything = torch.full_like(target, 255)
    assert boundary_iou(prediction, everything, ignore_index=255, num_classes=2).tolist() == [[1.0, 1.0]]


def test_three_dimensional_maps():
    target = torch.zeros(1, 5, 5, 5, dtype=torch.long)
    target[0, 1:4, 1:4, 1:4] = 1
    scores = boundary_iou(target, target)
    assert scores.shape == (1, 2) and scores.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize(
    "prediction, target, message",
    [
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "integer label map as prediction"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long), "one shape"),
        (
            torch.full((1, 4, 4), 3),
            torch.zeros(1, 4, 4, dtype=torch.long),
            r"predicted class indices in \[0, 2\)",
        ),
    ],
)
def test_errors(prediction, target, message):
    with pytest.raises(sl.SegLossError, match=message):
        boundary_iou(prediction, target, num_classes=2)


def scipy_boundary_iou(prediction, target, num_classes, dilation_ratio, ignore_index):
    """A straightforward reference: scipy's binary erosion, d iterations, border as background."""
    import math

    ndimage = pytest.importorskip("scipy.ndimage")
    spatial = target.shape[1:]
    d = max(1, round(dilation_ratio * math.sqrt(sum(n * n for n in spatial))))
    element = np.ones((3,) * len(spatial), dtype=bool)
    scores = np.zeros((target.shape[0], num_classes))
    for n in range(target.shape[0]):
        valid = target[n] != ignore_index
        bands = []
        for labels in (prediction[n], target[n]):
            bands.append([])
            for c in range(num_classes):
                mask = (labels == c) & valid
                eroded = ndimage.binary_erosion(mask, element, iterations=d, border_value=0)
                bands[-1].append(mask & ~eroded & valid)
        for c in range(num_classes):
            union = (bands[0][c] | bands[1][c]).sum()
            scores[n, c] = 1.0 if union == 0 else (bands[0][c] & bands[1][c]).sum() / union
    return torch.from_numpy(scores)


@pytest.mark.parametrize("shape, ratio", [((3, 40, 31), 0.02), ((2, 25, 30), 0.1), ((2, 12, 14, 10), 0.06)])
def test_matches_a_scipy_erosion_reference(shape, ratio):
    g = torch.Generator().manual_seed(sum(shape))
    noise = torch.randn(shape, generator=g)[:, None]
    pool = torch.nn.functional.avg_pool2d if len(shape) == 3 else torch.nn.functional.avg_pool3d
    smooth = pool(noise, 5, 1, 2)[:, 0]
    target = torch.bucketize(smooth, torch.tensor([-0.2, 0.2]))  # three classes in blobs
    prediction = torch.roll(target, shifts=2, dims=-1)
    target[:, :3] = 255
    result = boundary_iou(prediction, target, num_classes=3, dilation_ratio=ratio, ignore_index=255)
    expected = scipy_boundary_iou(prediction.numpy(), target.numpy(), 3, ratio, 255)
    torch.testing.assert_close(result.double(), expected)
