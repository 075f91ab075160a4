"""Overlap family: hand-derived values, identities, the empty-class policy and the Dice gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs

import seglosses as sl
import seglosses.functional as SF


def four_pixels():
    """p = (3/4, 1/2, 1/4, 1/2), y = (1, 1, 0, 0): TP = 5/4, FP = 3/4, FN = 3/4."""
    z = torch.tensor([math.log(3.0), 0.0, -math.log(3.0), 0.0], dtype=torch.float64).view(1, 1, 4)
    return z.requires_grad_(), torch.tensor([1, 1, 0, 0]).view(1, 1, 4)


TP, FP, FN = 5 / 4, 3 / 4, 3 / 4


@pytest.mark.parametrize(
    "function, options, expected",
    [
        (SF.binary_dice_loss, {}, 1 - 2 * TP / (2 * TP + FP + FN)),
        (SF.binary_jaccard_loss, {}, 1 - TP / (TP + FP + FN)),
        (SF.binary_tversky_loss, {"alpha": 0.3, "beta": 0.7}, 1 - TP / (TP + 0.3 * FP + 0.7 * FN)),
        (SF.binary_tversky_loss, {"alpha": 0.9, "beta": 0.1}, 1 - TP / (TP + 0.9 * FP + 0.1 * FN)),
        (SF.binary_focal_tversky_loss, {"gamma": 0.75}, (1 - TP / (TP + 0.3 * FP + 0.7 * FN)) ** 0.75),
        (SF.binary_generalized_dice_loss, {}, 1 - 2 * TP / (2 * TP + FP + FN)),
    ],
)
def test_hand_values(function, options, expected):
    z, y = four_pixels()
    torch.testing.assert_close(function(z, y, smooth=0.0, **options).item(), expected)


def test_smooth_enters_numerator_and_denominator():
    z, y = four_pixels()
    s = 0.5
    torch.testing.assert_close(
        SF.binary_dice_loss(z, y, smooth=s).item(), 1 - (2 * TP + s) / (2 * TP + FP + FN + s)
    )


def test_softmax_two_classes_matches_hand_value():
    """Logits (0, z) give p_1 = σ(z); class 1 of the softmax Dice is the binary Dice above."""
    z, y = four_pixels()
    logits = torch.cat([torch.zeros_like(z), z], 1)
    none = SF.dice_loss(logits, y.squeeze(1), smooth=0.0, reduction="none")
    torch.testing.assert_close(none[0, 1].item(), 1 - 2 * TP / (2 * TP + FP + FN))
    # class 0: p_0 = 1 - p_1, y_0 = 1 - y_1: TP0 = 1 - ... = 3/4·... by symmetry TP0 = 5/4, FP0 = FN0 = 3/4
    torch.testing.assert_close(none[0, 0].item(), 1 - 2 * TP / (2 * TP + FP + FN))


@pytest.mark.parametrize(
    "function",
    [SF.dice_loss, SF.jaccard_loss, SF.tversky_loss, SF.focal_tversky_loss, SF.generalized_dice_loss],
)
def test_index_and_one_hot_targets_agree(function):
    logits, target = make_inputs("softmax", (2, 4, 5, 5))
    one_hot = F.one_hot(target, 4).movedim(-1, 1).double()
    torch.testing.assert_close(
        function(logits, target, reduction="none"), function(logits, one_hot, reduction="none")
    )


def test_dice_equals_tversky_half_half():
    """Dice = Tversky(0.5, 0.5) (s = 0)."""
    logits, target = make_inputs("softmax", (2, 3, 5, 5))
    dice = SF.dice_loss(logits, target, smooth=0.0, reduction="none")
    tversky = SF.tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=0.0, reduction="none")
    torch.testing.assert_close(dice, tversky)


def test_dice_is_two_iou_over_one_plus_iou():
    """Dice = 2 IoU / (1 + IoU) per class (s = 0), and IoU = Tversky(1, 1)."""
    logits, target = make_inputs("softmax", (2, 3, 5, 5))
    dice = 1 - SF.dice_loss(logits, target, smooth=0.0, reduction="none")
    iou = 1 - SF.jaccard_loss(logits, target, smooth=0.0, reduction="none")
    torch.testing.assert_close(dice, 2 * iou / (1 + iou))
    tversky = 1 - SF.tversky_loss(logits, target, alpha=1.0, beta=1.0, smooth=0.0, reduction="none")
    torch.testing.assert_close(iou, tversky)


def test_focal_tversky_gamma_one_is_tversky_and_per_class_gamma():
    logits, target = make_inputs("softmax", (2, 3, 5, 5))
    tversky = SF.tversky_loss(logits, target, reduction="none")
    torch.testing.assert_close(SF.focal_tversky_loss(logits, target, gamma=1.0, reduction="none"), tversky)
    gamma = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(
        SF.focal_tversky_loss(logits, target, gamma=gamma, reduction="none"), tversky**gamma
    )
    without_background = SF.focal_tversky_loss(
        logits, target, gamma=gamma, include_background=False, reduction="none"
    )
    torch.testing.assert_close(without_background, tversky[:, 1:] ** gamma[1:])


def test_dice_gradient_closed_form_and_document_erratum():
    """∂L/∂p_i = -(2 y_i (U + s) - (2 I + s)) / (U + s)^2, I = Σ y p, U = Σ y + Σ p (one class)."""
    s = 0.3
    g = torch.Generator().manual_seed(3)
    p = torch.rand(1, 1, 10, generator=g, dtype=torch.float64).requires_grad_()
    y = (torch.rand(1, 1, 10, generator=g) > 0.5).double()
    logits = torch.logit(p.detach()).requires_grad_()
    (grad_z,) = torch.autograd.grad(SF.binary_dice_loss(logits, y, smooth=s), logits)
    q = p.detach()
    grad_p = grad_z / (q * (1 - q))  # dp/dz = p (1 - p)
    intersection, union = (y * q).sum(), y.sum() + q.sum()
    spec = -(2 * y * (union + s) - (2 * intersection + s)) / (union + s) ** 2
    torch.testing.assert_close(grad_p, spec)
    document = -2 * (y * q.sum() - q * y.sum()) / union**2
    assert not torch.allclose(grad_p, document)


@pytest.mark.parametrize("smooth", [0.0, 1e-5])
@pytest.mark.parametrize("function", [SF.dice_loss, SF.jaccard_loss, SF.tversky_loss, SF.focal_tversky_loss])
def test_empty_class_policy(function, smooth):
    """Absent and not predicted: loss 0. Absent but predicted everywhere: loss 1. Never NaN.

    With ``s = 0`` "not predicted" must mean probability exactly 0 (a -inf logit): any positive
    probability of an absent class makes the plain ratio 0 / FP, a full miss.
    """
    far = -math.inf if smooth == 0 else -100.0
    target = torch.zeros(1, 4, 4, dtype=torch.long)  # only class 0 present
    logits = torch.full((1, 3, 4, 4), far, dtype=torch.float64)
    logits[:, 0] = 0.0  # predicts class 0 everywhere, classes 1 and 2 nowhere
    none = function(logits, target, smooth=smooth, reduction="none")
    torch.testing.assert_close(none, torch.zeros_like(none), atol=1e-6, rtol=0)
    logits = torch.full((1, 3, 4, 4), far, dtype=torch.float64)
    logits[:, 2] = 0.0  # predicts absent class 2 everywhere
    none = function(logits, target, smooth=smooth, reduction="none")
    torch.testing.assert_close(none[0, 1].item(), 0.0, atol=1e-6, rtol=0)  # absent, not predicted
    torch.testing.assert_close(none[0, 2].item(), 1.0, atol=1e-5, rtol=0)  # absent, predicted everywhere
    torch.testing.assert_close(none[0, 0].item(), 1.0, atol=1e-5, rtol=0)  # present, missed everywhere


def test_nan_input_stays_nan_with_checks_off():
    import seglosses

    logits, target = make_inputs("softmax", (1, 3, 4, 4))
    logits = logits.detach().clone()
    logits[0, :, 0, 0] = float("nan")
    with seglosses.input_checks(False):
        for function in (
            SF.dice_loss,
            SF.jaccard_loss,
            SF.tversky_loss,
            SF.focal_tversky_loss,
            SF.generalized_dice_loss,
        ):
            assert torch.isnan(function(logits, target, smooth=0.0))
            assert torch.isnan(function(logits, target))


def test_include_background_drops_class_zero():
    logits, target = make_inputs("softmax", (2, 3, 5, 5))
    full = SF.dice_loss(logits, target, reduction="none")
    torch.testing.assert_close(
        SF.dice_loss(logits, target, include_background=False, reduction="none"), full[:, 1:]
    )
    torch.testing.assert_close(SF.dice_loss(logits, target, include_background=False), full[:, 1:].mean())


def test_class_weights_give_weighted_class_mean():
    logits, target = make_inputs("softmax", (2, 3, 5, 5))
    w = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    per_class = SF.dice_loss(logits, target, reduction="none")
    expected = (per_class * w).sum() / (w.sum() * 2)
    torch.testing.assert_close(SF.dice_loss(logits, target, weight=w), expected)


def test_batch_pools_statistics_like_one_big_image():
    logits, target = make_inputs("softmax", (2, 3, 4, 5))
    pooled = SF.dice_loss(logits, target, batch=True, reduction="none")
    joined = SF.dice_loss(
        torch.cat(list(logits), -1)[None], torch.cat(list(target), -1)[None], reduction="none"
    )
    torch.testing.assert_close(pooled, joined[0])


def test_ignore_removes_pixels_from_every_sum():
    """Ignored pixels are as if cut out of the image."""
    logits, target = make_inputs("softmax", (1, 3, 1, 12))
    target[0, 0, 4:] = IGNORE
    kept = SF.dice_loss(logits[..., :4], target[..., :4], reduction="none")
    torch.testing.assert_close(SF.dice_loss(logits, target, ignore_index=IGNORE, reduction="none"), kept)


def test_generalized_dice_hand_value_and_absent_class_weight():
    """Weights 1/(Σy)^2; class volumes 4 and 2 -> w ∝ (1/16, 1/4); an absent class gets the largest."""
    target = torch.tensor([[0, 0, 0, 0, 1, 1]])
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0, 0.5, 3.0], [0.0] * 6]], dtype=torch.float64)  # (1, 2, 6)
    p = torch.softmax(logits, 1)[0]
    y = F.one_hot(target[0], 2).T.double()
    w = 1 / y.sum(1) ** 2
    tp = (p * y).sum(1)
    d = (p + y).sum(1)
    expected = 1 - 2 * (w * tp).sum() / (w * d).sum()
    torch.testing.assert_close(SF.generalized_dice_loss(logits, target, smooth=0.0), expected)
    # a third, absent class predicted somewhere is weighted like the rarest present class
    three = torch.cat([logits, torch.full((1, 1, 6), 1.0, dtype=torch.float64)], 1)
    p3 = torch.softmax(three, 1)[0]
    w3 = torch.cat([w, w.max().view(1)])
    y3 = torch.cat([y, torch.zeros(1, 6, dtype=torch.float64)])
    expected3 = 1 - 2 * (w3 * (p3 * y3).sum(1)).sum() / (w3 * (p3 + y3).sum(1)).sum()
    torch.testing.assert_close(SF.generalized_dice_loss(three, target, smooth=0.0), expected3)


def test_generalized_dice_terms_average_to_the_loss():
    logits, target = make_inputs("softmax", (2, 3, 5, 5))
    none = SF.generalized_dice_loss(logits, target, reduction="none")
    for n in range(2):
        single = SF.generalized_dice_loss(logits[n : n + 1], target[n : n + 1])
        torch.testing.assert_close(none[n].mean(), single)


def test_float16_dice_on_512_image_matches_float32():
    """The must-not-happen: fp16 logits on 512×512 differing from fp32 by more than 1e-3, or NaN."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 512, 512, generator=g) * 3
    target = torch.randint(0, 3, (1, 512, 512), generator=g)
    half = SF.dice_loss(logits.half(), target)
    single = SF.dice_loss(logits, target)
    assert torch.isfinite(half)
    assert abs(half.item() - single.item()) <= 1e-3
    binary_half = SF.binary_dice_loss(logits[:, :1].half(), target[:, None].clamp_max(1))
    assert (
        abs(binary_half.item() - SF.binary_dice_loss(logits[:, :1], target[:, None].clamp_max(1)).item())
        <= 1e-3
    )


def test_log_cosh_dice_is_log_cosh_of_each_class_dice_loss_and_scales_its_gradient_by_tanh():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 6), generator=g)
    dice = sl.dice_loss(logits, target, reduction="none")
    torch.testing.assert_close(sl.log_cosh_dice_loss(logits, target), torch.cosh(dice).log().mean())
    # d/dz log cosh(d) = tanh(d) · dd/dz, class by class
    one = sl.log_cosh_dice_loss(logits, target, reduction="none")[0, 1]
    grad = torch.autograd.grad(one, logits)[0]
    expected = torch.tanh(dice[0, 1]) * torch.autograd.grad(dice[0, 1], logits)[0]
    torch.testing.assert_close(grad, expected)


def test_penalty_gdl_by_its_formula():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 5, 5), generator=g)
    gdl = sl.generalized_dice_loss(logits, target, reduction="none").mean(-1)  # each sample's loss
    torch.testing.assert_close(sl.penalty_gdl_loss(logits, target), (gdl / (1 + 2.5 * (1 - gdl))).mean())
    torch.testing.assert_close(
        sl.penalty_gdl_loss(logits, target, k=0.0), sl.generalized_dice_loss(logits, target)
    )
    with pytest.raises(sl.SegLossError, match="k"):
        sl.PenaltyGDLLoss(k=-1.0)
