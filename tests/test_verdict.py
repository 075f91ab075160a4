"""The verdict's statistics against values derived by hand: pooled metrics, scored classes, intervals,
claims only beyond noise and with enough seeds, HD95 on common pairs, convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seglosses.compare.report import verdict_lines
from seglosses.compare.verdict import MIN_SEEDS, Scores, _weights, compare_scores, converged, t_quantile

FLAT = [np.full((1, 6), 0.5)]


def scores(counts, hd95=None):
    """Scores from ``counts[loss][seed][image] = [(tp, fp, fn) per class]``; band counts equal the pixel
    counts (Boundary IoU = IoU) and HD95 is 1 wherever the class is in both maps unless given."""
    array = np.array(counts, dtype=np.float64)  # (L, S, I, K, 3)
    tp, fp, fn = array[..., 0], array[..., 1], array[..., 2]
    both = (tp + fp > 0) & (tp + fn > 0)
    distance = np.where(both, 1.0, np.nan) if hd95 is None else np.array(hd95, dtype=np.float64)
    return Scores(tp, fp, fn, tp, tp + fp + fn, distance)


def constant(tp, fp, fn, seeds=3, images=2):
    """One loss whose every (seed, image) has the same foreground counts (background 100 / 0 / 0)."""
    return [[[[(100, 0, 0), (tp, fp, fn)] for _ in range(images)] for _ in range(seeds)]]


def compare(counts, scored=(False, True), curves=None, hd95=None):
    losses = [f"loss{k}" for k in range(len(counts))]
    classes = ["background", *[f"class {k}" for k in range(1, len(scored))]]
    return compare_scores(
        scores(counts, hd95), losses, classes, np.array(scored), curves or FLAT * len(counts)
    )


def test_values_are_pooled_metrics_of_the_scored_classes():
    """Loss 0: Dice 2·8/(2·8+2+2) = 0.8, IoU 8/12, precision = recall = 0.8; loss 1: 0.5, 5/15, 0.5."""
    c = compare(constant(8, 2, 2) + constant(5, 5, 5))
    np.testing.assert_allclose(c.values["dice"], [0.8, 0.5])
    np.testing.assert_allclose(c.values["iou"], [8 / 12, 5 / 15])
    np.testing.assert_allclose(c.values["boundary_iou"], [8 / 12, 5 / 15])
    np.testing.assert_allclose(c.values["precision"], [0.8, 0.5])
    np.testing.assert_allclose(c.values["recall"], [0.8, 0.5])
    np.testing.assert_allclose(c.values["dice_1"], [0.8, 0.5])


def test_counts_are_pooled_over_images_before_the_ratio():
    """Image 1: TP 1 (Dice 1); image 2: FN 9 (Dice 0). Pooled: 2·1 / (2·1 + 9) = 2/11, not 1/2."""
    counts = [[[[(5, 0, 0), (1, 0, 0)], [(5, 0, 0), (0, 0, 9)]]]]
    assert compare(counts).values["dice"][0] == pytest.approx(2 / 11)


def test_a_class_not_scored_stays_out_of_the_mean():
    """Class 2 (absent from the test split) would score 0 and halve the mean; it is not scored."""
    counts = [[[[(9, 0, 0), (4, 1, 1), (0, 3, 0)]]]]
    c = compare(counts, scored=(False, True, False))
    assert c.values["dice"][0] == pytest.approx(8 / 10)


def test_clear_differences_are_claimed_with_their_size():
    """No noise at all: the interval is the difference itself, and the better loss is bold everywhere."""
    c = compare(constant(8, 2, 2) + constant(5, 5, 5))
    assert c.claims and c.best["dice"] == 0 and c.best["iou"] == 0
    np.testing.assert_allclose(c.differences["dice"][1], [-0.3, -0.3, -0.3], atol=1e-12)
    text = verdict_lines(c)[0]
    assert text.startswith("**Best: `loss0`**") and "`loss1` is worse by 0.300 [0.300, 0.300]" in text


def test_noise_larger_than_the_difference_claims_nothing():
    """Seeds of loss 0 score 0.6, 0.7, 0.8; loss 1 scores 0.7 always: within noise, nothing bold."""
    seeds = [[[(100, 0, 0), c]] for c in ((3, 2, 2), (7, 3, 3), (8, 2, 2))]
    c = compare([seeds] + constant(7, 3, 3, images=1))
    assert c.best["dice"] is None and "within noise" in verdict_lines(c)[0]


def test_student_interval_over_three_seeds():
    """Seeds 0.6, 0.7, 0.8 on one image: se = s / √3 = 0.1 / √3 (the bootstrap's bias undone), half-width
    t(0.975, 2) · se = 4.3027 · 0.0577 ≈ 0.248 (bootstrap noise: a few per cent)."""
    seeds = [[[(100, 0, 0), c]] for c in ((3, 2, 2), (7, 3, 3), (8, 2, 2))]
    c = compare([seeds])
    low, high = c.intervals["dice"][0]
    half = t_quantile(2) * 0.1 / math.sqrt(3)
    assert (high - low) / 2 == pytest.approx(half, rel=0.08) and (low + high) / 2 == pytest.approx(0.7)


def test_difference_intervals_stay_within_the_metrics_range():
    """Seeds of loss 0 score Dice 1, 0, 0; loss 1 scores 1: the difference -2/3 has a half-width of about
    t(0.975, 2) · 0.577 / √3 ≈ 1.43, so Student's interval reaches below -1, which no difference of two
    Dice values can: it is reported from -1 (HD95, unbounded, is not clipped)."""
    seeds = [[[(100, 0, 0), c]] for c in ((5, 0, 0), (0, 5, 5), (0, 5, 5))]
    c = compare([seeds] + constant(5, 0, 0, images=1))
    estimate, low, high = c.differences["dice"][0]
    assert estimate == pytest.approx(-2 / 3) and low == -1.0 and -2 / 3 < high < 1.0
    for name, rows in c.differences.items():
        if name != "hd95":
            assert np.nanmin(rows) >= -1.0 and np.nanmax(rows) <= 1.0, name


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in [*range(1, 40), 50, 100, 1000]:
        assert t_quantile(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=2e-4)


def test_fewer_than_three_seeds_make_no_claim():
    """Two seeds and a clear difference: intervals, but nothing declared better."""
    c = compare(constant(8, 2, 2, seeds=2) + constant(5, 5, 5, seeds=2))
    assert MIN_SEEDS == 3 and not c.claims and all(best is None for best in c.best.values())
    assert "use --seeds 3 or more" in verdict_lines(c)[0]
    single = compare(constant(8, 2, 2, seeds=1, images=1) + constant(5, 5, 5, seeds=1, images=1))
    assert not single.resampled and np.isnan(single.intervals["dice"]).all()


def test_hd95_compares_losses_only_where_both_have_it():
    """Loss 1 missed the class on image 2 (no HD95 there) and so has the lower mean; on the image both
    have, loss 0 is the closer (1 against 3): loss 1 is not bold, and its miss is counted."""
    counts = [
        [[[(50, 0, 0), (4, 1, 1)], [(50, 0, 0), (4, 1, 1)]]] * 3,
        [[[(50, 0, 0), (4, 1, 1)], [(50, 0, 0), (0, 0, 5)]]] * 3,
    ]
    hd95 = [[[[np.nan, 1.0], [np.nan, 100.0]]] * 3, [[[np.nan, 3.0], [np.nan, np.nan]]] * 3]
    c = compare(counts, hd95=hd95)
    np.testing.assert_allclose(c.values["hd95"], [50.5, 3.0])
    assert c.best["hd95"] is None
    np.testing.assert_allclose(c.differences["hd95"][0, 0], 1.0 - 3.0)
    assert c.missed[:, 1].tolist() == [0, 3] and c.hd95_pairs[:, 1].tolist() == [6, 3]


def test_convergence():
    rising = np.linspace(0.2, 0.8, 12)[None].repeat(3, 0)
    flat = np.concatenate([np.linspace(0.2, 0.7, 6), np.full(6, 0.7)])[None]
    assert converged(rising) is False and converged(flat) is True and converged(rising[:, :3]) is None
    c = compare(constant(8, 2, 2) + constant(5, 5, 5), curves=[rising, rising[:1] * 0 + 0.5])
    assert c.converged == [False, True] and "Not converged: `loss0`" in verdict_lines(c)[1]


def test_bootstrap_weights():
    weights = _weights(50, 7, np.random.default_rng(0))
    assert weights.shape == (50, 7) and (weights[0] == 1).all() and (weights.sum(1) == 7).all()
