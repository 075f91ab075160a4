"""Deep supervision: nnU-Net's weights, target resizing, targets per scale, spec strings, every registered
loss, and equality with MONAI's DeepSupervisionLoss."""

import pytest
import torch
import torch.nn.functional as F
from helpers import ENTRIES, IGNORE

import seglosses as sl
from seglosses.losses.deep_supervision import default_weights, resize_target


def scales(n=3, c=3, size=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, size // 2**i, size // 2**i, generator=g, dtype=dtype, requires_grad=True)
            for i in range(n)]  # fmt: skip


def test_default_weights_are_nnunets():
    assert default_weights(1) == [1.0]
    assert default_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert default_weights(5) == pytest.approx([w / 1.875 for w in (1, 0.5, 0.25, 0.125, 0)])


def test_weighted_sum_over_nearest_resized_targets():
    zs = scales()
    target = torch.randint(0, 3, (2, 16, 16))
    loss = sl.DeepSupervision(sl.DiceLoss(), weights=[0.5, 0.3, 0.2])(zs, target)
    expected = sum(
        w * sl.dice_loss(z, target[:, 2**i // 2 :: 2**i, 2**i // 2 :: 2**i])
        for i, (w, z) in enumerate(zip([0.5, 0.3, 0.2], zs))
    )  # nearest at the pixel centres, by a factor f = 2^i: the pixel at f·j + f/2
    torch.testing.assert_close(loss, expected)


def test_zero_weight_scales_are_not_computed_and_targets_per_scale_are_used_as_given():
    zs = scales()
    targets = [torch.randint(0, 3, z.shape[:1] + z.shape[2:]) for z in zs]
    wrapper = sl.DeepSupervision(sl.CrossEntropyLoss())
    loss = wrapper(zs, targets)
    expected = 2 / 3 * F.cross_entropy(zs[0], targets[0]) + 1 / 3 * F.cross_entropy(zs[1], targets[1])
    torch.testing.assert_close(loss, expected)  # nnU-Net's DeepSupervisionWrapper with its weights
    loss.backward()
    assert zs[2].grad is None  # the lowest scale has weight 0


def test_dense_targets_are_area_averaged_and_ignore_survives_resizing():
    target = torch.randint(0, 3, (2, 8, 8))
    one_hot = F.one_hot(target, 3).movedim(-1, 1).double()
    half = resize_target(one_hot, (4, 4), index=False)
    torch.testing.assert_close(half, F.avg_pool2d(one_hot, 2))
    target[0, 1, 1] = IGNORE  # the centre pixel output (0, 0) takes at a factor 2
    assert resize_target(target, (4, 4), index=True)[0, 0, 0] == IGNORE


def test_weight_maps_are_area_averaged_and_masks_nearest_resized():
    """Per scale, ``loss(z_i, y_i, weight_map=avg_pool(ω), mask=mask[centres])`` (issue 19, item 9)."""
    zs = scales()
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    weight_map = torch.rand(2, 16, 16, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(2, 16, 16, generator=g) > 0.3
    weights = [0.5, 0.3, 0.2]
    loss = sl.DeepSupervision(sl.create_loss("ce + dice"), weights=weights)(zs, target, weight_map, mask)
    expected = 0
    for i, (w, z) in enumerate(zip(weights, zs)):
        f = 2**i
        centres = (slice(None), slice(f // 2, None, f), slice(f // 2, None, f))
        scaled_weights = F.avg_pool2d(weight_map.unsqueeze(1), f).squeeze(1) if f > 1 else weight_map
        term = sl.create_loss("ce + dice")(z, target[centres], weight_map=scaled_weights, mask=mask[centres])
        expected = expected + w * term
    torch.testing.assert_close(loss, expected)
    per_scale = [resize_target(weight_map, tuple(z.shape[2:]), index=True) for z in zs]
    given = sl.DeepSupervision(sl.create_loss("ce + dice"), weights=weights)(zs, target, per_scale, mask)
    torch.testing.assert_close(given, loss)  # lists are used as given


def test_a_wrong_number_of_weight_maps_raises():
    zs = scales()
    target = torch.randint(0, 3, (2, 16, 16))
    with pytest.raises(sl.SegLossError, match="one weight_map per scale"):
        sl.DeepSupervision(sl.DiceLoss())(zs, target, [torch.ones(2, 16, 16)])


def test_spec_string_and_steps_reach_the_wrapped_loss():
    wrapper = sl.create_loss(
        "deep_supervision(linear(start=1, end=0, steps=10)*ce + dice)", ignore_index=IGNORE
    )
    assert isinstance(wrapper, sl.DeepSupervision)
    wrapper.set_step(10)
    zs = scales()
    target = torch.randint(0, 3, (2, 16, 16))
    expected = sl.DeepSupervision(sl.DiceLoss(ignore_index=IGNORE))(zs, target)  # CE's weight is 0 now
    torch.testing.assert_close(wrapper(zs, target), expected)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.domain == "softmax"], ids=lambda e: e.name)
def test_every_softmax_loss_can_be_deep_supervised(entry):
    if getattr(entry.module, "stateful", False):
        with pytest.raises(sl.SegLossError, match="running statistics"):
            sl.DeepSupervision(entry.module())
        return
    zs = scales(3, size=8)  # default weights (2/3, 1/3, 0): two scales computed
    target = torch.randint(0, 3, (2, 8, 8))
    loss = sl.DeepSupervision(entry.module())(zs, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs[0].grad).all() and torch.isfinite(zs[1].grad).all()


@pytest.mark.parametrize(
    "weights, logits, message",
    [
        ([1.0, -1.0], None, "non-negative"),
        ([0.0, 0.0], None, "not all 0"),
        ([1.0, 1.0], "three", "one weight per scale"),
        (None, "mismatch", "every scale"),
    ],
)
def test_invalid_inputs_raise(weights, logits, message):
    zs = scales(3)
    if logits == "mismatch":
        zs[1] = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 3, (2, 16, 16))
    with pytest.raises(sl.SegLossError, match=message):
        sl.DeepSupervision(sl.DiceLoss(), weights=weights)(zs, target)


def test_equals_monai():
    monai_losses = pytest.importorskip("monai.losses", reason="MONAI (the [docs] extra) is not installed")
    zs = scales(dtype=torch.float32)  # MONAI computes each scale in float32
    target = torch.randint(0, 3, (2, 16, 16))
    weights = [1.0, 0.5, 0.25]
    ours = sl.DeepSupervision(sl.DiceLoss(), weights=weights)(zs, target)
    inner = monai_losses.DiceLoss(to_onehot_y=True, softmax=True)
    theirs = monai_losses.DeepSupervisionLoss(inner, weights=weights)(zs, target[:, None].float())
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("deep_supervision(ce) + dice", "wrap the whole spec once"),
        ("0.5*deep_supervision(ce)", "wrap the whole spec once"),
        ("deep_supervision(deep_supervision(ce))", "nested"),
        ("deep_supervision()", "a loss spec inside"),
    ],
)
def test_misplaced_wrappers_in_specs_raise(spec, message):
    with pytest.raises(sl.SegLossError, match=message):
        sl.create_loss(spec)


def test_an_unreduced_loss_is_refused():
    with pytest.raises(sl.SegLossError, match="reduces to a scalar"):
        sl.DeepSupervision(sl.DiceLoss(reduction="none"))
