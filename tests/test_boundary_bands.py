"""The boundary bands' erosion (a separable running minimum with a closed-form backward) and the
boundary-IoU loss with the target's bands precomputed (issue 20, item 7)."""

import pytest
import torch
import torch.nn.functional as F

import seglosses as sl
from seglosses.ops.bands import _RunningMin, erode, running_min

CASES = [((2, 3, 17), 3), ((2, 3, 20, 31), 7), ((1, 2, 9, 10, 11), 2), ((1, 1, 5, 5), 9), ((2, 3, 4, 4), 1)]


def max_pool_erosion(values, width):
    """The erosion as a (2d + 1)^k max-pool of the negated values, outside the image 0."""
    rank = values.ndim - 2
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
    return -pool(F.pad(-values, [width, width] * rank, value=0.0), kernel_size=2 * width + 1, stride=1)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize(("shape", "width"), CASES)
def test_erosion_equals_the_max_pool(backend, shape, width):
    values = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    values.requires_grad_()
    with sl.backend(backend):
        ours = erode(values, width)
    expected = max_pool_erosion(values, width)
    assert torch.equal(ours, expected)  # a minimum is exact
    grad = torch.randn_like(ours)
    torch.testing.assert_close(
        torch.autograd.grad(ours, values, grad)[0], torch.autograd.grad(expected, values, grad)[0]
    )


def test_running_min_by_hand():
    values = torch.tensor([[[5.0, 3.0, 4.0, 1.0, 2.0, 6.0, 0.5]]])
    assert running_min(values, 2, 3).tolist() == [[[3.0, 1.0, 1.0, 1.0, 0.5]]]
    assert running_min(values, 2, 1).tolist() == values.tolist()
    assert running_min(values, 2, 7).tolist() == [[[0.5]]]


@pytest.mark.parametrize(
    ("shape", "width"), [((1, 2, 9), 3), ((1, 1, 6, 7), 2), ((1, 1, 3, 4, 5), 1), ((1, 1, 3), 4)]
)
def test_closed_form_backward_gradchecks(shape, width):
    values = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    values.requires_grad_()
    for axis in range(2, values.ndim):
        length = min(2 * width + 1, values.shape[axis])

        def step(v, axis=axis, length=length):
            return _RunningMin.apply(v, axis, length)

        assert torch.autograd.gradcheck(step, (values,))
        assert torch.autograd.gradgradcheck(step, (values,))


def test_closed_form_backward_keeps_the_incoming_gradient():
    """The backward must not write into the gradient it is given (autograd may share it)."""
    values = torch.rand(1, 1, 12, dtype=torch.float64, requires_grad=True)
    grad = torch.ones(1, 1, 6, dtype=torch.float64)
    out = _RunningMin.apply(values, 2, 7)
    out.backward(grad)
    assert torch.equal(grad, torch.ones_like(grad))


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 20, 24, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 20, 24), generator=g)
    labels[:, :3] = 255
    return logits, labels


def test_precomputed_bands_give_the_on_the_fly_loss():
    logits, labels = inputs()
    options = {"dilation_ratio": 0.05, "ignore_index": 255}
    bands = sl.target_boundary_bands(labels, 3, **options)
    on_the_fly = sl.boundary_iou_loss(logits, labels, reduction="none", **options)
    torch.testing.assert_close(
        sl.boundary_iou_loss(logits, labels, bands, reduction="none", **options), on_the_fly
    )
    transform = sl.BoundaryBandTransform(3, **options)
    assert torch.equal(torch.stack([transform(sample) for sample in labels]), bands)
    module = sl.BoundaryIoULoss(**options)
    torch.testing.assert_close(module(logits, labels, bands), module(logits, labels))
    grads = [torch.autograd.grad(module(logits, labels, b), logits)[0] for b in (bands, None)]
    torch.testing.assert_close(grads[0], grads[1])


def test_precomputed_bands_of_dense_and_binary_targets():
    logits, labels = inputs(1)
    soft = torch.softmax(torch.randn(2, 3, 20, 24, dtype=torch.float64), 1)
    bands = sl.target_boundary_bands(soft, dilation_ratio=0.03)
    assert bands.dtype == torch.float64
    torch.testing.assert_close(
        sl.boundary_iou_loss(logits, soft, bands, dilation_ratio=0.03),
        sl.boundary_iou_loss(logits, soft, dilation_ratio=0.03),
    )
    binary = (torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(2)) > 0.5).long()
    binary[:, :, :2] = 255
    bands = sl.target_boundary_bands(binary, ignore_index=255)
    torch.testing.assert_close(
        sl.binary_boundary_iou_loss(logits, binary, bands, ignore_index=255),
        sl.binary_boundary_iou_loss(logits, binary, ignore_index=255),
    )


def test_bands_by_hand():
    """A 1-D row 0 1 1 1 0 with d = 1: the erosion keeps the middle pixel, so the band is 0 1 0 1 0."""
    bands = sl.target_boundary_bands(torch.tensor([[0, 1, 1, 1, 0]]), 2, dilation_ratio=0.0)
    assert bands[0, 1].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert bands[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_compound_passes_the_bands():
    logits, labels = inputs(3)
    bands = sl.target_boundary_bands(labels, 3, ignore_index=255)
    criterion = sl.create_loss("dice + 0.5*boundary_iou", ignore_index=255)
    torch.testing.assert_close(criterion(logits, labels, bands=bands), criterion(logits, labels))


def test_bad_bands_are_refused():
    logits, labels = inputs()
    with pytest.raises(sl.SegLossError, match="bands of the logits' shape"):
        sl.boundary_iou_loss(logits, labels, torch.zeros(2, 3, 20, 23), ignore_index=255)
    with pytest.raises(sl.SegLossError, match="bands as a floating-point tensor"):
        sl.boundary_iou_loss(logits, labels, torch.zeros(2, 3, 20, 24, dtype=torch.long), ignore_index=255)
    nan = torch.zeros(2, 3, 20, 24)
    nan[0, 0, 0, 0] = torch.nan
    with pytest.raises(sl.SegLossError, match="finite bands"):
        sl.boundary_iou_loss(logits, labels, nan, ignore_index=255)
    with pytest.raises(sl.SegLossError, match="integer index target"):
        sl.target_boundary_bands(torch.zeros(2, 4, 4), 3)
    with pytest.raises(sl.SegLossError, match="dense target"):
        sl.target_boundary_bands(torch.zeros(2, 4, dtype=torch.long))
