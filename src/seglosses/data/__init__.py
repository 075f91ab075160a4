"""Built-in real data, shipped with the package (no download at run time), and data specs.

A data spec names a data set: ``nuclei`` (3 classes: background, interior, boundary) or ``nuclei:2``
(background, nucleus).
"""

from __future__ import annotations

from typing import Dict, Tuple

from torch import Tensor

from .._core.errors import expected, unknown_choice
from .nuclei import instances_to_classes, nuclei

DATA_SETS = ("nuclei", "nuclei:2")


def load_data(spec: str) -> Dict[str, Tuple[Tensor, Tensor]]:
    """``{"train": (images, labels), "test": (images, labels)}`` for a data spec (see module docstring)."""
    if not isinstance(spec, str):
        raise expected("a data spec string", repr(spec))
    if spec not in DATA_SETS:
        raise unknown_choice("a data set", spec, DATA_SETS)
    classes = 2 if spec == "nuclei:2" else 3
    return {split: nuclei(classes=classes, split=split) for split in ("train", "test")}


__all__ = ["DATA_SETS", "instances_to_classes", "load_data", "nuclei"]
