"""Built-in real data (shipped with the package or, for ``brain``, with nilearn; no download at run time)
and the user's data sets.

A data spec names a data set:

* ``nuclei`` (background, nucleus, nucleus boundary) and ``nuclei:2`` (background, nucleus): one
  fluorescence image; training on its columns ``[0, 384)``, testing on the four 128 × 128 tiles of
  columns ``[384, 512)``;
* ``brain`` (background, grey matter, white matter; axial slices of the MNI152 template, the
  ``[brain]`` extra) and ``brain:3d`` (the same as one volume per split);
* ``folder:PATH`` (``PATH/images`` and ``PATH/masks``, see :mod:`seglosses.data.folder`);
* ``nnunet:PATH`` (an nnU-Net v2 raw data set, see :mod:`seglosses.data.nnunet`).

:func:`load_data` reads every file once to check it (readable, sizes, finite values, mask values
within the class set) and returns a :class:`DataSet` whose cases are read again on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .._core.errors import expected, unknown_choice
from .brain import brain
from .cases import IGNORE, Case, DataSet, Declared, Source, files_key
from .classes import CaseScan, resolve_classes, scan
from .folder import SPLIT_RULE, folder_source
from .nnunet import nnunet_source
from .nuclei import instances_to_classes, nuclei

BUILT_IN = ("nuclei", "nuclei:2", "brain", "brain:3d")
NUCLEI_TILE = 128
CLASS_NAMES = {
    "nuclei": ("background", "nucleus", "nucleus boundary"),
    "nuclei:2": ("background", "nucleus"),
    "brain": ("background", "grey matter", "white matter"),
}


def load_data(
    spec: str,
    *,
    classes: Optional[str] = None,
    ignore_index: Optional[int] = None,
    workers: int = 0,
    progress: bool = False,
) -> DataSet:
    """The data set ``spec`` names (see the module docstring), checked and with its classes resolved.

    ``classes`` is ``--classes`` (a count or comma-separated names) and ``ignore_index`` the mask value
    to ignore; see :mod:`seglosses.data.classes` for the order in which the class set is decided.
    ``workers`` processes read the files.
    """
    source = _source(spec)
    cases = [*source.train, *source.test]
    scans = scan(cases, workers=workers, progress=progress)
    channels, dims = _one_layout(cases, scans, source)
    class_set = resolve_classes(
        cases, scans, declared=source.declared, classes_option=classes, ignore_option=ignore_index
    )
    counts = np.array([[s.count_of(v) for v in class_set.values] for s in scans], dtype=np.int64)
    train_counts, test_counts = counts[: len(source.train)], counts[len(source.train) :]
    notes = list(class_set.notes)
    for k, name in enumerate(class_set.names):
        if train_counts[:, k].sum() == 0:
            notes.append(f"class {name!r} has no pixels in the training split")
    if not test_counts[:, 1:].any():
        raise expected(
            "foreground pixels in the test split (nothing to score)", f"only {class_set.names[0]!r}"
        )
    return DataSet(
        spec=spec, classes=class_set.names, values=class_set.values, ignore_index=class_set.ignore_index,
        train=source.train, test=source.test, train_counts=train_counts, test_counts=test_counts,
        channels=channels, spatial_dims=dims, split=source.split, class_source=class_set.source,
        notes=tuple(notes), files_key=files_key(cases, source.extra_files),
        shapes=tuple(s.shape for s in scans),
    )  # fmt: skip


def _one_layout(cases: Sequence[Case], scans: Sequence[CaseScan], source: Source) -> "tuple[int, int]":
    """Every case's image channels and spatial rank agree (and match the declared channels)."""
    layouts = sorted({(s.channels, len(s.shape)) for s in scans})
    if len(layouts) > 1:
        first = next(
            c.name
            for c, s in zip(cases, scans)
            if (s.channels, len(s.shape)) != (scans[0].channels, len(scans[0].shape))
        )
        raise expected("images with one number of channels and spatial dims",
                       f"(channels, dims) {layouts}, e.g. {first!r} differs from "
                       f"{cases[0].name!r}")  # fmt: skip
    channels, dims = layouts[0]
    if source.channels is not None and channels != source.channels:
        raise expected(f"{source.channels} image channels (channel_names of dataset.json)", channels)
    if dims not in (2, 3):
        raise expected("2-D images or 3-D volumes", f"{dims} spatial dims")
    return channels, dims


def _source(spec: str) -> Source:
    if not isinstance(spec, str):
        raise expected("a data spec string", repr(spec))
    for prefix, reader in (("folder:", folder_source), ("nnunet:", nnunet_source)):
        if spec.startswith(prefix):
            return reader(Path(spec[len(prefix) :]), spec)
    if spec not in BUILT_IN:
        raise unknown_choice("a data set (or folder:PATH, nnunet:PATH)", spec, BUILT_IN)
    return _built_in(spec)


def _built_in(spec: str) -> Source:
    names = CLASS_NAMES[spec.split(":")[0] if spec.startswith("brain") else spec]
    declared = Declared(names, tuple(range(len(names))), "built in")
    splits: List[List[Case]] = []
    for split in ("train", "test"):
        if spec.startswith("brain"):
            image, labels = brain(dims=3 if spec == "brain:3d" else 2, split=split)
        else:
            image, labels = nuclei(classes=2 if spec == "nuclei:2" else 3, split=split)
        arrays = list(zip(image.numpy(), labels.numpy()))
        if spec.startswith("nuclei") and split == "test":  # four tiles: units for the bootstrap
            arrays = [
                (a[:, r : r + NUCLEI_TILE], m[r : r + NUCLEI_TILE])
                for a, m in arrays
                for r in range(0, m.shape[0], NUCLEI_TILE)
            ]
        splits.append([Case(f"{split} {k + 1}", arrays=(a, m)) for k, (a, m) in enumerate(arrays)])
    text = {
        "nuclei": f"built in: columns [0, 384) train, the four {NUCLEI_TILE}-pixel tiles of columns "
        "[384, 512) test",
        "brain": "built in: disjoint axial slabs, z in [24, 96) train and [104, 144) test",
    }[spec.split(":")[0]]
    return Source(spec, tuple(splits[0]), tuple(splits[1]), text, declared)


__all__ = [
    "BUILT_IN", "IGNORE", "SPLIT_RULE", "Case", "DataSet", "brain", "instances_to_classes", "load_data",
    "nuclei",
]  # fmt: skip
