"""
Train with a compound loss whose weights follow a schedule
==========================================================

A loss can change during training: here cross-entropy carries the first epochs alone
and a soft Dice term is ramped in over six epochs. The loss is written as one spec
string, the training loop tells it the epoch with ``set_step``, and ``logs()`` gives
each term's value and weight at every step, which we plot at the end.

The data is the built-in ``nuclei`` image that ships with seglosses (a fluorescence
microscopy image with three classes: background, nucleus and nucleus boundary), so
this runs offline in a few seconds.
"""

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from torch import nn

import seglosses as sl
from seglosses.data import nuclei
from seglosses.metrics import ConfusionMatrix

# sphinx_gallery_thumbnail_number = 2
torch.manual_seed(0)

# %%
# The data
# --------
# ``nuclei()`` returns the image ``(1, 1, H, W)``, standardised, and its labels
# ``(1, H, W)``: 0 background, 1 nucleus, 2 nucleus boundary. The training split is
# the left three quarters of the image, the test split the right quarter. The
# boundary class is rare: about 3 % of the pixels.

train_image, train_labels = nuclei(split="train")
test_image, test_labels = nuclei(split="test")
class_names = ["background", "nucleus", "boundary"]
print("train", tuple(train_image.shape), "test", tuple(test_image.shape))
print("pixels per class (train):", torch.bincount(train_labels.flatten()).tolist())


def random_crops(image, labels, count, size=64):
    """``count`` random square crops of the image and its labels: a training batch."""
    height, width = labels.shape[-2:]
    images, targets = [], []
    for _ in range(count):
        top = int(torch.randint(0, height - size + 1, ()))
        left = int(torch.randint(0, width - size + 1, ()))
        images.append(image[0, :, top : top + size, left : left + size])
        targets.append(labels[0, top : top + size, left : left + size])
    return torch.stack(images), torch.stack(targets)


# %%
# The model and the loss
# ----------------------
# Any network that returns logits ``(N, C, H, W)`` will do; this one is four
# convolutions with growing dilation, small enough to train on a CPU in seconds.
#
# The spec string reads like the formula: ``1 · CE + w(t) · Dice``, where ``w(t)``
# goes linearly from 0 at epoch 0 to 1 at epoch 6 and then stays at 1. The Dice term
# leaves out the background class, so it measures the overlap of the two foreground
# classes only. ``criterion.labels`` names the terms: each term's text in the spec.

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 16, 3, padding=2, dilation=2),
    nn.ReLU(),
    nn.Conv2d(16, 16, 3, padding=4, dilation=4),
    nn.ReLU(),
    nn.Conv2d(16, 3, 1),
)
criterion = sl.create_loss(
    "ce + linear(start=0, end=1, steps=6)*dice(include_background=False)"
)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
ce_term, dice_term = criterion.labels
print(criterion.labels)

# %%
# The training loop
# -----------------
# ``criterion.set_step(epoch)`` is the only change to an ordinary loop: the loss never
# counts its own calls, so the schedule follows whatever you pass (an epoch here; an
# iteration count works the same). After every forward, ``criterion.logs()`` holds
# plain floats, ready for a logger: the total (``loss``), each term's unweighted value
# (``loss/<term>``) and each term's weight at this step (``weight/<term>``).

epochs, steps_per_epoch = 14, 8
history = []  # the logs of every training step
test_dice = []  # per-class Dice on the test split after each epoch
for epoch in range(epochs):
    criterion.set_step(epoch)
    model.train()
    for _ in range(steps_per_epoch):
        images, targets = random_crops(train_image, train_labels, count=8)
        loss = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(criterion.logs())

    model.eval()
    with torch.no_grad():
        metric = ConfusionMatrix(3)
        metric.update(model(test_image), test_labels)  # logits: reduced with argmax
        test_dice.append(metric.compute()["dice"].tolist())
    dice_text = ", ".join(f"{d:.2f}" for d in test_dice[-1])
    print(f"epoch {epoch:2d}: loss {history[-1]['loss']:.3f}, test Dice {dice_text}")

# %%
# The loss terms over the steps
# -----------------------------
# Top: each term's unweighted value and the weighted total, which rises while the
# Dice term is ramped in. Bottom left: the weights the schedule gave the two terms.
# Bottom right: the test Dice of the two foreground classes after each epoch; the thin
# boundary class starts to be found only after the Dice term has reached full weight.

steps = range(1, len(history) + 1)
epoch_ends = [steps_per_epoch * (e + 1) for e in range(epochs)]
layout = [["terms", "terms"], ["weights", "scores"]]
fig, axes = plt.subplot_mosaic(layout, figsize=(9, 7), layout="constrained")
terms, weights, scores = axes["terms"], axes["weights"], axes["scores"]
terms.plot(steps, [h[f"loss/{ce_term}"] for h in history], label="cross-entropy")
terms.plot(steps, [h[f"loss/{dice_term}"] for h in history], label="Dice (foreground)")
terms.plot(steps, [h["loss"] for h in history], "k", label="total = CE + w(t) · Dice")
terms.set(xlabel="training step", ylabel="loss", title="Loss terms")
terms.legend(loc="upper right")

weights.plot(steps, [h[f"weight/{ce_term}"] for h in history], label="CE")
weights.plot(steps, [h[f"weight/{dice_term}"] for h in history], label="Dice, w(t)")
weights.set(xlabel="training step", ylabel="weight", ylim=(-0.05, 1.1))
weights.set_title("Term weights (set once per epoch)")
weights.legend(loc="lower right")

for k in (1, 2):
    dice = [d[k] for d in test_dice]
    scores.plot(epoch_ends, dice, "o-", label=class_names[k], color=f"C{k + 1}")
scores.set(xlabel="training step", ylabel="Dice", ylim=(0, 1), title="Test Dice")
scores.legend(loc="center right")
plt.show()

# %%
# What the model predicts
# -----------------------
# The top 128 rows of the test split, its labels and the prediction after the last
# epoch.

with torch.no_grad():
    prediction = model(test_image).argmax(1)
colours = ListedColormap(["black", "tab:green", "gold"])
fig, axes = plt.subplots(1, 3, figsize=(9, 3.6), layout="constrained")
axes[0].imshow(test_image[0, 0, :128], cmap="gray")
axes[1].imshow(
    test_labels[0, :128], cmap=colours, vmin=0, vmax=2, interpolation="nearest"
)
axes[2].imshow(
    prediction[0, :128], cmap=colours, vmin=0, vmax=2, interpolation="nearest"
)
for ax, title in zip(axes, ("test image", "labels", "prediction")):
    ax.set(title=title, xticks=[], yticks=[])
patches = [Patch(color=colours(k), label=name) for k, name in enumerate(class_names)]
fig.legend(handles=patches, loc="outside lower center", ncols=3)
plt.show()
