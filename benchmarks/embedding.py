"""Embedding losses against pytorch-metric-learning: speed on flat embeddings and peak memory.

A benchmark, not a test: it prints markdown tables and never fails (see benchmarks/README.md).

    python benchmarks/embedding.py            # 4,096 x 64 timings (10 labels), 16,384 x 128 memory
    python benchmarks/embedding.py --quick    # small sizes, short timings (smoke run)

Speed: triplet loss with batch-hard mining (ours: ``mining="hard", normalize=True, average="nonzero"``;
theirs: ``TripletMarginLoss`` + ``BatchHardMiner``, the same loss) and the contrastive loss (ours:
Hadsell's squared form over all pairs; theirs: ``ContrastiveLoss``, plain-distance hinges averaged over
non-zero pairs: the library's equivalent, not the same formula), forward+backward with
``torch.autograd.grad``, the median of alternating rounds, CPU threads fixed (2 by default).

Memory: one forward+backward step on 16,384 x 128 flat embeddings, each in a fresh process.
*Allocated* is the peak of bytes held by PyTorch's CPU allocator above what was held before the step,
replayed from ``torch.profiler`` allocation events (as benchmarks/run.py does). *RSS* is the process's
resident-memory high-water mark during the step above its resident memory before it (``VmHWM`` after
resetting it through ``/proc/self/clear_refs``), which also counts the C allocator's own overhead.
pytorch-metric-learning runs under an address-space limit (``--limit-gb``) so that it cannot exhaust a
shared machine; past it, the table says so.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ForeignLoad, load_note, peak_extra_bytes  # noqa: E402

import seglosses as sl  # noqa: E402
from seglosses.losses.embedding import contrastive_loss, triplet_loss  # noqa: E402

LABELS = 10
SPEED_SIZE, QUICK_SPEED_SIZE = (4096, 64), (1024, 32)
MEMORY_SIZE, QUICK_MEMORY_SIZE = (16384, 128), (4096, 64)
Step = Callable[[], object]


def flat_embeddings(m: int, d: int, seed: int = 0) -> Tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g).requires_grad_(), torch.randint(0, LABELS, (m,), generator=g)


def have_pml() -> bool:
    return importlib.util.find_spec("pytorch_metric_learning") is not None


def steps_for(name: str, x: Tensor, y: Tensor) -> Step:
    """One forward+backward step of a named loss on ``(x, y)``."""
    if name.startswith("pml"):
        from pytorch_metric_learning import losses, miners

        if name == "pml triplet":
            loss, miner = losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()
            return lambda: torch.autograd.grad(loss(x, y, miner(x, y)), x)
        contrastive = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
        return lambda: torch.autograd.grad(contrastive(x, y), x)
    if name.startswith("ours triplet"):
        return lambda: torch.autograd.grad(triplet_loss(x, y, margin=0.2, average="nonzero"), x)
    return lambda: torch.autograd.grad(contrastive_loss(x, y, margin=1.0), x)


def timed(steps: Dict[str, Step], seconds: float) -> Dict[str, float]:
    """Median seconds per step over alternating rounds (fair under drifting load)."""
    for name, step in steps.items():
        with sl.input_checks("checks off" not in name):
            step()
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    deadline = time.perf_counter() + seconds * len(steps)
    while time.perf_counter() < deadline or min(len(v) for v in samples.values()) < 5:
        for name, step in steps.items():
            with sl.input_checks("checks off" not in name):
                start = time.perf_counter()
                step()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def speed_table(size: Tuple[int, int], seconds: float) -> List[str]:
    x, y = flat_embeddings(*size)
    lines = [
        f"### forward+backward on {size[0]:,} x {size[1]} flat embeddings, {LABELS} labels (median ms)",
        "",
        "| loss | ours (checks on) | ours (checks off) | pytorch-metric-learning | speed-up | verdict |",
        "|---|---|---|---|---|---|",
    ]
    with ForeignLoad() as load:
        for loss in ("triplet", "contrastive"):
            names = [f"ours {loss}", f"ours {loss}, checks off"] + [f"pml {loss}"] * have_pml()
            ms = {k: v * 1e3 for k, v in timed({n: steps_for(n, x, y) for n in names}, seconds).items()}
            theirs = ms.get(f"pml {loss}")
            speedup = f"{theirs / ms[names[0]]:.1f}×" if theirs else "n/a"
            verdict = "not installed" if theirs is None else "PASS" if theirs >= ms[names[0]] else "FAIL"
            cells = [f"{ms[names[0]]:.1f}", f"{ms[names[1]]:.1f}", f"{theirs:.1f}" if theirs else "n/a"]
            verdict += " (at least as fast)" if theirs else ""
            lines.append(f"| {loss} | " + " | ".join(cells) + f" | {speedup} | {verdict} |")
    lines += ["", f"- torch.set_num_threads({torch.get_num_threads()}){load_note(load.cores)}"]
    if have_pml():
        lines.append(agreement_line(x, y))
    return lines + [""]


def agreement_line(x: Tensor, y: Tensor) -> str:
    """Our batch-hard triplet loss and pytorch-metric-learning's on the same embeddings."""
    from pytorch_metric_learning import losses, miners

    theirs = losses.TripletMarginLoss(margin=0.2)(x, y, miners.BatchHardMiner()(x, y))
    ours, theirs = triplet_loss(x, y, margin=0.2, average="nonzero").item(), theirs.item()
    return f"- batch-hard triplet values: ours {ours:.6f}, theirs {theirs:.6f} (|Δ| {abs(ours - theirs):.1e})"


def measure(name: str, m: int, d: int, limit_gb: float) -> Dict[str, Any]:
    """Run in a fresh process: RSS growth over one step, then the allocator's peak over another."""
    if name.startswith("pml"):
        limit = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    x, y = flat_embeddings(m, d)
    steps_for(name, x[:256], y[:256])()  # warm up kernels, thread pools and imports
    step = steps_for(name, x, y)
    before = reset_peak_rss()
    try:
        step()
    except (RuntimeError, MemoryError) as error:
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"}
    rss = peak_rss() - before
    return {"rss": rss, "allocated": peak_extra_bytes(step, torch.device("cpu"))}


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_rss() -> int:
    """Reset the resident-memory high-water mark (Linux ``clear_refs``) and return the current RSS; where
    that is impossible, the high-water mark so far (the growth then shows only above it)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc: return freed heap memory first
    if trim is not None:
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return _status("VmRSS")
    except (OSError, StopIteration):
        return peak_rss()


def peak_rss() -> int:
    try:
        return _status("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured(name: str, m: int, d: int, args: argparse.Namespace) -> Dict[str, Any]:
    command = [sys.executable, __file__, "--measure", name, "--threads", str(args.threads)]
    command += ["--size", f"{m}x{d}", "--limit-gb", str(args.limit_gb)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"process ended with status {done.returncode}"}
    return json.loads(lines[-1])


def memory_table(size: Tuple[int, int], args: argparse.Namespace) -> List[str]:
    m, d = size
    lines = [
        f"### peak memory of one forward+backward step, {m:,} x {d} flat embeddings ({LABELS} labels)",
        "",
        "| loss | ours allocated | ours RSS | pml allocated | pml RSS | ours under 1 GB |",
        "|---|---|---|---|---|---|",
    ]
    for loss in ("triplet", "contrastive"):
        ours = measured(f"ours {loss}", m, d, args)
        theirs = measured(f"pml {loss}", m, d, args) if have_pml() else {"error": "not installed"}
        peak = max(int(ours.get("allocated") or 0), int(ours.get("rss") or 0))
        verdict = "n/a" if "error" in ours else "PASS" if peak < 2**30 else "FAIL"
        cells = [*_cells(ours), *_cells(theirs, args.limit_gb)]
        lines.append(f"| {loss} | " + " | ".join(cells) + f" | {verdict} |")
    return lines + [""]


def _cells(result: Dict[str, Any], limit_gb: Optional[float] = None) -> List[str]:
    if "error" in result:
        text = f"over the {limit_gb:g} GB limit" if limit_gb and "alloc" in str(result["error"]) else ""
        return [text or str(result["error"]), ""]
    return [_mb(result.get("allocated")), _mb(result.get("rss"))]


def _mb(value: Optional[int]) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f} MiB"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per step")
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    parser.add_argument("--limit-gb", type=float, default=14.0, help="address-space cap for pml's process")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure:
        m, d = (int(v) for v in args.size.split("x"))
        print(json.dumps(measure(args.measure, m, d, args.limit_gb)))
        return
    pml = f"pytorch-metric-learning {_pml_version()}" if have_pml() else "no pytorch-metric-learning"
    print(f"# seglosses embedding benchmark — CPU, {args.threads} threads, torch {torch.__version__}, {pml}")
    print()
    speed_size, seconds = (QUICK_SPEED_SIZE, 0.3) if args.quick else (SPEED_SIZE, args.seconds)
    print("\n".join(speed_table(speed_size, seconds)))
    print("\n".join(memory_table(QUICK_MEMORY_SIZE if args.quick else MEMORY_SIZE, args)))


def _pml_version() -> str:
    import pytorch_metric_learning

    return str(pytorch_metric_learning.__version__)


if __name__ == "__main__":
    main()
