"""Adaptive and scheduled losses: weights and focusing that change as training goes (SPEC §1, §2).

* :mod:`seglosses.adaptive.schedules`: schedules as pure functions of an explicit step, and
  :class:`Schedule`, shared by every scheduled quantity (class weights of ``ce`` / ``focal``, compound term
  weights).
"""

from __future__ import annotations

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
