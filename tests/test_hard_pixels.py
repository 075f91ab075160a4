"""TopK cross-entropy (nnU-Net) and OHEM cross-entropy (mmsegmentation): hand-derived values and
re-statements of the references' documented algorithms (neither library is installed here)."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE

import seglosses as sl


def inputs(seed=0, shape=(2, 4, 6, 5)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return logits, target


def test_topk_by_hand():
    """Two classes, four pixels with p_t = (0.9, 0.5, 0.2, 0.7): CE = -log p_t; k = 50 keeps the two
    largest, -log 0.2 and -log 0.5."""
    p = torch.tensor([0.9, 0.5, 0.2, 0.7], dtype=torch.float64)
    logits = torch.stack([torch.zeros(4, dtype=torch.float64), torch.log(p / (1 - p))]).unsqueeze(0)
    target = torch.ones(1, 4, dtype=torch.long)
    loss = sl.topk_ce_loss(logits, target, k=50)
    assert loss.item() == pytest.approx((-math.log(0.2) - math.log(0.5)) / 2)


def test_topk_100_is_cross_entropy_and_matches_nnunets_rule():
    logits, target = inputs()
    torch.testing.assert_close(sl.topk_ce_loss(logits, target, k=100), F.cross_entropy(logits, target))
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten()
    kept = int(per_pixel.numel() * 10 / 100)  # nnU-Net's TopKLoss: int(num_voxels * k / 100)
    reference = per_pixel.topk(kept).values.mean()
    torch.testing.assert_close(sl.topk_ce_loss(logits, target, k=10), reference)


def test_topk_per_image_and_ignore():
    logits, target = inputs(1)
    target[0, :2] = IGNORE  # image 0 has 20 valid pixels, image 1 has 30
    loss = sl.topk_ce_loss(logits, target, k=25, per_image=True, ignore_index=IGNORE)
    means = []
    for image in range(2):
        valid = target[image] != IGNORE
        ce = F.cross_entropy(logits[image : image + 1], target[image : image + 1], ignore_index=IGNORE,
                             reduction="none")[0][valid]  # fmt: skip
        means.append(ce.topk(max(1, int(ce.numel() * 25 / 100))).values.mean())
    torch.testing.assert_close(loss, torch.stack(means).mean())
    loss.backward()
    assert not logits.grad[0, :, :2].any()  # ignored pixels are never kept


def test_topk_none_marks_the_kept_pixels():
    logits, target = inputs(2)
    none = sl.topk_ce_loss(logits, target, k=20, reduction="none")
    assert none.shape == target.shape and int((none > 0).sum()) == int(60 * 20 / 100)
    torch.testing.assert_close(none.sum(), sl.topk_ce_loss(logits, target, k=20, reduction="sum"))


def mmseg_ohem(logits, target, thresh, min_kept, ignore_index):
    """mmsegmentation's OHEMPixelSampler, re-stated from its documented algorithm: the valid pixels with
    p_t below max(thresh, the (min_kept · N)-th smallest p_t), and its mean over every pixel."""
    with torch.no_grad():
        p_t = torch.softmax(logits, 1).gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
        valid = target != ignore_index
        ordered = p_t[valid].sort().values
        floor = ordered[min(min_kept * logits.shape[0], ordered.numel() - 1)] if ordered.numel() else 0.0
        kept = valid & (p_t < max(float(floor), thresh))
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return (ce * kept).sum() / kept.sum(), (ce * kept).mean()


@pytest.mark.parametrize("thresh, min_kept", [(0.7, 10), (0.3, 5), (0.9, 0), (0.1, 1000)])
def test_ohem_equals_mmsegs_rule(thresh, min_kept):
    logits, target = inputs(3)
    target[1, 0] = IGNORE
    ours = sl.ohem_ce_loss(logits, target, thresh=thresh, min_kept=min_kept, ignore_index=IGNORE)
    over_kept, over_all = mmseg_ohem(logits, target, thresh, min_kept, IGNORE)
    torch.testing.assert_close(ours, over_kept)
    kept = sl.ohem_ce_loss(logits, target, thresh=thresh, min_kept=min_kept, ignore_index=IGNORE,
                           reduction="none") > 0  # fmt: skip
    torch.testing.assert_close(ours * kept.sum() / target.numel(), over_all)  # mmseg's mean


def test_ohem_one_hot_equals_index_and_bad_options_raise():
    logits, target = inputs()
    one_hot = F.one_hot(target, 4).movedim(-1, 1).double()
    torch.testing.assert_close(
        sl.ohem_ce_loss(logits, one_hot, min_kept=7), sl.ohem_ce_loss(logits, target, min_kept=7)
    )
    with pytest.raises(sl.SegLossError, match="thresh"):
        sl.OHEMCELoss(thresh=1.5)
    with pytest.raises(sl.SegLossError, match="k "):
        sl.TopKCELoss(k=0)


# --------------------------------------------------------------------------- weight maps and masks (issue 19)


def four_pixels():
    """Two classes, four pixels of class 1 with p_t = (0.9, 0.5, 0.2, 0.7): CE = -log p_t."""
    p = torch.tensor([0.9, 0.5, 0.2, 0.7], dtype=torch.float64)
    logits = torch.stack([torch.zeros(4, dtype=torch.float64), torch.log(p / (1 - p))]).unsqueeze(0)
    return logits.requires_grad_(), torch.ones(1, 4, dtype=torch.long)


def test_topk_weighted_by_hand():
    """ω = (1, 2, 0.5, 1): W = 4.5, k = 50 keeps K = ⌊2.25⌋ = 2 of the mass. In decreasing CE the pixel
    with p_t = 0.2 gives all its 0.5, the one with p_t = 0.5 the remaining 1.5 of its 2:
    mean = (0.5 ln 5 + 1.5 ln 2) / 2; none holds κ_i L_i."""
    logits, target = four_pixels()
    weights = torch.tensor([[1.0, 2.0, 0.5, 1.0]], dtype=torch.float64)
    value = sl.topk_ce_loss(logits, target, weights, k=50)
    assert value.item() == pytest.approx((0.5 * math.log(5) + 1.5 * math.log(2)) / 2)
    none = sl.topk_ce_loss(logits, target, weights, k=50, reduction="none")
    expected = torch.tensor([[0.0, 1.5 * math.log(2), 0.5 * math.log(5), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(none, expected)
    small = torch.full((1, 4), 0.1, dtype=torch.float64)  # W = 0.4 < 1: K = W, every pixel's whole weight
    ce = -torch.log(torch.tensor([0.9, 0.5, 0.2, 0.7], dtype=torch.float64))
    torch.testing.assert_close(sl.topk_ce_loss(logits, target, small, k=50), ce.mean())


def test_ohem_weighted_by_hand():
    """ω = (1, 2, 0.5, 1), thresh = 0.3. In increasing p_t (0.2, 0.5, 0.7, 0.9) the cumulative weights
    are (0.5, 2.5, 3.5, 4.5). min_kept = 3: the first to exceed 3 has p_t = 0.7, so p_t = 0.2 and 0.5
    are kept: (0.5 ln 5 + 2 ln 2) / 2.5. min_kept = 10: none exceeds, the last (p_t = 0.9) is the bound:
    (0.5 ln 5 + 2 ln 2 + ln(10/7)) / 3.5; with ω = 0 at p_t = 0.9 the last of positive weight (0.7) is."""
    logits, target = four_pixels()
    weights = torch.tensor([[1.0, 2.0, 0.5, 1.0]], dtype=torch.float64)
    value = sl.ohem_ce_loss(logits, target, weights, thresh=0.3, min_kept=3)
    assert value.item() == pytest.approx((0.5 * math.log(5) + 2 * math.log(2)) / 2.5)
    value = sl.ohem_ce_loss(logits, target, weights, thresh=0.3, min_kept=10)
    assert value.item() == pytest.approx((0.5 * math.log(5) + 2 * math.log(2) + math.log(10 / 7)) / 3.5)
    weights[0, 0] = 0.0
    value = sl.ohem_ce_loss(logits, target, weights, thresh=0.3, min_kept=10)
    assert value.item() == pytest.approx((0.5 * math.log(5) + 2 * math.log(2)) / 2.5)


def repeated(logits, target, counts):
    """Each pixel of a one-image input ``(1, C, L)`` repeated ``counts`` times along the pixels."""
    return logits.repeat_interleave(counts, dim=2), target.repeat_interleave(counts, dim=1)


@pytest.mark.parametrize("k", [10, 35, 100])
def test_topk_integer_weights_are_repeated_pixels(k):
    """An integer ω_i is pixel i repeated ω_i times (a pixel straddling K gives part of its copies),
    with class weights and ignored pixels, for the batch and per image."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 17, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 17), generator=g)
    target[0, :3] = IGNORE
    counts = torch.randint(0, 4, (2, 17), generator=g)
    options = dict(k=k, weight=[1.0, 2.0, 0.5], ignore_index=IGNORE)
    weighted = sl.topk_ce_loss(logits, target, counts.double(), **options)
    flat_logits, flat_target = logits.movedim(0, 1).reshape(1, 3, -1), target.reshape(1, -1)
    plain = sl.topk_ce_loss(*repeated(flat_logits, flat_target, counts.flatten()), **options)
    torch.testing.assert_close(weighted, plain)
    per_image = sl.topk_ce_loss(logits, target, counts.double(), per_image=True, **options)
    means = [sl.topk_ce_loss(*repeated(logits[i : i + 1], target[i : i + 1], counts[i]), **options)
             for i in range(2)]  # fmt: skip
    torch.testing.assert_close(per_image, torch.stack(means).mean())


@pytest.mark.parametrize("thresh, min_kept", [(0.7, 3), (0.3, 8), (0.9, 0), (0.1, 1000)])
def test_ohem_integer_weights_are_repeated_pixels(thresh, min_kept):
    """The min_kept-th smallest p_t in weighted mass is the one of the repeated pixels; with class weights
    and ignored pixels; value and gradient."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 3, 23, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (1, 23), generator=g)
    target[0, :4] = IGNORE
    counts = torch.randint(0, 4, (1, 23), generator=g)
    options = dict(thresh=thresh, min_kept=min_kept, weight=[1.0, 2.0, 0.5], ignore_index=IGNORE)
    weighted = sl.ohem_ce_loss(logits, target, counts.double(), **options)
    plain = sl.ohem_ce_loss(*repeated(logits, target, counts[0]), **options)
    torch.testing.assert_close(weighted, plain)
    torch.testing.assert_close(*(torch.autograd.grad(v, logits)[0] for v in (weighted, plain)))


@pytest.mark.parametrize("name", ["topk_ce", "ohem_ce"])
def test_weights_of_ones_are_exactly_the_plain_loss(name):
    """ω = 1 is the loss without weights, bit for bit (float32, every reduction)."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 20, 25, generator=g)
    target = torch.randint(0, 3, (2, 20, 25), generator=g)
    ones = torch.ones(2, 20, 25)
    for options in ({"per_image": False}, {"per_image": True}) if name == "topk_ce" else ({"min_kept": 300},):
        for reduction in ("mean", "sum", "none"):
            loss = (sl.TopKCELoss if name == "topk_ce" else sl.OHEMCELoss)(reduction=reduction, **options)
            assert torch.equal(loss(logits, target, ones), loss(logits, target))


@pytest.mark.parametrize("name", ["topk_ce", "ohem_ce"])
def test_mask_on_a_soft_target(name):
    """A one-hot target with a mask is the index target with the mask; a NaN logit at a masked pixel of a
    soft target reaches neither the value nor the gradient, and the masked pixels are never kept."""
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    mask = torch.rand(2, 4, 5, generator=g) > 0.3
    weights = torch.rand(2, 4, 5, generator=g, dtype=torch.float64) + 0.5
    one_hot = F.one_hot(target, 3).movedim(-1, 1).double()
    loss = sl.TopKCELoss(k=30) if name == "topk_ce" else sl.OHEMCELoss(min_kept=4)
    torch.testing.assert_close(loss(logits, one_hot, weights, mask), loss(logits, target, weights, mask))
    soft = torch.softmax(torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64), 1)
    poisoned = logits.detach().clone().masked_fill(~mask.unsqueeze(1), torch.nan).requires_grad_()
    value = loss(poisoned, soft, weights, mask)
    (grad,) = torch.autograd.grad(value, poisoned)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert not grad.masked_select(~mask.unsqueeze(1)).any()
    torch.testing.assert_close(value, loss(logits, soft, torch.where(mask, weights, 0.0)))
    none = loss.function(poisoned, soft, weights, mask, **{**loss.options, "reduction": "none"})
    assert not none[~mask].any()


@pytest.mark.parametrize("spec", ["topk_ce(k=20, per_image=True)", "ohem_ce(min_kept=5)"])
def test_weighted_function_module_and_compound_agree(spec):
    logits, target = inputs(7)
    g = torch.Generator().manual_seed(10)
    weights = torch.rand(target.shape, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(target.shape, generator=g) > 0.2
    module = sl.create_loss(spec)
    value = module(logits, target, weights, mask)
    torch.testing.assert_close(value, module.function(logits, target, weights, mask, **module.options))
    compound = sl.create_loss(f"dice + {spec}")(logits, target, weight_map=weights, mask=mask)
    torch.testing.assert_close(compound, sl.dice_loss(logits, target, weights, mask) + value)


def test_weighted_topk_at_100_percent_is_weighted_ce():
    """``k = 100`` keeps all of ``W`` (a non-integer total too): the weighted CE, per image as well."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    weights = torch.rand(2, 5, 6, generator=g, dtype=torch.float64) * 2.5  # W not a whole number
    expected = sl.cross_entropy_loss(logits, target, weights)
    torch.testing.assert_close(sl.create_loss("topk_ce(k=100)")(logits, target, weight_map=weights), expected)
    per_image = sl.create_loss("topk_ce(k=100, per_image=True)")(logits, target, weight_map=weights)
    images = [(logits[i : i + 1], target[i : i + 1], weights[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(per_image, sum(sl.cross_entropy_loss(*image) for image in images) / 2)
