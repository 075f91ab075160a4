"""Speed and peak memory of seglosses against F.cross_entropy and reference libraries.

A benchmark, not a test: it prints markdown tables and never fails. See benchmarks/README.md.

    python benchmarks/run.py                      # every shape (the large one included), every softmax loss
    python benchmarks/run.py --quick              # one small shape, short timings (smoke run)
    python benchmarks/run.py --shapes c5,3d --losses dice,focal --markdown out.md
    python benchmarks/run.py --domain binary       # the binary (sigmoid) losses against F.bce with logits
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import itertools
import math
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.benchmark import Timer

import seglosses as sl

LossFn = Callable[[Tensor, Tensor], Tensor]
RefEntry = Tuple[str, str, LossFn]  # (our loss name, reference label, function)
References = Dict[str, List[Tuple[str, LossFn]]]  # our loss name -> [(reference label, function)]

SHAPES: Dict[str, Tuple[int, ...]] = {
    "s64": (2, 5, 64, 64),  # small inputs: the per-call overhead (issue 16)
    "s128": (2, 5, 128, 128),
    "c2": (8, 2, 256, 256),
    "c5": (8, 5, 256, 256),
    "c21": (8, 21, 256, 256),
    "3d": (2, 4, 64, 64, 64),
    "large": (2, 21, 512, 512),
}
# Shapes timed for a fraction of --min-run-time (each step is long enough that fewer steps suffice).
TIME_FRACTION: Dict[str, float] = {"large": 0.5}
QUICK_SHAPES: Dict[str, Tuple[int, ...]] = {"quick": (2, 5, 64, 64)}

# Our options, chosen to match the references' settings below.
OPTIONS: Dict[str, dict] = {
    "binary_focal": dict(gamma=2.0),
    "binary_tversky": dict(alpha=0.3, beta=0.7),
    "binary_focal_tversky": dict(alpha=0.3, beta=0.7, gamma=0.75),
    "focal": dict(gamma=2.0),
    "tversky": dict(alpha=0.3, beta=0.7),
    "focal_tversky": dict(alpha=0.3, beta=0.7, gamma=0.75),
}

# The targets (CPU, 2 threads): the most our forward+backward may cost, as a multiple of
# F.cross_entropy's on the same tensors, per family; and the most peak memory a region loss may take in a
# step, as a multiple of the logits' bytes (the returned gradient included).
FAMILY_TARGETS: Dict[str, float] = {"ce": 1.1, "focal": 1.3, "region": 1.0, "lovasz": 5.0}
FAMILIES: Dict[str, str] = {
    "ce": "ce",
    "difficulty_ce": "ce",
    "focal": "focal",
    "bce": "ce",
    "binary_focal": "focal",
    "lovasz": "lovasz",  # issue 19: <= 5x F.ce at (8, 5, 256, 256), and at least 5x faster than smp
}
REGION_MODULE = "seglosses.losses.overlap"  # the region (overlap) family: Dice, Jaccard, Tversky, ...
REGION_MEMORY_TARGET = 2.0


# --------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class Domain:
    """The losses of one input domain, their target and the torch loss every ratio is taken to."""

    name: str
    baseline: LossFn
    baseline_label: str  # in the tables: "ratio to F.ce" / "ratio to F.bce"

    def target(self, shape: Tuple[int, ...], gen: torch.Generator) -> Tensor:
        """Class indices ``(N, *S)`` (softmax) or a 0 / 1 float target ``(N, C, *S)`` (binary)."""
        if self.name == "binary":
            return torch.randint(0, 2, shape, generator=gen).float()
        return torch.randint(0, shape[1], shape[:1] + shape[2:], generator=gen)


DOMAINS: Dict[str, Domain] = {
    "softmax": Domain("softmax", F.cross_entropy, "F.ce"),
    "binary": Domain("binary", F.binary_cross_entropy_with_logits, "F.bce"),
}


def our_losses(names: Optional[Sequence[str]], domain: str = "softmax") -> Dict[str, LossFn]:
    """The registered losses of ``domain`` (or a subset) as pure functions with OPTIONS applied."""
    entries = {  # stateful (adaptive) losses are timed against their static forms by benchmarks/adaptive.py
        e.name: e
        for e in sl.list_losses(details=True)
        if e.domain == domain and not getattr(e.module, "stateful", False)
    }
    unknown = sorted(set(names or ()) - set(entries))
    if unknown:
        sys.exit(f"unknown loss(es) {unknown}; choose from {sorted(entries)}")
    chosen = names or sorted(entries)
    return {n: functools.partial(entries[n].module.function, **OPTIONS.get(n, {})) for n in chosen}


def family_of(name: str) -> Optional[str]:
    """``ce``, ``focal`` or ``region`` (the overlap losses of SPEC section 3); None: no target (the
    boundary losses, timed against their references by benchmarks/distance.py)."""
    if name in FAMILIES:
        return FAMILIES[name]
    modules = {e.name: e.module.__module__ for e in sl.list_losses(details=True)}
    return "region" if modules.get(name) == REGION_MODULE else None


def target_of(name: str) -> Optional[float]:
    family = family_of(name)
    return None if family is None else FAMILY_TARGETS[family]


def memory_target_of(name: str, shape: Tuple[int, ...] = ()) -> Optional[float]:
    """The region losses' peak-memory target, for inputs of at least numerics.FUSED_MIN elements (a
    smaller one takes the plain paths, whose temporaries, a few times a small input, are no concern)."""
    from seglosses._core.numerics import FUSED_MIN

    small = bool(shape) and math.prod(shape) < FUSED_MIN
    return REGION_MEMORY_TARGET if family_of(name) == "region" and not small else None


def _monai() -> Iterator[RefEntry]:
    from monai import losses as M

    def indexed(module: torch.nn.Module) -> LossFn:
        return lambda x, t: module(x, t.unsqueeze(1))  # MONAI wants the target as (N, 1, *S)

    soft = dict(to_onehot_y=True, softmax=True)
    yield "dice", "monai DiceLoss", indexed(M.DiceLoss(**soft))
    yield "jaccard", "monai DiceLoss(jaccard)", indexed(M.DiceLoss(jaccard=True, **soft))
    yield "tversky", "monai TverskyLoss", indexed(M.TverskyLoss(alpha=0.3, beta=0.7, **soft))
    yield "gdl", "monai GeneralizedDiceLoss", indexed(M.GeneralizedDiceLoss(**soft))
    yield "mcc", "monai MCCLoss", indexed(M.MCCLoss(**soft))

    def gwdl(x: Tensor, t: Tensor) -> Tensor:  # every confusion costs 1, as gwdl's default matrix
        matrix = 1 - torch.eye(x.shape[1])
        return M.GeneralizedWassersteinDiceLoss(dist_matrix=matrix, weighting_mode="default")(x, t)

    yield "gwdl", "monai GeneralizedWassersteinDiceLoss", gwdl
    focal = M.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)
    yield "focal", "monai FocalLoss", indexed(focal)
    # binary: a sigmoid per channel, target (N, C, *S) of 0 / 1
    yield "binary_dice", "monai DiceLoss(sigmoid)", M.DiceLoss(sigmoid=True)
    yield "binary_jaccard", "monai DiceLoss(jaccard, sigmoid)", M.DiceLoss(jaccard=True, sigmoid=True)
    yield "binary_tversky", "monai TverskyLoss(sigmoid)", M.TverskyLoss(alpha=0.3, beta=0.7, sigmoid=True)
    yield "binary_gdl", "monai GeneralizedDiceLoss(sigmoid)", M.GeneralizedDiceLoss(sigmoid=True)
    yield "binary_focal", "monai FocalLoss(sigmoid)", M.FocalLoss(gamma=2.0)


def _kornia() -> Iterator[RefEntry]:
    from kornia import losses as K

    yield "dice", "kornia dice_loss", functools.partial(K.dice_loss, average="macro")
    yield "tversky", "kornia tversky_loss", functools.partial(K.tversky_loss, alpha=0.3, beta=0.7)
    focal = functools.partial(K.focal_loss, alpha=None, gamma=2.0, reduction="mean")
    yield "focal", "kornia focal_loss", focal
    binary_focal = functools.partial(K.binary_focal_loss_with_logits, alpha=None, gamma=2.0, reduction="mean")
    yield "binary_focal", "kornia binary_focal_loss_with_logits", binary_focal


def _import_smp_losses() -> types.ModuleType:
    """Load only ``segmentation_models_pytorch.losses``: the package __init__ may fail to import."""
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None:
        raise ImportError("No module named 'segmentation_models_pytorch'")
    package = types.ModuleType("segmentation_models_pytorch")
    package.__path__ = list(spec.submodule_search_locations or [])
    sys.modules.setdefault("segmentation_models_pytorch", package)
    return importlib.import_module("segmentation_models_pytorch.losses")


def _smp() -> Iterator[RefEntry]:
    L = _import_smp_losses()
    yield "dice", "smp DiceLoss", L.DiceLoss("multiclass")
    yield "jaccard", "smp JaccardLoss", L.JaccardLoss("multiclass")
    yield "tversky", "smp TverskyLoss", L.TverskyLoss("multiclass", alpha=0.3, beta=0.7)
    ft = L.TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=0.75)
    yield "focal_tversky", "smp TverskyLoss(gamma)", ft
    yield "focal", "smp FocalLoss", L.FocalLoss("multiclass", gamma=2.0)
    yield "binary_dice", "smp DiceLoss(multilabel)", L.DiceLoss("multilabel")
    yield "binary_jaccard", "smp JaccardLoss(multilabel)", L.JaccardLoss("multilabel")
    yield "binary_tversky", "smp TverskyLoss(multilabel)", L.TverskyLoss("multilabel", alpha=0.3, beta=0.7)
    yield "binary_focal", "smp FocalLoss(multilabel)", L.FocalLoss("multilabel", gamma=2.0)
    yield "lovasz", "smp LovaszLoss", L.LovaszLoss("multiclass")


def references() -> Tuple[References, List[str]]:
    """Reference losses by our loss name, and a note per library that could not be loaded."""
    found: References = {}
    notes: List[str] = []
    for library, loader in (("monai", _monai), ("kornia", _kornia), ("smp", _smp)):
        try:
            entries = list(loader())
        except Exception as error:  # noqa: BLE001 - any failure means "not available"
            notes.append(f"{library}: not available ({type(error).__name__}: {error})")
            continue
        for name, label, fn in entries:
            found.setdefault(name, []).append((label, fn))
    return found, notes


# --------------------------------------------------------------------------- measurement


def fwd_bwd(fn: LossFn, x: Tensor, t: Tensor) -> Callable[[], object]:
    """A training step: forward, then the gradient w.r.t. the logits (without accumulating it)."""
    return lambda: torch.autograd.grad(fn(x, t), x)


def fwd(fn: LossFn, x: Tensor, t: Tensor) -> Callable[[], object]:
    """Forward only, with autograd recording as in training."""
    return lambda: fn(x, t)


def times(step: Callable[[], object], min_run_time: float) -> List[float]:
    """Seconds per call of each block measured by ``Timer.blocked_autorange``."""
    timer = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return list(timer.blocked_autorange(min_run_time=min_run_time).times)


def paired(
    step: Callable[[], object], base: Callable[[], object], min_run_time: float, rounds: int = 3
) -> Tuple[float, float]:
    """Median seconds of ``step`` and of ``base``, timed in alternating rounds so that a change of
    machine load during the run affects both alike."""
    ours: List[float] = []
    theirs: List[float] = []
    for _ in range(rounds):
        theirs += times(base, min_run_time / rounds)
        ours += times(step, min_run_time / rounds)
    return statistics.median(ours), statistics.median(theirs)


class ForeignLoad:
    """CPU cores that other processes kept busy meanwhile (Linux ``/proc/stat``; else None).

    Other work on the machine makes a 2-thread run's timings noisy; each table reports it."""

    def __enter__(self) -> "ForeignLoad":
        self.start = self._sample()
        self.cores: Optional[float] = None
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        if self.start is not None and end is not None:
            (busy0, own0, wall0), (busy1, own1, wall1) = self.start, end
            self.cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)

    @staticmethod
    def _sample() -> Optional[Tuple[float, float, float]]:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic()


def peak_extra_bytes(step: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak bytes allocated by one step above what was allocated before it (the result included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return _profiled_peak(step)


def _profiled_peak(step: Callable[[], object]) -> Optional[int]:
    """CPU: replay the allocator's alloc/free events recorded by the profiler, in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        from torch._C._profiler import _EventType

        tree = prof.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, ImportError):
        return None
    allocations = [e for e in _walk(tree) if e.tag == _EventType.Allocation]
    allocations.sort(key=lambda e: e.start_time_ns)
    sizes = [e.extra_fields.alloc_size for e in allocations]
    return max(itertools.accumulate(sizes, initial=0))


def _walk(events: list) -> Iterator:
    for event in events:
        yield event
        yield from _walk(event.children)


# --------------------------------------------------------------------------- one shape


@dataclass
class Row:
    loss: str
    ms: float  # ours, forward+backward, input checks on
    ratio_on: float  # to F.cross_entropy, forward+backward
    ratio_off: float
    fwd_ratio: float  # forward only, checks on
    target: Optional[float]
    memory: Optional[float]  # peak extra bytes / logits bytes
    memory_target: Optional[float] = None
    best_ref: Optional[Tuple[str, float]] = None  # fastest reference, its ratio to F.cross_entropy
    speedup: Optional[float] = None  # its ratio over ours (checks on): how much faster we are
    unsupported: List[str] = field(default_factory=list)


class Bench:
    """Times losses on one shape, each beside F.cross_entropy on the same tensors."""

    def __init__(
        self,
        shape: Tuple[int, ...],
        device: torch.device,
        min_run_time: float,
        domain: Domain = DOMAINS["softmax"],
    ) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(shape, generator=gen).to(device).requires_grad_()
        self.t = domain.target(shape, gen).to(device)
        self.device, self.min_run_time, self.domain = device, min_run_time, domain
        self.logit_bytes = self.x.numel() * self.x.element_size()
        self.base_seconds: Dict[bool, List[float]] = {False: [], True: []}  # by forward_only

    def ratio(self, fn: LossFn, forward_only: bool = False) -> Tuple[float, float]:
        """Seconds of ``fn`` and its ratio to F.cross_entropy timed in the same rounds."""
        make = fwd if forward_only else fwd_bwd
        step, base = make(fn, self.x, self.t), make(self.domain.baseline, self.x, self.t)
        seconds, base_seconds = paired(step, base, self.min_run_time)
        self.base_seconds[forward_only].append(base_seconds)
        return seconds, seconds / base_seconds

    def memory(self, fn: LossFn) -> Optional[float]:
        peak = peak_extra_bytes(fwd_bwd(fn, self.x, self.t), self.device)
        return None if peak is None else peak / self.logit_bytes

    def ours(self, name: str, fn: LossFn) -> Row:
        with sl.input_checks(True):
            seconds, on = self.ratio(fn)
            _, fwd_ratio = self.ratio(fn, forward_only=True)
            memory = self.memory(fn)
        with sl.input_checks(False):
            _, off = self.ratio(fn)
        memory_target = memory_target_of(name, tuple(self.x.shape))
        return Row(name, seconds * 1e3, on, off, fwd_ratio, target_of(name), memory, memory_target)

    def reference(self, fn: LossFn) -> Tuple[Optional[float], str]:
        """Ratio of a reference to F.cross_entropy, or None and why (it rejects this shape, say)."""
        try:
            fwd_bwd(fn, self.x, self.t)()
        except Exception as error:  # noqa: BLE001 - a reference that rejects the input is "n/a"
            return None, f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        return self.ratio(fn)[1], ""

    def baseline_line(self) -> str:
        """F.cross_entropy's own numbers: the median of its medians beside every measurement."""
        fb, f = (statistics.median(self.base_seconds[k] or [math.nan]) * 1e3 for k in (False, True))
        return (
            f"{self.domain.baseline_label}: {fb:.2f} ms fwd+bwd, {f:.2f} ms fwd, "
            f"peak extra memory {_x(self.memory(self.domain.baseline))} logits"
        )


def run_shape(bench: Bench, losses: Dict[str, LossFn], refs: References) -> List[Row]:
    rows = []
    for name, fn in losses.items():
        progress(f"  {name}")
        row = bench.ours(name, fn)
        add_references(row, [(label, *bench.reference(ref)) for label, ref in refs.get(name, [])])
        rows.append(row)
    return rows


def add_references(row: Row, results: List[Tuple[str, Optional[float], str]]) -> None:
    """Fill in the fastest reference (by ratio to F.cross_entropy) and those rejecting the shape."""
    row.unsupported = [f"{label} ({why})" for label, ratio, why in results if ratio is None]
    usable = [(ratio, label) for label, ratio, _ in results if ratio is not None]
    if usable:
        ratio, label = min(usable)
        row.best_ref = (label, ratio)
        row.speedup = ratio / row.ratio_on


# --------------------------------------------------------------------------- verdicts and tables


def target_verdict(row: Row) -> str:
    """The time target, judged with input checks on; a miss says whether checks off would meet it."""
    if row.target is None:
        return "—"
    if row.ratio_on <= row.target:
        return f"≤{row.target:.2f} PASS"
    off = "PASS" if row.ratio_off <= row.target else "FAIL"
    return f"≤{row.target:.2f} FAIL (checks off: {off})"


def memory_verdict(row: Row) -> str:
    if row.memory_target is None or row.memory is None:
        return "—"
    verdict = "PASS" if row.memory <= row.memory_target else "FAIL"
    return f"≤{row.memory_target:.1f} {verdict}"


def rule_verdict(row: Row) -> Optional[bool]:
    """Faster than the fastest reference; at least 2× faster where it costs > 2× F.cross_entropy."""
    if row.best_ref is None or row.speedup is None:
        return None
    return row.speedup >= 2.0 if row.best_ref[1] > 2.0 else row.speedup > 1.0


def _x(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}×"


def shape_table(
    label: str, shape: Tuple[int, ...], baseline: str, rows: List[Row], base: str = "F.ce"
) -> List[str]:
    lines = [
        f"### {label} {tuple(shape)}",
        "",
        baseline,
        "",
        f"| loss | ours fwd+bwd ms | ratio to {base} (checks on) | ratio (checks off) "
        f"| fwd-only ratio | target | best reference (ratio to {base}) | our speed-up over it "
        "| peak extra mem ×logits | memory target |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for r in rows:
        best = "—" if r.best_ref is None else f"{r.best_ref[0]} ({r.best_ref[1]:.2f}×)"
        if r.best_ref is None and r.unsupported:
            best = "n/a"
        lines.append(
            f"| {r.loss} | {r.ms:.2f} | {_x(r.ratio_on)} | {_x(r.ratio_off)} | {_x(r.fwd_ratio)} "
            f"| {target_verdict(r)} | {best} | {_x(r.speedup)} | {_x(r.memory)} | {memory_verdict(r)} |"
        )
    notes = [f"- {r.loss}: n/a {u}" for r in rows for u in r.unsupported]
    return lines + ([""] + notes if notes else []) + [""]


def rule_line(name: str, rows: List[Tuple[str, Row]]) -> str:
    """The rule's verdict for one loss over its (shape label, row) pairs."""
    failed, judged = [], 0
    for label, row in rows:
        ok = rule_verdict(row)
        judged += ok is not None
        if ok is False and row.best_ref is not None:
            failed.append(f"{label} ({_x(row.speedup)} vs {row.best_ref[0]})")
    if not judged:
        return f"- {name}: no reference shares it"
    return f"- {name}: " + ("PASS" if not failed else "FAIL at " + ", ".join(failed))


def summary(results: List[Tuple[str, List[Row]]]) -> List[str]:
    """The issue's rule per loss over all shapes, then every target that was missed."""
    pairs = [(label, r) for label, rows in results for r in rows]
    names = list(dict.fromkeys(r.loss for _, r in pairs))
    lines = ["### Rule: faster than the fastest reference; ≥2× where that one costs >2× F.ce", ""]
    lines += [rule_line(n, [(label, r) for label, r in pairs if r.loss == n]) for n in names]
    misses = [
        f"- {r.loss} @ {label}: {r.ratio_on:.2f}× (checks off {r.ratio_off:.2f}×"
        f"{', met' if r.ratio_off <= r.target else ''}) > {r.target:.2f}×"
        for label, r in pairs
        if r.target is not None and r.ratio_on > r.target
    ]
    lines += ["", "### Time targets missed (fwd+bwd, checks on)", ""] + (misses or ["- none"])
    memory = [
        f"- {r.loss} @ {label}: {r.memory:.2f}× > {r.memory_target:.1f}× the logits"
        for label, r in pairs
        if r.memory_target is not None and r.memory is not None and r.memory > r.memory_target
    ]
    lines += ["", "### Memory targets missed (peak of a region-loss step)", ""] + (memory or ["- none"])
    return lines + [""]


def load_note(cores: Optional[float]) -> str:
    if cores is None:
        return ""
    warning = " (timings are unreliable: rerun on an idle machine)" if cores > 0.25 else ""
    return f"; other processes kept {cores:.2f} CPU cores busy meanwhile{warning}"


def header(args: argparse.Namespace, notes: List[str]) -> List[str]:
    base = DOMAINS[args.domain].baseline.__name__
    versions = [f"torch {torch.__version__}", f"seglosses {sl.__version__}"]
    for module in ("monai", "kornia"):
        try:
            versions.append(f"{module} {importlib.import_module(module).__version__}")
        except Exception:  # noqa: BLE001
            pass
    lines = [
        "## seglosses benchmark",
        "",
        f"{', '.join(versions)}; device {args.device}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs.",
        f"Medians of Timer.blocked_autorange, {args.min_run_time}s per loss and as much for "
        f"{base}, timed in alternating rounds; ratios are to the {base} rounds beside each measurement"
        + "".join(f"; {label}: {f:g}× that time" for label, f in TIME_FRACTION.items())
        + ".",
        "Targets (fwd+bwd ratio, judged with input checks on; the column says when checks off would "
        "meet a missed one): "
        + ", ".join(f"{family} ≤ {t:g}×" for family, t in FAMILY_TARGETS.items())
        + f"; region-loss peak memory ≤ {REGION_MEMORY_TARGET:g}× the logits' bytes.",
    ]
    if args.quick:
        notes = [
            "quick smoke run: per-call overhead dominates this tiny shape; "
            "the targets are meant for the full shapes",
            *notes,
        ]
    return lines + [f"- {n}" for n in notes] + [""]


# --------------------------------------------------------------------------- main


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--quick", action="store_true", help="one small shape, short timings")
    p.add_argument("--losses", help="comma-separated subset of the domain's losses (default: all)")
    p.add_argument(
        "--domain",
        default="softmax",
        choices=list(DOMAINS),
        help="softmax losses against F.cross_entropy (default) or binary (sigmoid) ones against "
        "F.binary_cross_entropy_with_logits, target (N, C, *S) of 0 / 1",
    )
    p.add_argument("--markdown", metavar="PATH", help="also write the tables to this file")
    p.add_argument("--min-run-time", type=float, help="seconds per measurement (1.0; quick 0.1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    if args.min_run_time is None:
        args.min_run_time = 0.1 if args.quick else 1.0
    return args


def chosen_shapes(args: argparse.Namespace) -> Dict[str, Tuple[int, ...]]:
    if args.quick:
        return QUICK_SHAPES
    if not args.shapes:
        return SHAPES
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        sys.exit(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    return {n: SHAPES[n] for n in names}


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    domain = DOMAINS[args.domain]
    losses = our_losses([s.strip() for s in args.losses.split(",")] if args.losses else None, args.domain)
    refs, notes = references()
    out = header(args, notes)
    print("\n".join(out), flush=True)
    results = []
    for label, shape in chosen_shapes(args).items():
        progress(f"shape {label} {shape}")
        bench = Bench(shape, device, args.min_run_time * TIME_FRACTION.get(label, 1.0), domain)
        with ForeignLoad() as load:
            rows = run_shape(bench, losses, refs)
        results.append((label, rows))
        baseline = bench.baseline_line() + load_note(load.cores)
        table = shape_table(label, shape, baseline, rows, domain.baseline_label)
        print("\n".join(table), flush=True)
        out += table
    tail = summary(results)
    print("\n".join(tail), flush=True)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(out + tail) + "\n")


if __name__ == "__main__":
    main()
