"""Adaptive and scheduled losses: weights and focusing that change as training goes (SPEC §1, §2).

* :mod:`seglosses.adaptive.schedules`: schedules as pure functions of an explicit step, and
  :class:`Schedule`, shared by every scheduled quantity (class weights of ``ce`` / ``focal``, compound term
  weights).
* :mod:`seglosses.adaptive.losses`: difficulty-weighted CE and the stateful losses (adaptive label
  smoothing, class-balanced, frequency-weighted and adaptive focal), whose statistics are exponential
  moving averages or sums in buffers.

The losses are imported lazily here (``from seglosses.adaptive import AdaptiveFocalLoss`` works): the
cross-entropy and focal modules import the schedules, and the adaptive losses build on them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .schedules import (
    SCHEDULES,
    Schedule,
    as_schedule,
    constant_schedule,
    cosine_schedule,
    exponential_schedule,
    linear_schedule,
    scheduled_class_weights,
    step_schedule,
    warmup_schedule,
)


def __getattr__(name: str) -> Any:
    losses = importlib.import_module(".losses", __name__)
    if name in losses.__all__:
        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCHEDULES",
    "Schedule",
    "as_schedule",
    "constant_schedule",
    "cosine_schedule",
    "exponential_schedule",
    "linear_schedule",
    "scheduled_class_weights",
    "step_schedule",
    "warmup_schedule",
]
