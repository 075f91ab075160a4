"""The sort primitive of the Lovász losses and TopK / OHEM: the order of each row's keys, largest first,
ties by index.

Reference: ``torch.argsort(stable=True, descending=True)`` (any device, any float dtype). Fused eager-CPU
implementation (float32 keys): each key maps to an unsigned 32-bit integer whose ascending order is the
keys' descending order, packed above its 32-bit index into one unsigned 64-bit integer, and each row of
these is sorted by numpy's vectorised sort (AVX2 / AVX-512 where the CPU has them; any correct sort gives
the same result, the packed values being distinct), the rows spread over torch's intra-op threads
(numpy's sort releases the GIL). The low halves of the sorted values are the order. Both give the same
permutation: decreasing keys, equal keys in increasing index order (``-0.0`` equals ``0.0``, ``-inf``
last).
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
    if fused_sort_available(keys):
        return _packed_order(keys, nonnegative)
    return keys.argsort(dim=-1, descending=True, stable=True)


def fused_sort_available(keys: Tensor) -> bool:
    """Whether the fused packed sort serves the rows of ``keys`` (float32 on the eager CPU path)."""
    return (
        keys.dtype == torch.float32
        and keys.ndim >= 1
        and 0 < keys.shape[-1] < 2**31
        and sys.byteorder == "little"
        and fused_cpu(keys)
    )


def _packed_order(keys: Tensor, nonnegative: bool) -> Tensor:
    """:func:`descending_order` by sorting packed (key, index) integers.

    ``s = bits ^ ((bits >> 31) & 0x7FFFFFFF)`` is a signed int32 in the order of the floats (the magnitude
    bits of negative ones reversed; nonnegative keys and ``-inf`` are in order as their bits); its bitwise
    complement reverses the order (:func:`_sorted_indices` takes it from there)."""
    shape, length = keys.shape, keys.shape[-1]
    bits = keys.contiguous().view(torch.int32) if nonnegative else (keys + 0.0).view(torch.int32)
    if not nonnegative:  # + 0.0 above turned -0.0 into 0.0
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    rows = bits.reshape(-1, length).numpy()
    order = np.empty(rows.shape, dtype=np.int64)

    def sort_row(r: int) -> None:
        order[r] = _sorted_indices(rows[r])

    each_row(rows.shape[0], sort_row, rows.size)
    return torch.from_numpy(order).view(shape)


def order_of_row(keys: np.ndarray) -> np.ndarray:
    """The descending stable order (int32) of one contiguous float32 row of keys that are ``>= +0.0`` or
    ``-inf`` (:func:`_packed_order` for one row, for callers that work row by row in threads)."""
    return _sorted_indices(keys.view(np.int32)).astype(np.int32)


def _sorted_indices(ordered_bits: np.ndarray) -> np.ndarray:
    """The indices (a uint32 view) that sort a row of int32 ``s`` (ascending as signed integers in the
    keys' order) into decreasing ``s``, equal ones by index: ``~s ^ 0x80000000`` as uint32 ascends as the
    keys descend; packed as ``(that << 32) | index`` the values are distinct and their ascending sort is
    the stable order."""
    packed = np.empty(ordered_bits.shape, dtype=np.uint64)
    halves = packed.view(np.uint32)  # little-endian: the low half first
    np.invert(ordered_bits.view(np.uint32), out=halves[1::2])
    halves[1::2] ^= np.uint32(0x80000000)
    halves[0::2] = np.arange(ordered_bits.shape[0], dtype=np.uint32)
    packed.sort()
    return halves[0::2]


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
