"""Lovász-Softmax and Lovász hinge: hand-derived values, the Jaccard identity at hard predictions, options,
the sort primitive, backends, and equality with segmentation_models_pytorch where it is installed."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, smp_losses

import seglosses as sl
from seglosses.ops.sort import descending_order

SMP = smp_losses()
needs_smp = pytest.mark.skipif(SMP is None, reason="segmentation_models_pytorch is not installed")


def test_binary_hinge_by_hand():
    """z = (2, -1, 0.5), y = (1, 0, 0): margins 1 - z(2y - 1) = (-1, 0, 1.5); sorted (1.5, 0, -1) with
    g = (0, 0, 1), G = 1: J_k = k / (G + k - a_k) = (1/2, 2/3, 1), steps (1/2, 1/6, 1/3);
    loss = 1.5 · 1/2 = 0.75 (relu removes the rest). The gradient is -steps · (2y - 1) on the positive
    margins only: -1/2 · (-1) = 1/2 at z_3."""
    z = torch.tensor([[[2.0, -1.0, 0.5]]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[[1, 0, 0]]])
    loss = sl.binary_lovasz_loss(z, y)
    torch.testing.assert_close(loss, torch.tensor(0.75, dtype=torch.float64))
    loss.backward()
    torch.testing.assert_close(z.grad, torch.tensor([[[0.0, 0.0, 0.5]]], dtype=torch.float64))


def test_softmax_by_hand():
    """Two classes, pixels with p_1 = (0.9, 0.6, 0.2), y = (1, 0, 1). Class 1: errors (0.1, 0.6, 0.8),
    sorted (0.8 g=1, 0.6 g=0, 0.1 g=1), G = 2: J = (1/2, 2/3, 3/3) -> steps (1/2, 1/6, 1/3);
    loss_1 = 0.4 + 0.1 + 0.1/3. Class 0 has the same errors with g = 1 - y: sorted (0.8 g=0, 0.6 g=1,
    0.1 g=0), G = 1: J = (1/2, 2/2, 3/3) -> steps (1/2, 1/2, 0); loss_0 = 0.4 + 0.3. Both classes are
    present: the mean of the two."""
    p1 = torch.tensor([0.9, 0.6, 0.2], dtype=torch.float64)
    logits = torch.stack([torch.zeros(3, dtype=torch.float64), torch.log(p1 / (1 - p1))]).unsqueeze(0)
    y = torch.tensor([[1, 0, 1]])
    per_class = sl.lovasz_loss(logits, y, reduction="none")
    expected = torch.tensor([0.7, 0.4 + 0.1 + 0.1 / 3], dtype=torch.float64)
    torch.testing.assert_close(per_class, expected)
    torch.testing.assert_close(sl.lovasz_loss(logits, y), expected.mean())


@pytest.mark.parametrize("per_image", [False, True])
def test_equals_the_jaccard_loss_at_hard_predictions(per_image):
    """The Lovász extension agrees with the set function at binary errors: with saturated logits every
    class's loss is 1 - IoU of the predicted and true masks (0 for a class in neither)."""
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (3, 7, 9), generator=g)
    predicted = torch.randint(0, 4, (3, 7, 9), generator=g)
    logits = F.one_hot(predicted, 4).movedim(-1, 1).double() * 200
    per_class = sl.lovasz_loss(logits, target, classes="all", per_image=per_image, reduction="none")
    masks_t, masks_p = (F.one_hot(labels, 4).movedim(-1, 1) for labels in (target, predicted))  # (N, C, H, W)
    dims = (2, 3) if per_image else (0, 2, 3)
    inter = (masks_t & masks_p).sum(dims).double()
    union = (masks_t | masks_p).sum(dims).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), 1.0)
    torch.testing.assert_close(per_class, 1 - iou)


def test_perfect_prediction_gives_zero_and_soft_equals_one_hot():
    target = torch.randint(0, 3, (2, 6, 6), generator=torch.Generator().manual_seed(0))
    one_hot = F.one_hot(target, 3).movedim(-1, 1).double()
    assert sl.lovasz_loss(one_hot * 100, target).item() == pytest.approx(0.0, abs=1e-12)
    logits = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(sl.lovasz_loss(logits, target), sl.lovasz_loss(logits, one_hot))


def test_class_selection_and_per_image_mean():
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # class 1 in image 0 only; class 2 nowhere
    per_class = sl.lovasz_loss(logits, target, classes="all", reduction="none")
    present = sl.lovasz_loss(logits, target)
    torch.testing.assert_close(present, per_class[:2].mean())
    torch.testing.assert_close(sl.lovasz_loss(logits, target, classes="all"), per_class.mean())
    torch.testing.assert_close(sl.lovasz_loss(logits, target, classes=[2]), per_class[2])
    per_image = sl.lovasz_loss(logits, target, per_image=True, classes="all", reduction="none")
    image_means = torch.stack([per_image[0, :2].mean(), per_image[1, :1].mean()])
    torch.testing.assert_close(sl.lovasz_loss(logits, target, per_image=True), image_means.mean())
    torch.testing.assert_close(
        sl.lovasz_loss(logits, target, reduction="none"), torch.cat([per_class[:2], torch.zeros(1)]).double()
    )


def test_ignored_pixels_count_nowhere():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    target[:, 0] = IGNORE
    loss = sl.lovasz_loss(logits, target, ignore_index=IGNORE)
    kept = sl.lovasz_loss(logits[:, :, 1:], target[:, 1:])
    torch.testing.assert_close(loss, kept)
    loss.backward()
    assert not logits.grad[:, :, 0].any()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"classes": "some"}, "classes"),
        ({"classes": []}, "non-empty"),
        ({"classes": [0, 0]}, "without repeats"),
        ({"classes": [-1]}, "class indices >= 0"),
        ({"per_image": 1}, "per_image"),
    ],
)
def test_invalid_options_raise(options, message):
    with pytest.raises(sl.SegLossError, match=message):
        sl.LovaszLoss(**options)


def test_a_class_beyond_c_raises_at_the_call():
    with pytest.raises(sl.SegLossError, match="classes below C = 3"):
        sl.lovasz_loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), classes=[3])


@pytest.mark.parametrize(
    "keys",
    [
        torch.randn(4, 1000),
        torch.randint(0, 4, (3, 600)).float(),  # many ties: index order
        torch.tensor([[0.0, -0.0, 1.0, -1.0, -math.inf, 1.0, 0.5, -2.5, math.inf, -0.0]]),
        torch.randn(2, 3, 257),
    ],
    ids=["random", "ties", "signed-zeros-infinities", "3-d"],
)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_descending_order_is_a_stable_descending_argsort(keys, backend):
    with sl.backend(backend):
        order = descending_order(keys)
    assert torch.equal(order, keys.argsort(dim=-1, descending=True, stable=True))
    nonnegative = keys.abs().masked_fill(keys == -math.inf, -math.inf)
    with sl.backend(backend):
        assert torch.equal(
            descending_order(nonnegative, nonnegative=True),
            nonnegative.argsort(dim=-1, descending=True, stable=True),
        )


@pytest.mark.parametrize("name", ["lovasz", "binary_lovasz"])
def test_cpu_and_reference_backends_agree_exactly_with_ties(name):
    """Integer logits make many equal errors: both backends break the ties alike (index order), so the
    values and the gradients are the same."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randint(-2, 3, (2, 3, 16, 16), generator=g).float()
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    if name == "binary_lovasz":
        target = torch.randint(0, 2, logits.shape, generator=g)
    results = []
    for backend in ("cpu", "reference"):
        x = logits.clone().requires_grad_()
        with sl.backend(backend):
            loss = sl.create_loss(name)(x, target)
        loss.backward()
        results.append((loss.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@needs_smp
@pytest.mark.parametrize("shape", [(2, 4, 9, 7), (2, 3, 5, 4, 3)], ids=["2d", "3d"])
@pytest.mark.parametrize("per_image", [False, True])
def test_softmax_equals_smp(shape, per_image):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(shape, generator=g, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    target[0, 0] = IGNORE
    target[1][target[1] == 1] = 2  # class 1 absent from image 1
    ours = sl.lovasz_loss(logits, target, per_image=per_image, ignore_index=IGNORE)
    theirs = SMP.LovaszLoss("multiclass", per_image=per_image, ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(ours, theirs)
    grads = [torch.autograd.grad(value, logits)[0] for value in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1])


@needs_smp
@pytest.mark.parametrize("per_image", [False, True])
def test_binary_equals_smp_with_one_channel(per_image):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 1, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 2, logits.shape, generator=g)
    ours = sl.binary_lovasz_loss(logits, target, per_image=per_image)
    theirs = SMP.LovaszLoss("binary", per_image=per_image)(logits, target)
    torch.testing.assert_close(ours, theirs)
    grads = [torch.autograd.grad(value, logits)[0] for value in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1])


def test_float32_weights_keep_their_digits_on_a_megapixel_row():
    """J_k - J_{k-1} written without a difference of nearly equal numbers: float32 weights within 1e-6 of
    float64 on 2^20 pixels (the difference form lost most digits there)."""
    g = torch.Generator().manual_seed(6)
    keys = torch.rand(1, 2**20, generator=g)
    truth = torch.rand(1, 2**20, generator=g) < 0.3
    from seglosses.losses.lovasz import lovasz_weights

    single = lovasz_weights(keys, truth, 2**20).double()
    double = lovasz_weights(keys.double(), truth, 2**20)
    assert bool(((single - double).abs() <= 1e-6 * double.abs()).all())


def test_the_threaded_packed_sort_and_a_forked_child():
    """Rows of 2^16 or more are sorted over threads. A forked child (a DataLoader worker) inherits the
    parent's pool object but not its threads: it must get a pool of its own, or its first sort waits
    forever."""
    import multiprocessing

    from seglosses.ops.sort import _pool

    keys = torch.rand(4, 2**17)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with sl.backend("cpu"):
            assert torch.equal(descending_order(keys), keys.argsort(dim=-1, descending=True, stable=True))
    finally:
        torch.set_num_threads(threads)
    assert _pool.cache_info().currsize == 1  # the parent's pool exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_pool_works_in_child).get(timeout=60)


def _pool_works_in_child() -> bool:
    from seglosses.ops.sort import _pool

    return _pool(2).submit(lambda: True).result(timeout=20)
