"""Collectives for global statistics across processes (``torch.distributed``), with gradients.

Every helper is a no-op outside an initialised process group (or with a group of one process), so
code written for several processes costs nothing on one.

* :func:`all_reduce_sum` sums a tensor over the processes. Its backward sums the incoming gradients over
  the processes too (as ``torch.distributed.nn.functional.all_reduce``): when every rank computes the
  same global loss from the summed statistics, each rank's local input receives ``W · ∂L/∂x_local``,
  which DDP's gradient averaging turns back into the one-process gradient.
* :func:`all_gather` concatenates tensors whose first dimension differs between processes (an empty
  shard included); its backward returns to each process the summed gradient of its own rows.
* :func:`sync_sum_` sums a statistic in place (no gradient): metrics, counters and running statistics
  call it on a batch's contribution so that every process holds the same state.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, NoReturn, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ._core.errors import expected

ProcessGroup = Any  # torch.distributed.ProcessGroup, or None for the default group


def world_size(group: ProcessGroup = None) -> int:
    """Processes in ``group``; 1 outside an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def is_distributed(group: ProcessGroup = None) -> bool:
    return world_size(group) > 1


def check_process_group(group: object) -> ProcessGroup:
    """None (the default group) or a ``torch.distributed.ProcessGroup``."""
    if group is not None and not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        raise expected("process_group to be a torch.distributed.ProcessGroup or None", repr(group))
    return group


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: ProcessGroup) -> Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def all_reduce_sum(tensor: Tensor, group: ProcessGroup = None) -> Tensor:
    """The sum of ``tensor`` over the processes of ``group``, differentiable (see module docstring)."""
    if not is_distributed(group):
        return tensor
    return _AllReduceSum.apply(tensor, group)


def _gather_sizes(rows: int, device: torch.device, group: ProcessGroup) -> List[int]:
    size = torch.tensor([rows], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size(group))]
    dist.all_gather(sizes, size, group=group)
    return [int(s) for s in sizes]


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: ProcessGroup) -> Tensor:
        sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
        padded_shape = (max(sizes), *tensor.shape[1:])
        padded = tensor.new_zeros(padded_shape)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, dist.get_rank(group)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None


def all_gather(tensor: Tensor, group: ProcessGroup = None) -> Tensor:
    """Rows of every process concatenated in rank order, ``(Σ_r n_r, ...)``; first dims may differ.

    Differentiable: each process's rows receive the gradient summed over all processes' uses of them.
    """
    if not is_distributed(group):
        return tensor
    return _AllGather.apply(tensor, group)


def row_start(tensor: Tensor, group: ProcessGroup = None) -> int:
    """Index of this process's first row in :func:`all_gather`'s result (0 outside a process group)."""
    if not is_distributed(group):
        return 0
    return sum(_gather_sizes(tensor.shape[0], tensor.device, group)[: dist.get_rank(group)])


def sync_sum_(tensor: Tensor, group: ProcessGroup = None) -> Tensor:
    """Sum ``tensor`` over the processes in place (no gradient) and return it; a no-op on one process."""
    if is_distributed(group):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def exit_spawned_worker() -> NoReturn:
    """End a worker process started by ``torch.multiprocessing`` after its work succeeded and its process
    group was destroyed: flush the standard streams and leave with ``os._exit(0)``. The interpreter's own
    teardown is skipped on purpose: there, gloo's threads sometimes abort a finished process ("terminate
    called without an active exception", SIGABRT), which ``spawn`` reports as a failure. Call it only
    when every file the worker wrote is closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rank_and_size(group: ProcessGroup = None) -> Tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` outside a process group."""
    if not is_distributed(group):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


__all__ = [
    "all_gather",
    "all_reduce_sum",
    "check_process_group",
    "is_distributed",
    "rank_and_size",
    "row_start",
    "sync_sum_",
    "world_size",
]
