"""The built-in ``brain`` data set: the MNI ICBM152 2009a T1 template with grey / white matter labels.

The three volumes are the files that the ``nilearn`` package ships (the ``[brain]`` extra); they are read
from nilearn's data folder with a small NIfTI-1 reader of our own, so nilearn is never imported. See
``BRAIN_DATA.txt`` beside this file for their source, licence and citation.

Classes: 0 background (everything else, cerebrospinal fluid included), 1 grey matter, 2 white matter. A
voxel is grey / white matter when that map's probability exceeds 0.5; where both do (which the shipped
maps never do: their probabilities sum to at most 1), the larger wins, a tie going to grey matter.

Voxels are 1 mm; arrays are ``(D, H, W)`` = (inferior → superior, anterior → posterior, left → right),
cropped in-plane to the box around the non-zero T1 (the template is skull-stripped). Train and test are
disjoint axial slabs: ``z`` in ``[24, 96)`` and ``[104, 144)`` (voxel index from the bottom of the
volume; the 8 slices between them are left out, so no test slice neighbours a training one); 2-D data
is every fourth slice of a slab.
"""

from __future__ import annotations

import gzip
import struct
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, Literal, Tuple

import numpy as np
import torch
from torch import Tensor

from .._core.errors import SegLossError, expected

FILES = {name: f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")}
TRAIN_Z = (24, 96)
TEST_Z = (104, 144)
SLICE_STEP = 4
INSTALL_HINT = 'pip install "seglosses[brain]"'

# NIfTI-1 datatype codes -> numpy type (without byte order)
DATATYPES = {
    2: "u1",
    4: "i2",
    8: "i4",
    16: "f4",
    64: "f8",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
}


def _data_folder() -> Path:
    """nilearn's ``datasets/data`` folder, found without importing nilearn."""
    spec = find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SegLossError(f"expected the nilearn package for the brain data ({INSTALL_HINT}), got none")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _byte_order(header: bytes, path: Path) -> str:
    for order in "<>":
        if struct.unpack(f"{order}i", header[:4])[0] == 348:
            return order
    raise expected(f"a NIfTI-1 header (sizeof_hdr 348) in {path}", f"{header[:4]!r}")


def read_nifti(path: Path) -> np.ndarray:
    """The voxels of a single-file NIfTI-1 image (``.nii`` or ``.nii.gz``) as float32 ``(z, y, x)``.

    Either byte order; ``scl_slope`` / ``scl_inter`` applied (a slope of 0 means unscaled, as the
    standard says). Only 3-D images (trailing dimensions of size 1 allowed). Raises SegLossError for
    anything else.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 348:
        raise expected(f"a NIfTI-1 file of at least 348 bytes in {str(path)!r}", f"{len(raw)} bytes")
    header = raw[:348]
    order = _byte_order(header, path)
    if header[344:348] != b"n+1\x00":
        raise expected(f"a single-file NIfTI-1 image (magic 'n+1') in {path}", f"{header[344:348]!r}")
    dims = struct.unpack(f"{order}8h", header[40:56])
    if not 3 <= dims[0] <= 7 or any(size != 1 for size in dims[4 : dims[0] + 1]):
        raise expected(f"a 3-D image in {str(path)!r}", f"dim {dims[: dims[0] + 1]}")
    (datatype,) = struct.unpack(f"{order}h", header[70:72])
    if datatype not in DATATYPES:
        raise expected(f"a NIfTI datatype of {sorted(DATATYPES)} in {str(path)!r}", datatype)
    offset, slope, intercept = struct.unpack(f"{order}3f", header[108:120])
    shape = (dims[3], dims[2], dims[1])  # x varies fastest on disk
    dtype = np.dtype(order + DATATYPES[datatype])
    count = int(np.prod(shape))
    if len(raw) < int(offset) + count * dtype.itemsize:
        where = f"{count} voxels of {dtype} after byte {int(offset)} in {str(path)!r}"
        raise expected(where, f"{len(raw)} bytes")
    voxels = np.frombuffer(raw, dtype=dtype, count=count, offset=int(offset)).reshape(shape)
    voxels = voxels.astype(np.float32)
    if slope != 0 and np.isfinite(slope):
        voxels = voxels * np.float32(slope) + np.float32(intercept)
    return voxels


def probabilities(values: np.ndarray) -> np.ndarray:
    """A probability map: divided by its maximum when that exceeds 1 (nilearn's maps are 0..255)."""
    peak = float(values.max(initial=0.0))
    return values / peak if peak > 1 else values


def tissue_labels(grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    """int64 labels from two probability maps: 1 where grey > 0.5, 2 where white > 0.5 and white > grey
    (so where both exceed 0.5 the larger wins, grey on a tie), else 0."""
    labels = np.zeros(grey.shape, dtype=np.int64)
    labels[grey > 0.5] = 1
    labels[(white > 0.5) & (white > grey)] = 2
    return labels


def _in_plane_box(image: np.ndarray) -> Tuple[slice, slice]:
    """Rows and columns holding any non-zero voxel (all of them for an empty image)."""
    box = []
    for axes in ((0, 2), (0, 1)):
        used = np.flatnonzero(np.any(image != 0, axis=axes))
        box.append(slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(None))
    return box[0], box[1]


def volume() -> Tuple[np.ndarray, np.ndarray]:
    """The whole template: image float32 ``(D, H, W)`` scaled to [0, 1] and labels int64 ``(D, H, W)``."""
    folder = _data_folder()
    arrays: Dict[str, np.ndarray] = {}
    for name, file in FILES.items():
        if not (folder / file).is_file():
            raise expected(f"{file!r} in {str(folder)!r} (nilearn >= 0.10; {INSTALL_HINT})", "nothing there")
        arrays[name] = read_nifti(folder / file)[:, ::-1]  # rows from anterior to posterior
    image = arrays["t1"]
    rows, columns = _in_plane_box(image)
    low, high = float(image.min()), float(image.max())
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    labels = tissue_labels(probabilities(arrays["gm"]), probabilities(arrays["wm"]))
    return np.ascontiguousarray(image[:, rows, columns]), np.ascontiguousarray(labels[:, rows, columns])


def brain(
    *, dims: Literal[2, 3] = 2, split: Literal["train", "test", "all"] = "train"
) -> Tuple[Tensor, Tensor]:
    """The brain template's training slab, test slab or both (``all``: ``z`` in ``[24, 144)``, the gap
    included): for ``dims=2`` every fourth axial slice, ``image (N, 1, H, W)`` float32 in [0, 1] and
    ``labels (N, H, W)`` int64; for ``dims=3`` the slab as one volume, ``(1, 1, D, H, W)`` and
    ``(1, D, H, W)``. Raises SegLossError when nilearn (the ``[brain]`` extra) is not installed.
    """
    slabs = {"train": TRAIN_Z, "test": TEST_Z, "all": (TRAIN_Z[0], TEST_Z[1])}
    if split not in slabs:
        raise expected("split 'train', 'test' or 'all'", repr(split))
    if dims not in (2, 3):
        raise expected("dims 2 or 3", repr(dims))
    image, labels = volume()
    start, stop = slabs[split]
    if stop > image.shape[0]:
        raise expected(f"a volume of at least {stop} axial slices", image.shape[0])
    step = SLICE_STEP if dims == 2 else 1
    image_t = torch.from_numpy(image[start:stop:step].copy())
    labels_t = torch.from_numpy(labels[start:stop:step].copy())
    if dims == 2:
        return image_t[:, None], labels_t
    return image_t[None, None], labels_t[None]
