"""One GPU session in one command: the CUDA tests, a host-sync check and fwd+bwd timings with peak memory.

A benchmark, not a test: it prints markdown and never fails. See benchmarks/README.md.

    python benchmarks/gpu.py --markdown /tmp/gpu.md      # about 5 minutes on an H100
    python benchmarks/gpu.py --device cpu --quick        # a smoke run without a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import seglosses as sl  # noqa: E402
from benchmarks import run  # noqa: E402

Step = Callable[[], object]
Context = Callable[[], ContextManager[object]]
TESTS = (
    "test_cuda.py",
    "test_mixed_precision.py",
    "test_determinism.py",
    "test_backends.py",
    "test_deferred_checks.py",
)
SHAPES = [(8, 2, 256, 256), (8, 5, 256, 256), (8, 21, 256, 256), (2, 4, 64, 64, 64), (2, 21, 512, 512)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FAMILIES = ("ce", "focal", "region")  # of benchmarks.run.family_of; the boundary losses are left out
QUICK_SHAPES, QUICK_DTYPES = SHAPES[1:2], {"fp32": torch.float32}
QUICK_LOSSES = {"softmax": ["ce", "focal", "dice"], "binary": ["bce", "binary_dice"]}
SYNC_SPECS = ("ce", "focal", "dice", "ce + dice")
ROUNDS = 3


def backends() -> Dict[str, Context]:
    """``auto`` and ``reference`` when seglosses has a backend switch, and ``triton`` on CUDA when Triton
    imports (``auto`` keeps the reference on CUDA until the kernels have passed their tests on a GPU);
    else the default path alone."""
    if hasattr(sl, "backend"):
        names = ["auto", "reference"]
        if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
            names.append("triton")
        return {name: functools.partial(sl.backend, name) for name in names}
    return {"default": contextlib.nullcontext}


def first_line(error: BaseException) -> str:
    """The error's type and the first line of its message, fit for a markdown table cell."""
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text[:100]}".replace("|", "\\|")


def run_tests() -> List[str]:
    """Runs those of TESTS that exist in a pytest subprocess; markdown lines with the command, pytest's
    exit code and counts and each failed test's line (never raises)."""
    files = [f"tests/{name}" for name in TESTS if (ROOT / "tests" / name).exists()]
    command = [sys.executable, "-m", "pytest", "-q", *files]
    run.progress("running " + " ".join(command[1:]))
    lines = ["### Tests", "", f"`python {' '.join(command[1:])}`", ""]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return lines + ["- timed out after 300 s", ""]
    output = (done.stdout + done.stderr).splitlines()
    counts = [line for line in output if re.search(r"\d+ (passed|failed|skipped|errors?)\b", line)]
    lines.append(f"- exit code {done.returncode}: {counts[-1].strip('= ') if counts else 'no summary'}")
    failures = [line for line in output if line.startswith(("FAILED ", "ERROR "))]
    lines += [f"- {line}" for line in failures[:30]]
    if done.returncode not in (0, 5) and not failures:
        lines += [f"    {line}" for line in output[-10:]]
    return lines + [""]


def sync_result(step: Step) -> str:
    """Runs ``step`` once to warm up, then once under ``torch.cuda.set_sync_debug_mode("error")``; says
    ``no host sync``, or gives the first line of the error raised (by the sync check or the step)."""
    try:
        step()  # warm-up: lazy initialisation and kernel compilation are not what is checked
        torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - report it in the table, go on with the others
        return f"fails: {first_line(error)}"
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return "no host sync"
    except Exception as error:  # noqa: BLE001 - the loss may wrap torch's RuntimeError in its own
        return first_line(error)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def sync_check(device: torch.device) -> List[str]:
    """A markdown table: whether a training step of each of SYNC_SPECS synchronises with the host."""
    shape = (8, 5, 256, 256)
    lines = [f"### Host synchronisation: one fwd+bwd step, {shape} fp32, default backend", ""]
    if device.type != "cuda":
        return lines + ["- n/a: torch.cuda.set_sync_debug_mode needs CUDA", ""]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    t = run.DOMAINS["softmax"].target(shape, gen).to(device)
    lines += ["| loss | input checks on | input checks off |", "|---|---|---|"]
    for spec in SYNC_SPECS:
        loss = sl.create_loss(spec).to(device)
        cells = []
        for checks in (True, False):
            with sl.input_checks(checks):
                cells.append(sync_result(run.fwd_bwd(loss, x, t)))
        lines.append(f"| {spec} | {cells[0]} | {cells[1]} |")
    return lines + [""]


@dataclass
class Row:
    """The timings of one loss on one shape and dtype."""

    loss: str
    baseline: str  # F.ce / F.bce
    seconds: Dict[str, float]  # ours by backend, the baseline under "base", each reference by its label
    memory: Dict[str, Optional[float]]  # ours by backend: peak extra bytes / logits bytes
    notes: List[str] = field(default_factory=list)

    def ms(self, key: str) -> str:
        return f"{self.seconds[key] * 1e3:.3f}" if key in self.seconds else "n/a"

    def ratio(self, key: str, over: str = "base") -> Optional[float]:
        return self.seconds[key] / self.seconds[over] if {key, over} <= self.seconds.keys() else None


def medians(cases: Dict[str, Tuple[Context, Step]], min_run_time: float) -> Dict[str, float]:
    """Median seconds per call of each step, timed in its context (a backend, or none) in ROUNDS
    alternating rounds of ``min_run_time / ROUNDS`` s each, so that a change of load hits all alike."""
    seconds: Dict[str, List[float]] = {key: [] for key in cases}
    for _ in range(ROUNDS):
        for key, (context, step) in cases.items():
            with context():
                seconds[key] += run.times(step, min_run_time / ROUNDS)
    return {key: statistics.median(values) for key, values in seconds.items()}


def measure(
    name: str, fn: run.LossFn, domain: str, x: Tensor, t: Tensor, refs: run.References, min_run_time: float
) -> Row:
    """Times our loss under each backend, the domain's baseline and the reference libraries.

    Args:
        name, fn: our loss's registered name (it picks its references) and the loss as a function.
        domain: ``softmax`` (baseline F.cross_entropy) or ``binary`` (F.binary_cross_entropy_with_logits).
        x, t: the logits (requiring grad) and the target, on one device.
        refs: reference losses by our loss name (``benchmarks.run.references``).
        min_run_time: seconds per timed case.

    Returns:
        The row; a case that fails on these inputs is left out and noted.
    """
    ours, plain, baseline = backends(), contextlib.nullcontext, run.DOMAINS[domain].baseline
    cases: Dict[str, Tuple[Context, Step]] = {"base": (plain, run.fwd_bwd(baseline, x, t))}
    cases.update({backend: (context, run.fwd_bwd(fn, x, t)) for backend, context in ours.items()})
    cases.update({label: (plain, run.fwd_bwd(ref, x, t)) for label, ref in refs.get(name, [])})
    row = Row(name, run.DOMAINS[domain].baseline_label, {}, {})
    for key, (context, step) in list(cases.items()):  # warm-up (kernels compile), and drop what fails
        try:
            with context():
                step()
        except Exception as error:  # noqa: BLE001 - a case that rejects the input is "n/a"
            row.notes.append(f"{key}: n/a ({first_line(error)})")
            del cases[key]
    row.seconds = medians(cases, min_run_time)
    for backend, context in ours.items():
        if backend in cases and x.is_cuda:
            with context():
                peak = run.peak_extra_bytes(cases[backend][1], x.device)
            row.memory[backend] = None if peak is None else peak / (x.numel() * x.element_size())
    return row


def table(title: str, rows: List[Row], names: Sequence[str], cuda: bool) -> List[str]:
    """A markdown table of ``rows``; ``names`` are the backends timed, ``cuda`` whether memory was."""
    both = "auto" in names and "reference" in names
    heads = ["loss", "baseline ms"] + [f"{b} ms" for b in names] + [f"{b} ratio" for b in names]
    heads += ["fused speed-up (reference / auto)"] if both else []
    heads += [f"{b} peak mem ×logits" for b in names] + ["fastest library (ratio)"]
    lines = [f"### {title}", "", "| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    for r in rows:
        cells = [r.loss, f"{r.baseline} {r.ms('base')}"] + [r.ms(b) for b in names]
        cells += [run._x(r.ratio(b)) for b in names]
        cells += [run._x(r.ratio("reference", over="auto"))] if both else []
        cells += [run._x(r.memory.get(b)) if cuda else "n/a" for b in names]
        libraries = [(r.ratio(key), key) for key in r.seconds if key != "base" and key not in names]
        libraries = [(ratio, key) for ratio, key in libraries if ratio is not None]
        fastest = min(libraries, default=None)
        cells.append("—" if fastest is None else f"{fastest[1]} ({fastest[0]:.2f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.loss}: {note}" for r in rows for note in r.notes]
    return lines + ([""] + notes if notes else []) + [""]


def header(device: torch.device, min_run_time: float, notes: List[str]) -> List[str]:
    """Versions, the device and how the timings were taken; ``notes`` are the missing references'."""
    versions = [f"torch {torch.__version__}", f"seglosses {sl.__version__}"]
    with contextlib.suppress(Exception):
        versions.append(f"triton {importlib.import_module('triton').__version__}")
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        name = f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} thread(s)"
    return [
        "## seglosses GPU benchmark",
        "",
        f"{', '.join(versions)}; device {device.type}: {name}.",
        f"fwd+bwd = `torch.autograd.grad(loss(x, t), x)`, input checks on (the default); medians of "
        f"Timer.blocked_autorange, {min_run_time:g} s per case over {ROUNDS} rounds alternating with the "
        "baseline (F.ce for softmax losses, F.bce with logits for binary ones), ratios to it. Backends: "
        + ", ".join(backends())
        + ". Peak memory: max_memory_allocated during one step above what was allocated before it.",
        *[f"- {note}" for note in notes],
        "",
    ]


def chosen_losses(quick: bool) -> Dict[str, Dict[str, run.LossFn]]:
    """The CE-, focal- and region-family losses of each domain (a few with ``quick``)."""
    if quick:
        return {domain: run.our_losses(names, domain) for domain, names in QUICK_LOSSES.items()}
    return {
        domain: {n: fn for n, fn in run.our_losses(None, domain).items() if run.family_of(n) in FAMILIES}
        for domain in run.DOMAINS
    }


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line; --min-run-time defaults to 0.15 s, 0.05 s with --quick."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one shape, fp32, a few losses, short timings")
    p.add_argument("--markdown", metavar="PATH", help="also write the output to this file")
    p.add_argument("--skip-tests", action="store_true", help="do not run the CUDA test files first")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--min-run-time", type=float, help="seconds per timed case (0.15; quick 0.05)")
    args = p.parse_args(argv)
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.quick else 0.15
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Tests, host-sync check, then one table per shape and dtype; see the module docstring."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: CUDA is not available (use --device cpu --quick for a smoke run)")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # a smoke run: 1 thread keeps its timings steady on a small shared machine
    start, out = time.monotonic(), []  # type: float, List[str]

    def emit(lines: List[str]) -> None:
        """Print a section, and rewrite --markdown after each so that a run cut short leaves what it had."""
        print("\n".join(lines), flush=True)
        out.extend(lines)
        if args.markdown:
            Path(args.markdown).write_text("\n".join(out) + "\n", encoding="utf-8")

    refs, notes = run.references()
    emit(header(device, args.min_run_time, notes))
    if not args.skip_tests:
        emit(run_tests())
    emit(sync_check(device))
    losses, names = chosen_losses(args.quick), list(backends())
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        for label, dtype in (QUICK_DTYPES if args.quick else DTYPES).items():
            run.progress(f"shape {shape} {label} ({time.monotonic() - start:.0f} s)")
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_()
            rows = []
            for domain, fns in losses.items():
                t = run.DOMAINS[domain].target(shape, gen).to(device)
                for name, fn in fns.items():
                    run.progress(f"  {name}")
                    rows.append(measure(name, fn, domain, x, t, refs, args.min_run_time))
            emit(table(f"{shape} {label}", rows, names, device.type == "cuda"))
    run.progress(f"done in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
