"""
Compare losses on your own images with ``seglosses compare``
============================================================

``seglosses compare`` trains the same small U-Net once per loss and seed, scores every
test image and writes a report that says which loss is best and whether the difference
is larger than the noise between seeds. This example writes a tiny data set into a
temporary folder, in the layout that ``--data folder:PATH`` reads, runs the comparison
with the smallest useful settings, and shows the verdict and one of the report's
figures.

The same run from a shell::

    seglosses compare ce dice --data folder:PATH --classes background,disc \\
        --epochs 6 --steps 6 --seeds 3 --batch-size 8 --patch 32 --width 8 \\
        --lr 0.01 --out PATH/report
"""

import contextlib
import io
import json
import tempfile
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import seglosses.cli

# %%
# A data set in a folder
# ----------------------
# ``folder:PATH`` reads ``PATH/images`` and ``PATH/masks`` and pairs the files by name.
# Images can be in any format Pillow reads; masks must be lossless (PNG here) and hold
# one class value per pixel. Without ``train/`` and ``test/`` subfolders, every fifth
# pair in name order is a test case, so ten pairs give eight training and two test
# images.
#
# Each 64 x 64 image shows a few bright discs (class 1, about 10 % of the pixels) in
# strong noise.

rng = np.random.default_rng(0)
root = Path(tempfile.mkdtemp()) / "discs"
(root / "images").mkdir(parents=True)
(root / "masks").mkdir()
rows, cols = np.mgrid[:64, :64]
for i in range(10):
    mask = np.zeros((64, 64), dtype=np.uint8)
    for _ in range(rng.integers(3, 6)):
        centre_row, centre_col = rng.integers(8, 56, size=2)
        radius = rng.integers(4, 9)
        mask[(rows - centre_row) ** 2 + (cols - centre_col) ** 2 < radius**2] = 1
    image = np.clip(80 + 80 * mask + rng.normal(0, 25, mask.shape), 0, 255)
    Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"case{i:02d}.png")
    Image.fromarray(mask).save(root / "masks" / f"case{i:02d}.png")
names = [p.name for p in sorted((root / "images").iterdir())]
print(f"{len(names)} image / mask pairs: {names[0]}, {names[1]}, ..., {names[-1]}")

# %%
# Run the comparison
# ------------------
# ``seglosses.cli.main`` takes the command line's arguments as a list. The budget here
# is tiny (6 epochs of 6 steps, a U-Net of width 8, three seeds per loss) so that the
# page builds in seconds; real comparisons use the defaults or more. ``--classes`` names
# the mask values 0 and 1. The command prints progress bars on stderr, which we drop
# here, and the verdict on stdout, which we print again wrapped to the page's width.

out = root / "report"
data = ["--data", f"folder:{root}", "--classes", "background,disc"]
budget = "--epochs 6 --steps 6 --seeds 3 --batch-size 8 --patch 32 --width 8 --lr 0.01"
arguments = ["compare", "ce", "dice", *data, *budget.split(), "--out", str(out)]
printed, progress = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(progress):
    seglosses.cli.main(arguments)
for line in printed.getvalue().splitlines():
    print(textwrap.fill(line, 88))  # wrapped to fit this page

# %%
# The report
# ----------
# The output folder holds ``report.md`` (the verdict first, then every metric with its
# 95 % interval, per seed, per class, the settings and the figures), the same numbers as
# ``results.json`` and ``results.csv``, and three figures. With this budget, plain
# cross-entropy has not yet learned to predict the minority class at all, while Dice,
# which weighs the classes equally whatever their size, has.

print(textwrap.fill(", ".join(sorted(p.name for p in out.iterdir())), 88))
report = (out / "report.md").read_text()
verdict = report[report.index("## Verdict") : report.index("## Results")]
for paragraph in verdict.split("\n\n"):
    print(textwrap.fill(paragraph, 88), end="\n\n")

# %%
# ``results.json`` has every number of the report; here the mean Dice over the
# foreground classes with its interval, and the recall, per loss.

results = json.loads((out / "results.json").read_text())
print(f"{'loss':6}  {'mean Dice [95 % interval]':26}  recall")
for loss, metrics in results["summary"].items():
    low, high = metrics["dice"]["interval"]
    dice = f"{metrics['dice']['value']:.3f} [{low:.3f}, {high:.3f}]"
    print(f"{loss:6}  {dice:26}  {metrics['recall']['value']:.3f}")

# %%
# One of the figures: the predictions of each loss on a test image (seed 0), with false
# positives in magenta and missed foreground in cyan. It is shown at its own size, one
# figure pixel per image pixel.

overlays = plt.imread(out / "overlays.png")
height, width = overlays.shape[:2]
figure = plt.figure(figsize=(width / 100, height / 100), dpi=100)
figure.figimage(overlays)
plt.show()
