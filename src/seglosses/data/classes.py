"""The class set of a data set, and the scan that checks every file against it.

The classes come from, in this order: what the data set declares (its ``dataset.json`` in the nnU-Net v2
convention, or the names a built-in data set carries), ``--classes`` (a count or comma-separated names),
or the data itself, whose mask values must then be the consecutive indices ``0..K-1``. A value outside
the class set is an error that names it, the files holding it and what to pass; it never becomes a new
class. Masks holding only 0 and 255 on a two-class task are read as background and foreground.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._core.errors import SegLossError, expected
from .cases import Case, Declared


@dataclass(frozen=True)
class CaseScan:
    """What the scan read of one case: channels, spatial shape, the mask values and their pixel counts."""

    channels: int
    shape: Tuple[int, ...]
    values: np.ndarray
    counts: np.ndarray

    def count_of(self, value: int) -> int:
        hit = np.flatnonzero(self.values == value)
        return int(self.counts[hit[0]]) if hit.size else 0


@dataclass(frozen=True)
class ClassSet:
    names: Tuple[str, ...]
    values: Tuple[int, ...]
    ignore_index: Optional[int]
    source: str
    notes: Tuple[str, ...] = field(default=())


class _ScanCases(torch.utils.data.Dataset):
    """Reads every case once; an error is returned as text so that a worker process passes it on whole."""

    def __init__(self, cases: Sequence[Case]) -> None:
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> object:
        try:
            image, mask = self.cases[index].read()
        except SegLossError as error:
            return str(error)
        values, counts = np.unique(mask, return_counts=True)
        return CaseScan(int(image.shape[0]), tuple(mask.shape), values, counts)


def scan(cases: Sequence[Case], *, workers: int = 0, progress: bool = False) -> List[CaseScan]:
    """Read every case once (in ``workers`` processes): every file readable, image and mask of one size,
    finite image values, the mask values counted. The first bad file raises, named."""
    loader = torch.utils.data.DataLoader(
        _ScanCases(cases), batch_size=None, num_workers=workers, collate_fn=lambda item: item
    )
    items: Iterable[object] = loader
    if progress and len(cases) > 1:
        from tqdm import tqdm

        items = tqdm(loader, total=len(cases), desc="checking the data", unit="case")
    scans = []
    for item in items:
        if isinstance(item, str):
            raise SegLossError(item)
        assert isinstance(item, CaseScan)
        scans.append(item)
    return scans


def parse_classes_option(option: Optional[str]) -> Optional[Tuple[str, ...]]:
    """``--classes``: a count (``3``) gives ``background, class 1, class 2``; names are comma-separated."""
    if option is None:
        return None
    text = str(option).strip()
    if text.isdigit():
        count = int(text)
        if count < 2:
            raise expected("--classes of at least 2 (background and one class)", text)
        return default_names(count)
    names = tuple(name.strip() for name in text.split(","))
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise expected("--classes as a count or at least 2 distinct comma-separated names", repr(text))
    return names


def default_names(count: int) -> Tuple[str, ...]:
    return ("background", *[f"class {k}" for k in range(1, count)])


def resolve_classes(
    cases: Sequence[Case],
    scans: Sequence[CaseScan],
    *,
    declared: Optional[Declared],
    classes_option: Optional[str],
    ignore_option: Optional[int],
) -> ClassSet:
    """The class set (see the module docstring); every mask value checked against it."""
    ignore = _ignore_value(declared, ignore_option)
    names = parse_classes_option(classes_option)
    seen = sorted({int(v) for s in scans for v in s.values} - ({ignore} if ignore is not None else set()))
    notes: List[str] = []
    if declared is not None:
        count_only = str(classes_option).strip().isdigit()
        if (
            names is not None
            and names != declared.names
            and not (count_only and len(names) == len(declared.names))
        ):
            raise expected(
                f"--classes to agree with the classes of {declared.source} ({', '.join(declared.names)})",
                f"{classes_option!r}: drop --classes",
            )
        names, values, source = declared.names, declared.values, declared.source
    elif names is not None:
        values, source = tuple(range(len(names))), "--classes"
    else:
        run = 0
        while run in seen:
            run += 1
        names, values, source = default_names(max(run, 2)), tuple(range(max(run, 2))), "the mask values"
        if run < 2 and not _zero_255(seen, values, ignore):
            if seen == [0]:
                raise SegLossError(
                    "expected masks with foreground classes, got only the value 0 in every mask; "
                    "pass --classes (and check the masks)"
                )
            bad = [v for v in seen if v not in (0, 1)] or seen
            raise SegLossError(
                f"expected mask values 0..K-1 (class indices, background 0), got {_values_text(bad)} in "
                f"{_files_holding(bad, cases, scans)}; pass --classes K, --ignore-index V, or a dataset.json"
            )
    if ignore is not None and ignore in values:
        raise expected(f"an ignored value that is not a class value {values}", f"--ignore-index {ignore}")
    if _zero_255(seen, values, ignore):
        values = (0, 255)
        names = ("background", "foreground") if source == "the mask values" else names
        notes.append(
            "every mask holds only the values 0 and 255: read as background (0) and foreground (255)"
        )
    unexpected = [v for v in seen if v not in values]
    if unexpected:
        raise SegLossError(
            f"expected mask values {_allowed_text(values, ignore)} (classes from {source}), got "
            f"{_values_text(unexpected)} in {_files_holding(unexpected, cases, scans)}; "
            + _hint(unexpected, source)
        )
    return ClassSet(tuple(names), tuple(values), ignore, source, tuple(notes))


def _ignore_value(declared: Optional[Declared], option: Optional[int]) -> Optional[int]:
    declared_ignore = None if declared is None else declared.ignore_index
    if option is not None and declared_ignore is not None and option != declared_ignore:
        raise expected(
            f"--ignore-index to agree with the 'ignore' label of {declared.source} ({declared_ignore})",  # type: ignore[union-attr]
            option,
        )
    return option if option is not None else declared_ignore


def _zero_255(seen: Sequence[int], values: Tuple[int, ...], ignore: Optional[int]) -> bool:
    """0 / 255 masks on a two-class task (255 not the ignored value, no 1 anywhere)."""
    return tuple(values) == (0, 1) and ignore != 255 and 255 in seen and set(seen) <= {0, 255}


def _values_text(values: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in values[:8])
    return f"value{'s' if len(values) > 1 else ''} {shown}" + (
        f" (and {len(values) - 8} more)" if len(values) > 8 else ""
    )


def _allowed_text(values: Tuple[int, ...], ignore: Optional[int]) -> str:
    consecutive = values == tuple(range(len(values)))
    text = f"0..{len(values) - 1}" if consecutive else ", ".join(str(v) for v in values)
    return text + (f" and the ignored {ignore}" if ignore is not None else "")


def _files_holding(values: Sequence[int], cases: Sequence[Case], scans: Sequence[CaseScan]) -> str:
    names = [_case_file(case) for case, s in zip(cases, scans) if any(s.count_of(v) for v in values)]
    shown = ", ".join(names[:3])
    return shown + (f" (and {len(names) - 3} more files)" if len(names) > 3 else "")


def _case_file(case: Case) -> str:
    return case.mask.name if isinstance(case.mask, Path) else case.name


def _hint(values: Sequence[int], source: str) -> str:
    ignore = f"--ignore-index {values[0]}" if len(values) == 1 else "--ignore-index V"
    if source == "the mask values":
        return (
            f"pass {ignore} if it marks pixels to ignore, or declare the classes (--classes or dataset.json)"
        )
    return f"fix those masks, add the class to {source}, or pass {ignore} if it marks pixels to ignore"


def labels_from_json(labels: object, where: Path) -> Declared:
    """Classes from a ``dataset.json`` ``labels`` entry: nnU-Net v2 ``{"background": 0, "tumour": 1,
    "ignore": 255}`` or the older ``{"0": "background", "1": "tumour"}``."""
    if not isinstance(labels, dict) or not labels:
        raise expected(f'a "labels" mapping of class names to mask values in {where}', repr(labels)[:80])
    if all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in labels.items()):
        labels = {name: int(value) for value, name in labels.items()}
    pairs: Dict[str, int] = {}
    ignore = None
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise expected(
                f"one non-negative integer mask value per label in {where} (region labels are not supported)",
                f"{name!r}: {value!r}",
            )
        if name == "ignore":
            ignore = value
        else:
            pairs[name] = value
    order = sorted(pairs, key=pairs.__getitem__)
    values = tuple(pairs[name] for name in order)
    if len(set(values)) != len(values) or len(values) < 2 or values[0] != 0:
        raise expected(
            f"labels with distinct values, background 0 and at least one class in {where}", repr(labels)[:120]
        )
    return Declared(tuple(order), values, where.name, ignore)
