"""An nnU-Net v2 raw data set (``nnunet:PATH``), 2-D or 3-D.

``PATH/dataset.json`` gives ``channel_names``, ``labels`` (``{"background": 0, "liver": 1, ...}``, an
``"ignore"`` label allowed) and ``file_ending`` (``.png``, ``.tif``, ``.nii.gz``, ...). Training cases are
``labelsTr/CASE{ending}`` with their channels ``imagesTr/CASE_0000{ending}``, ``CASE_0001{ending}``, ...;
the cases of ``labelsTs/`` (with ``imagesTs/``) are the test split when it exists, else every fifth
training case in name order is a test case. NIfTI volumes are read through nibabel (the ``[nifti]``
extra), everything else through Pillow.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

from .._core.errors import expected
from .cases import Case, Source, every_fifth
from .classes import labels_from_json
from .folder import read_dataset_json


def _cases(images: Path, labels: Path, ending: str) -> List[Case]:
    if not labels.is_dir():
        raise expected(f"a folder {labels}", "nothing there")
    if not images.is_dir():
        raise expected(f"a folder {images}", "nothing there")
    channel = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$")
    channels: Dict[str, List[Tuple[int, Path]]] = {}
    for path in images.iterdir():
        found = channel.match(path.name)
        if found and not path.name.startswith("."):
            channels.setdefault(found.group(1), []).append((int(found.group(2)), path))
    cases = []
    for path in sorted(labels.iterdir()):
        if not path.name.endswith(ending) or path.name.startswith("."):
            continue
        name = path.name[: -len(ending)]
        files = sorted(channels.get(name, []))
        if not files:
            raise expected(f"{images.name!r}/{name}_0000{ending} for the label {path.name!r}", "none")
        if [k for k, _ in files] != list(range(len(files))):
            raise expected(f"the channels of case {name} in {images} numbered _0000, _0001, ... without gaps",
                           [p.name for _, p in files])  # fmt: skip
        cases.append(Case(name, tuple(p for _, p in files), path))
    return cases


def nnunet_source(root: Path, spec: str) -> Source:
    """The cases, split and classes of an nnU-Net v2 raw data set (see the module docstring)."""
    root = Path(root)
    description = read_dataset_json(root / "dataset.json")
    if description is None:
        raise expected(f"an nnU-Net dataset.json in {str(root)!r}", "none")
    for key in ("labels", "file_ending"):
        if key not in description:
            raise expected(f'"{key}" in {root / "dataset.json"}', "none")
    ending = description["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise expected(
            f'a "file_ending" such as ".png" or ".nii.gz" in {root / "dataset.json"}', repr(ending)
        )
    declared = labels_from_json(description["labels"], root / "dataset.json")
    names = description.get("channel_names") or description.get("modality")
    channels = len(names) if isinstance(names, dict) and names else None
    train = _cases(root / "imagesTr", root / "labelsTr", ending)
    if not train:
        raise expected(f"label files ending in {ending} in {root / 'labelsTr'}", "none")
    if (root / "labelsTs").is_dir():
        test = _cases(root / "imagesTs", root / "labelsTs", ending)
        if not test:
            raise expected(f"label files ending in {ending} in {root / 'labelsTs'}", "none")
        split = f"imagesTs/ with labelsTs/: {len(train)} train, {len(test)} test cases"
        return Source(spec, tuple(train), tuple(test), split, declared, channels, (root / "dataset.json",))
    train_cases, test_cases, split = every_fifth(train, "cases")
    return Source(spec, train_cases, test_cases, split + " (no labelsTs/)", declared, channels,
                  (root / "dataset.json",))  # fmt: skip
