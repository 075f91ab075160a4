"""The comparison's figures as PNG bytes: learning curves, per-class Dice and prediction overlays.

Every loss keeps one colour in every figure (matplotlib's ``tab10`` by its position in the comparison, then
``tab20``'s light shades: twenty distinct colours).
matplotlib is imported inside the functions, so the package imports without it; figures are drawn on a
:class:`matplotlib.figure.Figure` (no pyplot state) and saved by the Agg renderer.

The overlays colour each pixel of a prediction by what it is against the target:

* a foreground pixel predicted as its own class: that class's colour (as in the ground-truth panel);
* **false positive**: a foreground class predicted where the target is background;
* **false negative**: a foreground target pixel predicted as background;
* **wrong class**: a foreground target pixel predicted as another foreground class (a false negative of
  the target class and a false positive of the predicted one at once);
* ignored target pixels: a neutral grey checkerboard in every panel, never an error.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Sequence, Tuple

import numpy as np

from ..data import IGNORE, DataSet
from .training import (
    CURVE_IMAGES,
    RunResult,
    ordered,
    overlay_view,
    rarest_scored_class,
    scored_classes,
    slug,
)

if TYPE_CHECKING:
    from .verdict import Comparison

DPI = 110
CROP = 96  # side of the overlay window in pixels (the whole extent along a shorter axis)
HEATMAP_ABOVE = 10  # more scored classes than this: a table of values instead of bars
MAX_COLUMNS = 5  # panels per row of the small multiples

# error codes of :func:`error_codes`
BACKGROUND, CORRECT, FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_CLASS, IGNORED = range(6)
ERROR_COLOURS = {FALSE_POSITIVE: "#ff00ff", FALSE_NEGATIVE: "#00e5ff", WRONG_CLASS: "#ffe500"}
ERROR_NAMES = {FALSE_POSITIVE: "false positive (foreground on background)",
               FALSE_NEGATIVE: "false negative (foreground missed)",
               WRONG_CLASS: "wrong foreground class"}  # fmt: skip
# foreground class colours: none of them close to the error colours or to the grey of ignored pixels
CLASS_COLOURS = ("#2ca02c", "#ff7f0e", "#1f50ff", "#9467bd", "#d62728", "#8c564b", "#005a32", "#ffbb78",
                 "#08306b", "#c49c94")  # fmt: skip
IGNORED_GREYS = (0.7, 0.45)  # the checkerboard of ignored pixels
TOO_FEW = "too few seeds to call a loss better than another"


def learning_curves(results: Sequence[RunResult], data: DataSet) -> bytes:
    """Small multiples, one column per loss: its training loss on its own y scale (top) and the test
    mean Dice after each epoch on a shared 0–1 scale (bottom, the other losses' means in grey behind it
    for comparison). Line: the mean over seeds; band: min–max over seeds. Columns wrap every
    :data:`MAX_COLUMNS` losses."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    losses, seeds = ordered(results)
    names = ("train_loss", "test_dice")
    curves = {name: {loss: _curves(results, loss, name) for loss in losses} for name in names}
    columns, blocks = _grid(len(losses))
    width = min(14.0, 0.8 + 2.9 * columns)
    figure = Figure(figsize=(width, 0.9 + 4.4 * blocks), layout="constrained")
    axes = figure.subplots(2 * blocks, columns, squeeze=False)
    for k, loss in enumerate(losses):
        top, bottom = axes[2 * (k // columns), k % columns], axes[2 * (k // columns) + 1, k % columns]
        for other in losses:
            if other != loss:
                epochs, (mean, _, _) = curves["test_dice"][other]
                bottom.plot(epochs, mean, color="0.8", lw=1, zorder=1)
        for axis, name in ((top, "train_loss"), (bottom, "test_dice")):
            epochs, (mean, low, high) = curves[name][loss]
            colour = _loss_colour(k)
            if len(seeds) > 1:
                axis.fill_between(epochs, low, high, color=colour, alpha=0.25, lw=0, zorder=2)
            axis.plot(epochs, mean, color=colour, lw=1.8, marker="o", ms=3, zorder=3)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            axis.set_xlim(0.5, max(epochs[-1], 1) + 0.5)
            axis.grid(alpha=0.3)
            axis.tick_params(labelsize=8)
        top.set_title(_wrap(loss, 30), fontsize=9)
        bottom.set_ylim(0, 1)
        bottom.set_xlabel("epoch", fontsize=8)
        if k % columns == 0:
            top.set_ylabel("training loss\n(own scale)", fontsize=8)
            bottom.set_ylabel("test mean Dice", fontsize=8)
    for k in range(len(losses), blocks * columns):
        axes[2 * (k // columns), k % columns].set_axis_off()
        axes[2 * (k // columns) + 1, k % columns].set_axis_off()
    spread = f"line: mean over {len(seeds)} seeds, band: min–max" if len(seeds) > 1 else "one seed: no band"
    images = min(len(data.test), CURVE_IMAGES)
    grey = "; grey: the other losses' means" if len(losses) > 1 else ""
    text = (
        f"Learning curves on {data.spec} ({spread})\n"
        f"test mean Dice on {images} test image{'s' if images != 1 else ''} after each epoch{grey}"
    )
    figure.suptitle(_wrap(text, int(width * 12)), fontsize=10)
    return _png(figure)


def per_class_dice(c: Comparison) -> bytes:
    """Test Dice per scored class: grouped bars (one per loss, with its 95 % interval where
    there is one, its value above it where the bar is wide enough, ★ above a loss better than every
    other beyond noise), or, beyond
    :data:`HEATMAP_ABOVE` scored classes, a table of values (losses by classes). Classes absent from
    the test split are left out and named in the title."""
    from matplotlib.figure import Figure

    shown = [int(k) for k in np.flatnonzero(c.scored)]
    seeds = c.per_seed["dice"].shape[1]
    absent = [name for k, name in enumerate(c.classes) if k > 0 and not c.scored[k]]
    title = (f"Test Dice per class, mean over {seeds} seed{'s' if seeds != 1 else ''}"
             + (f"; n/a (not in the test split): {', '.join(absent)}" if absent else ""))  # fmt: skip
    values = np.array([[c.values[f"dice_{k}"][m] for k in shown] for m in range(len(c.losses))])
    best = [c.best.get(f"dice_{k}") for k in shown]
    if len(shown) > HEATMAP_ABOVE:
        return _heatmap(c, shown, values, best, title)
    count = len(c.losses)
    width = float(np.clip(2.0 + len(shown) * (0.32 * count + 0.5), 5.0, 14.0))
    figure = Figure(figsize=(width, 4.2), layout="constrained")
    axis = figure.subplots()
    bar = 0.8 / count
    labelled = (width - 1.5) / len(shown) * bar >= 0.15  # bars wide enough (in inches) to write their value
    x = np.arange(len(shown))
    for m, loss in enumerate(c.losses):
        where = x - 0.4 + bar * (m + 0.5)
        axis.bar(where, values[m], bar * 0.92, color=_loss_colour(m), label=_wrap(loss, 40), zorder=2)
        bounds = np.array([c.intervals[f"dice_{k}"][m] for k in shown], dtype=np.float64).reshape(-1, 2)
        finite = np.asarray(np.isfinite(bounds).all(axis=1), dtype=bool)
        if finite.any():
            point = values[m][finite]
            errors = np.clip([point - bounds[finite, 0], bounds[finite, 1] - point], 0, None)
            axis.errorbar(where[finite], point, errors, fmt="none", ecolor="k", lw=1, capsize=2, zorder=3)
        for j, value in enumerate(values[m]):  # above the bar and its interval: the value (if room), ★
            text = " ".join(([f"{value:.2f}"] if labelled else []) + (["★"] if best[j] == m else []))
            top = max(bounds[j, 1] if finite[j] else value, value)
            if text:
                axis.text(where[j], min(top, 1.0) + 0.015, text, rotation=90 if labelled else 0, ha="center",
                          va="bottom", fontsize=7 if labelled else 10)  # fmt: skip
    axis.set_xticks(x, [_wrap(c.classes[k], 16) for k in shown], fontsize=9)
    axis.set_ylim(0, 1.22 if labelled else 1.1)  # room above 1 for the values and stars
    axis.set_yticks(np.linspace(0, 1, 6))
    axis.set_ylabel("test Dice")
    axis.grid(axis="y", alpha=0.3, zorder=0)
    axis.set_axisbelow(True)
    intervals = "error bars: 95 % interval" if c.resampled else "no interval (one seed, one image)"
    stars = "★ better than every other loss beyond noise" if any(b is not None for b in best) else (
        "no loss better than every other beyond noise (no ★)")  # fmt: skip
    stars = stars if c.claims else TOO_FEW
    axis.set_title(_wrap(f"{title}\n{intervals}; {stars}", int(width * 13)), fontsize=10)
    columns = _legend_columns([_wrap(loss, 40) for loss in c.losses], width)
    figure.legend(loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
    return _png(figure)


def overlays(results: Sequence[RunResult], data: DataSet, runs: Path) -> bytes:
    """The ground truth and every loss's prediction (of the smallest seed) on the test view that
    :func:`~seglosses.compare.training.overlay_view` picks, zoomed on a :data:`CROP`-pixel window with
    the most pixels of the rarest scored class, pixels drawn large, errors coloured as the module
    docstring says."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    losses, seeds = ordered(results)
    index, plane = overlay_view(data)
    image, labels = (array.numpy() for array in data.read(data.test[index]))
    if plane is not None:
        image, labels = image[:, plane], labels[plane]
    rarest = rarest_scored_class(data)
    rows, cols = crop_window(labels, rarest)
    base = grey_or_rgb(image)[rows, cols]
    target = labels[rows, cols]
    panels: List[Tuple[str, Any]] = [("image + ground truth", paint(base, target, target))]
    for loss in losses:
        path = runs / slug(loss) / f"seed{seeds[0]}_prediction.npy"
        prediction = np.load(path) if path.exists() else None
        if prediction is None or prediction.shape != labels.shape:
            panels.append((loss, "no prediction saved" if prediction is None else "prediction of other size"))
        else:
            panels.append((loss, paint(base, prediction[rows, cols].astype(np.int64), target)))
    columns, lines = _grid(len(panels))
    side = min(2.7, 13.5 / columns)  # inches a panel is wide
    tall = side * target.shape[0] / target.shape[1] + 0.5  # and high, with its title
    figure = Figure(figsize=(side * columns, tall * lines + 0.9), layout="constrained")
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for axis, (title, picture) in zip(axes, panels):
        if isinstance(picture, str):
            axis.text(0.5, 0.5, picture, ha="center", va="center", fontsize=8, transform=axis.transAxes)
        else:
            axis.imshow(picture, interpolation="nearest")
        axis.set_title(_wrap(title, 28), fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in axes[len(panels) :]:
        axis.set_axis_off()
    handles = [Patch(color=_class_colour(k), label=data.classes[k]) for k in range(1, data.num_classes)]
    errors = [code for code in ERROR_COLOURS if code != WRONG_CLASS or data.num_classes > 2]
    handles += [Patch(color=ERROR_COLOURS[code], label=ERROR_NAMES[code]) for code in errors]
    if (target == IGNORE).any():
        handles.append(
            Patch(
                facecolor=str(IGNORED_GREYS[1]),
                edgecolor=str(IGNORED_GREYS[0]),
                hatch="xxxx",
                label="ignored (not scored)",
            )
        )
    columns = _legend_columns([str(h.get_label()) for h in handles], side * columns)
    figure.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
    view = f"test case {data.test[index].name!r}" + ("" if plane is None else f", slice {plane} along axis 0")
    text = (f"{view}: rows {rows.start}–{rows.stop - 1}, columns {cols.start}–{cols.stop - 1}, centred on "
            f"{data.classes[rarest]}{' (the rarest class)' if scored_classes(data).sum() > 1 else ''}; "
            f"predictions of seed "
            f"{seeds[0]}")  # fmt: skip
    figure.suptitle(_wrap(text, int(side * columns * 14)), fontsize=9)
    return _png(figure)


def crop_window(labels: np.ndarray, rare: int, size: int = CROP) -> Tuple[slice, slice]:
    """The ``size × size`` window of the 2-D ``labels`` (the whole extent along a shorter axis) holding
    the most pixels of class ``rare``; among those, the one whose centre is nearest the centroid of the
    ``rare`` pixels it holds (nearest the image centre when there are none); the first of equals."""
    height, width = (min(size, extent) for extent in labels.shape)
    hits = (labels == rare).astype(np.float64)
    rows, cols = np.indices(labels.shape)
    count, row_sum, col_sum = (_window_sums(a, height, width) for a in (hits, hits * rows, hits * cols))
    top, left = np.indices(count.shape)
    middle_row, middle_col = top + (height - 1) / 2, left + (width - 1) / 2
    if count.max() > 0:
        aim_row, aim_col = row_sum / np.maximum(count, 1), col_sum / np.maximum(count, 1)
    else:
        aim_row, aim_col = (labels.shape[0] - 1) / 2, (labels.shape[1] - 1) / 2
    distance = (middle_row - aim_row) ** 2 + (middle_col - aim_col) ** 2
    distance[count < count.max()] = np.inf
    start_row, start_col = np.unravel_index(int(np.argmin(distance)), distance.shape)
    return slice(int(start_row), int(start_row) + height), slice(int(start_col), int(start_col) + width)


def _window_sums(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Sums of ``values`` over every ``height × width`` window, indexed by the window's top-left pixel."""
    t = np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return t[height:, width:] - t[:-height, width:] - t[height:, :-width] + t[:-height, :-width]


def error_codes(prediction: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per pixel, what ``prediction`` is against the target ``labels`` (:data:`IGNORE` for ignored
    pixels): ``BACKGROUND`` (both background), ``CORRECT`` (the right foreground class),
    ``FALSE_POSITIVE``, ``FALSE_NEGATIVE``, ``WRONG_CLASS`` or ``IGNORED`` (see the module docstring)."""
    codes = np.full(labels.shape, BACKGROUND, dtype=np.uint8)
    truth, predicted = labels > 0, prediction > 0
    codes[truth & (prediction == labels)] = CORRECT
    codes[(labels == 0) & predicted] = FALSE_POSITIVE
    codes[truth & ~predicted] = FALSE_NEGATIVE
    codes[truth & predicted & (prediction != labels)] = WRONG_CLASS
    codes[labels == IGNORE] = IGNORED
    return codes


def grey_or_rgb(image: np.ndarray) -> np.ndarray:
    """An image ``(C, H, W)`` as RGB ``(H, W, 3)`` in [0, 1]: channel 0 in grey, or the three channels
    when there are three, min-max rescaled."""
    shown = image[:3] if image.shape[0] == 3 else image[:1].repeat(3, 0)
    low, high = float(np.min(shown)), float(np.max(shown))
    return np.moveaxis((shown - low) / (high - low if high > low else 1.0), 0, -1).astype(np.float64)


def paint(base: np.ndarray, labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``base (H, W, 3)`` with the class map ``labels`` over it, scored against ``target``: correct
    foreground in its class colour (half transparent), errors in their colours (nearly opaque), ignored
    target pixels a grey checkerboard. ``paint(base, target, target)`` is the ground truth."""
    from matplotlib.colors import to_rgb

    codes = error_codes(labels, target)
    colours = np.zeros(base.shape)
    alpha = np.zeros(target.shape)
    correct = codes == CORRECT
    palette = np.array([to_rgb(colour) for colour in CLASS_COLOURS])
    colours[correct] = palette[(target[correct] - 1) % len(palette)]
    alpha[correct] = 0.55
    for code, colour in ERROR_COLOURS.items():
        colours[codes == code], alpha[codes == code] = to_rgb(colour), 0.9
    ignored = codes == IGNORED  # an opaque grey checkerboard: no image content looks like it
    colours[ignored] = np.where(np.indices(target.shape).sum(0) % 2, *IGNORED_GREYS)[ignored][:, None]
    alpha[ignored] = 1.0
    return base * (1 - alpha[..., None]) + colours * alpha[..., None]


def _heatmap(c: Comparison, shown: List[int], values: np.ndarray, best: List[Any], title: str) -> bytes:
    """Losses by scored classes, each cell's Dice written in it (bold where that loss is best)."""
    from matplotlib.figure import Figure

    count = len(c.losses)
    width = float(np.clip(3.0 + 0.5 * len(shown), 6.0, 14.0))
    cell = (width - 3.0) / len(shown)
    figure = Figure(figsize=(width, 2.2 + 0.42 * count), layout="constrained")
    axis = figure.subplots()
    picture = axis.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    size = 8 if cell >= 0.45 else 6
    for (m, j), value in np.ndenumerate(values):
        text = "n/a" if not math.isfinite(value) else f"{value:.2f}"
        axis.text(j, m, text if cell >= 0.3 else text.lstrip("0"), ha="center", va="center", fontsize=size,
                  color="black" if value > 0.6 else "white",
                  fontweight="bold" if best[j] == m else "normal")  # fmt: skip
    axis.set_xticks(range(len(shown)), [c.classes[k] for k in shown], rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(count), [_wrap(loss, 40) for loss in c.losses], fontsize=8)
    figure.colorbar(picture, ax=axis, label="test Dice", fraction=0.04, pad=0.01)
    bold = "bold: better than every other loss beyond noise" if c.claims else TOO_FEW
    axis.set_title(_wrap(f"{title}; {bold}", int(width * 13)), fontsize=10)
    return _png(figure)


def _curves(results: Sequence[RunResult], loss: str, name: str) -> Tuple[np.ndarray, Tuple[np.ndarray, ...]]:
    """Epochs ``1..E`` and the mean, min and max over seeds of one history entry per epoch (non-finite
    values left out; NaN where no seed has one)."""
    rows = [r.history[name] for r in results if r.loss == loss]
    epochs = min(len(row) for row in rows)
    values = np.array([row[:epochs] for row in rows], dtype=np.float64).reshape(len(rows), epochs)
    values[~np.isfinite(values)] = np.nan
    with warnings.catch_warnings():  # an epoch that no seed has a finite value of is NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = (np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0))
    return np.arange(1, epochs + 1), spread


def _grid(panels: int) -> Tuple[int, int]:
    """``(columns, rows)`` for ``panels`` small multiples, at most :data:`MAX_COLUMNS` a row, rows even."""
    rows = math.ceil(panels / MAX_COLUMNS)
    return math.ceil(panels / rows), rows


def _loss_colour(k: int) -> Any:
    """``tab10`` for the first ten losses, then the light shades of the same hues (``tab20``'s odd
    entries): twenty distinct colours, the first ten as before."""
    from matplotlib import colormaps

    if k % 20 < 10:
        return colormaps["tab10"](k % 10)
    return colormaps["tab20"](2 * (k % 10) + 1)


def _class_colour(k: int) -> str:
    return CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]


def _wrap(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters (its own line breaks kept)."""
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in text.split("\n"))


def _legend_columns(labels: Sequence[str], width: float) -> int:
    """How many legend entries fit side by side in ``width`` inches (about 6.5 px a character at 8 pt)."""
    longest = max(len(line) for label in labels for line in label.split("\n"))
    return max(1, min(len(labels), int(width * DPI // (longest * 6.5 + 40))))


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)  # never cut off text
    return buffer.getvalue()
