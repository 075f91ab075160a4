"""Several processes (gloo on CPU) give what one process gives on the whole batch (SPEC section 3).

Each test spawns W processes; batches of 5 samples are split unevenly over them, and batches of 2 leave
the third of 3 processes an empty shard. Every worker computes the one-process reference itself
from the same seeded inputs and compares, so a failure names the rank and the item.
"""

from __future__ import annotations

import itertools
import os
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import seglosses as sl
from seglosses._core.registry import build
from seglosses.distributed import all_gather, all_reduce_sum, exit_spawned_worker
from seglosses.metrics import BoundaryIoU, ConfusionMatrix, HausdorffDistance

pytestmark = pytest.mark.slow  # spawns processes: a few seconds each
SYNCED = ["dice", "jaccard", "tversky", "focal_tversky", "gdl"]
BATCHES = (5, 2)  # 5 samples split unevenly; 2 samples on 3 processes leave one an empty shard


def shard(tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank's contiguous share of the first dim, sizes as even as possible (possibly empty)."""
    return torch.tensor_split(tensor, world)[rank]


def check_losses(rank: int, world: int) -> None:
    g = torch.Generator().manual_seed(0)
    for samples, name in itertools.product(BATCHES, SYNCED):
        logits = torch.randn(samples, 3, 6, 7, generator=g, dtype=torch.float64)
        target = torch.randint(0, 3, (samples, 6, 7), generator=g)
        target[0, :2] = 255
        options = {"batch": True, "ignore_index": 255}
        whole = logits.clone().requires_grad_()
        reference = build(name, **options)(whole, target)
        (reference_grad,) = torch.autograd.grad(reference, whole)
        local = shard(logits, rank, world).clone().requires_grad_()
        loss = build(name, sync=True, **options)(local, shard(target, rank, world))
        (grad,) = torch.autograd.grad(loss, local)
        torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12, msg=f"{name}, {samples}: value")
        expected = world * shard(reference_grad, rank, world)
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-12, msg=f"{name}, {samples}: gradient")


def check_collectives(rank: int, world: int) -> None:
    rows = torch.arange(rank + 1, dtype=torch.float64).repeat_interleave(2).view(-1, 2) + 10 * rank
    if rank == 1:
        rows = rows[:0]  # an empty contribution
    local = rows.clone().requires_grad_()
    gathered = all_gather(local)
    sizes = [0 if r == 1 else r + 1 for r in range(world)]
    assert gathered.shape == (sum(sizes), 2)
    weights = torch.arange(gathered.numel(), dtype=torch.float64).view_as(gathered) * (rank + 1)
    (grad,) = torch.autograd.grad((gathered * weights).sum(), local)
    start = sum(sizes[:rank])
    positions = torch.arange(gathered.numel(), dtype=torch.float64).view_as(gathered)
    summed = positions * sum(range(1, world + 1))  # Σ_r of rank r's weights (r + 1) · position
    torch.testing.assert_close(grad, summed[start : start + sizes[rank]], msg="all_gather gradient")
    value = torch.tensor([float(rank + 1)], dtype=torch.float64, requires_grad=True)
    total = all_reduce_sum(value)
    assert total.item() == world * (world + 1) / 2
    (grad,) = torch.autograd.grad(total * (rank + 1), value)
    assert grad.item() == world * (world + 1) / 2  # the backward sums over ranks


def check_state(rank: int, world: int) -> None:
    g = torch.Generator().manual_seed(1)
    metrics = [
        (lambda **o: ConfusionMatrix(3, **o), lambda m, p, t: m.update(p, t)),
        (lambda **o: HausdorffDistance(3, **o), lambda m, p, t: m.update(p, t)),
        (lambda **o: BoundaryIoU(3, **o), lambda m, p, t: m.update(p, t)),
        (lambda **o: sl.ClassFrequency(3, **o), lambda m, p, t: m.update(t)),
    ]
    for samples, (make, update) in itertools.product(BATCHES, metrics):
        prediction = torch.randint(0, 3, (samples, 12, 10), generator=g)
        target = torch.randint(0, 3, (samples, 12, 10), generator=g)
        single = make(sync=False)
        update(single, prediction, target)
        synced = make()
        update(synced, shard(prediction, rank, world), shard(target, rank, world))
        for key, value in synced.state_dict().items():
            name = f"{type(synced).__name__}.{key}, {samples} samples"
            torch.testing.assert_close(value, single.state_dict()[key], msg=name)


def check_adaptive(rank: int, world: int) -> None:
    """A stateful loss folds in the batch sums of every process: the state of one process's whole batch."""
    g = torch.Generator().manual_seed(3)
    for samples in BATCHES:
        logits = torch.randn(samples, 3, 6, 7, generator=g, dtype=torch.float64)
        target = torch.randint(0, 3, (samples, 6, 7), generator=g)
        single = sl.AdaptiveFocalLoss(adapt="both")
        single.sync = False
        single(logits, target)
        synced = sl.AdaptiveFocalLoss(adapt="both")
        synced(shard(logits, rank, world), shard(target, rank, world))
        for key, value in synced.state_dict().items():
            name = f"AdaptiveFocalLoss.{key}, {samples} samples"
            torch.testing.assert_close(value, single.state_dict()[key], msg=name)


def check_center(rank: int, world: int) -> None:
    """Center loss updates its centers from the whole distributed batch on every process."""
    g = torch.Generator().manual_seed(4)
    for samples in BATCHES:
        embeddings = torch.randn(samples, 4, 6, 7, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (samples, 6, 7), generator=g)
        single = sl.CenterLoss(num_classes=3, dim=4).double()
        single.sync = False
        single(embeddings, labels)
        synced = sl.CenterLoss(num_classes=3, dim=4).double()
        synced(shard(embeddings, rank, world), shard(labels, rank, world))
        torch.testing.assert_close(
            synced.centers, single.centers, msg=f"CenterLoss.centers, {samples} samples"
        )


PAIRED = [
    ("contrastive", {}),
    ("contrastive", {"reduction": "sum", "normalize": True}),
    ("info_nce", {}),
    ("triplet", {}),
    ("triplet", {"average": "nonzero", "squared": True}),
    ("triplet", {"mining": "all"}),
    ("triplet", {"mining": "semi_hard", "margin": 0.5}),
]


def check_embedding(rank: int, world: int) -> None:
    """Pair losses with sync pair each process's pixels with every process's: the one-process loss and,
    times W, its gradient; the 2-sample batch leaves the third of 3 processes an empty shard."""
    g = torch.Generator().manual_seed(5)
    for samples in BATCHES:
        embeddings = torch.randn(samples, 4, 3, 4, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (samples, 3, 4), generator=g)
        labels[0, 0] = 255
        for name, options in PAIRED:
            whole = embeddings.clone().requires_grad_()
            reference = build(name, ignore_index=255, **options)(whole, labels)
            (reference_grad,) = torch.autograd.grad(reference, whole)
            local = shard(embeddings, rank, world).clone().requires_grad_()
            loss = build(name, ignore_index=255, sync=True, **options)(local, shard(labels, rank, world))
            (grad,) = torch.autograd.grad(loss, local)
            name = f"{name}({options}) on {samples} samples"
            torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12, msg=f"{name}: value")
            expected = world * shard(reference_grad, rank, world)
            torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-12, msg=f"{name}: gradient")


def check_ddp(rank: int, world: int) -> None:
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)]
    model = torch.nn.Sequential(*layers).double()
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)

    def make_loss(sync: bool):  # Dice plus InfoNCE on the same output, doubling as pixel embeddings
        dice, info_nce = sl.DiceLoss(batch=True, sync=sync), sl.PixelInfoNCELoss(sync=sync)
        return lambda output, target: dice(output, target) + 0.1 * info_nce(output, target)

    reference = make_loss(sync=False)(model(images), target)
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    loss = make_loss(sync=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    value = loss(ddp(shard(images, rank, world)), shard(target, rank, world))
    value.backward()
    torch.testing.assert_close(value, reference, msg="DDP loss")
    for parameter, expected in zip(model.parameters(), reference_grads):
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-6, atol=1e-12, msg="DDP gradient")
    del ddp  # tear DDP down before the process group


def worker(rank: int, world: int, init_file: str, checks: list, errors) -> None:
    # a short timeout: a rank that fails leaves the others waiting in a collective; fail, never hang
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        for check in checks:
            globals()[check](rank, world)
    except BaseException:  # reported through the queue with the rank, then re-raised for spawn
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise
    finally:
        dist.barrier()
        dist.destroy_process_group()
    exit_spawned_worker()  # reached on success only: a failure above propagates to spawn


@pytest.mark.parametrize("world", [2, 3])
def test_processes_agree_with_one_process(world, tmp_path):
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    checks = ["check_losses", "check_collectives", "check_state", "check_adaptive", "check_center",
              "check_embedding", "check_ddp"]  # fmt: skip
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        mp.spawn(worker, args=(world, str(tmp_path / "rendezvous"), checks, errors), nprocs=world, join=True)
    except Exception:
        reports = []
        while not errors.empty():
            reports.append(errors.get())
        pytest.fail("\n".join(reports) or "a worker failed")


def test_collectives_are_no_ops_outside_a_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_reduce_sum(x) is x and all_gather(x) is x
    metric = ConfusionMatrix(2)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert metric.matrix.sum() == 2
    logits, target = x[None, :, :1], torch.zeros(1, 1).long()
    synced = sl.create_loss("dice(batch=True, sync=True)")(logits, target)
    assert torch.equal(synced, sl.create_loss("dice(batch=True)")(logits, target))


def test_embedding_sync_outside_a_group_is_the_plain_loss():
    g = torch.Generator().manual_seed(6)
    embeddings, labels = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    for name in ("contrastive", "info_nce", "triplet"):
        synced = build(name, sync=True)(embeddings, labels)
        assert torch.equal(synced, build(name)(embeddings, labels)), name
    with pytest.raises(sl.SegLossError, match="process_group"):
        sl.TripletLoss(sync=True, process_group="world")
    with pytest.raises(sl.SegLossError, match="sync"):
        sl.ContrastiveLoss(sync="yes")


def test_sync_needs_batch():
    with pytest.raises(sl.SegLossError, match="batch=True with sync=True"):
        sl.DiceLoss(sync=True)
    with pytest.raises(sl.SegLossError, match="process_group"):
        sl.DiceLoss(batch=True, sync=True, process_group="world")
