"""Build ``src/seglosses/data/nuclei.npz`` from the PyPI ``stardist`` wheel (run once by a maintainer).

    python -m pip download --no-deps stardist==0.9.2 -d /tmp/stardist-wheel
    python tools/make_nuclei_data.py /tmp/stardist-wheel/stardist-0.9.2-*.whl

The wheel ships ``stardist/data/images/img2d.tif`` and ``mask2d.tif``: a 512×512 fluorescence image of
nuclei and its instance mask (125 nuclei) from the 2018 Data Science Bowl. Both are stored here as
uint8 (the image's values are 0–235; instance ids are renumbered 1..125 in order of first appearance
in row-major order). Reading the TIFFs needs Pillow (not a seglosses dependency).
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "src" / "seglosses" / "data" / "nuclei.npz"


def read_tiff(wheel: zipfile.ZipFile, name: str) -> np.ndarray:
    with Image.open(io.BytesIO(wheel.read(f"stardist/data/images/{name}"))) as image:
        return np.array(image)


def main(wheel_path: str) -> None:
    with zipfile.ZipFile(wheel_path) as wheel:
        image, mask = read_tiff(wheel, "img2d.tif"), read_tiff(wheel, "mask2d.tif")
    assert image.shape == mask.shape == (512, 512) and image.max() < 256
    ids, first = np.unique(mask.ravel(), return_index=True)
    order = ids[np.argsort(first)]
    order = order[order != 0]
    renumber = np.zeros(int(mask.max()) + 1, dtype=np.uint8)
    renumber[order] = np.arange(1, len(order) + 1)
    np.savez_compressed(OUT, image=image.astype(np.uint8), instances=renumber[mask])
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(order)} instances)")


if __name__ == "__main__":
    main(sys.argv[1])
