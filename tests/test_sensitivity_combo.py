"""Sensitivity-specificity loss (Brosch et al. 2015) and Combo loss (Taghanaki et al. 2019): hand-derived
values, identities (r = 1, α = 1, α = 0), plain-torch references with their gradients, ignore_index as
dropped pixels, index and one-hot targets, batch pooling, saturated and -inf logits, bad options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE
from torch.profiler import ProfilerActivity, profile

import seglosses as sl
from seglosses.losses.combo import (
    BinaryComboLoss,
    ComboLoss,
    binary_combo_loss,
    combo_loss,
    log_one_minus_softmax,
)
from seglosses.losses.sensitivity import (
    BinarySensitivitySpecificityLoss,
    SensitivitySpecificityLoss,
    binary_sensitivity_specificity_loss,
    sensitivity_specificity_loss,
)

SOFTMAX = [sensitivity_specificity_loss, combo_loss]
BINARY = [binary_sensitivity_specificity_loss, binary_combo_loss]
LN2 = math.log(2.0)


def logit(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def log_probs(*pixels):
    """Logits ``(1, C, P)`` whose softmax is the given per-pixel class probabilities."""
    return torch.tensor(pixels, dtype=torch.float64).log().T.unsqueeze(0)


def inputs(seed=0, shape=(2, 3, 5, 6), ignore=0.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    if ignore:
        target[torch.rand(target.shape, generator=g) < ignore] = IGNORE
    return logits.requires_grad_(), target


def one_hot(target, c):
    return F.one_hot(target, c).movedim(-1, 1).double()


# --- plain-torch references on dense tensors (N, C, P): the papers' formulas, per (sample, class) ------


def ss_reference(p, y, r, s):
    """Brosch et al.: r Σ(y-p)²y / (Σy + s) + (1-r) Σ(y-p)²(1-y) / (Σ(1-y) + s), (N, C)."""
    error = (y - p) ** 2
    sens = (error * y).sum(-1) / (y.sum(-1) + s)
    spec = (error * (1 - y)).sum(-1) / ((1 - y).sum(-1) + s)
    return r * sens + (1 - r) * spec


def combo_reference(p, y, alpha, beta, s):
    """α mBCE + (1 - α)(1 - Dice) per (sample, class), the paper's mBCE = -mean[β y log p + (1-β)(1-y)
    log(1-p)]; the paper's own loss is this minus (1 - α)."""
    mbce = -(beta * y * p.log() + (1 - beta) * (1 - y) * (1 - p).log()).mean(-1)
    tp = (p * y).sum(-1)
    dice = (2 * tp + s) / (p.sum(-1) + y.sum(-1) + s)
    return alpha * mbce + (1 - alpha) * (1 - dice)


# --- sensitivity-specificity: values -------------------------------------------------------------------


def test_binary_ss_by_hand():
    """p = (0.5, 0.75), y = (1, 0), s = 0: the error on the positive pixel (1 - 0.5)² = 0.25 over 1 pixel,
    on the negative one (0 - 0.75)² = 0.5625 over 1 pixel; L = r · 0.25 + (1 - r) · 0.5625."""
    z = logit([0.5, 0.75]).view(1, 1, 2)
    y = torch.tensor([[[1, 0]]])
    for r in (0.05, 0.3, 1.0, 0.0):
        expected = r * 0.25 + (1 - r) * 0.5625
        value = binary_sensitivity_specificity_loss(z, y, r=r, smooth=0.0)
        assert value.item() == pytest.approx(expected, rel=1e-12)


def test_softmax_ss_by_hand():
    """Pixel 0: p = (0.5, 0.25, 0.25), class 0; pixel 1: p = (0.2, 0.6, 0.2), class 1; s = 0.

    class 0: sensitivity (1 - 0.5)² / 1 = 0.25, specificity 0.2² / 1 = 0.04;
    class 1: sensitivity (1 - 0.6)² / 1 = 0.16, specificity 0.25² / 1 = 0.0625;
    class 2: absent, sensitivity 0 (empty set, no error), specificity (0.25² + 0.2²) / 2 = 0.05125."""
    z = log_probs([0.5, 0.25, 0.25], [0.2, 0.6, 0.2])
    t = torch.tensor([[0, 1]])
    r = 0.05
    expected = [r * 0.25 + (1 - r) * 0.04, r * 0.16 + (1 - r) * 0.0625, (1 - r) * 0.05125]
    value = sensitivity_specificity_loss(z, t, r=r, smooth=0.0, reduction="none")
    torch.testing.assert_close(value, torch.tensor([expected], dtype=torch.float64), rtol=1e-12, atol=0)
    assert sensitivity_specificity_loss(z, t, r=r, smooth=0.0).item() == pytest.approx(sum(expected) / 3)


def test_smooth_enters_the_denominators_only():
    """s = 1: the hand example of test_binary_ss_by_hand with each denominator 1 + 1 = 2."""
    z = logit([0.5, 0.75]).view(1, 1, 2)
    y = torch.tensor([[[1, 0]]])
    expected = 0.05 * 0.25 / 2 + 0.95 * 0.5625 / 2
    assert binary_sensitivity_specificity_loss(z, y, smooth=1.0).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("r", [0.05, 0.1, 1.0, 0.0])
@pytest.mark.parametrize("batch", [False, True])
def test_ss_equals_the_dense_reference_with_gradients(r, batch):
    """The index path (no one-hot) equals the formula on one-hot tensors, values and gradients; r = 1 is
    the sensitivity term alone, r = 0 the specificity term alone (the reference's two terms)."""
    z, t = inputs(1)
    ours = sensitivity_specificity_loss(z, t, r=r, smooth=1.0, batch=batch)
    p, y = z.softmax(1).flatten(2), one_hot(t, 3).flatten(2)
    if batch:
        p, y = p.transpose(0, 1).flatten(1).unsqueeze(0), y.transpose(0, 1).flatten(1).unsqueeze(0)
    reference = ss_reference(p, y, r, 1.0).mean()
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-14)
    grads = [torch.autograd.grad(value, z)[0] for value in (ours, reference)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_ss_equals_segloss_ssloss_convention():
    """JunMa's SegLoss ``SSLoss`` (softmax, r = 0.1, smooth = 1, per (sample, class), then the mean) is this
    loss with those options; it names the r-weighted term ``specificity_part``, the formula is the same."""
    z, t = inputs(2)
    p, y = z.softmax(1), one_hot(t, 3)
    error = (y - p) ** 2
    axes = (2, 3)
    first = (error * y).sum(axes) / (y.sum(axes) + 1.0)  # SegLoss's "specificity_part"
    second = (error * (1 - y)).sum(axes) / ((1 - y).sum(axes) + 1.0)  # its "sensitivity_part"
    segloss = (0.1 * first + 0.9 * second).mean()
    torch.testing.assert_close(sensitivity_specificity_loss(z, t, r=0.1, smooth=1.0), segloss)


def test_binary_ss_equals_the_reference_per_channel_with_soft_targets():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ours = binary_sensitivity_specificity_loss(z, y, r=0.2, smooth=1e-5, reduction="none")
    reference = ss_reference(z.sigmoid().flatten(2), y.flatten(2), 0.2, 1e-5)
    torch.testing.assert_close(ours, reference)
    assert torch.autograd.gradcheck(
        lambda z, y: binary_sensitivity_specificity_loss(z, y, r=0.2), (z, y), eps=1e-6, atol=1e-7
    )


def test_ss_soft_target_gets_its_gradient():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64), 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, y: sensitivity_specificity_loss(z, y, r=0.3), (z, y))


def test_ss_takes_the_target_class_out_without_cancellation():
    """Σ_{y≠c} p_c² is Σ p_c² with the target's terms removed exactly, not a difference of two large sums:
    for a nearly perfect prediction (errors ~ e^-24) float32 keeps its relative precision."""
    z, t = inputs(5, (2, 4, 16, 16))
    sharp = (one_hot(t, 4) * 12.0).requires_grad_()
    single = sensitivity_specificity_loss(sharp.float(), t)
    double = sensitivity_specificity_loss(sharp, t)
    assert 0 < double.item() < 1e-8
    assert single.item() == pytest.approx(double.item(), rel=1e-5)


# --- combo: values -------------------------------------------------------------------------------------


def test_binary_combo_by_hand():
    """p = (0.5, 0.75), y = (1, 0), s = 0, α = β = 0.5.

    mBCE = -½ [β log 0.5 + (1 - β) log(1 - 0.75)] = -½ [0.5 (-ln 2) + 0.5 (-2 ln 2)] = 0.75 ln 2;
    TP = 0.5, FP = 0.75, FN = 0.5: Dice = 2·0.5 / (2·0.5 + 0.75 + 0.5) = 4/9;
    L = 0.5 · 0.75 ln 2 + 0.5 (1 - 4/9) = 0.375 ln 2 + 5/18 (the paper's value minus (1 - α) = 0.5)."""
    z = logit([0.5, 0.75]).view(1, 1, 2)
    y = torch.tensor([[[1, 0]]])
    expected = 0.375 * LN2 + 5 / 18
    assert binary_combo_loss(z, y, smooth=0.0).item() == pytest.approx(expected, rel=1e-12)
    paper = 0.5 * 0.75 * LN2 - 0.5 * 4 / 9
    assert binary_combo_loss(z, y, smooth=0.0).item() - (1 - 0.5) == pytest.approx(paper, rel=1e-12)


def test_beta_weights_the_positive_term():
    """β = 0.8 on the same pixels: mBCE = -½ [0.8 (-ln 2) + 0.2 (-2 ln 2)] = 0.6 ln 2 (α = 1)."""
    z = logit([0.5, 0.75]).view(1, 1, 2)
    y = torch.tensor([[[1, 0]]])
    assert binary_combo_loss(z, y, alpha=1.0, beta=0.8).item() == pytest.approx(0.6 * LN2, rel=1e-12)


def test_softmax_combo_by_hand():
    """The pixels of test_softmax_ss_by_hand, α = 1, β = 0.5 (the one-vs-rest terms of each class):

    class 0: -½ · ½ [log 0.5 + log(1 - 0.2)];  class 1: -½ · ½ [log 0.6 + log(1 - 0.25)];
    class 2: -½ · ½ [log(1 - 0.25) + log(1 - 0.2)]."""
    z = log_probs([0.5, 0.25, 0.25], [0.2, 0.6, 0.2])
    t = torch.tensor([[0, 1]])
    expected = [
        -0.25 * (math.log(0.5) + math.log(0.8)),
        -0.25 * (math.log(0.6) + math.log(0.75)),
        -0.25 * (math.log(0.75) + math.log(0.8)),
    ]
    value = combo_loss(z, t, alpha=1.0, reduction="none")
    torch.testing.assert_close(value, torch.tensor([expected], dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("alpha, beta", [(0.5, 0.5), (0.3, 0.8), (1.0, 0.2), (0.0, 0.5)])
@pytest.mark.parametrize("batch", [False, True])
def test_combo_equals_the_dense_reference_with_gradients(alpha, beta, batch):
    z, t = inputs(6)
    ours = combo_loss(z, t, alpha=alpha, beta=beta, smooth=1e-5, batch=batch)
    p, y = z.softmax(1).flatten(2), one_hot(t, 3).flatten(2)
    if batch:
        p, y = p.transpose(0, 1).flatten(1).unsqueeze(0), y.transpose(0, 1).flatten(1).unsqueeze(0)
    reference = combo_reference(p, y, alpha, beta, 1e-5).mean()
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-14)
    grads = [torch.autograd.grad(value, z)[0] for value in (ours, reference)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_binary_combo_equals_the_reference_with_soft_targets():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ours = binary_combo_loss(z, y, alpha=0.4, beta=0.7, reduction="none")
    reference = combo_reference(z.sigmoid().flatten(2), y.flatten(2), 0.4, 0.7, 1e-5)
    torch.testing.assert_close(ours, reference)
    assert torch.autograd.gradcheck(lambda z, y: binary_combo_loss(z, y, alpha=0.4, beta=0.7), (z, y))


@pytest.mark.parametrize("beta", [0.5, 0.2, 0.9])
def test_alpha_one_is_the_weighted_cross_entropy(beta):
    """β y log p + (1-β)(1-y) log(1-p) = (1-β) [ρ y log p + (1-y) log(1-p)] with ρ = β / (1-β): α = 1 is
    (1 - β) · torch's BCE with pos_weight ρ (every (sample, channel) has the same pixel count, so the
    class mean of the per-class means is torch's mean); with β = 0.5, half the binary cross-entropy."""
    g = torch.Generator().manual_seed(8)
    z = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, z.shape, generator=g).double()
    ours = binary_combo_loss(z, y, alpha=1.0, beta=beta)
    torch_bce = F.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor(beta / (1 - beta)))
    torch.testing.assert_close(ours, (1 - beta) * torch_bce)
    grads = [torch.autograd.grad(value, z)[0] for value in (ours, (1 - beta) * torch_bce)]
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    "options", [{}, {"batch": True}, {"include_background": False}, {"weight": [1, 2, 0.5]}]
)
def test_alpha_zero_is_dice(options):
    """α = 0 is seglosses' Dice loss with the same smooth, values and gradients (index target, ignored
    pixels); the binary form is binary_dice_loss."""
    z, t = inputs(9, ignore=0.2)
    ours = combo_loss(z, t, alpha=0.0, smooth=1e-3, ignore_index=IGNORE, **options)
    dice = sl.dice_loss(z, t, smooth=1e-3, ignore_index=IGNORE, **options)
    torch.testing.assert_close(ours, dice, rtol=0, atol=0)
    grads = [torch.autograd.grad(value, z)[0] for value in (ours, dice)]
    torch.testing.assert_close(grads[0], grads[1])
    y = torch.randint(0, 2, z.shape)
    torch.testing.assert_close(
        binary_combo_loss(z, y, alpha=0.0, smooth=1e-3), sl.binary_dice_loss(z, y, smooth=1e-3)
    )


def test_log_one_minus_softmax_is_exact_for_saturated_logits():
    """log(1 - p_c) = logsumexp_{k≠c} z_k - logsumexp z, also where 1 - p_c is below the dtype's
    resolution: logits (100, -100, -100) give log 2 - 200 for class 0 (log1p(-p) would give -inf)."""
    z = torch.tensor([[100.0, -100.0, -100.0]]).unsqueeze(-1)
    value = log_one_minus_softmax(torch.log_softmax(z, 1))
    expected = [LN2 - 200 - math.log1p(2 * math.exp(-200)), -math.exp(-200), -math.exp(-200)]
    torch.testing.assert_close(value.squeeze(), torch.tensor(expected), rtol=1e-6, atol=1e-30)
    g = torch.Generator().manual_seed(10)
    z = (
        torch.randn(4, 5, 50, generator=g, dtype=torch.float64)
        * torch.tensor([1.0, 10.0, 50.0, 300.0])[:, None, None]
    )
    exact = torch.stack(
        [torch.cat([z[:, :c], z[:, c + 1 :]], 1).logsumexp(1) for c in range(5)], 1
    ) - z.logsumexp(1, keepdim=True)
    torch.testing.assert_close(log_one_minus_softmax(torch.log_softmax(z, 1)), exact, rtol=1e-12, atol=1e-12)


def test_log_one_minus_softmax_gradients_in_both_branches():
    """Logits scaled so that some pixels have a class above p = e^(-1/2) (the logsumexp branch) and some
    not (log1p(-p)): first and second derivatives are those of the formula."""
    g = torch.Generator().manual_seed(21)
    z = (torch.randn(2, 3, 8, generator=g, dtype=torch.float64) * 3).requires_grad_()
    log_p = torch.log_softmax(z, 1)
    assert (log_p > -0.5).any() and (log_p.amax(1) < -0.5).any()
    assert torch.autograd.gradcheck(lambda z: log_one_minus_softmax(torch.log_softmax(z, 1)), (z,))
    assert torch.autograd.gradgradcheck(lambda z: log_one_minus_softmax(torch.log_softmax(z, 1)), (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_wrong_predictions_cost_their_margin(dtype):
    """Logits ±100, all wrong: each pixel's one-vs-rest terms are about 200 (never inf), α = 1, β = 0.5:
    the target class costs ½ · 200 and the predicted class ½ · 200, per class over 2 classes."""
    t = torch.tensor([[0, 1, 0, 1]])
    z = (1 - one_hot(t, 2) * 2).to(dtype).mul(100).requires_grad_()
    value = combo_loss(z, t, alpha=1.0)
    assert value.item() == pytest.approx(0.5 * 200, rel=1e-6)
    (grad,) = torch.autograd.grad(value, z)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("loss", SOFTMAX, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dense", [False, True], ids=["index", "one-hot"])
def test_every_other_logit_minus_inf_is_legal(loss, dense):
    """A pixel whose non-target logits are all -inf has p_t = 1 exactly: log(1 - p_t) = -inf carries no
    weight, so the loss is finite with finite (not NaN) gradients."""
    z, t = inputs(11, (1, 3, 2, 3))
    z = z.detach().clone()
    z[0, :, 0, 0] = -math.inf
    z[0, t[0, 0, 0], 0, 0] = 1.5
    z.requires_grad_()
    target = one_hot(t, 3) if dense else t
    for checks in (True, False):
        with sl.input_checks(checks):
            value = loss(z, target)
            (grad,) = torch.autograd.grad(value, z)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_minus_inf_at_the_target_class_is_refused():
    z, t = inputs(12, (1, 3, 2, 2))
    z = z.detach().clone()
    z[0, t[0, 0, 0], 0, 0] = -math.inf
    with pytest.raises(sl.SegLossError, match="-inf"):
        combo_loss(z, t)
    assert torch.isfinite(combo_loss(z, t, alpha=0.0))  # Dice alone takes no log


# --- both: shared properties -----------------------------------------------------------------------------


@pytest.mark.parametrize("loss", SOFTMAX, ids=lambda f: f.__name__)
def test_index_and_one_hot_targets_agree(loss):
    z, t = inputs(13)
    values = [loss(z, target, reduction="none") for target in (t, one_hot(t, 3), one_hot(t, 3).bool())]
    for other in values[1:]:
        torch.testing.assert_close(values[0], other)
    grads = [torch.autograd.grad(v.sum(), z)[0] for v in values[:2]]
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("loss", SOFTMAX, ids=lambda f: f.__name__)
def test_ignore_index_equals_dropping_those_pixels(loss):
    """A 1-D row per sample: the ignored pixels cut out give the same per-(sample, class) loss."""
    z, t = inputs(14, (2, 3, 12), ignore=0.35)
    value = loss(z, t, ignore_index=IGNORE, reduction="none")
    for n in range(2):
        kept = t[n] != IGNORE
        alone = loss(z[n : n + 1, :, kept], t[n : n + 1, kept], reduction="none")
        torch.testing.assert_close(value[n : n + 1], alone)


@pytest.mark.parametrize("loss", BINARY, ids=lambda f: f.__name__)
def test_binary_ignore_index_equals_dropping_those_elements(loss):
    g = torch.Generator().manual_seed(15)
    z = torch.randn(1, 1, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, z.shape, generator=g)
    y[..., ::3] = IGNORE
    kept = y[0, 0] != IGNORE
    torch.testing.assert_close(loss(z, y, ignore_index=IGNORE), loss(z[..., kept], y[..., kept]))


@pytest.mark.parametrize("loss", SOFTMAX, ids=lambda f: f.__name__)
def test_batch_pooling_is_one_sample_of_the_whole_batch(loss):
    z, t = inputs(16, ignore=0.2)
    pooled = loss(z, t, batch=True, ignore_index=IGNORE, reduction="none")
    joined_z = torch.cat(list(z), -1).unsqueeze(0)
    joined_t = torch.cat(list(t), -1).unsqueeze(0)
    torch.testing.assert_close(pooled, loss(joined_z, joined_t, ignore_index=IGNORE, reduction="none")[0])


@pytest.mark.parametrize("loss", SOFTMAX + BINARY, ids=lambda f: f.__name__)
def test_perfect_prediction_gives_zero(loss):
    _, t = inputs(17)
    if loss in BINARY:
        y = torch.randint(0, 2, (2, 3, 5, 6))
        z = (y.double() * 2 - 1) * 100
    else:
        y, z = t, (one_hot(t, 3) * 2 - 1) * 100
    assert loss(z, y).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("loss", SOFTMAX, ids=lambda f: f.__name__)
def test_no_one_hot_of_the_logits_size_for_index_targets(loss):
    z, t = inputs(18, (2, 4, 16, 16), ignore=0.2)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        loss(z, t, ignore_index=IGNORE).backward()
    ops = {event.key for event in trace.key_averages()}
    assert not ops & {"aten::one_hot", "aten::scatter", "aten::scatter_", "aten::eye"}


@pytest.mark.parametrize(
    "module, options, option",
    [
        (SensitivitySpecificityLoss, {"r": 1.5}, "r"),
        (SensitivitySpecificityLoss, {"r": -0.1}, "r"),
        (BinarySensitivitySpecificityLoss, {"r": math.nan}, "r"),
        (SensitivitySpecificityLoss, {"r": [0.1, 0.2]}, "r"),
        (SensitivitySpecificityLoss, {"smooth": -1.0}, "smooth"),
        (ComboLoss, {"alpha": 2.0}, "alpha"),
        (ComboLoss, {"beta": -0.5}, "beta"),
        (BinaryComboLoss, {"beta": "0.5"}, "beta"),
        (ComboLoss, {"alpha": [0.5, 0.5, 0.5]}, "alpha"),
        (ComboLoss, {"sync": True}, "batch=True"),
    ],
)
def test_bad_options_raise(module, options, option):
    with pytest.raises(sl.SegLossError, match=option):
        module(**options)


def test_functions_check_options_too():
    z, t = inputs(19)
    with pytest.raises(sl.SegLossError, match="r .the sensitivity ratio. in"):
        sensitivity_specificity_loss(z, t, r=2.0)
    with pytest.raises(sl.SegLossError, match="alpha"):
        combo_loss(z, t, alpha=-1.0)


def test_modules_equal_functions_and_specs_build_them():
    z, t = inputs(20, ignore=0.1)
    pairs = [
        (SensitivitySpecificityLoss(r=0.2, ignore_index=IGNORE), sensitivity_specificity_loss, {"r": 0.2}),
        (ComboLoss(alpha=0.3, beta=0.7, ignore_index=IGNORE), combo_loss, {"alpha": 0.3, "beta": 0.7}),
    ]
    for module, function, options in pairs:
        torch.testing.assert_close(module(z, t), function(z, t, ignore_index=IGNORE, **options))
    assert isinstance(sl.create_loss("sensitivity_specificity(r=0.1)"), SensitivitySpecificityLoss)
    assert isinstance(sl.create_loss("combo(alpha=0.5, beta=0.7) + 0.5*dice"), torch.nn.Module)
    assert isinstance(sl.create_loss("binary_combo"), BinaryComboLoss)


# --- weight maps and masks (issue 19, item 9) ----------------------------------------------------------

P4, Y4, W4 = [0.8, 0.3, 0.6, 0.1], [1, 0, 1, 0], [2.0, 0.5, 1.0, 3.0]


def test_binary_ss_with_a_weight_map_by_hand():
    """p = (0.8, 0.3, 0.6, 0.1), y = (1, 0, 1, 0), ω = (2, 0.5, 1, 3), r = 0.25, s = 0:
    sens = (2·0.2² + 1·0.4²) / (2 + 1) = 0.24 / 3, spec = (0.5·0.3² + 3·0.1²) / (0.5 + 3) = 0.075 / 3.5,
    L = 0.25 · 0.24 / 3 + 0.75 · 0.075 / 3.5."""
    z, y, w = logit(P4).view(1, 1, 4), torch.tensor([[Y4]]), torch.tensor([W4], dtype=torch.float64)
    value = binary_sensitivity_specificity_loss(z, y, w, r=0.25, smooth=0.0)
    assert value.item() == pytest.approx(0.25 * 0.24 / 3 + 0.75 * 0.075 / 3.5, rel=1e-12)


def test_binary_combo_with_a_weight_map_by_hand():
    """The pixels above, α = β = 0.5, s = 0: Σ ω = 6.5,
    mBCE = -[2·0.5 log 0.8 + 0.5·0.5 log 0.7 + 1·0.5 log 0.6 + 3·0.5 log 0.9] / 6.5;
    TP = 2·0.8 + 0.6 = 2.2, Σ ω p = 1.6 + 0.15 + 0.6 + 0.3 = 2.65, Σ ω y = 3: Dice = 4.4 / 5.65;
    L = 0.5 mBCE + 0.5 (1 - 4.4 / 5.65)."""
    z, y, w = logit(P4).view(1, 1, 4), torch.tensor([[Y4]]), torch.tensor([W4], dtype=torch.float64)
    log = math.log
    mbce = -(1.0 * log(0.8) + 0.25 * log(0.7) + 0.5 * log(0.6) + 1.5 * log(0.9)) / 6.5
    expected = 0.5 * mbce + 0.5 * (1 - 4.4 / 5.65)
    assert binary_combo_loss(z, y, w, smooth=0.0).item() == pytest.approx(expected, rel=1e-12)


def weighted_references(p, y, w, r, alpha, beta, s):
    """The two losses' weighted forms on dense ``(N, C, P)`` with ``ω`` ``(N, 1, P)``: every sum over
    pixels times ω, the cross-entropy's mean over Σ ω."""
    error = (y - p) ** 2
    ss = r * (w * error * y).sum(-1) / ((w * y).sum(-1) + s)
    ss = ss + (1 - r) * (w * error * (1 - y)).sum(-1) / ((w * (1 - y)).sum(-1) + s)
    mbce = -(w * (beta * y * p.log() + (1 - beta) * (1 - y) * (1 - p).log())).sum(-1) / w.sum(-1)
    tp = (w * p * y).sum(-1)
    dice = (2 * tp + s) / ((w * p).sum(-1) + (w * y).sum(-1) + s)
    return ss, alpha * mbce + (1 - alpha) * (1 - dice)


@pytest.mark.parametrize("binary", [False, True], ids=["softmax", "binary"])
def test_weighted_losses_equal_the_weighted_references(binary):
    logits, target = inputs(31)
    g = torch.Generator().manual_seed(32)
    w = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    if binary:
        target = torch.rand(logits.shape, generator=g, dtype=torch.float64)  # soft, per channel
        p, ss_loss, combo = torch.sigmoid(logits), binary_sensitivity_specificity_loss, binary_combo_loss
    else:
        target = one_hot(target, 3)
        p, ss_loss, combo = torch.softmax(logits, 1), sensitivity_specificity_loss, combo_loss
    ss, cb = weighted_references(
        p.flatten(2), target.flatten(2), w.flatten(1)[:, None], r=0.3, alpha=0.4, beta=0.7, s=1e-5
    )
    torch.testing.assert_close(ss_loss(logits, target, w, r=0.3, reduction="none"), ss)
    torch.testing.assert_close(combo(logits, target, w, alpha=0.4, beta=0.7, reduction="none"), cb)


def _repeated(logits, target, counts):
    """Every pixel of the batch repeated ``counts`` times, side by side in one long row: one sample."""
    rows_z, rows_y = [], []
    for n in range(logits.shape[0]):
        k = counts[n].flatten()
        rows_z.append(logits[n].flatten(1).repeat_interleave(k, dim=1))
        rows_y.append(target[n].flatten(target.ndim - 3).repeat_interleave(k, dim=-1))
    return torch.cat(rows_z, 1)[None], torch.cat(rows_y, -1)[None]


@pytest.mark.parametrize("kind", ["index", "soft", "binary", "binary_soft"])
@pytest.mark.parametrize("name", ["sensitivity_specificity", "combo"])
def test_integer_weights_repeat_the_pixel(name, kind):
    """ω ∈ {0, 1, 2, 3} is the loss with each pixel repeated ω times (pooled over the batch): every
    statistic is a sum over pixels (the cross-entropy's count too)."""
    logits, target = inputs(33, (2, 3, 4, 5), ignore=0.2 if kind == "index" else 0.0)
    g = torch.Generator().manual_seed(34)
    if kind == "soft":
        target = torch.softmax(torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64), 1)
    elif kind == "binary":
        target = torch.randint(0, 2, logits.shape, generator=g)
    elif kind == "binary_soft":
        target = torch.rand(logits.shape, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 4, (2, 4, 5), generator=g)
    loss = sl.create_loss(f"binary_{name}" if kind.startswith("binary") else name)
    loss = type(loss)(batch=True, ignore_index=IGNORE)
    weighted = loss(logits, target, weight_map=counts.double())
    torch.testing.assert_close(weighted, loss(*_repeated(logits, target, counts)))


@pytest.mark.parametrize("loss", SOFTMAX + BINARY, ids=lambda f: f.__name__)
def test_mask_on_a_soft_target_drops_the_pixels(loss):
    """A soft target's masked pixels count nowhere: the loss of the kept pixels alone; a NaN logit there
    (data checks off) reaches neither value nor gradient."""
    logits, _ = inputs(35, (1, 3, 4, 6))
    g = torch.Generator().manual_seed(36)
    if loss in BINARY:
        soft = torch.rand(1, 3, 4, 6, generator=g, dtype=torch.float64)
    else:
        soft = torch.softmax(torch.randn(1, 3, 4, 6, generator=g, dtype=torch.float64), 1)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[..., 3:] = True
    poisoned = logits.detach().clone()
    poisoned[..., :3] = torch.nan
    poisoned.requires_grad_()
    with sl.input_checks(False):
        value = loss(poisoned, soft, mask=mask)
    torch.testing.assert_close(value, loss(logits[..., 3:], soft[..., 3:]))
    (gradient,) = torch.autograd.grad(value, poisoned)
    assert torch.isfinite(gradient).all() and (gradient[..., :3] == 0).all()


def test_weighted_modules_functions_and_compounds_agree():
    logits, target = inputs(37)
    g = torch.Generator().manual_seed(38)
    w = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    m = torch.rand(2, 5, 6, generator=g) > 0.3
    binary_target = one_hot(target, 3)
    pairs = [
        (SensitivitySpecificityLoss, sensitivity_specificity_loss, target, "sensitivity_specificity"),
        (ComboLoss, combo_loss, target, "combo"),
        (BinarySensitivitySpecificityLoss, binary_sensitivity_specificity_loss, binary_target,
         "binary_sensitivity_specificity"),
        (BinaryComboLoss, binary_combo_loss, binary_target, "binary_combo"),
    ]  # fmt: skip
    for module, function, y, name in pairs:
        option = "r" if "sensitivity" in name else "alpha"
        value = module(**{option: 0.3})(logits, y, w, m)
        torch.testing.assert_close(value, function(logits, y, w, m, **{option: 0.3}))
        dice = "binary_dice" if name.startswith("binary") else "dice"
        expected = getattr(sl, f"{dice}_loss")(logits, y, w, m) + value
        criterion = sl.create_loss(f"{dice} + {name}({option}=0.3)")
        torch.testing.assert_close(criterion(logits, y, weight_map=w, mask=m), expected)
