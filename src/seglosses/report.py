"""The comparison's report: results.json, results.csv, report.md and PNG plots (matplotlib)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from torch import Tensor

from .compare import RunResult, Settings, slug, write_atomically

METRICS = ("dice", "iou", "boundary_iou", "hd95", "precision", "recall")
LOWER_IS_BETTER = {"mean_hd95"}  # a distance in pixels; every other column is a score


def summarise(results: Sequence[RunResult]) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Per loss: mean and standard deviation over seeds of the macro mean of each metric, and of each
    class's Dice (``dice_<c>``)."""
    by_loss: Dict[str, List[RunResult]] = defaultdict(list)
    for result in results:
        by_loss[result.loss].append(result)
    summary: Dict[str, Dict[str, Tuple[float, float]]] = {}
    for loss, runs in by_loss.items():
        values: Dict[str, List[float]] = defaultdict(list)
        for run in runs:
            for metric in METRICS:
                values[f"mean_{metric}"].append(float(np.mean(run.per_class[metric])))
            for c, dice in enumerate(run.per_class["dice"]):
                values[f"dice_{c}"].append(dice)
        summary[loss] = {name: (float(np.mean(v)), float(np.std(v))) for name, v in values.items()}
    return summary


def markdown_table(summary: Dict[str, Dict[str, Tuple[float, float]]]) -> str:
    """``mean ± std`` per loss and column; the best mean of each column in bold."""
    columns = list(next(iter(summary.values())))
    best = {
        column: (min if column in LOWER_IS_BETTER else max)(stats[column][0] for stats in summary.values())
        for column in columns
    }
    lines = ["| loss | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for loss, stats in summary.items():
        cells = []
        for column in columns:
            mean, std = stats[column]
            text = f"{mean:.3f} ± {std:.3f}"
            cells.append(f"**{text}**" if mean == best[column] else text)
        lines.append(f"| `{loss}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    results: Sequence[RunResult], settings: Settings, out: Path, test_pair: Tuple[Tensor, Tensor]
) -> List[Path]:
    """Write every output file into ``out`` (atomically); return their paths."""
    summary = summarise(results)
    runs = [{"loss": r.loss, "seed": r.seed, "per_class": r.per_class, "history": r.history} for r in results]
    payload = {"settings": settings.__dict__, "summary": summary, "runs": runs}
    write_atomically(out / "results.json", json.dumps(payload, indent=1).encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["loss", "seed", "class", *METRICS])
    for r in results:
        for c in range(len(r.per_class["dice"])):
            writer.writerow([r.loss, r.seed, c, *[f"{r.per_class[m][c]:.6f}" for m in METRICS]])
    write_atomically(out / "results.csv", buffer.getvalue().encode())
    plots = [
        _learning_curves(results, out),
        _per_class_bars(summary, out),
        _overlays(results, out, test_pair),
    ]
    seeds = sorted({r.seed for r in results})
    report = [
        "# Loss comparison",
        "",
        f"Data `{settings.data}`, {settings.epochs} epochs × {settings.steps_per_epoch} steps of "
        f"{settings.batch_size} patches of {settings.patch} pixels per axis, U-Net width {settings.width}, "
        f"seeds {seeds}. "
        "Test-split metrics of the final models, mean ± std over seeds; best mean per column in bold "
        "(HD95: the 95th-percentile Hausdorff distance in pixels, lower is better).",
        "",
        markdown_table(summary),
        "",
        *[f"![{path.stem}]({path.name})" for path in plots],
        "",
    ]
    write_atomically(out / "report.md", "\n".join(report).encode())
    return [out / "results.json", out / "results.csv", out / "report.md", *plots]


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    _pyplot().close(figure)
    write_atomically(path, buffer.getvalue())
    return path


def _learning_curves(results: Sequence[RunResult], out: Path) -> Path:
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for loss in dict.fromkeys(r.loss for r in results):
        runs = [r for r in results if r.loss == loss]
        epochs = np.arange(1, len(runs[0].history["test_dice"]) + 1)
        left.plot(epochs, np.mean([r.history["train_loss"] for r in runs], 0), label=loss)
        right.plot(epochs, np.mean([r.history["test_dice"] for r in runs], 0), label=loss)
    left.set(xlabel="epoch", ylabel="training loss", title="training loss (own scale per loss)")
    right.set(xlabel="epoch", ylabel="test mean Dice", title="test mean Dice", ylim=(0, 1))
    right.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, out / "learning_curves.png")


def _per_class_bars(summary: Dict[str, Dict[str, Tuple[float, float]]], out: Path) -> Path:
    plt = _pyplot()
    losses = list(summary)
    classes = sorted(int(k.split("_")[1]) for k in summary[losses[0]] if k.startswith("dice_"))
    figure, axes = plt.subplots(figsize=(max(5, 1.6 * len(classes) * len(losses) / 3), 3.8))
    width = 0.8 / len(losses)
    for k, loss in enumerate(losses):
        means = [summary[loss][f"dice_{c}"][0] for c in classes]
        stds = [summary[loss][f"dice_{c}"][1] for c in classes]
        axes.bar(np.arange(len(classes)) + k * width, means, width, yerr=stds, label=loss, capsize=2)
    axes.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, [f"class {c}" for c in classes])
    axes.set(ylabel="test Dice", ylim=(0, 1), title="per-class Dice (mean ± std over seeds)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, out / "per_class_dice.png")


def _overlays(results: Sequence[RunResult], out: Path, test_pair: Tuple[Tensor, Tensor]) -> Path:
    plt = _pyplot()
    image, labels = test_pair
    losses = list(dict.fromkeys(r.loss for r in results))
    seed = min(r.seed for r in results)
    figure, axes = plt.subplots(1, len(losses) + 1, figsize=(2.6 * (len(losses) + 1), 3.4))
    classes = int(labels.max()) + 1
    middle = labels.shape[0] // 2 if labels.ndim == 3 else None  # a 3-D volume shows its middle slice

    def plane(volume: np.ndarray) -> np.ndarray:
        return volume if middle is None else volume[middle]

    panels = [("target", plane(labels.numpy()))]
    for loss in losses:
        prediction = np.load(out / "runs" / slug(loss) / f"seed{seed}_prediction.npy")
        panels.append((loss, plane(prediction)))
    for axis, (title, label_map) in zip(axes, panels):
        axis.imshow(plane(image[0].numpy()), cmap="gray")
        masked = np.ma.masked_where(label_map == 0, label_map)
        axis.imshow(masked, cmap="autumn", alpha=0.45, vmin=1, vmax=max(2, classes - 1))
        axis.set_title(title, fontsize=8)
        axis.axis("off")
    figure.suptitle(f"test image, predictions of seed {seed}", fontsize=9)
    figure.tight_layout()
    return _save(figure, out / "overlays.png")
