"""Matthews correlation loss: a hand-derived value, the true negatives with ignore_index, the perfect-match
rule, and equality with MONAI's MCCLoss."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE

import seglosses as sl

monai_losses = pytest.importorskip("monai.losses", reason="MONAI (the [docs] extra) is not installed")


def logit(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def test_binary_by_hand():
    """p = (0.8, 0.3, 0.6, 0.1), y = (1, 0, 1, 0): TP = 1.4, FP = 0.4, FN = 0.6, TN = 4 - 2.4 = 1.6;
    MCC = (1.4·1.6 - 0.4·0.6) / sqrt(1.8 · 2.0 · 2.0 · 2.2) = 2 / sqrt(15.84)."""
    z = logit([0.8, 0.3, 0.6, 0.1]).view(1, 1, 4)
    y = torch.tensor([[[1, 0, 1, 0]]])
    expected = 1 - 2 / math.sqrt(15.84)
    assert sl.binary_mcc_loss(z, y, smooth=1e-300).item() == pytest.approx(expected, rel=1e-12)


def test_ignored_pixels_are_not_true_negatives():
    z = logit([0.8, 0.3, 0.6, 0.1, 0.5, 0.9]).view(1, 1, 6)
    y = torch.tensor([[[1, 0, 1, 0, IGNORE, IGNORE]]])
    kept = sl.binary_mcc_loss(z[..., :4], y[..., :4])
    torch.testing.assert_close(sl.binary_mcc_loss(z, y, ignore_index=IGNORE), kept)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    target[:, 0] = IGNORE
    torch.testing.assert_close(
        sl.mcc_loss(logits, target, ignore_index=IGNORE), sl.mcc_loss(logits[:, :, 1:], target[:, 1:])
    )


def test_perfect_prediction_gives_zero_even_for_an_absent_class():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # class 2 absent: TP = FP = FN = 0, the product is 0
    one_hot = F.one_hot(target, 3).movedim(-1, 1).bool()
    logits = torch.where(one_hot, 0.0, -math.inf).double()  # probabilities exactly one-hot
    assert sl.mcc_loss(logits, target).item() == 0.0


def test_a_class_absent_from_the_target_scores_mcc_zero_unless_predicted_exactly_empty():
    """TP = FN = 0 makes the numerator 0: MCC is 0 (loss 1) for any prediction with FP > 0, however
    small (MONAI's value too); the docstring says so."""
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.full((1, 2, 4, 4), -30.0, dtype=torch.float64)
    logits[:, 0] = 0.0  # p_1 = 1e-13 everywhere: class 1 absent, almost perfectly predicted
    per_class = sl.mcc_loss(logits, target, reduction="none")
    assert per_class[0, 1].item() == pytest.approx(1.0)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_softmax_equals_monai(batch, include_background):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 7), generator=g)
    ours = sl.mcc_loss(logits, target, batch=batch, include_background=include_background)
    theirs = monai_losses.MCCLoss(
        softmax=True, to_onehot_y=True, batch=batch, include_background=include_background
    )(logits, target[:, None])
    torch.testing.assert_close(ours, theirs)
    grads = [torch.autograd.grad(value, logits)[0] for value in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1])


def test_binary_equals_monai_per_channel():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 2, 5, 4, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, logits.shape, generator=g)
    ours = sl.binary_mcc_loss(logits, target, reduction="none")
    theirs = monai_losses.MCCLoss(sigmoid=True, reduction="none")(logits, target.double())
    torch.testing.assert_close(ours, theirs)


def test_smooth_must_be_positive():
    with pytest.raises(sl.SegLossError, match="smooth"):
        sl.MCCLoss(smooth=0.0)
