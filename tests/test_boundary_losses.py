"""Boundary-aware losses (SPEC section 4): hand-derived values, identities and the metric they mirror."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import IGNORE, check_soft_mask_is_ignore_index, check_weighted_module_function_and_compound

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


# --- weight_map and mask (issue 19, item 9) ----------------------------------------------------------


def binary_logits(p) -> torch.Tensor:
    """Binary logits (1, 1, *S) whose sigmoid is ``p`` (*S)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))[None, None].requires_grad_()


def test_boundary_loss_weighted_hand_value():
    """Target [0 1 1 1 0], φ_1 = [1, 0, -1, 0, 1], ω = [1, 2, 3, 1, 1]: the maps do not see ω, so
    Σ ω φ p / Σ ω = (0.2 - 3·0.9 + 0.1) / 8; ``none`` is ω φ p per pixel."""
    p, w = [0.2, 0.6, 0.9, 0.5, 0.1], torch.tensor([[1.0, 2, 3, 1, 1]], dtype=torch.float64)
    target = torch.tensor([[0, 1, 1, 1, 0]])
    loss = SF.boundary_loss(two_class_logits(p), target, None, w)
    assert loss.item() == pytest.approx((0.2 - 3 * 0.9 + 0.1) / 8)
    none = SF.boundary_loss(two_class_logits(p), target, None, w, reduction="none")
    torch.testing.assert_close(none, torch.tensor([[0.2, 0, -3 * 0.9, 0, 0.1]], dtype=torch.float64))


def test_hausdorff_dt_weighted_hand_value():
    """Binary y = [0 0 1 1], p = [.2 .6 .7 .9] (P = [0 1 1 1]), α = 1: d_G = EDT(G) + EDT(¬G) = [2 1 1 2],
    d_P = [1 1 2 3]; terms (p - y)² (d_G + d_P) = [.04·3, .36·2, .09·3, .01·5]; ω = [1 2 0 1]:
    (.12 + 2·.72 + 0 + .05) / 4. The log form: log(1 + that); its ``none`` is ω log(1 + t)."""
    p, y = [0.2, 0.6, 0.7, 0.9], torch.tensor([[[0, 0, 1, 1]]])
    w = torch.tensor([[1.0, 2, 0, 1]], dtype=torch.float64)
    loss = SF.binary_hausdorff_dt_loss(binary_logits(p), y, w, alpha=1.0)
    assert loss.item() == pytest.approx((0.12 + 2 * 0.72 + 0.05) / 4)
    log_loss = SF.binary_log_hausdorff_dt_loss(binary_logits(p), y, w, alpha=1.0)
    assert log_loss.item() == pytest.approx(math.log1p((0.12 + 2 * 0.72 + 0.05) / 4))
    none = SF.binary_log_hausdorff_dt_loss(binary_logits(p), y, w, alpha=1.0, reduction="none")
    expected = [math.log1p(0.12), 2 * math.log1p(0.72), 0.0, math.log1p(0.05)]
    torch.testing.assert_close(none, torch.tensor([[expected]], dtype=torch.float64))


def test_boundary_iou_weighted_hand_value():
    """dilation_ratio 0 (d = 1, windows of 3, zero padding): y = [0 1 1 1 0] -> B(y) = [0 1 0 1 0];
    p = [.2 .6 .9 .5 .1] -> B(p) = p - minpool(p) = [.2 .4 .4 .4 .1]; ω = [1 2 1 3 1]:
    I = 2·.4 + 3·.4 = 2, Σ ω B(p) = 2.7, Σ ω B(y) = 5, U = 2.7 + 5 - 2: loss 1 - 2 / 5.7."""
    p, y = [0.2, 0.6, 0.9, 0.5, 0.1], torch.tensor([[[0, 1, 1, 1, 0]]])
    w = torch.tensor([[1.0, 2, 1, 3, 1]], dtype=torch.float64)
    loss = SF.binary_boundary_iou_loss(binary_logits(p), y, None, w, dilation_ratio=0.0)
    assert loss.item() == pytest.approx(1 - 2 / 5.7)
    bands = sl.target_boundary_bands(y, dilation_ratio=0.0)  # precomputed bands: the same sums
    given = SF.binary_boundary_iou_loss(binary_logits(p), y, bands, w, dilation_ratio=0.0)
    assert given.item() == pytest.approx(1 - 2 / 5.7)


def test_active_contour_weighted_hand_value():
    """p = [.2 .6 .9], y = [0 1 1], ω = [2 1 3]: the length terms sit at grid points 0 and 1 (the pixel
    each forward difference starts from): (2·.4 + 1·.3) / (2 + 1); region Σ ω (p (1-y)² + (1-p) y²) =
    (2·.2 + .4 + 3·.1) / 6. Loss 1.1/3 + 1.1/6 (ε = 1e-8 under the square roots)."""
    p, y = [0.2, 0.6, 0.9], torch.tensor([[[0, 1, 1]]])
    w = torch.tensor([[2.0, 1, 3]], dtype=torch.float64)
    loss = SF.binary_active_contour_loss(binary_logits(p), y, w)
    assert loss.item() == pytest.approx(1.1 / 3 + 1.1 / 6, rel=1e-7)
    plain = SF.binary_active_contour_loss(binary_logits(p), y, w, normalize=False)
    assert plain.item() == pytest.approx(1.1 + 1.1, rel=1e-7)


PIXEL_LOSSES = ["boundary", "binary_boundary", "hausdorff_dt", "binary_hausdorff_dt"]
BOUNDARY_LOSSES = PIXEL_LOSSES + [
    "boundary_iou", "binary_boundary_iou", "active_contour", "binary_active_contour",
]  # fmt: skip


def weighted_inputs(name: str, shape=(2, 3, 6, 7)):
    """Logits, an index (softmax) or 0/1 (binary) target, a weight map and a mask for ``name``."""
    g = torch.Generator().manual_seed(11)
    n, c, *spatial = shape
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    if name.startswith("binary_"):
        target = torch.randint(0, 2, shape, generator=g)
    else:
        target = torch.randint(0, c, (n, *spatial), generator=g)
    weights = torch.rand((n, *spatial), generator=g, dtype=torch.float64) * 3
    mask = torch.rand((n, *spatial), generator=g) > 0.3
    return logits, target, weights, mask


@pytest.mark.parametrize("name", PIXEL_LOSSES)
def test_weights_multiply_the_terms_not_the_maps(name):
    """Pixel losses: the distance maps come from the unweighted target, so the weighted mean is
    Σ ω t / Σ ω of the unweighted per-pixel terms t (``none``), and ``none`` with ω is ω t."""
    logits, target, weights, _ = weighted_inputs(name)
    loss = sl.create_loss(name)
    terms = type(loss)(reduction="none")(logits, target)
    omega = weights.unsqueeze(1).expand_as(terms) if name.startswith("binary_") else weights
    torch.testing.assert_close(loss(logits, target, weight_map=weights), (omega * terms).sum() / omega.sum())
    torch.testing.assert_close(
        type(loss)(reduction="none")(logits, target, weight_map=weights), omega * terms
    )


def test_weight_zero_is_not_a_mask_for_the_distances():
    """ω = 0 drops a pixel's term but the pixel still shapes the distance maps (a mask removes it from
    the target first): the two differ, and ω = 0 equals the masked loss only where no map changes."""
    logits, target, _, mask = weighted_inputs("hausdorff_dt")
    zero_where_masked = mask.double()
    weighted = SF.hausdorff_dt_loss(logits, target, zero_where_masked)
    masked = SF.hausdorff_dt_loss(logits, target, mask=mask)
    assert not torch.allclose(weighted, masked)


@pytest.mark.parametrize("name", BOUNDARY_LOSSES)
def test_mask_on_a_soft_target_is_ignore_index(name):
    """A one-hot (binary: float) target with a mask is ignore_index at the masked pixels (helpers)."""
    check_soft_mask_is_ignore_index(name, *weighted_inputs(name))


@pytest.mark.parametrize("name", BOUNDARY_LOSSES)
def test_weighted_module_function_and_compound_agree(name):
    check_weighted_module_function_and_compound(name, *weighted_inputs(name))


def test_precomputed_maps_of_the_masked_target():
    """The documented recipe: maps and bands computed from the target with the mask folded in (as
    ignore_index) give the on-the-fly loss with that mask."""
    logits, target, weights, mask = weighted_inputs("boundary")
    folded = target.masked_fill(~mask, IGNORE)
    maps = sl.target_distance_maps(folded, 3, ignore_index=IGNORE)
    torch.testing.assert_close(
        SF.boundary_loss(logits, target, maps, weights, mask),
        SF.boundary_loss(logits, target, None, weights, mask),
    )
    bands = sl.target_boundary_bands(folded, 3, ignore_index=IGNORE)
    torch.testing.assert_close(
        SF.boundary_iou_loss(logits, target, bands, weights, mask),
        SF.boundary_iou_loss(logits, target, None, weights, mask),
    )
