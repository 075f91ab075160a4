"""Distance transforms and boundary losses: speed against scipy, ``edt`` and MONAI, as ratios.

A benchmark, not a test: it prints markdown tables and never fails (see benchmarks/README.md).

    python benchmarks/distance.py                    # CPU, 2 threads
    python benchmarks/distance.py --device cuda      # the torch path on a GPU against scipy on the CPU
    python benchmarks/distance.py --quick            # small shapes, short timings (smoke run)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import seglosses as sl

SHAPES = {"2d": (8, 256, 256), "3d": (2, 128, 128, 128)}
QUICK_SHAPES = {"2d": (4, 64, 64), "3d": (1, 32, 32, 32)}
LOSS_SHAPE, QUICK_LOSS_SHAPE = (8, 4, 256, 256), (2, 4, 64, 64)


def blobs(shape: Sequence[int], device: torch.device, seed: int = 0) -> Tensor:
    """Random smooth foreground blobs (about half the pixels): the kind of mask a target holds."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=g)[:, None]
    pool = F.avg_pool2d if noise.ndim == 4 else F.avg_pool3d
    smooth = pool(noise, kernel_size=9, stride=1, padding=4)[:, 0]
    return (smooth > 0).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(steps: Dict[str, Callable[[], object]], device: torch.device, seconds: float) -> Dict[str, float]:
    """Median seconds per call of each step, measured in alternating rounds (fair under drifting load)."""
    for step in steps.values():
        step()
    sync(device)
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    deadline = time.perf_counter() + seconds * len(steps)
    while time.perf_counter() < deadline or min(len(v) for v in samples.values()) < 3:
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def scipy_loop(mask: np.ndarray) -> List[np.ndarray]:
    from scipy import ndimage

    return [ndimage.distance_transform_edt(sample) for sample in mask]


def edt_loop(mask: np.ndarray) -> List[np.ndarray]:
    import edt

    return [edt.edt(sample) for sample in mask]


def distance_table(shapes: Dict[str, Tuple[int, ...]], device: torch.device, seconds: float) -> List[str]:
    lines = [
        f"### distance_transform on {device.type} (median ms per batch; scipy / edt on the CPU, looped)",
        "",
        "| shape | ours (default) | ours (torch path) | scipy | edt | max abs diff vs scipy | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, shape in shapes.items():
        mask = blobs(shape, device)
        host = mask.cpu().numpy()
        steps: Dict[str, Callable[[], object]] = {
            "default": lambda: sl.distance_transform(mask),  # noqa: B023
            "torch": lambda: sl.distance_transform(mask, backend="torch"),  # noqa: B023
        }
        if importlib.util.find_spec("scipy"):
            steps["scipy"] = lambda: scipy_loop(host)  # noqa: B023
        if importlib.util.find_spec("edt"):
            steps["edt"] = lambda: edt_loop(host)  # noqa: B023
        if device.type == "cuda":
            del steps["default"]  # on CUDA the default is the torch path
        ms = {k: v * 1e3 for k, v in timed(steps, device, seconds).items()}
        ours = ms.get("default", ms["torch"])
        error = "n/a"
        if "scipy" in ms:
            reference = torch.from_numpy(np.stack(scipy_loop(host)))
            error = f"{float((sl.distance_transform(mask).cpu().double() - reference).abs().max()):.1e}"
        verdict = _verdict(device, ours, ms)
        cells = [f"{ms[k]:.1f}" if k in ms else "n/a" for k in ("default", "torch", "scipy", "edt")]
        lines.append(f"| {label} {tuple(shape)} | " + " | ".join(cells) + f" | {error} | {verdict} |")
    return lines + [""]


def _verdict(device: torch.device, ours: float, ms: Dict[str, float]) -> str:
    compiled = [ms[k] for k in ("scipy", "edt") if k in ms]
    if not compiled:
        return "no reference"
    if device.type == "cuda":
        ratio = ms["scipy"] / ours if "scipy" in ms else float("nan")
        return f"{'PASS' if ratio >= 10 else 'FAIL'}: {ratio:.1f}× faster than scipy (target ≥ 10×)"
    ratio = ours / min(compiled)
    return f"{'PASS' if ratio <= 1.2 else 'FAIL'}: {ratio:.2f}× the fastest (target ≤ 1.2×)"


def loss_table(shape: Tuple[int, ...], device: torch.device, seconds: float) -> List[str]:
    n, c, *spatial = shape
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(shape, generator=g).to(device).requires_grad_()
    labels = (blobs((n, *spatial), device, seed=10).long() + 2 * blobs((n, *spatial), device, seed=11)) % c
    maps = sl.target_distance_maps(labels, c)

    def fwd_bwd(loss: Callable[[], Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(loss(), logits)

    steps = {
        "F.cross_entropy": fwd_bwd(lambda: F.cross_entropy(logits, labels)),
        "boundary, precomputed maps": fwd_bwd(lambda: sl.functional.boundary_loss(logits, labels, maps)),
        "boundary, maps on the fly": fwd_bwd(lambda: sl.functional.boundary_loss(logits, labels)),
        "hausdorff_dt": fwd_bwd(lambda: sl.functional.hausdorff_dt_loss(logits, labels)),
    }
    monai = _monai_losses(labels, c)
    steps.update({name: fwd_bwd(lambda f=f: f(logits)) for name, f in monai.items()})
    ms = {k: v * 1e3 for k, v in timed(steps, device, seconds).items()}
    base = ms["F.cross_entropy"]
    lines = [
        f"### boundary losses on {device.type}, logits {tuple(shape)} (forward+backward, median ms)",
        "",
        "| loss | ms | × F.cross_entropy |",
        "|---|---|---|",
        *[f"| {name} | {value:.1f} | {value / base:.2f} |" for name, value in ms.items()],
        "",
    ]
    ratio = ms["boundary, precomputed maps"] / base
    verdict = "PASS" if ratio <= 1.5 else "FAIL"
    lines.append(f"- precomputed maps: {ratio:.2f}× F.cross_entropy — {verdict} (≤ 1.5×)")
    pairs = (("boundary, maps on the fly", "MONAI BoundaryLoss"), ("hausdorff_dt", "MONAI HausdorffDTLoss"))
    for ours, theirs in pairs:
        if theirs in ms:
            speedup = ms[theirs] / ms[ours]
            verdict = "PASS" if speedup >= 5 else "FAIL"
            lines.append(f"- {ours}: {speedup:.1f}× faster than {theirs} — {verdict} (≥ 5×)")
        else:
            lines.append(f"- {theirs}: not installed")
    return lines + [""]


def _monai_losses(labels: Tensor, c: int) -> Dict[str, Callable[[Tensor], Tensor]]:
    """MONAI's losses on the same tensors (foreground classes, softmax, index target), when installed."""
    if importlib.util.find_spec("monai") is None:
        return {}
    from monai.losses import BoundaryLoss, HausdorffDTLoss

    target = labels.unsqueeze(1)
    options = dict(include_background=False, to_onehot_y=True, softmax=True)
    boundary, hausdorff = BoundaryLoss(**options), HausdorffDTLoss(alpha=2.0, **options)
    return {
        "MONAI BoundaryLoss": lambda x: boundary(x, target),
        "MONAI HausdorffDTLoss": lambda x: hausdorff(x, target),
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per step")
    parser.add_argument("--quick", action="store_true", help="small shapes, short timings")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seconds = 0.2 if args.quick else args.seconds
    shapes = QUICK_SHAPES if args.quick else SHAPES
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"# seglosses distance benchmark — {name}, torch {torch.__version__}\n")
    print("\n".join(distance_table(shapes, device, seconds)))
    print("\n".join(loss_table(QUICK_LOSS_SHAPE if args.quick else LOSS_SHAPE, device, seconds)))


if __name__ == "__main__":
    main()
