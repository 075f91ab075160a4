"""Which implementation of a primitive runs: the public backend switch.

The hot computations of the losses are a few primitives (the per-pixel softmax term, the per-(sample,
class) region statistics). Each has a *reference* implementation in plain differentiable torch (the
oracle: double backward, ``torch.func``, any device), a fused eager-CPU implementation, and a Triton
implementation for CUDA. :func:`implementation` is the one place that picks among them; the losses never
look at the device themselves.

Names:

* ``"auto"`` (default): the fused CPU implementation on CPU tensors of at least
  :data:`~seglosses._core.numerics.FUSED_MIN` elements in eager mode; the reference otherwise (small
  inputs, ``torch.compile`` tracing, other devices). CUDA tensors get the reference too until the Triton
  kernels have run on a GPU (:data:`AUTO_TRITON`); ask for them with ``"triton"``.
* ``"reference"``: the plain torch implementations everywhere, as ``torch.backends`` flags rule a fused
  kernel out when debugging.
* ``"cpu"``: the fused CPU implementations for CPU tensors of any size (the reference elsewhere).
* ``"triton"``: the Triton kernels, on CUDA tensors, and on CPU tensors under Triton's interpreter
  (``TRITON_INTERPRET=1`` set before seglosses is imported), which is how they are tested without a GPU.

Under ``torch.func`` transforms every choice gives the reference (the fused implementations have
closed-form backwards that the transforms do not see through). The Triton kernels are ``torch.library``
custom ops, so ``torch.compile`` traces through them.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator, Literal

from torch import Tensor

from .errors import SegLossError, expected
from .numerics import small, tracing, transformed

BackendName = Literal["auto", "reference", "cpu", "triton"]
BACKENDS = ("auto", "reference", "cpu", "triton")
Implementation = Literal["reference", "cpu", "triton"]

_BACKEND: str = "auto"
# "auto" picks the Triton kernels on CUDA only once they have passed tests/test_backends.py on a GPU; until
# then they are tested under Triton's interpreter only and serve CUDA tensors under backend("triton").
AUTO_TRITON = False


def set_backend(name: BackendName) -> None:
    """Choose the implementation of the primitives for every later loss call, process-wide (like the
    input-check switch: read once at the start of each call). See the module docstring for the names."""
    global _BACKEND
    if name not in BACKENDS:
        raise expected(f"a backend name in {BACKENDS}", repr(name))
    if name == "triton" and not triton_available():
        raise SegLossError(
            "expected Triton to be importable for backend 'triton', got an ImportError (CUDA builds of torch "
            "bring it; on a CPU-only install run 'pip install triton' and set TRITON_INTERPRET=1 before "
            "importing seglosses to run the kernels under Triton's interpreter)"
        )
    _BACKEND = name


def get_backend() -> str:
    """The backend name set by :func:`set_backend` (``"auto"`` by default)."""
    return _BACKEND


@contextlib.contextmanager
def backend(name: BackendName) -> Iterator[None]:
    """Context manager form of :func:`set_backend`; restores the previous backend on exit.

    Example:
        >>> import torch, seglosses
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> with seglosses.backend("reference"):
        ...     plain = seglosses.functional.dice_loss(logits, target)
        >>> torch.allclose(plain, seglosses.functional.dice_loss(logits, target))
        True
    """
    previous = _BACKEND
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether Triton imports (CUDA builds of torch bring it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton kernels run under its interpreter (``TRITON_INTERPRET=1``, CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def implementation(tensor: Tensor) -> Implementation:
    """The implementation that serves a primitive on ``tensor`` (its logits) now: the one decision."""
    if _BACKEND == "reference" or transformed():
        return "reference"
    if _BACKEND == "triton":
        if not _triton_device(tensor):
            raise expected(
                "CUDA tensors for backend 'triton' (or CPU tensors with TRITON_INTERPRET=1 set before "
                "importing seglosses)",
                f"a tensor on {tensor.device}",
            )
        return "triton"
    if tensor.device.type == "cuda":
        return "triton" if AUTO_TRITON and triton_available() else "reference"
    if tensor.device.type == "cpu" and not tracing() and (_BACKEND == "cpu" or not small(tensor)):
        return "cpu"  # the fused CPU Functions read data on the host: eager only
    return "reference"


def fused_cpu(tensor: Tensor) -> bool:
    """Whether the fused eager-CPU implementations (and their data-dependent shortcuts, whose host reads
    cost nothing there) serve ``tensor``."""
    return implementation(tensor) == "cpu"


def _triton_device(tensor: Tensor) -> bool:
    return tensor.device.type == "cuda" or (tensor.device.type == "cpu" and interpreting())
