"""A user's data sets: folder:PATH and nnunet:PATH, their classes, splits, and an error for every bad file."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import seglosses as sl
from seglosses.data import IGNORE, load_data


def write(path, array, mode=None, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **options)


def make_folder(root, masks, *, image_suffix=".png", mask_suffix=".png", channels=None, names=None):
    """``root/images`` and ``root/masks`` from a list of mask arrays (random grey or colour images)."""
    g = np.random.default_rng(0)
    for k, mask in enumerate(masks):
        name = names[k] if names else f"img{k}"
        shape = mask.shape if channels is None else (*mask.shape, channels)
        write(root / "images" / f"{name}{image_suffix}", g.integers(0, 256, shape, dtype=np.uint8))
        write(root / "masks" / f"{name}{mask_suffix}", mask)
    return root


def three_class_masks(count=6, size=(8, 10), seed=0):
    g = np.random.default_rng(seed)
    return [g.integers(0, 3, size, dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data", three_class_masks())


def test_pairs_are_read_and_split(folder):
    data = load_data(f"folder:{folder}")
    assert data.classes == ("background", "class 1", "class 2") and data.class_source == "the mask values"
    assert [c.name for c in data.test] == ["img4"] and [c.name for c in data.train] == [
        "img0",
        "img1",
        "img2",
        "img3",
        "img5",
    ]
    assert "every fifth pair" in data.split and "5 train, 1 test" in data.split
    image, labels = data.read(data.test[0])
    assert image.shape == (1, 8, 10) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    expected = np.array(Image.open(folder / "masks" / "img4.png"))
    assert labels.dtype == torch.int64 and labels.tolist() == expected.tolist()
    counts = np.stack([np.bincount(np.array(Image.open(folder / "masks" / f"img{k}.png")).ravel(),
                                   minlength=3)
                       for k in (0, 1, 2, 3, 5)])  # fmt: skip
    assert data.train_counts.tolist() == counts.tolist()


def test_jpeg_images_pair_with_png_masks(tmp_path):
    """JPEG images are images like any other (they were reported as unpaired)."""
    root = make_folder(tmp_path, three_class_masks(), image_suffix=".jpg", channels=3)
    data = load_data(f"folder:{root}")
    assert data.channels == 3 and len(data.train) + len(data.test) == 6


def test_a_jpeg_mask_is_refused_with_the_reason(tmp_path):
    root = make_folder(tmp_path, three_class_masks(), mask_suffix=".jpg")
    with pytest.raises(sl.SegLossError, match=r"lossless format.*img0\.jpg.*JPEG compression"):
        load_data(f"folder:{root}")


def test_zero_255_masks_are_background_and_foreground(tmp_path):
    masks = [np.where(m > 0, 255, 0).astype(np.uint8) for m in three_class_masks()]
    data = load_data(f"folder:{make_folder(tmp_path, masks)}")
    assert data.classes == ("background", "foreground") and data.values == (0, 255)
    assert any("0 and 255" in note for note in data.notes)
    _, labels = data.read(data.test[0])
    assert set(labels.unique().tolist()) == {0, 1}
    assert torch.equal(labels, torch.from_numpy((masks[4] == 255).astype(np.int64)))


def test_a_stray_value_is_an_error_that_names_it_and_its_files(tmp_path):
    """One stray pixel of 200 made a 201-class model before; now it is one line naming value and file."""
    masks = three_class_masks()
    masks[2][3, 3] = 200
    masks[5][0, 0] = 200
    root = make_folder(tmp_path, masks)
    with pytest.raises(sl.SegLossError) as error:
        load_data(f"folder:{root}")
    message = str(error.value)
    assert "\n" not in message
    assert "value 200 in img2.png, img5.png" in message and "--ignore-index 200" in message
    data = load_data(f"folder:{root}", ignore_index=200)  # what the message says to pass
    assert data.classes == ("background", "class 1", "class 2")
    _, labels = data.read(data.train[2])
    assert labels[3, 3] == IGNORE and (labels == IGNORE).sum() == 1


def test_a_void_border_with_ignore_index(tmp_path):
    masks = three_class_masks()
    for mask in masks:
        mask[0, :] = 255
    root = make_folder(tmp_path, masks)
    with pytest.raises(
        sl.SegLossError, match="value 255 in img0.png, img1.png, img2.png \\(and 3 more files\\)"
    ):
        load_data(f"folder:{root}")
    data = load_data(f"folder:{root}", ignore_index=255)
    assert data.num_classes == 3 and data.ignore_index == 255
    assert data.train_counts.sum() == 5 * 7 * 10  # the border row counts in no class


def test_classes_option_names_and_count(folder):
    data = load_data(f"folder:{folder}", classes="background,cell,membrane")
    assert data.classes == ("background", "cell", "membrane") and data.class_source == "--classes"
    data = load_data(f"folder:{folder}", classes="4")
    assert data.classes == ("background", "class 1", "class 2", "class 3")
    assert any("'class 3' has no pixels in the training split" in note for note in data.notes)
    with pytest.raises(sl.SegLossError, match=r"classes from --classes\), got value 2 in img0.png"):
        load_data(f"folder:{folder}", classes="bg,cell")
    for bad in ("1", "a,a", "solo", "a,,b"):
        with pytest.raises(sl.SegLossError, match="--classes"):
            load_data(f"folder:{folder}", classes=bad)


def test_dataset_json_declares_names_values_and_ignore(folder):
    masks = three_class_masks()
    for k, mask in enumerate(masks):
        mask[mask == 2] = 7  # classes need not be consecutive values when declared
        mask[0, 0] = 9
        write(folder / "masks" / f"img{k}.png", mask)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "cell": 1, "edge": 7,
                                                                "ignore": 9}}))  # fmt: skip
    data = load_data(f"folder:{folder}")
    assert (
        data.classes == ("background", "cell", "edge") and data.values == (0, 1, 7) and data.ignore_index == 9
    )
    assert data.class_source == "dataset.json"
    _, labels = data.read(data.test[0])
    assert labels[0, 0] == IGNORE and labels.max() == 2
    with pytest.raises(sl.SegLossError, match="--ignore-index to agree"):
        load_data(f"folder:{folder}", ignore_index=255)
    with pytest.raises(sl.SegLossError, match="--classes to agree"):
        load_data(f"folder:{folder}", classes="a,b,c")
    assert load_data(f"folder:{folder}", classes="3").classes == data.classes  # a count that agrees is fine


def test_a_label_outside_the_declared_classes_names_the_file(folder):
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "cell": 1}}))
    with pytest.raises(sl.SegLossError, match=r"value 2 in img0.png.*add the class to dataset.json"):
        load_data(f"folder:{folder}")


def test_explicit_train_and_test_folders(tmp_path):
    make_folder(tmp_path / "train", three_class_masks(3), names=["a", "b", "c"])
    make_folder(tmp_path / "test", three_class_masks(2, seed=1), names=["x", "y"])
    data = load_data(f"folder:{tmp_path}")
    assert [c.name for c in data.train] == ["a", "b", "c"] and [c.name for c in data.test] == ["x", "y"]
    assert "train/ and test/" in data.split
    (tmp_path / "test").rename(tmp_path / "other")
    with pytest.raises(sl.SegLossError, match="both"):
        load_data(f"folder:{tmp_path}")


def test_a_class_absent_from_the_test_split_is_allowed(tmp_path):
    masks = three_class_masks()
    masks[4][masks[4] == 2] = 1
    data = load_data(f"folder:{make_folder(tmp_path, masks)}")
    assert data.present_in_test().tolist() == [True, True, False]


def test_a_test_split_without_foreground_is_an_error(tmp_path):
    masks = three_class_masks()
    masks[4][:] = 0
    with pytest.raises(sl.SegLossError, match="foreground pixels in the test split"):
        load_data(f"folder:{make_folder(tmp_path, masks)}")


def test_non_finite_float_images_name_the_file(tmp_path):
    root = make_folder(tmp_path, three_class_masks())
    values = np.ones((8, 10), dtype=np.float32)
    values[2, 2] = np.nan
    (root / "images" / "img3.png").unlink()
    Image.fromarray(values, mode="F").save(root / "images" / "img3.tif")
    with pytest.raises(sl.SegLossError, match=r"finite image values in .*img3.tif.*1 NaN"):
        load_data(f"folder:{root}")


def test_float_images_are_standardised(tmp_path):
    root = make_folder(tmp_path, three_class_masks())
    values = np.random.default_rng(0).normal(1000, 50, (8, 10)).astype(np.float32)
    (root / "images" / "img0.png").unlink()
    Image.fromarray(values, mode="F").save(root / "images" / "img0.tif")
    image, _ = load_data(f"folder:{root}").read(load_data(f"folder:{root}").train[0])
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std(unbiased=False)) - 1) < 1e-3


def test_sixteen_bit_masks(tmp_path):
    masks = [m.astype(np.uint16) for m in three_class_masks()]
    data = load_data(f"folder:{make_folder(tmp_path, masks)}")
    assert data.num_classes == 3


def test_fingerprint_follows_the_files(folder):
    before = load_data(f"folder:{folder}").fingerprint()
    assert load_data(f"folder:{folder}").fingerprint() == before
    mask = folder / "masks" / "img1.png"
    write(mask, np.zeros((8, 10), dtype=np.uint8) + 1)
    os.utime(mask, ns=(1, 1))
    assert load_data(f"folder:{folder}").fingerprint() != before
    assert (
        load_data(f"folder:{folder}", ignore_index=9).fingerprint()
        != load_data(f"folder:{folder}").fingerprint()
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "masks" / "img2.png").unlink(), r"unpaired \['img2'\]"),
        (lambda root: (root / "images" / "img3.png").write_bytes(b"not an image"),
         r"readable image.*img3.png"),
        (lambda root: write(root / "masks" / "img1.png", np.zeros((9, 10), dtype=np.uint8)),
         r"mask 'img1.png' of its image's size \(8, 10\).*\(9, 10\)"),
        (lambda root: write(root / "masks" / "img0.png", np.zeros((8, 10, 3), dtype=np.uint8)),
         r"single-channel mask.*img0.png"),
        (lambda root: (root / "images" / "img0.tiff").write_bytes(b""), r"one file per name.*img0"),
        (lambda root: write(root / "images" / "img5.png", np.zeros((8, 10, 3), dtype=np.uint8)),
         r"one number of channels"),
    ],
)  # fmt: skip
def test_every_bad_file_is_named(folder, damage, message):
    damage(folder)
    with pytest.raises(sl.SegLossError, match=message):
        load_data(f"folder:{folder}")


def test_missing_folders(tmp_path):
    with pytest.raises(sl.SegLossError, match="images"):
        load_data(f"folder:{tmp_path}")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(sl.SegLossError, match="image files"):
        load_data(f"folder:{tmp_path}")
    with pytest.raises(sl.SegLossError, match="did you mean 'nuclei'"):
        load_data("nucleii")


def test_built_in_data_carry_class_names():
    assert load_data("nuclei").classes == ("background", "nucleus", "nucleus boundary")
    assert load_data("nuclei:2").classes == ("background", "nucleus")
    nuclei = load_data("nuclei")
    assert len(nuclei.test) == 4 and all(nuclei.read(case)[1].shape == (128, 128) for case in nuclei.test)


# --- nnU-Net v2 raw data sets -----------------------------------------------------------------------


def make_nnunet_2d(root, *, test=True, channels=2):
    g = np.random.default_rng(0)
    (root / "dataset.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(k): f"c{k}" for k in range(channels)},
        "labels": {"background": 0, "cell": 1, "ignore": 3}, "numTraining": 6, "file_ending": ".png",
    }))  # fmt: skip
    splits = [("Tr", range(6))] + ([("Ts", range(6, 8))] if test else [])
    for suffix, cases in splits:
        for k in cases:
            label = g.integers(0, 2, (12, 9), dtype=np.uint8)
            label[0, 0] = 3
            write(root / f"labels{suffix}" / f"case_{k:03d}.png", label)
            for c in range(channels):
                image = g.integers(0, 256, (12, 9), dtype=np.uint8)
                write(root / f"images{suffix}" / f"case_{k:03d}_{c:04d}.png", image)
    return root


def test_nnunet_2d_with_a_test_split(tmp_path):
    data = load_data(f"nnunet:{make_nnunet_2d(tmp_path)}")
    assert data.classes == ("background", "cell") and data.ignore_index == 3 and data.channels == 2
    assert len(data.train) == 6 and [c.name for c in data.test] == ["case_006", "case_007"]
    assert "labelsTs" in data.split
    image, labels = data.read(data.test[1])
    assert image.shape == (2, 12, 9) and labels[0, 0] == IGNORE
    second = np.array(Image.open(tmp_path / "imagesTs" / "case_007_0001.png")) / 255
    np.testing.assert_allclose(image[1].numpy(), second, rtol=1e-6)


def test_nnunet_without_labels_ts_splits_every_fifth(tmp_path):
    data = load_data(f"nnunet:{make_nnunet_2d(tmp_path, test=False)}")
    assert [c.name for c in data.test] == ["case_004"] and "every fifth case" in data.split


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "imagesTr" / "case_002_0001.png").unlink(), "one number of channels"),
        (lambda root: (root / "imagesTr" / "case_002_0000.png").unlink(),
         r"channels of case case_002 .* numbered _0000, _0001, ... without gaps"),
        (lambda root: [p.unlink() for p in (root / "imagesTr").glob("case_003_*")], r"case_003_0000.png"),
        (lambda root: (root / "dataset.json").write_text('{"labels": {"background": 0, "a": 1}}'),
         "file_ending"),
        (lambda root: (root / "dataset.json").write_text('{"labels": {"background": 0, "a": [1, 2]}, '
                                                          '"file_ending": ".png"}'), "region labels"),
        (lambda root: (root / "dataset.json").unlink(), "dataset.json"),
    ],
)  # fmt: skip
def test_nnunet_errors(tmp_path, damage, message):
    root = make_nnunet_2d(tmp_path)
    damage(root)
    with pytest.raises(sl.SegLossError, match=message):
        load_data(f"nnunet:{root}")


def test_nnunet_3d_nifti(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    g = np.random.default_rng(0)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {
        "background": 0, "liver": 1, "tumour": 2}, "file_ending": ".nii.gz"}))  # fmt: skip
    for k in range(5):
        label = g.integers(0, 3, (6, 7, 8)).astype(np.float32)  # float label maps are common in NIfTI
        image = g.normal(100, 20, (6, 7, 8)).astype(np.float32)
        for folder, name, array in (("labelsTr", f"liver_{k}.nii.gz", label),
                                    ("imagesTr", f"liver_{k}_0000.nii.gz", image)):  # fmt: skip
            (tmp_path / folder).mkdir(exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), str(tmp_path / folder / name))
    data = load_data(f"nnunet:{tmp_path}")
    assert data.spatial_dims == 3 and data.classes == ("background", "liver", "tumour")
    image, labels = data.read(data.test[0])
    stored = np.asanyarray(nibabel.load(str(tmp_path / "labelsTr" / "liver_4.nii.gz")).dataobj)
    assert (
        image.shape == (1, 8, 7, 6) and labels.tolist() == stored.transpose(2, 1, 0).astype(np.int64).tolist()
    )
    bad = np.full((6, 7, 8), 0.5, dtype=np.float32)
    nibabel.save(nibabel.Nifti1Image(bad, np.eye(4)), str(tmp_path / "labelsTr" / "liver_1.nii.gz"))
    with pytest.raises(sl.SegLossError, match=re.escape("integer class values in the mask")):
        load_data(f"nnunet:{tmp_path}")


def test_weights_command_on_a_folder(folder, capsys):
    from seglosses.cli import main

    main(["weights", f"folder:{folder}", "--json"])
    report = json.loads(capsys.readouterr().out)
    counts = torch.zeros(3, dtype=torch.long)
    for k in [0, 1, 2, 3, 5]:
        mask = torch.from_numpy(np.array(Image.open(folder / "masks" / f"img{k}.png")).astype(np.int64))
        counts += torch.bincount(mask.flatten(), minlength=3)
    assert report["counts"] == counts.tolist() and report["classes"] == ["background", "class 1", "class 2"]


def test_paths_in_messages_are_quoted_on_one_line(tmp_path):
    """Issue 16 item 10: a path holding a newline prints as one line, quoted (repr), in every message."""
    folder = tmp_path / "no such" / "line\nbreak"
    with pytest.raises(sl.SegLossError) as error:
        load_data("folder:" + str(folder))
    message = str(error.value)
    assert "\n" not in message and "line\\nbreak'" in message
