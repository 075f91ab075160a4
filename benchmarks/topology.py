"""Speed and peak memory of the thin-structure and boundary losses (issue 20) against their references.

A benchmark, not a test: it prints markdown tables and never fails.

    python benchmarks/topology.py                 # 2-D (8, 2, 256, 256) and 3-D (2, 2, 64, 64, 64)
    python benchmarks/topology.py --quick         # small shapes, short timings (a smoke run)
    python benchmarks/topology.py --large         # also (2, 3, 128, 128, 128): time and peak memory
    python benchmarks/topology.py --device cuda   # on a GPU

Every loss runs forward + backward on the same logits and target (smooth random blobs with thin parts),
timed in alternating rounds with ``F.cross_entropy`` and with the reference implementation that has the
loss: MONAI's ``SoftclDiceLoss`` / ``SoftDiceclDiceLoss`` / ``LogHausdorffDTLoss`` and kornia's
``HausdorffERLoss`` / ``HausdorffERLoss3D``, each on the softmax probabilities and the one-hot target it
expects. Where a loss can take what depends on the target alone precomputed (distance maps, skeletons,
boundary bands), both costs are shown.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/topology.py`
import seglosses as sl  # noqa: E402
from benchmarks.distance import blobs, sync, timed  # noqa: E402

SHAPES: Dict[str, Tuple[int, ...]] = {"2d": (8, 2, 256, 256), "3d": (2, 2, 64, 64, 64)}
QUICK_SHAPES: Dict[str, Tuple[int, ...]] = {"2d": (2, 2, 64, 64), "3d": (1, 2, 24, 24, 24)}
LARGE_SHAPE = (2, 3, 128, 128, 128)

Step = Callable[[], Tensor]


def inputs(shape: Tuple[int, ...], device: torch.device) -> Tuple[Tensor, Tensor]:
    """Logits and an index target of ``C`` classes made of smooth blobs (thick and thin parts)."""
    n, c, *spatial = shape
    labels = blobs((n, *spatial), device, seed=3).long()
    if c > 2:
        labels = (labels + 2 * blobs((n, *spatial), device, seed=4).long()) % c
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    return logits, labels


def our_steps(logits: Tensor, labels: Tensor) -> Dict[str, Step]:
    """Each registered issue-20 loss (and the boundary-IoU loss), with the target part precomputed where
    the loss takes it."""
    c = logits.shape[1]
    names = [name for name in sl.list_losses() if not name.startswith("binary_")]
    wanted = ["cldice", "dice_cldice", "skeleton_recall", "cbdice", "hausdorff_er", "log_hausdorff_dt",
              "boundary_dou", "region_wise", "distance_ce", "boundary_iou"]  # fmt: skip
    steps: Dict[str, Step] = {}
    for name in (n for n in wanted if n in names):
        loss = sl.create_loss(name)
        steps[name] = lambda loss=loss: loss(logits, labels)
        extra = _precomputed(name, labels, c)
        if extra is not None:
            key, value = extra
            steps[f"{name}, {key} precomputed"] = lambda loss=loss, v=value, k=key: loss.forward_term(
                logits, labels, {k: v}
            )
    return steps


def _precomputed(name: str, labels: Tensor, c: int) -> Optional[Tuple[str, Tensor]]:
    """The input a loss takes precomputed (its keyword in a compound), made once here."""
    if name == "boundary_iou":
        return "bands", sl.target_boundary_bands(labels, c)
    masks = F.one_hot(labels, c).movedim(-1, 1).bool()
    if name == "region_wise":
        return "dist_maps", sl.rectified_region_maps(masks)
    if name == "distance_ce":
        return "dist_maps", sl.boundary_penalty_maps(masks)
    if name == "skeleton_recall" and hasattr(sl, "target_skeletons"):
        return "skeletons", sl.target_skeletons(labels, c)
    return None


def reference_steps(logits: Tensor, labels: Tensor) -> Dict[str, Step]:
    """The reference implementations on the same tensors (softmax probabilities, one-hot target)."""
    c, rank = logits.shape[1], logits.ndim - 2
    one_hot = F.one_hot(labels, c).movedim(-1, 1).to(logits.dtype)
    steps: Dict[str, Step] = {}
    if importlib.util.find_spec("monai") is not None:
        from monai.losses import LogHausdorffDTLoss, SoftclDiceLoss, SoftDiceclDiceLoss

        cl, dcl = SoftclDiceLoss(), SoftDiceclDiceLoss()
        log_hd = LogHausdorffDTLoss(include_background=False, to_onehot_y=True, softmax=True)
        steps["MONAI SoftclDiceLoss"] = lambda: cl(one_hot, torch.softmax(logits, 1))
        steps["MONAI SoftDiceclDiceLoss"] = lambda: dcl(one_hot, torch.softmax(logits, 1))
        steps["MONAI LogHausdorffDTLoss"] = lambda: log_hd(logits, labels.unsqueeze(1).to(logits.dtype))
    if importlib.util.find_spec("kornia") is not None:
        from kornia.losses import HausdorffERLoss, HausdorffERLoss3D

        hd = HausdorffERLoss() if rank == 2 else HausdorffERLoss3D()
        steps["kornia HausdorffERLoss" + ("3D" if rank == 3 else "")] = lambda: hd(
            torch.softmax(logits, 1), labels.unsqueeze(1)
        )
    return steps


PAIRS = {  # ours -> its reference
    "cldice": "MONAI SoftclDiceLoss",
    "dice_cldice": "MONAI SoftDiceclDiceLoss",
    "log_hausdorff_dt": "MONAI LogHausdorffDTLoss",
    "hausdorff_er": "kornia HausdorffERLoss",
}


def speed_table(label: str, shape: Tuple[int, ...], device: torch.device, seconds: float) -> List[str]:
    logits, labels = inputs(shape, device)

    def fwd_bwd(loss: Step) -> Callable[[], object]:
        return lambda: torch.autograd.grad(loss(), logits)

    steps = {"F.cross_entropy": lambda: F.cross_entropy(logits, labels)}
    steps.update(our_steps(logits, labels))
    steps.update(reference_steps(logits, labels))
    ms = {k: v * 1e3 for k, v in timed({k: fwd_bwd(s) for k, s in steps.items()}, device, seconds).items()}
    base = ms["F.cross_entropy"]
    lines = [
        f"### {label}: logits {tuple(shape)}, forward + backward, median ms",
        "",
        "| loss | ms | × F.cross_entropy | reference | its ms | our speed-up |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, value in ms.items():
        if name.split(" ")[0] in ("MONAI", "kornia"):
            continue
        reference = _reference_of(name, ms)
        ref_ms = ms.get(reference) if reference else None
        speedup = f"{ref_ms / value:.1f}×" if ref_ms else "—"
        lines.append(
            f"| {name} | {value:.1f} | {value / base:.2f} | {reference or '—'} | "
            f"{f'{ref_ms:.1f}' if ref_ms else '—'} | {speedup} |"
        )
    return lines + [""]


def _reference_of(name: str, ms: Dict[str, float]) -> Optional[str]:
    reference = PAIRS.get(name)
    if reference is None:
        return None
    return next((k for k in ms if k.startswith(reference)), None)


def memory_table(shape: Tuple[int, ...], device: torch.device) -> List[str]:
    """One forward + backward of each loss on a large 3-D volume: seconds and peak memory (CUDA: the
    allocator's peak; CPU: the process's peak resident set, which only grows: the order is the table's)."""
    logits, labels = inputs(shape, device)
    lines = [
        f"### large 3-D volume: logits {tuple(shape)}, one forward + backward",
        "",
        "| loss | s | peak memory (GiB) |",
        "|---|---:|---:|",
    ]
    steps = {"F.cross_entropy": lambda: F.cross_entropy(logits, labels), **our_steps(logits, labels)}
    for name, step in steps.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        torch.autograd.grad(step(), logits)
        sync(device)
        seconds = time.perf_counter() - start
        lines.append(f"| {name} | {seconds:.2f} | {_peak_gib(device):.2f} |")
    return lines + [""]


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per step")
    parser.add_argument("--quick", action="store_true", help="small shapes, short timings")
    parser.add_argument("--large", action="store_true", help=f"also one step at {LARGE_SHAPE}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seconds = 0.2 if args.quick else args.seconds
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"# seglosses thin-structure and boundary losses — {name}, torch {torch.__version__}\n")
    for label, shape in (QUICK_SHAPES if args.quick else SHAPES).items():
        print("\n".join(speed_table(label, shape, device, seconds)), flush=True)
    if args.large:
        print("\n".join(memory_table(LARGE_SHAPE, device)))


if __name__ == "__main__":
    main()
