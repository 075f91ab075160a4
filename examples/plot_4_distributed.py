"""
Losses and metrics across several processes
===========================================

Under ``torch.distributed`` (for example with ``DistributedDataParallel``), each process
sees only its share of the batch. For most losses that is fine: DDP averages the
gradients, and the average of per-pixel or per-image losses over equal shards is the
loss of the whole batch. A region loss that pools its statistics over the batch
(``DiceLoss(batch=True)``) is different: the Dice of one shard is not the Dice of the
batch. With ``sync=True`` the loss sums its true-positive, false-positive and
false-negative counts over the processes before taking the ratio, so every process
computes the loss of the whole batch. Metrics, class-frequency counters and the adaptive
losses' statistics sum their updates over the processes the same way (for them this is
the default).

This page runs in a single process: it starts a process group of one (``world_size=1``,
the ``gloo`` backend, which works on the CPU), where every collective is a no-op, and
runs the same code that would run on many processes. Saved as a script, the same file
runs on two processes with::

    torchrun --nproc-per-node 2 plot_4_distributed.py

and then shows that both processes compute the loss and the metric of the whole batch.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist

import seglosses as sl
from seglosses.metrics import ConfusionMatrix

# %%
# Start the process group
# -----------------------
# ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and a rendezvous address in the
# environment; without it we create a group of one process that meets through a file.

if "RANK" in os.environ:  # started by torchrun
    dist.init_process_group("gloo")
else:
    rendezvous = Path(tempfile.mkdtemp()) / "rendezvous"
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1
    )
rank, world = dist.get_rank(), dist.get_world_size()
print(f"process {rank} of {world}")

# %%
# A batch, split between the processes
# ------------------------------------
# Every process makes the same batch of eight images (same seed) and keeps its share, a
# contiguous slice of ``8 / world`` images (a ``DistributedSampler`` would deal them out
# in a similar way). The first four images hold large objects, the last four small ones,
# so on two processes the shards' Dice values differ a lot when each is computed on its
# own.

torch.manual_seed(0)
target = torch.zeros(8, 32, 32, dtype=torch.long)
for n in range(8):
    size = 14 if n < 4 else 4
    top, left = torch.randint(0, 32 - size, (2,)).tolist()
    target[n, top : top + size, left : left + size] = 1
# the logits of a model that is right more often than not: the target, plus noise
one_hot = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
logits = 2.0 * one_hot + 1.5 * torch.randn(8, 2, 32, 32)
shard = slice(rank * 8 // world, (rank + 1) * 8 // world)

# %%
# A batch Dice loss with and without ``sync``
# -------------------------------------------
# ``sync=True`` changes nothing on one process. On several, each process passes only its
# shard, and every process returns the Dice loss of the whole batch; after DDP's
# averaging, the gradients equal those of one process on the whole batch.

whole_batch = sl.DiceLoss(batch=True)(logits, target)
local = sl.DiceLoss(batch=True)(logits[shard], target[shard])
synced = sl.DiceLoss(batch=True, sync=True)(logits[shard], target[shard])
print(f"process {rank}: batch Dice loss of the whole batch {whole_batch:.4f}")
print(f"process {rank}: of its own shard {local:.4f}, with sync=True {synced:.4f}")

# %%
# Metrics
# -------
# ``ConfusionMatrix`` (and ``BoundaryIoU``, ``HausdorffDistance``,
# ``sl.ClassFrequency``) sum every update over the processes unless built with
# ``sync=False``: each process updates with its shard and every process then holds the
# counts of the whole batch. Every process must call ``update`` together.

metric = ConfusionMatrix(2)
metric.update(logits[shard], target[shard])
reference = ConfusionMatrix(2, sync=False)
reference.update(logits, target)
synced_dice = [round(d, 4) for d in metric.compute()["dice"].tolist()]
whole_dice = [round(d, 4) for d in reference.compute()["dice"].tolist()]
print(f"process {rank}: Dice per class {synced_dice}, of the whole batch {whole_dice}")

# %%
# A training step under DDP
# -------------------------
# Nothing else changes in a training loop: wrap the model in
# ``DistributedDataParallel``, give each process its shard, and use ``sync=True`` on the
# batch-pooled losses. The embedding losses take the same option
# (``sl.PixelInfoNCELoss(sync=True)`` pairs each process's pixels with every other
# process's pixels).

torch.manual_seed(0)
images = torch.randn(8, 1, 32, 32) + target[:, None].float()
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Conv2d(1, 2, 3, padding=1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
criterion = sl.create_loss("ce + dice(batch=True, sync=True)")
for step in range(3):
    loss = criterion(model(images[shard]), target[shard])
    optimizer.zero_grad()
    loss.backward()  # DDP averages the gradients over the processes here
    optimizer.step()
    if rank == 0:
        print(f"step {step}: loss {loss.item():.4f}")

# %%
# What ``sync`` changes, shown on two simulated shards
# ----------------------------------------------------
# In this one-process build, we can still see the difference by computing the batch Dice
# loss of the two halves that two processes would get. Without ``sync``, each process
# optimises its own shard's value and DDP averages them: that average is a different
# loss from the whole batch's, and it weighs the shard with small objects more. With
# ``sync``, both processes compute the bar on the right.

halves = [slice(0, 4), slice(4, 8)]  # what ranks 0 and 1 of two would get
values = [float(sl.DiceLoss(batch=True)(logits[h], target[h])) for h in halves]
bars = {
    "rank 0's shard": values[0],
    "rank 1's shard": values[1],
    "mean of the shards\n(no sync)": sum(values) / 2,
    "whole batch\n(sync=True)": float(whole_batch),
}
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
ax.bar(list(bars), list(bars.values()), color=["C0", "C0", "C1", "C2"])
for x, value in enumerate(bars.values()):
    ax.text(x, value, f"{value:.3f}", ha="center", va="bottom")
ax.set(ylabel="Dice loss (batch=True)", ylim=(0, 1.15 * max(bars.values())))
ax.set_title("One batch, split between two processes")
plt.show()

# %%
# Real runs
# ---------
# Start one process per GPU with ``torchrun``; across nodes, once on each node::
#
#     torchrun --nproc-per-node 4 train.py
#     torchrun --nnodes 2 --nproc-per-node 4 \
#         --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py
#
# ``seglosses compare --nproc 2`` trains each of its runs this way (gloo on the CPU,
# nccl on GPUs).
#
# Finally, leave the process group.

dist.destroy_process_group()
