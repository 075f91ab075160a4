"""Schedules: pure functions of an explicit step, shared by every scheduled quantity (SPEC §1, §2).

A schedule maps a step ``t >= 0`` (an epoch or iteration count that the caller passes; nothing here counts
forwards) to a number:

* ``constant``: ``value``
* ``linear``: ``start + (end - start) · min(t / steps, 1)``
* ``cosine``: ``end + (start - end) · (1 + cos(π · min(t / steps, 1))) / 2``
* ``exponential``: ``end + (start - end) · exp(-λ t)`` (``λ`` is the option ``lam``)
* ``step``: ``start · factor^⌊t / every⌋``
* ``warmup``: ``start + (then(0) - start) · t / steps`` for ``t < steps``, then ``then(t - steps)``

Each is a pure function (``linear_schedule(t, start=1, end=0.01, steps=99)``) and, with its options bound,
a :class:`Schedule` (``Schedule("linear", start=1, end=0.01, steps=99)(t)``), also written as a spec string
``"linear(start=1, end=0.01, steps=99)"``. A schedule plus or times a number is a schedule, so
``1 - alpha`` is the complement of ``alpha`` (the boundary-loss rebalancing ``α·region + (1-α)·boundary``).

Scheduled class weights move from their initial values to uniform: ``w_c(t) = 1 + (w_c - 1) · s(t)``, with
``s`` a schedule from 1 to 0; SPEC §1's ``w_c(t) = 1 + (w_c^init - 1) · exp(-λ t)`` is
``s = exponential(lam=λ)`` (the document's literal ``w_c^init · exp(-λ t)`` only rescales the loss).
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import numbers
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor

from ._core.errors import expected, show, unknown_choice
from ._core.options import check_number, keyword_options

ScheduleLike = Union["Schedule", str, float]


def _finite_result(function: Callable[..., float]) -> Callable[..., float]:
    """Make a schedule raise :class:`SegLossError` where its value leaves the float range (a ``step``
    schedule with ``factor > 1`` after many steps, extreme ``start`` / ``end``), never return inf or NaN
    or raise :class:`OverflowError`."""

    @functools.wraps(function)
    def schedule(step: float, **options: Any) -> float:
        try:
            value = function(step, **options)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise expected(f"a finite value of the {function.__name__} at step {step:g}", value)
        return value

    return schedule


def check_step(step: object) -> float:
    """A step: a finite real number ``>= 0`` (an int, or a float such as a fractional epoch)."""
    return check_number("step", step, low=0.0)


def _progress(step: float, steps: object) -> float:
    """``min(t / steps, 1)`` with ``steps > 0``."""
    return min(check_step(step) / check_number("steps", steps, low=0.0, low_open=True), 1.0)


@_finite_result
def constant_schedule(step: float, *, value: float = 1.0) -> float:
    """``value`` at every step."""
    check_step(step)
    return check_number("value", value)


@_finite_result
def linear_schedule(step: float, *, start: float = 1.0, end: float = 0.0, steps: float) -> float:
    """``start + (end - start) · min(t / steps, 1)``: from ``start`` to ``end`` in ``steps``, then ``end``.

    Example (the boundary-loss rebalancing ``α(e) = max(0.01, 1 - 0.01 e)``):
        >>> [round(linear_schedule(e, start=1.0, end=0.01, steps=99), 6) for e in (0, 1, 50, 99, 500)]
        [1.0, 0.99, 0.5, 0.01, 0.01]
    """
    start, end = check_number("start", start), check_number("end", end)
    return start + (end - start) * _progress(step, steps)


@_finite_result
def cosine_schedule(step: float, *, start: float = 1.0, end: float = 0.0, steps: float) -> float:
    """``end + (start - end) · (1 + cos(π · min(t / steps, 1))) / 2`` (cosine annealing, then ``end``)."""
    start, end = check_number("start", start), check_number("end", end)
    return end + (start - end) * (1.0 + math.cos(math.pi * _progress(step, steps))) / 2.0


@_finite_result
def exponential_schedule(step: float, *, start: float = 1.0, end: float = 0.0, lam: float = 1.0) -> float:
    """``end + (start - end) · exp(-λ t)`` with the rate ``λ = lam >= 0`` (``λ = 0`` stays at ``start``)."""
    start, end = check_number("start", start), check_number("end", end)
    lam = check_number("lam", lam, low=0.0)
    return end + (start - end) * math.exp(-lam * check_step(step))


@_finite_result
def step_schedule(step: float, *, start: float = 1.0, factor: float = 0.1, every: float) -> float:
    """``start · factor^⌊t / every⌋``: multiplied by ``factor >= 0`` every ``every > 0`` steps."""
    start, factor = check_number("start", start), check_number("factor", factor, low=0.0)
    every = check_number("every", every, low=0.0, low_open=True)
    times = check_step(step) / every  # inf for a tiny ``every``: 0 or ``start`` where factor <= 1
    if start == 0.0 or factor == 1.0:
        return start
    return start * factor ** (math.floor(times) if math.isfinite(times) else times)


@_finite_result
def warmup_schedule(
    step: float, *, steps: float, start: float = 0.0, then: Optional[ScheduleLike] = None
) -> float:
    """Linear warm-up from ``start`` to ``then(0)`` over ``steps``, then ``then(t - steps)``.

    ``then`` is a schedule (a :class:`Schedule`, a spec string or a number; default the constant 1).
    """
    t, start = check_step(step), check_number("start", start)
    length = check_number("steps", steps, low=0.0, low_open=True)
    after = as_schedule(1.0 if then is None else then)
    if t < length:
        return start + (after(0.0) - start) * t / length
    return after(t - length)


SCHEDULES: Dict[str, Callable[..., float]] = {
    "constant": constant_schedule,
    "linear": linear_schedule,
    "cosine": cosine_schedule,
    "exponential": exponential_schedule,
    "step": step_schedule,
    "warmup": warmup_schedule,
}


class Schedule:
    """A schedule with its options bound: ``Schedule("cosine", start=1, end=0, steps=100)(t) -> float``.

    ``kind`` is one of ``constant, linear, cosine, exponential, step, warmup`` (see the module docstring);
    the options are validated once here. Adding or multiplying a number gives another schedule
    (``1 - s``, ``0.5 * s``); ``str(s)`` is its spec string, which :func:`as_schedule` parses back.

    Raises:
        SegLossError: an unknown kind, an unknown or missing option, a bad option value.
    """

    def __init__(self, kind: str, **options: Any) -> None:
        if kind not in SCHEDULES:
            raise unknown_choice("a schedule kind", kind, list(SCHEDULES))
        options = _bound_options(kind, options)
        SCHEDULES[kind](0.0, **options)  # validates every option once
        self.kind = kind
        self._options = dict(options)
        self._offset, self._scale = 0.0, 1.0

    @property
    def options(self) -> Dict[str, Any]:
        return dict(self._options)

    def __call__(self, step: float) -> float:
        """The value at ``step`` (a number ``>= 0``); a value beyond the float range raises."""
        value = self._offset + self._scale * SCHEDULES[self.kind](step, **self._options)
        if not math.isfinite(value):
            raise expected(f"a finite value of the schedule {self} at step {step:g}", value)
        return value

    def _affine(self, offset: float, scale: float) -> Schedule:
        """``offset + scale · self``."""
        result = Schedule.__new__(Schedule)
        result.kind, result._options = self.kind, self._options
        result._offset, result._scale = offset + scale * self._offset, scale * self._scale
        return result

    def __add__(self, other: object) -> Schedule:
        return self._affine(_number(other, "+"), 1.0)

    __radd__ = __add__

    def __sub__(self, other: object) -> Schedule:
        return self._affine(-_number(other, "-"), 1.0)

    def __rsub__(self, other: object) -> Schedule:
        return self._affine(_number(other, "-"), -1.0)

    def __mul__(self, other: object) -> Schedule:
        return self._affine(0.0, _number(other, "*"))

    __rmul__ = __mul__

    def __neg__(self) -> Schedule:
        return self._affine(0.0, -1.0)

    def _key(self) -> Tuple[Any, ...]:
        return (self.kind, repr(sorted(self._options.items())), self._offset, self._scale)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.kind}({', '.join(f'{k}={_literal(v)}' for k, v in self._options.items())})"
        if self._scale != 1.0:
            text = f"-{text}" if self._scale == -1.0 else f"{_short(self._scale)}*{text}"
        if self._offset != 0.0:
            sign, text = ("-", text[1:]) if text.startswith("-") else ("+", text)
            text = f"{_short(self._offset)} {sign} {text}"
        return text

    def __repr__(self) -> str:
        return f"Schedule({str(self)!r})"


def _bound_options(kind: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """The options of a schedule kind: unknown and missing ones raise; warm-up's ``then`` as a Schedule."""
    known = keyword_options(SCHEDULES[kind])
    for name in options:
        if name not in known:
            raise unknown_choice(f"an option of the {kind} schedule", name, known, foreign=False)
    for name, parameter in known.items():
        if parameter.default is inspect.Parameter.empty and name not in options:
            raise expected(f"option {name!r} of the {kind} schedule", "none")
    if options.get("then") is not None:
        options = {**options, "then": as_schedule(options["then"])}
    return options


def _number(value: object, op: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise expected(f"a number on the other side of {op} with a schedule", repr(value))
    return check_number("the number combined with a schedule", value)


def _short(number: float) -> str:
    """The shortest text that reads back as ``number`` (``1`` for 1.0)."""
    return str(int(number)) if number.is_integer() else repr(number)


def _literal(value: Any) -> str:
    return str(value) if isinstance(value, Schedule) else repr(value)


def as_schedule(value: ScheduleLike) -> Schedule:
    """A :class:`Schedule` from a schedule, a number (constant) or a spec string (``"cosine(steps=50)"``,
    ``"1 - linear(start=1, end=0.01, steps=99)"``); nested schedules (warm-up's ``then``) are calls too."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return Schedule("constant", value=check_number("a constant schedule's value", value))
    if not isinstance(value, str):
        raise expected("a Schedule, a number or a schedule spec string", show(value))
    deeper = f"a schedule spec nested at most {MAX_NESTING} levels deep"
    try:
        tree = ast.parse(value.strip(), mode="eval")
    except SyntaxError as error:
        raise expected("a schedule spec such as 'linear(start=1, end=0, steps=10)'", repr(value)) from error
    except (RecursionError, MemoryError):
        raise expected(deeper, "one too deep for Python's parser") from None
    depth = nesting_depth(tree.body)
    if depth > MAX_NESTING:
        raise expected(deeper, f"{depth} levels")
    result = schedule_from_ast(tree.body)
    return result if isinstance(result, Schedule) else as_schedule(result)


MAX_NESTING = 32  # depth of a parsed schedule (or loss-spec term) expression; deeper ones are refused


def nesting_depth(node: ast.AST) -> int:
    """The depth of an expression tree, counted without recursion (the recursive helpers here and in the
    registry run only on trees of at most :data:`MAX_NESTING` levels, far from Python's limit)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(current))
    return deepest


def is_schedule_expression(node: ast.expr) -> bool:
    """Whether ``node`` is numbers and schedule calls joined by ``+ - *``, with at least one call."""
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in SCHEDULES
    if isinstance(node, ast.UnaryOp):
        return is_schedule_expression(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        sides = (node.left, node.right)
        return any(is_schedule_expression(s) for s in sides) and all(
            is_schedule_expression(s) or is_number_node(s) for s in sides
        )
    return False


def is_number_node(node: ast.expr) -> bool:
    """A numeric literal, optionally signed (``-0.5``); not a bool."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    )


def schedule_from_ast(node: ast.expr) -> Union[Schedule, float]:
    """Evaluate a parsed schedule expression (numbers, schedule calls, ``+ - *``, unary minus); never
    ``eval``. Raises :class:`SegLossError` for anything else."""
    if is_number_node(node):
        return check_number("a number in a schedule", ast.literal_eval(node))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = schedule_from_ast(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        left, right = schedule_from_ast(node.left), schedule_from_ast(node.right)
        if isinstance(left, Schedule) and isinstance(right, Schedule):
            raise expected("a number and a schedule on the two sides of an operator", "two schedules")
        operations: Mapping[type, Callable[[Any, Any], Any]] = {
            ast.Add: lambda a, b: a + b,
            ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b,
        }
        return operations[type(node.op)](left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        if node.func.id not in SCHEDULES:
            raise unknown_choice("a schedule kind", node.func.id, list(SCHEDULES))
        options: Dict[str, Any] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise expected("keyword options (name=value) in a schedule", "**options")
            if keyword.arg in options:  # Python rejects a repeated keyword; ast does not
                raise expected(f"each option of the {node.func.id} schedule once", f"{keyword.arg!r} again")
            options[keyword.arg] = _option_value(keyword.value)
        return Schedule(node.func.id, **options)
    raise expected("a schedule: a number, kind(name=value, ...), or these joined by + - *", ast.unparse(node))


def _option_value(node: ast.expr) -> Any:
    if is_schedule_expression(node):
        return schedule_from_ast(node)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise expected("a literal option value in a schedule", ast.unparse(node)) from None


def scheduled_class_weights(weight: Tensor, schedule: ScheduleLike, step: float) -> Tensor:
    """``w_c(t) = 1 + (w_c - 1) · s(t)``: the initial weights at ``s = 1``, uniform at ``s = 0``.

    Args:
        weight: initial class weights ``(C,)`` or a scalar tensor.
        schedule: ``s``, whose value must lie in ``[0, 1]``; SPEC §1's ``exp(-λ t)`` is
            ``"exponential(lam=λ)"``.
        step: ``t >= 0``.

    Returns:
        The weights at ``t``, same shape, dtype and device as ``weight``.
    """
    value = as_schedule(schedule)(step)
    if not 0.0 <= value <= 1.0:
        raise expected(f"the class-weight schedule's value in [0, 1] (at step {step:g})", value)
    return 1.0 + (weight - 1.0) * value


__all__ = [
    "SCHEDULES",
    "Schedule",
    "as_schedule",
    "check_step",
    "constant_schedule",
    "cosine_schedule",
    "exponential_schedule",
    "linear_schedule",
    "scheduled_class_weights",
    "step_schedule",
    "warmup_schedule",
]
