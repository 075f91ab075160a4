"""A data set as the comparison sees it: cases read on demand, the class definition, the split.

A :class:`Case` is one image with its mask: files read when asked for (so a data set larger than memory
works) or, for the built-in data, arrays in memory. A :class:`DataSet` holds the train and test cases,
the classes (names and the mask value of each), the ignored value, the per-case class pixel counts
found by the scan, and what a report must say about where all of this came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .._core.errors import SegLossError, expected
from .io import image_array, mask_array

IGNORE = -1  # the class index of ignored pixels in the labels a DataSet returns


@dataclass(frozen=True, eq=False)
class Case:
    """One image and its mask: ``images`` (files whose channels are stacked in order) and ``mask``, or
    ``arrays`` held in memory: image ``(C, *S)`` float32 and mask ``(*S)`` integer values."""

    name: str
    images: Tuple[Path, ...] = ()
    mask: Optional[Path] = None
    arrays: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def files(self) -> Tuple[Path, ...]:
        return self.images + ((self.mask,) if self.mask is not None else ())

    def read(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(image (C, *S) float32, mask (*S) int64 stored values)``; shapes checked against each other."""
        if self.arrays is not None:
            return self.arrays
        assert self.mask is not None and self.images, "a Case holds files or arrays"
        mask = mask_array(self.mask)
        parts = [image_array(path) for path in self.images]
        for path, part in zip(self.images, parts):
            if part.shape[1:] != mask.shape:
                raise expected(
                    f"mask {self.mask.name!r} of its image's size {part.shape[1:]} ({path.name!r})",
                    mask.shape,
                )
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), mask


@dataclass(frozen=True, eq=False)
class Declared:
    """Classes a data set declares: names in class order, the mask value of each, an ignored value."""

    names: Tuple[str, ...]
    values: Tuple[int, ...]
    source: str  # "dataset.json" or "built in"
    ignore_index: Optional[int] = None


@dataclass(frozen=True, eq=False)
class Source:
    """A data set before its scan: the cases of each split, how the split was made, declared classes."""

    spec: str
    train: Tuple[Case, ...]
    test: Tuple[Case, ...]
    split: str
    declared: Optional[Declared] = None
    channels: Optional[int] = None  # declared image channels (nnU-Net's channel_names), checked by the scan
    extra_files: Tuple[Path, ...] = ()  # files besides the cases' that the data depends on (dataset.json)


def every_fifth(cases: Sequence[Case], what: str) -> Tuple[Tuple[Case, ...], Tuple[Case, ...], str]:
    """The deterministic split: every fifth case in name order (the 5th, 10th, ...) is a test case (the
    last one when there are fewer than five); at least two cases."""
    ordered = sorted(cases, key=lambda case: case.name)
    if len(ordered) < 2:
        raise expected(f"at least 2 {what} (train and test)", len(ordered))
    test = [case for k, case in enumerate(ordered) if k % 5 == 4] or ordered[-1:]
    train = [case for case in ordered if case not in test]
    rule = "every fifth" if len(ordered) >= 5 else "the last"
    text = f"{rule} {what[:-1]} in name order is a test case: {len(train)} train, {len(test)} test"
    return tuple(train), tuple(test), text


@dataclass(frozen=True, eq=False)
class DataSet:
    """Train and test cases with their class definition (see the module docstring).

    ``values[k]`` is the mask value of class ``k`` (named ``classes[k]``); ``ignore_index`` is the mask
    value removed from training and from every metric (None: none). ``train_counts`` / ``test_counts``
    ``(cases, K)`` are the class pixel counts of each case. :meth:`read` gives a case as tensors with
    class indices ``0..K-1`` and :data:`IGNORE` for ignored pixels.
    """

    spec: str
    classes: Tuple[str, ...]
    values: Tuple[int, ...]
    ignore_index: Optional[int]
    train: Tuple[Case, ...]
    test: Tuple[Case, ...]
    train_counts: np.ndarray
    test_counts: np.ndarray
    channels: int
    spatial_dims: int
    split: str  # how the test split was chosen, with the counts
    class_source: str  # where the classes came from (dataset.json, --classes, the data, built in)
    notes: Tuple[str, ...] = ()  # what else the report must say (0 / 255 masks, classes absent from test)
    files_key: str = ""  # a fingerprint of the files (names, sizes, modification times)
    shapes: Tuple[Tuple[int, ...], ...] = ()  # spatial shape of every case, train then test

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def read(self, case: Case) -> Tuple[Tensor, Tensor]:
        """``(image (C, *S) float32, labels (*S) int64)`` with class indices and IGNORE."""
        image, mask = case.read()
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), torch.from_numpy(
            self.to_classes(mask, case)
        )

    def to_classes(self, mask: np.ndarray, case: Optional[Case] = None) -> np.ndarray:
        """Stored mask values -> class indices (IGNORE for the ignored value); any other value raises."""
        known = np.array([*self.values, *([] if self.ignore_index is None else [self.ignore_index])])
        index = np.array([*range(len(self.values)), *([] if self.ignore_index is None else [IGNORE])])
        order = np.argsort(known)
        position = np.searchsorted(known[order], mask).clip(0, len(known) - 1)
        found = known[order][position] == mask
        if not found.all():
            where = f" in {case.mask or case.name}" if case is not None else ""
            raise expected(
                f"mask values {sorted(known.tolist())}{where}", sorted(set(mask[~found].tolist()))[:5]
            )
        return index[order][position].astype(np.int64)

    def definition(self) -> Dict[str, object]:
        """The class definition (part of every run's key)."""
        return {"classes": list(self.classes), "values": list(self.values), "ignore_index": self.ignore_index}

    def fingerprint(self) -> str:
        """What a trained run depends on in the data: the files, the split and the class definition."""
        split = {"train": [c.name for c in self.train], "test": [c.name for c in self.test]}
        text = json.dumps([self.spec, self.files_key, split, self.definition()], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def present_in_test(self) -> np.ndarray:
        """``(K,)`` bool: the classes with at least one test pixel."""
        return self.test_counts.sum(0) > 0


def files_key(cases: Sequence[Case], extra: Sequence[Path] = ()) -> str:
    """A fingerprint of the cases' files: relative names, sizes and modification times."""
    rows: List[Tuple[str, int, int]] = []
    for path in [f for case in cases for f in case.files()] + list(extra):
        try:
            stat = path.stat()
        except OSError as error:
            raise SegLossError(f"expected a readable file, got {str(path)!r} ({error.strerror})") from None
        rows.append((str(path), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()[:16]
