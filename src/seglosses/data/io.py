"""Reading one image or mask file: 2-D formats through Pillow, 3-D NIfTI volumes through nibabel.

Images become ``(C, *S)`` float32 arrays: integer 2-D images divided by their type's largest value
(8-bit grey or colour in ``[0, 1]``); float images and every NIfTI volume standardised per channel to zero
mean and unit variance (intensities of arbitrary scale, as nnU-Net normalises non-CT images). Masks
stay integer arrays of their stored values. A lossy mask (JPEG and friends), a float mask with
non-integer values, a non-finite image value and an unreadable file are errors that name the file.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Dict

import numpy as np

from .._core.errors import SegLossError, expected

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Pillow formats whose usual encodings lose information: label values would change at edges
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "JPEG2000", "WEBP", "AVIF"})


@lru_cache(maxsize=1)
def pillow_formats() -> Dict[str, str]:
    """File suffix (lower case, with the dot) -> Pillow format name, for every format Pillow can open."""
    try:
        from PIL import Image
    except ImportError:
        return {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}  # named so that the error can say Pillow
    Image.init()
    return {suffix: name for suffix, name in Image.registered_extensions().items() if name in Image.OPEN}


def suffix_of(path: Path) -> str:
    """The file's format suffix in lower case, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def readable(path: Path) -> bool:
    """Whether ``path`` is a visible file in a format we read (by its suffix)."""
    suffix = suffix_of(path)
    return not path.name.startswith(".") and (suffix in NIFTI_SUFFIXES or suffix in pillow_formats())


def read_array(path: Path) -> np.ndarray:
    """The stored array: ``(H, W)`` or ``(H, W, channels)`` from Pillow, ``(D, H, W)`` from NIfTI (the
    file's axes reversed, so that axis 0 runs along the slices)."""
    if suffix_of(path) in NIFTI_SUFFIXES:
        return _read_nifti(path)
    try:
        from PIL import Image
    except ImportError as error:
        raise SegLossError(f"expected Pillow to read {path.name!r}: pip install 'seglosses[cli]'") from error
    try:
        with Image.open(path) as image:
            return np.array(image)
    except Exception as error:  # Pillow raises many kinds for a corrupt file
        raise SegLossError(
            f"expected a readable image, got {str(path)!r} ({type(error).__name__}: {error})"
        ) from None


def _read_nifti(path: Path) -> np.ndarray:
    try:
        import nibabel
    except ImportError:
        raise SegLossError(
            f"expected nibabel to read the NIfTI file {path.name!r}: pip install 'seglosses[nifti]'"
        ) from None
    try:
        volume = np.asanyarray(nibabel.load(str(path)).dataobj)  # type: ignore[attr-defined]
    except Exception as error:  # nibabel raises many kinds for a corrupt file
        raise SegLossError(
            f"expected a readable image, got {str(path)!r} ({type(error).__name__}: {error})"
        ) from None
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise expected(f"a 3-D NIfTI volume in {str(path)!r}", f"shape {volume.shape}")
    return np.ascontiguousarray(volume.transpose(2, 1, 0))


def is_lossy(path: Path) -> bool:
    """Whether the file's format is lossy (by Pillow's reading of it, so a misnamed file is caught)."""
    if suffix_of(path) in NIFTI_SUFFIXES:
        return False
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.format in LOSSY_FORMATS
    except Exception:  # unreadable: read_array names the file
        return False


def image_array(path: Path) -> np.ndarray:
    """A normalised ``(C, *S)`` float32 image (see the module docstring)."""
    array = read_array(path)
    nifti = suffix_of(path) in NIFTI_SUFFIXES
    if nifti:
        array = array[None]
    elif array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    else:
        raise expected(f"a 2-D grey or colour image in {str(path)!r}", f"shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not nifti and np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    array = array.astype(np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        raise expected(f"finite image values in {str(path)!r}", f"{int(bad.sum())} NaN or infinite")
    return standardise(array)


def standardise(array: np.ndarray) -> np.ndarray:
    """Per channel ``(x - mean) / std`` over the spatial axes (``std`` 0: only the mean removed)."""
    axes = tuple(range(1, array.ndim))
    mean = array.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = array.std(axis=axes, keepdims=True, dtype=np.float64)
    return ((array - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def mask_array(path: Path) -> np.ndarray:
    """The stored label values of a single-channel mask, as int64 ``(*S)``."""
    if is_lossy(path):
        raise expected(
            f"a mask in a lossless format (PNG, TIFF, NIfTI) in {str(path)!r}",
            "a lossy format (JPEG compression changes label values at object edges): save masks as PNG",
        )
    array = read_array(path)
    nifti = suffix_of(path) in NIFTI_SUFFIXES
    if not nifti and array.ndim != 2:
        raise expected(
            f"a single-channel mask of class values in {str(path)!r}", f"{array.dtype} of shape {array.shape}"
        )
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):  # NIfTI label maps are often stored as floats
        if np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)):
            return array.astype(np.int64)
        raise expected(f"integer class values in the mask {str(path)!r}", f"non-integer {array.dtype} values")
    raise expected(f"a mask of integer class values in {str(path)!r}", f"dtype {array.dtype}")
