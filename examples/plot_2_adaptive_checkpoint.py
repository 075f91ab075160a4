"""
Resume an adaptive loss from a checkpoint
=========================================

Adaptive losses learn as the model trains: ``AdaptiveFocalLoss`` keeps a running average
of each class's cross-entropy and recall and derives its per-class weights α and
focusing γ from them. That state lives in buffers, so ``state_dict()`` carries it like a
model's weights. A run that is stopped and resumed from a checkpoint must restore the
loss too, or its first steps after the restart use different weights than the
uninterrupted run would have.

This example trains three times on the same batches:

* **A**, 20 steps without a break;
* **B**, 12 steps, a checkpoint (model, optimizer and loss), then everything rebuilt
  from scratch, loaded from the checkpoint, and 8 more steps;
* **C**, the same as B except that the loss is *not* restored.

B reproduces A exactly; C does not.
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import seglosses as sl

# %%
# Data: four classes of very different sizes
# -------------------------------------------
# The labels are bands of a smooth random field, so that class 0 covers about 60 % of
# the pixels and class 3 about 5 %. The image's first channel is the field plus noise;
# the other two are noise. The batches are made once, so that every run sees the same
# ones in the same order.

torch.manual_seed(0)


def make_batch(size=4, side=32):
    field = F.avg_pool2d(
        torch.randn(size, 1, side + 8, side + 8), 9, stride=1
    )  # (N, 1, side, side)
    field = field / field.std()
    labels = torch.bucketize(
        field[:, 0], torch.tensor([0.25, 1.0, 1.6])
    )  # 60 / 25 / 10 / 5 %
    images = torch.cat(
        [field + 0.5 * torch.randn_like(field), torch.randn(size, 2, side, side)], dim=1
    )
    return images, labels


batches = [make_batch() for _ in range(20)]
counts = torch.bincount(
    torch.cat([labels.flatten() for _, labels in batches]), minlength=4
)
print("class fractions:", [round(c, 3) for c in (counts / counts.sum()).tolist()])

# %%
# The model, the optimizer and the loss
# -------------------------------------
# The loss is the adaptive focal loss plus a soft Dice term ramped in over 10 steps.
# Both kinds of state end up in the loss's ``state_dict()``: the focal term's running
# statistics, and the step that the schedule was last set to.


def build(seed=0):
    """A fresh model, optimizer and loss, as a new process would create them."""
    torch.manual_seed(seed)
    model = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    focal = sl.AdaptiveFocalLoss(gamma=2.0, adapt="both", momentum=0.2)
    ramp = sl.Schedule("linear", start=0.0, end=1.0, steps=10)
    criterion = sl.CompoundLoss([(1.0, "focal", focal), (ramp, "dice", sl.DiceLoss())])
    return model, optimizer, criterion


def train(model, optimizer, criterion, steps):
    """Train on the batches ``steps``; return each step's loss and α per class."""
    losses, alphas = [], []
    for step in steps:
        criterion.set_step(step)
        images, labels = batches[step]
        # the focal term folds this batch into its running statistics, then computes
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        alphas.append(
            criterion.losses[0].options["alpha"].tolist()
        )  # the α this step used
    return losses, alphas


# %%
# Run A: 20 steps without a break
# -------------------------------

model, optimizer, criterion = build()
losses_a, alphas_a = train(model, optimizer, criterion, range(20))
state_a = criterion.state_dict()
print("the loss's state after 20 steps:")
for name, value in state_a.items():
    print(f"  {name}: {tuple(value.shape)} {value.dtype}")

# %%
# Run B: stop after 12 steps, save, rebuild, load, continue
# ---------------------------------------------------------
# The checkpoint is an ordinary ``torch.save`` of three state dicts. ``load_state_dict``
# also sizes the per-class statistics: a fresh ``AdaptiveFocalLoss`` does not know the
# number of classes until its first forward or until it is loaded.

model, optimizer, criterion = build()
losses_b, alphas_b = train(model, optimizer, criterion, range(12))

checkpoint = Path(tempfile.mkdtemp()) / "checkpoint.pt"
torch.save(
    {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loss": criterion.state_dict(),
    },
    checkpoint,
)
del model, optimizer, criterion  # as if the process had ended

model, optimizer, criterion = build(
    seed=123
)  # a different initialisation, overwritten below
state = torch.load(checkpoint, weights_only=True)
model.load_state_dict(state["model"])
optimizer.load_state_dict(state["optimizer"])
criterion.load_state_dict(state["loss"])
print(
    "restored step:",
    criterion.step,
    "restored α:",
    [round(a, 3) for a in criterion.losses[0].options["alpha"].tolist()],
)

more_losses, more_alphas = train(model, optimizer, criterion, range(12, 20))
losses_b += more_losses
alphas_b += more_alphas
state_b = criterion.state_dict()

# %%
# Run C: the same, but the loss starts afresh
# -------------------------------------------

model, optimizer, criterion = build(seed=123)
model.load_state_dict(state["model"])
optimizer.load_state_dict(state["optimizer"])  # the loss's state is left out
losses_c, alphas_c = train(model, optimizer, criterion, range(12, 20))
losses_c = losses_b[:12] + losses_c
alphas_c = alphas_b[:12] + alphas_c
state_c = criterion.state_dict()

# %%
# Did the resumed run match?
# --------------------------
# B's losses and final loss state equal A's bit for bit. C's differ from the first step
# after the restart: its running statistics start again from that one batch instead of
# continuing the average over the twelve batches before it.


def same_state(x, y):
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


print(
    "B equals A: losses",
    losses_b == losses_a,
    "| final loss state",
    same_state(state_b, state_a),
)
print(
    "C equals A: losses",
    losses_c == losses_a,
    "| final loss state",
    same_state(state_c, state_a),
)
largest = max(abs(c - a) for c, a in zip(losses_c, losses_a))
print(f"largest loss difference after the restart, C vs A: {largest:.4f}")

# %%
# The three runs side by side: the loss per step (left) and the focal term's α of the
# rarest class, class 3 (right). A and B lie on top of each other; C's α jumps at the
# restart, and its losses drift away from A's. (The loss rises from step 4 on as the
# Dice term is ramped in.)

steps = range(1, 21)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
runs = {
    "A: uninterrupted": (losses_a, alphas_a),
    "B: resumed, loss restored": (losses_b, alphas_b),
    "C: resumed, loss not restored": (losses_c, alphas_c),
}
styles = [
    dict(color="black", linewidth=4, alpha=0.3),
    dict(color="tab:blue", marker="o", markersize=3),
    dict(color="tab:red", linestyle="--"),
]
for (label, (losses, alphas)), style in zip(runs.items(), styles):
    left.plot(steps, losses, label=label, **style)
    right.plot(steps, [a[3] for a in alphas], label=label, **style)
for ax in (left, right):
    ax.axvline(12.5, color="grey", linewidth=1)
    ax.set(xlabel="training step", xticks=range(0, 21, 4))
left.text(12.7, max(losses_a), "restart", color="grey", va="top")
left.set(ylabel="loss", title="Loss per step")
right.set(ylabel="α of class 3", title="Adaptive α of the rarest class")
left.legend()
plt.show()
