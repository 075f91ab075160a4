"""A user's data: ``images/`` and ``masks/`` folders, paired by file name (PNG or TIFF).

``ROOT/images/a.png`` pairs with ``ROOT/masks/a.png`` (any supported suffix on either side). Masks hold
class indices (a single-channel integer image). Reading needs Pillow (the ``[cli]`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import numpy as np
import torch
from torch import Tensor

from .._core.errors import SegLossError, expected

SUFFIXES = (".png", ".tif", ".tiff")
Pair = Tuple[Tensor, Tensor]


def _files(folder: Path) -> Dict[str, Path]:
    if not folder.is_dir():
        raise expected(f"a folder {folder}", "nothing there")
    files: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in SUFFIXES and not path.name.startswith("."):
            if path.stem in files:
                raise SegLossError(
                    f"expected one file per name in {folder}, got {files[path.stem].name} and {path.name}"
                )
            files[path.stem] = path
    return files


def _read(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as error:
        raise SegLossError(f"expected Pillow to read {path.name}: pip install 'seglosses[cli]'") from error
    try:
        with Image.open(path) as image:
            return np.array(image)
    except Exception as error:  # Pillow raises many kinds for a corrupt file
        raise SegLossError(
            f"expected a readable image, got {path} ({type(error).__name__}: {error})"
        ) from None


def _image_tensor(array: np.ndarray, path: Path) -> Tensor:
    """``(C, H, W)`` float32: integer images divided by their dtype's maximum, float ones as they are."""
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    else:
        raise expected(f"a 2-D grey or colour image in {path}", f"shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.float32) / float(np.iinfo(array.dtype).max))
    return torch.from_numpy(array.astype(np.float32))


def _mask_tensor(array: np.ndarray, path: Path) -> Tensor:
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise expected(
            f"a single-channel integer mask of class indices in {path}",
            f"{array.dtype} of shape {array.shape}",
        )
    return torch.from_numpy(array.astype(np.int64))


def read_folder(root: Path, *, progress: bool = False) -> List[Pair]:
    """Every ``(image (C, H, W) float32, mask (H, W) int64)`` pair under ``root``, sorted by name."""
    root = Path(root)
    images, masks = _files(root / "images"), _files(root / "masks")
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        raise expected(
            "every image to have a mask of the same name and vice versa", f"unpaired {unpaired[:5]}"
        )
    if not images:
        raise expected(f"image files ({', '.join(SUFFIXES)}) in {root / 'images'}", "none")
    pairs: List[Pair] = []
    for name in _progress(sorted(images), progress, f"reading {root}"):
        image = _image_tensor(_read(images[name]), images[name])
        mask = _mask_tensor(_read(masks[name]), masks[name])
        if image.shape[1:] != mask.shape:
            raise expected(
                f"mask {masks[name].name} of its image's size {tuple(image.shape[1:])}",
                f"{tuple(mask.shape)}",
            )
        pairs.append((image, mask))
    channels = {image.shape[0] for image, _ in pairs}
    if len(channels) > 1:
        raise expected("images with one number of channels", sorted(channels))
    return pairs


def _progress(names: List[str], enabled: bool, description: str) -> Iterable[str]:
    if not enabled:
        return names
    from tqdm import tqdm

    return tqdm(names, desc=description, unit="file")
