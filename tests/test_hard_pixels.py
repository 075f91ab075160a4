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
