"""The sort primitive of the Lovász losses and TopK / OHEM: the order of each row's keys, largest first,
ties by index.

Reference: ``torch.argsort(stable=True, descending=True)`` (any device, any float dtype). Fused eager-CPU
implementation (float32 keys): an exact least-significant-digit radix argsort. Each key maps to a 32-bit
integer whose ascending order is the keys' descending order, sorted in two stable passes of 16 bits with
numpy's radix argsort (the low half first, then the high half in that order: a stable sort keeps the first
pass's order among equal high halves, so ties end in index order), the rows spread over torch's intra-op
threads (numpy's sort releases the GIL). Both give the same permutation: decreasing keys, equal keys in
increasing index order (``-0.0`` equals ``0.0``, ``-inf`` last).
"""

from __future__ import annotations

import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .._core.backend import fused_cpu


def descending_order(keys: Tensor, *, nonnegative: bool = False) -> Tensor:
    """Indices ``(*, L)`` (int64) that sort each row of ``keys`` ``(*, L)`` in decreasing order, equal keys
    in increasing index order; no gradient. Keys must not be NaN (``-inf`` sorts last). ``nonnegative``
    promises keys that are ``+0.0`` or more, or ``-inf`` (``abs()`` of anything, masked with ``-inf``):
    their bits are in order as they are. A ``-0.0`` key breaks the promise (it would sort last)."""
    keys = keys.detach()
    if radix_available(keys):
        return _radix_order(keys, nonnegative)
    return keys.argsort(dim=-1, descending=True, stable=True)


def radix_available(keys: Tensor) -> bool:
    """Whether the fused radix sort serves the rows of ``keys`` (float32 on the eager CPU path)."""
    return (
        keys.dtype == torch.float32
        and keys.ndim >= 1
        and 0 < keys.shape[-1] < 2**31
        and sys.byteorder == "little"
        and fused_cpu(keys)
    )


def _radix_order(keys: Tensor, nonnegative: bool) -> Tensor:
    """:func:`descending_order` by two stable 16-bit passes.

    ``s = bits ^ ((bits >> 31) & 0x7FFFFFFF)`` is a signed int32 in the order of the floats (the magnitude
    bits of negative ones reversed; nonnegative keys and ``-inf`` are in order as their bits); its bitwise
    complement ``d`` reverses the order. As a little-endian pair of 16-bit halves, ``d``'s ascending
    order is that of (its high half as int16, its low half as uint16)."""
    shape, length = keys.shape, keys.shape[-1]
    bits = keys.contiguous().view(torch.int32) if nonnegative else (keys + 0.0).view(torch.int32)
    if not nonnegative:  # + 0.0 above turned -0.0 into 0.0
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    halves = torch.bitwise_not(bits).contiguous().view(torch.int16).view(-1, length, 2)
    low = halves[..., 0].contiguous().numpy().view(np.uint16)
    high = halves[..., 1].contiguous().numpy()
    order = np.empty(low.shape, dtype=np.int32)  # lengths < 2^31

    def sort_row(r: int) -> None:
        first = np.argsort(low[r], kind="stable")  # numpy's radix sort for 16-bit integers
        second = np.argsort(high[r].take(first), kind="stable")
        np.take(first.astype(np.int32), second, out=order[r])

    each_row(low.shape[0], sort_row, low.size)
    return torch.from_numpy(order).long().view(shape)


def radix_order_row(keys: np.ndarray) -> np.ndarray:
    """The descending stable order (int32) of one contiguous float32 row of keys that are ``>= +0.0`` or
    ``-inf`` (:func:`_radix_order` for one row, for callers that work row by row in threads)."""
    complement = np.invert(keys.view(np.int32))
    first = np.argsort(complement.view(np.uint16)[0::2], kind="stable")
    second = np.argsort(complement.view(np.int16)[1::2].take(first), kind="stable")
    return first.astype(np.int32).take(second)


def each_row(rows: int, run: Callable[[int], None], size: int) -> None:
    """``run(r)`` for every row, the rows spread over torch's intra-op threads (numpy's sort and take
    release the GIL); ``size`` the elements of all rows (small work stays on this thread)."""
    threads = min(torch.get_num_threads(), rows)
    if threads <= 1 or size < 2**16:
        for r in range(rows):
            run(r)
        return

    def run_part(part: range) -> None:
        for r in part:
            run(r)

    parts = [range(t, rows, threads) for t in range(threads)]  # interleaved: equal shares of equal rows
    list(_pool(threads).map(run_part, parts))


@functools.lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="seglosses-sort")


# a forked child (DataLoader workers, multiprocessing) inherits the pool but not its threads: start afresh
os.register_at_fork(after_in_child=_pool.cache_clear)
