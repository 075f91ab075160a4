"""Data checks without host synchronisation: computed on the device, read when they are ready.

On the CPU reading a value costs nothing, so the input checks read their statistics at once and raise in
the call that received the bad input. On CUDA a read would stall the host until the GPU catches up (and
``torch.cuda.set_sync_debug_mode("error")`` refuses it), so there the checks put their statistics in a
small device tensor, copy it to pinned host memory asynchronously and record an event; the verdict is read
when the event has completed:

* at the start of every later loss call that checks its inputs (no wait: only finished copies are read);
* when :func:`flush_input_checks` is called (it waits for every pending check).

A bad input on CUDA therefore raises the same ``SegLossError`` one or a few calls late, from the call that
first finds the copy finished, with the note that it concerns an earlier call. At most
:data:`MAX_PENDING` checks wait at once; beyond that the oldest is waited for.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional

import torch
from torch import Tensor

from .errors import SegLossError

DEFERRED_DEVICES = ("cuda",)  # devices whose data checks defer their verdict (tests add "cpu")
MAX_PENDING = 64
Verdict = Callable[[List[float]], Optional[str]]


@dataclass
class _Pending:
    host: Tensor  # the statistics, copied (asynchronously) to the host
    event: Optional["torch.cuda.Event"]  # completed when the copy is; None: already on the host
    verdict: Verdict  # the statistics -> an error message, or None


_PENDING: Deque[_Pending] = deque()
_LOCK = threading.Lock()


def deferred(device: torch.device) -> bool:
    """Whether the data checks of tensors on ``device`` defer their verdict (see module docstring)."""
    return device.type in DEFERRED_DEVICES


def defer(statistics: List[Tensor], verdict: Verdict) -> None:
    """Queue 0-d device tensors for a later ``verdict`` (one stacked float64 copy, no synchronisation)."""
    values = torch.stack([s.to(torch.float64) for s in statistics])
    if values.is_cuda:
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event: Optional[torch.cuda.Event] = torch.cuda.Event()
        event.record()  # type: ignore[union-attr]
    else:
        host, event = values, None
    with _LOCK:
        _PENDING.append(_Pending(host, event, verdict))
        overflow = len(_PENDING) > MAX_PENDING
    if overflow:
        _raise_ready(wait_for_oldest=True)


def check_count(count: Tensor, problem: Callable[[int], str]) -> None:
    """Raise ``SegLossError(problem(n))`` if the 0-d device count ``n`` of bad values is not 0: read at once
    where reading is free (the CPU), deferred where it would stall the host (CUDA; see the module)."""

    def verdict(values: List[float]) -> Optional[str]:
        return None if values[0] == 0 else problem(int(values[0]))

    if deferred(count.device):
        defer([count], verdict)
        return
    message = verdict([float(count)])
    if message is not None:
        raise SegLossError(message)


def raise_ready() -> None:
    """Raise for the first finished pending check that found a problem (no waiting)."""
    _raise_ready(wait_for_oldest=False)


def flush_input_checks() -> None:
    """Wait for every pending deferred input check (a host synchronisation) and raise the first problem.

    On CUDA the data checks report a bad input at a later loss call (see :mod:`seglosses._core.deferred`);
    call this at the end of an epoch, or in a test, to have every check's verdict now. On the CPU nothing
    is ever pending.
    """
    while True:
        with _LOCK:
            if not _PENDING:
                return
        _raise_ready(wait_for_oldest=True)


def _raise_ready(wait_for_oldest: bool) -> None:
    while True:
        with _LOCK:
            if not _PENDING:
                return
            item = _PENDING[0]
            if item.event is not None and not item.event.query():
                if not wait_for_oldest:
                    return
                item.event.synchronize()
            _PENDING.popleft()
        wait_for_oldest = False
        problem = item.verdict(item.host.tolist())
        if problem is not None:
            raise SegLossError(
                f"{problem} (found by a deferred input check of an earlier call on {_where(item)})"
            )


def _where(item: _Pending) -> str:
    return "CUDA" if item.event is not None else "the device"
