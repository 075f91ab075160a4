"""``python -m seglosses``: a five-second demonstration on synthetic data.

The main job is ``seglosses compare``, which compares losses on real data. This demonstration draws
images of random discs (3 classes: background, disc, ring), trains a tiny convolutional network with the
given loss spec for a few steps, and prints every registered loss on the first batch and the loss and
Dice score as training goes.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Tuple

import torch
from torch import Tensor, nn

import seglosses as sl


def synthetic_batch(n: int, size: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Images of one disc each with a ring around it; labels 0 background, 1 disc, 2 ring; noisy pixels."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centers = torch.rand(n, 2, generator=generator) * size * 0.6 + size * 0.2
    radii = torch.rand(n, generator=generator) * size * 0.15 + size * 0.1
    dist = ((yy - centers[:, 0, None, None]) ** 2 + (xx - centers[:, 1, None, None]) ** 2).sqrt()
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[dist < radii[:, None, None] + 2] = 2
    labels[dist < radii[:, None, None]] = 1
    images = labels.float().unsqueeze(1) / 2 + 0.3 * torch.randn(n, 1, size, size, generator=generator)
    return images, labels


def tiny_net(classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(16, classes, 1),
    )  # fmt: skip


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seglosses", description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default="ce + 0.5*dice", help="loss spec string (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=60, help="training steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        criterion = sl.create_loss(args.loss)
    except sl.SegLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    images, labels = synthetic_batch(8, 48, g)
    model = tiny_net(3)
    with torch.no_grad():
        logits = model(images)
    print("every registered softmax loss on the untrained model's first batch:")
    for entry in sl.list_losses(details=True):
        if entry.domain == "softmax":
            print(f"  {entry.name:<16} {float(entry.module()(logits, labels)):.4f}   {entry.description}")
    print(f"\ntraining a tiny network with {args.loss!r} for {args.steps} steps:")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        images, labels = synthetic_batch(8, 48, g)
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 6) == 0 or step == args.steps:
            with torch.no_grad():
                dice = 1 - sl.dice_loss(model(images), labels, include_background=False, smooth=0.0)
            print(f"  step {step:>4}  loss {loss.item():.4f}  foreground Dice {dice.item():.3f}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
