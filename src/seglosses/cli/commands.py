"""The ``seglosses`` subcommands (click)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import List, Optional, Tuple

import click
import torch

from .._core.errors import SegLossError
from .._core.registry import get_entry, list_losses, parse_spec
from ..compare import Settings
from ..data import SPLIT_RULE, load_data
from ..data.classes import parse_classes_option
from ..losses.compound import create_loss
from ..weights import METHODS, class_weights


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.pass_context
def cli(context: click.Context) -> None:
    """Segmentation losses: list and plot them, and weigh classes from data."""
    if context.invoked_subcommand is None:
        click.echo(context.get_help())


@cli.command("list")
def list_command() -> None:
    """The registered losses, with their input domain and a one-line description."""
    entries = list_losses(details=True)
    width = max(len(entry.name) for entry in entries)
    domain = max(len(entry.domain) for entry in entries)
    kind = max(len(entry.kind) for entry in entries)
    for entry in entries:
        columns = f"{entry.name:<{width}}  {entry.domain:<{domain}}  {entry.kind:<{kind}}"
        click.echo(f"{columns}  {entry.description}")


DEFAULT_LOSSES = ("ce", "dice", "focal(gamma=2)", "ce + dice")
DATA_HELP = (
    "nuclei, nuclei:2, brain, brain:3d, folder:PATH or nnunet:PATH. folder:PATH reads PATH/images and "
    "PATH/masks (paired by name; any Pillow format, masks lossless; NIfTI volumes) and PATH/dataset.json "
    f"if present; the test split is {SPLIT_RULE}. nnunet:PATH reads an nnU-Net v2 raw data set (imagesTs + "
    "labelsTs as the test split if present)."
)


def resolve_device(text: str) -> str:
    """``--device``: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SegLossError(f"expected --device auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise SegLossError(f"expected --device auto, cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        raise SegLossError(f"expected an available CUDA device for --device {text}, got none")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise SegLossError(f"expected --device cuda:0..{torch.cuda.device_count() - 1}, got {text!r}")
    return str(device)


@cli.command("compare")
@click.argument("loss_args", nargs=-1, metavar="[LOSS]...")
@click.option(
    "--losses", "loss_options", multiple=True, help="Loss spec (repeatable; or give them as arguments)."
)
@click.option("--data", default="nuclei", show_default=True, help=DATA_HELP)
@click.option("--classes", default=None,
              help="The classes when the data set has no dataset.json: a count (3) or names "
                   "(background,cell,membrane); mask values must then be 0..K-1.")  # fmt: skip
@click.option("--ignore-index", type=int, default=None,
              help="A mask value (e.g. 255) to leave out of training and of every metric.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(1, 10_000), default=Settings.epochs, show_default=True)
@click.option("--steps", type=click.IntRange(1, 100_000), default=Settings.steps_per_epoch, show_default=True,
              help="Training steps per epoch.")  # fmt: skip
@click.option("--seeds", type=click.IntRange(1, 100), default=3, show_default=True, help="Seeds 0..N-1.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=Settings.batch_size, show_default=True)
@click.option("--patch", type=click.IntRange(8, 4096), default=Settings.patch, show_default=True,
              help="Training patch (pixels per axis); larger test images are predicted by sliding "
                   "windows.")  # fmt: skip
@click.option("--width", type=click.IntRange(1, 512), default=Settings.width, show_default=True)
@click.option("--lr", type=click.FloatRange(0, 10, min_open=True), default=Settings.learning_rate,
              show_default=True, help="Adam's learning rate (decayed polynomially to 0).")  # fmt: skip
@click.option("--oversample", type=click.FloatRange(0, 1), default=Settings.oversample, show_default=True,
              help="Fraction of each batch's patches centred on a random foreground class.")  # fmt: skip
@click.option(
    "--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N."
)
@click.option("--amp", is_flag=True, help="bf16 autocast on CUDA (no effect on the CPU).")
@click.option("--workers", type=click.IntRange(0, 256), default=0, show_default=True,
              help="DataLoader worker processes that read and crop the images.")  # fmt: skip
@click.option("--nproc", type=click.IntRange(1, 1024), default=None,
              help="Processes under torch.distributed (DDP; the batch is split between them). Default 1, or "
              "torchrun's world size when started by torchrun.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("seglosses-compare"),
              show_default=True, help="Output folder; run again with the same one to resume.")  # fmt: skip
def compare_command(
    loss_args: Tuple[str, ...], loss_options: Tuple[str, ...], data: str, classes: Optional[str],
    ignore_index: Optional[int], epochs: int, steps: int, seeds: int, batch_size: int, patch: int, width: int,
    lr: float, oversample: float, device: str, amp: bool, workers: int, nproc: Optional[int], out: Path,
) -> None:  # fmt: skip
    """Train a small U-Net with each LOSS (same budget and seeds) and say which wins, and how sure that is.

    Writes report.md (the verdict first, with 95 % intervals: a paired bootstrap over test images and
    seeds, Student's t over the seeds), results.json, results.csv and PNG plots into --out. Killed at
    any point and started again with the same --out, it skips finished runs and resumes unfinished
    ones; changed data or settings retrain. It never deletes or overwrites a file it did not write.

    Binary losses (bce, binary_dice, ...) train a one-channel sigmoid head on two-class data and may be
    mixed with softmax losses.

    Example: seglosses compare ce dice "focal(gamma=2)" "ce + dice" --epochs 20 --data folder:my-data

    Several processes: --nproc 2 on one machine; across nodes, start it on each with torchrun, e.g.
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-endpoint HOST:29500 -m seglosses.cli compare ...
    (the output folder on a shared file system; rank 0 writes it).
    """
    from ..compare import check_specs, compare, launched_by_torchrun
    from ..compare.output import OutputFolder
    from ..compare.report import REPORT_FILES, write_report

    specs = list(loss_options + loss_args) or list(DEFAULT_LOSSES)
    check_specs(specs)
    parse_classes_option(classes)  # every option is checked before any data is read
    resolved = resolve_device(device)
    if amp and not resolved.startswith("cuda"):
        click.echo("note: --amp applies to CUDA only; training on the CPU in float32", err=True)
    world = int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1
    rank = int(os.environ["RANK"]) if launched_by_torchrun() else 0
    dataset = load_data(data, classes=classes, ignore_index=ignore_index, workers=workers, progress=rank == 0)
    settings = Settings(epochs=epochs, steps_per_epoch=steps, batch_size=batch_size, patch=patch, width=width,
                        learning_rate=lr, oversample=oversample, device=resolved,
                        amp=amp and resolved.startswith("cuda"), nproc=nproc or world,
                        workers=workers)  # fmt: skip
    total = len(specs) * seeds * epochs
    from tqdm import tqdm

    with tqdm(total=total, desc="training", unit="epoch", disable=rank != 0) as bar:

        def progress(spec: str, seed: int, epoch: int, dice: float) -> None:
            bar.set_postfix_str(f"{spec} seed {seed}: test Dice {dice:.3f}")
            bar.update(1)

        results = compare(specs, list(range(seeds)), settings, dataset, out, progress, REPORT_FILES)
        bar.update(total - bar.n)
    if rank != 0:
        return  # rank 0 writes the report
    verdict = write_report(results, settings, dataset, OutputFolder(out))
    for line in verdict:
        click.echo(line.replace("**", "").replace("`", ""))
    click.echo(f"report: {out / 'report.md'} (and results.json, results.csv, PNG plots)")


@cli.command("weights")
@click.argument("data", default="nuclei")
@click.option("--classes", default=None, help="The classes (a count or names) when the data declares none.")
@click.option("--ignore-index", type=int, default=None, help="A mask value to leave out of the counts.")
@click.option("--beta", type=float, default=0.9999, show_default=True, help="β of effective_number.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def weights_command(data: str, classes: Optional[str], ignore_index: Optional[int], beta: float,
                    as_json: bool) -> None:  # fmt: skip
    """Class pixel counts of DATA's training split and the class weights of every method.

    DATA is a data spec: nuclei (3 classes), nuclei:2, brain (2-D slices), brain:3d, folder:PATH
    (PATH/images and PATH/masks) or nnunet:PATH.
    """
    dataset = load_data(data, classes=classes, ignore_index=ignore_index, progress=True)
    counts = torch.from_numpy(dataset.train_counts.sum(0))
    table = {method: class_weights(counts, method=method, beta=beta).tolist() for method in METHODS}
    if as_json:
        payload = {
            "data": data,
            "classes": list(dataset.classes),
            "counts": counts.tolist(),
            "weights": table,
        }
        click.echo(json.dumps(payload, indent=2))
        return
    header = ["class", "pixels", "fraction", *METHODS]
    rows = [
        [name, str(int(n)), f"{int(n) / int(counts.sum()):.4f}", *[f"{table[m][c]:.4f}" for m in METHODS]]
        for c, (name, n) in enumerate(zip(dataset.classes, counts))
    ]
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


@cli.command("plot")
@click.argument("specs", nargs=-1, required=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path("losses.png"),
              show_default=True, help="PNG file to write.")  # fmt: skip
@click.option("--points", type=click.IntRange(10, 10_000), default=200, show_default=True)
def plot_command(specs: Tuple[str, ...], out: Path, points: int) -> None:
    """Plot the per-pixel loss of each pixel-loss SPEC against the true-class probability.

    Example: seglosses plot ce "focal(gamma=2)" "focal(gamma=5)" --out focal.png
    """
    curves = [(spec, *pixel_loss_curve(spec, points)) for spec in specs]
    _write_plot(curves, out)
    click.echo(f"wrote {out}")


def pixel_loss_curve(spec: str, points: int) -> Tuple[List[float], List[float]]:
    """The loss of one pixel whose true class has probability ``p``, for ``p`` in ``(0, 1)``.

    Softmax losses see two classes with logits ``(0, logit p)`` and target class 1; binary losses one
    channel with logit ``logit p`` and target 1.
    """
    entries = [get_entry(name) for _, name, _, _ in parse_spec(spec)]
    other = [f"{entry.name} ({entry.kind} loss)" for entry in entries if entry.kind != "pixel"]
    if other:
        raise SegLossError(f"expected pixel losses in {spec!r}, got {', '.join(other)}: no per-pixel value")
    binary = entries[0].domain == "binary"
    loss = create_loss(spec)
    probabilities = [(k + 0.5) / points for k in range(points)]
    values = []
    for p in probabilities:
        logit = math.log(p) - math.log1p(-p)
        if binary:
            logits, target = torch.tensor([[[logit]]], dtype=torch.float64), torch.ones(1, 1, 1)
        else:
            logits = torch.tensor([[[0.0], [logit]]], dtype=torch.float64)
            target = torch.ones(1, 1, dtype=torch.long)
        values.append(float(loss(logits, target)))
    return probabilities, values


def _write_plot(curves: List[Tuple[str, List[float], List[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for label, probabilities, values in curves:
        axes.plot(probabilities, values, label=label)
    axes.set_xlabel("probability of the true class")
    axes.set_ylabel("loss")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, max(1.0, min(5.0, max(max(v) for _, _, v in curves))))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
