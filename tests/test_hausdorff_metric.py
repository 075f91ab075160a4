"""Percentile Hausdorff distance against a brute-force reference (scipy erosion, all pairwise distances)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import seglosses as sl
from seglosses.metrics import HausdorffDistance, hausdorff_distance

ndimage = pytest.importorskip("scipy.ndimage")


def brute_force(prediction, target, num_classes, q, spacing, ignore_index=None):
    """Boundaries by scipy erosion (cross element, border as background), distances by enumerating pairs."""
    rank = target.ndim - 1
    element = ndimage.generate_binary_structure(rank, 1)  # the cross: face neighbours
    out = np.zeros((target.shape[0], num_classes))
    for n in range(target.shape[0]):
        valid = np.ones(target.shape[1:], bool) if ignore_index is None else target[n] != ignore_index
        edges = []
        for labels in (prediction[n], target[n]):
            masks = [(labels == c) & valid for c in range(num_classes)]
            edges.append([m & ~ndimage.binary_erosion(m, element, border_value=0) & valid for m in masks])
        for c in range(num_classes):
            points = [np.argwhere(e[c]) * np.asarray(spacing) for e in edges]
            if len(points[0]) == 0 or len(points[1]) == 0:
                continue
            pairwise = np.sqrt(((points[0][:, None] - points[1][None]) ** 2).sum(-1))
            out[n, c] = max(np.percentile(pairwise.min(1), q), np.percentile(pairwise.min(0), q))
    return torch.from_numpy(out)


def blobs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=g)[:, None]
    pool = torch.nn.functional.avg_pool2d if len(shape) == 3 else torch.nn.functional.avg_pool3d
    return torch.bucketize(pool(noise, 5, 1, 2)[:, 0], torch.tensor([-0.2, 0.2]))


@pytest.mark.parametrize("q", [95.0, 100.0, 50.0])
@pytest.mark.parametrize("shape, spacing", [((2, 30, 26), (1.0, 1.0)), ((2, 24, 20), (0.5, 2.0)),
                                            ((1, 12, 13, 11), (1.0, 1.5, 0.8))])  # fmt: skip
def test_matches_brute_force(q, shape, spacing):
    target = blobs(shape, 0)
    prediction = blobs(shape, 1)
    result = hausdorff_distance(prediction, target, num_classes=3, percentile=q, spacing=spacing)
    expected = brute_force(prediction.numpy(), target.numpy(), 3, q, spacing)
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)


def test_ignored_pixels_are_removed():
    target, prediction = blobs((2, 30, 26), 2), blobs((2, 30, 26), 3)
    target[:, :, :5] = 255
    result = hausdorff_distance(prediction, target, num_classes=3, ignore_index=255)
    expected = brute_force(prediction.numpy(), target.numpy(), 3, 95.0, (1.0, 1.0), ignore_index=255)
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)


def test_hand_values_and_absent_classes():
    """A 3×3 square moved 2 pixels: its boundary is 2 away; predicted nowhere: the image diagonal."""
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    assert hausdorff_distance(torch.roll(target, 2, dims=-1), target)[0, 1] == 2.0
    assert hausdorff_distance(target, target).tolist() == [[0.0, 0.0]]
    missed = hausdorff_distance(torch.zeros_like(target), target, spacing=(1.0, 2.0))
    assert missed[0, 1].item() == pytest.approx(math.sqrt(8**2 + 16**2))
    absent = hausdorff_distance(torch.zeros_like(target), torch.zeros_like(target), num_classes=3)
    assert absent.tolist() == [[0.0, 0.0, 0.0]]


def test_accumulator_averages_over_images_where_the_class_is_present():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1  # class 1 only in the first image; class 2 nowhere
    prediction = torch.roll(target, 2, dims=-1)
    metric = HausdorffDistance(3)
    metric.update(prediction[:1], target[:1])
    metric.update(prediction[1:], target[1:])
    per_image = hausdorff_distance(prediction, target, num_classes=3)
    assert metric.compute().tolist() == [per_image[:, 0].mean().item(), 2.0, 0.0]
    assert metric.count.tolist() == [2, 1, 0]
    state = metric.state_dict()
    restored = HausdorffDistance(3)
    restored.load_state_dict(state)
    assert torch.equal(restored.compute(), metric.compute())
    metric.reset()
    assert metric.count.sum() == 0


def test_errors():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(sl.SegLossError, match="percentile"):
        hausdorff_distance(labels, labels, percentile=101)
    with pytest.raises(sl.SegLossError, match="integer label map"):
        hausdorff_distance(labels.float(), labels)
    with pytest.raises(sl.SegLossError, match="spacing"):
        hausdorff_distance(labels, labels, spacing=(1.0, 1.0, 1.0))


def test_matches_monai_where_both_are_defined():
    metrics = pytest.importorskip("monai.metrics")
    target, prediction = blobs((2, 30, 26), 4), blobs((2, 30, 26), 5)
    ours = hausdorff_distance(prediction, target, num_classes=3, percentile=95)
    one_hot = [torch.nn.functional.one_hot(x, 3).movedim(-1, 1) for x in (prediction, target)]
    theirs = metrics.compute_hausdorff_distance(*one_hot, include_background=True, percentile=95)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-5, atol=1e-5)
