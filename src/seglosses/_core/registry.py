"""Register, list and create losses by name and by spec string.

A spec string is a sum of weighted terms, each a registered name with optional keyword options written
as Python literals: ``"ce + 0.5*dice"``, ``"focal(gamma=2) + tversky(alpha=0.3, beta=0.7)"``. It is parsed
with Python's own ``ast`` (never evaluated); anything else than ``+``, ``-``, ``number*term``,
``term*number``, names and literal options is an error that names its position.

A weight may also be a schedule of the step (:mod:`seglosses.adaptive.schedules`): a schedule call, or
numbers and schedule calls joined by ``+ - *``, as in the boundary-loss rebalancing
``"linear(start=1, end=0.01, steps=99)*dice + (1 - linear(start=1, end=0.01, steps=99))*boundary"``. An
option value may be a schedule call too: ``"ce(weight=[1, 5], weight_schedule=exponential(lam=0.1))"``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Type, Union

from torch import nn

from ..adaptive.schedules import Schedule, is_schedule_expression, schedule_from_ast
from .errors import SegLossError, unknown_choice

Weight = Union[float, Schedule]
Term = Tuple[Weight, str, Dict[str, Any], str]


@dataclass(frozen=True)
class LossEntry:
    """A registered loss: its module class, the input domain, a one-line description and a minimal spec."""

    name: str
    module: Type[nn.Module]
    domain: str  # "softmax" (index or dense target) or "binary" (target of the logits' shape)
    description: str
    minimal_spec: str = ""
    kind: str = "pixel"  # "pixel" or "region": what reduction="none" returns

    @property
    def spec(self) -> str:
        return self.minimal_spec or self.name


_REGISTRY: Dict[str, LossEntry] = {}


def register(
    name: str,
    module: Type[nn.Module],
    *,
    domain: str,
    description: str,
    kind: str = "pixel",
    minimal_spec: str = "",
) -> None:
    """Register a loss module under ``name`` (used by spec strings, the CLI and the conformance tests)."""
    if name in _REGISTRY and _REGISTRY[name].module is not module:
        raise SegLossError(f"a loss named {name!r} is already registered")
    _REGISTRY[name] = LossEntry(name, module, domain, description, minimal_spec, kind)


def list_losses(details: bool = False) -> Any:
    """Registered loss names (sorted), or with ``details=True`` their :class:`LossEntry` records."""
    names = sorted(_REGISTRY)
    return [_REGISTRY[n] for n in names] if details else names


def get_entry(name: str) -> LossEntry:
    if name not in _REGISTRY:
        raise unknown_choice("a registered loss name", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def build(name: str, **options: Any) -> nn.Module:
    """Instantiate a registered loss; bad or unknown options raise :class:`SegLossError`."""
    module = get_entry(name).module
    try:
        return module(**options)
    except TypeError as error:  # a module that does not check its own option names
        raise SegLossError(f"bad options for loss {name!r}: {error}") from None


def parse_spec(spec: str) -> List[Term]:
    """Parse a spec string into ``(weight, name, options, label)`` terms (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SegLossError(f"expected a non-empty loss spec string, got {spec!r}")
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as error:
        column = (error.offset or 1) - 1
        raise SegLossError(_at(spec, column, f"invalid loss spec syntax ({error.msg})")) from None
    terms: List[Term] = []
    _collect(tree.body, 1.0, spec.strip(), terms)
    return terms


def _at(spec: str, column: int, message: str) -> str:
    return f"{message} at position {column} in {spec!r}\n  {spec}\n  {' ' * column}^"


def _collect(node: ast.expr, sign: float, spec: str, out: List[Term]) -> None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        _collect(node.left, sign, spec, out)
        _collect(node.right, -sign if isinstance(node.op, ast.Sub) else sign, spec, out)
        return
    weight: Weight = 1.0
    term = node
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        weight, term = -1.0, node.operand
    if isinstance(term, ast.BinOp) and isinstance(term.op, ast.Mult):
        factor, term = (term.left, term.right) if _is_weight(term.left) else (term.right, term.left)
        if not _is_weight(factor):
            raise SegLossError(_at(spec, term.col_offset, "expected number*loss, got a product of two terms"))
        weight = _weight(factor, spec) * weight
    name, options = _term(term, spec)
    label = ast.get_source_segment(spec, term) or name
    out.append((weight * sign, name, options, label))


def _is_weight(node: ast.expr) -> bool:
    """A number, or a schedule expression (schedule calls and numbers joined by ``+ - *``)."""
    return _is_number(node) or is_schedule_expression(node)


def _weight(node: ast.expr, spec: str) -> Weight:
    if _is_number(node):
        return float(ast.literal_eval(node))
    try:
        return schedule_from_ast(node)
    except SegLossError as error:
        raise SegLossError(_at(spec, node.col_offset, str(error))) from None


def _is_number(node: ast.expr) -> bool:
    """A numeric literal, optionally signed (``-0.5``)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    )


def _term(node: ast.expr, spec: str) -> Tuple[str, Dict[str, Any]]:
    options: Dict[str, Any] = {}
    if isinstance(node, ast.Name):
        name = node.id
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.args:
            raise SegLossError(_at(spec, node.args[0].col_offset, "expected keyword options (name=value)"))
        name = node.func.id
        for keyword in node.keywords:
            if keyword.arg is None:
                raise SegLossError(
                    _at(spec, keyword.value.col_offset, "expected keyword options (name=value)")
                )
            if is_schedule_expression(keyword.value):  # weight_schedule=exponential(lam=0.1)
                options[keyword.arg] = _weight(keyword.value, spec)
                continue
            try:
                options[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                raise SegLossError(
                    _at(
                        spec, keyword.value.col_offset, f"expected a literal value for option {keyword.arg!r}"
                    )
                ) from None
    else:
        raise SegLossError(_at(spec, node.col_offset, "expected a loss name or name(options)"))
    if name not in _REGISTRY:
        error = unknown_choice("a registered loss name", name, sorted(_REGISTRY))
        raise SegLossError(_at(spec, node.col_offset, str(error)))
    return name, options
