"""The built-in nuclei data: checksums, class counts, disjoint splits."""

from __future__ import annotations

import hashlib

import pytest
import torch

import seglosses as sl
from seglosses.data import instances_to_classes, nuclei
from seglosses.data.nuclei import _arrays

# sha256 of the arrays' bytes as built by tools/make_nuclei_data.py from stardist 0.9.2
IMAGE_SHA256 = "f5bd38ab39448298bf06f3efa44ad2e5337866877f521d400ab2932b163bc22e"
INSTANCES_SHA256 = "b82b28801dd5840b72d03a6cc5983f5393e2692edc627c73d89aa14cd76c200e"


def test_shipped_arrays_are_intact():
    image, instances = _arrays()
    assert hashlib.sha256(image.tobytes()).hexdigest() == IMAGE_SHA256
    assert hashlib.sha256(instances.tobytes()).hexdigest() == INSTANCES_SHA256
    assert image.shape == instances.shape == (512, 512)
    assert int(instances.max()) == 125 and len(set(instances.ravel().tolist())) == 126


def test_class_counts_of_the_whole_image():
    """Background / interior / boundary; the boundary class is about 3 % of the pixels."""
    _, labels = nuclei(classes=3, split="all")
    counts = torch.bincount(labels.flatten(), minlength=3).tolist()
    assert counts == [209918, 44019, 8207]
    _, binary = nuclei(classes=2, split="all")
    assert torch.bincount(binary.flatten()).tolist() == [209918, 44019 + 8207]


def test_splits_are_disjoint_columns_of_the_image():
    image, labels = nuclei(split="all")
    train_image, train_labels = nuclei(split="train")
    test_image, test_labels = nuclei(split="test")
    assert train_image.shape == (1, 1, 512, 384) and test_labels.shape == (1, 512, 128)
    assert torch.equal(torch.cat([train_labels, test_labels], -1), labels)
    torch.testing.assert_close(torch.cat([train_image, test_image], -1), image)
    torch.testing.assert_close(train_image.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)


def test_instances_to_classes_by_hand():
    """Two touching 2×2 nuclei: every nucleus pixel touches background or the other nucleus."""
    instances = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 1, 2, 2], [0, 1, 1, 2, 2], [0, 0, 0, 0, 0]])
    assert instances_to_classes(instances, 3).tolist() == [
        [0, 0, 0, 0, 0],
        [0, 2, 2, 2, 2],
        [0, 2, 2, 2, 2],
        [0, 0, 0, 0, 0],
    ]
    big = torch.zeros(5, 5, dtype=torch.long)
    big[1:4, 1:4] = 1
    assert instances_to_classes(big, 3)[2, 2] == 1  # the centre of a 3×3 nucleus is interior


def test_errors():
    with pytest.raises(sl.SegLossError, match="split"):
        nuclei(split="val")
    with pytest.raises(sl.SegLossError, match="classes 2 or 3"):
        nuclei(classes=4)
