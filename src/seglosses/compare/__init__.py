"""``seglosses compare``: train the same U-Net with several losses and say which wins, and how sure that is.

:mod:`.training` trains and scores the runs, :mod:`.verdict` turns their per-image statistics into
values, paired-bootstrap intervals and a verdict, :mod:`.report` writes ``report.md``, ``results.json``
and ``results.csv``, :mod:`.plots` the figures, and :mod:`.output` keeps the output folder safe.
"""

from .training import RunResult, Settings, check_specs, compare, launched_by_torchrun, slug

__all__ = ["RunResult", "Settings", "check_specs", "compare", "launched_by_torchrun", "slug"]
