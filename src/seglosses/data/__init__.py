"""Built-in real data (shipped with the package or, for ``brain``, with nilearn; no download at run time)
and the user's folders.

A data spec names a data set: ``nuclei`` (3 classes: background, interior, boundary), ``nuclei:2``
(background, nucleus), ``brain`` (axial slices of the MNI152 template: background, grey matter, white
matter; needs the ``[brain]`` extra, see :func:`seglosses.data.brain.brain`), ``brain:3d`` (the same
as one volume per split) or ``folder:PATH`` (``PATH/images`` and ``PATH/masks``, see
:func:`seglosses.data.folder.read_folder`; every fifth pair, in name order, is the test split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from torch import Tensor

from .._core.errors import expected, unknown_choice
from .brain import brain
from .folder import read_folder
from .nuclei import instances_to_classes, nuclei

BUILT_IN = ("nuclei", "nuclei:2", "brain", "brain:3d")
Pair = Tuple[Tensor, Tensor]


def load_data(spec: str, *, progress: bool = False) -> Dict[str, List[Pair]]:
    """``{"train": [...], "test": [...]}``, lists of ``(image (C, *S), labels (*S))`` pairs: ``S = (H, W)``
    for every spec but ``brain:3d``, whose one pair per split is a volume, ``S = (D, H, W)``."""
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
    splits = {}
    for split in ("train", "test"):
        if spec.startswith("brain"):
            image, labels = brain(dims=3 if spec == "brain:3d" else 2, split=split)
        else:
            image, labels = nuclei(classes=2 if spec == "nuclei:2" else 3, split=split)
        splits[split] = list(zip(image.unbind(0), labels.unbind(0)))
    return splits


__all__ = ["BUILT_IN", "brain", "instances_to_classes", "load_data", "nuclei", "read_folder"]
