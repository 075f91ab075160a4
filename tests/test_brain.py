"""The built-in brain data: the NIfTI reader, the label rule, the splits, on synthetic files and real ones."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import struct
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

import seglosses as sl
from seglosses.data import load_data

brain_module = importlib.import_module("seglosses.data.brain")  # seglosses.data.brain is the function
read_nifti, tissue_labels, probabilities = (
    brain_module.read_nifti,
    brain_module.tissue_labels,
    brain_module.probabilities,
)

# sha256 of the files in the nilearn 0.14.1 wheel (the same bytes as in nilearn 0.10.0)
REAL_SHA256 = {
    "t1": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    "gm": "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    "wm": "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
}
CODES = {"u1": 2, "i2": 4, "f4": 16}


def nifti_bytes(array: np.ndarray, *, order: str = "<", slope: float = 1.0, inter: float = 0.0) -> bytes:
    """A single-file NIfTI-1 image of ``array`` given as ``(z, y, x)``; gzip it yourself."""
    kind = array.dtype.str[1:]
    header = bytearray(348)
    struct.pack_into(f"{order}i", header, 0, 348)
    struct.pack_into(f"{order}8h", header, 40, 3, array.shape[2], array.shape[1], array.shape[0], 1, 1, 1, 1)
    struct.pack_into(f"{order}2h", header, 70, CODES[kind], array.dtype.itemsize * 8)
    struct.pack_into(f"{order}8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into(f"{order}3f", header, 108, 352, slope, inter)
    header[344:348] = b"n+1\x00"
    return bytes(header) + bytes(4) + array.astype(order + kind).tobytes()


def write(path: Path, array: np.ndarray, **options) -> Path:
    path.write_bytes(gzip.compress(nifti_bytes(array, **options)))
    return path


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("kind", ["u1", "i2", "f4"])
def test_reader_round_trip_with_scaling(tmp_path, order, kind):
    """Either byte order, three datatypes; x varies fastest on disk; value = stored · slope + inter."""
    stored = np.arange(4 * 3 * 5, dtype=kind).reshape(4, 3, 5)
    voxels = read_nifti(write(tmp_path / "a.nii.gz", stored, order=order, slope=0.5, inter=-2.0))
    assert voxels.dtype == np.float32 and voxels.shape == (4, 3, 5)
    np.testing.assert_allclose(voxels, stored.astype(np.float64) * 0.5 - 2.0)


def test_reader_zero_slope_means_unscaled_and_plain_nii(tmp_path):
    stored = np.arange(24, dtype="u1").reshape(2, 3, 4)
    (tmp_path / "a.nii").write_bytes(nifti_bytes(stored, slope=0.0, inter=7.0))
    np.testing.assert_array_equal(read_nifti(tmp_path / "a.nii"), stored)


def test_reader_rejects_what_it_cannot_read(tmp_path):
    good = nifti_bytes(np.zeros((2, 3, 4), dtype="u1"))
    cases = {
        "sizeof_hdr 348": bytes(4) + good[4:],
        "magic 'n\\+1'": good[:344] + b"ni1\x00" + good[348:],
        "348 bytes": good[:100],
        "voxels of uint8": good[:-1],
        "datatype": good[:70] + struct.pack("<h", 128) + good[72:],
        "a 3-D image": good[:40] + struct.pack("<8h", 4, 4, 3, 2, 2, 1, 1, 1) + good[56:],
    }
    for message, data in cases.items():
        (tmp_path / "bad.nii").write_bytes(data)
        with pytest.raises(sl.SegLossError, match=message):
            read_nifti(tmp_path / "bad.nii")


def test_label_rule():
    """Above 0.5 only (0.5 itself is background); where both maps are above, the larger, grey on a tie."""
    grey = np.array([0.2, 0.5, 0.51, 0.2, 0.0, 0.6, 0.7, 0.6])
    white = np.array([0.2, 0.2, 0.3, 0.5, 0.51, 0.7, 0.6, 0.6])
    assert tissue_labels(grey, white).tolist() == [0, 0, 1, 0, 2, 2, 1, 1]


def test_probabilities_rescale_only_maps_above_one():
    np.testing.assert_allclose(probabilities(np.array([0.0, 128.0, 255.0])), [0, 128 / 255, 1])
    np.testing.assert_allclose(probabilities(np.array([0.0, 0.25, 0.75])), [0, 0.25, 0.75])


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """A 150-slice template of 10 × 12 voxels: T1 = slice index + 1 inside rows 2..9 and columns 3..7
    (0 outside, so that is the crop), grey matter in the upper half of each slice, white in the lower."""
    depth, rows, columns = 150, 12, 10
    t1 = np.zeros((depth, rows, columns), dtype="u1")
    t1[:, 2:10, 3:8] = np.arange(1, depth + 1)[:, None, None]
    grey = np.zeros_like(t1)
    white = np.zeros_like(t1)
    grey[:, 2:6, 3:8] = 200  # rows 2..5 on disk: the posterior end, the bottom once flipped
    white[:, 6:10, 3:8] = 255
    white[:, 6:10, 3] = 127  # 127 / 255, just below one half: background
    for name, array in (("t1", t1), ("gm", grey), ("wm", white)):
        write(tmp_path / brain_module.FILES[name], array)
    monkeypatch.setattr(brain_module, "_data_folder", lambda: tmp_path)
    return tmp_path


def slice_indices(image: torch.Tensor) -> list:
    """The axial index of each slice of a synthetic image, from its T1 value (index + 1) / 150."""
    return [round(float(value) * 150) - 1 for value in image.amax(dim=(-1, -2)).flatten()]


def test_synthetic_shapes_crop_and_orientation(synthetic):
    image, labels = sl.data.brain(dims=2, split="train")
    assert image.shape == (18, 1, 8, 5) and labels.shape == (18, 8, 5)
    assert image.dtype == torch.float32 and labels.dtype == torch.int64
    assert float(image.min()) > 0 and float(image.max()) <= 1
    # flipped: the anterior rows (disk rows 6..9, white matter) come first
    assert labels[0, :4, 1:].unique().tolist() == [2] and labels[0, :4, 0].unique().tolist() == [0]
    assert labels[0, 4:].unique().tolist() == [1]
    volume, volume_labels = sl.data.brain(dims=3, split="test")
    assert volume.shape == (1, 1, 40, 8, 5) and volume_labels.shape == (1, 40, 8, 5)


def test_splits_are_disjoint_axial_slabs(synthetic):
    """2-D: every fourth slice of z in [24, 96) and [104, 144); 3-D: every slice of them."""
    train = slice_indices(sl.data.brain(dims=2, split="train")[0])
    test = slice_indices(sl.data.brain(dims=2, split="test")[0])
    assert train == list(range(24, 96, 4)) and test == list(range(104, 144, 4))
    assert slice_indices(sl.data.brain(dims=2, split="all")[0]) == list(range(24, 144, 4))
    train_3d = slice_indices(sl.data.brain(dims=3, split="train")[0][0, 0])
    test_3d = slice_indices(sl.data.brain(dims=3, split="test")[0][0, 0])
    assert train_3d == list(range(24, 96)) and test_3d == list(range(104, 144))
    assert min(test_3d) - max(train_3d) > 8


def test_load_data_pairs(synthetic):
    slices = load_data("brain")
    assert (len(slices.train), len(slices.test)) == (18, 10)
    assert slices.classes == ("background", "grey matter", "white matter")
    image, labels = slices.read(slices.test[0])
    assert image.shape == (1, 8, 5) and labels.shape == (8, 5)
    volumes = load_data("brain:3d")
    image, labels = volumes.read(volumes.train[0])
    assert len(volumes.train) == len(volumes.test) == 1 and volumes.spatial_dims == 3
    assert image.shape == (1, 72, 8, 5) and labels.shape == (72, 8, 5)


def test_bad_options(synthetic):
    with pytest.raises(sl.SegLossError, match="split"):
        sl.data.brain(split="val")  # type: ignore[arg-type]
    with pytest.raises(sl.SegLossError, match="dims 2 or 3"):
        sl.data.brain(dims=4)  # type: ignore[arg-type]
    with pytest.raises(sl.SegLossError, match="did you mean 'brain'"):
        load_data("brains")


def test_missing_nilearn_says_how_to_install(monkeypatch):
    monkeypatch.setattr(brain_module, "find_spec", lambda name: None)
    for call in (lambda: sl.data.brain(), lambda: load_data("brain:3d")):
        with pytest.raises(sl.SegLossError, match=r'nilearn.*pip install "seglosses\[brain\]"'):
            call()


def test_missing_file_in_nilearn(synthetic):
    (synthetic / brain_module.FILES["wm"]).unlink()
    with pytest.raises(sl.SegLossError, match="mni_icbm152_wm.*nothing there"):
        sl.data.brain()


def test_short_volume(tmp_path, monkeypatch):
    for name in ("t1", "gm", "wm"):
        write(tmp_path / brain_module.FILES[name], np.ones((100, 4, 4), dtype="u1"))
    monkeypatch.setattr(brain_module, "_data_folder", lambda: tmp_path)
    sl.data.brain(split="train")
    with pytest.raises(sl.SegLossError, match="at least 144 axial slices"):
        sl.data.brain(split="test")


@pytest.mark.skipif(find_spec("nilearn") is None, reason="nilearn (the [brain] extra) is not installed")
def test_real_template():
    """The files nilearn ships, read without importing nilearn: checksums, sizes, class counts."""
    folder = brain_module._data_folder()
    for name, digest in REAL_SHA256.items():
        assert hashlib.sha256((folder / brain_module.FILES[name]).read_bytes()).hexdigest() == digest
    assert read_nifti(folder / brain_module.FILES["t1"]).shape == (189, 233, 197)
    image, labels = sl.data.brain(dims=2, split="train")
    assert image.shape == (18, 1, 181, 145) and float(image.max()) <= 1
    assert torch.bincount(labels.flatten(), minlength=3).tolist() == [210084, 176389, 85937]
    _, labels = sl.data.brain(dims=2, split="test")
    assert torch.bincount(labels.flatten(), minlength=3).tolist() == [146186, 65002, 51262]
    image, labels = sl.data.brain(dims=3, split="test")
    assert image.shape == (1, 1, 40, 181, 145) and labels.shape == (1, 40, 181, 145)
    assert "nilearn" not in sys.modules
