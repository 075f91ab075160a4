"""Built-in real data (shipped with the package, no download at run time) and the user's folders.

A data spec names a data set: ``nuclei`` (3 classes: background, interior, boundary), ``nuclei:2``
(background, nucleus) or ``folder:PATH`` (``PATH/images`` and ``PATH/masks``, see
:func:`seglosses.data.folder.read_folder`; every fifth pair, in name order, is the test split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from torch import Tensor

from .._core.errors import expected, unknown_choice
from .folder import read_folder
from .nuclei import instances_to_classes, nuclei

BUILT_IN = ("nuclei", "nuclei:2")
Pair = Tuple[Tensor, Tensor]


def load_data(spec: str, *, progress: bool = False) -> Dict[str, List[Pair]]:
    """``{"train": [...], "test": [...]}``, lists of ``(image (C, H, W), labels (H, W))`` pairs."""
    if not isinstance(spec, str):
        raise expected("a data spec string", repr(spec))
    if spec.startswith("folder:"):
        pairs = read_folder(Path(spec[len("folder:") :]), progress=progress)
        if len(pairs) < 2:
            raise expected("at least 2 image/mask pairs (train and test)", len(pairs))
        return {
            "train": [pair for k, pair in enumerate(pairs) if k % 5 != 4],
            "test": [pair for k, pair in enumerate(pairs) if k % 5 == 4] or pairs[-1:],
        }
    if spec not in BUILT_IN:
        raise unknown_choice("a data set (or folder:PATH)", spec, BUILT_IN)
    classes = 2 if spec == "nuclei:2" else 3
    splits = {}
    for split in ("train", "test"):
        image, labels = nuclei(classes=classes, split=split)
        splits[split] = [(image[0], labels[0])]
    return splits


__all__ = ["BUILT_IN", "instances_to_classes", "load_data", "nuclei", "read_folder"]
