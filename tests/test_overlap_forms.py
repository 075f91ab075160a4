"""The overlap losses' other forms: ``soft_label`` (Wang & Blaschko 2023), ``squared`` (the V-Net
denominator) and ``log_loss`` (-log of the score): values by hand, the identities they should satisfy, and
equality with MONAI (``soft_label``, ``squared_pred``) and segmentation_models_pytorch (``log_loss``)."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs, smp_losses

import seglosses as sl

FIVE = ["dice", "jaccard", "tversky", "focal_tversky", "gdl"]
FORMS = [{"soft_label": True}, {"squared": True}, {"log_loss": True}, {"squared": True, "log_loss": True}]


def logit(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def soft_inputs(seed=0, shape=(2, 3, 6, 7)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    soft = torch.softmax(2 * torch.randn(shape, generator=g, dtype=torch.float64), 1)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return logits, soft, labels


def test_binary_soft_target_by_hand():
    """p = (0.8, 0.3), y = (0.6, 0.2): Σp = 1.1, Σy = 0.8, Σpy = 0.54, Σ|p - y| = 0.3, Σp² = 0.73,
    Σy² = 0.40. Plain Dice 1.08 / 1.9; soft_label TP = (1.1 + 0.8 - 0.3) / 2 = 0.8, Dice 1.6 / 1.9;
    squared Dice 1.08 / (0.73 + 0.40); log_loss -log(1.08 / 1.9)."""
    z = logit([0.8, 0.3]).view(1, 1, 2)
    y = torch.tensor([[[0.6, 0.2]]], dtype=torch.float64)
    cases = {
        (): 1 - 1.08 / 1.9,
        ("soft_label",): 1 - 1.6 / 1.9,
        ("squared",): 1 - 1.08 / 1.13,
        ("log_loss",): -math.log(1.08 / 1.9),
        ("soft_label", "log_loss"): -math.log(1.6 / 1.9),
    }
    for flags, expected in cases.items():
        value = sl.binary_dice_loss(z, y, smooth=1e-300, **{flag: True for flag in flags})
        assert value.item() == pytest.approx(expected, rel=1e-12), flags
    # Jaccard with soft_label: TP / (Σp + Σy - TP) = 0.8 / 1.1; Tversky (α = 0.3, β = 0.7) with squared:
    # FP = 0.73 - 0.54 = 0.19, FN = 0.40 - 0.54 = -0.14
    assert sl.binary_jaccard_loss(z, y, smooth=1e-300, soft_label=True).item() == pytest.approx(1 - 0.8 / 1.1)
    tversky = sl.binary_tversky_loss(z, y, smooth=1e-300, squared=True).item()
    assert tversky == pytest.approx(1 - 0.54 / (0.54 + 0.3 * 0.19 - 0.7 * 0.14))


@pytest.mark.parametrize("name", FIVE)
def test_soft_label_loss_is_zero_at_the_soft_target(name):
    """The point of soft_label: p = y is a minimum (the loss is 0 there) for a soft target; the plain form
    is not 0 there."""
    y = torch.tensor([[[0.6, 0.2, 0.9, 0.5]]], dtype=torch.float64)
    z = torch.log(y / (1 - y)).requires_grad_()
    loss = sl.create_loss(f"binary_{name}(smooth=1e-12, soft_label=True)")
    value = loss(z, y)
    assert value.item() == pytest.approx(0.0, abs=1e-9)
    plain = sl.create_loss(f"binary_{name}(smooth=1e-12)")(z, y)
    assert plain.item() > 0.01


@pytest.mark.parametrize("name", FIVE)
def test_soft_label_is_the_plain_form_for_hard_targets(name):
    logits, _, labels = soft_inputs()
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).double()
    plain, soft = sl.create_loss(name), sl.create_loss(f"{name}(soft_label=True)")
    for target in (labels, one_hot):
        torch.testing.assert_close(soft(logits, target), plain(logits, target))
    binary_plain, binary_soft = (
        sl.create_loss(f"binary_{name}"),
        sl.create_loss(f"binary_{name}(soft_label=True)"),
    )
    for target in (one_hot, one_hot.bool(), one_hot.long()):
        torch.testing.assert_close(binary_soft(logits, target), binary_plain(logits, target))


@pytest.mark.parametrize("name", FIVE)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "+".join(f))
def test_index_and_one_hot_targets_agree(name, form):
    logits, _, labels = soft_inputs(1)
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).double()
    loss = sl.create_loss(name)
    loss = type(loss)(**form)
    torch.testing.assert_close(loss(logits, labels), loss(logits, one_hot))


@pytest.mark.parametrize("name", FIVE)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "+".join(f))
@pytest.mark.parametrize("domain", ["softmax", "binary"])
def test_forms_gradcheck_with_ignored_pixels(name, form, domain):
    logits, target = make_inputs(domain, (2, 3, 3, 4), ignore_fraction=0.3, scale=1.0)
    loss = sl.create_loss(name if domain == "softmax" else f"binary_{name}")
    loss = type(loss)(ignore_index=IGNORE, **form)
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", FIVE)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: "+".join(f))
def test_soft_target_gradcheck(name, form):
    logits, soft, _ = soft_inputs(2, (2, 3, 3, 4))
    loss = type(sl.create_loss(name))(**form)
    assert torch.autograd.gradcheck(lambda z: loss(z, soft), (logits,), eps=1e-6, atol=1e-5)
    binary = type(sl.create_loss(f"binary_{name}"))(**form)
    assert torch.autograd.gradcheck(lambda z: binary(z, soft), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: "+".join(f))
def test_ignored_pixels_count_nowhere(form):
    logits, _, labels = soft_inputs(3)
    target = labels.clone()
    target[:, :2] = IGNORE
    kept = sl.dice_loss(logits[:, :, 2:], labels[:, 2:], **form)
    torch.testing.assert_close(sl.dice_loss(logits, target, ignore_index=IGNORE, **form), kept)
    binary_target = F.one_hot(labels, 3).movedim(-1, 1)  # ignore_index marks integer targets only
    binary_target[:, :, :2] = IGNORE
    kept = sl.binary_dice_loss(logits[:, :, 2:], binary_target[:, :, 2:], **form)
    torch.testing.assert_close(sl.binary_dice_loss(logits, binary_target, ignore_index=IGNORE, **form), kept)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: "+".join(f))
def test_batch_pools_the_statistics_of_each_form(form):
    """Σp², Σy² and Σ|p - y| add over samples: batch=True on (2, ...) is the loss of one sample made of
    both side by side."""
    logits, soft, _ = soft_inputs(4)
    side_by_side = torch.cat(list(logits.unbind(0)), -1).unsqueeze(0)
    target = torch.cat(list(soft.unbind(0)), -1).unsqueeze(0)
    torch.testing.assert_close(
        sl.dice_loss(logits, soft, batch=True, reduction="none", **form),
        sl.dice_loss(side_by_side, target, reduction="none", **form)[0],
    )


def test_log_loss_identities():
    logits, soft, labels = soft_inputs(5)
    for function in (sl.dice_loss, sl.jaccard_loss, sl.tversky_loss):
        plain = function(logits, labels, reduction="none")
        torch.testing.assert_close(
            function(logits, labels, log_loss=True, reduction="none"), -torch.log1p(-plain)
        )
    # focal Tversky with γ = 1 is Tversky, in the log form too
    torch.testing.assert_close(
        sl.focal_tversky_loss(logits, labels, gamma=1.0, log_loss=True),
        sl.tversky_loss(logits, labels, log_loss=True),
    )
    # generalised Dice: the sample's loss is -log(1 - L), its class terms keep their proportions
    plain = sl.generalized_dice_loss(logits, soft, reduction="none")
    logged = sl.generalized_dice_loss(logits, soft, log_loss=True, reduction="none")
    torch.testing.assert_close(logged.mean(-1), -torch.log1p(-plain.mean(-1)))
    torch.testing.assert_close(logged / logged.sum(-1, keepdim=True), plain / plain.sum(-1, keepdim=True))


def test_log_loss_of_a_perfect_prediction_is_zero_and_finite_gradient():
    target = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(0))
    logits = (F.one_hot(target, 3).movedim(-1, 1).double() * 2 - 1).mul(30).requires_grad_()
    for name in FIVE:
        value = sl.create_loss(f"{name}(log_loss=True)")(logits, target)
        assert value.item() == pytest.approx(0.0, abs=1e-6), name
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(grad).all(), name


def test_log_loss_needs_a_positive_smooth():
    with pytest.raises(sl.SegLossError, match="smooth > 0 with log_loss=True"):
        sl.dice_loss(*soft_inputs()[:1], torch.zeros(2, 6, 7, dtype=torch.long), log_loss=True, smooth=0.0)
    with pytest.raises(sl.SegLossError, match="smooth > 0"):
        sl.BinaryJaccardLoss(log_loss=True, smooth=0)
    with pytest.raises(sl.SegLossError, match="squared"):
        sl.DiceLoss(squared="yes")


def test_module_keeps_the_forms_in_its_options_and_spec():
    loss = sl.create_loss("tversky(squared=True, log_loss=True)")
    assert loss.options["squared"] is True and loss.options["log_loss"] is True
    assert "squared=True" in repr(loss)
    logits, _, labels = soft_inputs()
    torch.testing.assert_close(
        loss(logits, labels), sl.tversky_loss(logits, labels, squared=True, log_loss=True)
    )


# --- the reference libraries ---------------------------------------------------------------------------

monai_losses = pytest.importorskip("monai.losses", reason="MONAI (the [docs] extra) is not installed")


@pytest.mark.parametrize("jaccard", [False, True])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("soft_label", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_and_jaccard_equal_monai(jaccard, squared, soft_label, batch):
    """MONAI's Dice (and Jaccard, whose smoothing differs: ``(2 TP + s) / (2 (TP + FP + FN) + s)``, so
    compared at s = 1e-300) on a soft target and a one-hot one (MONAI's own one-hot is float32: compared
    with a float64 one-hot here), values and gradients."""
    logits, soft, labels = soft_inputs(6, (2, 3, 5, 4, 3))
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).double()
    ours_fn = sl.jaccard_loss if jaccard else sl.dice_loss
    theirs = monai_losses.DiceLoss(
        softmax=True, squared_pred=squared, soft_label=soft_label, jaccard=jaccard, batch=batch,
        smooth_nr=0.0, smooth_dr=1e-300,
    )  # fmt: skip
    for target, ours_target in ((soft, soft), (one_hot, labels)):
        ours = ours_fn(
            logits, ours_target, squared=squared, soft_label=soft_label, batch=batch, smooth=1e-300
        )
        expected = theirs(logits, target)
        torch.testing.assert_close(ours, expected)
        grads = [torch.autograd.grad(value, logits)[0] for value in (ours, expected)]
        torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("soft_label", [False, True])
def test_binary_dice_equals_monai(squared, soft_label):
    logits, soft, _ = soft_inputs(7)
    ours = sl.binary_dice_loss(logits, soft, squared=squared, soft_label=soft_label)
    theirs = monai_losses.DiceLoss(sigmoid=True, squared_pred=squared, soft_label=soft_label)(logits, soft)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("soft_label", [False, True])
def test_tversky_equals_monai(soft_label):
    logits, soft, _ = soft_inputs(8)
    ours = sl.tversky_loss(logits, soft, alpha=0.4, beta=0.6, soft_label=soft_label)
    theirs = monai_losses.TverskyLoss(softmax=True, alpha=0.4, beta=0.6, soft_label=soft_label)(logits, soft)
    torch.testing.assert_close(ours, theirs)


def test_log_loss_equals_smp():
    """smp's Dice, Jaccard and Tversky with ``log_loss=True``: statistics pooled over the batch
    (``batch=True``), ``smooth = 0`` with the score clamped at ``eps`` (every score here is far above)."""
    L = smp_losses()
    logits, _, labels = soft_inputs(9)
    binary_target = (labels[:, None] == 1).double()
    tversky = sl.TverskyLoss(log_loss=True, alpha=0.3, beta=0.7)  # α on FP in both
    pairs = [
        (L.DiceLoss("multiclass", log_loss=True, smooth=0.0), sl.DiceLoss(log_loss=True), labels),
        (L.JaccardLoss("multiclass", log_loss=True, smooth=0.0), sl.JaccardLoss(log_loss=True), labels),
        (L.TverskyLoss("multiclass", log_loss=True, smooth=0.0, alpha=0.3, beta=0.7), tversky, labels),
        (L.DiceLoss("binary", log_loss=True, smooth=0.0), sl.BinaryDiceLoss(log_loss=True), binary_target),
    ]  # fmt: skip
    for theirs, ours, target in pairs:
        ours = type(ours)(**{**ours.options, "batch": True, "smooth": 1e-300})
        subject = logits[:, :1] if target.shape == binary_target.shape else logits
        torch.testing.assert_close(ours(subject, target), theirs(subject, target))
