"""A user's data: ``images/`` and ``masks/`` folders, paired by file name (``folder:PATH``).

``PATH/images/a.jpg`` pairs with ``PATH/masks/a.png``: any format Pillow reads on either side (JPEG
images included; a mask must be lossless), or NIfTI volumes (``.nii.gz``, through nibabel). Masks hold
class values, one channel. The split is explicit when ``PATH/train/{images,masks}`` and
``PATH/test/{images,masks}`` exist; otherwise every fifth pair in name order (the 5th, 10th, ...) is a
test case (the last pair when there are fewer than five). A ``PATH/dataset.json`` with nnU-Net's
``"labels"`` names the classes (and may declare an ``"ignore"`` value).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .._core.errors import SegLossError, expected
from .cases import Case, Declared, Source, every_fifth
from .classes import labels_from_json
from .io import readable, suffix_of

SPLIT_RULE = (
    "PATH/train/{images,masks} and PATH/test/{images,masks} when they exist, else every fifth pair in "
    "name order (the 5th, 10th, ...) is a test case"
)


def _files(folder: Path) -> Dict[str, Path]:
    """Readable files of a folder by name without the format suffix; two files of one name raise."""
    if not folder.is_dir():
        raise expected(f"a folder {str(folder)!r}", "nothing there")
    files: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and readable(path):
            stem = path.name[: len(path.name) - len(suffix_of(path))]
            if stem in files:
                raise SegLossError(
                    f"expected one file per name in {str(folder)!r}, got {files[stem].name!r} and "
                    f"{path.name!r}"
                )
            files[stem] = path
    return files


def folder_cases(root: Path) -> List[Case]:
    """Every image / mask pair of ``root/images`` and ``root/masks``, in name order."""
    images, masks = _files(root / "images"), _files(root / "masks")
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        raise expected(
            "every image to have a mask of the same name and vice versa", f"unpaired {unpaired[:5]}"
        )
    if not images:
        raise expected(f"image files in {root / 'images'}", "none")
    return [Case(name, (images[name],), masks[name]) for name in sorted(images)]


def read_dataset_json(path: Path) -> Optional[dict]:
    """The parsed ``dataset.json``, or None when there is none."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise expected(f"a readable JSON file {str(path)!r}", f"{type(error).__name__}: {error}") from None
    if not isinstance(content, dict):
        raise expected(f"a JSON object in {str(path)!r}", type(content).__name__)
    return content


def folder_source(root: Path, spec: str) -> Source:
    """The cases, split and declared classes of a ``folder:PATH`` data set (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise expected(f"a data folder {str(root)!r}", "nothing there")
    description = read_dataset_json(root / "dataset.json")
    declared: Optional[Declared] = None
    if description is not None and "labels" in description:
        declared = labels_from_json(description["labels"], root / "dataset.json")
    extra = (root / "dataset.json",) if description is not None else ()
    train, test, split = _split(root)
    return Source(spec, train, test, split, declared, extra_files=extra)


def _split(root: Path) -> Tuple[Tuple[Case, ...], Tuple[Case, ...], str]:
    explicit = [(root / name).is_dir() for name in ("train", "test")]
    if not any(explicit):
        return every_fifth(folder_cases(root), "pairs")
    if not all(explicit) or (root / "images").is_dir():
        raise expected(
            f"either {str(root / 'images')!r} and masks, or both {str(root / 'train')!r} and "
            f"{str(root / 'test')!r}",
            ", ".join(name for name in ("images", "train", "test") if (root / name).is_dir()),
        )
    train, test = folder_cases(root / "train"), folder_cases(root / "test")
    return tuple(train), tuple(test), f"the folders train/ and test/: {len(train)} train, {len(test)} test"
