"""
Deep supervision
================

Networks in the U-Net family are often trained with *deep supervision*: every decoder
level predicts the segmentation at its own resolution, and the loss is a weighted sum
over the levels. nnU-Net trains this way by default. ``seglosses.DeepSupervision`` wraps
any loss: it takes the list of outputs (highest resolution first), resizes the target
to each level once per call (nearest at the pixel centres for class indices, area
averaging for soft targets), and sums the levels with nnU-Net's weights, ``1/2^i``
normalised with the lowest level switched off. A spec string does the same:
``create_loss("deep_supervision(ce + dice)")``.

This example trains a small two-level network on a synthetic problem twice, with and
without the supervision of the coarse level, and plots the loss of each level.
"""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import seglosses as sl
from seglosses.losses.deep_supervision import resize_target

# %%
# Data and model
# --------------
# Three classes: background, discs, and a thin ring around each disc. The network has a
# full-resolution head and a half-resolution head, as a U-Net decoder has.

torch.manual_seed(0)


def make_batch(size=8, side=32):
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    centres = torch.randint(8, side - 8, (size, 2))
    radius = torch.randint(4, 8, (size, 1, 1)).float()
    distance = (
        (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    ).sqrt()
    labels = torch.zeros(size, side, side, dtype=torch.long)
    labels[distance < radius + 1.5] = 2
    labels[distance < radius] = 1
    images = (labels > 0).float()[:, None] + 0.6 * torch.randn(size, 1, side, side)
    return images, labels


class TwoLevelNet(nn.Module):
    def __init__(self, classes=3, width=16):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.coarse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.coarse_head = nn.Conv2d(width, classes, 1)
        self.fine_head = nn.Conv2d(2 * width, classes, 3, padding=1)

    def forward(self, x):
        fine = self.down(x)
        coarse = self.coarse(F.max_pool2d(fine, 2))
        up = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
        return [self.fine_head(torch.cat([fine, up], 1)), self.coarse_head(coarse)]


batches = [make_batch() for _ in range(60)]

# %%
# Training with and without the coarse level's loss
# -------------------------------------------------
# Two levels: nnU-Net's default would switch the coarser one off, so the supervised run
# gives explicit weights. The per-level losses are recorded with the same criterion.

inner = sl.create_loss("ce + dice")
supervised = sl.DeepSupervision(inner, weights=[0.7, 0.3])
plain = sl.DeepSupervision(inner, weights=[1.0, 0.0])  # the full-resolution output only

history = {}
for name, criterion in (("deep supervision", supervised), ("top level only", plain)):
    torch.manual_seed(1)
    model = TwoLevelNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    levels = []
    for images, labels in batches:
        outputs = model(images)
        loss = criterion(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            coarse_labels = resize_target(labels, (16, 16), index=True)
            levels.append(
                [
                    inner(outputs[0], labels).item(),
                    inner(outputs[1], coarse_labels).item(),
                ]
            )
    history[name] = torch.tensor(levels)
    full, half = levels[-1]
    print(f"{name:17s} final loss, full / half resolution: {full:.3f} / {half:.3f}")

# %%
# The coarse head learns only when it is supervised. On this easy problem the
# full-resolution loss does not need the help: both runs end close to each other. Deep
# supervision pays off in deeper networks, whose lower levels get a direct gradient.

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
for axis, level, title in zip(
    axes, (0, 1), ("full resolution (32 × 32)", "half resolution (16 × 16)")
):
    for name, values in history.items():
        axis.plot(values[:, level], label=name)
    axis.set_title(title)
    axis.set_xlabel("step")
axes[0].set_ylabel("ce + dice")
axes[0].legend()
fig.tight_layout()
plt.show()
