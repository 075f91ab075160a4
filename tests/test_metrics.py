"""Confusion-matrix metrics against hand-derived values."""

from __future__ import annotations

import pytest
import torch

import seglosses as sl
from seglosses.metrics import ConfusionMatrix


def test_hand_derived_values():
    """Target (0, 0, 1, 1, 2, 2), prediction (0, 1, 1, 1, 0, 2): M = [[1,1,0],[0,2,0],[1,0,1]]."""
    metric = ConfusionMatrix(3)
    metric.update(torch.tensor([[0, 1, 1, 1, 0, 2]]), torch.tensor([[0, 0, 1, 1, 2, 2]]))
    assert metric.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    result = metric.compute()
    # class 0: TP 1, FP 1, FN 1; class 1: TP 2, FP 1, FN 0; class 2: TP 1, FP 0, FN 1
    torch.testing.assert_close(result["dice"], torch.tensor([2 / 4, 4 / 5, 2 / 3]))
    torch.testing.assert_close(result["iou"], torch.tensor([1 / 3, 2 / 3, 1 / 2]))
    torch.testing.assert_close(result["precision"], torch.tensor([1 / 2, 2 / 3, 1 / 1]))
    torch.testing.assert_close(result["recall"], torch.tensor([1 / 2, 2 / 2, 1 / 2]))
    torch.testing.assert_close(result["mean_dice"], torch.tensor((2 / 4 + 4 / 5 + 2 / 3) / 3))
    assert result["support"].tolist() == [2, 2, 2]


def test_absent_classes_have_defined_values_and_stay_out_of_the_means():
    metric = ConfusionMatrix(4)
    # class 2 predicted but absent from the target; class 3 absent from both; class 1 never predicted
    metric.update(torch.tensor([0, 0, 2, 0]), torch.tensor([0, 0, 0, 1]))
    result = metric.compute()
    assert result["dice"][3] == 1.0 and result["precision"][3] == 1.0  # absent from both: perfect
    assert result["dice"][2] == 0.0 and result["recall"][2] == 0.0  # predicted but absent: a miss
    assert result["precision"][1] == 0.0  # present, never predicted
    dice = result["dice"]
    torch.testing.assert_close(result["mean_dice"], dice[:3].mean())
    for value in result.values():
        assert torch.isfinite(value.float()).all()


def test_accumulates_like_one_batch_and_honours_ignore_index():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (4, 8, 8), generator=g)
    target[:, :2] = 255
    whole = ConfusionMatrix(3, ignore_index=255)
    whole.update(logits, target)
    parts = ConfusionMatrix(3, ignore_index=255)
    parts.update(logits[:1], target[:1])
    parts.update(logits[1:].argmax(1), target[1:])
    assert torch.equal(whole.matrix, parts.matrix)
    assert int(whole.matrix.sum()) == int((target != 255).sum())


def test_metric_on_confident_logits_matches_the_soft_dice_loss():
    """At saturated logits the soft Dice loss is 1 - the hard Dice score (smooth = 0)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 6, 6, generator=g) * 1000
    target = torch.randint(0, 3, (1, 6, 6), generator=g)
    metric = ConfusionMatrix(3)
    metric.update(logits, target)
    loss = sl.dice_loss(logits.double(), target, smooth=0.0, reduction="none")[0]
    torch.testing.assert_close(metric.compute()["dice"], (1 - loss).float())


def test_state_dict_round_trip_and_reset():
    metric = ConfusionMatrix(3)
    metric.update(torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2]))
    restored = ConfusionMatrix(3)
    restored.load_state_dict(metric.state_dict())
    assert torch.equal(restored.matrix, metric.matrix)
    restored.reset()
    assert int(restored.matrix.sum()) == 0


@pytest.mark.parametrize(
    "prediction, target, message",
    [
        (torch.tensor([0, 3]), torch.tensor([0, 1]), r"predicted class indices in \[0, 3\).*\[3\]"),
        (torch.tensor([0, 1]), torch.tensor([0, 5]), r"target class indices in \[0, 3\).*\[5\]"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), r"logits \(N, C = 3, \*S\)"),
        (torch.tensor([0, 1, 1]), torch.tensor([0, 1]), r"target's shape"),
        (torch.tensor([0, 1]), torch.tensor([0.0, 1.0]), r"integer target"),
    ],
)
def test_errors(prediction, target, message):
    with pytest.raises(sl.SegLossError, match=message):
        ConfusionMatrix(3).update(prediction, target)


def test_an_empty_batch_adds_nothing():
    """N = 0 (an empty distributed shard: every rank must still call update) leaves every metric as it was."""
    from seglosses.metrics import BoundaryIoU, HausdorffDistance, boundary_iou

    labels = torch.tensor([[[0, 1, 1], [0, 2, 2]]])
    empty = labels[:0]
    for metric in (ConfusionMatrix(3), BoundaryIoU(3), HausdorffDistance(3)):
        metric.update(labels, labels)
        before = {k: v.clone() for k, v in metric.state_dict().items()}
        metric.update(empty, empty)
        for key, value in metric.state_dict().items():
            assert torch.equal(value, before[key]), f"{type(metric).__name__}.{key}"
    ConfusionMatrix(3).update(torch.zeros(0, 3, 2, 3), empty)  # logits of an empty batch
    assert boundary_iou(empty, empty, num_classes=3).shape == (0, 3)
    with pytest.raises(sl.SegLossError, match="num_classes with an empty batch"):
        boundary_iou(empty, empty)
