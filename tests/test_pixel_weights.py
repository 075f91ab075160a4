"""Per-pixel weight maps and loss masks (issue 19, item 9): ``weight_map=`` and ``mask=`` on the region
losses (weighted statistics) and the pixel losses (weighted sums, ``mean`` over the summed weights), by hand
and by the identities they must satisfy: an integer ω is the pixel repeated ω times, a mask on a soft
target drops its pixels. The checks every loss passes (ω = 1 is the loss without it, a mask is
``ignore_index``, weighted gradcheck) are in tests/test_conformance.py; each family's own weighted
semantics in its test file."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import seglosses as sl
from seglosses._core.registry import list_losses

REGION = ["dice", "jaccard", "tversky", "focal_tversky", "gdl", "mcc", "log_cosh_dice", "penalty_gdl"]
SOFTMAX = REGION + ["marginal_dice", "ce", "focal", "marginal_ce"]
BINARY = [f"binary_{name}" for name in REGION] + ["bce", "binary_focal"]
SOFTMAX_ENTRIES = [
    e for e in list_losses(details=True) if e.domain == "softmax" and "weight_map" in e.module.term_inputs
]


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


def test_module_function_and_compound_agree():
    logits, labels, weights, mask = inputs(6)
    value = sl.DiceLoss()(logits, labels, weights, mask)
    torch.testing.assert_close(value, sl.dice_loss(logits, labels, weights, mask))
    criterion = sl.create_loss("ce + 0.5*dice")
    expected = sl.cross_entropy_loss(logits, labels, weights, mask) + 0.5 * value
    torch.testing.assert_close(criterion(logits, labels, weight_map=weights, mask=mask), expected)


def test_every_registered_loss_takes_weight_maps_and_masks():
    """Issue 19, item 9: every loss takes ``weight_map=`` and ``mask=``, its function and its module (the
    conformance suite checks each: ones change nothing, a mask is ignore_index, weighted gradcheck); the
    embedding losses take ``mask=`` only (their module docstring says why)."""
    missing = []
    for entry in list_losses(details=True):
        wanted = ("mask",) if entry.domain == "embedding" else ("weight_map", "mask")
        parameters = inspect.signature(entry.module.function).parameters
        inputs = getattr(entry.module, "term_inputs", {})
        missing += [
            f"{entry.name}: {name}" for name in wanted if name not in parameters or name not in inputs
        ]
        if entry.domain == "embedding" and "weight_map" in inputs:
            missing.append(f"{entry.name} takes weight_map")
    assert not missing


@pytest.mark.parametrize("entry", SOFTMAX_ENTRIES, ids=lambda e: e.name)
def test_mask_on_an_integer_one_hot_target(entry):
    """A softmax loss's integer one-hot target cannot hold an ignore value: the mask drops its pixels as
    it does a float one-hot's (it once wrote -1 into every channel, which the target check refused)."""
    logits, labels, weights, mask = inputs(7, (2, 3, 8, 8))
    one_hot = F.one_hot(labels, 3).movedim(-1, 1)
    expected = sl.create_loss(entry.spec)(logits, one_hot.double(), weight_map=weights, mask=mask)
    value = sl.create_loss(entry.spec)(logits, one_hot, weight_map=weights, mask=mask)  # fresh state
    torch.testing.assert_close(value, expected)


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
