"""The comparison's report: ``report.md`` (verdict first), ``results.json``, ``results.csv`` and the plots."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .._core.errors import expected
from ..data import DataSet
from .output import OutputFolder
from .plots import learning_curves, overlays, per_class_dice
from .training import STATS, RunResult, Settings, ordered, patch_size, scored_classes
from .verdict import COUNT_METRICS, MIN_SEEDS, Comparison, Scores, compare_scores, metric_names

REPORT_FILES = ("report.md", "results.json", "results.csv", "learning_curves.png", "per_class_dice.png",
                "overlays.png")  # fmt: skip
LABELS = {"dice": "mean Dice", "iou": "IoU", "boundary_iou": "Boundary IoU", "hd95": "HD95",
          "precision": "precision", "recall": "recall"}  # fmt: skip


def scores_of(results: Sequence[RunResult]) -> Scores:
    """The runs' per-image statistics as arrays ``(losses, seeds, images, classes)``."""
    losses, seeds = ordered(results)
    by_run = {(r.loss, r.seed): r for r in results}
    missing = [(loss, seed) for loss in losses for seed in seeds if (loss, seed) not in by_run]
    if missing:
        raise expected("a result for every loss and seed", f"none for {missing[:3]}")
    arrays = {
        name: np.array(
            [[by_run[(loss, seed)].stats[name] for seed in seeds] for loss in losses], dtype=np.float64
        )
        for name in STATS
    }  # None (an undefined HD95) becomes NaN
    return Scores(**arrays)


def analyse(results: Sequence[RunResult], data: DataSet) -> Comparison:
    losses, seeds = ordered(results)
    by_run = {(r.loss, r.seed): r for r in results}
    curves = [np.array([by_run[(loss, seed)].history["test_dice"] for seed in seeds]) for loss in losses]
    return compare_scores(scores_of(results), losses, data.classes, scored_classes(data), curves)


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(bounds: np.ndarray, digits: int = 3) -> str:
    return "" if not np.all(np.isfinite(bounds)) else f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def verdict_lines(c: Comparison) -> List[str]:
    """The verdict in plain words (see :mod:`seglosses.compare.verdict`), one paragraph per line."""
    lead = c.leader
    name = f"`{c.losses[lead]}`"
    value = f"mean Dice {c.values['dice'][lead]:.3f}{_interval(c.intervals['dice'][lead])}"
    if len(c.losses) == 1:
        return [f"Only one loss: nothing to compare. {name}: {value}."]
    if not c.claims:
        seeds = c.per_seed["dice"].shape[1]
        return [
            f"Highest: {name}, {value}. With {seeds} seed{'s' if seeds > 1 else ''} the training noise "
            "cannot be "
            f"bounded, so no loss is declared better than another: use --seeds {MIN_SEEDS} or more."
        ]
    within, worse = [], []
    for k, loss in enumerate(c.losses):
        if k == lead:
            continue
        delta, low, high = c.differences["dice"][k]
        if high < 0:
            worse.append(f"`{loss}` is worse by {-delta:.3f} [{-high:.3f}, {-low:.3f}]")
        else:
            within.append(f"`{loss}`")
    if c.best["dice"] == lead:
        lines = [
            f"**Best: {name}**, {value}; every other loss is worse beyond noise: " + "; ".join(worse) + "."
        ]
    else:
        together = " and ".join([", ".join(within[:-1]), within[-1]] if len(within) > 1 else within)
        verb = "are" if len(within) > 1 else "is"
        lines = [f"Highest: {name}, {value}; {together} {verb} within noise of it, so no loss is clearly best"
                 + ("; " + "; ".join(worse) if worse else "") + "."]  # fmt: skip
    late = [f"`{loss}`" for loss, ok in zip(c.losses, c.converged) if ok is False]
    if late:
        lines.append(
            f"Not converged: {', '.join(late)} (test Dice still rose over the last epochs): raise --epochs."
        )
    if all(ok is None for ok in c.converged):
        lines.append("Too few epochs (under 4) to tell whether training converged.")
    return lines


def what_it_means(c: Comparison, seeds: int, images: int) -> str:
    scored = [c.classes[k] for k in np.flatnonzero(c.scored)]
    units = f"{seeds} seed{'s' if seeds != 1 else ''}"
    return (
        "Mean Dice is the primary metric: the Dice of the test pixels pooled over the test images, averaged "
        f"over the foreground classes present in the test split ({', '.join(scored)}), then over the "
        f"{units}. Intervals are 95 %: a paired bootstrap over the "
        f"{f'{images} test images' if images != 1 else 'test image'} and "
        f'the {units} gives the standard error, Student\'s t over the seeds the width; "within noise" means '
        "the interval of the difference includes 0."
    )


def results_table(c: Comparison) -> str:
    """Per loss: every metric over the scored classes, each class's Dice; bold only beyond noise."""
    columns = metric_names(c.classes)
    shown = [m for m in columns if not (m.startswith("dice_") and not c.scored[int(m[5:])])]
    heads = [LABELS.get(m, c.classes[int(m[5:])] + " Dice" if m.startswith("dice_") else m) for m in shown]
    heads = [h + " (px, lower is better)" if m == "hd95" else h for m, h in zip(shown, heads)]
    lines = ["| loss | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(shown)]
    for k, loss in enumerate(c.losses):
        cells = []
        for metric in shown:
            text = _number(c.values[metric][k], 1 if metric == "hd95" else 3)
            if metric == "dice":
                text += _interval(c.intervals[metric][k])
            if metric == "hd95":
                text += f" ({int(c.missed[k][c.scored].sum())} missed)"
            cells.append(f"**{text}**" if c.best.get(metric) == k else text)
        lines.append(f"| `{loss}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(c: Comparison, seeds: Sequence[int], results: Sequence[RunResult]) -> str:
    scored = np.flatnonzero(c.scored)
    heads = ["loss", "seed", "mean Dice", *[f"{c.classes[k]} Dice" for k in scored], "wall time", "run"]
    lines = ["| " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * (len(heads) - 2)]
    by_run = {(r.loss, r.seed): r for r in results}
    for k, loss in enumerate(c.losses):
        for s, seed in enumerate(seeds):
            run = by_run[(loss, seed)]
            cells = [f"`{loss}`", str(seed), _number(c.per_seed["dice"][k, s]),
                     *[_number(c.per_seed[f"dice_{j}"][k, s]) for j in scored],
                     f"{run.seconds:.0f} s", "reused" if run.reused else "trained now"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hd95_table(c: Comparison) -> str:
    """Per loss and scored class: the mean HD95, the (seed, image) pairs it is defined on, and the
    pairs where the class is in the target but was not predicted."""
    scored = np.flatnonzero(c.scored)
    heads = ["loss", *[f"{c.classes[k]}: HD95 (pairs scored / missed)" for k in scored]]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * len(scored)]
    for k, loss in enumerate(c.losses):
        cells = [f"{c.hd95_per_class[k, j]:.1f}" if math.isfinite(c.hd95_per_class[k, j]) else "n/a"
                 for j in scored]  # fmt: skip
        cells = [
            f"{cell} ({int(c.hd95_pairs[k, j])} / {int(c.missed[k, j])})" for cell, j in zip(cells, scored)
        ]
        lines.append(f"| `{loss}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_table(
    settings: Settings, data: DataSet, results: Sequence[RunResult], seeds: Sequence[int]
) -> str:
    size = " × ".join(str(s) for s in patch_size(settings, data))
    reused = sum(r.reused for r in results)
    rows = [
        ("data", f"`{data.spec}`: {data.channels}-channel {data.spatial_dims}-D images"),
        ("split", data.split),
        ("classes", ", ".join(f"{k} {name}" for k, name in enumerate(data.classes))
                    + f" (from {data.class_source})"),
        ("ignored mask value", "none" if data.ignore_index is None else str(data.ignore_index)),
        ("model", f"U-Net, width {settings.width}, depth {settings.depth}, {data.spatial_dims}-D; "
                  "softmax head "
                  "(argmax), or one sigmoid channel for binary losses (σ(z) > 0.5)"),
        ("optimizer", f"Adam, learning rate {settings.learning_rate:g} with polynomial decay (power 0.9)"),
        ("training", f"{settings.epochs} epochs × {settings.steps_per_epoch} steps × batch "
                     f"{settings.batch_size} patches of {size}; {settings.oversample:.0%} of each batch "
                     "centred on a foreground class"),
        ("test prediction", f"sliding window of {size}, overlap 0.5, Gaussian weighting"),
        ("seeds", ", ".join(str(s) for s in seeds)),
        ("device", f"{settings.device}" + (" with bf16 autocast" if settings.amp else "")
                   + (f", {settings.nproc} processes" if settings.nproc > 1 else "")),
        ("wall time per run", f"{np.mean([r.seconds for r in results]):.0f} s on average "
                              f"({sum(r.seconds for r in results) / 60:.1f} min in all)"),
        ("runs", f"{len(results) - reused} trained now, {reused} reused from an earlier start"),
    ]  # fmt: skip
    return "\n".join(["| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])


def data_lines(data: DataSet, c: Comparison) -> List[str]:
    lines = [f"- {note}" for note in data.notes]
    absent = [name for name, here in zip(data.classes, data.present_in_test()) if not here]
    if absent:
        lines.append(f"- not in any test mask, so n/a and in no mean: {', '.join(absent)}")
    train, test = data.train_counts.sum(0), data.test_counts.sum(0)
    lines.append("- pixels per class (train / test): " + "; ".join(
        f"{name} {int(a)} / {int(b)}" for name, a, b in zip(data.classes, train, test)))  # fmt: skip
    return lines


def write_report(
    results: Sequence[RunResult], settings: Settings, data: DataSet, out: OutputFolder
) -> List[str]:
    """Write every report file into ``out`` (checked by ``claim`` before training); returns the verdict."""
    c = analyse(results, data)
    losses, seeds = ordered(results)
    images = len(data.test)
    verdict = verdict_lines(c)
    out.write_report_file("results.json", json.dumps(_json(c, results, settings, data), indent=1).encode())
    out.write_report_file("results.csv", _csv(c, results))
    plots = {
        "learning_curves.png": learning_curves(results, data),
        "per_class_dice.png": per_class_dice(c),
        "overlays.png": overlays(results, data, out.runs),
    }
    for name, png in plots.items():
        out.write_report_file(name, png)
    report = [
        f"# Loss comparison on `{data.spec}`", "", "## Verdict", "", *[f"{line}\n" for line in verdict],
        what_it_means(c, len(seeds), images), "",
        "## Results", "", results_table(c), "",
        "Bold: better than every other loss, the 95 % interval of each difference excluding 0 (none bold: no "
        "loss is clearly better on that metric). Means over the scored foreground classes; HD95 over the "
        "(seed, image, class) cases where the class is in both the prediction and the target, with how often "
        "a loss missed a class it should have found; bold on HD95 compares two losses only where both "
        "have it.",
        "", "## Per seed", "", per_seed_table(c, seeds, results), "",
        "## HD95 per class", "", hd95_table(c), "",
        "HD95 in pixels over the (seed, image) pairs where the class is in both the prediction and the "
        "target; missed: pairs where the class is in the target and was not predicted at all.", "",
        "## Settings", "", settings_table(settings, data, results, seeds), "",
        "## Data", "", *data_lines(data, c), "",
        "## Figures", "", *[f"![{name[:-4]}]({name})" for name in plots], "",
    ]  # fmt: skip
    out.write_report_file("report.md", "\n".join(report).encode())
    return verdict


def _clean(value: Any) -> Any:
    """numpy values as JSON: arrays as lists, NaN as null."""
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json(c: Comparison, results: Sequence[RunResult], settings: Settings, data: DataSet) -> Dict[str, Any]:
    losses, seeds = ordered(results)
    summary: Dict[str, Any] = {}
    for k, loss in enumerate(losses):
        summary[loss] = {
            metric: {"value": c.values[metric][k], "interval": c.intervals[metric][k],
                     "difference_to_best": c.differences[metric][k], "best": c.best.get(metric) == k}
            for metric in c.values
        }  # fmt: skip
        summary[loss]["converged"] = c.converged[k]
        summary[loss]["missed"] = c.missed[k]
    runs = [{**r.to_json(), "reused": r.reused, "per_class": _per_class(r)} for r in results]
    return _clean({
        "verdict": verdict_lines(c), "leader": losses[c.leader], "best": c.best,
        "classes": list(data.classes), "scored": [data.classes[k] for k in np.flatnonzero(c.scored)],
        "data": {"spec": data.spec, "split": data.split, "class_source": data.class_source,
                 "values": list(data.values), "ignore_index": data.ignore_index, "notes": list(data.notes),
                 "train": [case.name for case in data.train], "test": [case.name for case in data.test]},
        "settings": settings.__dict__, "seeds": seeds, "summary": summary, "runs": runs,
    })  # fmt: skip


def _per_class(run: RunResult) -> Dict[str, List[Optional[float]]]:
    """A run's per-class metrics over the whole test split (None for a class absent from it)."""
    stats = {
        name: np.array(run.stats[name], dtype=np.float64).reshape(-1, len(run.stats["tp"][0]))
        for name in STATS
    }
    pooled = {name: value.sum(0) for name, value in stats.items() if name != "hd95"}
    present = (pooled["tp"] + pooled["fn"]) > 0
    values = {name: [float(v) if here else None for v, here in zip(metric(pooled), present)]
              for name, metric in COUNT_METRICS.items()}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class with no defined HD95: NaN, then None
        distance = np.nanmean(stats["hd95"], 0)
    values["hd95"] = [float(v) if here and math.isfinite(v) else None for v, here in zip(distance, present)]
    return values


def _csv(c: Comparison, results: Sequence[RunResult]) -> bytes:
    """One row per (loss, seed): the mean Dice and every scored class's metrics."""
    scored = np.flatnonzero(c.scored)
    names = [c.classes[k] for k in scored]
    metrics = list(LABELS)
    seeds = ordered(results)[1]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["loss", "seed", "mean_dice", *[f"{m}[{n}]" for m in metrics for n in names], "seconds",
                     "reused"])  # fmt: skip
    for r in results:
        per_class = _per_class(r)
        cells = [per_class[m][k] for m in metrics for k in scored]
        k, s = c.losses.index(r.loss), seeds.index(r.seed)
        writer.writerow([r.loss, r.seed, f"{c.per_seed['dice'][k, s]:.6f}",
                         *["" if v is None else f"{v:.6f}" for v in cells], f"{r.seconds:.1f}",
                         int(r.reused)])  # fmt: skip
    return buffer.getvalue().encode()
