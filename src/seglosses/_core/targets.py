"""Input checks and target preparation: the only place that reads targets and ``ignore_index``.

Softmax losses take logits ``(N, C, *S)`` and either an integer *index* target ``(N, *S)`` with values in
``[0, C)`` (or ``ignore_index``) or a float *dense* target ``(N, C, *S)`` (one-hot or soft, values in
``[0, 1]``). ``binary_*`` losses take a target of the logits' shape (bool, integer or float in ``[0, 1]``);
with an integer target, elements equal to ``ignore_index`` are ignored. ``ignore_index`` applies to
index and integer targets only: a float target marks nothing as ignored.

Checks of shapes, dtypes and options always run. Checks that read the data (finite logits, target
range) cost a pass and one host synchronisation; :func:`set_input_checks` turns them off, and they are
skipped while ``torch.compile`` traces.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import implementation
from .deferred import Verdict, defer, deferred, raise_ready
from .errors import SegLossError, expected
from .numerics import compute_dtype, tracing

_INPUT_CHECKS = True


def set_input_checks(enabled: bool) -> None:
    """Turn the checks that read the data (finite logits, target range) on or off globally.

    Off, a NaN or ``+inf`` logit at a valid pixel gives a non-finite loss (never a finite one); an
    out-of-range target is undefined behaviour of the underlying torch operation.

    The switch is process-wide, shared by every thread (like the ``torch.backends`` flags, unlike grad
    mode): each loss call reads it once, when it starts, and keeps that answer for the whole call, so
    switching it from another thread takes effect at the next call, never halfway through one.
    """
    global _INPUT_CHECKS
    if not isinstance(enabled, bool):
        raise expected("enabled to be True or False", repr(enabled))
    _INPUT_CHECKS = enabled


def input_checks_enabled() -> bool:
    """Whether the data-reading checks run now: never while ``torch.compile`` traces or a ``torch.func``
    transform runs (:func:`~seglosses._core.numerics.tracing`; no host reads there). Read it once per
    call and pass the answer on (see :func:`set_input_checks`)."""
    return _INPUT_CHECKS and not tracing()


@contextlib.contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_input_checks`; restores the previous setting on exit."""
    previous = _INPUT_CHECKS
    set_input_checks(enabled)
    try:
        yield
    finally:
        set_input_checks(previous)


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def check_logits(logits: Tensor, *, min_classes: int = 1, name: str = "logits") -> None:
    """Shape and dtype checks of logits ``(N, C, *S)`` with one to three spatial dims."""
    if not isinstance(logits, Tensor):
        raise expected(f"{name} to be a torch.Tensor", type(logits).__name__)
    if not 3 <= logits.ndim <= 5:
        raise expected(f"{name} of shape (N, C, *S) with 1 to 3 spatial dims", f"shape {_shape(logits)}")
    if not logits.is_floating_point():
        raise expected(f"floating-point {name}", f"dtype {logits.dtype}")
    if any(size == 0 for size in logits.shape[1:]):  # N = 0 is an empty shard: allowed, gives 0
        raise expected(f"{name} with non-empty class and spatial dims", f"shape {_shape(logits)}")
    if logits.shape[1] < min_classes:
        raise expected(
            f"{name} with at least {min_classes} classes for a softmax loss (use a binary_* loss "
            "for a single channel)",
            f"C = {logits.shape[1]}",
        )


@dataclass
class IndexTarget:
    """A checked index target: ``labels`` ``(N, *S)`` as given; ``valid`` bool, or None (all valid);
    ``count`` the number of valid pixels when it is known on the host (no mask, or the data checks read
    it), else None; ``finite`` whether the data checks found every logit finite; ``ignore_index`` the
    value that ``valid`` masks (set with ``valid``); ``kernel_checks`` set when the deferred data checks
    are left to the Triton kernel that reads the logits (``"log_terms"``: with the ``-inf`` check at the
    target class), which counts them as it reads (:func:`defer_kernel_checks`)."""

    labels: Tensor
    valid: Optional[Tensor] = None
    count: Optional[int] = None
    finite: bool = False
    ignore_index: Optional[int] = None
    kernel_checks: Optional[str] = None  # "plain" / "log_terms": the data checks are the kernel's to count

    def num_valid(self) -> Union[int, Tensor]:
        """The number of valid pixels: :attr:`count`, or an int64 tensor counted on the device."""
        return self.count if self.count is not None else num_valid(self.valid, self.labels.shape)

    def index(self) -> Tensor:
        """The labels as int64 with ignored pixels set to 0, safe for ``gather`` and ``scatter``."""
        index = self.labels.long()
        return index if self.valid is None else index.masked_fill(~self.valid, 0)

    def clean(self, logits: Tensor) -> Tensor:
        """``logits`` with the ignored pixels' set to 0, for the plain torch paths: a NaN or inf there
        must reach no gradient (``log_softmax``'s backward multiplies the masked zero by it). The fused
        paths mask ignored pixels themselves; logits the checks found finite need nothing."""
        if self.valid is None or self.finite:
            return logits
        return logits.masked_fill(~self.valid.unsqueeze(1), 0.0)


@dataclass
class DenseTarget:
    """A checked one-hot / soft target ``(N, C, *S)``; every pixel is valid."""

    dense: Tensor

    def clean(self, logits: Tensor) -> Tensor:
        """A dense target ignores nothing: ``logits`` as they are."""
        return logits


SoftmaxTarget = Union[IndexTarget, DenseTarget]


@dataclass
class BinaryTarget:
    """A prepared binary target ``(N, C, *S)`` in the logits' float dtype, and its valid mask or None."""

    dense: Tensor
    valid: Optional[Tensor] = None


def _finite_problem(logits: Tensor, name: str) -> Optional[str]:
    """Count NaN and +inf entries (-inf is a legal logit: probability 0)."""
    nan = int(torch.isnan(logits).sum())
    posinf = int(torch.isposinf(logits).sum())
    if nan == 0 and posinf == 0:
        return None
    parts = [f"{nan} NaN"] * bool(nan) + [f"{posinf} +inf"] * bool(posinf)
    return f"expected finite {name}, got {' and '.join(parts)}"


def _host_values(tensors: List[Tensor]) -> List[float]:
    """The values of 0-d tensors on the host: read one by one on the CPU (a read costs nothing there),
    in one synchronisation (one stacked copy, float64: exact for counts) on other devices."""
    if tensors[0].device.type == "cpu":
        return [t.item() for t in tensors]
    dtype = torch.float32 if tensors[0].device.type == "mps" else torch.float64
    return torch.stack([t.to(dtype) for t in tensors]).tolist()


def _run_data_checks(logits: Tensor, stats: List[Tensor], name: str) -> Tuple[bool, List[float]]:
    """One host sync: the logits' sum (finite in the common case) and the target statistics. Returns
    whether a ``-inf`` logit is present (the caller's slow path looks closer) and the statistics; when
    the sum is finite, every logit is."""
    values = _host_values([logits.sum(dtype=torch.float32), *stats])
    if math.isfinite(values[0]):
        return False, values[1:]
    # Slow path, only when something is off (or the sum overflowed): count what is wrong.
    problem = _finite_problem(logits, name)
    if problem is not None:
        raise SegLossError(problem)
    return bool(torch.isneginf(logits).any()), values[1:]


def _no_distribution(logits: Tensor, valid: Optional[Tensor], name: str) -> None:
    """Raise for a valid pixel whose logits are all ``-inf`` (no softmax distribution; SPEC section 6)."""
    empty = torch.isneginf(logits).all(1)
    problem = _no_distribution_message(int((empty if valid is None else empty & valid).sum()), name)
    if problem:
        raise SegLossError(problem)


def _no_distribution_message(count: int, name: str) -> Optional[str]:
    if not count:
        return None
    return str(expected(
        f"at least one finite {name} value per valid pixel (all -inf: no distribution)",
        f"{count} pixel{'s' if count > 1 else ''} whose {name} are all -inf",
    ))  # fmt: skip


def _log_of_zero(logits: Tensor, mass: Optional[Tensor], smoothing: bool, name: str) -> None:
    """Raise for a ``-inf`` logit where a loss takes ``log p`` with positive weight (``mass``: bool, the
    logits' shape, ignored elements False; None: everywhere): ``log 0`` makes the loss ``+inf`` (SPEC
    section 6). ``smoothing``: the mass is label smoothing's, on every class."""
    hit = torch.isneginf(logits)
    problem = _log_of_zero_message(int((hit if mass is None else hit & mass).sum()), smoothing, name)
    if problem:
        raise SegLossError(problem)


def _log_of_zero_message(count: int, smoothing: bool, name: str) -> Optional[str]:
    if not count:
        return None
    why = "label smoothing puts mass on every class" if smoothing else "the target puts mass there"
    return str(expected(
        f"finite {name} where the loss takes log p ({why}; log 0 makes the loss +inf)",
        f"{count} -inf {name} value{'s' if count > 1 else ''} there",
    ))  # fmt: skip


def softmax_target(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    *,
    log_terms: bool = False,
    smoothing: bool = False,
    kernel_checks: bool = False,
) -> SoftmaxTarget:
    """Check logits and target of a softmax loss and prepare the target (see module docstring).

    With the data checks on, ``-inf`` logits follow SPEC section 6: a valid pixel with every logit
    ``-inf`` raises; a loss with ``log_terms`` (it takes ``log p`` of the classes carrying target mass:
    cross-entropy, focal) raises for a ``-inf`` logit where the target has mass, at every class with
    ``smoothing``.

    ``kernel_checks``: the caller promises that an index target goes to a primitive that counts the data
    checks in its kernel when the backend picks Triton (:func:`~seglosses._core.backend.implementation`);
    then, where the checks are deferred, they cost no pass of their own."""
    check_logits(logits, min_classes=2)
    if not isinstance(target, Tensor):
        raise expected("target to be a torch.Tensor", type(target).__name__)
    if target.device != logits.device:
        raise expected(f"target on the logits' device {logits.device}", f"device {target.device}")
    n, c, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    if target.shape == logits.shape:  # one-hot or soft, any real dtype (a bool one-hot too)
        return DenseTarget(_dense_target(logits, target, log_terms, smoothing))
    index_shape = (n, *spatial)
    if target.shape != index_shape:
        hint = ""
        if target.shape == (n, 1, *spatial):
            hint = " (a channel dim of 1, as MONAI's index targets have: pass target.squeeze(1))"
        raise expected(
            f"target of shape (N, *S) = {index_shape} (class indices) or (N, C, *S) = "
            f"{tuple(logits.shape)} (one-hot or soft)",
            f"shape {_shape(target)}{hint}",
        )
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise expected("an integer index target (class indices, e.g. torch.long)", f"dtype {target.dtype}")
    valid = _valid_mask(target, ignore_index)
    count, finite, in_kernel = target.numel() if valid is None else None, False, None
    if input_checks_enabled() and target.numel() and deferred(logits.device):
        raise_ready()
        if kernel_checks and not smoothing and implementation(logits) == "triton":
            in_kernel = "log_terms" if log_terms else "plain"
        else:
            _defer_index_checks(logits, target, valid, ignore_index, log_terms, smoothing)
    elif input_checks_enabled() and target.numel():
        stats = [*torch.aminmax(target)] + ([] if valid is None else [valid.sum()])
        minus_inf, (lo, hi, *counted) = _run_data_checks(logits, stats, "logits")
        count, finite = int(counted[0]) if counted else count, not minus_inf
        if lo < 0 or hi >= c:
            bad = (target < 0) | (target >= c)
            _raise_out_of_range(target, bad, valid, f"target class indices in [0, {c})", ignore_index)
        if minus_inf:
            _no_distribution(logits, valid, "logits")
            if log_terms:
                every = (torch.ones_like(target, dtype=torch.bool) if valid is None else valid).unsqueeze(1)
                at_target = F.one_hot(IndexTarget(target, valid).index(), c).movedim(-1, 1).bool()
                mass = every.expand_as(logits) if smoothing else at_target & every
                _log_of_zero(logits, mass, smoothing, "logits")
    return IndexTarget(target, valid, count, finite, None if valid is None else ignore_index, in_kernel)


def _defer_index_checks(
    logits: Tensor, target: Tensor, valid: Optional[Tensor], ignore_index: Optional[int], log_terms: bool,
    smoothing: bool,
) -> None:  # fmt: skip
    """The checks of :func:`softmax_target` for an index target, computed on the device and judged later
    (:mod:`~seglosses._core.deferred`): one per-pixel maximum over the classes, the label range, and for
    ``log_terms`` the logits at the target class (every class with ``smoothing``)."""
    logits, c = logits.detach(), logits.shape[1]
    top = logits.amax(1)  # NaN and +inf propagate; -inf only where every class is -inf
    bad_label = (target < 0) | (target >= c)
    stats = [(~(top < torch.inf)).sum(), _masked_count(bad_label, valid)]
    stats.append(_masked_count(top == -torch.inf, valid))
    if log_terms:
        if smoothing:
            stats.append(_masked_count(torch.isneginf(logits).sum(1), valid))
        else:
            index = target.long().masked_fill(bad_label, 0)  # in range for gather (bad labels: counted)
            index = IndexTarget(index, valid).index().unsqueeze(1)
            stats.append(_masked_count(torch.isneginf(logits.gather(1, index)).squeeze(1), valid))
    defer(stats, _index_verdict(c, ignore_index, smoothing))


def _index_verdict(c: int, ignore_index: Optional[int], smoothing: bool) -> Verdict:
    """The judge of an index target's statistics ``(NaN / +inf pixels, labels out of range, valid pixels
    with every logit -inf[, -inf logits where the loss takes log p])``, with the synchronous checks'
    messages."""
    allowed = f"target class indices in [0, {c})" + _or_ignored(ignore_index)

    def verdict(values: List[float]) -> Optional[str]:
        nonfinite, labels, empty, *zero_log = (int(v) for v in values)
        if nonfinite:
            return _nonfinite_message(nonfinite)
        if labels:
            return str(expected(allowed, f"{labels} pixel{'s' if labels > 1 else ''} outside"))
        problem = _no_distribution_message(empty, "logits")
        return problem or (_log_of_zero_message(zero_log[0], smoothing, "logits") if zero_log else None)

    return verdict


def defer_kernel_checks(prepared: IndexTarget, c: int, statistics: Tensor) -> None:
    """Queue the statistics a kernel counted for ``prepared`` (:attr:`IndexTarget.kernel_checks`): the
    four of :func:`_index_verdict`, as a device tensor ``(4,)``; the last is left out without log terms."""
    log_terms = prepared.kernel_checks == "log_terms"
    values = list(statistics.unbind(0))[: 4 if log_terms else 3]
    defer(values, _index_verdict(c, prepared.ignore_index, False))


def _nonfinite_message(pixels: int) -> str:
    return str(expected("finite logits", f"NaN or +inf at {pixels} pixel{'s' if pixels > 1 else ''}"))


def _or_ignored(ignore_index: Optional[int]) -> str:
    return "" if ignore_index is None else f" or ignore_index = {ignore_index}"


def _masked_count(flags: Tensor, valid: Optional[Tensor]) -> Tensor:
    """The sum of ``flags`` (bool or counts) over the valid pixels."""
    return (flags if valid is None else flags * valid).sum()


def _valid_mask(target: Tensor, ignore_index: Optional[int]) -> Optional[Tensor]:
    """``target != ignore_index``, or None when no pixel can be ignored (also when the target's integer
    dtype cannot hold ``ignore_index``: comparing would wrap it, e.g. 255 to -1 in int8)."""
    if ignore_index is None:
        return None
    info = torch.iinfo(target.dtype)
    if not info.min <= ignore_index <= info.max:
        return None
    return target != ignore_index


def check_class_indices(values: Tensor, num_classes: int, name: str = "target") -> None:
    """Raise unless every value of the (already ignore-filtered) integer tensor is in ``[0, C)``."""
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
        bad = torch.unique(values[(values < 0) | (values >= num_classes)])[:5].tolist()
        raise expected(f"{name} class indices in [0, {num_classes})", f"values {bad}")


def _raise_out_of_range(
    target: Tensor, bad: Tensor, valid: Optional[Tensor], allowed: str, ignore_index: Optional[int]
) -> None:
    """Raise naming up to five offending values, unless every one of them is ignored (slow path)."""
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        values = torch.unique(target[bad])[:5].tolist()
        extra = "" if ignore_index is None else f" or ignore_index = {ignore_index}"
        raise expected(f"{allowed}{extra}", f"values {values}{_value_hint(values, ignore_index)}")


def _value_hint(values: List[float], ignore_index: Optional[int]) -> str:
    """What an out-of-range value usually means, for users of other libraries (empty when nothing fits)."""
    if -100 in values and ignore_index is None:
        return " (torch's ignore value? pass ignore_index=-100)"
    if 255 in values:
        return (" (255 marks void pixels in VOC-style masks: pass ignore_index=255; a 0/255 binary mask: "
                "pass target // 255)")  # fmt: skip
    return ""


def _dense_target(logits: Tensor, target: Tensor, log_terms: bool, smoothing: bool) -> Tensor:
    """Check a dense (one-hot / soft) target of the logits' shape and return it as float."""
    if target.is_complex():
        raise expected("a real-valued target", f"dtype {target.dtype}")
    dense = target if target.is_floating_point() else target.to(logits.dtype)
    if input_checks_enabled() and dense.numel() and deferred(logits.device):
        _defer_dense_checks(logits, dense.detach(), log_terms, smoothing)
    elif input_checks_enabled() and dense.numel():
        minus_inf, (lo, hi) = _run_data_checks(logits, list(torch.aminmax(dense.detach())), "logits")
        if not (0.0 <= lo and hi <= 1.0):
            raise expected("one-hot or soft target values in [0, 1]", f"values in [{lo:g}, {hi:g}]")
        if minus_inf:
            _no_distribution(logits, None, "logits")
            if log_terms:
                _log_of_zero(logits, None if smoothing else dense.detach() > 0, smoothing, "logits")
    return dense


def _defer_dense_checks(logits: Tensor, dense: Tensor, log_terms: bool, smoothing: bool) -> None:
    """:func:`_dense_target`'s checks on the device, judged later (:mod:`~seglosses._core.deferred`)."""
    raise_ready()
    logits = logits.detach()
    top = logits.amax(1)
    out_of_range = ~((dense >= 0) & (dense <= 1))  # NaN is out of range too
    stats = [(~(top < torch.inf)).sum(), out_of_range.sum(), (top == -torch.inf).sum()]
    if log_terms:
        hit = torch.isneginf(logits)
        stats.append((hit if smoothing else hit & (dense > 0)).sum())

    def verdict(values: List[float]) -> Optional[str]:
        nonfinite, outside, empty, *zero_log = (int(v) for v in values)
        if nonfinite:
            return _nonfinite_message(nonfinite)
        if outside:
            return str(expected("one-hot or soft target values in [0, 1]", f"{outside} values outside"))
        problem = _no_distribution_message(empty, "logits")
        return problem or (_log_of_zero_message(zero_log[0], smoothing, "logits") if zero_log else None)

    defer(stats, verdict)


def binary_target(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    *,
    log_terms: bool = False,
    smoothing: bool = False,
) -> BinaryTarget:
    """Check logits and a binary target of the same shape; ``ignore_index`` applies to integer targets.
    ``log_terms`` / ``smoothing`` as in :func:`softmax_target` (``log σ(z)`` where the target is
    positive; smoothing makes every element positive)."""
    valid = check_binary_target(logits, target, ignore_index, log_terms=log_terms, smoothing=smoothing)
    dense = target.to(compute_dtype(logits))
    if valid is not None:
        dense = dense.masked_fill(~valid, 0)
    return BinaryTarget(dense=dense, valid=valid)


def check_binary_target(
    logits: Tensor,
    target: Tensor,
    ignore_index: Optional[int],
    *,
    checks: Optional[bool] = None,
    log_terms: bool = False,
    smoothing: bool = False,
) -> Optional[Tensor]:
    """The checks of :func:`binary_target` without converting the target: the valid mask, or None.
    ``checks``: the caller's one reading of :func:`input_checks_enabled` (read here when None)."""
    check_logits(logits)
    if not isinstance(target, Tensor):
        raise expected("target to be a torch.Tensor", type(target).__name__)
    if target.device != logits.device:
        raise expected(f"target on the logits' device {logits.device}", f"device {target.device}")
    if target.shape != logits.shape:
        hint = ""
        if target.ndim == logits.ndim - 1:
            hint = " (add the channel dim: target.unsqueeze(1))"
        raise expected(f"target of the logits' shape {tuple(logits.shape)}{hint}", f"shape {_shape(target)}")
    if target.is_complex():
        raise expected("a real-valued target", f"dtype {target.dtype}")
    integer = not (target.is_floating_point() or target.dtype == torch.bool)
    valid = _valid_mask(target, ignore_index) if integer else None
    checks = input_checks_enabled() if checks is None else checks
    if checks and target.numel() and deferred(logits.device):
        _defer_binary_checks(logits, target.detach(), valid, ignore_index, log_terms, smoothing)
    elif checks and target.numel():
        bounds = [] if target.dtype == torch.bool else list(torch.aminmax(target.detach()))  # bool: in range
        minus_inf, values = _run_data_checks(logits, bounds, "logits")
        if values and not (0 <= values[0] and values[1] <= 1):  # NaN fails too
            bad = ~((target >= 0) & (target <= 1))  # NaN is out of range too
            _raise_out_of_range(target, bad, valid, "binary target values in [0, 1]", ignore_index)
        if minus_inf and log_terms:  # each element its own sigmoid: only log σ(z) at positive mass
            positive = None if smoothing else target.detach() > 0  # smoothing: mass everywhere
            mass = valid if positive is None else positive if valid is None else positive & valid
            _log_of_zero(logits, mass, smoothing, "logits")
    return valid


def _defer_binary_checks(
    logits: Tensor, target: Tensor, valid: Optional[Tensor], ignore_index: Optional[int], log_terms: bool,
    smoothing: bool,
) -> None:  # fmt: skip
    """:func:`check_binary_target`'s checks on the device, judged later (:mod:`~seglosses._core.deferred`)."""
    raise_ready()
    logits = logits.detach()
    stats = [(~(logits < torch.inf)).sum()]
    stats.append(_masked_count(~((target >= 0) & (target <= 1)), valid))  # NaN is out of range too
    if log_terms:
        hit = torch.isneginf(logits)
        stats.append(_masked_count(hit if smoothing else hit & (target > 0), valid))
    allowed = "binary target values in [0, 1]" + _or_ignored(ignore_index)

    def verdict(values: List[float]) -> Optional[str]:
        nonfinite, outside, *zero_log = (int(v) for v in values)
        if nonfinite:
            return str(expected("finite logits", f"{nonfinite} NaN or +inf"))
        if outside:
            return str(expected(allowed, f"{outside} values outside"))
        return _log_of_zero_message(zero_log[0], smoothing, "logits") if zero_log else None

    defer(stats, verdict)


def num_valid(valid: Optional[Tensor], shape: torch.Size) -> Union[int, Tensor]:
    """Number of valid elements: the element count of ``shape`` (an int) without a mask, else an exact
    int64 tensor (no host sync); :func:`reduce` divides by a count without the bounds a float
    denominator needs."""
    if valid is None:
        return shape.numel()
    return valid.sum(dtype=torch.int64)
