"""Speed of the adaptive and scheduled losses against their static forms (issue 4: at most 1.2x).

A benchmark, not a test: it prints a markdown table and never fails. Each row times forward+backward (the
gradient w.r.t. the logits) of an adaptive loss in training mode, so that its statistics update on every
step, beside its static form on the same tensors, in alternating rounds (``paired`` of
``benchmarks/run.py``); the ratio is of the medians. Input checks on, and off in a second column.

    python benchmarks/adaptive.py                      # shape (8, 5, 256, 256), CPU, 2 threads
    python benchmarks/adaptive.py --quick              # (2, 5, 64, 64), short timings (smoke run)
    python benchmarks/adaptive.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ForeignLoad, fwd_bwd, load_note, paired  # noqa: E402

import seglosses as sl  # noqa: E402
from seglosses.adaptive.losses import (  # noqa: E402
    AdaptiveFocalLoss,
    AdaptiveSmoothingCELoss,
    ClassBalancedFocalLoss,
    DifficultyCELoss,
    FrequencyFocalLoss,
)

TARGET = 1.2
Factory = Callable[[int], nn.Module]  # C -> a loss module
Pair = Tuple[str, Factory, str, Factory]  # (adaptive label, its factory, static label, its factory)


def scheduled(module: nn.Module, step: float = 7.0) -> nn.Module:
    module.set_step(step)  # type: ignore[operator]
    return module


def pairs() -> List[Pair]:
    """(adaptive, static form) pairs. The static form is the same loss with its state frozen: focal with
    per-class α and / or γ for the adaptive focal losses, the tensor-ε path for adaptive smoothing. Rows
    marked "ref." compare with the plainer loss instead (focal with γ = 2, torch's label smoothing)."""

    def ramp(c: int) -> List[float]:
        return [float(k + 1) for k in range(c)]

    def gammas(c: int) -> List[float]:
        return [2.0 - k / c for k in range(c)]

    rebalanced = "linear(start=1, end=0.01, steps=99)*dice + (1 - linear(start=1, end=0.01, steps=99))*ce"
    focal_alpha = ("focal(alpha=[C])", lambda c: sl.FocalLoss(alpha=ramp(c)))
    return [
        (
            "adaptive_focal",
            lambda c: AdaptiveFocalLoss(),
            "focal(alpha=[C], gamma=[C])",
            lambda c: sl.FocalLoss(alpha=ramp(c), gamma=gammas(c)),
        ),
        ("adaptive_focal (ref.)", lambda c: AdaptiveFocalLoss(), "focal(gamma=2)", lambda c: sl.FocalLoss()),
        ("adaptive_focal(adapt='alpha')", lambda c: AdaptiveFocalLoss(adapt="alpha"), *focal_alpha),
        (
            "adaptive_focal(adapt='gamma')",
            lambda c: AdaptiveFocalLoss(adapt="gamma"),
            "focal(gamma=[C])",
            lambda c: sl.FocalLoss(gamma=gammas(c)),
        ),
        ("cb_focal (counting batches)", lambda c: ClassBalancedFocalLoss(), *focal_alpha),
        ("frequency_focal", lambda c: FrequencyFocalLoss(), *focal_alpha),
        (
            "adaptive_smoothing_ce",
            lambda c: AdaptiveSmoothingCELoss(),
            "ce(label_smoothing=tensor(0.1))",
            lambda c: sl.CrossEntropyLoss(label_smoothing=torch.tensor(0.1)),
        ),
        (
            "adaptive_smoothing_ce (ref.)",
            lambda c: AdaptiveSmoothingCELoss(),
            "ce(label_smoothing=0.1)",
            lambda c: sl.CrossEntropyLoss(label_smoothing=0.1),
        ),
        ("difficulty_ce", lambda c: DifficultyCELoss(), "focal(gamma=2)", lambda c: sl.FocalLoss()),
        (
            "ce(weight, weight_schedule)",
            lambda c: scheduled(sl.CrossEntropyLoss(weight=ramp(c), weight_schedule="exponential(lam=0.1)")),
            "ce(weight=[C])",
            lambda c: sl.CrossEntropyLoss(weight=ramp(c)),
        ),
        (
            "focal(alpha, alpha_schedule)",
            lambda c: scheduled(sl.FocalLoss(alpha=ramp(c), alpha_schedule="cosine(steps=20)")),
            *focal_alpha,
        ),
        (
            "rebalanced dice + ce",
            lambda c: scheduled(sl.create_loss(rebalanced)),
            "0.5*dice + 0.5*ce",
            lambda c: sl.create_loss("0.5*dice + 0.5*ce"),
        ),
    ]


def measure(pair: Pair, x: torch.Tensor, t: torch.Tensor, min_run_time: float) -> Tuple[float, float, float]:
    """Milliseconds of the adaptive loss and its ratio to the static form, input checks on and off."""
    _, adaptive, _, static = pair
    ours, base = adaptive(x.shape[1]).to(x.device).train(), static(x.shape[1]).to(x.device)
    ratios = []
    for checks in (True, False):
        with sl.input_checks(checks):
            seconds, base_seconds = paired(fwd_bwd(ours, x, t), fwd_bwd(base, x, t), min_run_time)
        ratios.append(seconds / base_seconds)
        if checks:
            milliseconds = seconds * 1e3
    return milliseconds, ratios[0], ratios[1]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shape (2, 5, 64, 64), short timings")
    p.add_argument("--min-run-time", type=float, help="seconds per measurement (default 1.0; quick 0.1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    if args.min_run_time is None:
        args.min_run_time = 0.1 if args.quick else 1.0
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (2, 5, 64, 64) if args.quick else (8, 5, 256, 256)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(args.device).requires_grad_()
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=gen).to(args.device)
    print(
        f"## adaptive losses vs their static forms, shape {shape}\n\ntorch {torch.__version__}, device "
        f"{args.device}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; forward+backward in "
        f"training mode, medians of alternating rounds, {args.min_run_time}s per measurement.\n",
        flush=True,
    )
    rows = [
        "| adaptive loss | ms | static form | ratio (checks on) | ratio (checks off) | ≤ 1.2 |",
        "|---|---:|---|---:|---:|:---:|",
    ]
    with ForeignLoad() as load:
        for pair in pairs():
            print(f"  {pair[0]}", file=sys.stderr, flush=True)
            ms, on, off = measure(pair, x, t, args.min_run_time)
            verdict = "ref." if pair[0].endswith("(ref.)") else "yes" if max(on, off) <= TARGET else "NO"
            rows.append(f"| {pair[0]} | {ms:.1f} | {pair[2]} | {on:.2f} | {off:.2f} | {verdict} |")
    print("\n".join(rows) + load_note(load.cores), flush=True)


if __name__ == "__main__":
    main()
