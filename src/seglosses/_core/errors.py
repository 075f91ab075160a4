"""The one error type of seglosses and helpers that phrase its messages."""

from __future__ import annotations

import difflib
from typing import Any, Iterable


class SegLossError(ValueError):
    """Raised for every invalid input or option.

    A subclass of :class:`ValueError`, so ``except ValueError`` keeps working. Messages say what was
    expected and what came: ``expected target of shape (N, *S) = (2, 64, 64), got (2, 1, 64, 64)``.
    """


def expected(what: str, got: Any) -> SegLossError:
    """Build the standard ``expected ..., got ...`` error."""
    return SegLossError(f"expected {what}, got {got}")


def unknown_choice(option: str, value: Any, choices: Iterable[str]) -> SegLossError:
    """Error for a string option outside its choices, with a "did you mean" hint."""
    choices = list(choices)
    prefixed = [c for c in choices if c.startswith(str(value))] if str(value) else []
    hint = prefixed[:1] or difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return SegLossError(
        f"expected {option} to be one of {', '.join(repr(c) for c in choices)}, got {value!r}{suggestion}"
    )
