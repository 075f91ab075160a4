"""A user's images/ and masks/ folders: pairing, reading, and an error for every bad file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import seglosses as sl
from seglosses.data import load_data, read_folder


def write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


@pytest.fixture
def folder(tmp_path):
    g = np.random.default_rng(0)
    for k in range(6):
        write(tmp_path / "images" / f"img{k}.png", g.integers(0, 256, (8, 10), dtype=np.uint8))
        write(tmp_path / "masks" / f"img{k}.tif", g.integers(0, 3, (8, 10), dtype=np.uint8))
    return tmp_path


def test_pairs_are_read_and_split(folder):
    pairs = read_folder(folder)
    assert len(pairs) == 6
    image, mask = pairs[0]
    assert image.shape == (1, 8, 10) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert mask.shape == (8, 10) and mask.dtype == torch.int64
    expected = np.array(Image.open(folder / "masks" / "img0.tif"))
    assert mask.tolist() == expected.tolist()
    splits = load_data(f"folder:{folder}")
    assert len(splits["train"]) == 5 and len(splits["test"]) == 1  # every fifth pair is test
    assert torch.equal(splits["test"][0][1], pairs[4][1])


def test_colour_images_have_three_channels(tmp_path):
    write(tmp_path / "images" / "a.png", np.zeros((4, 5, 3), dtype=np.uint8))
    write(tmp_path / "masks" / "a.png", np.zeros((4, 5), dtype=np.uint8))
    assert read_folder(tmp_path)[0][0].shape == (3, 4, 5)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "masks" / "img2.tif").unlink(), r"unpaired \['img2'\]"),
        (
            lambda root: (root / "images" / "img3.png").write_bytes(b"not an image"),
            r"readable image.*img3.png",
        ),
        (
            lambda root: write(root / "masks" / "img1.tif", np.zeros((9, 10), dtype=np.uint8)),
            r"mask img1.tif of its image's size \(8, 10\), got \(9, 10\)",
        ),
        (
            lambda root: write(root / "masks" / "img0.tif", np.zeros((8, 10, 3), dtype=np.uint8)),
            r"single-channel integer mask.*img0.tif",
        ),
        (lambda root: (root / "images" / "img0.tiff").write_bytes(b""), r"one file per name.*img0"),
    ],
)
def test_every_bad_file_is_named(folder, damage, message):
    damage(folder)
    with pytest.raises(sl.SegLossError, match=message):
        read_folder(folder)


def test_missing_folders(tmp_path):
    with pytest.raises(sl.SegLossError, match="images"):
        read_folder(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(sl.SegLossError, match="image files"):
        read_folder(tmp_path)
    with pytest.raises(sl.SegLossError, match="did you mean 'nuclei'"):
        load_data("nucleii")


def test_weights_command_on_a_folder(folder, capsys):
    from seglosses.cli import main

    main(["weights", f"folder:{folder}", "--json"])
    import json

    report = json.loads(capsys.readouterr().out)
    counts = torch.zeros(3, dtype=torch.long)
    for k in [0, 1, 2, 3, 5]:
        mask = torch.from_numpy(np.array(Image.open(folder / "masks" / f"img{k}.tif")).astype(np.int64))
        counts += torch.bincount(mask.flatten(), minlength=3)
    assert report["counts"] == counts.tolist()
