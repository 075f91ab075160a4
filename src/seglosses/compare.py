"""Train the same small U-Net with several losses under the same budget and seeds, and compare them.

The engine behind ``seglosses compare``. Every (loss, seed) run is independent and resumable: after each
epoch its checkpoint is written atomically (and read back with ``weights_only=True``); a finished run
writes its result file atomically, and a later call with the same output folder and settings skips it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ._core.errors import expected
from .data import load_data
from .distributed import rank_and_size, sync_sum_
from .losses.compound import create_loss, loss_domain
from .metrics import BoundaryIoU, ConfusionMatrix, HausdorffDistance
from .models import UNet

Pair = Tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Settings:
    """What a run depends on; a run is resumed or skipped only under the same settings."""

    data: str = "nuclei"
    epochs: int = 8
    steps_per_epoch: int = 12
    batch_size: int = 8
    patch: int = 96
    width: int = 16
    depth: int = 3
    learning_rate: float = 3e-3
    device: str = "cpu"
    nproc: int = 1  # processes under torch.distributed (DDP); the batch is split between them
    result_format: int = 4  # bump when a result file's content changes, so old ones are not reused

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class RunResult:
    loss: str
    seed: int
    per_class: Dict[str, List[float]]  # final test metrics per class
    history: Dict[str, List[float]] = field(default_factory=dict)  # per epoch: train_loss, test_dice


def slug(spec: str) -> str:
    """A file-name-safe name for a loss spec (never escapes the output folder)."""
    text = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", spec.replace(" ", ""))[:60].strip("._") or "loss"
    return f"{text}-{hashlib.sha256(spec.encode()).hexdigest()[:6]}"


def write_atomically(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename it: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would give
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _to_bytes(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def random_patches(pairs: Sequence[Pair], count: int, size: int, generator: torch.Generator) -> Pair:
    """``count`` random crops of ``size`` per spatial axis (2-D or 3-D; the whole extent where it is
    smaller) from random pairs."""
    images, labels = [], []
    for _ in range(count):
        image, label = pairs[int(torch.randint(len(pairs), (1,), generator=generator))]
        window = []
        for extent in label.shape:
            length = min(size, extent)
            start = int(torch.randint(extent - length + 1, (1,), generator=generator))
            window.append(slice(start, start + length))
        images.append(image[tuple([slice(None)] + window)])
        labels.append(label[tuple(window)])
    return torch.stack(images), torch.stack(labels)


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files of atomic writes that a killed run left behind (``.<name>.<random>.tmp``).

    Only one comparison may write into an output folder at a time; this assumes it.
    """
    if out.is_dir():
        for stale in out.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)


def evaluate(
    model: torch.nn.Module, pairs: Sequence[Pair], num_classes: int, device: str
) -> Tuple[Dict[str, Tensor], List[Tensor]]:
    """Per-class test metrics (confusion-based; Boundary IoU summed over images; HD95 averaged over the
    images where the class is present) and this process's predictions.

    Under ``torch.distributed`` each process takes every W-th test image (rank 0 the first) and the
    sums are all-reduced once at the end, so every process returns the same metrics.
    """
    rank, world = rank_and_size()
    metric = ConfusionMatrix(num_classes, sync=False)
    hausdorff = HausdorffDistance(num_classes, sync=False)
    boundary = BoundaryIoU(num_classes, sync=False)
    predictions = []
    model.eval()
    with torch.no_grad():
        for image, labels in pairs[rank::world]:
            predicted = model(image[None].to(device)).argmax(1)[0].cpu()
            metric.update(predicted, labels)
            hausdorff.update(predicted[None], labels[None])
            boundary.update(predicted[None], labels[None])
            predictions.append(predicted)
    model.train()
    for state in (metric.matrix, hausdorff.total, hausdorff.count, boundary.intersection, boundary.union):
        sync_sum_(state)
    scores = metric.compute()
    scores["boundary_iou"] = boundary.compute()
    scores["hd95"] = hausdorff.compute()
    return scores, predictions


def _on_rank_zero(write: Callable[[], None]) -> None:
    """Run ``write`` on rank 0 only, then let every process pass only once it is done."""
    rank, world = rank_and_size()
    if rank == 0:
        write()
    if world > 1:
        dist.barrier()


_CHECKPOINT = "a seglosses checkpoint at {} (delete it to train that run afresh)"


def _load_checkpoint(path: Path) -> Dict[str, Any]:
    """A run's checkpoint, read with ``weights_only=True``; anything else is one clear error naming it."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # corrupt, truncated, or refused by the weights-only unpickler
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise expected(_CHECKPOINT.format(path), reason) from None
    if not isinstance(state, dict) or "settings" not in state:
        raise expected(_CHECKPOINT.format(path), type(state).__name__)
    return state


def _set_step(criterion: torch.nn.Module, step: int) -> None:
    """Tell a scheduled loss (a compound one, or ce / focal with a schedule) the step; others have none."""
    set_step = getattr(criterion, "set_step", None)
    if callable(set_step):
        set_step(step)


def run_one(
    spec: str,
    seed: int,
    settings: Settings,
    splits: Dict[str, List[Pair]],
    num_classes: int,
    folder: Path,
    on_epoch: Optional[Callable[[int, float], None]] = None,
) -> RunResult:
    """Train one (loss, seed) run, resuming from its checkpoint; return its result (also written)."""
    result_path = folder / f"seed{seed}.json"
    checkpoint_path = folder / f"seed{seed}.ckpt"
    criterion = create_loss(spec)
    torch.manual_seed(seed)
    image, labels = splits["train"][0]
    model = UNet(
        image.shape[0], num_classes, width=settings.width, depth=settings.depth, spatial_dims=labels.ndim
    )
    rank, world = rank_and_size()
    device = settings.device if world == 1 or settings.device == "cpu" else f"cuda:{rank}"
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history: Dict[str, List[float]] = {"train_loss": [], "test_dice": []}
    start = 0
    if checkpoint_path.exists():
        state = _load_checkpoint(checkpoint_path)
        if state["settings"] == settings.key():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            criterion.load_state_dict(state["criterion"])  # adaptive statistics, schedule steps
            history, start = state["history"], int(state["epoch"])
    # every process draws the same batch and trains on its share; DDP averages the gradients
    forward = model if world == 1 else torch.nn.parallel.DistributedDataParallel(model)
    for epoch in range(start, settings.epochs):
        _set_step(criterion, epoch)  # scheduled weights follow the completed epochs
        losses = []
        for _ in range(settings.steps_per_epoch):
            images, labels = random_patches(splits["train"], settings.batch_size, settings.patch, generator)
            images, labels = (torch.tensor_split(t, world)[rank].to(device) for t in (images, labels))
            loss = criterion(forward(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        mean_loss = sync_sum_(torch.stack(losses).mean().double().cpu()) / world
        scores, _ = evaluate(model, splits["test"], num_classes, device)
        history["train_loss"].append(float(mean_loss))
        history["test_dice"].append(float(scores["mean_dice"]))
        state = {
            "settings": settings.key(),
            "epoch": epoch + 1,
            "history": history,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "criterion": criterion.state_dict(),
        }
        payload = _to_bytes(lambda buffer: torch.save(state, buffer))  # noqa: B023
        _on_rank_zero(lambda: write_atomically(checkpoint_path, payload))  # noqa: B023
        if on_epoch is not None:
            on_epoch(epoch + 1, history["test_dice"][-1])
    scores, predictions = evaluate(model, splits["test"], num_classes, device)
    per_class = {
        name: scores[name].tolist() for name in ("dice", "iou", "boundary_iou", "hd95", "precision", "recall")
    }
    result = RunResult(spec, seed, per_class, history)

    def write_result() -> None:  # rank 0 holds the first test image's prediction
        prediction = predictions[0].numpy().astype(np.uint8)
        write_atomically(
            folder / f"seed{seed}_prediction.npy", _to_bytes(lambda buffer: np.save(buffer, prediction))
        )
        payload = {"settings": settings.key(), **asdict(result)}
        write_atomically(result_path, json.dumps(payload, indent=1).encode())

    _on_rank_zero(write_result)
    return result


def finished(folder: Path, seed: int, settings: Settings) -> Optional[RunResult]:
    """The run's result when it finished under the same settings, else None."""
    path = folder / f"seed{seed}.json"
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if payload.pop("settings", None) != settings.key():
        return None
    return RunResult(**payload)


def check_specs(specs: Sequence[str]) -> None:
    """Fail on a bad or binary loss spec before any training."""
    for spec in specs:
        create_loss(spec)
        if loss_domain(spec) != "softmax":
            raise expected("softmax losses (the comparison trains a multi-class U-Net)", f"{spec!r} (binary)")


def compare(
    specs: Sequence[str],
    seeds: Sequence[int],
    settings: Settings,
    out: Path,
    progress: Optional[Callable[[str, int, int, float], None]] = None,
    splits: Optional[Dict[str, List[Pair]]] = None,
) -> Tuple[List[RunResult], Dict[str, List[Pair]]]:
    """Every (loss, seed) run, finished ones read back instead of retrained (``splits``: preloaded data).

    With ``settings.nproc > 1`` the runs train in that many processes under ``torch.distributed`` (gloo
    on CPU, nccl on CUDA); this process waits for them and reads their results back.
    """
    check_specs(specs)
    if settings.batch_size % settings.nproc:
        raise expected(f"a batch size divisible by the {settings.nproc} processes", settings.batch_size)
    remove_stale_temporaries(out)
    splits = load_data(settings.data) if splits is None else splits
    num_classes = max(int(labels.max()) for _, labels in splits["train"] + splits["test"]) + 1
    if settings.nproc > 1 and launched_by_torchrun():
        _join_torchrun_group(settings)
        rank = dist.get_rank()
        results = _run_all(specs, seeds, settings, out, splits, num_classes, progress if rank == 0 else None)
        dist.barrier()
        return results, splits
    if settings.nproc > 1:
        _spawn(specs, seeds, settings, out, splits, num_classes, progress)
        found = [finished(out / "runs" / slug(spec), seed, settings) for spec in specs for seed in seeds]
        return [r for r in found if r is not None], splits
    return _run_all(specs, seeds, settings, out, splits, num_classes, progress), splits


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started (its environment says so)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _join_torchrun_group(settings: Settings) -> None:
    """Initialise the default process group from torchrun's environment (once)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if settings.device.startswith("cuda") else "gloo")
    if dist.get_world_size() != settings.nproc:
        world = dist.get_world_size()
        raise expected(f"{settings.nproc} processes (--nproc)", f"a torchrun world of {world}")


def _run_all(
    specs: Sequence[str],
    seeds: Sequence[int],
    settings: Settings,
    out: Path,
    splits: Dict[str, List[Pair]],
    num_classes: int,
    progress: Optional[Callable[[str, int, int, float], None]],
) -> List[RunResult]:
    results = []
    for spec in specs:
        folder = out / "runs" / slug(spec)
        for seed in seeds:
            done = finished(folder, seed, settings)
            if done is None:
                callback = (
                    None
                    if progress is None
                    else (lambda e, d, spec=spec, seed=seed: progress(spec, seed, e, d))
                )
                done = run_one(spec, seed, settings, splits, num_classes, folder, callback)
            results.append(done)
    return results


def _worker(
    rank: int,
    init_file: str,
    events: Any,
    args: Tuple[Sequence[str], Sequence[int], Settings, Path, Dict[str, List[Pair]], int],
) -> None:
    """One process of a distributed comparison; rank 0 reports each finished epoch through ``events``."""
    settings = args[2]
    backend = "nccl" if settings.device.startswith("cuda") else "gloo"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.nproc))
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=settings.nproc)
    try:
        report = (lambda *event: events.put(event)) if rank == 0 else None
        _run_all(*args, progress=report)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _spawn(
    specs: Sequence[str],
    seeds: Sequence[int],
    settings: Settings,
    out: Path,
    splits: Dict[str, List[Pair]],
    num_classes: int,
    progress: Optional[Callable[[str, int, int, float], None]],
) -> None:
    """Run every (loss, seed) in ``settings.nproc`` processes; relay rank 0's progress events."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    context = mp.get_context("spawn")
    events = context.SimpleQueue()

    def relay() -> None:
        while not events.empty():
            event = events.get()
            if progress is not None:
                progress(*event)

    with tempfile.TemporaryDirectory() as rendezvous:
        init_file = str(Path(rendezvous) / "init")
        args = (init_file, events, (specs, seeds, settings, out, splits, num_classes))
        processes = mp.start_processes(_worker, args=args, nprocs=settings.nproc, join=False)
        while not processes.join(timeout=0.2):
            relay()
        relay()
