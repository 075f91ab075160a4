"""Determinism (issue 9): with ``torch.use_deterministic_algorithms(True)`` the same inputs give
bit-identical losses and gradients run to run, for every registered loss, on the CPU and (when one is
present) a CUDA device; the pixel sampler and the triplet miners are reproducible under a seeded
``torch.Generator``.

"Run to run" here is two fresh modules on the same inputs in one process, and (``slow``) two separate
processes, whose digests of every loss and gradient must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
from test_fuzz import BUILDABLE, ENTRIES, make_loss, one_thread, option_parameters  # noqa: F401

from seglosses.sampling import sample_pixels

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at its first use)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]
IGNORE = 255
CLASSES, DIM = 4, 6
NAMES = [name for name in sorted(ENTRIES) if ENTRIES[name].domain in BUILDABLE]


@pytest.fixture(autouse=True)
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def inputs(name: str, device: str) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """Input, target and forward keywords of a loss's domain (a fifth of the target ignored)."""
    g = torch.Generator().manual_seed(11)
    domain = ENTRIES[name].domain
    extra: Dict[str, Any] = {}
    if domain == "embedding":
        x = torch.randn(2, DIM, 9, 10, generator=g)
        target = torch.randint(CLASSES, (2, 9, 10), generator=g)
        extra["logits"] = torch.randn(2, CLASSES, 9, 10, generator=g).to(device)
    else:
        x = torch.randn(2, CLASSES, 9, 10, generator=g) * 4
        shape = (2, 9, 10) if domain == "softmax" else x.shape
        target = torch.randint(CLASSES if domain == "softmax" else 2, shape, generator=g)
    target = target.masked_fill(torch.rand(target.shape, generator=g) < 0.2, IGNORE)
    return x.to(device), target.to(device), extra


def option_sets(name: str) -> List[Dict[str, Any]]:
    """The defaults, and options that take other code paths where the loss has them: class weights,
    pooled statistics, a capped sampler with a seeded generator, each triplet miner."""
    parameters = option_parameters(name)
    sets: List[Dict[str, Any]] = [{}]
    heavier: Dict[str, Any] = {}
    if "weight" in parameters:
        heavier["weight"] = [0.5, 2.0, 1.0, 3.0]
    if "batch" in parameters:
        heavier["batch"] = True
    if "max_per_class" in parameters:
        heavier.update(max_per_class=7, strategy="mix")
    if heavier:
        sets.append(heavier)
    if "mining" in parameters:
        sets += [{"mining": mining, "max_total": 40} for mining in ("all", "semi_hard")]
    return sets


def run(name: str, device: str, options: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One loss and its gradient from a fresh module (a fresh generator of the same seed where it samples)."""
    x, target, extra = inputs(name, device)
    if "max_per_class" in options or "max_total" in options:
        options = {**options, "generator": torch.Generator(device=device).manual_seed(3)}
    loss = make_loss(name, classes=CLASSES, dim=DIM, ignore_index=IGNORE, **options).to(device)
    x = x.requires_grad_()
    value = loss(x, target, **extra)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_bit_identical_run_to_run(name, device):
    for options in option_sets(name):
        first, second = run(name, device, options), run(name, device, options)
        assert torch.isfinite(first[0]).all(), options
        for a, b in zip(first, second):
            assert torch.equal(a, b), f"{name} {options}: not bit-identical"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", ["random", "hard", "mix"])
def test_sampler_reproducible_under_a_seeded_generator(strategy, device):
    """The same seed gives the same pixels; another seed other pixels (the caps leave a choice)."""
    x, target, extra = inputs("contrastive", device)
    options = dict(
        ignore_index=IGNORE, strategy=strategy, max_per_class=5, max_total=30, logits=extra["logits"]
    )

    def sample(seed: int):
        return sample_pixels(x, target, generator=torch.Generator(device=device).manual_seed(seed), **options)

    (x1, y1), (x2, y2), (x3, _) = sample(0), sample(0), sample(1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape[0] == 30 and not torch.equal(x1, x3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mining", ["hard", "all", "semi_hard"])
def test_triplet_miners_reproducible(mining, device):
    """Mining is a function of the sampled pixels: the same seed, the same loss and gradient bits."""
    if "triplet" not in ENTRIES:
        pytest.skip("no triplet loss registered")
    results = [run("triplet", device, {"mining": mining, "max_per_class": 6}) for _ in range(2)]
    for a, b in zip(*results):
        assert torch.equal(a, b)


_DIGEST = """
import hashlib, sys, torch
sys.path.insert(0, {tests!r})
import test_determinism as d
torch.use_deterministic_algorithms(True)
h = hashlib.sha256()
for name in d.NAMES:
    for options in d.option_sets(name):
        for t in d.run(name, "cpu", options):
            h.update(t.double().cpu().numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_bit_identical_across_processes():
    """Two processes compute every loss and gradient above; their digests agree (default thread count)."""
    code = _DIGEST.format(tests=str(Path(__file__).parent))
    command = [sys.executable, "-c", code]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-2000:] for _, err in outputs]
    first, second = (out.strip() for out, _ in outputs)
    assert len(first) == 64 and first == second
