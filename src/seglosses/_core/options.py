"""Checks of option values (cheap, no data read); shared by loss functions and modules."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import numbers
import sys
from typing import Any, Callable, Dict, Literal, Optional, Sequence, TypeVar, Union

import numpy as np
import torch
from torch import Tensor

from .errors import expected, show, unknown_choice
from .numerics import compute_dtype
from .targets import input_checks_enabled

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS = ("none", "mean", "sum")
ClassValues = Union[float, Sequence[float], Tensor]


_O = TypeVar("_O", bound="Options")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Options:
    """The typed, frozen options of a loss, validated once when the object is made.

    A loss family declares its options as a frozen, keyword-only dataclass deriving from this one and
    overrides :meth:`checked`, which returns every field's validated, normalised value (numbers as
    floats, per-class values as tensors, choices as given) or raises a :class:`SegLossError`. The loss
    function builds one per call from its keywords; its module builds one at construction and keeps its
    tensor fields as buffers. Options compare by identity (``eq=False``: a tensor field has no truth
    value).
    """

    def __post_init__(self) -> None:
        for name, value in self.checked().items():
            object.__setattr__(self, name, value)

    def checked(self) -> Dict[str, Any]:
        """The validated value of each field this class checks (subclasses extend their parent's)."""
        return {}

    def as_dict(self) -> Dict[str, Any]:
        """Field name -> value (not a deep copy: tensors are shared), without the fields of one call's
        inputs (:func:`call_input`)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("input")
        }

    def tensor_fields(self) -> Dict[str, Tensor]:
        """The fields that hold tensors (a module's buffers)."""
        return {k: v for k, v in self.as_dict().items() if isinstance(v, Tensor)}

    def with_values(self: _O, **values: Any) -> _O:
        """A copy with ``values`` set as they are, unchecked: for values already checked (a module's
        buffers after ``.to(device)``, a new step)."""
        names = {f.name for f in dataclasses.fields(self)}
        new = copy.copy(self)
        for name, value in values.items():
            if name not in names:
                raise TypeError(f"{type(self).__name__} has no option {name!r}")
            object.__setattr__(new, name, value)
        return new


def call_input() -> Any:
    """A field of an options class that carries one call's input (a weight map) from the function or the
    module's forward to the loss: None by default, set with :meth:`Options.with_values`, never an option
    (not in :meth:`Options.as_dict`, not a buffer)."""
    return dataclasses.field(default=None, metadata={"input": True})


def _data_checks_enabled() -> bool:
    return input_checks_enabled()


def check_choice(option: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise with the valid ones listed."""
    if not isinstance(value, str) or value not in choices:
        raise unknown_choice(option, value, choices)
    return value


def check_reduction(reduction: str) -> str:
    return check_choice("reduction", reduction, REDUCTIONS)


def check_number(
    option: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite real number in the given interval.

    An integer beyond the float range (``10**400``) is not one (it has no float). A symbolic float
    (``torch.compile(dynamic=True)`` makes a module's float options ``SymFloat`` while it traces) is
    checked by comparisons, which torch can trace, not by :func:`math.isfinite`, which it cannot.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise expected(f"{option} to be a finite real number", show(value))
    if not _finite(value):
        within = " within the float range" if isinstance(value, numbers.Integral) else ""
        raise expected(f"{option} to be a finite real number{within}", show(value))
    number = float(value)
    ok_low = number > low if low_open else number >= low
    ok_high = number < high if high_open else number <= high
    if not (ok_low and ok_high):
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise expected(f"{option} in {left}{low:g}, {high:g}{right}", value)
    return number


def _finite(value: numbers.Real) -> bool:
    """``-max <= value <= max`` for the largest float (False for NaN, ±inf and ints beyond it); written
    with comparisons only, so that it also works on a symbolic float while torch.compile traces. A numpy
    scalar compares as the Python number it holds (numpy would cast the bound to its own float32)."""
    if isinstance(value, np.generic):
        value = value.item()
    return -_FLOAT_MAX <= value <= _FLOAT_MAX  # type: ignore[operator]


_FLOAT_MAX = sys.float_info.max


def check_ignore_index(ignore_index: Optional[int]) -> Optional[int]:
    """An int (any integer type, numpy's included) within int64, or None."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise expected("ignore_index to be an int or None", show(ignore_index))
    if not -(2**63) <= int(ignore_index) < 2**63:
        raise expected("ignore_index within the int64 range", show(ignore_index))
    return int(ignore_index)


def check_int(option: str, value: object, *, low: int = 1) -> int:
    """``value`` if it is an int (not a bool) ``>= low`` and within the int64 range (torch's sizes)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise expected(f"{option} to be an int >= {low}", show(value))
    if int(value) >= 2**63:
        raise expected(f"{option} to be an int within the int64 range (< 2**63)", show(value))
    return int(value)


def check_bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise expected(f"{option} to be True or False", show(value))
    return value


def class_values(
    option: str,
    values: Optional[ClassValues],
    *,
    num_classes: Optional[int] = None,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    allow_scalar: bool = True,
) -> Optional[Tensor]:
    """Validate a scalar or per-class option and return it as a float tensor (0-d or ``(C,)``).

    ``num_classes`` is checked when given (modules know it only at the first forward). The values must
    be finite and in ``[low, high]``.
    """
    if values is None:
        return None
    if isinstance(values, bool):
        raise expected(f"{option} to be a number or one value per class", repr(values))
    if isinstance(values, numbers.Real):
        if not allow_scalar:
            raise expected(f"{option} to have one value per class", show(values))
        if not _finite(values) and isinstance(values, numbers.Integral):  # no float holds it
            raise expected(f"{option} to be a finite real number within the float range", show(values))
        tensor = torch.tensor(float(values))
    else:
        try:
            tensor = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError) as error:
            raise expected(f"{option} as a number or a sequence of numbers", repr(values)) from error
        if tensor.dtype == torch.bool or tensor.is_complex():
            raise expected(f"{option} with real values", f"dtype {tensor.dtype}")
        tensor = tensor.to(torch.get_default_dtype()) if not tensor.is_floating_point() else tensor
        if tensor.ndim > 1 or (tensor.ndim == 0 and not allow_scalar):
            raise expected(f"{option} as one value per class, shape (C,)", f"shape {tuple(tensor.shape)}")
        if tensor.ndim == 1 and tensor.numel() == 0:
            raise expected(f"{option} with at least one value", "an empty sequence")
    # Python numbers are always checked; a tensor only with the data checks on (reading it may sync).
    from_python = not isinstance(values, Tensor)
    if from_python or (_data_checks_enabled() and not torch.compiler.is_compiling()):
        above_low = tensor > low if low_open else tensor >= low
        if not bool((torch.isfinite(tensor) & above_low & (tensor <= high)).all()):  # one host sync
            left = "(" if low_open else "["
            raise expected(f"{option} values finite and in {left}{low:g}, {high:g}]", tensor.tolist())
    if num_classes is not None and tensor.ndim == 1 and tensor.numel() != num_classes:
        raise expected(f"{option} of length C = {num_classes}", f"length {tensor.numel()}")
    return tensor


def class_tensor(values: Optional[Tensor], logits: Tensor, option: str) -> Optional[Tensor]:
    """A checked per-class option on the logits' device and compute dtype, its length checked against C."""
    if values is None:
        return None
    if values.ndim == 1 and values.numel() != logits.shape[1]:
        raise expected(f"{option} of length C = {logits.shape[1]}", f"length {values.numel()}")
    return values.to(device=logits.device, dtype=compute_dtype(logits))


def channel_tensor(values: Optional[Tensor], logits: Tensor) -> Optional[Tensor]:
    """A scalar or ``(C,)`` tensor shaped to broadcast over ``(N, C, *S)``."""
    if values is None or values.ndim == 0:
        return values
    return values.view(1, -1, *([1] * (logits.ndim - 2)))


def keyword_options(function: Callable[..., Any]) -> Dict[str, inspect.Parameter]:
    """The keyword-only options of a loss function (everything after ``logits, target``)."""
    params = inspect.signature(function).parameters.values()
    return {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
