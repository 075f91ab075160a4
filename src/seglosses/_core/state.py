"""State that accumulates: one base for the metrics, the class counter, the adaptive losses and CenterLoss.

A module declares each statistic once with :meth:`Accumulator.add_state` (as torchmetrics' ``add_state``)
and gets, for all of them together:

* buffers that follow ``.to(device)`` and round-trip through ``state_dict``; a float64 statistic stays
  float64 under ``.half()``, ``.float()`` or ``.to(dtype)`` (only the device changes), so a converted
  module accumulates exactly as an unconverted one;
* :meth:`~Accumulator.reset`, back to the zero state;
* :meth:`~Accumulator.synced`, the batch's contribution summed over the processes of a
  ``torch.distributed`` group (attributes ``sync`` and ``process_group``), so every process holds the
  same state;
* per-class statistics sized by the class count given at construction, or at the first batch / load
  when it is ``None``;
* checked loading: a state for another class count, a wrong shape, or values the statistic cannot hold
  (NaN, ``±inf``, negative sums, fractional counts, flags other than 0 / 1) raise
  :class:`~seglosses.SegLossError` naming the buffer, before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Literal, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..distributed import ProcessGroup, check_process_group, is_distributed, sync_sum_
from .errors import SegLossError, expected
from .options import check_bool, check_int


@dataclass(frozen=True)
class PerClass:
    """A state dimension of size ``C + extra``, C being the module's class count."""

    extra: int = 0


Dim = Union[int, PerClass]
Kind = Literal["sum", "count", "flag", "value"]
"""What a statistic holds, checked on load: ``sum`` finite and non-negative, ``count`` non-negative whole
numbers, ``flag`` 0 or 1, ``value`` finite (any sign)."""


@dataclass(frozen=True)
class _Declared:
    shape: Tuple[Dim, ...]
    kind: Kind
    reset: bool


class Accumulator(nn.Module):
    """Base of modules whose state accumulates over batches (see the module docstring).

    Args:
        num_classes: the class count C of the per-class statistics, or None to take it from the first
            batch (:meth:`size_state`) or from a loaded state dict.
        min_classes: the smallest valid class count.
        sync: sum each batch's contribution over the processes of ``process_group`` (default: the
            default group; a no-op outside one). Every rank must then update together.
    """

    lazy_classes: ClassVar[bool] = False
    """Whether the class accepts ``num_classes=None`` (the hint of a class-count mismatch says so)."""

    def __init__(
        self,
        num_classes: Optional[int] = None,
        *,
        min_classes: int = 1,
        sync: bool = True,
        process_group: Optional[ProcessGroup] = None,
    ) -> None:
        super().__init__()
        check_int("min_classes", min_classes)
        self.min_classes = min_classes
        self.num_classes = (
            None if num_classes is None else check_int("num_classes", num_classes, low=min_classes)
        )
        self.sync = check_bool("sync", sync)
        self.process_group = check_process_group(process_group)
        self._declared: Dict[str, _Declared] = {}

    def add_state(
        self,
        name: str,
        shape: Tuple[Dim, ...] = (),
        *,
        dtype: torch.dtype = torch.float64,
        kind: Kind = "sum",
        reset: bool = True,
    ) -> None:
        """Register the statistic ``name``: a zero buffer of ``shape`` (``PerClass(extra)`` for ``C + extra``;
        0 while C is unknown). ``kind`` is what it may hold (checked on load); ``reset=False`` keeps it
        through :meth:`reset` (a configured value, such as an initial α)."""
        self._declared[name] = _Declared(tuple(shape), kind, reset)
        self.register_buffer(name, torch.zeros(self._size(shape), dtype=dtype))

    @property
    def classes(self) -> int:
        """The class count C, once known (a module made with ``num_classes=None`` learns it from its first
        batch or a loaded state)."""
        if self.num_classes is None:
            raise SegLossError(f"{type(self).__name__} does not know its class count yet (no batch seen)")
        return self.num_classes

    def declare_state(self, name: str, *, kind: Kind = "sum", reset: bool = False) -> None:
        """Declare a buffer already registered (a configured value, such as an initial α) as state of a
        fixed shape: checked on load as ``kind``, zeroed by :meth:`reset` only with ``reset=True``."""
        self._declared[name] = _Declared(tuple(getattr(self, name).shape), kind, reset)

    def _size(self, shape: Tuple[Dim, ...], num_classes: Optional[int] = None) -> Tuple[int, ...]:
        classes = self.num_classes if num_classes is None else num_classes
        return tuple(
            (0 if classes is None else classes + d.extra) if isinstance(d, PerClass) else d for d in shape
        )

    @property
    def _per_class(self) -> Dict[str, _Declared]:
        return {k: d for k, d in self._declared.items() if any(isinstance(x, PerClass) for x in d.shape)}

    def size_state(self, num_classes: int, device: torch.device) -> None:
        """Size the per-class statistics to ``num_classes`` on first use; raise if C differs from theirs."""
        if not self._per_class:
            return
        if self.num_classes is None:
            self._resize(num_classes, device)
        elif num_classes != self.num_classes:
            raise expected(
                f"logits with C = {self.num_classes} classes (the loss's state)", f"C = {num_classes}"
            )

    def _resize(self, num_classes: int, device: Optional[torch.device] = None) -> None:
        self.num_classes = num_classes
        for name, declared in self._per_class.items():
            own = getattr(self, name)
            size = self._size(declared.shape)
            setattr(self, name, torch.zeros(size, dtype=own.dtype, device=device or own.device))

    def synced(self, *contributions: Tensor) -> Tuple[Tensor, ...]:
        """The batch's ``contributions`` summed over the processes when ``sync`` is on (a no-op outside a
        process group), one all-reduce per dtype: what every process then adds to its state."""
        if not (self.sync and is_distributed(self.process_group)):
            return contributions
        result = list(contributions)
        for dtype in dict.fromkeys(c.dtype for c in contributions):  # the same order on every process
            same = [k for k, c in enumerate(contributions) if c.dtype == dtype]
            flat = torch.cat([contributions[k].reshape(-1) for k in same])
            sync_sum_(flat, self.process_group)
            for k, part in zip(same, flat.split([contributions[k].numel() for k in same])):
                result[k] = part.view_as(contributions[k])
        return tuple(result)

    def reset(self) -> None:
        """Zero every statistic declared with ``reset=True``."""
        for name, declared in self._declared.items():
            if declared.reset:
                getattr(self, name).zero_()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "Accumulator":
        """``nn.Module``'s conversions, except that a float64 buffer stays float64 with its values: a
        conversion that changed its dtype is replaced by the original moved to the new device."""
        kept = {name: b for name, b in self._buffers.items() if b is not None and b.dtype == torch.float64}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            converted = self._buffers[name]
            if converted is not None and converted.dtype != torch.float64:
                self._buffers[name] = original.to(device=converted.device)
        return self

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        """Check every incoming statistic (see the module docstring), then load; a module whose C is not
        known yet takes it from the state dict."""
        incoming = {
            name: state_dict[prefix + name]
            for name in self._declared
            if isinstance(state_dict.get(prefix + name), Tensor)
        }
        classes = self._check_state(incoming)
        if self.num_classes is None and classes is not None:
            self._resize(classes)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _check_state(self, incoming: Dict[str, Tensor]) -> Optional[int]:
        """Raise for a statistic that does not fit this module or holds an invalid value; the class count
        the per-class ones imply, or None when there are none."""
        owner = type(self).__name__
        counts: Dict[str, int] = {}
        for name, value in incoming.items():
            declared = self._declared[name]
            if name in self._per_class and self.num_classes is None and value.numel() == 0:
                continue  # saved before its first batch: C is still unknown, the module stays lazy
            if name in self._per_class:
                counts[name] = self._check_per_class_shape(name, declared.shape, value)
            elif value.shape != getattr(self, name).shape:
                shape = tuple(getattr(self, name).shape)
                raise expected(f"{owner}'s state {name!r} of shape {shape}", f"shape {tuple(value.shape)}")
            check_statistic(owner, name, value, declared.kind)
        if len(set(counts.values())) > 1:
            found = ", ".join(f"C = {c} in {name!r}" for name, c in counts.items())
            raise expected(f"{owner}'s per-class state for one class count", found)
        return next(iter(counts.values()), None)

    def _check_per_class_shape(self, name: str, shape: Tuple[Dim, ...], value: Tensor) -> int:
        """The class count of a per-class statistic, checked against its declared shape and the module's C."""
        owner = type(self).__name__
        wanted = "(" + ", ".join(_dim_text(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
        if self.num_classes is not None:
            wanted = str(self._size(shape))
        if value.ndim != len(shape):
            raise expected(f"{owner}'s state {name!r} of shape {wanted}", f"shape {tuple(value.shape)}")
        implied = {int(n) - d.extra for n, d in zip(value.shape, shape) if isinstance(d, PerClass)}
        fixed_ok = all(int(n) == d for n, d in zip(value.shape, shape) if isinstance(d, int))
        if len(implied) != 1 or not fixed_ok:
            raise expected(f"{owner}'s state {name!r} of shape {wanted}", f"shape {tuple(value.shape)}")
        classes = implied.pop()
        if classes < self.min_classes:
            raise expected(f"{owner}'s state {name!r} for C >= {self.min_classes} classes", f"C = {classes}")
        if self.num_classes is not None and classes != self.num_classes:
            raise expected(
                f"a state for C = {self.num_classes} classes ({owner}'s num_classes)",
                f"C = {classes} in {name!r}: load it into a {owner}(num_classes={classes})"
                + (
                    ", or one made with num_classes=None, which takes C from the state dict"
                    if self.lazy_classes
                    else ""
                ),
            )
        return classes


def _dim_text(dim: Dim) -> str:
    if isinstance(dim, PerClass):
        return f"C + {dim.extra}" if dim.extra else "C"
    return str(dim)


def check_statistic(owner: str, name: str, value: Tensor, kind: Kind = "sum") -> None:
    """Check a statistic loaded from a state dict against its ``kind`` (see :data:`Kind`), else raise a
    :class:`~seglosses.SegLossError` naming the buffer and what is wrong (``expected finite, non-negative
    values in AdaptiveFocalLoss's state 'running', got 1 NaN, 2 negative``). One host read when valid
    (load time, not a training step)."""
    if value.is_complex():
        raise expected(f"real values in {owner}'s state {name!r}", f"dtype {value.dtype}")
    if kind == "flag":
        if value.dtype != torch.bool and not bool(((value == 0) | (value == 1)).all()):
            bad = value[(value != 0) & (value != 1)].unique()[:5].tolist()
            raise expected(f"{owner}'s state {name!r} to hold flags (0 or 1)", f"values {bad}")
        return
    if value.dtype == torch.bool or value.numel() == 0:
        return
    value = value.detach()
    finite = torch.isfinite(value) if value.is_floating_point() else torch.ones_like(value, dtype=torch.bool)
    signed_ok = finite if kind == "value" else finite & (value >= 0)
    whole = finite
    if kind == "count" and value.is_floating_point():
        whole = (value == value.round()) & (value < 2.0**63)
    if bool((signed_ok & whole).all()):
        return
    problems = {
        "NaN": int(value.isnan().sum()),
        "inf": int((value.abs() == torch.inf).sum()) if value.is_floating_point() else 0,
        "negative": 0 if kind == "value" else int((finite & (value < 0)).sum()),
        "not an integer": int((finite & ~whole).sum()),
    }
    what = {"count": "finite, non-negative integers", "value": "finite values"}.get(
        kind, "finite, non-negative values"
    )
    got = ", ".join(f"{count} {problem}" for problem, count in problems.items() if count)
    raise expected(f"{what} in {owner}'s state {name!r}", got)
