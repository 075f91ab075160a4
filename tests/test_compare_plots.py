"""The comparison's figures: valid PNGs for every shape of input, what they show, and the overlay helpers
checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from seglosses.compare import RunResult, plots, slug
from seglosses.compare.plots import (
    BACKGROUND,
    CORRECT,
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    IGNORED,
    WRONG_CLASS,
    crop_window,
    error_codes,
    grey_or_rgb,
    learning_curves,
    overlays,
    paint,
    per_class_dice,
)
from seglosses.compare.training import overlay_view
from seglosses.compare.verdict import Comparison, Scores, compare_scores
from seglosses.data import IGNORE, Case, DataSet

pytest.importorskip("matplotlib")

LONG = "ce + 0.5*tversky(alpha=0.3, beta=0.7)"


def _data(dims: int, classes: int, channels: int = 1) -> DataSet:
    """Two train and two test cases: a disc of class 1, a thin line of each further class, an ignored
    corner (mask value 255); volumes of 6 slices (the structures in slices 2 and 3) for ``dims == 3``."""
    rng = np.random.default_rng(0)
    cases = []
    for k in range(4):
        yy, xx = np.mgrid[:130, :150]
        mask = np.zeros((130, 150), np.int64)
        mask[(yy - 60 - k) ** 2 + (xx - 70) ** 2 < 400] = 1
        for c in range(2, classes):
            mask[100 + 2 * c, 20 + 5 * c : 140] = c
        mask[:5, :5] = 255
        if dims == 3:
            mask = np.stack([mask if z in (2, 3) else np.where(mask == 255, 255, 0) for z in range(6)])
        image = (rng.normal(size=(channels, *mask.shape)) + (mask > 0)).astype(np.float32)
        cases.append(Case(f"case {k}", arrays=(image, mask)))
    counts = np.array([[np.sum(case.arrays[1] == v) for v in range(classes)] for case in cases])
    names = ("background", "nucleus", *[f"structure {c}" for c in range(2, classes)])
    return DataSet(
        spec="synthetic", classes=names, values=tuple(range(classes)), ignore_index=255,
        train=tuple(cases[:2]), test=tuple(cases[2:]), train_counts=counts[:2], test_counts=counts[2:],
        channels=channels, spatial_dims=dims, split="by hand", class_source="by hand",
    )  # fmt: skip


def _results(data: DataSet, losses, seeds, epochs: int, runs) -> list:
    """Made-up runs, and for each loss a saved prediction of the overlay view (the target with a block
    of false positives)."""
    index, plane = overlay_view(data)
    _, labels = data.read(data.test[index])
    view = (labels if plane is None else labels[plane]).numpy().clip(0)
    results = []
    for m, loss in enumerate(losses):
        prediction = view.copy()
        prediction[40:50, 40 + 10 * m : 60 + 10 * m] = 1
        (runs / slug(loss)).mkdir(parents=True, exist_ok=True)
        np.save(runs / slug(loss) / f"seed{min(seeds)}_prediction.npy", prediction.astype(np.uint8))
        for seed in seeds:
            history = {"train_loss": list(np.linspace(2 + m + seed, 1, epochs)),
                       "test_dice": list(np.linspace(0.2, 0.6 + 0.05 * seed, epochs))}  # fmt: skip
            results.append(RunResult(loss, seed, {}, history))
    return results


def _comparison(losses, classes: int, seeds: int, scored=None, images: int = 3) -> Comparison:
    """The comparison of made-up counts; the first loss made best on class 1 where claims are made."""
    rng = np.random.default_rng(1)
    scored = np.array([False, *[True] * (classes - 1)]) if scored is None else np.asarray(scored, dtype=bool)
    shape = (len(losses), seeds, images, classes)
    tp, fp, fn = (rng.integers(0, 100, shape).astype(np.float64) for _ in range(3))
    tp[..., ~scored] = fn[..., ~scored] = 0
    scores = Scores(tp, fp, fn, tp, tp + fp + fn, np.full(shape, 3.0))
    names = ["background", *[f"class name {k}" for k in range(1, classes)]]
    c = compare_scores(scores, losses, names, scored, [np.full((seeds, 2), 0.5)] * len(losses), draws=50)
    c.best["dice_1"] = 0 if c.claims else None
    return c


def _is_png(data: bytes) -> bool:
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


@pytest.fixture
def figures(monkeypatch):
    """Make the plot functions return their matplotlib Figure instead of its PNG bytes."""
    monkeypatch.setattr(plots, "_png", lambda figure: figure)


@pytest.mark.parametrize("dims,k,seeds,epochs", [(2, 3, [0, 1, 2], 3), (2, 2, [4], 1), (3, 3, [1, 0], 2)])
def test_curves_and_overlays_are_pngs(tmp_path, dims, k, seeds, epochs):
    data = _data(dims, k)
    losses = ["ce", "dice", LONG] if k > 2 else ["bce"]
    results = _results(data, losses, seeds, epochs, tmp_path)
    assert _is_png(learning_curves(results, data))
    assert _is_png(overlays(results, data, tmp_path))


@pytest.mark.parametrize("classes,seeds,images", [(2, 1, 1), (3, 3, 3), (14, 2, 3)])
def test_per_class_dice_bars_and_heatmap_are_pngs(classes, seeds, images):
    c = _comparison(["ce", "dice", LONG], classes, seeds, images=images)
    assert c.resampled == (images > 1)
    assert _is_png(per_class_dice(c))


def test_learning_curves_panels(tmp_path, figures):
    data = _data(2, 3)
    results = _results(data, ["ce", "dice", LONG, "focal", "jaccard", "gdl"], [0, 1], 1, tmp_path)
    results[0].history["train_loss"] = [float("nan")]  # a diverged seed: left out, not an error
    figure = learning_curves(results, data)
    axes = [axis for axis in figure.axes if axis.axison]
    assert len(axes) == 12  # six losses wrap into two blocks of three columns, a row each for loss and Dice
    assert [axis.get_title() for axis in axes[:3]] == ["ce", "dice", "ce + 0.5*tversky(alpha=0.3,\nbeta=0.7)"]
    for axis in axes:
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks == [1.0]  # one epoch: a single integer tick
    assert axes[3].get_ylim() == (0.0, 1.0) and axes[0].get_ylim() != (0.0, 1.0)  # Dice shared, loss free
    assert "min–max" in figure.get_suptitle()


def test_per_class_dice_bars_name_the_classes(figures):
    c = _comparison(["ce", "dice", LONG], 4, 3, scored=[False, True, False, True])
    axis = per_class_dice(c).axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["class name 1", "class name 3"]
    assert len(axis.patches) == 6 and axis.get_ylim()[0] == 0
    assert "n/a (not in the test split): class name 2" in " ".join(axis.get_title().split())
    values = [c.values[f"dice_{k}"][m] for m in range(3) for k in (1, 3)]
    star = [" ★", "", "", "", "", ""]  # the made-up best: ce on class 1
    assert [t.get_text() for t in axis.texts] == [f"{v:.2f}{s}" for v, s in zip(values, star)]


def test_per_class_dice_heatmap_writes_every_value(figures):
    c = _comparison(["ce", "dice"], 13, 3)
    axis = per_class_dice(c).axes[0]
    assert len(axis.texts) == 2 * 12
    first = axis.texts[0]  # ce on class 1, made best
    assert first.get_text() == f"{c.values['dice_1'][0]:.2f}" and first.get_fontweight() == "bold"
    assert [t.get_text() for t in axis.get_yticklabels()] == ["ce", "dice"]


def test_overlays_panels(tmp_path, figures):
    data = _data(2, 3, channels=3)  # RGB
    results = _results(data, ["ce", LONG], [0], 1, tmp_path)
    results.append(RunResult("dice", 0, {}, {"train_loss": [1.0], "test_dice": [0.5]}))  # no prediction saved
    figure = overlays(results, data, tmp_path)
    axes = figure.axes
    assert [axis.get_title() for axis in axes] == [
        "image + ground truth", "ce", "ce + 0.5*tversky(alpha=0.3,\nbeta=0.7)", "dice"]  # fmt: skip
    assert axes[0].images[0].get_interpolation() == "nearest"
    assert axes[0].images[0].get_array().shape == (96, 96, 3)  # the window, not the whole 130 × 150
    assert not axes[3].images and axes[3].texts[0].get_text() == "no prediction saved"
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:3] == ["nucleus", "structure 2", "false positive (foreground on background)"]


def test_error_codes_by_hand():
    labels = np.array([[0, 0, 1, 1], [2, 2, 1, IGNORE], [0, 2, 0, IGNORE]])
    prediction = np.array([[0, 1, 1, 0], [2, 1, 0, 2], [0, 0, 0, 0]])
    expected = np.array([
        [BACKGROUND, FALSE_POSITIVE, CORRECT, FALSE_NEGATIVE],
        [CORRECT, WRONG_CLASS, FALSE_NEGATIVE, IGNORED],
        [BACKGROUND, FALSE_NEGATIVE, BACKGROUND, IGNORED],
    ])  # fmt: skip
    np.testing.assert_array_equal(error_codes(prediction, labels), expected)


def test_crop_window_holds_the_most_rare_pixels():
    labels = np.zeros((10, 12), np.int64)
    labels[7, 8:11] = 2  # three pixels of class 2 near the bottom right, and one far from them
    labels[1, 1] = 2
    # size 3: window rows may start at 5-7 to hold row 7, middles 6-8, nearest 7 at 6; columns only at 8
    assert crop_window(labels, 2, size=3) == (slice(6, 9), slice(8, 11))
    # size 5: row starts 3-5 (5 is the last that fits), middles 5-7, nearest 7 at 5; column starts 6-7,
    # middles 8-9, nearest the centroid 9 at 7
    assert crop_window(labels, 2, size=5) == (slice(5, 10), slice(7, 12))
    # size 4: middles 6.5 and 7.5 tie for row 7, 8.5 and 9.5 for column 9: the first of each
    assert crop_window(labels, 2, size=4) == (slice(5, 9), slice(7, 11))
    assert crop_window(labels, 2, size=50) == (slice(0, 10), slice(0, 12))  # smaller than the window: all
    assert crop_window(np.zeros((9, 9)), 1, size=3) == (slice(3, 6), slice(3, 6))  # no such pixel: the centre


def test_paint_colours_errors_and_keeps_background():
    base = np.full((1, 4, 3), 0.5)
    target = np.array([[0, 1, IGNORE, IGNORE]])
    painted = paint(base, np.array([[1, 1, 0, 1]]), target)
    np.testing.assert_allclose(painted[0, 0], 0.1 * 0.5 + 0.9 * np.array([1.0, 0.0, 1.0]))  # magenta FP
    np.testing.assert_allclose(painted[0, 1], 0.45 * 0.5 + 0.55 * np.array([44, 160, 44]) / 255)  # green
    np.testing.assert_allclose(painted[0, 2:], [[0.45] * 3, [0.7] * 3])  # ignored: a grey checkerboard
    assert np.allclose(paint(base, np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64)), base)


def test_grey_or_rgb_rescales():
    np.testing.assert_allclose(grey_or_rgb(np.array([[[2.0, 4.0]], [[9.0, 9.0]]])), [[[0, 0, 0], [1, 1, 1]]])
    np.testing.assert_allclose(grey_or_rgb(np.arange(6.0).reshape(3, 1, 2))[0, 1], [0.2, 0.6, 1.0])
    assert np.all(grey_or_rgb(np.ones((1, 2, 2))) == 0)


def test_twenty_losses_get_twenty_colours():
    """With more than ten losses the colours do not repeat (tab10, then tab20's light shades)."""
    from seglosses.compare.plots import _loss_colour

    colours = {tuple(_loss_colour(k)) for k in range(20)}
    assert len(colours) == 20
