"""Boundary-aware losses (SPEC section 4): hand-derived values, identities and the metric they mirror."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import IGNORE

import seglosses as sl
import seglosses.functional as SF
from seglosses.metrics import boundary_iou


def two_class_logits(p1) -> torch.Tensor:
    """Logits (1, 2, *S) whose softmax gives class 1 the probabilities ``p1`` (*S)."""
    p1 = torch.as_tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p1), torch.log(p1 / (1 - p1))])[None].requires_grad_()


def test_boundary_loss_hand_value():
    """Target [0 1 1 1 0]: φ_1 = [1, 0, -1, 0, 1]; foreground only, so mean(φ_1 p_1) over 5 pixels."""
    p = [0.2, 0.6, 0.9, 0.5, 0.1]
    loss = SF.boundary_loss(two_class_logits(p), torch.tensor([[0, 1, 1, 1, 0]]))
    assert loss.item() == pytest.approx((0.2 - 0.9 + 0.1) / 5)
    target = torch.tensor([[0, 1, 1, 1, 0]])
    with_background = SF.boundary_loss(two_class_logits(p), target, include_background=True)
    phi_0 = [-0.0, 1, 2, 1, 0]  # background [1 0 0 0 1]: its inner boundary 0, outside 1, 2, 1
    expected = sum(f * (1 - q) for f, q in zip(phi_0, p)) + (0.2 - 0.9 + 0.1)
    assert with_background.item() == pytest.approx(expected / 10)


def test_boundary_loss_precomputed_maps_and_transform():
    """dist_maps from target_distance_maps (or the Dataset transform) give the on-the-fly loss."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 12, 10, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 12, 10), generator=g)
    target[0, :3] = IGNORE
    maps = sl.target_distance_maps(target, 3, ignore_index=IGNORE)
    assert torch.equal(maps[1], sl.DistanceMapTransform(3, ignore_index=IGNORE)(target[1]))
    module = sl.BoundaryLoss(ignore_index=IGNORE)
    torch.testing.assert_close(module(logits, target, maps.double()), module(logits, target))
    from_spec = sl.create_loss("boundary(ignore_index=255)")
    torch.testing.assert_close(from_spec(logits, target), module(logits, target))


def test_ignored_pixels_are_background_before_the_distance():
    """[0 1 1 1 IGN]: the ignored pixel is background for class 1, so φ_1 = [1, 0, -1, 0, ·]."""
    p = torch.tensor([0.2, 0.6, 0.9, 0.5, 0.3])
    loss = SF.boundary_loss(two_class_logits(p), torch.tensor([[0, 1, 1, 1, IGNORE]]), ignore_index=IGNORE)
    assert loss.item() == pytest.approx((0.2 - 0.9) / 4)


def test_perfect_boundary_prediction_is_the_minimum():
    """At a perfect prediction the surface loss is mean of φ over inside pixels (≤ 0), below any other."""
    target = torch.zeros(1, 9, 9, dtype=torch.long)
    target[0, 2:7, 3:8] = 1
    phi = sl.signed_distance_map(target == 1).double()
    perfect = SF.boundary_loss(torch.stack([1 - target, target], 1).double() * 200 - 100, target)
    assert perfect.item() == pytest.approx((phi * (target == 1)).sum().item() / 81)
    assert perfect < SF.boundary_loss(torch.randn(1, 2, 9, 9, dtype=torch.float64), target)


def test_binary_boundary_gradient_closed_form():
    """∂/∂z mean(φ σ(z)) = φ σ(z)(1 - σ(z)) / M."""
    logits = torch.randn(2, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 1, 6, 7) < 0.5
    loss = SF.binary_boundary_loss(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    phi = sl.signed_distance_map(target, spatial_dims=2).double()
    p = torch.sigmoid(logits.detach())
    torch.testing.assert_close(grad, phi * p * (1 - p) / logits.numel())


def test_binary_and_two_class_forms_agree():
    """Two-class softmax with logits (0, z) is sigmoid(z): the binary forms equal the softmax forms."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 1, 9, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 9, 8), generator=g)
    two = torch.cat([torch.zeros_like(z), z], 1)
    for binary, softmax in [
        (SF.binary_boundary_loss, SF.boundary_loss),
        (SF.binary_hausdorff_dt_loss, SF.hausdorff_dt_loss),
    ]:
        torch.testing.assert_close(binary(z, labels[:, None]), softmax(two, labels))
    options = {"reduction": "none"}
    torch.testing.assert_close(
        SF.binary_boundary_iou_loss(z, labels[:, None], **options)[:, 0],
        SF.boundary_iou_loss(two, labels, **options)[:, 1],
    )
    torch.testing.assert_close(
        SF.binary_active_contour_loss(z, labels[:, None], **options)[:, 0],
        SF.active_contour_loss(two, labels, **options)[:, 1],
    )


def test_hausdorff_dt_hand_value():
    """G = [0 1 1 0]: d_G = EDT(G) + EDT(¬G) = [1 1 1 1]; P = {p > 0.5} = [0 1 0 0]: d_P = [1 1 1 2]."""
    p = [0.2, 0.7, 0.4, 0.1]
    loss = SF.hausdorff_dt_loss(two_class_logits(p), torch.tensor([[0, 1, 1, 0]]))
    expected = (0.2**2 * 2 + 0.3**2 * 2 + 0.6**2 * 2 + 0.1**2 * (1 + 4)) / 4
    assert loss.item() == pytest.approx(expected)
    cubed = SF.hausdorff_dt_loss(two_class_logits(p), torch.tensor([[0, 1, 1, 0]]), alpha=3.0)
    assert cubed.item() == pytest.approx((0.2**2 * 2 + 0.3**2 * 2 + 0.6**2 * 2 + 0.1**2 * (1 + 8)) / 4)


def test_hausdorff_dt_empty_and_full_masks_have_no_distance():
    """A class absent from target and prediction, or filling both, contributes (p - y)² · 0 = 0."""
    target = torch.ones(1, 5, 5, dtype=torch.long)
    logits = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    logits[:, 1] += 10  # prediction fills the image too
    assert SF.hausdorff_dt_loss(logits, target).item() == 0.0


@pytest.mark.parametrize("shape", [(2, 24, 20), (1, 9, 10, 8)])
def test_boundary_iou_loss_at_saturated_logits_is_one_minus_the_metric(shape):
    """In float32 ±100 logits give probabilities exactly 0 and 1 (in float64 an absent class keeps a band
    of 1e-87 and, with s = 0, the loss 1 of a predicted-but-absent class)."""
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, shape, generator=g)
    target = torch.nn.functional.max_pool2d(target.float().flatten(0, -3)[:, None], 3, 1, 1)[:, 0]
    target = target.reshape(shape).long()  # blobs rather than noise
    prediction = torch.roll(target, 1, dims=-1)
    prediction[..., :2] = IGNORE
    target[..., -2:, :] = IGNORE
    prediction = prediction.clamp(max=2)
    logits = (torch.nn.functional.one_hot(prediction, 3).movedim(-1, 1).float() * 2 - 1) * 100
    options = {"ignore_index": IGNORE, "dilation_ratio": 0.05}
    loss = SF.boundary_iou_loss(logits, target, reduction="none", **options)
    metric = boundary_iou(prediction, target, num_classes=3, **options)
    assert (metric < 1).any()
    torch.testing.assert_close(loss, 1 - metric)


def test_boundary_iou_loss_hand_value():
    """1-D, d = 1: y = [0 1 1 1 1 0] has band [0 1 0 0 1 0]; p = [0 .5 .5 .5 .5 0] has band p itself but
    ... minus minpool: [0 .5 0 0 .5 0]; I = 1 · .5 · 2 = 1, U = 1 + 2 - 1 = 2 for class 1."""
    p = torch.tensor([1e-12, 0.5, 0.5, 0.5, 0.5, 1e-12], dtype=torch.float64)
    loss = SF.boundary_iou_loss(
        two_class_logits(p), torch.tensor([[0, 1, 1, 1, 1, 0]]), include_background=False, dilation_ratio=0.0
    )
    assert loss.item() == pytest.approx(1 - 1 / 2)


def test_active_contour_hand_value_2d():
    """2×2 image, one difference tuple: length = sqrt((p10 - p00)² + (p01 - p00)² + ε); region over 4."""
    p = torch.tensor([[0.2, 0.6], [0.7, 0.9]], dtype=torch.float64)
    y = torch.tensor([[0, 1], [1, 1]])
    loss = SF.active_contour_loss(two_class_logits(p), y[None], include_background=False, lam=2.0)
    length = math.sqrt(0.5**2 + 0.4**2 + 1e-8)
    region = (0.2 + 0.4 + 0.3 + 0.1) / 4  # p (1 - y)² + (1 - p) y²
    assert loss.item() == pytest.approx(length + 2 * region)
    plain = SF.active_contour_loss(two_class_logits(p), y[None], include_background=False, normalize=False)
    assert plain.item() == pytest.approx(length + 4 * region)


def test_active_contour_3d_and_dropped_differences():
    """2×2×2: one tuple with three differences; an ignored pixel drops it and leaves 7 region pixels."""
    p = torch.rand(2, 2, 2, dtype=torch.float64) * 0.8 + 0.1
    y = (torch.rand(2, 2, 2) < 0.5).long()
    loss = SF.active_contour_loss(two_class_logits(p), y[None], include_background=False)
    d = (p[1, 0, 0] - p[0, 0, 0]) ** 2 + (p[0, 1, 0] - p[0, 0, 0]) ** 2 + (p[0, 0, 1] - p[0, 0, 0]) ** 2
    region = (p * (1 - y) ** 2 + (1 - p) * y**2).mean()
    assert loss.item() == pytest.approx(math.sqrt(d + 1e-8) + region.item())
    y[1, 0, 0] = IGNORE
    options = {"include_background": False, "ignore_index": IGNORE}
    ignored = SF.active_contour_loss(two_class_logits(p), y[None], **options)
    region = (p * (1 - y) ** 2 + (1 - p) * y**2)[y != IGNORE].mean()
    assert ignored.item() == pytest.approx(region.item())  # the only tuple touches the ignored pixel


def test_active_contour_does_not_grow_with_the_image():
    """normalize: a tiled prediction gives about the same loss (up to the grid's edge)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 2, 16, 16, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (1, 16, 16), generator=g)
    small = SF.active_contour_loss(logits, target)
    large = SF.active_contour_loss(logits.repeat(1, 1, 4, 4), target.repeat(1, 4, 4))
    assert abs(large.item() - small.item()) < 0.1 * small.item()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda z, y: SF.boundary_loss(z, y, torch.zeros(2, 3, 4)), "dist_maps"),
        (lambda z, y: SF.boundary_loss(z, y, spacing=(1.0, 2.0, 3.0)), "spacing of 2 values"),
        (lambda z, y: SF.boundary_loss(z, y, spacing=(1.0, -2.0)), "spacing"),
        (lambda z, y: SF.hausdorff_dt_loss(z, y, alpha=0.0), "alpha"),
        (lambda z, y: SF.boundary_iou_loss(z, y, dilation_ratio=-0.1), "dilation_ratio"),
        (lambda z, y: SF.active_contour_loss(z, y, lam=-1.0), "lam"),
        (lambda z, y: SF.active_contour_loss(z, y, normalize=1), "normalize"),
        (lambda z, y: sl.target_distance_maps(y.float(), 3), "integer index target"),
        (lambda z, y: sl.target_distance_maps(y, 0), "num_classes"),
    ],
)
def test_errors(call, message):
    logits, target = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    with pytest.raises(sl.SegLossError, match=message):
        call(logits, target)
