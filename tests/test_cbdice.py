"""Centerline boundary Dice (cbDice; Shi et al., MICCAI 2024): the radius maps and the loss derived by hand
on tiny masks (a one-pixel-wide line, a ring, a three-pixel band, a 3-D tube, a 1-D segment), the
identities (0 wherever the hard prediction equals the target, symmetry for hard masks, clDice on
structures one pixel thin), equality with the authors' ``SoftcbDiceLoss`` re-stated in plain torch
(values and gradients, 2-D and 3-D, two and three classes), the precomputed target maps, ignore_index,
options and torch.compile.

Notation (module docstring of :mod:`seglosses.losses.cbdice`): for a hard mask, ``K`` its skeleton,
``D`` its distance transform, ``R = D`` on ``K``, ``R_max = max(max R, 1)``, ``R_min = max(min R, 1)``
(1 unless the skeleton fills the image), ``D̂ = min(D, R_max) / R_max``, ``R̂ = R / R_max`` and
``I = ((R_max - R + R_min) / R_max)^(d - 1)`` on ``K``. For the structures below:

* a one-pixel-wide line or ring is its own skeleton (its erosion by the cross is empty) with ``D = 1``:
  ``R_max = 1`` and every map is 1 on the structure;
* a band three pixels wide across the image (touching the neutral left and right borders) has its centre
  row as skeleton, ``D = 2`` there and 1 on the edge rows: ``D̂ = 1, 1/2``, ``R̂ = 1`` and, in 2-D,
  ``I = (2 - 2 + 1) / 2 = 1/2`` on the centre row;
* a ``3 × 3`` tube spanning the depth has its centre line as skeleton with ``D = 2`` (in the plane; the
  depth ends touch the neutral border) and ``D = 1`` on the eight outer lines: the same ``D̂, R̂``, and
  ``I = (1/2)^2 = 1/4`` in 3-D.

Only the pixels of the prediction's hard mask ``P = {p > 0.5}`` carry ``p`` into a sum (every term with
``p`` has a factor ``I_P`` or ``D̂_P``), so a prediction with logit ``logit(q)`` on a structure and -30
elsewhere has exact hand values in ``q``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE

import seglosses as sl
from seglosses.losses.cbdice import (
    BinaryCbDiceLoss,
    CbDiceLoss,
    CbDiceMapTransform,
    binary_cbdice_loss,
    binary_skeleton,
    cbdice_loss,
    radius_maps,
    target_cbdice_maps,
)
from seglosses.losses.cldice import binary_cldice_loss
from seglosses.ops.morphology import soft_skeleton

monai_transforms = pytest.importorskip("monai.transforms", reason="MONAI (the [docs] extra) is not installed")
monai_cldice = pytest.importorskip("monai.losses.cldice", reason="MONAI (the [docs] extra) is not installed")

S = 1.0  # smooth
Q = 0.8  # the confidence on the predicted structure
OFF = -30.0  # the logit elsewhere


def predicted(mask: torch.Tensor, q: float = Q) -> torch.Tensor:
    """float64 logits: ``logit(q)`` on ``mask``, -30 elsewhere."""
    logits = torch.full(mask.shape, OFF, dtype=torch.float64)
    return logits.masked_fill(mask.bool(), math.log(q / (1 - q))).requires_grad_()


def harmonic_loss(tprec: float, tsens: float) -> float:
    return 1 - 2 * tprec * tsens / (tprec + tsens)


def band(width: int = 8) -> torch.Tensor:
    """``(1, 1, 5, width)``: rows 1-3 set, across the whole image."""
    image = torch.zeros(1, 1, 5, width)
    image[..., 1:4, :] = 1
    return image


def tube(depth: int = 6) -> torch.Tensor:
    """``(1, 1, depth, 5, 5)``: the ``3 × 3`` square of rows and columns 1-3 in every slice."""
    volume = torch.zeros(1, 1, depth, 5, 5)
    volume[..., 1:4, 1:4] = 1
    return volume


def blobs(shape, classes: int, seed: int, scale: int = 3) -> torch.Tensor:
    """Label maps ``(N, *S)`` of smooth random blobs (class 0 the largest), none filling a sample."""
    g = torch.Generator().manual_seed(seed)
    n, *spatial = shape
    noise = torch.randn(n, classes, *spatial, generator=g, dtype=torch.float64)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(spatial)]
    for _ in range(2):
        noise = pool(noise, 2 * scale + 1, 1, scale, count_include_pad=False)
    noise = noise / noise.std()
    noise[:, 0] += 0.6  # background first
    return noise.argmax(1)


def noisy_logits(labels: torch.Tensor, classes: int, seed: int, flip: float = 1.0) -> torch.Tensor:
    """float64 logits that agree with ``labels`` roughly (smooth noise of amplitude ``flip`` added)."""
    g = torch.Generator().manual_seed(seed)
    onehot = F.one_hot(labels, classes).movedim(-1, 1).double()
    noise = torch.randn(onehot.shape, generator=g, dtype=torch.float64)
    pool = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}[onehot.ndim]
    noise = pool(noise, 5, 1, 2, count_include_pad=False)
    return (2 * onehot - 1 + flip * noise / noise.std()).requires_grad_()


# --- the authors' loss, re-stated ------------------------------------------------------------------


def authors_cbdice(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 10, smooth: float = 1.0):
    """``SoftcbDiceLoss(iter_, smooth).forward(y_pred, y_true)`` of the authors (PengchengShi1220/cbDice,
    ``loss/cbdice_loss.py`` with ``get_weights`` and ``combine_tensors``, commit a970c1d), re-stated in
    plain torch with their default morphological skeleton (``t_skeletonize_flage=False``: the clDice soft
    skeleton of ``loss/soft_skeleton.py``, here MONAI's identical ``soft_skel``) and their distance
    transform (MONAI's ``distance_transform_edt``, scipy's on the CPU, float32 afterwards).

    ``logits`` ``(N, C, *S)``, ``labels`` ``(N, 1, *S)``. The foreground classes are merged:
    ``p = softmax([z_0, max_{c≥1} z_c])_1``, ``y = labels > 0``; the hard masks ``y`` and ``p > 0.5`` get
    skeletons ``K`` and distance maps without gradient; per sample ``R_max = max(max R, 1)``,
    ``R_min = max(min R, 1)`` (min and max over every pixel of ``R = D·K``), ``D̂ = min(D, R_max) / R_max``,
    ``R̂ = R / R_max``, ``I = (R_max - R + R_min) / R_max`` (squared in 3-D) on ``K``. With ``q_vl = D̂_y y``,
    ``q_slvl = R̂_y y``, ``q_sl = I_y K_y`` and ``q_vp = D̂_p p``, ``q_spvp = R̂_p p``, ``q_sp = I_p K_p p``:
    ``combine(a, b, c) = c·a`` where ``a ≠ 0`` and ``b = 0``, else ``c·b``;
    ``Tprec = (Σ q_sp q_vl + s) / (Σ combine(q_spvp, q_slvl, q_sp) + s)``,
    ``Tsens = (Σ q_sl q_vp + s) / (Σ combine(q_slvl, q_spvp, q_sl) + s)``, sums over the whole batch,
    loss ``-2·Tprec·Tsens / (Tprec + Tsens)``."""
    rank = logits.ndim - 2
    merged = torch.stack([logits[:, 0], logits[:, 1:].amax(1)], 1)
    p = torch.softmax(merged, 1)[:, 1]
    with torch.no_grad():
        y = (labels[:, 0] > 0).float()
        p_hard = (p > 0.5).float()
        skeleton_p = monai_cldice.soft_skel(p_hard[:, None], iterations)[:, 0]
        skeleton_y = monai_cldice.soft_skel(y[:, None], iterations)[:, 0]

    def normalised(mask: torch.Tensor, skeleton: torch.Tensor):
        distance = torch.as_tensor(monai_transforms.distance_transform_edt(mask)).float() * (mask > 0)
        radius = torch.where(skeleton == 1, distance, 0.0)
        maps = []
        for d, r, k in zip(distance, radius, skeleton):  # per sample
            r_max, r_min = max(r.max().item(), 1.0), max(r.min().item(), 1.0)
            inverse = (r_max - r + r_min) / r_max
            inverse = inverse**2 if rank == 3 else inverse
            maps.append((d.clamp(max=r_max) / r_max, r / r_max, torch.where(k == 1, inverse, 0.0)))
        return [torch.stack(m) for m in zip(*maps)]

    d_y, r_y, i_y = normalised(y, skeleton_y)
    skeleton_prob = skeleton_p * p
    d_p, r_p, i_p = normalised(p_hard, (skeleton_prob > 0.5).float())
    q_vl, q_slvl, q_sl = d_y * y, r_y * y, i_y * skeleton_y
    q_vp, q_spvp, q_sp = d_p * p, r_p * p, i_p * skeleton_prob

    def combine(a, b, c):
        return c * torch.where((a != 0) & (b == 0), a, b)

    tprec = ((q_sp * q_vl).sum() + smooth) / (combine(q_spvp, q_slvl, q_sp).sum() + smooth)
    tsens = ((q_sl * q_vp).sum() + smooth) / (combine(q_slvl, q_spvp, q_sl).sum() + smooth)
    return -2.0 * tprec * tsens / (tprec + tsens)


def merged_logit(logits: torch.Tensor) -> torch.Tensor:
    """The authors' single foreground logit ``max_{c≥1} z_c - z_0`` ``(N, 1, *S)``."""
    return logits[:, 1:].amax(1, keepdim=True) - logits[:, :1]


@pytest.mark.parametrize(
    "shape, classes",
    [((2, 40, 44), 2), ((2, 40, 44), 3), ((2, 14, 18, 16), 2), ((2, 14, 18, 16), 3)],
    ids=["2d-2", "2d-3", "3d-2", "3d-3"],
)
@pytest.mark.parametrize("smooth", [1.0, 1e-3])
def test_equals_the_authors_loss_plus_one(shape, classes, smooth):
    """Values and gradients: the authors' loss is ``binary_cbdice`` of their merged foreground logit with
    ``batch=True``, minus 1; for two classes also ``cbdice`` with ``batch=True`` (class 0 left out)."""
    labels = blobs(shape, classes, seed=len(shape) + classes)
    logits = noisy_logits(labels, classes, seed=7)
    expected = authors_cbdice(logits, labels[:, None], smooth=smooth)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    target = (labels[:, None] > 0).double()
    value = binary_cbdice_loss(merged_logit(logits), target, batch=True, smooth=smooth)
    (grad,) = torch.autograd.grad(value, logits)
    assert 0.05 < value.item() < 0.95  # a case that is neither perfect nor hopeless
    torch.testing.assert_close(value, 1 + expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-13)
    if classes == 2:
        softmax_value = cbdice_loss(logits, labels, batch=True, smooth=smooth)
        (softmax_grad,) = torch.autograd.grad(softmax_value, logits)
        torch.testing.assert_close(softmax_value, 1 + expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(softmax_grad, expected_grad, rtol=1e-10, atol=1e-13)


def test_equals_the_authors_loss_per_sample_and_with_fewer_iterations():
    """``batch=False`` gives one authors' loss per sample (their maps are per sample anyway)."""
    labels = blobs((3, 30, 34), 2, seed=11)
    logits = noisy_logits(labels, 2, seed=12)
    target = (labels[:, None] > 0).double()
    value = binary_cbdice_loss(merged_logit(logits), target, iterations=3, reduction="none")
    expected = torch.stack(
        [1 + authors_cbdice(logits[k : k + 1], labels[k : k + 1, None], iterations=3) for k in range(3)]
    )
    torch.testing.assert_close(value[:, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "shape", [(3, 2, 40), (3, 2, 30, 33), (2, 2, 12, 13, 14), (2, 1, 1, 9, 9), (1, 1, 1, 1)]
)
@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
def test_binary_skeleton_is_the_soft_skeleton_of_the_mask(shape, iterations):
    """Bit for bit: ours (and, in 2-D and 3-D, MONAI's ``soft_skel``, the authors' skeleton) on 0/1 masks."""
    g = torch.Generator().manual_seed(iterations)
    for density in (0.3, 0.6, 0.9):
        masks = torch.rand(shape, generator=g) < density
        skeleton = binary_skeleton(masks, iterations)
        assert torch.equal(skeleton.float(), soft_skeleton(masks.float(), iterations))
        if len(shape) > 3:
            assert torch.equal(skeleton.float(), monai_cldice.soft_skel(masks.float(), iterations))


# --- hand-derived values -------------------------------------------------------------------------------


def test_radius_maps_of_a_band_a_tube_and_a_segment():
    """The maps of the module docstring's examples, value by value."""
    d, r, i = radius_maps(band().bool())[:, 0, 0]
    torch.testing.assert_close(d[:, 0], torch.tensor([0, 0.5, 1, 0.5, 0]))
    torch.testing.assert_close(r[:, 0], torch.tensor([0, 0, 1, 0, 0.0]))
    torch.testing.assert_close(i[:, 0], torch.tensor([0, 0, 0.5, 0, 0]))
    assert (d == d[:, :1]).all() and (r == r[:, :1]).all() and (i == i[:, :1]).all()  # along the band
    d, r, i = radius_maps(tube().bool())[:, 0, 0]
    centre = torch.zeros(5, 5)
    centre[2, 2] = 1
    torch.testing.assert_close(d, (tube()[0, 0] + centre) / 2)
    torch.testing.assert_close(r, centre.expand(6, 5, 5))
    torch.testing.assert_close(i, centre.expand(6, 5, 5) / 4)
    segment = torch.zeros(1, 1, 9, dtype=torch.bool)
    segment[..., 2:7] = True  # D = 1 2 3 2 1, skeleton the middle pixel: R_max = 3, I = 1 (1-D)
    d, r, i = radius_maps(segment)[:, 0, 0]
    torch.testing.assert_close(d, torch.tensor([0, 0, 1, 2, 3, 2, 1, 0, 0]) / 3)
    torch.testing.assert_close(r, torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 0.0]))
    torch.testing.assert_close(i, r)


def test_a_missed_line_costs_as_in_cldice():
    """``p ≈ 0``: ``Tprec = s/s = 1``, ``Tsens = s / (L + s)`` (``I_Y R̂_Y = 1`` on the line), so the loss
    is ``L / (L + 2s)``."""
    target = torch.zeros(1, 1, 9, 12)
    target[..., 4, 1:11] = 1
    value = binary_cbdice_loss(torch.full(target.shape, OFF, dtype=torch.float64), target)
    assert value.item() == pytest.approx(10 / 12, abs=1e-12)


def test_hand_derived_line_and_broken_ring():
    """Every map is 1 on these thin structures. Line of 6, its first 3 pixels predicted with ``q``:
    ``Tprec = (3q + s) / (3q + s) = 1``, ``Tsens = (3q + s) / (3q + 3 + s)`` (the three missed skeleton
    pixels cost ``R̂_Y = 1``), so ``L = (1 - Tsens) / (1 + Tsens) = 3 / (6q + 3 + 2s)``. The 8-pixel ring
    with one pixel not predicted: ``Tsens = (7q + s) / (7q + 1 + s)``, ``L = 1 / (14q + 1 + 2s)``."""
    line, part = torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8)
    line[..., 2, 1:7] = 1
    part[..., 2, 1:4] = 1
    value = binary_cbdice_loss(predicted(part), line)
    assert value.item() == pytest.approx(3 / (6 * Q + 3 + 2 * S), abs=1e-12)
    ring = torch.zeros(1, 1, 5, 5)
    ring[..., 1:4, 1:4] = 1
    ring[..., 2, 2] = 0
    broken = ring.clone()
    broken[..., 2, 1] = 0
    value = binary_cbdice_loss(predicted(broken), ring)
    assert value.item() == pytest.approx(1 / (14 * Q + 1 + 2 * S), abs=1e-12)


def test_hand_derived_band_and_tube_weight_the_radius():
    """The edge row of the band predicted (width 8): it is its own skeleton, off the target's, inside
    the target where ``D̂_Y = 1/2``: ``Tprec = (8q/2 + s) / (8q·q + s)`` (off ``K_Y`` the denominator takes
    ``R̂_P·p = q``); the target's skeleton is missed: ``Tsens = s / (8·I_Y·R̂_Y + s) = s / (4 + s)``.
    3-D, an outer line of the tube of depth 6: ``Tprec = (6q/2 + s) / (6q² + s)``, and ``I_Y = 1/4``:
    ``Tsens = s / (6/4 + s)``."""
    edge = torch.zeros(1, 1, 5, 8)
    edge[..., 1, :] = 1
    value = binary_cbdice_loss(predicted(edge), band())
    expected = harmonic_loss((8 * Q / 2 + S) / (8 * Q * Q + S), S / (4 + S))
    assert value.item() == pytest.approx(expected, abs=1e-12)
    outer = torch.zeros(1, 1, 6, 5, 5)
    outer[..., 1, 2] = 1
    value = binary_cbdice_loss(predicted(outer), tube())
    expected = harmonic_loss((6 * Q / 2 + S) / (6 * Q * Q + S), S / (6 / 4 + S))
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_hand_derived_1d_segment():
    """Target ``2..6`` (``D̂_Y = D/3``, skeleton 4), prediction ``2..4`` with ``q`` (skeleton 3, ``D = 1 2 1``,
    ``R_max = 2``): ``Tprec = (q·D̂_Y(3) + s) / (q·R̂_P·q + s) = (2q/3 + s) / (q² + s)``;
    ``Tsens = (I_Y·D̂_P(4)·q + s) / (R̂_Y(4) + s) = (q/2 + s) / (1 + s)``."""
    target, part = torch.zeros(1, 1, 9), torch.zeros(1, 1, 9)
    target[..., 2:7] = 1
    part[..., 2:5] = 1
    value = binary_cbdice_loss(predicted(part), target)
    expected = harmonic_loss((2 * Q / 3 + S) / (Q * Q + S), (Q / 2 + S) / (1 + S))
    assert value.item() == pytest.approx(expected, abs=1e-7)  # the maps are float32: 2/3 rounded


# --- identities ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 30, 33), (2, 12, 14, 13), (3, 40)], ids=["2d", "3d", "1d"])
def test_zero_with_zero_gradient_wherever_the_hard_prediction_is_right(shape):
    """``P = Y`` gives ``Tprec = Tsens = 1`` for any confidence (``D̂ = R̂`` on the skeleton): 0, and no
    gradient; softmax (three classes, background kept or not) and sigmoid."""
    labels = blobs(shape, 3, seed=3)
    g = torch.Generator().manual_seed(4)
    onehot = F.one_hot(labels, 3).movedim(-1, 1).double()
    logits = (
        onehot * (1.0 + 3 * torch.rand(onehot.shape, generator=g, dtype=torch.float64))
    ).requires_grad_()
    for include_background in (False, True):
        value = cbdice_loss(logits, labels, include_background=include_background)
        (grad,) = torch.autograd.grad(value, logits)
        assert value.item() == pytest.approx(0, abs=1e-12) and grad.abs().max() < 1e-12
    confident = (onehot * 2 - 1) * torch.rand(onehot.shape, generator=g, dtype=torch.float64) + onehot * 1e-3
    confident.requires_grad_()
    value = binary_cbdice_loss(confident, onehot)
    (grad,) = torch.autograd.grad(value, confident)
    assert value.item() == pytest.approx(0, abs=1e-12) and grad.abs().max() < 1e-12


def test_symmetric_in_the_two_hard_masks():
    """Swapping a hard prediction and the target swaps ``Tprec`` and ``Tsens`` (2-D and 3-D)."""
    for shape in ((2, 32, 30), (2, 12, 13, 14)):
        first = (blobs(shape, 2, seed=5) > 0).double()[:, None]
        second = (blobs(shape, 2, seed=6) > 0).double()[:, None]
        one = binary_cbdice_loss(torch.where(first > 0, 40.0, -40.0).double(), second, reduction="none")
        other = binary_cbdice_loss(torch.where(second > 0, 40.0, -40.0).double(), first, reduction="none")
        torch.testing.assert_close(one, other, rtol=0, atol=1e-12)
        assert (one > 0.01).all()


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_thin_structures_and_a_saturated_prediction_give_cldice(rank):
    """Masks one pixel thin across the odd rows (every foreground pixel has background above and below:
    ``D = 1``, ``R_max = 1``, every weight 1) and ``p ∈ {0, 1}``: cbDice is clDice of the same skeletons."""
    g = torch.Generator().manual_seed(rank)
    spatial = {1: (31,), 2: (15, 24), 3: (5, 9, 12)}[rank]
    rows = torch.zeros(spatial, dtype=torch.bool)
    if rank == 1:
        rows[1::2] = True  # isolated pixels
    else:
        rows[..., 1::2, :] = True  # one-pixel lines along the last axis
    target = ((torch.rand(2, 1, *spatial, generator=g) < 0.6) & rows).double()
    prediction = ((torch.rand(2, 1, *spatial, generator=g) < 0.6) & rows).double()
    logits = torch.where(prediction > 0, 40.0, -40.0).double()
    value = binary_cbdice_loss(logits, target, reduction="none")
    expected = binary_cldice_loss(logits, target, iterations=10, reduction="none")
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)
    assert (value > 0.05).all()


def test_a_centre_line_prediction_of_a_tube_scores_zero():
    """Each mask's radii are normalised by its own ``R_max``: predicting only the band's centre row gives
    ``Tprec = Tsens = 1`` (thickness is not seen where the centre lines agree, as in clDice)."""
    centre = torch.zeros(1, 1, 5, 8)
    centre[..., 2, :] = 1
    assert binary_cbdice_loss(predicted(centre), band()).item() == pytest.approx(0, abs=1e-12)


def test_two_class_softmax_equals_the_binary_form():
    labels = blobs((2, 24, 26), 2, seed=8)
    logits = noisy_logits(labels, 2, seed=9)
    value = cbdice_loss(logits, labels, reduction="none")
    expected = binary_cbdice_loss(logits[:, 1:] - logits[:, :1], labels[:, None] == 1, reduction="none")
    torch.testing.assert_close(value, expected)
    both = cbdice_loss(logits, labels, include_background=True, reduction="none")
    background = binary_cbdice_loss(logits[:, :1] - logits[:, 1:], labels[:, None] == 0, reduction="none")
    torch.testing.assert_close(both, torch.cat([background, expected], 1))


def test_ignored_pixels_are_background_before_the_maps():
    """An ignored pixel is a background pixel of both masks with ``p = 0`` there: the same loss as the
    target with it set to 0 and the logit at -1e4 (``sigmoid = 0`` exactly)."""
    labels = blobs((2, 28, 30), 2, seed=10)
    logits = noisy_logits(labels, 2, seed=11)[:, 1:].detach()
    target = labels[:, None].clone()
    target[..., 10:14, :] = IGNORE
    value = binary_cbdice_loss(logits, target, ignore_index=IGNORE, reduction="none")
    cut = torch.where(target == IGNORE, 0, target)
    expected = binary_cbdice_loss(torch.where(target == IGNORE, -1e4, logits), cut, reduction="none")
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)


# --- precomputed target maps ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 22, 20), (2, 3, 9, 10, 8), (2, 3, 25)], ids=["2d", "3d", "1d"])
def test_on_the_fly_equals_precomputed(shape):
    n, c, *spatial = shape
    labels = blobs((n, *spatial), c, seed=12)
    labels[:, :2] = IGNORE
    logits = noisy_logits(labels.clamp(max=c - 1), c, seed=13).detach()
    for include_background in (True, False):
        options = {"ignore_index": IGNORE, "include_background": include_background, "reduction": "none"}
        transform = CbDiceMapTransform(c, ignore_index=IGNORE, include_background=include_background)
        maps = torch.stack([transform(sample) for sample in labels])
        assert maps.shape == (n, 3, *shape[1:]) and maps.dtype == torch.float32
        module = CbDiceLoss(**options)
        torch.testing.assert_close(module(logits, labels), module(logits, labels, maps), rtol=0, atol=0)
    channels = (labels[:, None] == torch.arange(1, c).view(1, -1, *[1] * len(spatial))).long()
    channels = torch.where(labels[:, None] == IGNORE, IGNORE, channels)
    maps = torch.stack([CbDiceMapTransform(ignore_index=IGNORE)(sample) for sample in channels])
    module = BinaryCbDiceLoss(ignore_index=IGNORE, reduction="none", batch=True)
    torch.testing.assert_close(module(logits[:, 1:], channels), module(logits[:, 1:], channels, maps))


def test_dense_target_equals_index_target():
    labels = blobs((2, 18, 19), 3, seed=14)
    logits = noisy_logits(labels, 3, seed=15)
    onehot = F.one_hot(labels, 3).movedim(-1, 1).double()
    torch.testing.assert_close(cbdice_loss(logits, onehot), cbdice_loss(logits, labels))
    maps = target_cbdice_maps(onehot)
    torch.testing.assert_close(cbdice_loss(logits, onehot, maps), cbdice_loss(logits, labels))


def test_shapes_and_the_compound_input():
    labels = blobs((2, 16, 17), 3, seed=16)
    logits = noisy_logits(labels, 3, seed=17).detach().float()
    assert cbdice_loss(logits, labels, reduction="none").shape == (2, 2)  # the foreground classes
    pooled = cbdice_loss(logits, labels, include_background=True, batch=True, reduction="none")
    assert pooled.shape == (3,)
    weighted = cbdice_loss(logits, labels, weight=[5.0, 1.0, 3.0], reduction="none")  # class 0 left out
    torch.testing.assert_close(
        weighted, cbdice_loss(logits, labels, reduction="none") * torch.tensor([1.0, 3.0])
    )
    maps = target_cbdice_maps(labels, 3)
    criterion = sl.create_loss("dice + 0.5*cbdice")
    expected = sl.dice_loss(logits, labels) + 0.5 * cbdice_loss(logits, labels, maps)
    torch.testing.assert_close(criterion(logits, labels, cbdice_maps=maps), expected)
    torch.testing.assert_close(
        criterion(logits, labels), sl.dice_loss(logits, labels) + 0.5 * cbdice_loss(logits, labels)
    )


def test_bad_inputs_raise():
    logits, labels = torch.randn(1, 2, 6, 7), torch.zeros(1, 6, 7, dtype=torch.long)
    with pytest.raises(sl.SegLossError, match=r"cbdice_maps of shape \(N, 3, C, \*S\)"):
        cbdice_loss(logits, labels, torch.zeros(1, 2, 6, 7))
    with pytest.raises(sl.SegLossError, match=r"values in \[0, 1\]"):
        cbdice_loss(logits, labels, torch.full((1, 3, 2, 6, 7), 2.0))
    with pytest.raises(sl.SegLossError, match="floating-point"):
        cbdice_loss(logits, labels, torch.zeros(1, 3, 2, 6, 7, dtype=torch.bool))
    with pytest.raises(sl.SegLossError, match="iterations"):
        CbDiceLoss(iterations=-1)
    with pytest.raises(sl.SegLossError, match="integer index target"):
        target_cbdice_maps(labels.float(), 2)
    with pytest.raises(sl.SegLossError, match="dense target"):
        target_cbdice_maps(labels[0])
    with pytest.raises(sl.SegLossError, match="num_classes"):
        CbDiceMapTransform(num_classes=1)
    with pytest.raises(sl.SegLossError, match="bool masks"):
        binary_skeleton(torch.zeros(1, 1, 4, 4))


@pytest.mark.slow
def test_compiles_with_precomputed_maps():
    labels = blobs((2, 20, 22), 3, seed=18)
    logits = noisy_logits(labels, 3, seed=19).detach().float().requires_grad_()
    maps = target_cbdice_maps(labels, 3)
    loss = CbDiceLoss()
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager = loss(logits, labels, maps)
    (eager_grad,) = torch.autograd.grad(eager, logits)
    value = compiled(logits, labels, maps)
    (grad,) = torch.autograd.grad(value, logits)
    torch.testing.assert_close(value, eager)
    torch.testing.assert_close(grad, eager_grad)


# --- weight_map and mask (issue 19, item 9) ----------------------------------------------------------


def weighted_inputs(seed: int = 60):
    """Blob labels ``(2, 12, 13)`` of three classes, logits that roughly agree, a weight map, a mask."""
    labels = blobs((2, 12, 13), 3, seed=seed)
    logits = noisy_logits(labels, 3, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(2, 12, 13, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(2, 12, 13, generator=g) > 0.3
    return logits, labels, weights, mask


def test_weighted_value_by_hand():
    """1-D, isolated pixels (each its own skeleton with ``D = 1``: every map is 1 on it), ``y =
    [1,0,1,0,0]``, ``p = [0.8, 0, 0.2, 0, 0.8]`` (``P = {0, 4}``), ``ω = [2,1,3,1,5]``, ``s = 1``:
    ``Σ ω I_P p D̂_Y = 2·0.8 = 1.6``; ``Σ ω I_P p [R̂_Y on K_Y, else R̂_P p] = 2·0.8 + 5·0.8·0.8 = 4.8``;
    ``Σ ω I_Y D̂_P p = 2·0.8 = 1.6``; ``Σ ω I_Y [R̂_P p on K_P, else R̂_Y] = 2·0.8 + 3·1 = 4.6``.
    ``Tprec = 2.6/5.8``, ``Tsens = 2.6/5.6``, whose harmonic mean is ``2·2.6/(5.8 + 5.6) = 26/57``: the
    loss is ``31/57``."""
    logit = math.log(4)  # σ = 0.8
    logits = torch.tensor([[[logit, -50, -logit, -50, logit]]], dtype=torch.float64)
    target = torch.tensor([[[1, 0, 1, 0, 0]]])
    weights = torch.tensor([[2.0, 1, 3, 1, 5]], dtype=torch.float64)
    torch.testing.assert_close(binary_cbdice_loss(logits, target, None, weights).item(), 31 / 57)


@pytest.mark.parametrize("batch", [False, True])
def test_weights_multiply_the_sums_after_the_maps(batch):
    """``ω`` multiplies each pixel's term of the four sums; the maps (skeletons, distances, radii, the hard
    prediction) are the unweighted masks' (:func:`radius_maps`); a zero weight is not a mask."""
    logits, labels, weights, _ = weighted_inputs()
    probs = logits.softmax(1)[:, 1:]
    masks = F.one_hot(labels, 3).movedim(-1, 1)[:, 1:].bool()
    d_y, r_y, i_y = radius_maps(masks).double()
    d_p, r_p, i_p = radius_maps(probs.detach() > 0.5).double()
    omega, dims = weights.unsqueeze(1), ((0, 2, 3) if batch else (2, 3))
    tprec = ((omega * i_p * probs * d_y).sum(dims) + 1) / (
        (omega * i_p * probs * torch.where(r_y > 0, r_y, r_p * probs)).sum(dims) + 1
    )
    tsens = ((omega * i_y * d_p * probs).sum(dims) + 1) / (
        (omega * i_y * torch.where(r_p > 0, r_p * probs, r_y)).sum(dims) + 1
    )
    value = cbdice_loss(logits, labels, None, weights, batch=batch, reduction="none")
    torch.testing.assert_close(value, 1 - 2 * tprec * tsens / (tprec + tsens))
    zeroed = (labels == 1) & (torch.arange(13) % 2 == 0)
    as_weight = cbdice_loss(logits, labels, None, weights * ~zeroed, reduction="none")
    assert not torch.allclose(
        as_weight, cbdice_loss(logits, labels, None, weights, ~zeroed, reduction="none")
    )


def test_precomputed_maps_with_a_mask():
    """Maps precomputed with the masked pixels as ``ignore_index`` give the loss with the mask."""
    logits, labels, weights, mask = weighted_inputs(62)
    maps = target_cbdice_maps(labels.masked_fill(~mask, IGNORE), 3, ignore_index=IGNORE)
    torch.testing.assert_close(
        cbdice_loss(logits, labels, maps, weights, mask), cbdice_loss(logits, labels, None, weights, mask)
    )


@pytest.mark.parametrize("binary", [False, True])
def test_mask_on_a_soft_target(binary):
    """A float target's masked pixels are ignored ones, and a NaN logit there reaches neither value nor
    gradient."""
    logits, labels, _, mask = weighted_inputs(64)
    hard = F.one_hot(labels, 3).movedim(-1, 1)
    function = binary_cbdice_loss if binary else cbdice_loss
    ignored = hard.masked_fill(~mask.unsqueeze(1), IGNORE) if binary else labels.masked_fill(~mask, IGNORE)
    expected = function(logits, ignored, ignore_index=IGNORE)
    poisoned = logits.detach().masked_fill(~mask.unsqueeze(1), math.nan).requires_grad_()
    value = function(poisoned, hard.double(), mask=mask)
    (grad,) = torch.autograd.grad(value, poisoned)
    torch.testing.assert_close(value, expected)
    assert torch.isfinite(grad).all() and (grad.masked_select(~mask.unsqueeze(1)) == 0).all()


@pytest.mark.parametrize("name", ["cbdice", "binary_cbdice"])
def test_weighted_module_function_and_compound_agree(name):
    logits, labels, weights, mask = weighted_inputs(66)
    binary = name.startswith("binary")
    target = F.one_hot(labels, 3).movedim(-1, 1) if binary else labels
    value = getattr(sl.functional, f"{name}_loss")(logits, target, None, weights, mask)
    module = BinaryCbDiceLoss if binary else CbDiceLoss
    torch.testing.assert_close(module()(logits, target, weight_map=weights, mask=mask), value)
    dice = "binary_dice" if binary else "dice"
    compound = sl.create_loss(f"{dice} + {name}")(logits, target, weight_map=weights, mask=mask)
    dice_value = getattr(sl.functional, f"{dice}_loss")(logits, target, weights, mask)
    torch.testing.assert_close(compound, dice_value + value)
