"""Cross-entropy family: hand-derived values, torch agreement, the mean's denominator, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs

import seglosses.functional as SF


def two_class_pixel():
    """One pixel, logits (0, ln 3): p = (1/4, 3/4)."""
    return torch.tensor([0.0, math.log(3.0)], dtype=torch.float64).view(1, 2, 1), torch.tensor([[1]])


def test_hand_value():
    logits, target = two_class_pixel()
    torch.testing.assert_close(
        SF.cross_entropy_loss(logits, target), torch.tensor(-math.log(3 / 4), dtype=torch.float64)
    )


def test_label_smoothing_hand_value():
    """ε = 0.2, C = 2: y' = (0.1, 0.9)."""
    logits, target = two_class_pixel()
    expected = -(0.1 * math.log(1 / 4) + 0.9 * math.log(3 / 4))
    torch.testing.assert_close(SF.cross_entropy_loss(logits, target, label_smoothing=0.2).item(), expected)


def test_class_weighted_mean_divides_by_summed_weights():
    """Pixels of class 0 and 1 with weights (1, 3): (1·l0 + 3·l1) / (1 + 3)."""
    logits = torch.tensor([[[0.0, 1.0], [math.log(3.0), 0.0]]], dtype=torch.float64)  # (1, 2, 2)
    target = torch.tensor([[0, 1]])
    l0 = -math.log(1 / (1 + 3))  # pixel 0: z = (0, ln 3), true class 0
    l1 = -math.log(1 / (1 + math.e))  # pixel 1: z = (1, 0), true class 1
    value = SF.cross_entropy_loss(logits, target, weight=[1.0, 3.0])
    torch.testing.assert_close(value.item(), (1 * l0 + 3 * l1) / 4)


def test_mean_with_ignore_divides_by_valid_pixels():
    """The must-not-happen of issue 2: dividing by all pixels instead of the valid ones."""
    logits, target = make_inputs("softmax", (2, 3, 4, 4), ignore_fraction=0.5)
    valid = target != IGNORE
    per_pixel = SF.cross_entropy_loss(logits, target, ignore_index=IGNORE, reduction="none")
    mean = SF.cross_entropy_loss(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(mean, per_pixel.sum() / valid.sum())
    assert not torch.isclose(mean, per_pixel.sum() / valid.numel())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_torch_for_index_targets(smoothing, weighted):
    logits, target = make_inputs("softmax", (2, 4, 5, 6), ignore_fraction=0.3)
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=torch.float64) if weighted else None
    ours = SF.cross_entropy_loss(
        logits, target, weight=weight, label_smoothing=smoothing, ignore_index=IGNORE
    )
    theirs = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing, ignore_index=IGNORE)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_one_hot_target_equals_index_target(smoothing):
    """Dense one-hot gives exactly what its index target gives, with weights (unlike torch's soft mean)."""
    logits, target = make_inputs("softmax", (2, 3, 4, 5))
    one_hot = F.one_hot(target, 3).movedim(-1, 1).double()
    weight = [0.2, 1.0, 3.0]
    for reduction in ("none", "mean", "sum"):
        a = SF.cross_entropy_loss(
            logits, target, weight=weight, label_smoothing=smoothing, reduction=reduction
        )
        b = SF.cross_entropy_loss(
            logits, one_hot, weight=weight, label_smoothing=smoothing, reduction=reduction
        )
        torch.testing.assert_close(a, b)


def test_soft_target_mean_is_per_pixel():
    """Probability targets sum to 1 per pixel, so mean = Σ / pixel count (torch agrees without weights)."""
    logits, _ = make_inputs("softmax", (2, 3, 4, 5))
    soft = torch.softmax(torch.randn(2, 3, 4, 5, dtype=torch.float64), 1)
    torch.testing.assert_close(SF.cross_entropy_loss(logits, soft), F.cross_entropy(logits, soft))


def test_gradient_is_p_minus_y():
    """∂L/∂z = (p - y) / |V| for the mean over valid pixels."""
    logits, target = make_inputs("softmax", (2, 3, 4, 5), ignore_fraction=0.25)
    (grad,) = torch.autograd.grad(SF.cross_entropy_loss(logits, target, ignore_index=IGNORE), logits)
    valid = target != IGNORE
    y = F.one_hot(target.masked_fill(~valid, 0), 3).movedim(-1, 1)
    expected = (torch.softmax(logits, 1) - y) * valid.unsqueeze(1) / valid.sum()
    torch.testing.assert_close(grad, expected)


def test_binary_matches_torch_and_ignores():
    logits, target = make_inputs("binary", (2, 3, 4, 5), ignore_fraction=0.3)
    valid = target != IGNORE
    pos_weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    ours = SF.binary_cross_entropy_loss(
        logits, target, pos_weight=pos_weight, ignore_index=IGNORE, reduction="none"
    )
    theirs = F.binary_cross_entropy_with_logits(
        logits, target.clamp_max(1).double(), pos_weight=pos_weight.view(1, 3, 1, 1), reduction="none"
    )
    torch.testing.assert_close(ours, theirs * valid)
    mean = SF.binary_cross_entropy_loss(logits, target, pos_weight=pos_weight, ignore_index=IGNORE)
    torch.testing.assert_close(mean, (theirs * valid).sum() / valid.sum())


def test_binary_hand_value_with_smoothing_and_weight():
    """z = ln 3 (p = 3/4), y = 1, ε = 0.2 -> y' = 0.9; weight 2 on the channel, mean divides by 2."""
    logits = torch.tensor([math.log(3.0)], dtype=torch.float64).view(1, 1, 1)
    target = torch.ones(1, 1, 1)
    expected = -(0.9 * math.log(3 / 4) + 0.1 * math.log(1 / 4))
    value = SF.binary_cross_entropy_loss(logits, target, label_smoothing=0.2, weight=[2.0])
    torch.testing.assert_close(value.item(), expected)
    summed = SF.binary_cross_entropy_loss(logits, target, label_smoothing=0.2, weight=[2.0], reduction="sum")
    torch.testing.assert_close(summed.item(), 2 * expected)


def test_binary_bool_and_float_targets_agree():
    logits, target = make_inputs("binary", (2, 1, 4, 4))
    a = SF.binary_cross_entropy_loss(logits, target.bool())
    b = SF.binary_cross_entropy_loss(logits, target.double())
    torch.testing.assert_close(a, b)
