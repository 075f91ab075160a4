"""Asymmetric Unified Focal loss (Yeung et al. 2022): hand-derived values, each part against a plain-torch
statement of the paper's formula, the special cases that hold exactly, the binary form as the softmax form
on ``(0, z)``, ignore_index as dropping pixels, and MONAI's AsymmetricUnifiedFocalLoss with its documented
differences (it halves the focal part; its ignore_index keeps ignored pixels in the focal mean)."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE

import seglosses as sl
import seglosses.functional as SF
from seglosses.losses.unified_focal import (
    BinaryUnifiedFocalLoss,
    UnifiedFocalLoss,
    binary_unified_focal_loss,
    unified_focal_loss,
)

monai_losses = pytest.importorskip("monai.losses", reason="MONAI (the [docs] extra) is not installed")


def logit(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def random_inputs(shape=(3, 4, 5, 6), seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return logits.requires_grad_(), target


def ignore_some(target, fraction=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return target.masked_fill(torch.rand(target.shape, generator=g) < fraction, IGNORE)


# --- an independent statement of the paper's formula ---------------------------------------------------


def paper_loss(probs, y, valid, *, delta, gamma, lam, smooth, batch=False):
    """``λ L_aF + (1 - λ) L_aFT`` from probabilities ``(N, C, *S)`` (class 0 the background), a one-hot or
    soft target of that shape and the valid pixels ``(N, *S)``, written out as in the paper: the pixel
    mean of ``Σ_c y_c w_c (1 - p_c)^γ_c (-log p_c)`` and the class mean of the Tversky terms, per sample
    (over the whole batch with ``batch``), then the mean over samples."""
    c = probs.shape[1]
    weights = torch.tensor([1 - delta] + [delta] * (c - 1), dtype=probs.dtype).view(
        1, c, *[1] * (probs.ndim - 2)
    )
    gammas = torch.tensor([gamma] + [0.0] * (c - 1), dtype=probs.dtype).view_as(weights)
    mask = valid.unsqueeze(1).to(probs.dtype)
    pixel = (y * weights * (1 - probs) ** gammas * -torch.log(probs)).sum(1, keepdim=True) * mask
    dims = tuple(range(2, probs.ndim))
    if batch:
        dims = (0, *dims)
    focal = pixel.sum(dims) / mask.sum(dims)
    tp = (probs * y * mask).sum(dims)
    fp = (probs * (1 - y) * mask).sum(dims)
    fn = ((1 - probs) * y * mask).sum(dims)
    index = (tp + smooth) / (tp + delta * fn + (1 - delta) * fp + smooth)
    region = torch.cat([1 - index[..., :1], (1 - index[..., 1:]) ** (1 - gamma)], dim=-1).mean(-1)
    return (lam * focal.squeeze(-1) + (1 - lam) * region).mean()


def paper_binary_loss(logits, y, valid, **options):
    """Each sigmoid channel as a two-class problem ``(1 - p, p)``, then the mean over channels."""
    p = torch.sigmoid(logits)
    losses = []
    for k in range(logits.shape[1]):
        probs = torch.stack([1 - p[:, k], p[:, k]], dim=1)
        target = torch.stack([1 - y[:, k], y[:, k]], dim=1).to(p.dtype)
        losses.append(paper_loss(probs, target, valid[:, k], **options))
    return torch.stack(losses).mean()


def one_hot(target, c):
    return F.one_hot(target.clamp(0, c - 1), c).movedim(-1, 1).to(torch.float64)


def grad(value, x):
    return torch.autograd.grad(value, x)[0]


# --- hand-derived values -------------------------------------------------------------------------------


def test_softmax_by_hand():
    """Three pixels, p = (0.7, 0.2, 0.1) label 0, (0.1, 0.6, 0.3) label 1, (0.2, 0.2, 0.6) label 2;
    δ = 0.6, γ = 0.5, λ = 0.5, s = 0.

    L_aF = [0.4 · (1 - 0.7)^0.5 · (-ln 0.7) + 0.6 · (-ln 0.6) + 0.6 · (-ln 0.6)] / 3.
    Class 0: TP = 0.7, FP = 0.1 + 0.2 = 0.3, FN = 0.3 -> mTI = 0.7 / (0.7 + 0.6·0.3 + 0.4·0.3) = 0.7;
    classes 1, 2: TP = 0.6, FP = 0.4, FN = 0.4 -> mTI = 0.6 / (0.6 + 0.24 + 0.16) = 0.6.
    L_aFT = [(1 - 0.7) + 2 · (1 - 0.6)^0.5] / 3."""
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]], dtype=torch.float64)
    z = p.log().T.reshape(1, 3, 3)  # softmax(log p) = p
    y = torch.tensor([[0, 1, 2]])
    background = 0.4 * math.sqrt(0.3) * -math.log(0.7)
    foreground = 0.6 * -math.log(0.6)
    focal = (background + 2 * foreground) / 3
    region = (0.3 + 2 * math.sqrt(0.4)) / 3
    assert unified_focal_loss(z, y, smooth=0.0).item() == pytest.approx(0.5 * focal + 0.5 * region, rel=1e-12)
    # unreduced: λ C A_c + (1 - λ) T_c, A_c the class's share of L_aF
    terms = unified_focal_loss(z, y, smooth=0.0, reduction="none")
    expected = [0.5 * background + 0.5 * 0.3, 0.5 * foreground + 0.5 * math.sqrt(0.4)]
    torch.testing.assert_close(
        terms, torch.tensor([[expected[0], expected[1], expected[1]]], dtype=torch.float64)
    )


def test_binary_by_hand():
    """p = (0.8, 0.3, 0.6, 0.1), y = (1, 0, 1, 0); δ = 0.6, γ = 0.5, λ = 0.5, s = 0.

    L_aF = [0.6 (-ln 0.8) + 0.6 (-ln 0.6) + 0.4 · 0.3^0.5 (-ln 0.7) + 0.4 · 0.1^0.5 (-ln 0.9)] / 4.
    Foreground: TP = 1.4, FP = 0.4, FN = 0.6 -> mTI = 1.4 / (1.4 + 0.6·0.6 + 0.4·0.4) = 1.4 / 1.92.
    Background (1 - p, 1 - y): TP = TN = 0.7 + 0.9 = 1.6, FN = 0.4, FP = 0.6
    -> mTI = 1.6 / (1.6 + 0.6·0.4 + 0.4·0.6) = 1.6 / 2.08.
    L_aFT = [(1 - 1.6/2.08) + (1 - 1.4/1.92)^0.5] / 2."""
    z = logit([0.8, 0.3, 0.6, 0.1]).view(1, 1, 4)
    y = torch.tensor([[[1, 0, 1, 0]]])
    focal = (
        0.6 * -math.log(0.8)
        + 0.6 * -math.log(0.6)
        + 0.4 * math.sqrt(0.3) * -math.log(0.7)
        + 0.4 * math.sqrt(0.1) * -math.log(0.9)
    ) / 4
    region = ((1 - 1.6 / 2.08) + (1 - 1.4 / 1.92) ** 0.5) / 2
    value = binary_unified_focal_loss(z, y, smooth=0.0)
    assert value.item() == pytest.approx(0.5 * focal + 0.5 * region, rel=1e-12)


# --- each part against the paper's formula --------------------------------------------------------------


@pytest.mark.parametrize("lam", [1.0, 0.0, 0.3])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_softmax_equals_the_papers_formula(lam, batch, ignore):
    """λ = 1: the asymmetric focal part alone; λ = 0: the asymmetric focal Tversky part alone; values and
    gradients, float64, with per-sample valid counts that differ (ignore_index)."""
    logits, target = random_inputs()
    if ignore:
        target = ignore_some(target)
    options = dict(delta=0.7, gamma=0.4, lam=lam, smooth=1e-5)
    ours = unified_focal_loss(logits, target, batch=batch, ignore_index=IGNORE, **options)
    probs = torch.softmax(logits, 1)
    theirs = paper_loss(probs, one_hot(target, 4), target != IGNORE, batch=batch, **options)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad(ours, logits), grad(theirs, logits))


@pytest.mark.parametrize("lam", [1.0, 0.0, 0.6])
def test_soft_target_equals_the_papers_formula(lam):
    logits, _ = random_inputs((2, 3, 4, 5))
    soft = torch.softmax(
        torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)), 1
    )
    options = dict(delta=0.6, gamma=0.5, lam=lam, smooth=1e-6)
    ours = unified_focal_loss(logits, soft, **options)
    theirs = paper_loss(torch.softmax(logits, 1), soft, torch.ones(2, 4, 5, dtype=torch.bool), **options)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad(ours, logits), grad(theirs, logits))


@pytest.mark.parametrize("lam", [1.0, 0.0, 0.5])
@pytest.mark.parametrize("ignore", [False, True])
def test_binary_equals_the_papers_formula(lam, ignore):
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    target = torch.randint(0, 2, logits.shape, generator=g)
    if ignore:
        target = ignore_some(target, seed=5)
    options = dict(delta=0.65, gamma=0.3, lam=lam, smooth=1e-5)
    ours = binary_unified_focal_loss(logits, target, ignore_index=IGNORE, **options)
    valid = target != IGNORE
    theirs = paper_binary_loss(logits, target.clamp(0, 1), valid, **options)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad(ours, logits), grad(theirs, logits))


def test_binary_soft_target_equals_the_papers_formula():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    soft = torch.rand(2, 2, 5, generator=g, dtype=torch.float64)
    ours = binary_unified_focal_loss(logits, soft)
    theirs = paper_binary_loss(logits, soft, torch.ones_like(soft, dtype=torch.bool), delta=0.6, gamma=0.5,
                               lam=0.5, smooth=1e-6)  # fmt: skip
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad(ours, logits), grad(theirs, logits))


# --- special cases and identities ----------------------------------------------------------------------


@pytest.mark.parametrize("delta", [0.5, 0.7])
@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_gamma_zero_is_weighted_cross_entropy_plus_tversky(delta, lam):
    """γ = 0: the focal part is cross-entropy with α = (1 - δ, δ, ..., δ) averaged over pixels (focal loss
    with γ = 0) and the region part the Tversky loss with α = 1 - δ on FP, β = δ on FN."""
    logits, target = random_inputs()
    ours = unified_focal_loss(logits, target, delta=delta, gamma=0.0, lam=lam, smooth=1e-5)
    focal = SF.focal_loss(logits, target, gamma=0.0, alpha=[1 - delta] + [delta] * 3)
    tversky = SF.tversky_loss(logits, target, alpha=1 - delta, beta=delta, smooth=1e-5)
    expected = lam * focal + (1 - lam) * tversky
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(grad(ours, logits), grad(expected, logits))


def test_symmetric_gamma_zero_recovers_cross_entropy_and_dice():
    """δ = 0.5, γ = 0: λ = 1 is half the cross-entropy, λ = 0 the Dice loss with smooth 2s
    ((TP + s) / (TP + FP/2 + FN/2 + s) = (2 TP + 2s) / (2 TP + FP + FN + 2s))."""
    logits, target = random_inputs(seed=7)
    options = dict(delta=0.5, gamma=0.0, smooth=1e-5)
    ce = unified_focal_loss(logits, target, lam=1.0, **options)
    torch.testing.assert_close(ce, 0.5 * SF.cross_entropy_loss(logits, target))
    torch.testing.assert_close(grad(ce, logits), grad(0.5 * SF.cross_entropy_loss(logits, target), logits))
    dice = unified_focal_loss(logits, target, lam=0.0, **options)
    torch.testing.assert_close(dice, SF.dice_loss(logits, target, smooth=2e-5))
    torch.testing.assert_close(grad(dice, logits), grad(SF.dice_loss(logits, target, smooth=2e-5), logits))


def test_focal_suppression_touches_the_background_only():
    """With every pixel foreground, γ changes nothing in the focal part (λ = 1)."""
    logits, target = random_inputs(seed=8)
    target = target.clamp_min(1)
    values = [unified_focal_loss(logits, target, lam=1.0, gamma=gamma) for gamma in (0.0, 0.3, 0.9)]
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(values[0], values[2])


@pytest.mark.parametrize("ignore", [False, True])
def test_binary_is_the_softmax_form_on_zero_and_the_logit(ignore):
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, logits.shape, generator=g)
    if ignore:
        target = ignore_some(target, seed=10)
    binary = binary_unified_focal_loss(logits, target, ignore_index=IGNORE, reduction="none")
    per_channel = []
    for k in range(3):
        pair = torch.stack([torch.zeros_like(logits[:, k]), logits[:, k]], dim=1)  # softmax(0, z)_1 = σ(z)
        softmax = unified_focal_loss(pair, target[:, k], ignore_index=IGNORE, reduction="none")
        per_channel.append(softmax.mean(-1))
    softmax = torch.stack(per_channel, dim=1)
    torch.testing.assert_close(binary, softmax)
    torch.testing.assert_close(grad(binary.sum(), logits), grad(softmax.sum(), logits))


def test_one_hot_target_equals_index_target():
    logits, target = random_inputs(seed=11)
    index = unified_focal_loss(logits, target)
    dense = unified_focal_loss(logits, one_hot(target, 4))
    torch.testing.assert_close(index, dense)
    torch.testing.assert_close(grad(index, logits), grad(dense, logits))


def test_unreduced_terms_average_to_each_samples_loss():
    logits, target = random_inputs(seed=12)
    target = ignore_some(target, seed=13)
    terms = unified_focal_loss(logits, target, ignore_index=IGNORE, reduction="none")
    assert terms.shape == (3, 4)
    for n in range(3):
        alone = unified_focal_loss(logits[n : n + 1], target[n : n + 1], ignore_index=IGNORE)
        torch.testing.assert_close(terms[n].mean(), alone)
    pooled = unified_focal_loss(logits, target, ignore_index=IGNORE, batch=True, reduction="none")
    assert pooled.shape == (4,)


# --- ignore_index ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [False, True])
def test_ignore_index_equals_dropping_the_pixels(batch):
    logits, target = random_inputs(seed=14)
    target = target.clone()
    target[..., 0] = IGNORE  # the first column of every sample
    kept = unified_focal_loss(logits[..., 1:], target[..., 1:], batch=batch)
    torch.testing.assert_close(unified_focal_loss(logits, target, ignore_index=IGNORE, batch=batch), kept)
    g = torch.Generator().manual_seed(15)
    z = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, z.shape, generator=g)
    y[..., :2] = IGNORE
    kept = binary_unified_focal_loss(z[..., 2:], y[..., 2:], batch=batch)
    torch.testing.assert_close(binary_unified_focal_loss(z, y, ignore_index=IGNORE, batch=batch), kept)


def test_double_backward_of_every_path():
    """The second derivative of the formula on the index (with ignored pixels), dense and binary paths."""
    logits, target = random_inputs((1, 3, 3, 3), seed=16)
    target = target.clone()
    target[0, 0, 0] = IGNORE
    z = logits.detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: unified_focal_loss(x, target, ignore_index=IGNORE), (z,))
    assert torch.autograd.gradgradcheck(lambda x: unified_focal_loss(x, one_hot(target, 3)), (z,))
    y = torch.randint(0, 2, z.shape, generator=torch.Generator().manual_seed(17))
    y[0, 0, 0, 0] = IGNORE
    assert torch.autograd.gradgradcheck(lambda x: binary_unified_focal_loss(x, y, ignore_index=IGNORE), (z,))


# --- MONAI -----------------------------------------------------------------------------------------------


def monai_value(weight, delta, gamma):
    """MONAI's AsymmetricUnifiedFocalLoss as a call on our loss: it averages the focal part over the two
    classes too (half the paper's value), so MONAI(w) = (1 - w/2) · ours(lam = w / (2 - w))."""
    return 1 - weight / 2, dict(lam=weight / (2 - weight), delta=delta, gamma=gamma, smooth=1e-7)


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("delta, gamma", [(0.7, 0.5), (0.6, 0.75)])
@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)], ids=["2d", "3d"])
def test_binary_equals_monai(weight, delta, gamma, spatial):
    """One sigmoid channel: MONAI takes the probabilities σ(z) (values and gradients w.r.t. z)."""
    g = torch.Generator().manual_seed(18)
    logits = (torch.randn(2, 1, *spatial, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    target = torch.randint(0, 2, logits.shape, generator=g)
    scale, options = monai_value(weight, delta, gamma)
    ours = scale * binary_unified_focal_loss(logits, target, **options)
    reference = monai_losses.AsymmetricUnifiedFocalLoss(weight=weight, delta=delta, gamma=gamma)
    theirs = reference(torch.sigmoid(logits), target.double())
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad(ours, logits), grad(theirs, logits))


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_two_class_softmax_equals_monai(weight):
    """Two softmax classes: MONAI takes softmax(z) and a one-hot made of the index target."""
    logits, target = random_inputs((2, 2, 5, 6), seed=19)
    scale, options = monai_value(weight, 0.6, 0.5)
    ours = scale * unified_focal_loss(logits, target, **options)
    reference = monai_losses.AsymmetricUnifiedFocalLoss(to_onehot_y=True, weight=weight, delta=0.6, gamma=0.5)
    theirs = reference(torch.softmax(logits, 1), target[:, None])
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad(ours, logits), grad(theirs, logits))


def test_monai_ignore_index_keeps_ignored_pixels_in_the_focal_mean():
    """Documented difference: MONAI's focal part divides by every pixel, ignored ones included (and its
    clamp gives each ignored pixel an ε = 1e-7 false positive). Reconstructed from our per-sample focal
    part (λ = 1, one term per sample and channel) times |V_n| / |S|."""
    g = torch.Generator().manual_seed(20)
    logits = torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, logits.shape, generator=g)
    target[0, 0, :3] = IGNORE  # 18 of 36 pixels ignored in the first sample, none in the second
    kept = torch.tensor([18.0, 36.0], dtype=torch.float64)
    options = dict(delta=0.7, gamma=0.5, smooth=1e-7, ignore_index=IGNORE)
    region = binary_unified_focal_loss(logits, target, lam=0.0, **options)
    focal = binary_unified_focal_loss(logits, target, lam=1.0, reduction="none", **options)[:, 0]
    monai_focal = (focal * kept / 36).mean() / 2
    theirs = monai_losses.AsymmetricUnifiedFocalLoss(weight=0.5, delta=0.7, gamma=0.5, ignore_index=IGNORE)(
        torch.sigmoid(logits), target.double()
    )
    torch.testing.assert_close(theirs, 0.5 * monai_focal + 0.5 * region, atol=1e-5, rtol=0)
    scale, equal_without_ignore = monai_value(0.5, 0.7, 0.5)
    ours = scale * binary_unified_focal_loss(logits, target, ignore_index=IGNORE, **equal_without_ignore)
    assert not torch.isclose(ours, theirs, atol=1e-3)  # the difference is the denominator's, and real


# --- options ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value",
    [("delta", 1.5), ("delta", -0.1), ("gamma", 1.0), ("gamma", -0.5), ("lam", 1.5), ("lam", -0.1),
     ("smooth", -1.0), ("batch", "yes"), ("delta", float("nan"))],
)  # fmt: skip
def test_bad_options_raise(option, value):
    logits, target = random_inputs((1, 2, 3, 3))
    for module in (UnifiedFocalLoss, BinaryUnifiedFocalLoss):
        with pytest.raises(sl.SegLossError, match=option):
            module(**{option: value})
    with pytest.raises(sl.SegLossError, match=option):
        unified_focal_loss(logits, target, **{option: value})
    with pytest.raises(sl.SegLossError, match="gamma"):
        sl.create_loss("unified_focal(gamma=1)")


def test_options_the_loss_does_not_take_are_refused_with_a_hint():
    with pytest.raises(sl.SegLossError, match="did you mean"):
        UnifiedFocalLoss(lamb=0.5)
    with pytest.raises(sl.SegLossError, match="weight"):
        UnifiedFocalLoss(weight=[1.0, 2.0])


def test_registered_with_the_paper():
    entries = {entry.name: entry for entry in sl.list_losses(details=True)}
    for name, domain in (("unified_focal", "softmax"), ("binary_unified_focal", "binary")):
        assert entries[name].domain == domain and entries[name].kind == "region"
        assert "Yeung et al. 2022" in entries[name].description
    assert isinstance(sl.create_loss("unified_focal(delta=0.7, lam=0.3)"), UnifiedFocalLoss)


# --- weight maps and masks (issue 19, item 9) -------------------------------------------------------------


def test_weight_map_by_hand():
    """C = 2, δ = 0.6, γ = 0.5, λ = 0.5, s = 0; pixels p_1 = (0.8, 0.3, 0.6), y = (1, 0, 1), ω = (2, 0.5, 1),
    so p_0 = (0.2, 0.7, 0.4) and Σ ω = 3.5.
    L_aF = [2·0.6·(-log 0.8) + 0.5·0.4·0.3^0.5·(-log 0.7) + 1·0.6·(-log 0.6)] / 3.5.
    Background: TP = 0.5·0.7, FP = 2·0.2 + 1·0.4, FN = 0.5·0.3; foreground: TP = 2·0.8 + 0.6, FP = 0.5·0.3,
    FN = 2·0.2 + 0.4; mTI = TP / (TP + 0.6 FN + 0.4 FP); L_aFT = [(1 - mTI_0) + (1 - mTI_1)^0.5] / 2."""
    p1 = torch.tensor([0.8, 0.3, 0.6], dtype=torch.float64)
    z = torch.stack([torch.zeros(3, dtype=torch.float64), logit(p1.tolist())])[None]  # (1, 2, 3)
    y = torch.tensor([[1, 0, 1]])
    w = torch.tensor([[2.0, 0.5, 1.0]], dtype=torch.float64)
    focal = (2 * 0.6 * -math.log(0.8) + 0.5 * 0.4 * 0.3**0.5 * -math.log(0.7) + 0.6 * -math.log(0.6)) / 3.5
    tp0, fp0, fn0 = 0.5 * 0.7, 2 * 0.2 + 0.4, 0.5 * 0.3
    tp1, fp1, fn1 = 2 * 0.8 + 0.6, 0.5 * 0.3, 2 * 0.2 + 0.4
    mti0, mti1 = tp0 / (tp0 + 0.6 * fn0 + 0.4 * fp0), tp1 / (tp1 + 0.6 * fn1 + 0.4 * fp1)
    expected = 0.5 * focal + 0.5 * ((1 - mti0) + (1 - mti1) ** 0.5) / 2
    options = dict(delta=0.6, gamma=0.5, lam=0.5, smooth=0.0)
    assert unified_focal_loss(z, y, w, **options).item() == pytest.approx(expected, rel=1e-12)
    # the binary form on the logit of class 1 is the same two-class problem
    binary = binary_unified_focal_loss(z[:, 1:], y[:, None], w, **options)
    assert binary.item() == pytest.approx(expected, rel=1e-12)


def _repeated(logits, target, counts):
    """Every pixel of the batch repeated ``counts`` times, side by side in one long row: one sample."""
    rows_z, rows_y = [], []
    for n in range(logits.shape[0]):
        k = counts[n].flatten()
        rows_z.append(logits[n].flatten(1).repeat_interleave(k, dim=1))
        rows_y.append(target[n].flatten(target.ndim - 3).repeat_interleave(k, dim=-1))
    return torch.cat(rows_z, 1)[None], torch.cat(rows_y, -1)[None]


@pytest.mark.parametrize("kind", ["index", "soft", "binary", "binary_soft"])
def test_integer_weights_repeat_the_pixel(kind):
    """ω ∈ {0, 1, 2, 3} is the loss with each pixel repeated ω times (pooled over the batch): the focal
    part's weighted mean and the weighted Tversky statistics are the repeated ones."""
    logits, target = random_inputs((2, 3, 4, 5), seed=21)
    g = torch.Generator().manual_seed(22)
    if kind == "soft":
        target = torch.softmax(torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64), 1)
    elif kind == "binary":
        target = torch.randint(0, 2, logits.shape, generator=g)
    elif kind == "binary_soft":
        target = torch.rand(logits.shape, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 4, (2, 4, 5), generator=g)
    loss = BinaryUnifiedFocalLoss(batch=True) if kind.startswith("binary") else UnifiedFocalLoss(batch=True)
    weighted = loss(logits, target, weight_map=counts.double())
    torch.testing.assert_close(weighted, loss(*_repeated(logits, target, counts)))


@pytest.mark.parametrize("binary", [False, True], ids=["softmax", "binary"])
def test_mask_on_a_soft_target_drops_the_pixels(binary):
    """A soft target's masked pixels count nowhere: the loss of the kept pixels alone; a NaN logit there
    (data checks off) reaches neither value nor gradient."""
    logits, _ = random_inputs((1, 3, 4, 6), seed=23)
    g = torch.Generator().manual_seed(24)
    if binary:
        soft, loss = torch.rand(1, 3, 4, 6, generator=g, dtype=torch.float64), binary_unified_focal_loss
    else:
        soft = torch.softmax(torch.randn(1, 3, 4, 6, generator=g, dtype=torch.float64), 1)
        loss = unified_focal_loss
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


def test_weighted_module_function_and_compound_agree():
    logits, target = random_inputs((2, 3, 5, 6), seed=25)
    g = torch.Generator().manual_seed(26)
    w = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    m = torch.rand(2, 5, 6, generator=g) > 0.3
    value = UnifiedFocalLoss(lam=0.3)(logits, target, w, m)
    torch.testing.assert_close(value, unified_focal_loss(logits, target, w, m, lam=0.3))
    criterion = sl.create_loss("dice + unified_focal(lam=0.3)")
    expected = sl.dice_loss(logits, target, w, m) + value
    torch.testing.assert_close(criterion(logits, target, weight_map=w, mask=m), expected)
    binary_target = one_hot(target, 3)
    value = BinaryUnifiedFocalLoss()(logits, binary_target, w, m)
    torch.testing.assert_close(value, binary_unified_focal_loss(logits, binary_target, w, m))
    criterion = sl.create_loss("binary_dice + binary_unified_focal")
    expected = sl.binary_dice_loss(logits, binary_target, w, m) + value
    torch.testing.assert_close(criterion(logits, binary_target, weight_map=w, mask=m), expected)
