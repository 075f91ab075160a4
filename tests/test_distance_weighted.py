"""Boundary DoU, region-wise (RRW maps) and distance-penalised CE: hand-derived values on a line, a ring and
a 3-D tube, and equality with plain-torch re-statements of the authors' code (values and gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, check_soft_mask_is_ignore_index, check_weighted_module_function_and_compound

import seglosses as sl
from seglosses.losses.distance_weighted import (
    BoundaryDoULoss,
    DistanceCELoss,
    RegionWiseLoss,
    binary_boundary_dou_loss,
    binary_distance_ce_loss,
    binary_region_wise_loss,
    boundary_dou_loss,
    boundary_penalty_maps,
    distance_ce_loss,
    rectified_region_maps,
    region_wise_loss,
)

ndimage = pytest.importorskip("scipy.ndimage")
SATURATED = 100.0


def logit(p) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def two_class_logits(p1) -> torch.Tensor:
    """Logits (1, 2, *S) whose softmax gives class 1 the probabilities ``p1`` (*S)."""
    p1 = torch.as_tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p1), logit(p1)])[None].requires_grad_()


def binary_logits(mask: torch.Tensor, p: float) -> torch.Tensor:
    """Binary logits (1, 1, *S): probability ``p`` on ``mask``, σ(-100) ≈ 4e-44 elsewhere."""
    inside = torch.full(mask.shape, float(logit(p)), dtype=torch.float64)
    return torch.where(mask.bool(), inside, -SATURATED)[None, None].requires_grad_()


def line_2d() -> torch.Tensor:
    line = torch.zeros(3, 7, dtype=torch.long)
    line[1, 1:6] = 1  # 5 pixels, one wide
    return line


def ring_2d() -> torch.Tensor:
    ring = torch.zeros(7, 7, dtype=torch.long)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0  # the 5 × 5 outline: 16 pixels
    return ring


def tube_3d() -> torch.Tensor:
    tube = torch.zeros(5, 5, 7, dtype=torch.long)
    tube[1:4, 1:4, 1:6] = 1  # 3 × 3 cross-section, length 5: 45 voxels
    return tube


def blobs(shape, classes, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, shape, generator=g)
    pool = (F.max_pool2d, F.max_pool3d)[len(shape) - 3]
    return pool(target.double()[:, None], 3, 1, 1)[:, 0].long(), g


# --- Boundary DoU: hand-derived values ---------------------------------------------------------------


@pytest.mark.parametrize(
    "mask, area, edge",
    [(line_2d(), 5, 5), (ring_2d(), 16, 16), (tube_3d(), 45, 42)],
    ids=["line", "ring", "tube"],
)
def test_boundary_dou_by_hand(mask, area, edge):
    """p = 1/2 on the target, ~0 elsewhere: I = S/2, Σp² = S/4, Σy² = S, so FP + FN = S/4 and
    L = (S/4) / (S/4 + (1 - α) S/2) with α = 1 - 2 C/S. The line and the ring are all boundary (C = S,
    α = -1: L = 1 - Dice = 1/5); the 3 × 3 tube has C = 45 - 3 (its 3 inner centre voxels have every
    face neighbour inside), α = 1 - 84/45."""
    alpha = 1 - 2 * edge / area
    expected = (area / 4) / (area / 4 + (1 - alpha) * area / 2)
    loss = binary_boundary_dou_loss(binary_logits(mask, 0.5), mask[None, None])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    if edge == area:
        assert expected == pytest.approx(0.2)


def test_boundary_dou_alpha_is_clipped():
    """A 40 × 40 block in a 42 × 42 image: S = 1600, C = 4 · 39 = 156, α = 1 - 312/1600 = 0.805, clipped
    to 0.8. p = 0.8 on the block: FP + FN = Σ (p - y)² = 1600 · 0.04 = 64, TP = 1280:
    L = 64 / (64 + 0.2 · 1280) = 0.2; with max_alpha = 0.9 the α stays 0.805: 64 / (64 + 0.195 · 1280)."""
    block = torch.zeros(42, 42, dtype=torch.long)
    block[1:41, 1:41] = 1
    logits = binary_logits(block, 0.8)
    assert binary_boundary_dou_loss(logits, block[None, None]).item() == pytest.approx(0.2, rel=1e-12)
    unclipped = binary_boundary_dou_loss(logits, block[None, None], max_alpha=0.9)
    assert unclipped.item() == pytest.approx(64 / (64 + 0.195 * 1280), rel=1e-12)


def test_boundary_dou_empty_and_perfect():
    """smooth = 0: a perfect prediction gives exactly 0 and a class absent from target and prediction 0;
    with the authors' s = 1e-5 the absent class gives 1 and the perfect one s / ((1 - α) S + s)."""
    line = line_2d()
    perfect = ((line.double() * 2 - 1) * SATURATED)[None, None]
    assert binary_boundary_dou_loss(perfect, line[None, None]).item() == 0.0
    nothing = torch.full((1, 1, 3, 7), -1000.0, dtype=torch.float64)  # σ = 0 exactly (σ(-100) > 0: loss 1)
    empty = torch.zeros(1, 1, 3, 7, dtype=torch.long)
    assert binary_boundary_dou_loss(nothing, empty, smooth=0.0).item() == pytest.approx(0.0, abs=1e-80)
    assert binary_boundary_dou_loss(nothing, empty, smooth=1e-5).item() == pytest.approx(1.0)
    smoothed = binary_boundary_dou_loss(perfect, line[None, None], smooth=1e-5)
    assert smoothed.item() == pytest.approx(1e-5 / (2 * 5 + 1e-5), rel=1e-9)  # α = -1 on the line


# --- Boundary DoU: the authors' code -----------------------------------------------------------------


def authors_boundary_dou(logits: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """A plain-torch re-statement of ``BoundaryDoULoss`` in sunfan-bvb/BoundaryDoULoss, file
    TransUNet/utils.py (commit 9f1185c): softmax, one-hot target, for each class (background included)
    sums over the whole batch; C = target pixels with fewer than 5 of the cross (itself and its 4
    neighbours, zero padding) in the target, S = target pixels, α = 2 (1 - (C + s)/(S + s)) - 1 clipped
    at 0.8, loss (Σp² + Σy² - 2I + s) / (Σp² + Σy² - (1 + α) I + s), s = 1e-5; the mean over classes."""
    smooth = 1e-5
    probs = logits.softmax(1)
    cross = torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float64)[None, None]
    total = 0
    for c in range(classes):
        y = (target == c).double()
        p = probs[:, c]
        covered = F.conv2d(y[:, None], cross, padding=1)[:, 0] * y
        boundary = torch.count_nonzero((covered > 0) & (covered < 5))
        area = torch.count_nonzero(y)
        alpha = 2 * (1 - (boundary + smooth) / (area + smooth)) - 1
        alpha = torch.clamp(alpha, max=0.8)
        inter, y_sum, p_sum = (p * y).sum(), (y * y).sum(), (p * p).sum()
        total = total + (p_sum + y_sum - 2 * inter + smooth) / (p_sum + y_sum - (1 + alpha) * inter + smooth)
    return total / classes


def test_boundary_dou_equals_the_authors_code():
    target, g = blobs((3, 14, 13), 4, 0)
    target[0, :, :] = torch.where(target[0] == 3, 2, target[0])  # a class absent from one image
    logits = (torch.randn(3, 4, 14, 13, generator=g, dtype=torch.float64) * 2).requires_grad_()
    ours = boundary_dou_loss(logits, target, batch=True, smooth=1e-5)
    theirs = authors_boundary_dou(logits, target, 4)
    # FP + FN = Σp² + Σy² - 2 Σpy in either order of operations: a class of one pixel and a small Σp²
    # (class 0 here) carries a cancellation of ~1e-14 into its ratio, hence rtol 1e-8
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=0)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-7, atol=1e-12)
    # per image (the default batch=False): the authors' loss of each image, averaged
    per_image = boundary_dou_loss(logits, target, smooth=1e-5)
    each = torch.stack([authors_boundary_dou(logits[i : i + 1], target[i : i + 1], 4) for i in range(3)])
    torch.testing.assert_close(per_image, each.mean(), rtol=1e-8, atol=0)


def test_boundary_dou_module_options_and_errors():
    target, g = blobs((2, 9, 9), 3, 1)
    logits = torch.randn(2, 3, 9, 9, generator=g, dtype=torch.float64)
    none = BoundaryDoULoss(reduction="none", include_background=False)(logits, target)
    assert none.shape == (2, 2)
    weighted = boundary_dou_loss(logits, target, weight=[0.0, 1.0, 3.0])
    per_class = boundary_dou_loss(logits, target, reduction="none")
    torch.testing.assert_close(weighted, (per_class[:, 1] + 3 * per_class[:, 2]).mean() / 4)
    with pytest.raises(sl.SegLossError, match="max_alpha"):
        BoundaryDoULoss(max_alpha=1.0)
    with pytest.raises(sl.SegLossError, match="smooth"):
        BoundaryDoULoss(smooth=-1.0)
    assert isinstance(sl.create_loss("boundary_dou(batch=True)"), BoundaryDoULoss)


# --- region-wise: hand-derived values ----------------------------------------------------------------


def test_rectified_maps_of_line_ring_and_tube():
    """Inside: -D / max D; outside: 1. The ring is all boundary (D = 1: Z = -1 on it). The 3 × 3 tube:
    D = 2 at its 3 inner centre voxels (-1), 1 on the rest of the tube (-1/2)."""
    line = torch.tensor([[[0, 1, 1, 1, 0]]]).bool()
    assert rectified_region_maps(line).tolist() == [[[1.0, -0.5, -1.0, -0.5, 1.0]]]
    ring = ring_2d().bool()
    expected = torch.where(ring, -1.0, 1.0)
    assert torch.equal(rectified_region_maps(ring[None, None])[0, 0], expected)
    tube = tube_3d().bool()
    maps = rectified_region_maps(tube[None, None])[0, 0]
    assert (maps[~tube] == 1).all()
    assert maps[2, 2, 2:5].tolist() == [-1.0, -1.0, -1.0]
    assert (maps[tube] == -0.5).sum() == 45 - 3
    assert rectified_region_maps(torch.zeros(1, 1, 4, 4, dtype=torch.bool)).eq(1).all()  # absent: 1


def test_region_wise_by_hand():
    """Target [0 1 1 1 0]: Z_1 = [1, -1/2, -1, -1/2, 1], Z_0 = [-1, 1, 1, 1, -1] (the background's pixels
    have D = 1 = max D); p_1 = [.2 .7 .4 .9 .1]. Per pixel (p_0 Z_0 + p_1 Z_1) / 2 = -0.3, -0.025, 0.1,
    -0.175, -0.4: mean -0.16. Class 1 only: (0.2 - 0.35 - 0.4 - 0.45 + 0.1) / 5 = -0.18."""
    p = [0.2, 0.7, 0.4, 0.9, 0.1]
    target = torch.tensor([[0, 1, 1, 1, 0]])
    assert region_wise_loss(two_class_logits(p), target).item() == pytest.approx(-0.16, rel=1e-12)
    foreground = region_wise_loss(two_class_logits(p), target, include_background=False)
    assert foreground.item() == pytest.approx(-0.18, rel=1e-12)
    none = region_wise_loss(two_class_logits(p), target, reduction="none")
    assert none[0].tolist() == pytest.approx([-0.3, -0.025, 0.1, -0.175, -0.4], rel=1e-12)


def test_binary_region_wise_ring_by_hand():
    """Ring (16 pixels, Z = -1) in 7 × 7 (33 outside, Z = 1); p = 0.75 on the ring, 0.25 outside:
    (16 · -0.75 + 33 · 0.25) / 49."""
    ring = ring_2d()
    z = torch.where(ring.bool(), logit(0.75), logit(0.25))[None, None]
    loss = binary_region_wise_loss(z, ring[None, None])
    assert loss.item() == pytest.approx((16 * -0.75 + 33 * 0.25) / 49, rel=1e-12)


def test_region_wise_minimum_is_the_perfect_prediction():
    """Negative, and any other prediction costs more: each pixel's loss is linear in p with its smallest
    map value at the target class."""
    target, g = blobs((2, 10, 11), 3, 2)
    perfect = (F.one_hot(target, 3).movedim(-1, 1).double() * 2 - 1) * SATURATED
    best = region_wise_loss(perfect, target)
    maps = rectified_region_maps(F.one_hot(target, 3).movedim(-1, 1).bool())
    expected = (maps.double().clamp(max=0).sum(1) / 3).mean()
    torch.testing.assert_close(best, expected)
    assert best < 0
    for _ in range(5):
        other = perfect + torch.randn(perfect.shape, generator=g, dtype=torch.float64) * 50
        assert region_wise_loss(other, target) > best


# --- region-wise: the authors' code ------------------------------------------------------------------


def authors_rw_loss(logits: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """A re-statement of ``RWLoss`` in jmlipman/RegionWiseLoss, nnUNet/training/loss_functions/rwexp_loss.py
    (commit a55be54): per (sample, class) of the one-hot target, scipy's EDT D, Z = -D / (max D + 1e-15),
    Z = 1 where 0; the loss is mean(softmax(z) · Z) over every element."""
    onehot = F.one_hot(target, classes).movedim(-1, 1).numpy()
    maps = np.zeros(onehot.shape)
    for b in range(onehot.shape[0]):
        for c in range(classes):
            depth = ndimage.distance_transform_edt(onehot[b, c])
            maps[b, c] = -1 * (depth / (np.max(depth) + 1e-15))
    maps[maps == 0] = 1
    return (logits.softmax(1) * torch.from_numpy(maps)).mean()


@pytest.mark.parametrize("shape", [(2, 12, 13), (2, 6, 7, 8)], ids=["2d", "3d"])
def test_region_wise_equals_the_authors_code(shape):
    """Where no class fills a sample: scipy's EDT of a mask without a zero is garbage (seglosses counts
    such a mask as surrounded by background)."""
    target, g = blobs(shape, 3, 3)
    target[:, 0], target[:, -1] = 0, 1
    logits = (torch.randn(shape[0], 3, *shape[1:], generator=g, dtype=torch.float64) * 2).requires_grad_()
    ours = region_wise_loss(logits, target)
    theirs = authors_rw_loss(logits, target, 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-12)  # float32 maps
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-6, atol=1e-12)


def test_region_wise_precomputed_maps_gradient_and_compound():
    target, g = blobs((2, 9, 10), 3, 4)
    target[0, :2] = IGNORE
    logits = torch.randn(2, 3, 9, 10, generator=g, dtype=torch.float64)
    valid = (target != IGNORE)[:, None]
    masks = (F.one_hot(target.clamp(max=2), 3).movedim(-1, 1).bool()) & valid
    maps = rectified_region_maps(masks).double().requires_grad_()
    on_the_fly = region_wise_loss(logits, target, ignore_index=IGNORE)
    given = region_wise_loss(logits, target, maps, ignore_index=IGNORE)
    torch.testing.assert_close(given, on_the_fly)
    (grad,) = torch.autograd.grad(given, maps)  # ∂L/∂Z = p / (C · valid pixels), 0 at ignored pixels
    expected = torch.where(valid, logits.softmax(1), 0.0) / (3 * valid.sum())
    torch.testing.assert_close(grad, expected)
    module = RegionWiseLoss(ignore_index=IGNORE)
    torch.testing.assert_close(module(logits, target, maps.detach()), on_the_fly)
    criterion = sl.create_loss("ce + 0.5*region_wise", ignore_index=IGNORE)
    value = criterion(logits, target, dist_maps=maps.detach())
    expected_value = sl.cross_entropy_loss(logits, target, ignore_index=IGNORE) + 0.5 * on_the_fly
    torch.testing.assert_close(value, expected_value)
    with pytest.raises(sl.SegLossError, match="dist_maps"):
        region_wise_loss(logits, target, maps.detach()[:, :2], ignore_index=IGNORE)


# --- distance-penalised CE: hand-derived values ------------------------------------------------------


def test_penalty_maps_of_line_ring_and_tube():
    """D = (max d - d) / (max d - min d) inside, 0 outside; a region all of one depth gets 1."""
    line = torch.tensor([[[0, 1, 1, 1, 1, 1, 0]]]).bool()
    assert boundary_penalty_maps(line).tolist() == [[[0.0, 1.0, 0.5, 0.0, 0.5, 1.0, 0.0]]]
    assert boundary_penalty_maps(~line).tolist() == [[[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]]
    ring = ring_2d().bool()[None, None]
    assert torch.equal(boundary_penalty_maps(ring), ring.float())  # one pixel wide: all boundary
    tube = tube_3d().bool()
    maps = boundary_penalty_maps(tube[None, None])[0, 0]
    assert maps[2, 2, 2:5].tolist() == [0.0, 0.0, 0.0] and (maps[tube] == 1).sum() == 42
    assert (maps[~tube] == 0).all()


def test_distance_ce_by_hand():
    """Target [0 1 1 1 1 1 0]: class 1's pixels have depth 1 2 3 2 1 -> D = 1, 1/2, 0, 1/2, 1; class 0's
    two pixels both depth 1 -> D = 1. Factors 1 + D = [2 2 1.5 1 1.5 2 2] times -log p_t."""
    p = [0.3, 0.6, 0.8, 0.9, 0.7, 0.4, 0.2]
    target = torch.tensor([[0, 1, 1, 1, 1, 1, 0]])
    factors = [2, 2, 1.5, 1, 1.5, 2, 2]
    p_t = [1 - p[0], *p[1:6], 1 - p[6]]
    terms = [f * -math.log(q) for f, q in zip(factors, p_t)]
    loss = distance_ce_loss(two_class_logits(p), target)
    assert loss.item() == pytest.approx(sum(terms) / 7, rel=1e-12)
    none = distance_ce_loss(two_class_logits(p), target, reduction="none")
    assert none[0].tolist() == pytest.approx(terms, rel=1e-12)


def test_distance_ce_on_a_missed_ring():
    """Ring all boundary (D = 1 on it). The background (33 pixels, one mask: the 3 × 3 hole and the outer
    frame) has depth 1 at 28 pixels, √2 at the frame's 4 corners (their nearest ring pixel is diagonal; the
    image border is no boundary), 2 at the hole's centre: D = (2 - d) / (2 - 1) = 1, 2 - √2, 0.
    p_ring = 0.25 everywhere: (16 · 2 · -log 0.25 + (28 · 2 + 4 (3 - √2) + 1) · -log 0.75) / 49."""
    ring = ring_2d()
    z = torch.full((1, 1, 7, 7), float(logit(0.25)), dtype=torch.float64)
    loss = binary_distance_ce_loss(z, ring[None, None])
    background = 28 * 2 + 4 * (3 - math.sqrt(2)) + 1
    expected = (16 * 2 * -math.log(0.25) + background * -math.log(0.75)) / 49
    assert loss.item() == pytest.approx(expected, rel=1e-7)  # the maps are float32: √2 to 6e-8


# --- distance-penalised CE: the re-implementation, cross-entropy, binary = two classes ---------------


def penalized_maps_reference(gt: np.ndarray) -> np.ndarray:
    """A re-statement of ``compute_edts_forPenalizedLoss`` in JunMa11/SegLossOdyssey,
    losses_pytorch/boundary_loss.py (commit 1cd873e), the benchmark re-implementation of Calivá et al.:
    per sample, each side's EDT inverted (max - d) on its side and divided by that inverted map's max."""
    out = np.zeros(gt.shape)
    for i in range(gt.shape[0]):
        inside = ndimage.distance_transform_edt(gt[i])
        inside = (inside.max() - inside) * gt[i]
        outside = ndimage.distance_transform_edt(~gt[i])
        outside = (outside.max() - outside) * ~gt[i]
        out[i] = inside / inside.max() + outside / outside.max()
    return out


@pytest.mark.parametrize("shape", [(2, 16, 15), (2, 8, 9, 10)], ids=["2d", "3d"])
def test_distance_ce_equals_the_reimplementation(shape):
    g = torch.Generator().manual_seed(5)
    target = torch.zeros(shape, dtype=torch.long)
    target[(slice(None),) + tuple(slice(2, n - 3) for n in shape[1:])] = 1  # a box: both sides thick
    target[1] = torch.roll(target[1], 1, -1)
    reference = torch.from_numpy(penalized_maps_reference(target.bool().numpy()))
    logits = (torch.randn(shape[0], 1, *shape[1:], generator=g, dtype=torch.float64) * 2).requires_grad_()
    ours = binary_distance_ce_loss(logits, target[:, None])
    bce = F.binary_cross_entropy_with_logits(logits, target[:, None].double(), reduction="none")
    theirs = ((1 + reference[:, None]) * bce).mean()
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=0)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-6, atol=1e-12)


def test_binary_distance_ce_is_the_two_class_softmax():
    target, g = blobs((2, 9, 10), 2, 6)
    target[1, :3] = IGNORE
    z = torch.randn(2, 1, 9, 10, generator=g, dtype=torch.float64)
    binary = binary_distance_ce_loss(z, target[:, None], ignore_index=IGNORE, reduction="none")
    two = torch.cat([torch.zeros_like(z), z], 1)
    softmax = distance_ce_loss(two, target, ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(binary[:, 0], softmax)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_distance_ce_with_zero_maps_is_cross_entropy(reduction):
    """D ≡ 0 leaves cross-entropy itself: class weights, ignore_index and mean's Σ w_t as in CE."""
    target, g = blobs((2, 8, 9), 3, 7)
    target[0, :2] = IGNORE
    logits = torch.randn(2, 3, 8, 9, generator=g, dtype=torch.float64)
    options = {"weight": [0.5, 2.0, 1.0], "ignore_index": IGNORE, "reduction": reduction}
    zero = torch.zeros_like(logits)
    torch.testing.assert_close(
        distance_ce_loss(logits, target, zero, **options), sl.cross_entropy_loss(logits, target, **options)
    )
    onehot = F.one_hot(target.clamp(max=2), 3).movedim(-1, 1).double() * (target != IGNORE)[:, None]
    dense_options = {"weight": [0.5, 2.0, 1.0], "reduction": reduction}
    if reduction != "none":  # a dense target has no ignored pixels: drop them from both
        keep = target[1:]
        torch.testing.assert_close(
            distance_ce_loss(logits[1:], onehot[1:], **dense_options),
            distance_ce_loss(logits[1:], keep, **dense_options),
        )


def test_distance_ce_weights_divide_by_target_weight_sum():
    target, g = blobs((2, 8, 9), 3, 8)
    logits = torch.randn(2, 3, 8, 9, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    none = distance_ce_loss(logits, target, weight=w, reduction="none")
    mean = distance_ce_loss(logits, target, weight=w)
    torch.testing.assert_close(mean, none.sum() / w[target].sum())
    binary_target = (target == 1).long()[:, None]
    z = logits[:, 1:2]
    b_none = binary_distance_ce_loss(z, binary_target, weight=[3.0], reduction="none")
    torch.testing.assert_close(
        binary_distance_ce_loss(z, binary_target, weight=[3.0]), b_none.sum() / (3 * 144)
    )
    with pytest.raises(sl.SegLossError, match="weight"):
        DistanceCELoss(weight=[-1.0, 1.0, 1.0])


# --- weight_map and mask (issue 19, item 9) ----------------------------------------------------------

P_LINE = [0.2, 0.6, 0.9, 0.5, 0.1]  # σ(z) on the line y = [0 1 1 1 0]
W_LINE = [1.0, 2, 1, 3, 1]


def line_inputs():
    """Binary logits (1, 1, 5) with σ(z) = P_LINE, the target [0 1 1 1 0] and the weights W_LINE."""
    y = torch.tensor([[[0, 1, 1, 1, 0]]])
    return logit(P_LINE)[None, None].requires_grad_(), y, torch.tensor([W_LINE], dtype=torch.float64)


def test_boundary_dou_weighted_hand_value():
    """α from the unweighted target: S = 3, C = 2 (the ends), α = 1 - 2·2/3 = -1/3. Weighted squared
    overlap: TP = Σ ω p y = 2·.6 + .9 + 3·.5 = 3.6, Σ ω p² = .04 + 2·.36 + .81 + 3·.25 + .01 = 2.33,
    Σ ω y² = 6; FP + FN = 2.33 + 6 - 2·3.6 = 1.13; L = 1.13 / (1.13 + (4/3)·3.6)."""
    z, y, w = line_inputs()
    loss = binary_boundary_dou_loss(z, y, w)
    assert loss.item() == pytest.approx(1.13 / (1.13 + 4 / 3 * 3.6))


def test_region_wise_weighted_hand_value():
    """Z = [1, -1/2, -1, -1/2, 1] (the unweighted target's RRW map): Σ ω Z p / Σ ω =
    (.2 - 2·.3 - .9 - 3·.25 + .1) / 8."""
    z, y, w = line_inputs()
    loss = binary_region_wise_loss(z, y, None, w)
    assert loss.item() == pytest.approx((0.2 - 0.6 - 0.9 - 0.75 + 0.1) / 8)


def test_distance_ce_weighted_hand_value():
    """D = [1 1 0 1 1] (inside: (max d - d) / (max d - min d) with depths [1 2 1]; the background's two
    single pixels are flat: 1); Σ ω (1 + D) BCE / Σ ω with BCE = -log(1 - p) at y = 0, -log p at y = 1."""
    z, y, w = line_inputs()
    bce = [-math.log(0.8), -math.log(0.6), -math.log(0.9), -math.log(0.5), -math.log(0.9)]
    expected = sum(wi * (1 + d) * b for wi, d, b in zip(W_LINE, [1, 1, 0, 1, 1], bce)) / sum(W_LINE)
    assert binary_distance_ce_loss(z, y, None, w).item() == pytest.approx(expected)
    class_w = torch.tensor([2.0], dtype=torch.float64)  # a channel weight: in both sums, cancels here
    assert binary_distance_ce_loss(z, y, None, w, weight=class_w).item() == pytest.approx(expected)


def test_distance_ce_weighted_mean_divides_by_omega_times_class_weight():
    """Softmax with class weights: mean = Σ ω L / Σ ω w_t, ``none`` = ω L (L the unweighted terms)."""
    logits, target, weights, _ = weighted_inputs("distance_ce")
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    terms = distance_ce_loss(logits, target, weight=w, reduction="none")
    value = distance_ce_loss(logits, target, None, weights, weight=w)
    torch.testing.assert_close(value, (weights * terms).sum() / (weights * w[target]).sum())


WEIGHTED = ["boundary_dou", "binary_boundary_dou", "region_wise", "binary_region_wise"]
WEIGHTED += ["distance_ce", "binary_distance_ce"]


def weighted_inputs(name: str, shape=(2, 3, 6, 7)):
    """Logits, an index (softmax) or 0/1 (binary) target, a weight map and a mask for ``name``."""
    g = torch.Generator().manual_seed(12)
    n, c, *spatial = shape
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    if name.startswith("binary_"):
        target = torch.randint(0, 2, shape, generator=g)
    else:
        target = torch.randint(0, c, (n, *spatial), generator=g)
    weights = torch.rand((n, *spatial), generator=g, dtype=torch.float64) * 3
    mask = torch.rand((n, *spatial), generator=g) > 0.3
    return logits, target, weights, mask


@pytest.mark.parametrize("name", ["region_wise", "binary_region_wise", "distance_ce", "binary_distance_ce"])
def test_weights_multiply_the_terms_not_the_maps(name):
    """The maps come from the unweighted target: the weighted mean is Σ ω t / Σ ω of the unweighted
    per-pixel terms t (no class weights), and ``none`` with ω is ω t."""
    logits, target, weights, _ = weighted_inputs(name)
    loss = sl.create_loss(name)
    terms = type(loss)(reduction="none")(logits, target)
    omega = weights.unsqueeze(1).expand_as(terms) if name.startswith("binary_") else weights
    torch.testing.assert_close(loss(logits, target, weight_map=weights), (omega * terms).sum() / omega.sum())
    torch.testing.assert_close(
        type(loss)(reduction="none")(logits, target, weight_map=weights), omega * terms
    )


@pytest.mark.parametrize("name", WEIGHTED)
def test_mask_on_a_soft_target_is_ignore_index(name):
    """A one-hot (binary: float) target with a mask is ignore_index at the masked pixels (helpers)."""
    check_soft_mask_is_ignore_index(name, *weighted_inputs(name))


@pytest.mark.parametrize("name", WEIGHTED)
def test_weighted_module_function_and_compound_agree(name):
    check_weighted_module_function_and_compound(name, *weighted_inputs(name))
