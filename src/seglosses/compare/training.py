"""Train the same small U-Net with each loss under the same budget and seeds, and score it per test image.

The engine behind ``seglosses compare``. Every (loss, seed) run is independent and resumable: after each
epoch its checkpoint is written atomically (and read back with ``weights_only=True``); a finished run
writes its result file, and a later start with the same output folder skips it when its key matches.
The key covers the settings, the loss, the class definition and a fingerprint of the data, so changed
data or settings retrain; a checkpoint of other settings, or one that does not fit the model, is
trained afresh.

Training patches are drawn from the training cases, read on demand through a ``DataLoader``: patch
``j`` of a run depends only on ``(seed, j)``, so the run is the same with any number of loader workers
or processes. The last ``round(oversample · batch)`` patches of every batch are centred on a random
pixel of a random foreground class present in their case (nnU-Net's foreground oversampling). Test
images are predicted whole by sliding-window inference with overlapping windows of the patch size.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .._core.errors import SegLossError, expected
from .._core.registry import get_entry, parse_spec
from ..data import IGNORE, DataSet
from ..distributed import exit_spawned_worker, rank_and_size, sync_sum_
from ..losses.compound import create_loss
from ..metrics.boundary import boundary_iou_counts
from ..metrics.hausdorff import hausdorff_terms
from ..models import UNet, sliding_window_inference
from .output import OutputFolder

Progress = Callable[[str, int, int, float], None]
STATS = ("tp", "fp", "fn", "band_intersection", "band_union", "hd95")
LOCATIONS = 10_000  # foreground positions kept per (case, class) for oversampling
CURVE_IMAGES = 16  # the per-epoch test Dice of the learning curves is taken on at most this many test images


@dataclass(frozen=True)
class Settings:
    """What a run depends on besides the loss and the data (``workers`` changes nothing in the result)."""

    epochs: int = 12
    steps_per_epoch: int = 24
    batch_size: int = 8
    patch: int = 64
    width: int = 16
    depth: int = 3
    learning_rate: float = 3e-3
    oversample: float = 0.33  # fraction of each batch's patches centred on a foreground class
    device: str = "cpu"
    amp: bool = False  # bf16 autocast (CUDA only)
    nproc: int = 1  # processes under torch.distributed (DDP); the batch is split between them
    workers: int = 0  # DataLoader worker processes
    result_format: int = 5  # bump when a result file's content changes, so old ones are not reused

    def key(self, data: DataSet, spec: str) -> str:
        """The run key: these settings (the device by its type), the loss and the data's fingerprint."""
        fields = asdict(self)
        fields.pop("workers")
        fields["device"] = torch.device(self.device).type
        text = json.dumps([fields, spec, data.fingerprint()], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunResult:
    """One trained run: per test image and class the statistics :data:`STATS` (``hd95`` None where the
    class is not in both maps), the per-epoch ``train_loss`` and ``test_dice``, and its wall time."""

    loss: str
    seed: int
    stats: Dict[str, List[List[Optional[float]]]]
    history: Dict[str, List[float]]
    seconds: float = 0.0
    reused: bool = field(default=False, compare=False)

    def to_json(self) -> Dict[str, Any]:
        payload = asdict(self)
        payload.pop("reused")
        return payload


def slug(spec: str) -> str:
    """A file-name-safe name for a loss spec (never escapes the output folder)."""
    text = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", spec.replace(" ", ""))[:60].strip("._") or "loss"
    return f"{text}-{hashlib.sha256(spec.encode()).hexdigest()[:6]}"


def is_binary(spec: str) -> bool:
    """Whether a (checked) spec's losses are sigmoid losses: a one-channel head."""
    return get_entry(parse_spec(spec)[0][1]).domain == "binary"


def check_specs(specs: Sequence[str], num_classes: Optional[int] = None) -> None:
    """Fail on a bad spec before any data is read or any training: unknown names, bad options, an
    ``ignore_index`` of its own, a loss on embeddings, and a binary loss on more than two classes."""
    for spec in specs:
        create_loss(spec)
        for _, name, options, label in parse_spec(spec):
            domain = get_entry(name).domain
            if "ignore_index" in options:
                raise SegLossError(
                    f"expected no ignore_index in the compare spec {spec!r} (term {label!r}), got one: pass "
                    "--ignore-index V, which every loss and every metric then ignores"
                )
            if domain not in ("softmax", "binary"):
                raise expected(
                    "losses on logits (softmax or binary)", f"{name!r} ({domain} loss) in {spec!r}"
                )
        if num_classes is not None and num_classes > 2 and is_binary(spec):
            raise SegLossError(
                f"expected softmax losses on this {num_classes}-class task, got {spec!r}: a binary loss "
                "trains one sigmoid channel, which tells only two classes apart; use its softmax form "
                "(e.g. dice)"
            )


def patch_size(settings: Settings, data: DataSet) -> Tuple[int, ...]:
    """The training patch per axis: ``settings.patch``, or the largest training extent where smaller."""
    largest = np.max(np.array(data.shapes[: len(data.train)]), axis=0)
    return tuple(int(min(settings.patch, extent)) for extent in largest)


class Patches(torch.utils.data.Dataset):
    """Training patch ``j`` of a run, indexed by the run's global patch number (see the module
    docstring); cases are read on demand and the most recent ones kept decoded, up to ``cache_bytes``
    per process, with the pixel positions of their foreground classes (at most :data:`LOCATIONS` per
    class, a fixed subset, as nnU-Net keeps)."""

    def __init__(self, data: DataSet, size: Tuple[int, ...], settings: Settings, seed: int,
                 cache_bytes: int = 1 << 30) -> None:  # fmt: skip
        self.data, self.size, self.seed = data, size, seed
        self.batch = settings.batch_size
        self.forced = round(settings.oversample * settings.batch_size)
        self.cache: "OrderedDict[int, Tuple[Tensor, Tensor, Dict[int, Tensor]]]" = OrderedDict()
        self.cache_bytes = cache_bytes

    def case(self, index: int) -> Tuple[Tensor, Tensor, Dict[int, Tensor]]:
        """Image, labels and the class positions found so far of training case ``index``."""
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        image, labels = self.data.read(self.data.train[index])
        self.cache[index] = (image, labels, {})
        while len(self.cache) > 1 and sum(i.nbytes + t.nbytes for i, t, _ in self.cache.values()) > (
            self.cache_bytes
        ):  # fmt: skip
            self.cache.popitem(last=False)
        return self.cache[index]

    def positions(self, index: int, chosen: int) -> Tensor:
        """Flat positions of class ``chosen`` in training case ``index`` (a fixed subset when many)."""
        _, labels, found = self.case(index)
        if chosen not in found:
            where = torch.nonzero(labels.flatten() == chosen)[:, 0]
            if len(where) > LOCATIONS:
                keep = torch.randperm(len(where), generator=torch.Generator().manual_seed(index))
                where = where[keep[:LOCATIONS]]
            found[chosen] = where
        return found[chosen]

    def __getitem__(self, j: int) -> Tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.seed, j])
        index = int(rng.integers(len(self.data.train)))
        image, labels, _ = self.case(index)
        centre = None
        foreground = np.flatnonzero(self.data.train_counts[index, 1:]) + 1
        if j % self.batch >= self.batch - self.forced and foreground.size:
            where = self.positions(index, int(rng.choice(foreground)))
            centre = np.unravel_index(int(where[int(rng.integers(len(where)))]), tuple(labels.shape))
        window = []
        for axis, (extent, size) in enumerate(zip(labels.shape, self.size)):
            room = max(extent - size, 0)
            start = (
                int(rng.integers(room + 1))
                if centre is None
                else int(np.clip(centre[axis] - size // 2, 0, room))
            )
            window.append(slice(start, start + size))
        image, labels = image[(slice(None),) + tuple(window)], labels[tuple(window)]
        pad: List[int] = []
        for extent, size in zip(reversed(labels.shape), reversed(self.size)):
            pad += [0, size - extent]
        if any(pad):  # a case smaller than the patch: background image values, ignored labels
            image = torch.nn.functional.pad(image, pad)
            labels = torch.nn.functional.pad(labels, pad, value=IGNORE)
        return image, labels


def _loader(patches: Patches, settings: Settings, epoch: int) -> torch.utils.data.DataLoader:
    """This process's share of every batch of one epoch."""
    rank, world = rank_and_size()
    share = settings.batch_size // world
    first = epoch * settings.steps_per_epoch * settings.batch_size
    indices = [
        first + step * settings.batch_size + rank * share + k
        for step in range(settings.steps_per_epoch)
        for k in range(share)
    ]
    return torch.utils.data.DataLoader(
        patches, batch_size=share, sampler=indices, num_workers=settings.workers, shuffle=False
    )


def predict(model: torch.nn.Module, image: Tensor, data: DataSet, settings: Settings, binary: bool,
            device: str) -> Tensor:  # fmt: skip
    """Predicted class indices ``(*S)`` (CPU) of one image ``(C, *S)``, by sliding windows of the
    training patch."""
    window = patch_size(settings, data)
    with torch.no_grad(), _autocast(settings, device):
        logits = sliding_window_inference(model, image[None].to(device), window)[0]
    return (logits[0] > 0).long().cpu() if binary else logits.argmax(0).cpu()


def image_stats(prediction: Tensor, labels: Tensor, num_classes: int) -> Dict[str, np.ndarray]:
    """Per class ``(K,)``: pixel counts ``tp, fp, fn`` over the valid pixels, Boundary-IoU band counts and
    HD95 (NaN unless the class is in both maps)."""
    valid = labels != IGNORE
    truth, predicted = labels[valid], prediction[valid]
    k = num_classes
    matrix = torch.bincount(truth * k + predicted, minlength=k * k).view(k, k).double()
    tp = matrix.diagonal()
    inter, union = boundary_iou_counts(prediction[None], labels[None], num_classes=k, ignore_index=IGNORE)
    distance, _ = hausdorff_terms(prediction[None], labels[None], num_classes=k, ignore_index=IGNORE)
    in_both = (matrix.sum(0) > 0) & (matrix.sum(1) > 0)  # predicted somewhere and in the target
    hd95 = torch.where(in_both, distance[0].double(), torch.nan)
    return {
        "tp": tp.numpy(), "fp": (matrix.sum(0) - tp).numpy(), "fn": (matrix.sum(1) - tp).numpy(),
        "band_intersection": inter[0].double().numpy(), "band_union": union[0].double().numpy(),
        "hd95": hd95.numpy(),
    }  # fmt: skip


def mean_dice(stats: Dict[str, np.ndarray], scored: np.ndarray) -> float:
    """Dice of the pooled counts ``(I, K)`` averaged over the scored classes (the primary metric)."""
    tp, fp, fn = (stats[name].sum(0)[scored] for name in ("tp", "fp", "fn"))
    den = 2 * tp + fp + fn
    return float(np.mean(np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)))


def scored_classes(data: DataSet) -> np.ndarray:
    """``(K,)`` bool: the foreground classes present in the test split (every mean runs over them)."""
    scored = data.present_in_test().copy()
    scored[0] = False
    return scored


def rarest_scored_class(data: DataSet) -> int:
    """The scored class with the fewest test pixels (what the overlay figure centres on)."""
    scored = scored_classes(data)
    return int(np.flatnonzero(scored)[np.argmin(data.test_counts.sum(0)[scored])])


def overlay_view(data: DataSet) -> Tuple[int, Optional[int]]:
    """The test case (and for volumes the slice along axis 0) that the overlay figure shows: the one
    with the most pixels of the rarest scored class."""
    rarest = rarest_scored_class(data)
    index = int(np.argmax(data.test_counts[:, rarest]))
    if data.spatial_dims == 2:
        return index, None
    _, labels = data.read(data.test[index])
    return index, int((labels == rarest).flatten(1).sum(1).argmax())


def evaluate(model: torch.nn.Module, data: DataSet, indices: Sequence[int], settings: Settings, binary: bool,
             device: str, keep: Optional[int] = None
             ) -> Tuple[Dict[str, np.ndarray], Optional[Tensor]]:  # fmt: skip
    """Statistics ``(len(indices), K)`` of the test images ``indices`` (split over the processes and
    summed, so every process returns all of them) and the prediction of test image ``keep``."""
    rank, world = rank_and_size()
    k = data.num_classes
    stats = {name: torch.zeros(len(indices), k, dtype=torch.float64) for name in STATS}
    kept = None
    model.eval()
    for row in range(rank, len(indices), world):
        image, labels = data.read(data.test[indices[row]])
        prediction = predict(model, image, data, settings, binary, device)
        for name, values in image_stats(prediction, labels, k).items():
            stats[name][row] = torch.from_numpy(values)
        if indices[row] == keep:
            kept = prediction
    if keep is not None and kept is None and rank == 0:  # another process scored it; rank 0 writes it
        kept = predict(model, data.read(data.test[keep])[0], data, settings, binary, device)
    model.train()
    for name in STATS:
        defined = ~stats[name].isnan()
        stats[name] = torch.where(defined, stats[name], 0.0)
        sync_sum_(stats[name])
        if name == "hd95":  # NaN travels as a count of the processes that defined it: none did
            count = sync_sum_(defined.double())
            stats[name] = torch.where(count > 0, stats[name], torch.nan)
    return {name: value.numpy() for name, value in stats.items()}, kept


def _backend(settings: Settings) -> str:
    """gloo on the CPU; on CUDA nccl for CUDA tensors and gloo for the CPU ones (metrics, losses)."""
    return "cpu:gloo,cuda:nccl" if settings.device.startswith("cuda") else "gloo"


def _process_device(settings: Settings) -> str:
    """This process's device: the chosen one, or under several CUDA processes the GPU of its local rank
    (torchrun's ``LOCAL_RANK``, else the rank), made current for nccl."""
    rank, world = rank_and_size()
    if world == 1 or not settings.device.startswith("cuda"):
        return settings.device
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    return f"cuda:{local}"


def _autocast(settings: Settings, device: str) -> Any:
    enabled = settings.amp and torch.device(device).type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)


def _on_rank_zero(write: Callable[[], None]) -> None:
    """Run ``write`` on rank 0 only, then let every process pass only once it is done."""
    rank, world = rank_and_size()
    if rank == 0:
        write()
    if world > 1:
        dist.barrier()


def _to_bytes(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


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


def _resume(path: Path, key: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            criterion: torch.nn.Module) -> Tuple[int, Dict[str, List[float]], float]:  # fmt: skip
    """Load a checkpoint of this run's key: ``(epochs done, history, seconds)``; a checkpoint of other
    settings, or one that does not fit, starts the run afresh."""
    fresh: Tuple[int, Dict[str, List[float]], float] = (0, {"train_loss": [], "test_dice": []}, 0.0)
    if not path.exists():
        return fresh
    state = _load_checkpoint(path)
    if state["settings"] != key:
        return fresh
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        criterion.load_state_dict(state["criterion"])  # adaptive statistics, schedule steps
        return int(state["epoch"]), state["history"], float(state.get("seconds", 0.0))
    except (KeyError, RuntimeError, ValueError, TypeError):
        return fresh


def _set_step(criterion: torch.nn.Module, step: int) -> None:
    """Tell a scheduled loss (a compound one, or ce / focal with a schedule) the step; others have none."""
    set_step = getattr(criterion, "set_step", None)
    if callable(set_step):
        set_step(step)


def _poly(settings: Settings, step: int) -> float:
    """nnU-Net's learning-rate decay ``lr · (1 - t / T)^0.9`` over the run's steps."""
    total = settings.epochs * settings.steps_per_epoch
    return settings.learning_rate * (1 - step / total) ** 0.9


def run_one(spec: str, seed: int, settings: Settings, data: DataSet, out: OutputFolder,
            on_epoch: Optional[Callable[[int, float], None]] = None) -> RunResult:  # fmt: skip
    """Train one (loss, seed) run, resuming from its checkpoint; return its result (also written)."""
    folder = out.runs / slug(spec)
    key = settings.key(data, spec)
    binary = is_binary(spec)
    criterion = create_loss(spec, ignore_index=IGNORE)
    torch.manual_seed(seed)
    model = UNet(data.channels, 1 if binary else data.num_classes, width=settings.width, depth=settings.depth,
                 spatial_dims=data.spatial_dims)  # fmt: skip
    device = _process_device(settings)
    world = rank_and_size()[1]
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    start, history, seconds = _resume(folder / f"seed{seed}.ckpt", key, model, optimizer, criterion)
    forward = model if world == 1 else torch.nn.parallel.DistributedDataParallel(model)
    patches = Patches(data, patch_size(settings, data), settings, seed)
    scored = scored_classes(data)
    curve_images = list(range(min(len(data.test), CURVE_IMAGES)))
    for epoch in range(start, settings.epochs):
        began = time.perf_counter()
        _set_step(criterion, epoch)  # scheduled weights follow the completed epochs
        losses = []
        for step, (images, labels) in enumerate(_loader(patches, settings, epoch)):
            for group in optimizer.param_groups:
                group["lr"] = _poly(settings, epoch * settings.steps_per_epoch + step)
            images, labels = images.to(device), labels.to(device)
            with _autocast(settings, device):
                logits = forward(images)
            loss = criterion(logits.float(), labels[:, None] if binary else labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        mean_loss = sync_sum_(torch.stack(losses).mean().double().cpu()) / world
        stats, _ = evaluate(model, data, curve_images, settings, binary, device)
        history["train_loss"].append(float(mean_loss))
        history["test_dice"].append(mean_dice(stats, scored))
        seconds += time.perf_counter() - began
        state = {"settings": key, "epoch": epoch + 1, "history": history, "seconds": seconds,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "criterion": criterion.state_dict()}  # fmt: skip
        payload = _to_bytes(lambda buffer: torch.save(state, buffer))  # noqa: B023
        _on_rank_zero(lambda: out.write_run_file(folder / f"seed{seed}.ckpt", payload))  # noqa: B023
        if on_epoch is not None:
            on_epoch(epoch + 1, history["test_dice"][-1])
    shown, plane = overlay_view(data)
    stats, prediction = evaluate(model, data, range(len(data.test)), settings, binary, device, keep=shown)
    as_lists = {name: [[None if math.isnan(v) else float(v) for v in row] for row in value.tolist()]
                for name, value in stats.items()}  # fmt: skip
    result = RunResult(spec, seed, as_lists, history, seconds)

    def write_result() -> None:  # rank 0 holds the shown image's prediction
        if prediction is not None:
            view = (prediction if plane is None else prediction[plane]).numpy().astype(np.uint8)
            out.write_run_file(folder / f"seed{seed}_prediction.npy", _to_bytes(lambda b: np.save(b, view)))
        out.write_run_file(folder / f"seed{seed}.json", json.dumps({"key": key, **result.to_json()}).encode())

    _on_rank_zero(write_result)
    return result


def finished(folder: Path, seed: int, key: str) -> Optional[RunResult]:
    """The run's result when it finished under the same key, else None."""
    path = folder / f"seed{seed}.json"
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
        if payload.pop("key", None) != key:
            return None
        return RunResult(**payload, reused=True)
    except (OSError, ValueError, TypeError):
        return None


def compare(
    specs: Sequence[str],
    seeds: Sequence[int],
    settings: Settings,
    data: DataSet,
    out: Path,
    progress: Optional[Progress] = None,
    report_files: Sequence[str] = (),
) -> List[RunResult]:
    """Every (loss, seed) run, finished ones read back instead of retrained.

    ``report_files`` are the files the caller will write into ``out``: checked first, so that nothing
    is trained when one of them is not this tool's (see :mod:`seglosses.compare.output`). With
    ``settings.nproc > 1`` the runs train in that many processes under ``torch.distributed`` (gloo on
    CPU; on CUDA nccl for the model and gloo for the statistics, which stay on the CPU); this process
    waits for them and reads their results back.
    """
    check_specs(specs, data.num_classes)
    if settings.batch_size % settings.nproc:
        raise expected(f"a batch size divisible by the {settings.nproc} processes", settings.batch_size)
    folder = OutputFolder(out)
    rank = int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0
    if rank == 0:
        folder.claim(report_files)
        folder.remove_stale_temporaries()
    if settings.nproc > 1 and launched_by_torchrun():
        _join_torchrun_group(settings)
        dist.barrier()
        results = _run_all(specs, seeds, settings, data, folder, progress if rank == 0 else None)
        dist.barrier()
        return results
    if settings.nproc > 1:
        _spawn(specs, seeds, settings, data, folder, progress)
        found = [finished(folder.runs / slug(spec), seed, settings.key(data, spec))
                 for spec in specs for seed in seeds]  # fmt: skip
        return [r for r in found if r is not None]
    return _run_all(specs, seeds, settings, data, folder, progress)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started (its environment says so)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _join_torchrun_group(settings: Settings) -> None:
    """Initialise the default process group from torchrun's environment (once)."""
    if not dist.is_initialized():
        dist.init_process_group(_backend(settings))
    if dist.get_world_size() != settings.nproc:
        world = dist.get_world_size()
        raise expected(f"{settings.nproc} processes (--nproc)", f"a torchrun world of {world}")


def _run_all(specs: Sequence[str], seeds: Sequence[int], settings: Settings, data: DataSet, out: OutputFolder,
             progress: Optional[Progress]) -> List[RunResult]:  # fmt: skip
    results = []
    for spec in specs:
        for seed in seeds:
            done = finished(out.runs / slug(spec), seed, settings.key(data, spec))
            if done is None:
                callback = (
                    None
                    if progress is None
                    else (lambda e, d, spec=spec, seed=seed: progress(spec, seed, e, d))
                )
                done = run_one(spec, seed, settings, data, out, callback)
            results.append(done)
    return results


RunArgs = Tuple[Sequence[str], Sequence[int], Settings, DataSet, OutputFolder]


def _worker(rank: int, init_file: str, events: Any, args: RunArgs) -> None:
    """One process of a distributed comparison; rank 0 reports each finished epoch through ``events``."""
    settings = args[2]
    backend = _backend(settings)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.nproc))
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=settings.nproc)
    try:
        report = (lambda *event: events.put(event)) if rank == 0 else None
        _run_all(*args, progress=report)
    finally:
        dist.barrier()
        dist.destroy_process_group()
    exit_spawned_worker()  # success: every result file is written and closed (atomic writes)


def _spawn(specs: Sequence[str], seeds: Sequence[int], settings: Settings, data: DataSet, out: OutputFolder,
           progress: Optional[Progress]) -> None:  # fmt: skip
    """Run every (loss, seed) in ``settings.nproc`` processes; relay rank 0's progress events."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    events = context.SimpleQueue()

    def relay() -> None:
        while not events.empty():
            event = events.get()
            if progress is not None:
                progress(*event)

    with tempfile.TemporaryDirectory() as rendezvous:
        init_file = str(Path(rendezvous) / "init")
        run_args: RunArgs = (specs, seeds, settings, data, out)
        args = (init_file, events, run_args)
        processes = mp.start_processes(_worker, args=args, nprocs=settings.nproc, join=False)
        while not processes.join(timeout=0.2):
            relay()
        relay()


def ordered(results: Sequence[RunResult]) -> Tuple[List[str], List[int]]:
    """The losses in the order given and the seeds, sorted."""
    return list(dict.fromkeys(r.loss for r in results)), sorted({r.seed for r in results})
