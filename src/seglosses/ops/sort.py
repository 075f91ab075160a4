"""The sort primitive of the Lovász losses: the order of each row's keys, largest first, ties by index.

Reference: ``torch.argsort(stable=True, descending=True)`` (any device, any float dtype). Fused eager-CPU
implementation (float32 keys): each key's order-preserving 32-bit image and its column index packed into
one int64, sorted with numpy's vectorised sort, the rows spread over torch's intra-op threads. Both give
the same permutation: decreasing keys, equal keys in increasing index order (``-0.0`` equals ``0.0``).
"""

from __future__ import annotations

import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from .._core.backend import fused_cpu


def descending_order(keys: Tensor, *, nonnegative: bool = False) -> Tensor:
    """Indices ``(R, L)`` (int64) that sort each row of ``keys`` ``(R, L)`` in decreasing order, equal keys in
    increasing index order; no gradient. Keys must not be NaN (``-inf`` sorts last). ``nonnegative``
    promises keys that are ``+0.0`` or more, or ``-inf`` (``abs()`` of anything, masked with ``-inf``):
    their bits are in order as they are. A ``-0.0`` key breaks the promise (it would sort last)."""
    keys = keys.detach()
    packable = keys.dtype == torch.float32 and keys.ndim >= 1 and keys.shape[-1] < 2**31
    if fused_cpu(keys) and packable and sys.byteorder == "little":
        return _packed_order(keys, nonnegative)
    return keys.argsort(dim=-1, descending=True, stable=True)


def _packed_order(keys: Tensor, nonnegative: bool) -> Tensor:
    """:func:`descending_order` on the host: numpy's sort of the int64 ``(-rank of the key) · 2^32 + index``,
    written as its two 32-bit halves (little-endian: the index is the low word).

    ``bits ^ ((bits >> 31) & 0x7FFFFFFF)`` is a signed int32 in the order of the floats (it reverses the
    magnitude bits of negative ones); its bitwise complement reverses the order. Keys ``>= +0.0`` or
    ``-inf`` are in order as their bits already (``-inf`` is a negative int32).
    """
    bits = keys.contiguous().view(torch.int32) if nonnegative else (keys + 0.0).view(torch.int32)
    if not nonnegative:  # + 0.0 above turned -0.0 into 0.0
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    halves = torch.empty(*keys.shape, 2, dtype=torch.int32)
    halves[..., 0] = torch.arange(keys.shape[-1], dtype=torch.int32)
    torch.bitwise_not(bits, out=halves[..., 1])
    _sort_rows(halves.view(torch.int64).squeeze(-1).numpy().reshape(-1, keys.shape[-1]))
    return halves[..., 0].long()


def _sort_rows(rows: np.ndarray) -> None:
    """Sort each row in place, the rows spread over torch's intra-op threads (numpy's sort releases the
    GIL)."""
    threads = min(torch.get_num_threads(), rows.shape[0])
    if threads <= 1 or rows.size < 2**16:
        rows.sort(axis=-1)
        return
    chunks = np.array_split(np.arange(rows.shape[0]), threads)
    list(_pool(threads).map(lambda part: rows[part[0] : part[-1] + 1].sort(axis=-1), chunks))


@functools.lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="seglosses-sort")


# a forked child (DataLoader workers, multiprocessing) inherits the pool but not its threads: start afresh
os.register_at_fork(after_in_child=_pool.cache_clear)
