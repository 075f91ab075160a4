"""The one error type of seglosses and helpers that phrase its messages."""

from __future__ import annotations

import difflib
import numbers
from typing import Any, Dict, Iterable, Optional, Tuple

_INT64 = 2**63


class SegLossError(ValueError):
    """Raised for every invalid input or option.

    A subclass of :class:`ValueError`, so ``except ValueError`` keeps working. Messages say what was
    expected and what came: ``expected target of shape (N, *S) = (2, 64, 64), got (2, 1, 64, 64)``.

    ``detail`` (optional) is an illustration that follows the message on further lines (the caret under
    a spec string's bad position); :attr:`summary` is the message without it, the line the command line
    prints.
    """

    def __init__(self, message: str = "", *, detail: Optional[str] = None) -> None:
        super().__init__(message if detail is None else f"{message}\n{detail}")
        self.summary = message


def summary(error: BaseException) -> str:
    """The message of an error without its illustration (:attr:`SegLossError.summary`)."""
    text = getattr(error, "summary", None)
    return text if isinstance(text, str) else str(error)


def show(value: Any) -> str:
    """``repr(value)``, but an integer beyond the int64 range as its size: Python refuses to write ints of
    more than 4,300 digits, and a 400-digit number says less than its size."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        if not -_INT64 <= number < _INT64:
            digits = int(abs(number).bit_length() * 0.30103) + 1  # log10(2): within one digit
            return f"{'a negative' if number < 0 else 'an'} integer of about {digits} digits"
    return repr(value)


def expected(what: str, got: Any) -> SegLossError:
    """Build the standard ``expected ..., got ...`` error."""
    if isinstance(got, numbers.Integral) and not isinstance(got, bool):
        got = show(got)
    return SegLossError(f"expected {what}, got {got}")


def unknown_choice(
    option: str, value: Any, choices: Iterable[str], *, foreign: Optional[bool] = None
) -> SegLossError:
    """Error for a string option outside its choices, with a "did you mean" hint.

    An unknown option *name* of a loss that another library uses (MONAI's ``to_onehot_y``, ...) also gets
    the seglosses way (:data:`FOREIGN_OPTIONS`): with ``foreign=True``, or by default where ``option``
    reads ``"an option of <owner>"`` (as :func:`unknown_option` writes it; the loss modules that call
    this function directly write it so too).
    """
    if foreign is None:
        foreign = option.startswith("an option of ")
    return _unknown(option, value, choices, None, foreign)


def unknown_option(
    owner: str, name: Any, known: Iterable[str], *, names: Optional[Tuple[str, str]] = None
) -> SegLossError:
    """Error for an option name that ``owner`` does not take: the known ones, "did you mean", and for a
    name from MONAI or segmentation_models_pytorch (:data:`FOREIGN_OPTIONS`) what seglosses does
    instead. ``names`` are the registered softmax and binary forms of the loss, for that hint."""
    return _unknown(f"an option of {owner}", name, known, names, True)


def _unknown(
    option: str, value: Any, choices: Iterable[str], names: Optional[Tuple[str, str]], foreign: bool
) -> SegLossError:
    choices = list(choices)
    text = value if isinstance(value, str) else show(value)
    prefixed = [c for c in choices if c.startswith(text)] if text else []
    hint = prefixed[:1] or difflib.get_close_matches(text, choices, n=1, cutoff=0.5)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    advice = foreign_option_hint(value, choices, names=names) if foreign and isinstance(value, str) else None
    got = repr(value) if isinstance(value, str) else text
    listed = ", ".join(repr(c) for c in choices)
    got += f": {advice}" if advice else ""
    return SegLossError(f"expected {option} to be one of {listed}, got {got}{suggestion}")


_DOMAIN = (
    "seglosses picks the activation by the loss name ({example}{softmax!r} takes a softmax over the classes, "
    "{binary!r} a sigmoid per channel), both from logits: drop {name}"
)

FOREIGN_OPTIONS: Dict[str, str] = {
    "to_onehot_y": "seglosses takes class-index targets (N, *S) as they are (or one-hot / soft ones of the "
    "logits' shape): drop to_onehot_y",
    "softmax": _DOMAIN,
    "sigmoid": _DOMAIN,
    "use_softmax": _DOMAIN,
    "other_act": _DOMAIN,
    "mode": _DOMAIN + " (segmentation_models_pytorch's 'multiclass' is the plain name, 'binary' and "
    "'multilabel' the binary_ one)",
    "from_logits": "seglosses always takes logits (it applies softmax / sigmoid itself): drop from_logits "
    "and pass raw logits, not probabilities",
    "squared_pred": "seglosses' Dice sums p and y in its denominator, not their squares (MONAI's "
    "squared_pred), and has no option for it: drop squared_pred",
    "smooth_nr": "seglosses has one smoothing term, smooth, added to numerator and denominator: use "
    "smooth=... instead of smooth_nr / smooth_dr",
    "smooth_dr": "seglosses has one smoothing term, smooth, added to numerator and denominator: use "
    "smooth=... instead of smooth_nr / smooth_dr",
    "eps": "segmentation_models_pytorch's eps is seglosses' smooth, where the loss has one",
    "jaccard": "the Jaccard (IoU) form is its own loss: use 'jaccard' (or 'binary_jaccard') instead of "
    "jaccard=True",
    "log_loss": "seglosses has no -log(Dice) option: drop log_loss",
    "lambda_dice": "write the weights in a spec string instead: create_loss('ce + 0.5*dice')",
    "lambda_ce": "write the weights in a spec string instead: create_loss('ce + 0.5*dice')",
    "smooth_factor": "segmentation_models_pytorch's smooth_factor is label_smoothing where the loss has it "
    "('ce')",
    "include_background": "this loss supervises every class or channel; the softmax region and boundary "
    "losses (dice, jaccard, boundary, ...) take include_background",
}


def foreign_option_hint(
    name: str, known: Iterable[str] = (), *, names: Optional[Tuple[str, str]] = None
) -> Optional[str]:
    """What seglosses does instead of the option ``name`` of MONAI / segmentation_models_pytorch, or None
    for a name it does not know (or one in ``known``: the owner takes it). ``names``: the softmax and the
    binary form of the loss at hand, named in the hints about the input domain (default dice's)."""
    if name in set(known) or name not in FOREIGN_OPTIONS:
        return None
    softmax, binary = names or ("dice", "binary_dice")
    example = "" if names else "e.g. "
    return FOREIGN_OPTIONS[name].format(name=name, softmax=softmax, binary=binary, example=example)
