"""Adaptive losses: weights and focusing that change as training goes (SPEC §1, §2).

:mod:`seglosses.adaptive.losses` holds the difficulty-weighted CE and the stateful losses (adaptive label
smoothing, class-balanced, frequency-weighted and adaptive focal), whose statistics are exponential
moving averages or sums in buffers. Schedules of an explicit step (class weights of ``ce`` / ``focal``,
compound term weights) live below the losses, in :mod:`seglosses.schedules`.
"""

from __future__ import annotations

from .losses import *  # noqa: F401,F403  (the public names of the adaptive losses)
from .losses import __all__ as __all__
