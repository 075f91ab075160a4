"""Soft clDice (Shit et al., CVPR 2021) and its Dice mix: the soft morphology against MONAI's, values derived
by hand on tiny masks (a one-pixel-wide line, a ring, a 3-D tube), the identities (a perfect prediction
gives 0, clDice is symmetric in the two masks), the MONAI-issue-8239 case (a missed thin structure gives a
clearly positive loss), equality with MONAI's ``SoftclDiceLoss`` / ``SoftDiceclDiceLoss`` and with the
authors' batch-pooled formula, ignore_index, options and memory.

Hand-derived skeletons (cross-shaped erosion, square dilation, the image border neutral):

* a one-pixel-wide line: every pixel has a face neighbour off the line, so its erosion is empty, its
  opening is empty and ``S_0 = x``: the line is its own skeleton;
* a ``3 × 3`` tube along the depth axis, spanning the depth: ``E_1`` is its centre line (the depth ends
  touch the neutral border), ``dilate(E_1)`` is the tube again, so ``S_0 = 0``; ``E_2 = 0``, so
  ``δ_1 = E_1`` and the skeleton is the centre line;
* a band ``w`` pixels wide across the image: each erosion removes two rows, and the skeleton is the rows
  left when the opening first vanishes, at step ``ceil((w - 2) / 2)``: no skeleton when that step is past
  ``iterations``, i.e. for ``w > 2 · iterations + 2``.

With ``s = 1``, a prediction ``p ≈ 0`` that misses a target whose skeleton has ``L`` pixels has
``Tprec = 1/1`` and ``Tsens = 1/(L + 1)``, so the loss is ``1 - 2 Tsens / (1 + Tsens) = L / (L + 2)``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs, peak_extra_bytes

import seglosses as sl
from seglosses import SegLossError
from seglosses.losses.cldice import (
    BinaryClDiceLoss,
    BinaryDiceClDiceLoss,
    ClDiceLoss,
    DiceClDiceLoss,
    binary_cldice_loss,
    binary_dice_cldice_loss,
    cldice_loss,
    dice_cldice_loss,
)
from seglosses.ops.morphology import soft_dilate, soft_erode, soft_open, soft_skeleton

monai_cldice = pytest.importorskip("monai.losses.cldice", reason="MONAI (the [docs] extra) is not installed")

SATURATED = 50.0  # sigmoid(±50) is 1 and 2e-22 in float64: hard masks


def hard_logits(mask: torch.Tensor) -> torch.Tensor:
    """Saturated logits predicting the 0/1 ``mask`` (float64)."""
    return torch.where(mask.bool(), SATURATED, -SATURATED).double()


def line_image(size: int = 16, row: int = 8, start: int = 2, stop: int = 14) -> torch.Tensor:
    """``(1, 1, size, size)``: a one-pixel-wide horizontal line of ``stop - start`` pixels."""
    image = torch.zeros(1, 1, size, size)
    image[..., row, start:stop] = 1
    return image


def tube_volume(depth: int = 7, size: int = 7) -> torch.Tensor:
    """``(1, 1, depth, size, size)``: a ``3 × 3`` tube along depth, through the whole depth."""
    volume = torch.zeros(1, 1, depth, size, size)
    middle = size // 2
    volume[..., middle - 1 : middle + 2, middle - 1 : middle + 2] = 1
    return volume


def monai_per_sample(**options):
    """MONAI's SoftclDiceLoss with its harmonic-mean epsilon negligible (1e-300: Tprec + Tsens >= 1e-3
    here, so adding it is exact in float64) and per-sample values."""
    return monai_cldice.SoftclDiceLoss(smooth=1e-300, reduction="none", **options)


def old_monai_cldice(y_true: torch.Tensor, y_pred: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """MONAI's SoftclDiceLoss before 1.6, restated (Project-MONAI/MONAI, monai/losses/cldice.py at
    2303b308865b6f369d1f19e6eb75ce23d35f8737): no activation, and the sums over the channels ``1:`` only."""
    skel_pred, skel_true = soft_skeleton(y_pred, 3), soft_skeleton(y_true, 3)
    tprec = ((skel_pred * y_true)[:, 1:].sum() + smooth) / (skel_pred[:, 1:].sum() + smooth)
    tsens = ((skel_true * y_pred)[:, 1:].sum() + smooth) / (skel_true[:, 1:].sum() + smooth)
    return 1 - 2 * tprec * tsens / (tprec + tsens)


def authors_dice_cldice(y_true: torch.Tensor, y_pred: torch.Tensor, alpha: float, iterations: int):
    """The authors' ``soft_dice_cldice`` restated (jocpae/clDice, cldice_loss/pytorch/cldice.py at
    4b34f6c3ea365744619cb0b51e160c57ab392964, with the skeleton of soft_skeleton.py): every sum over the
    whole batch and all channels, ``s = 1``. Their current class ignores its ``iter_`` (it builds
    ``SoftSkeletonize(num_iter=10)``); this restatement uses ``iterations``. Returns (Dice loss, clDice
    loss, mix)."""
    skel_pred = monai_cldice.soft_skel(y_pred, iterations)  # the authors' soft_skel, as MONAI copies it
    skel_true = monai_cldice.soft_skel(y_true, iterations)
    tprec = ((skel_pred * y_true).sum() + 1) / (skel_pred.sum() + 1)
    tsens = ((skel_true * y_pred).sum() + 1) / (skel_true.sum() + 1)
    cl = 1 - 2 * tprec * tsens / (tprec + tsens)
    dice = 1 - (2 * (y_true * y_pred).sum() + 1) / (y_true.sum() + y_pred.sum() + 1)
    return dice, cl, (1 - alpha) * dice + alpha * cl


# --- soft morphology ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (2, 2, 5, 6, 7)], ids=["2d", "3d"])
@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("values", ["random", "ties"])
def test_soft_morphology_equals_monai(shape, iterations, checkpoint, values):
    """Erosion, dilation, opening and the skeleton equal MONAI's bit for bit, and the skeleton's gradient
    to float64 rounding (each erosion is computed once here, twice there), also where many pixels tie
    (values in {0, 0.5, 1}: the same subgradient is chosen)."""
    g = torch.Generator().manual_seed(iterations)
    if values == "ties":
        x = (torch.randint(0, 3, shape, generator=g) / 2).double().requires_grad_()
    else:
        x = torch.rand(shape, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.equal(soft_erode(x), monai_cldice.soft_erode(x))
    assert torch.equal(soft_dilate(x), monai_cldice.soft_dilate(x))
    assert torch.equal(soft_open(x), monai_cldice.soft_open(x))
    ours, theirs = soft_skeleton(x, iterations, checkpoint=checkpoint), monai_cldice.soft_skel(x, iterations)
    assert torch.equal(ours, theirs)
    w = torch.rand(shape, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((s * w).sum(), x)[0] for s in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-13)


def test_checkpointed_skeleton_is_bit_identical():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 2, 6, 7, 8, generator=g, requires_grad=True)
    w = torch.rand(x.shape, generator=g)
    plain, saved = (soft_skeleton(x, 4, checkpoint=c) for c in (False, True))
    assert torch.equal(plain, saved)
    grads = [torch.autograd.grad((s * w).sum(), x)[0] for s in (plain, saved)]
    assert torch.equal(grads[0], grads[1])


def test_one_dimensional_skeleton_by_hand():
    """1-D: the cross and the square are both the 3-pixel segment. A segment of 5 ones: E_1 keeps the
    middle 3, E_2 the middle pixel, E_3 nothing; open(x) = x and open(E_1) = E_1, so S_0 = δ_1 = 0, and
    δ_2 = E_2: the middle pixel. A segment of 4: E_1 is its middle two, E_2 empty: δ_1 = E_1."""
    odd = torch.tensor([[[0.0, 1, 1, 1, 1, 1, 0]]])
    even = torch.tensor([[[0.0, 1, 1, 1, 1, 0]]])
    assert soft_skeleton(odd).tolist() == [[[0, 0, 0, 1, 0, 0, 0]]]
    assert soft_skeleton(even).tolist() == [[[0, 0, 1, 1, 0, 0]]]
    assert soft_erode(odd).tolist() == [[[0, 0, 1, 1, 1, 0, 0]]]
    assert soft_dilate(even).tolist() == [[[1, 1, 1, 1, 1, 1]]]


def test_skeletons_by_hand():
    """The line is its own skeleton; the 3x3 tube's skeleton is its centre line (module docstring)."""
    line = line_image()
    assert torch.equal(soft_skeleton(line), line)
    tube = tube_volume()
    centre = torch.zeros_like(tube)
    centre[..., 3, 3] = 1
    assert torch.equal(soft_skeleton(tube), centre)


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_a_band_wider_than_the_iterations_reach_has_no_skeleton(iterations):
    """A band across the image keeps a skeleton up to width ``2 · iterations + 2`` and none beyond."""
    for width, has_skeleton in ((2 * iterations + 2, True), (2 * iterations + 3, False)):
        band = torch.zeros(1, 1, 20, 9)
        band[..., 2 : 2 + width, :] = 1
        assert bool(soft_skeleton(band, iterations).any()) == has_skeleton, width


def test_morphology_refuses_bad_input():
    with pytest.raises(SegLossError, match="one to three spatial dims"):
        soft_erode(torch.zeros(1, 1, 2, 2, 2, 2))
    with pytest.raises(SegLossError, match="one to three spatial dims"):
        soft_skeleton(torch.zeros(1, 4))
    with pytest.raises(SegLossError, match="iterations"):
        soft_skeleton(torch.zeros(1, 1, 4), -1)


# --- hand-derived losses -----------------------------------------------------------------------------


def test_missed_line_gives_a_clearly_positive_loss_monai_issue_8239():
    """MONAI issue 8239: a one-pixel-wide line of L = 12 pixels, missed entirely, gives L/(L+2) = 6/7; a
    perfect prediction gives 0. MONAI < 1.6 returned exactly 0 for both on a single-channel output (its
    sums skip channel 0, so Tprec = Tsens = 1/1); MONAI 1.6.1 returns 6/7 too (up to its 1e-4)."""
    line = line_image()
    missed = torch.full_like(line, -SATURATED).double()
    assert binary_cldice_loss(missed, line).item() == pytest.approx(6 / 7, rel=1e-12)
    assert binary_cldice_loss(hard_logits(line), line).item() == pytest.approx(0.0, abs=1e-12)
    assert old_monai_cldice(line, torch.sigmoid(missed)).item() == 0.0  # the bug, restated
    current = monai_cldice.SoftclDiceLoss(sigmoid=True)(missed, line.double()).item()
    assert current == pytest.approx(1 - (2 / 13) / (14 / 13 + 1e-4), rel=1e-12)
    # the softmax form, the line as class 1 of an index target, everything predicted as class 0
    labels = line[:, 0].long()
    logits = torch.stack([torch.full_like(line[:, 0], SATURATED), torch.zeros_like(line[:, 0])], 1)
    per_class = cldice_loss(logits.double(), labels, reduction="none")
    assert per_class[0, 1].item() == pytest.approx(6 / 7, rel=1e-12)
    assert cldice_loss(logits.double(), labels, include_background=False).item() == pytest.approx(6 / 7)


def test_missed_tube_and_centre_line_only_3d():
    """The 3x3 tube through depth D = 7 (63 voxels, skeleton: the 7-voxel centre line). Missed:
    L/(L + 2) = 7/9. Predicted as its centre line only: S(p) = p = the centre line, inside y, so
    Tprec = 8/8 and Tsens = (7 + 1)/(7 + 1): clDice 0 (it does not see thickness), while Dice =
    (2·7 + 1)/(7 + 63 + 1) = 15/71, so the α = 0.5 mix is 0.5 · 56/71 = 28/71."""
    tube = tube_volume()
    missed = torch.full_like(tube, -SATURATED).double()
    assert binary_cldice_loss(missed, tube).item() == pytest.approx(7 / 9, rel=1e-12)
    centre = torch.zeros_like(tube)
    centre[..., 3, 3] = 1
    assert binary_cldice_loss(hard_logits(centre), tube).item() == pytest.approx(0.0, abs=1e-12)
    mix = binary_dice_cldice_loss(hard_logits(centre), tube)
    assert mix.item() == pytest.approx(28 / 71, rel=1e-12)
    assert binary_cldice_loss(hard_logits(tube), tube).item() == pytest.approx(0.0, abs=1e-12)


def test_ring_with_a_gap():
    """A one-pixel ring, the border of a 5x5 square (16 pixels), predicted with one pixel missing (an open
    curve of 15): both are their own skeletons. Tprec = (15 + 1)/(15 + 1) = 1, Tsens = (15 + 1)/(16 + 1)
    = 16/17, loss 1 - 2(16/17)/(33/17) = 1/33. The Dice loss is 1 - (2·15 + 1)/(31 + 1) = 1/32."""
    ring = torch.zeros(1, 1, 9, 9)
    ring[..., 2:7, 2:7] = 1
    ring[..., 3:6, 3:6] = 0
    gap = ring.clone()
    gap[..., 2, 4] = 0
    assert torch.equal(soft_skeleton(ring), ring) and torch.equal(soft_skeleton(gap), gap)
    assert binary_cldice_loss(hard_logits(gap), ring).item() == pytest.approx(1 / 33, rel=1e-12)
    mix = binary_dice_cldice_loss(hard_logits(gap), ring, alpha=0.25).item()
    assert mix == pytest.approx(0.75 / 32 + 0.25 / 33, rel=1e-12)


def test_too_few_iterations_hide_a_thick_structure():
    """A 4-pixel band missed entirely: with iterations = 0 its skeleton is empty (Tsens = 1/1) and the
    loss is 0, the other way to get a zero clDice; with iterations = 1 its middle two rows (2 · 9
    pixels) are the skeleton: L/(L + 2) = 18/20."""
    band = torch.zeros(1, 1, 10, 9)
    band[..., 3:7, :] = 1
    missed = torch.full_like(band, -SATURATED).double()
    assert binary_cldice_loss(missed, band, iterations=0).item() == pytest.approx(0.0, abs=1e-12)
    assert binary_cldice_loss(missed, band, iterations=1).item() == pytest.approx(18 / 20, rel=1e-12)


def test_empty_classes():
    """Absent from both: 0. Absent from the target, predicted as the line (L = 12): Tsens = 1,
    Tprec = 1/13, loss (1 - 1/13)/(1 + 1/13) = 6/7. With s = 0: 0 and 1 (the empty-class rules)."""
    empty = torch.zeros(1, 1, 16, 16)
    nothing = torch.full_like(empty, -SATURATED).double()
    line = hard_logits(line_image())
    assert binary_cldice_loss(nothing, empty).item() == 0.0
    assert binary_cldice_loss(line, empty).item() == pytest.approx(6 / 7, rel=1e-12)
    assert binary_cldice_loss(torch.full_like(empty, -math.inf).double(), empty, smooth=0.0).item() == 0.0
    assert binary_cldice_loss(line, empty, smooth=0.0).item() == pytest.approx(1.0, rel=1e-12)
    assert binary_dice_cldice_loss(line, empty, smooth=0.0).item() == pytest.approx(1.0, rel=1e-12)


# --- identities --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 1, 12, 13), (1, 2, 6, 7, 8)], ids=["2d", "3d"])
def test_symmetric_in_the_two_masks(shape):
    """Hard masks (saturated logits): swapping prediction and target gives the same loss. For soft
    masks too: ``binary_cldice(logit(q), p) = binary_cldice(logit(p), q)``."""
    g = torch.Generator().manual_seed(5)
    a, b = (torch.rand(shape, generator=g) < 0.4 for _ in range(2))
    for loss in (binary_cldice_loss, binary_dice_cldice_loss):
        forward, swapped = (
            loss(hard_logits(a), b, reduction="none"),
            loss(hard_logits(b), a, reduction="none"),
        )
        torch.testing.assert_close(forward, swapped, rtol=0, atol=1e-12)
        assert forward.min() > 0.05  # two random masks: far from a perfect match
    p, q = (torch.rand(shape, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(
        binary_cldice_loss(torch.logit(q), p, reduction="none"),
        binary_cldice_loss(torch.logit(p), q, reduction="none"),
    )
    # softmax over classes, soft targets: log-probabilities as logits
    pc, qc = (torch.softmax(torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64), 1) for _ in range(2))
    torch.testing.assert_close(
        cldice_loss(qc.log(), pc, reduction="none"), cldice_loss(pc.log(), qc, reduction="none")
    )


@pytest.mark.parametrize("shape", [(2, 3, 9), (2, 3, 8, 9), (1, 3, 5, 6, 7)], ids=["1d", "2d", "3d"])
def test_perfect_prediction_gives_zero(shape):
    g = torch.Generator().manual_seed(6)
    mask = torch.rand(shape, generator=g) < 0.5
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    one_hot = F.one_hot(labels, shape[1]).movedim(-1, 1)
    for loss in (binary_cldice_loss, binary_dice_cldice_loss):
        assert loss(hard_logits(mask), mask).item() == pytest.approx(0.0, abs=1e-12)
    for loss in (cldice_loss, dice_cldice_loss):
        assert loss(hard_logits(one_hot), labels).item() == pytest.approx(0.0, abs=1e-12)


def test_mix_endpoints_are_dice_and_cldice():
    """α = 0 is the Dice loss with s = 1 (the library's dice_loss), α = 1 the clDice loss."""
    logits, target = make_inputs("softmax", (2, 3, 8, 9), ignore_fraction=0.2)
    for include_background in (True, False):
        options = dict(ignore_index=IGNORE, include_background=include_background, reduction="none")
        torch.testing.assert_close(
            dice_cldice_loss(logits, target, alpha=0.0, **options),
            sl.dice_loss(logits, target, smooth=1.0, **options),
        )
        torch.testing.assert_close(
            dice_cldice_loss(logits, target, alpha=1.0, **options), cldice_loss(logits, target, **options)
        )
    logits, target = make_inputs("binary", (2, 2, 8, 9), ignore_fraction=0.2)
    options = dict(ignore_index=IGNORE, batch=True, reduction="none")
    torch.testing.assert_close(
        binary_dice_cldice_loss(logits, target, alpha=0.0, **options),
        sl.binary_dice_loss(logits, target, smooth=1.0, **options),
    )
    half = binary_dice_cldice_loss(logits, target, alpha=0.3, **options)
    expected = 0.7 * sl.binary_dice_loss(logits, target, smooth=1.0, **options)
    torch.testing.assert_close(half, expected + 0.3 * binary_cldice_loss(logits, target, **options))


# --- equality with MONAI and the authors' code --------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 1, 12, 13), (2, 1, 6, 7, 8)], ids=["2d", "3d"])
@pytest.mark.parametrize("iterations", [0, 3, 5])
def test_binary_one_channel_equals_monai(shape, iterations):
    """``binary_cldice`` on (N, 1, *S) = MONAI ``SoftclDiceLoss(sigmoid=True)`` per sample; the mix =
    ``SoftDiceclDiceLoss(sigmoid=True)`` (mean); values and gradients, float64."""
    g = torch.Generator().manual_seed(iterations)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    target = (torch.rand(shape, generator=g) < 0.4).double()
    ours = binary_cldice_loss(logits, target, iterations=iterations, reduction="none")[:, 0]
    theirs = monai_per_sample(iter_=iterations, sigmoid=True)(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    grads = [torch.autograd.grad(v.sum(), logits)[0] for v in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    ours = binary_dice_cldice_loss(logits, target, iterations=iterations, alpha=0.3)
    theirs = monai_cldice.SoftDiceclDiceLoss(iter_=iterations, alpha=0.3, smooth=1e-300, sigmoid=True)(
        logits, target
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    grads = [torch.autograd.grad(v, logits)[0] for v in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", [(2, 4, 10, 11), (2, 3, 5, 6, 7)], ids=["2d", "3d"])
def test_softmax_per_class_equals_monai_per_channel(shape):
    """MONAI pools the channels; applied to one class's channel alone it is this loss's (N, C) entry."""
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    ours = cldice_loss(logits, labels, reduction="none")
    probs, one_hot = torch.softmax(logits, 1), F.one_hot(labels, shape[1]).movedim(-1, 1).double()
    monai = monai_per_sample()
    theirs = torch.stack([monai(probs[:, c : c + 1], one_hot[:, c : c + 1]) for c in range(shape[1])], 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    grads = [torch.autograd.grad(v.sum(), logits)[0] for v in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_two_class_softmax_without_background_equals_monai():
    """C = 2, ``include_background=False``: MONAI keeps one channel, so its pooled loss is ours."""
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 2, 12, 10, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (3, 12, 10), generator=g)
    for ours_loss, theirs_loss in (
        (cldice_loss, monai_cldice.SoftclDiceLoss),
        (dice_cldice_loss, monai_cldice.SoftDiceclDiceLoss),
    ):
        ours = ours_loss(logits, labels, include_background=False)
        theirs = theirs_loss(smooth=1e-300, softmax=True, to_onehot_y=True, include_background=False)(
            logits, labels[:, None]
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
        grads = [torch.autograd.grad(v, logits)[0] for v in (ours, theirs)]
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_monai_default_epsilon_is_the_only_difference_at_a_perfect_prediction():
    """MONAI adds smooth = 1e-4 to the harmonic mean's denominator: a perfect prediction costs
    1 - 2/(2 + 1e-4) there, 0 here."""
    line = line_image().double()
    theirs = monai_cldice.SoftclDiceLoss(sigmoid=True)(hard_logits(line), line).item()
    assert theirs == pytest.approx(1 - 2 / 2.0001, rel=1e-9)
    assert binary_cldice_loss(hard_logits(line), line).item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("iterations", [1, 3])
def test_batch_pooled_equals_the_authors_code(iterations):
    """``batch=True`` on one sigmoid channel pools every sum as the authors' soft_cldice / soft_dice do."""
    g = torch.Generator().manual_seed(9)
    logits = (torch.randn(3, 1, 11, 12, generator=g, dtype=torch.float64) * 2).requires_grad_()
    target = (torch.rand(3, 1, 11, 12, generator=g) < 0.4).double()
    dice, cl, mix = authors_dice_cldice(target, torch.sigmoid(logits), 0.4, iterations)
    options = dict(batch=True, iterations=iterations)
    torch.testing.assert_close(binary_cldice_loss(logits, target, **options), cl)
    ours = binary_dice_cldice_loss(logits, target, alpha=0.4, **options)
    torch.testing.assert_close(ours, mix)
    grads = [torch.autograd.grad(v, logits)[0] for v in (ours, mix)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    assert binary_cldice_loss(logits, target, reduction="none", **options).shape == (1,)


# --- ignore_index, options, registry, memory --------------------------------------------------------


def test_ignored_pixels_are_background_before_the_skeletons():
    """An ignored pixel counts as 0 in both p and y before skeletonising: the same loss as p = 0 (a -inf
    logit) and y = 0 there."""
    logits, target = make_inputs("binary", (2, 2, 9, 10), ignore_fraction=0.3)
    ignored = target == IGNORE
    expected = binary_dice_cldice_loss(logits.masked_fill(ignored, -math.inf), target.masked_fill(ignored, 0))
    torch.testing.assert_close(binary_dice_cldice_loss(logits, target, ignore_index=IGNORE), expected)
    logits, labels = make_inputs("softmax", (2, 3, 9, 10), ignore_fraction=0.3)
    ignored = labels == IGNORE
    one_hot = F.one_hot(labels.masked_fill(ignored, 0), 3).movedim(-1, 1).masked_fill(ignored[:, None], 0)
    probs = torch.softmax(logits, 1).masked_fill(ignored[:, None], 0)
    torch.testing.assert_close(
        cldice_loss(logits, labels, ignore_index=IGNORE, reduction="none"),
        torch.stack(
            [monai_per_sample()(probs[:, c : c + 1], one_hot[:, c : c + 1].double()) for c in range(3)], 1
        ),
    )


def test_a_thin_vessel_inside_an_ignored_margin_keeps_its_skeleton():
    """The line of L = 12 pixels with an ignored margin around it, missed: still L/(L + 2) = 6/7 (an ignored
    pixel is background for the erosion, so the line erodes and is its own skeleton)."""
    line = line_image().long()
    target = line.clone()
    target[..., 7:10, 1:15] = IGNORE
    target[..., 8, 2:14] = 1
    missed = torch.full(line.shape, -SATURATED, dtype=torch.float64)
    assert binary_cldice_loss(missed, target, ignore_index=IGNORE).item() == pytest.approx(6 / 7, rel=1e-12)


def test_weights_and_background():
    logits, labels = make_inputs("softmax", (2, 3, 8, 9))
    per_class = cldice_loss(logits, labels, reduction="none")
    weighted = cldice_loss(logits, labels, weight=[0.0, 1.0, 3.0])
    torch.testing.assert_close(weighted, (per_class[:, 1] + 3 * per_class[:, 2]).sum() / (2 * 4))
    foreground = cldice_loss(
        logits, labels, include_background=False, weight=[5.0, 1.0, 3.0], reduction="none"
    )
    torch.testing.assert_close(foreground, per_class[:, 1:] * torch.tensor([1.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"iterations": -1}, "iterations"),
        ({"iterations": 1.5}, "iterations"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": [0.1, 0.2]}, "alpha"),
        ({"smooth": -1.0}, "smooth"),
        ({"checkpoint": 1}, "checkpoint"),
    ],
)
def test_bad_options_raise(options, match):
    module = DiceClDiceLoss if "alpha" in options else ClDiceLoss
    with pytest.raises(SegLossError, match=match):
        module(**options)


def test_registry():
    for name, module in (
        ("cldice", ClDiceLoss),
        ("binary_cldice", BinaryClDiceLoss),
        ("dice_cldice", DiceClDiceLoss),
        ("binary_dice_cldice", BinaryDiceClDiceLoss),
    ):
        entry = next(e for e in sl.list_losses(details=True) if e.name == name)
        assert entry.module is module and entry.kind == "region" and "Shit et al. 2021" in entry.description
        assert isinstance(sl.create_loss(f"{name}(iterations=5)"), module)


def test_3d_memory_is_bounded():
    """Forward + backward on a float32 3-D volume: with the default checkpointing the peak stays well
    below the plain graph (measured: about 125 vs 357 bytes per pixel) and MONAI's (496)."""
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(1, 1, 24, 24, 24, generator=g, requires_grad=True)
    target = (torch.rand(logits.shape, generator=g) < 0.3).float()

    def peak(**options) -> float:
        return (
            peak_extra_bytes(lambda: binary_cldice_loss(logits, target, **options).backward())
            / logits.numel()
        )

    saved, plain = peak(), peak(checkpoint=False)
    assert saved < 160 and plain < 400 and saved < 0.5 * plain
    monai = peak_extra_bytes(lambda: monai_cldice.SoftclDiceLoss(sigmoid=True)(logits, target).backward())
    assert plain < monai / logits.numel()


@pytest.mark.parametrize("shape", [(2, 2, 7), (1, 2, 3, 4, 5)], ids=["1d", "3d"])
@pytest.mark.parametrize("name", ["cldice", "binary_dice_cldice"])
def test_gradcheck_1d_3d_with_ignored_pixels(shape, name):
    """The conformance suite gradchecks 2-D; here 1-D and 3-D, checkpointed, with ignored pixels."""
    domain = "binary" if name.startswith("binary") else "softmax"
    logits, target = make_inputs(domain, shape, ignore_fraction=0.2, scale=1.0)
    loss = sl.create_loss(f"{name}(ignore_index={IGNORE}, iterations=2)")
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (logits,), eps=1e-6, atol=1e-5)


def test_torch_func_grad_equals_autograd():
    """torch.func.grad refuses a checkpoint's saved-tensor hooks: under it the plain graph is used."""
    logits, target = make_inputs("softmax", (2, 3, 6, 7))
    loss = DiceClDiceLoss()
    grad = torch.func.grad(lambda z: loss(z, target))(logits.detach())
    (expected,) = torch.autograd.grad(loss(logits, target), logits)
    torch.testing.assert_close(grad, expected)


# --- weight_map and mask (issue 19, item 9) ----------------------------------------------------------


def weighted_inputs(seed: int = 40):
    """Small softmax inputs (float64 logits, an index target, a weight map and a mask), 2-D."""
    logits, labels = make_inputs("softmax", (2, 3, 7, 8), seed=seed)
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(2, 7, 8, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(2, 7, 8, generator=g) > 0.3
    return logits, labels, weights, mask


def test_weighted_value_by_hand():
    """1-D, isolated pixels (each its own skeleton: its erosion is empty), saturated logits:
    ``y = [1,0,1,0,0]``, ``p = [1,0,0,0,1]``, ``ω = [2,1,3,1,5]``, ``s = 1``.
    ``Tprec = (Σ ω S(p) y + 1) / (Σ ω S(p) + 1) = (2 + 1) / (2 + 5 + 1) = 3/8``,
    ``Tsens = (Σ ω S(y) p + 1) / (Σ ω S(y) + 1) = (2 + 1) / (2 + 3 + 1) = 1/2``, clDice
    ``1 - 2 (3/8)(1/2) / (3/8 + 1/2) = 1 - 3/7 = 4/7`` (unweighted: ``1 - 2/3 = 1/3``). Dice:
    ``TP = Σ ω p y = 2``, ``Σ ω p = 7``, ``Σ ω y = 5``: ``(2·2 + 1) / (7 + 5 + 1) = 5/13``, so
    ``dice_cldice`` (``α = 1/2``) is ``(1 - 5/13)/2 + (4/7)/2 = 4/13 + 2/7 = 54/91``."""
    logits = hard_logits(torch.tensor([[[1, 0, 0, 0, 1]]]))
    target = torch.tensor([[[1, 0, 1, 0, 0]]])
    weights = torch.tensor([[2.0, 1, 3, 1, 5]], dtype=torch.float64)
    torch.testing.assert_close(binary_cldice_loss(logits, target).item(), 1 / 3)
    torch.testing.assert_close(binary_cldice_loss(logits, target, weights).item(), 4 / 7)
    torch.testing.assert_close(binary_dice_cldice_loss(logits, target, weights).item(), 54 / 91)


@pytest.mark.parametrize("batch", [False, True])
def test_weights_multiply_the_sums_after_the_skeletons(batch):
    """``Tprec = (Σ ω S(p) y + s) / (Σ ω S(p) + s)`` (and ``Tsens``, Dice's ``TP, FP, FN`` alike) with
    ``S`` the soft skeleton of the unweighted maps; a zero weight is not a mask (the mask cuts the
    structures before the skeletons are taken)."""
    logits, labels, weights, _ = weighted_inputs()
    probs, dense = logits.softmax(1), F.one_hot(labels, 3).movedim(-1, 1).double()
    omega = weights.unsqueeze(1)
    dims = (0, 2, 3) if batch else (2, 3)

    def ratio(skeleton, other):
        return ((omega * skeleton * other).sum(dims) + 1) / ((omega * skeleton).sum(dims) + 1)

    tprec, tsens = ratio(soft_skeleton(probs, 3), dense), ratio(soft_skeleton(dense, 3), probs)
    cl = 1 - 2 * tprec * tsens / (tprec + tsens)
    tp = (omega * probs * dense).sum(dims)
    dice = 1 - (2 * tp + 1) / ((omega * probs).sum(dims) + (omega * dense).sum(dims) + 1)
    options = dict(batch=batch, reduction="none")
    torch.testing.assert_close(cldice_loss(logits, labels, weights, **options), cl)
    torch.testing.assert_close(dice_cldice_loss(logits, labels, weights, **options), (dice + cl) / 2)
    zeroed = (labels == 1) & (torch.arange(8) % 2 == 0)  # every other pixel of class 1
    as_weight = cldice_loss(logits, labels, weights * ~zeroed, reduction="none")
    as_mask = cldice_loss(logits, labels, weights, ~zeroed, reduction="none")
    assert not torch.allclose(as_weight, as_mask)


@pytest.mark.parametrize(
    "function", [cldice_loss, dice_cldice_loss, binary_cldice_loss, binary_dice_cldice_loss]
)
def test_mask_on_a_soft_target(function):
    """A float target's masked pixels count as ignored ones (the integer target with IGNORE there, or
    a bool one with the mask), and a NaN logit there reaches neither the value nor the gradient."""
    logits, labels, _, mask = weighted_inputs(41)
    binary = function.__name__.startswith("binary")
    hard = F.one_hot(labels, 3).movedim(-1, 1)
    keep = mask.unsqueeze(1) if binary else mask
    ignored = (hard if binary else labels).masked_fill(~keep, IGNORE)
    expected = function(logits, ignored, ignore_index=IGNORE)
    poisoned = logits.detach().masked_fill(~mask.unsqueeze(1), math.nan).requires_grad_()
    value = function(poisoned, hard.double(), mask=mask)
    (grad,) = torch.autograd.grad(value, poisoned)
    torch.testing.assert_close(value, expected)
    assert torch.isfinite(grad).all() and (grad.masked_select(~mask.unsqueeze(1)) == 0).all()
    if binary:
        torch.testing.assert_close(function(logits, hard.bool(), mask=mask), expected)


@pytest.mark.parametrize("name", ["cldice", "dice_cldice", "binary_cldice", "binary_dice_cldice"])
def test_weighted_module_function_and_compound_agree(name):
    logits, labels, weights, mask = weighted_inputs(42)
    binary = name.startswith("binary")
    target = F.one_hot(labels, 3).movedim(-1, 1) if binary else labels
    function = getattr(sl.functional, f"{name}_loss")
    value = function(logits, target, weights, mask)
    module = sl.create_loss(name)
    torch.testing.assert_close(module(logits, target, weights, mask), value)
    dice = "binary_dice" if binary else "dice"
    compound = sl.create_loss(f"{dice} + {name}")(logits, target, weight_map=weights, mask=mask)
    dice_value = getattr(sl.functional, f"{dice}_loss")(logits, target, weights, mask)
    torch.testing.assert_close(compound, dice_value + value)
