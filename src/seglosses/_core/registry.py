"""Register, list and create losses by name and by spec string.

A spec string is a sum of weighted terms, each a registered name with optional keyword options written
as Python literals: ``"ce + 0.5*dice"``, ``"focal(gamma=2) + tversky(alpha=0.3, beta=0.7)"``. It is parsed
with Python's own ``ast`` (never evaluated); anything else than ``+``, ``-``, ``number*term``,
``term*number``, names and literal options is an error that names its position.

A weight may also be a schedule of the step (:mod:`seglosses.schedules`): a schedule call, or
numbers and schedule calls joined by ``+ - *``, as in the boundary-loss rebalancing
``"linear(start=1, end=0.01, steps=99)*dice + (1 - linear(start=1, end=0.01, steps=99))*boundary"``. An
option value may be a schedule call too: ``"ce(weight=[1, 5], weight_schedule=exponential(lam=0.1))"``.
"""

from __future__ import annotations

import ast
import inspect
import io
import keyword
import tokenize
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Type, Union

from torch import nn

from ..schedules import (
    MAX_NESTING,
    Schedule,
    is_number_node,
    is_schedule_expression,
    nesting_depth,
    schedule_from_ast,
)
from .errors import SegLossError, summary, unknown_choice, unknown_option
from .options import check_number

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
    kind: str = "pixel"  # what reduction="none" returns: "pixel" per pixel, "region" (N, C), "class" (C,)

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
    """Instantiate a registered loss; bad or unknown options raise :class:`SegLossError`.

    An unknown option name answers with the known ones, "did you mean", and for a name from MONAI or
    segmentation_models_pytorch (``to_onehot_y``, ``softmax``, ``smooth_nr``, ...) what to write instead.
    """
    module = get_entry(name).module
    known = _init_options(module)
    if known is not None:  # a constructor without **options: Python would raise a bare TypeError
        for option in options:
            if option not in known:
                raise unknown_option(module.__name__, option, known, names=domain_names(name))
    try:
        return module(**options)
    except TypeError as error:  # a module that does not check its own option names
        raise SegLossError(f"bad options for loss {name!r}: {error}") from None


def _init_options(module: Type[nn.Module]) -> Optional[List[str]]:
    """The keyword names a module's constructor takes, or None if it takes ``**options``."""
    try:
        parameters = inspect.signature(module).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in keyword]


def domain_names(name: str) -> Optional[Tuple[str, str]]:
    """The registered softmax and binary forms of a loss (``('dice', 'binary_dice')``), if both exist."""
    if name in ("ce", "bce"):
        return ("ce", "bce")
    base = name[len("binary_") :] if name.startswith("binary_") else name
    binary = f"binary_{base}"
    return (base, binary) if base in _REGISTRY and binary in _REGISTRY else None


def loss_name(module: Type[nn.Module]) -> Optional[str]:
    """The registered name of a loss module class, or None."""
    return next((entry.name for entry in _REGISTRY.values() if entry.module is module), None)


def parse_spec(spec: str) -> List[Term]:
    """Parse a spec string into ``(weight, name, options, label)`` terms (see the module docstring).

    The sum is split into its terms by Python's tokenizer (no recursion, so any number of terms); each
    term is parsed with ``ast`` and may nest at most ``MAX_NESTING`` (32) levels deep (brackets,
    operators, option values), far below Python's recursion limit.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SegLossError(f"expected a non-empty loss spec string, got {spec!r}")
    text = spec.strip()
    terms: List[Term] = []
    for sign, start, end in _split_terms(text):
        chunk = text[start:end]
        lead = len(chunk) - len(chunk.lstrip())
        chunk = chunk.strip()
        if not chunk:
            raise _at(text, min(start, len(text) - 1), "invalid loss spec syntax (a term is missing)")
        term = _Term(text, start + lead, chunk)
        terms.append(term.collect(sign))
    return terms


def _at(spec: str, column: int, message: str) -> SegLossError:
    return SegLossError(f"{message} at position {column} in {spec!r}", detail=f"  {spec}\n  {' ' * column}^")


_OPEN, _CLOSE = "([{", ")]}"


def _split_terms(text: str) -> List[Tuple[float, int, int]]:
    """``(sign, start, end)`` of each term of a sum: the text between the ``+`` and ``-`` that stand
    outside brackets after an operand (a ``-`` after an operator is a sign that stays in its term)."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    cuts: List[Tuple[float, int, int]] = []  # (sign of the next term, where the operator starts, ends)
    depth, after_operand = 0, False
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in _SKIPPED:
                continue
            where = offsets[token.start[0] - 1] + token.start[1]
            if token.type == tokenize.OP and token.string in _OPEN:
                depth += 1
            elif token.type == tokenize.OP and token.string in _CLOSE:
                depth -= 1
            elif depth == 0 and after_operand and token.type == tokenize.OP and token.string in "+-":
                cuts.append((-1.0 if token.string == "-" else 1.0, where, where + 1))
                after_operand = False
                continue
            after_operand = _is_operand(token)
    except (tokenize.TokenError, SyntaxError) as error:  # unclosed brackets or strings
        raise _syntax_error(text, error) from None
    bounds, sign, start = [], 1.0, 0
    for next_sign, cut_start, cut_end in cuts:
        bounds.append((sign, start, cut_start))
        sign, start = next_sign, cut_end
    bounds.append((sign, start, len(text)))
    return bounds


_SKIPPED = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER, tokenize.INDENT,
            tokenize.DEDENT}  # fmt: skip


def _is_operand(token: tokenize.TokenInfo) -> bool:
    """Whether a token ends an operand, so that a ``+`` or ``-`` after it is a binary operator."""
    if token.type == tokenize.NAME:
        return not keyword.iskeyword(token.string) or token.string in ("True", "False", "None")
    return token.type in (tokenize.NUMBER, tokenize.STRING) or token.string in _CLOSE


def _syntax_error(text: str, error: Exception) -> SegLossError:
    """The error of Python's parser for ``text`` (its message and position), else ``error``'s."""
    try:
        ast.parse(text, mode="eval")
    except SyntaxError as syntax:
        return _at(text, max(0, min((syntax.offset or 1) - 1, len(text) - 1)),
                   f"invalid loss spec syntax ({syntax.msg})")  # fmt: skip
    except (RecursionError, MemoryError):
        pass
    message = error.args[0] if error.args else type(error).__name__
    return SegLossError(f"expected a loss spec with closed brackets and strings, got {text!r} ({message})")


class _Term:
    """One term of a spec: its text ``chunk`` at ``offset`` in ``spec``, parsed by ``ast``."""

    def __init__(self, spec: str, offset: int, chunk: str) -> None:
        self.spec, self.offset, self.chunk = spec, offset, chunk
        try:
            self.tree = ast.parse(chunk, mode="eval").body
        except SyntaxError as error:
            column = offset + max(0, (error.offset or 1) - 1) if error.lineno in (None, 1) else offset
            raise _at(spec, column, f"invalid loss spec syntax ({error.msg})") from None
        except (RecursionError, MemoryError):
            raise self.too_deep(None) from None
        depth = nesting_depth(self.tree)
        if depth > MAX_NESTING:
            raise self.too_deep(depth)

    def too_deep(self, depth: Optional[int]) -> SegLossError:
        got = "too deep to parse" if depth is None else f"{depth} levels"
        return _at(self.spec, self.offset, f"expected a term nested at most {MAX_NESTING} levels deep "
                   f"(brackets, operators and option values), got {got}")  # fmt: skip

    def position(self, node: ast.AST) -> int:
        """The position of ``node`` in the whole spec (its first line's column for a multi-line term)."""
        lineno, column = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        if lineno == 1:
            return self.offset + column
        lines = self.chunk.splitlines(keepends=True)
        return self.offset + sum(len(line) for line in lines[: lineno - 1]) + column

    def error(self, node: ast.AST, message: str) -> SegLossError:
        return _at(self.spec, self.position(node), message)

    def collect(self, sign: float) -> Term:
        """The term as ``(weight, name, options, label)``, its weight times ``sign`` (that of its ``+``
        or ``-`` in the sum)."""
        weight: Weight = sign
        term = self.tree
        if isinstance(term, ast.UnaryOp) and isinstance(term.op, ast.USub):
            weight, term = -sign, term.operand
        factor = None
        if isinstance(term, ast.BinOp) and isinstance(term.op, ast.Mult):
            factor, term = (term.left, term.right) if _is_weight(term.left) else (term.right, term.left)
            if not _is_weight(factor):
                raise self.error(term, "expected number*loss, got a product of two terms")
        name, options = self.term(term)
        label = ast.get_source_segment(self.chunk, term) or name
        if factor is not None:
            weight = self.weight(factor, f"the weight of term {label!r}") * weight
        return (weight, name, options, label)

    def weight(self, node: ast.expr, what: str) -> Weight:
        """A number (finite, as a float) or a schedule expression; errors name ``what`` and the position."""
        try:
            if is_number_node(node):
                return check_number(what, ast.literal_eval(node))
            return schedule_from_ast(node)
        except SegLossError as error:
            raise self.error(node, summary(error)) from None

    def term(self, node: ast.expr) -> Tuple[str, Dict[str, Any]]:
        options: Dict[str, Any] = {}
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.args:
                raise self.error(node.args[0], "expected keyword options (name=value)")
            name = node.func.id
            for option in node.keywords:
                if option.arg is None:
                    raise self.error(option.value, "expected keyword options (name=value)")
                if option.arg in options:  # Python rejects a repeated keyword; ast does not
                    raise self.error(option, f"expected each option once, got {option.arg!r} again")
                if is_schedule_expression(option.value):  # weight_schedule=exponential(lam=0.1)
                    options[option.arg] = self.weight(option.value, f"option {option.arg!r}")
                    continue
                try:
                    options[option.arg] = ast.literal_eval(option.value)
                except ValueError:
                    message = f"expected a literal value for option {option.arg!r}"
                    raise self.error(option.value, message) from None
        else:
            raise self.error(node, "expected a loss name or name(options)")
        if name not in _REGISTRY:
            raise self.error(node, str(unknown_choice("a registered loss name", name, sorted(_REGISTRY))))
        return name, options


def _is_weight(node: ast.expr) -> bool:
    """A number, or a schedule expression (schedule calls and numbers joined by ``+ - *``)."""
    return is_number_node(node) or is_schedule_expression(node)
