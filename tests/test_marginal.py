"""Marginal CE and Dice for partial labels: the summed-probability definition, identity sets, 3-D and
ignore_index, and the checks on label_sets."""

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE

import seglosses as sl

SETS = [[0, 3], [1], [2]]  # annotated label 0 ("background") also covers model class 3


def summed_probabilities(logits, sets):
    p = logits.softmax(1)
    return torch.stack([p[:, members].sum(1) for members in sets], 1)


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
def test_marginal_ce_is_the_nll_of_the_summed_probabilities(spatial):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, *spatial), generator=g)
    target[0, 0] = IGNORE
    ours = sl.marginal_ce_loss(logits, target, label_sets=SETS, ignore_index=IGNORE)
    reference = F.nll_loss(summed_probabilities(logits, SETS).log(), target, ignore_index=IGNORE)
    torch.testing.assert_close(ours, reference)
    grads = [torch.autograd.grad(v, logits)[0] for v in (ours, reference)]
    torch.testing.assert_close(grads[0], grads[1])


def test_marginal_dice_is_dice_of_the_summed_probabilities():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 6, 6), generator=g)
    p = summed_probabilities(logits, SETS)
    y = F.one_hot(target, 3).movedim(-1, 1).double()
    dice = (2 * (p * y).sum((2, 3)) + 1e-5) / ((p + y).sum((2, 3)) + 1e-5)
    torch.testing.assert_close(sl.marginal_dice_loss(logits, target, label_sets=SETS), (1 - dice).mean())


def test_identity_sets_are_plain_ce_and_dice_and_order_is_respected():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    identity = [[0], [1], [2]]
    torch.testing.assert_close(
        sl.marginal_ce_loss(logits, target, label_sets=identity), F.cross_entropy(logits, target)
    )
    torch.testing.assert_close(
        sl.marginal_dice_loss(logits, target, label_sets=identity), sl.dice_loss(logits, target)
    )
    swapped = sl.marginal_ce_loss(logits, target, label_sets=[[1], [0], [2]])
    torch.testing.assert_close(swapped, F.cross_entropy(logits[:, [1, 0, 2]], target))


@pytest.mark.parametrize(
    "label_sets, message",
    [
        ([[0, 1], [1, 2], [3]], "every class appears once"),
        ([[0], []], "non-empty lists"),
        ([[0, 1], [2]], "partition the C = 4 classes"),
        ([[0, 1, 2, 4], [3]], "partition the C = 4 classes"),
        ("01", "non-empty lists"),
    ],
)
def test_invalid_label_sets_raise(label_sets, message):
    logits, target = torch.randn(1, 4, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long)
    with pytest.raises(sl.SegLossError, match=message):
        sl.marginal_ce_loss(logits, target, label_sets=label_sets)


def test_spec_string_and_module():
    loss = sl.create_loss(
        "marginal_ce(label_sets=[[0, 3], [1], [2]]) + marginal_dice(label_sets=[[0, 3], [1], [2]])"
    )
    logits, target = torch.randn(2, 4, 5, 5), torch.randint(0, 3, (2, 5, 5))
    expected = sl.marginal_ce_loss(logits, target, label_sets=SETS) + sl.marginal_dice_loss(
        logits, target, label_sets=SETS
    )
    torch.testing.assert_close(loss(logits, target), expected)
