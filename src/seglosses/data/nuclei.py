"""The built-in ``nuclei`` data set: one real fluorescence image with 125 annotated nuclei.

See ``NUCLEI_DATA.txt`` beside this file for its source, licence and citation. Train and test are
disjoint regions of the image: columns ``[0, 384)`` and ``[384, 512)``.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal, Tuple

import numpy as np
import torch
from torch import Tensor

from .._core.errors import expected

TRAIN_COLUMNS = 384


def _arrays() -> Tuple[np.ndarray, np.ndarray]:
    with resources.files(__package__).joinpath("nuclei.npz").open("rb") as handle:
        data = np.load(handle)
        return data["image"], data["instances"]


def instances_to_classes(instances: Tensor, classes: int = 3) -> Tensor:
    """Class map ``(..., H, W)`` int64 from an instance map: 2 classes (background, nucleus) or 3
    (background, interior, boundary). A boundary pixel is a nucleus pixel with a 4-neighbour of another
    label (another nucleus or background); the image edge repeats its pixels, so it adds no boundary.
    """
    if classes not in (2, 3):
        raise expected("classes 2 or 3", repr(classes))
    foreground = instances > 0
    labels = foreground.long()
    if classes == 3:
        padded = torch.nn.functional.pad(instances[None].float(), (1, 1, 1, 1), mode="replicate")[0]
        centre = padded[..., 1:-1, 1:-1]
        differs = (
            (padded[..., :-2, 1:-1] != centre)
            | (padded[..., 2:, 1:-1] != centre)
            | (padded[..., 1:-1, :-2] != centre)
            | (padded[..., 1:-1, 2:] != centre)
        )
        labels[foreground & differs] = 2
    return labels


def nuclei(*, classes: int = 3, split: Literal["train", "test", "all"] = "train") -> Tuple[Tensor, Tensor]:
    """The nuclei image and its labels: ``image (1, 1, H, W)`` float32, standardised with the training
    region's mean and standard deviation, and ``labels (1, H, W)`` int64 with ``classes`` classes (see
    :func:`instances_to_classes`). ``split`` picks the training columns ``[0, 384)``, the test columns
    ``[384, 512)`` or the whole image.
    """
    columns = {"train": slice(0, TRAIN_COLUMNS), "test": slice(TRAIN_COLUMNS, None), "all": slice(None)}
    if split not in columns:
        raise expected("split 'train', 'test' or 'all'", repr(split))
    image_array, instance_array = _arrays()
    image = torch.from_numpy(image_array.astype(np.float32))
    train = image[:, :TRAIN_COLUMNS]
    image = (image - train.mean()) / train.std()
    labels = instances_to_classes(torch.from_numpy(instance_array.astype(np.int64)), classes)
    region = columns[split]
    return image[None, None, :, region].contiguous(), labels[None, :, region].contiguous()
