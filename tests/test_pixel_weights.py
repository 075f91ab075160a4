"""Per-pixel weight maps and loss masks (issue 19, item 9): ``weight_map=`` and ``mask=`` on the region
losses (weighted statistics) and the pixel losses (weighted sums, ``mean`` over the summed weights), by hand
and by the identities they must satisfy: ω = 1 is the loss without it, an integer ω is the pixel repeated
ω times, a mask is ``ignore_index``."""

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE

import seglosses as sl

REGION = ["dice", "jaccard", "tversky", "focal_tversky", "gdl", "mcc", "log_cosh_dice", "penalty_gdl"]
SOFTMAX = REGION + ["marginal_dice", "ce", "focal", "marginal_ce"]
BINARY = [f"binary_{name}" for name in REGION] + ["bce", "binary_focal"]


def logit(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def inputs(seed=0, shape=(2, 3, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    weights = torch.rand((shape[0], *shape[2:]), generator=g, dtype=torch.float64)
    mask = torch.rand((shape[0], *shape[2:]), generator=g) > 0.3
    return logits, labels, weights, mask


def binary_target(labels, c=3):
    return F.one_hot(labels, c).movedim(-1, 1)


def test_binary_dice_by_hand():
    """p = (0.8, 0.3), y = (1, 0), ω = (2, 0.5): TP = 1.6, Σ ω p = 1.75, Σ ω y = 2, Dice = 3.2 / 3.75."""
    z = logit([0.8, 0.3]).view(1, 1, 2)
    y = torch.tensor([[[1, 0]]])
    w = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    assert sl.binary_dice_loss(z, y, w, smooth=1e-300).item() == pytest.approx(1 - 3.2 / 3.75, rel=1e-12)


def test_ce_by_hand():
    """Two pixels, p_t = (0.8, 0.3), ω = (2, 0.5): mean = (2·(-log 0.8) + 0.5·(-log 0.3)) / 2.5."""
    z = torch.log(torch.tensor([[[0.8, 0.7], [0.2, 0.3]]], dtype=torch.float64))  # (1, 2, 2)
    y = torch.tensor([[0, 1]])
    w = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    expected = (2 * -torch.log(torch.tensor(0.8)) + 0.5 * -torch.log(torch.tensor(0.3))) / 2.5
    assert sl.cross_entropy_loss(z, y, w).item() == pytest.approx(expected.item(), rel=1e-6)
    # with class weights (3, 1): Σ ω w_t ce / Σ ω w_t
    expected = (6 * -torch.log(torch.tensor(0.8)) + 0.5 * -torch.log(torch.tensor(0.3))) / 6.5
    assert sl.cross_entropy_loss(z, y, w, weight=[3.0, 1.0]).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


@pytest.mark.parametrize("name", SOFTMAX + BINARY)
def test_unit_weights_are_the_plain_loss(name):
    logits, labels, _, _ = inputs()
    target = binary_target(labels) if name in BINARY else labels
    loss = sl.create_loss(name)
    ones = torch.ones(2, 5, 6, dtype=torch.float64)
    for reduction in ("mean", "sum", "none"):
        loss = type(loss)(reduction=reduction)
        torch.testing.assert_close(loss(logits, target, weight_map=ones), loss(logits, target))
        all_in = torch.ones(2, 5, 6, dtype=torch.bool)
        torch.testing.assert_close(loss(logits, target, mask=all_in), loss(logits, target))


@pytest.mark.parametrize("name", SOFTMAX + BINARY)
def test_integer_weights_repeat_the_pixel(name):
    """ω ∈ {0, 1, 2, 3} equals the loss on an image where each pixel appears ω times (side by side in a
    long last axis): the weighted statistics and the weighted mean are the repeated ones."""
    logits, labels, _, _ = inputs(1, (2, 3, 4, 5))
    counts = torch.randint(0, 4, (2, 4, 5), generator=torch.Generator().manual_seed(2))
    target = binary_target(labels) if name in BINARY else labels
    loss = sl.create_loss(name)
    loss = type(loss)(**({"batch": True} if "batch" in loss.options else {}))  # one sample: comparable
    weighted = loss(logits, target, weight_map=counts.double())
    # every pixel of the batch repeated ω times, as one long row: pooled region statistics (batch=True)
    # and the pixel losses' mean over the batch are those of this one sample
    rows_z, rows_y = [], []
    for n in range(2):
        k = counts[n].flatten()
        rows_z.append(logits[n].flatten(1).repeat_interleave(k, dim=1))
        rows_y.append(target[n].flatten(target.ndim - 3).repeat_interleave(k, dim=-1))
    z, y = torch.cat(rows_z, 1)[None], torch.cat(rows_y, -1)[None]
    torch.testing.assert_close(weighted, loss(z, y))


@pytest.mark.parametrize("name", SOFTMAX + BINARY)
def test_mask_is_ignore_index(name):
    logits, labels, _, mask = inputs(3)
    loss = sl.create_loss(name)
    if name in BINARY:
        target = binary_target(labels)
        ignored = target.masked_fill(~mask[:, None], IGNORE)
    else:
        target, ignored = labels, labels.masked_fill(~mask, IGNORE)
    for reduction in ("mean", "sum", "none"):
        masked = type(loss)(reduction=reduction)(logits, target, mask=mask)
        expected = type(loss)(reduction=reduction, ignore_index=IGNORE)(logits, ignored)
        torch.testing.assert_close(masked, expected)


@pytest.mark.parametrize("name", SOFTMAX)
def test_mask_on_a_soft_target(name):
    """A soft target cannot hold ignore_index; the mask drops its pixels all the same: equal to the loss
    on the kept pixels alone (with the data checks off, which refuse a NaN anywhere, a NaN logit at a
    masked pixel reaches neither the loss nor the gradient)."""
    logits, labels, _, _ = inputs(4, (1, 3, 4, 6))
    soft = torch.softmax(torch.randn(1, 3, 4, 6, dtype=torch.float64), 1)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 3:] = True
    poisoned = logits.detach().clone()
    poisoned[:, :, :, :3] = torch.nan
    poisoned.requires_grad_()
    loss = sl.create_loss(name)
    with sl.input_checks(False):
        value = loss(poisoned, soft, mask=mask)
    torch.testing.assert_close(value, loss(logits[..., 3:], soft[..., 3:]))
    (grad,) = torch.autograd.grad(value, poisoned)
    assert torch.isfinite(grad).all() and (grad[..., :3] == 0).all()


@pytest.mark.parametrize("name", SOFTMAX + BINARY)
def test_weighted_gradcheck(name):
    logits, labels, weights, mask = inputs(5, (2, 3, 3, 4))
    target = binary_target(labels) if name in BINARY else labels
    loss = sl.create_loss(name)
    assert torch.autograd.gradcheck(
        lambda z: loss(z, target, weight_map=weights, mask=mask), (logits,), eps=1e-6, atol=1e-5
    )


def test_module_function_and_compound_agree():
    logits, labels, weights, mask = inputs(6)
    value = sl.DiceLoss()(logits, labels, weights, mask)
    torch.testing.assert_close(value, sl.dice_loss(logits, labels, weights, mask))
    criterion = sl.create_loss("ce + 0.5*dice")
    expected = sl.cross_entropy_loss(logits, labels, weights, mask) + 0.5 * value
    torch.testing.assert_close(criterion(logits, labels, weight_map=weights, mask=mask), expected)


def test_a_term_without_weight_maps_is_named():
    logits, labels, weights, _ = inputs()
    with pytest.raises(sl.SegLossError, match=r"every term to take weight_map=.*term 'lovasz'"):
        sl.create_loss("dice + lovasz")(logits, labels, weight_map=weights)


def test_bad_weight_maps_and_masks_are_refused():
    logits, labels, weights, mask = inputs()
    with pytest.raises(sl.SegLossError, match=r"weight_map of shape \(N, \*S\) = \(2, 5, 6\)"):
        sl.dice_loss(logits, labels, weights[:, :4])
    with pytest.raises(sl.SegLossError, match="weight_map values finite and >= 0"):
        sl.dice_loss(logits, labels, -weights)
    with pytest.raises(sl.SegLossError, match="weight_map as a floating-point tensor"):
        sl.cross_entropy_loss(logits, labels, weight_map=torch.ones(2, 5, 6, dtype=torch.long))
    with pytest.raises(sl.SegLossError, match="mask as a bool tensor"):
        sl.focal_loss(logits, labels, mask=mask.long())


def test_bad_weights_on_a_deferring_device_raise_later(monkeypatch):
    """On CUDA the weight map's values are checked without a host synchronisation (the CPU stands in here,
    as in tests/test_deferred_checks.py): the verdict is queued and raised by the first later check that
    finds it ready (here the same call's target check, whose copy is already on the host) or a flush."""
    from seglosses._core import deferred

    monkeypatch.setattr(deferred, "DEFERRED_DEVICES", ("cpu",))
    logits, labels, weights, _ = inputs()
    weights[0, 0, 0] = -1.0
    with pytest.raises(sl.SegLossError, match="1 negative or non-finite values.*deferred input check"):
        sl.dice_loss(logits, labels, weights)
        sl.flush_input_checks()
