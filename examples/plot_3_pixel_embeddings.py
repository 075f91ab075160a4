"""
Learn pixel embeddings next to the segmentation
===============================================

A segmentation network can have a second head that maps every pixel to an embedding
vector, trained with a metric-learning loss so that pixels of one class lie close
together and pixels of different classes far apart. Here the total loss is ``CE(logits)
+ 0.1 · InfoNCE(embeddings)``.

The embedding losses take ``(embeddings, labels)`` instead of ``(logits, target)``, so
they are called on their own and added in Python (a spec string such as ``"ce +
0.1*info_nce"`` is refused, because its terms would need different inputs). At the end,
a 2-D projection (PCA) of the embeddings shows the classes before and after training.
"""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import seglosses as sl

# sphinx_gallery_thumbnail_number = 3
torch.manual_seed(0)

# %%
# Data: two textures on noise
# ---------------------------
# Each image has a few rectangles filled with horizontal stripes (class 1) or vertical
# stripes (class 2) on a noisy background (class 0). The stripes average to the
# background's brightness, so a pixel's class depends on its neighbourhood, not on its
# own value.


def make_images(count, side=64):
    wave = torch.sin(1.6 * torch.arange(side, dtype=torch.float32))
    patterns = {
        1: wave[:, None].expand(side, side),
        2: wave[None, :].expand(side, side),
    }
    images = torch.zeros(count, 1, side, side)
    labels = torch.zeros(count, side, side, dtype=torch.long)
    for n in range(count):
        for _ in range(3):
            top, left = torch.randint(0, side - 16, (2,)).tolist()
            height, width = torch.randint(12, 28, (2,)).tolist()
            box = (slice(top, top + height), slice(left, left + width))
            label = int(torch.randint(1, 3, ()))
            labels[n][box] = label
            images[n, 0][box] = patterns[label][box]
    return images + 0.4 * torch.randn_like(images), labels


train_images, train_labels = make_images(32)
test_images, test_labels = make_images(4)
print("pixels per class:", torch.bincount(train_labels.flatten()).tolist())

fig, axes = plt.subplots(1, 2, figsize=(6, 3.2), layout="constrained")
axes[0].imshow(train_images[0, 0], cmap="gray")
axes[1].imshow(train_labels[0], cmap="viridis", vmin=0, vmax=2, interpolation="nearest")
for ax, title in zip(axes, ("an image", "its labels (0, 1, 2)")):
    ax.set(title=title, xticks=[], yticks=[])
plt.show()

# %%
# A network with two heads
# ------------------------
# A small encoder at half resolution, a segmentation head upsampled back to full
# resolution, and an embedding head that stays at half resolution. The embedding losses
# resize the labels to the embeddings' size (nearest neighbour), so the embeddings need
# not be full size.


class SegNet(nn.Module):
    def __init__(self, classes=3, dim=16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.segment = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(32, classes, 1)
        )
        self.embed = nn.Conv2d(32, dim, 1)

    def forward(self, images):
        features = self.encoder(images)
        return self.segment(features), self.embed(
            features
        )  # (N, 3, H, W), (N, 16, H/2, W/2)


net = SegNet()

# %%
# The losses
# ----------
# ``PixelInfoNCELoss`` samples pixels per image and class and contrasts them: each
# sampled pixel is pulled towards the other pixels of its class and pushed from the
# pixels of the other classes. ``max_per_class`` and ``max_total`` cap the sample (and
# so the cost), and a ``torch.Generator`` makes the sampling repeatable. The sample here
# is random; ``strategy="mix"`` would take half of each class's sample from the pixels
# that the segmentation head gets wrong (pass ``logits=`` to the call then).

ce = sl.CrossEntropyLoss()
contrast = sl.PixelInfoNCELoss(
    temperature=0.1,
    max_per_class=100,
    max_total=300,
    generator=torch.Generator().manual_seed(0),
)
optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)


def embeddings_and_labels(images, labels):
    """Unit-length embeddings (M, D) of all pixels of ``images``, and their labels."""
    with torch.no_grad():
        _, embeddings = net(images)
    small = F.interpolate(
        labels[:, None].float(), size=embeddings.shape[-2:], mode="nearest"
    )
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    return F.normalize(flat, dim=1), small.flatten().long()


before = embeddings_and_labels(test_images, test_labels)

# %%
# Training
# --------

history = []
for step in range(80):
    batch = torch.randint(0, len(train_images), (8,))
    images, labels = train_images[batch], train_labels[batch]
    logits, embeddings = net(images)
    ce_value = ce(logits, labels)
    contrast_value = contrast(embeddings, labels)
    loss = ce_value + 0.1 * contrast_value
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history.append((ce_value.item(), contrast_value.item()))
    if step % 20 == 19:
        ce_now, contrast_now = history[-1]
        print(f"step {step + 1}: CE {ce_now:.3f}, InfoNCE {contrast_now:.3f}")

after = embeddings_and_labels(test_images, test_labels)

# %%
# The two losses during training. The InfoNCE value is noisy because each step contrasts
# a new random sample of pixels.

fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
ax.plot([c for c, _ in history], label="cross-entropy")
ax.plot([n for _, n in history], label="pixel InfoNCE (weighted 0.1 in the total)")
ax.set(xlabel="training step", ylabel="loss", title="Training losses")
ax.legend()
plt.show()

# %%
# The embeddings before and after
# -------------------------------
# Each dot is one pixel of the four test images (a random quarter of them), placed by
# the first two principal components of its embedding and coloured by its true class.
# Before training, the classes overlap; after 80 steps each forms its own cluster. The
# loss never names a target point per class: it only pulls pixels of one class together
# and pushes the classes apart.


def pca_2d(points):
    """The first two principal components of the rows of ``points``."""
    centred = points - points.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


names = ["background", "horizontal stripes", "vertical stripes"]
shown = torch.rand(len(before[1]), generator=torch.Generator().manual_seed(0)) < 0.25
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), layout="constrained")
for ax, (points, labels), title in zip(axes, (before, after), ("Before", "After")):
    projected = pca_2d(points)[shown]
    for k, name in enumerate(names):
        x, y = projected[labels[shown] == k].T
        ax.scatter(x, y, s=5, alpha=0.6, label=name, color=f"C{k}")
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"{title} training")
handles, legend_labels = axes[0].get_legend_handles_labels()
fig.legend(handles, legend_labels, loc="outside lower center", ncols=3, markerscale=3)
plt.show()

# %%
# The other embedding losses take the same ``(embeddings, labels)`` inputs and the same
# sampler options. ``CenterLoss`` has no weight inside: weight it where you add it, e.g.
# ``ce(logits, labels) + 0.01 * center(embeddings, labels)``.

_, embeddings = net(test_images)
others = {
    "triplet": sl.TripletLoss(mining="hard", margin=0.2, max_per_class=50),
    "contrastive": sl.ContrastiveLoss(margin=1.0, normalize=True, max_total=300),
    "center": sl.CenterLoss(num_classes=3, dim=16, alpha=0.5),
}
for name, loss_fn in others.items():
    print(f"{name}: {loss_fn(embeddings, test_labels).item():.3f}")
