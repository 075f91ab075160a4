"""Lovász-Softmax and Lovász hinge: hand-derived values, the Jaccard identity at hard predictions, options,
the sort primitive, backends, and equality with segmentation_models_pytorch where it is installed."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, smp_losses

import seglosses as sl
from seglosses.ops import sort

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
    descending_order = sort.descending_order
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
            expected = keys.argsort(dim=-1, descending=True, stable=True)
            assert torch.equal(sort.descending_order(keys), expected)
    finally:
        torch.set_num_threads(threads)
    assert _pool.cache_info().currsize == 1  # the parent's pool exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_pool_works_in_child).get(timeout=60)


def _pool_works_in_child() -> bool:
    from seglosses.ops.sort import _pool

    return _pool(2).submit(lambda: True).result(timeout=20)


# --------------------------------------------------------------------------- weight maps and masks


def test_binary_hinge_weighted_by_hand():
    """z = (2, -1, 0.5), y = (1, 0, 0), ω = (1, 1, 2): margins (-1, 0, 1.5), sorted (1.5 ω=2 y=0, 0 ω=1
    y=0, -1 ω=1 y=1), G = Σ ω y = 1. J_1 = 1 - (G - 0) / (G + 2) = 2/3; relu leaves the first hinge
    only: loss = 1.5 · 2/3 = 1, as the pixel repeated twice gives (1.5 · 1/2 + 1.5 · (2/3 - 1/2)). The
    gradient at z_3 is -(2y - 1) · 2/3 = 2/3."""
    z = torch.tensor([[[2.0, -1.0, 0.5]]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[[1, 0, 0]]])
    w = torch.tensor([[1.0, 1.0, 2.0]], dtype=torch.float64)
    loss = sl.binary_lovasz_loss(z, y, w)
    torch.testing.assert_close(loss, torch.tensor(1.5 * 2 / 3, dtype=torch.float64))
    loss.backward()
    torch.testing.assert_close(z.grad, torch.tensor([[[0.0, 0.0, 2 / 3]]], dtype=torch.float64))


def test_softmax_weighted_by_hand():
    """p_1 = (0.9, 0.6, 0.2), y = (1, 0, 1), ω = (2, 1, 0.5); both classes have the errors (0.1, 0.6, 0.8),
    sorted (0.8, 0.6, 0.1) with ω (0.5, 1, 2). Class 1: g = (1, 0, 1), G = 2.5; J_k = 1 - I_k / U_k with
    I = (2, 2, 0), U = (2.5, 3.5, 3.5): J = (1/5, 3/7, 1), steps (1/5, 3/7 - 1/5, 4/7). Class 0: g = (0, 1,
    0), G = 1; I = (1, 0, 0), U = (1.5, 1.5, 3.5): J = (1/3, 1, 1), steps (1/3, 2/3, 0)."""
    p1 = torch.tensor([0.9, 0.6, 0.2], dtype=torch.float64)
    logits = torch.stack([torch.zeros(3, dtype=torch.float64), torch.log(p1 / (1 - p1))]).unsqueeze(0)
    y = torch.tensor([[1, 0, 1]])
    w = torch.tensor([[2.0, 1.0, 0.5]], dtype=torch.float64)
    expected = torch.tensor(
        [0.8 / 3 + 0.6 * 2 / 3, 0.8 / 5 + 0.6 * (3 / 7 - 1 / 5) + 0.1 * 4 / 7], dtype=torch.float64
    )
    torch.testing.assert_close(sl.lovasz_loss(logits, y, w, reduction="none"), expected)
    torch.testing.assert_close(sl.lovasz_loss(logits, y, weight_map=w), expected.mean())


def _repeated(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, ..., L)``'s pixels as one image ``(1, ..., 1, Σ counts)``, pixel i ``counts[i]`` times
    (the images laid side by side; ``counts`` ``(N, L)``)."""
    flat = x.movedim(0, -2).flatten(-2)  # (..., N·L)
    return flat.repeat_interleave(counts.flatten(), dim=-1).unsqueeze(0).unsqueeze(-2)


@pytest.mark.parametrize("name", ["lovasz", "binary_lovasz"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_an_integer_weight_is_the_pixel_repeated(name, reduction):
    """ω ∈ {0, 1, 2, 3}: the loss and the logits' gradient are those of the batch with every pixel
    repeated ω times (ω = 0: removed, a class left without pixels is not "present"), in float64."""
    g = torch.Generator().manual_seed(11)
    n, c, length = 2, 3, 40
    logits = torch.randn(n, c, 1, length, generator=g, dtype=torch.float64, requires_grad=True)
    if name == "lovasz":
        target = torch.randint(0, c, (n, 1, length), generator=g)
        target[target == 2] = 1  # class 2 absent ...
        target[0, 0, 0] = 2  # ... but for one pixel, removed below
    else:
        target = torch.randint(0, 2, (n, c, 1, length), generator=g)
    counts = torch.randint(0, 4, (n, length), generator=g)
    counts[0, 0] = 0
    loss = (sl.LovaszLoss if name == "lovasz" else sl.BinaryLovaszLoss)(reduction=reduction)
    weighted = loss(logits, target, counts.view(n, 1, length).double())
    long_target = _repeated(target if name == "binary_lovasz" else target.unsqueeze(1), counts)
    repeated = loss(_repeated(logits, counts), long_target if name == "binary_lovasz" else long_target[:, 0])
    torch.testing.assert_close(weighted, repeated, rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(v.sum(), logits)[0] for v in (weighted, repeated)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_image", [False, True])
def test_mask_on_a_soft_target_counts_nowhere(per_image):
    """A soft target's masked pixels (a row of each image) are as if cut out: value and gradient, and a
    NaN logit there reaches neither."""
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    soft = torch.softmax(torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64), 1)
    mask = torch.ones(2, 5, 6, dtype=torch.bool)
    mask[:, 1] = False
    poisoned = logits.clone()
    poisoned[:, :, 1] = torch.nan
    kept = torch.cat([logits[:, :, :1], logits[:, :, 2:]], 2).requires_grad_()
    poisoned.requires_grad_()
    for name in ("lovasz", "binary_lovasz"):
        target = soft if name == "lovasz" else soft.clamp(0, 1)
        loss = (sl.LovaszLoss if name == "lovasz" else sl.BinaryLovaszLoss)(per_image=per_image)
        masked = loss(poisoned, target, mask=mask)
        expected = loss(kept, torch.cat([target[:, :, :1], target[:, :, 2:]], 2))
        torch.testing.assert_close(masked, expected)
        (grad,) = torch.autograd.grad(masked, poisoned)
        (expected_grad,) = torch.autograd.grad(expected, kept)
        assert not grad[:, :, 1].any()
        torch.testing.assert_close(torch.cat([grad[:, :, :1], grad[:, :, 2:]], 2), expected_grad)


@pytest.mark.parametrize("name", ["lovasz", "binary_lovasz"])
def test_weighted_module_function_and_compound_agree(name):
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    if name == "lovasz":
        target, dice = torch.randint(0, 3, (2, 6, 7), generator=g), sl.dice_loss
    else:
        target, dice = torch.randint(0, 2, (2, 3, 6, 7), generator=g), sl.binary_dice_loss
    w = torch.rand(2, 6, 7, generator=g, dtype=torch.float64) * 3
    m = torch.rand(2, 6, 7, generator=g) > 0.2
    function = sl.lovasz_loss if name == "lovasz" else sl.binary_lovasz_loss
    value = function(logits, target, w, m, per_image=True)
    module = (sl.LovaszLoss if name == "lovasz" else sl.BinaryLovaszLoss)(per_image=True)
    torch.testing.assert_close(module(logits, target, weight_map=w, mask=m), value)
    compound = sl.create_loss(f"{'binary_' if name != 'lovasz' else ''}dice + {name}(per_image=True)")
    torch.testing.assert_close(
        compound(logits, target, weight_map=w, mask=m), dice(logits, target, w, m) + value
    )


def test_weighted_float32_agrees_with_float64_on_a_large_row():
    """The weighted sums in float32 (torch's CPU cumsum accumulates in double) stay within 1e-5 of the
    float64 loss on 2^17 pixels."""
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(1, 4, 256, 512, generator=g)
    target = torch.randint(0, 4, (1, 256, 512), generator=g)
    w = torch.rand(1, 256, 512, generator=g) * 5
    single = sl.lovasz_loss(logits, target, w, reduction="none")
    double = sl.lovasz_loss(logits.double(), target, w.double(), reduction="none")
    torch.testing.assert_close(single.double(), double, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["host-rows", "torch-rows"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("classes", ["present", (1, 3)])
def test_fused_rows_equal_the_reference(dtype, per_image, weighted, classes):
    """The eager-CPU forms (float32: numpy row by row; float64: torch ops) against the plain autograd
    form, with ignored pixels, a mask and a weight map: values and gradients (the rows of classes not
    averaged, or absent, are skipped by the float32 form)."""
    g = torch.Generator().manual_seed(15)
    logits = torch.randn(2, 4, 9, 11, generator=g, dtype=dtype)
    target = torch.randint(0, 4, (2, 9, 11), generator=g)
    target[0, :2] = IGNORE
    target[1][target[1] == 3] = 2  # class 3 absent from image 1
    w = torch.rand(2, 9, 11, generator=g, dtype=dtype) * 2 if weighted else None
    m = torch.rand(2, 9, 11, generator=g) > 0.1 if weighted else None
    results = []
    for backend in ("cpu", "reference"):
        x = logits.clone().requires_grad_()
        with sl.backend(backend):
            loss = sl.lovasz_loss(
                x, target, w, m, classes=classes, ignore_index=IGNORE, per_image=per_image, reduction="none"
            )
        (grad,) = torch.autograd.grad(loss.sum(), x)
        results.append((loss.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
