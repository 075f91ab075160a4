"""Skeletonisation (seglosses.ops.skeleton) and the Skeleton Recall loss (issue 20, item 2).

The thinning is compared with scikit-image's ``skeletonize`` (2-D Zhang-Suen, 3-D Lee et al.) and with
plain per-pixel references written here; the loss with hand-derived values and with the authors'
``SoftSkeletonRecallLoss`` and ``SkeletonTransform`` re-stated in plain torch / numpy.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import IGNORE

import seglosses as sl
from seglosses.losses.skeleton_recall import (
    BinarySkeletonRecallLoss,
    SkeletonRecallLoss,
    SkeletonTransform,
    binary_skeleton_recall_loss,
    skeleton_recall_loss,
    target_skeletons,
)
from seglosses.ops.skeleton import dilate_cross, skeletonize

ndi = pytest.importorskip("scipy.ndimage")


# --- plain references --------------------------------------------------------------------------------

# scikit-image's Zhang-Suen deletion table (1: first subiteration, 2: second, 3: both), by code ranges
_TABLE = (
    "00010013003110130000000020203033" "00000000300000000000000020003022"
    "00000000000000000000000000000000" "20000000200020003000000030003020"
    "00310013000000010000000000000001" "31000000000000002000000000000000"
    "23130013000000010000000000000000" "23010001000000003301000022002000"
)  # fmt: skip
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # bits 1, 2, 4, ..., 128


def reference_zhang_suen(image: np.ndarray) -> np.ndarray:
    """Pixel by pixel: each subiteration decides every pixel from the image before it, then deletes."""
    x = np.pad(image.astype(bool), 1)
    changed = True
    while changed:
        changed = False
        for subiteration in (1, 2):
            delete = []
            for i, j in zip(*np.nonzero(x)):
                code = sum(1 << k for k, (di, dj) in enumerate(_RING) if x[i + di, j + dj])
                if int(_TABLE[code]) & subiteration:
                    delete.append((i, j))
            for i, j in delete:
                x[i, j] = False
            changed |= bool(delete)
    return x[1:-1, 1:-1]


def _euler_of_cubes(cube: np.ndarray) -> int:
    """Euler characteristic of the union of the closed unit cubes of a 3 × 3 × 3 bool array: vertices -
    edges + faces - cubes. The cell at lattice corner ``c`` spanning the unit steps along ``axes`` is
    present when a voxel ``c - d`` holds it, ``d`` in {0, 1}^3 with ``d_a = 0`` along ``axes``."""
    padded = np.pad(cube, 1)  # voxel v at padded[v + 1]; corners 0..3 per axis
    chi = 0
    for size in range(4):
        for axes in itertools.combinations(range(3), size):
            present = np.zeros((4, 4, 4), bool)
            for d in itertools.product((0, 1), repeat=3):
                if not any(d[a] for a in axes):
                    present |= padded[1 - d[0] : 5 - d[0], 1 - d[1] : 5 - d[1], 1 - d[2] : 5 - d[2]]
            inside = tuple(slice(0, 3) if a in axes else slice(0, 4) for a in range(3))
            chi += (-1) ** size * int(present[inside].sum())
    return chi


def _lee_deletable(cube: np.ndarray) -> bool:
    """Lee et al.'s conditions on a 3 × 3 × 3 neighbourhood: not an end point, the Euler characteristic
    kept, the neighbours one 26-connected set (or none)."""
    return cube.sum() != 2 and _euler_kept(cube) and _simple(cube)


def _euler_kept(cube: np.ndarray) -> bool:
    without = cube.copy()
    without[1, 1, 1] = False
    return _euler_of_cubes(cube) == _euler_of_cubes(without)


def _simple(cube: np.ndarray) -> bool:
    without = cube.copy()
    without[1, 1, 1] = False
    return ndi.label(without, structure=np.ones((3, 3, 3)))[1] <= 1


def reference_lee(volume: np.ndarray, euler: bool) -> np.ndarray:
    """Lee et al. 1994 as scikit-image runs it, voxel by voxel: per border direction the candidates,
    then their sequential re-check in raster order (``euler``: Euler invariance re-checked too)."""
    x = np.pad(volume.astype(bool), 1)
    directions = [(1, -1), (1, 1), (2, 1), (2, -1)] + [(0, 1), (0, -1)] * (volume.shape[0] > 1)
    changed = True
    while changed:
        changed = False
        for axis, sign in directions:
            step = [0, 0, 0]
            step[axis] = sign
            candidates = []
            for p in zip(*np.nonzero(x)):
                outside = tuple(c + s for c, s in zip(p, step))
                cube = x[p[0] - 1 : p[0] + 2, p[1] - 1 : p[1] + 2, p[2] - 1 : p[2] + 2]
                if not x[outside] and _lee_deletable(cube):
                    candidates.append(p)
            for p in candidates:
                cube = x[p[0] - 1 : p[0] + 2, p[1] - 1 : p[1] + 2, p[2] - 1 : p[2] + 2]
                if _simple(cube) and (not euler or _euler_kept(cube)):
                    x[p] = False
                    changed = True
    return x[1:-1, 1:-1, 1:-1]


def reference_1d(line: np.ndarray) -> np.ndarray:
    """Delete the left end, then the right end, of every run longer than one pixel, until none is."""
    x = np.pad(line.astype(bool), 1)
    changed = True
    while changed:
        changed = False
        for side in (-1, 1):
            ends = [i for i in np.nonzero(x)[0] if not x[i + side] and x[i - side]]
            x[ends] = False
            changed |= bool(ends)
    return x[1:-1]


# --- masks ---------------------------------------------------------------------------------------------


def blobs(shape, sigma, seed, level=0.0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.standard_normal(shape), sigma) > level


def disk(shape, center, radius, inner=-1.0):
    grid = np.indices(shape)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
    return (distance <= radius) & (distance > inner)


def masks_2d():
    yield "square", np.pad(np.ones((9, 13), bool), 2)
    yield "line", np.pad(np.eye(7, 9, dtype=bool), 1)
    yield "ring", disk((21, 23), (10, 11), 9, inner=4)
    yield "thin ring", disk((15, 15), (7, 7), 5, inner=4)
    yield "touching border", np.ones((6, 8), bool)
    yield "noise", np.random.default_rng(1).random((17, 19)) < 0.6
    for seed in range(6):
        yield f"blobs {seed}", blobs((40, 37), 1 + seed, seed)


def masks_3d():
    tube = np.zeros((11, 9, 9), bool)
    tube[1:10, 3:6, 3:6] = True
    yield "tube", tube
    yield "shell", disk((13, 13, 13), (6, 6, 6), 5.5, inner=3)
    yield "ball", disk((11, 12, 10), (5, 6, 5), 4.2)
    yield "slab", np.pad(np.ones((3, 8, 9), bool), 1)
    yield "depth 1", blobs((1, 20, 18), 2, 7)
    yield "noise", np.random.default_rng(2).random((9, 10, 8)) < 0.5
    for seed in range(4):
        yield f"blobs {seed}", blobs((16, 18, 17), 1.5 + seed / 2, seed)


def ours(mask: np.ndarray, preserve_topology: bool = True) -> np.ndarray:
    return skeletonize(torch.from_numpy(mask)[None], preserve_topology=preserve_topology)[0].numpy()


# --- the skeletonisation -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, mask", list(masks_2d()), ids=[n for n, _ in masks_2d()])
def test_2d_equals_scikit_image_and_the_reference(name, mask):
    skimage_morphology = pytest.importorskip("skimage.morphology")
    expected = skimage_morphology.skeletonize(mask)
    np.testing.assert_array_equal(ours(mask), expected)
    if mask.size <= 900:
        np.testing.assert_array_equal(reference_zhang_suen(mask), expected)


@pytest.mark.parametrize("name, mask", list(masks_3d()), ids=[n for n, _ in masks_3d()])
def test_3d_equals_scikit_image(name, mask):
    """With ``preserve_topology=False``; the default differs only where scikit-image loses topology (a
    plate three voxels thick vanishes there)."""
    skimage_morphology = pytest.importorskip("skimage.morphology")
    expected = skimage_morphology.skeletonize(mask)
    np.testing.assert_array_equal(ours(mask, preserve_topology=False), expected)
    if name != "slab":
        np.testing.assert_array_equal(ours(mask), expected)
    else:
        assert not expected.any() and ndi.label(ours(mask))[1] == 1


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("euler", [False, True])
def test_3d_equals_the_sequential_reference(seed, euler):
    """The Jacobi sweeps give the sequential re-check's result exactly (no scikit-image needed)."""
    mask = np.random.default_rng(seed).random((6, 7, 6)) < 0.55
    mask |= blobs((6, 7, 6), 1.2, seed)
    if seed == 2:
        mask[:] = False
        mask[1:4, 1:6, 1:5] = True  # a plate: scikit-image's re-check deletes it
    np.testing.assert_array_equal(ours(mask, preserve_topology=euler), reference_lee(mask, euler))


def test_neighbourhood_tests_equal_the_brute_force_ones():
    """Euler invariance (octant table) and simplicity (bit flood fill) on random 3 × 3 × 3
    neighbourhoods, against the cell counts and scipy's labelling above."""
    from seglosses.ops import skeleton as ops

    rng = np.random.default_rng(0)
    cubes = rng.random((600, 3, 3, 3)) < rng.uniform(0.1, 0.9, size=(600, 1, 1, 1))
    cubes[:, 1, 1, 1] = True
    flat = torch.from_numpy(cubes.reshape(-1, 27)).to(torch.uint8)
    euler = ops._euler_invariant(flat).numpy()
    simple = ops._connected(ops._codes(flat, torch.arange(27))).numpy()
    for cube, e, c in zip(cubes, euler, simple):
        assert e == _euler_kept(cube) and c == _simple(cube)


@pytest.mark.slow
def test_2d_every_4x4_pattern_equals_scikit_image():
    skimage_morphology = pytest.importorskip("skimage.morphology")
    codes = torch.arange(1 << 16)
    patterns = ((codes[:, None] >> torch.arange(16)) & 1).bool().view(-1, 4, 4)
    skeletons = skeletonize(patterns).numpy()
    for pattern, skeleton in zip(patterns.numpy(), skeletons):
        np.testing.assert_array_equal(skeleton, skimage_morphology.skeletonize(pattern))


def test_samples_are_thinned_on_their_own():
    masks = [blobs((20, 22), 2, seed) for seed in range(4)]
    together = skeletonize(torch.from_numpy(np.stack(masks))).numpy()
    for mask, skeleton in zip(masks, together):
        np.testing.assert_array_equal(skeleton, ours(mask))
    volumes = [blobs((8, 9, 10), 1.5, seed) for seed in range(3)]
    together = skeletonize(torch.from_numpy(np.stack(volumes))).numpy()
    for volume, skeleton in zip(volumes, together):
        np.testing.assert_array_equal(skeleton, ours(volume))


@pytest.mark.parametrize("dims", [2, 3])
def test_topology_is_kept(dims):
    """Subset of the mask; same number of components and same Euler number (8- / 26-connectivity);
    thin: no full 2 × 2 square in 2-D (pixel noise can leave one, each of its pixels holding a branch
    or a hole, in scikit-image's skeleton too)."""
    measure = pytest.importorskip("skimage.measure")
    cases = masks_2d() if dims == 2 else masks_3d()
    full = np.ones((3,) * dims)
    for name, mask in cases:
        skeleton = ours(mask)
        assert not (skeleton & ~mask).any()
        assert ndi.label(skeleton, full)[1] == ndi.label(mask, full)[1]
        assert measure.euler_number(skeleton, dims) == measure.euler_number(mask, dims)
        if dims == 2 and name != "noise":
            squares = skeleton[:-1, :-1] & skeleton[1:, :-1] & skeleton[:-1, 1:] & skeleton[1:, 1:]
            assert not squares.any()


def test_hand_derived_2d():
    """A one-pixel line (codes of one or two opposite neighbours: kept) stays; a one-pixel square ring
    loses its four corners (a corner's code E + S = 40 is deleted in both subiterations) and stays a
    ring; a filled square thins to its middle row."""
    line = np.zeros((5, 9), bool)
    line[2, 1:8] = True
    np.testing.assert_array_equal(ours(line), line)
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    expected = ring.copy()
    expected[[1, 1, 5, 5], [1, 5, 1, 5]] = False
    np.testing.assert_array_equal(ours(ring), expected)
    bar = np.zeros((7, 11), bool)
    bar[2:5, 1:10] = True
    assert ours(bar)[3, 2:8].all() and ours(bar).sum() in range(6, 10)


def test_hand_derived_3d_tube():
    """A 3 × 3 bar along the depth axis thins to its centre line, end voxels included."""
    tube = np.zeros((9, 5, 5), bool)
    tube[1:8, 1:4, 1:4] = True
    expected = np.zeros_like(tube)
    expected[1:8, 2, 2] = True
    np.testing.assert_array_equal(ours(tube), expected)


def test_1d_keeps_the_middle_of_each_run():
    line = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 1], bool)
    expected = np.zeros_like(line)
    expected[[0, 3, 6, 11, 15]] = True
    np.testing.assert_array_equal(ours(line), expected)
    rng = np.random.default_rng(0)
    for _ in range(20):
        random_line = rng.random(30) < 0.7
        np.testing.assert_array_equal(ours(random_line), reference_1d(random_line))


def test_dtypes_empty_and_full_inputs():
    mask = blobs((12, 13), 1.5, 3)
    as_float = skeletonize(torch.from_numpy(mask)[None].double() * 3)
    assert as_float.dtype == torch.bool and np.array_equal(as_float[0].numpy(), ours(mask))
    assert skeletonize(torch.zeros(0, 4, 5)).shape == (0, 4, 5)
    assert not skeletonize(torch.zeros(2, 4, 5, 6, dtype=torch.bool)).any()


@pytest.mark.parametrize(
    "bad, match",
    [([1, 0], "torch.Tensor"), (torch.ones(5, dtype=torch.bool), "1 to 3 spatial"),
     (torch.ones(1, 2, 2, 2, 2), "1 to 3 spatial"), (torch.ones(1, 3, dtype=torch.complex64), "real")],
)  # fmt: skip
def test_bad_masks_raise(bad, match):
    with pytest.raises(sl.SegLossError, match=match):
        skeletonize(bad)


def test_compiles_without_a_graph_break():
    mask = torch.from_numpy(blobs((2, 15, 16), 1.5, 4))
    compiled = torch.compile(skeletonize, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(mask), skeletonize(mask))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_equals_cpu():
    for mask in (blobs((3, 64, 70), 3, 0), blobs((2, 24, 26, 22), 2, 1)):
        cpu = torch.from_numpy(mask)
        assert torch.equal(skeletonize(cpu.cuda()).cpu(), skeletonize(cpu))


# --- the tube ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 15, 17), (1, 9, 10, 11)])
@pytest.mark.parametrize("times", [0, 1, 2, 3])
def test_tube_is_the_forks_footprint(shape, times):
    """The fork dilates with ``ndi.iterate_structure(ndi.generate_binary_structure(ndim, 1), 2)``."""
    mask = np.random.default_rng(times).random(shape) < 0.05
    footprint = ndi.iterate_structure(ndi.generate_binary_structure(len(shape) - 1, 1), times)
    expected = ndi.binary_dilation(mask[0], footprint) if times else mask[0]
    grown = dilate_cross(torch.from_numpy(mask), times, len(shape) - 1)[0].numpy()
    np.testing.assert_array_equal(grown, expected)


# --- the transform against the fork's ----------------------------------------------------------------


def fork_tubed_skeleton(seg: np.ndarray, tube: int = 2) -> np.ndarray:
    """The fork's ``SkeletonTransform._add_skeleton``, re-stated (MIC-DKFZ/Skeleton-Recall,
    skeleton_recall/training/data_augmentation/skeletonization.py, commit 56c19155): skeleton of
    ``seg > 0``, dilated by the cross iterated ``tube`` times, times the labels."""
    skimage_morphology = pytest.importorskip("skimage.morphology")
    if not seg.any():
        return np.zeros_like(seg)
    skeleton = skimage_morphology.skeletonize(seg > 0)
    if tube:
        footprint = ndi.iterate_structure(ndi.generate_binary_structure(seg.ndim, 1), tube)
        skeleton = ndi.binary_dilation(skeleton, footprint)
    return skeleton * seg


def label_maps(shape, classes, seed):
    """Blobs of classes ``1..classes-1`` (touching each other) on background."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int64)
    for c in range(1, classes):
        labels[blobs(shape, 2.0, seed * 10 + c, level=0.15) & (rng.random(shape) < 2)] = c
    return labels


@pytest.mark.parametrize("shape", [(31, 29), (12, 14, 13)])
@pytest.mark.parametrize("tube", [0, 2])
def test_transform_equals_the_forks(shape, tube):
    labels = label_maps(shape, 4, seed=len(shape) + tube)
    forked = fork_tubed_skeleton(labels, tube)
    transform = SkeletonTransform(4, tube=tube, include_background=False, preserve_topology=False)
    skeletons = transform(torch.from_numpy(labels))
    assert skeletons.shape == (4, *shape) and skeletons.dtype == torch.bool
    assert not skeletons[0].any()
    for c in range(1, 4):
        np.testing.assert_array_equal(skeletons[c].numpy(), forked == c)


def test_transform_background_and_binary_forms():
    labels = label_maps((25, 27), 3, seed=5)
    skeletons = SkeletonTransform(3, tube=1, include_background=True)(torch.from_numpy(labels))
    background = labels == 0
    expected = dilate_cross(torch.from_numpy(ours(background))[None], 1, 2)[0].numpy() & background
    np.testing.assert_array_equal(skeletons[0].numpy(), expected)
    channels = np.stack([labels == 1, labels >= 1])  # multi-label: each channel on its own
    binary = SkeletonTransform(tube=1)(torch.from_numpy(channels))
    for c in range(2):
        grown = dilate_cross(torch.from_numpy(ours(channels[c]))[None], 1, 2)[0].numpy()
        np.testing.assert_array_equal(binary[c].numpy(), grown & channels[c])


def test_ignored_pixels_belong_to_no_skeleton():
    labels = torch.from_numpy(label_maps((20, 21), 3, seed=2))
    ignored = labels.clone()
    ignored[:, :6] = IGNORE
    skeletons = target_skeletons(ignored[None], 3, ignore_index=IGNORE)[0]
    assert not skeletons[:, :, :6].any()
    cleared = torch.where(ignored == IGNORE, -1, labels)  # -1: no class at all
    torch.testing.assert_close(skeletons, target_skeletons(cleared[None], 3)[0])


# --- the loss ----------------------------------------------------------------------------------------


def fork_skeleton_recall(x, skeleton_labels, loss_mask=None, batch_dice=False, smooth=1.0):
    """The fork's ``SoftSkeletonRecallLoss.forward`` re-stated in plain torch (MIC-DKFZ/Skeleton-Recall,
    skeleton_recall/training/loss/dice.py, commit 56c19155), ``apply_nonlin`` softmax, ``do_bg=False``:
    ``-mean((Σ p y + s) / max(Σ y + s, 1e-8))`` over the foreground channels of the one-hot skeleton
    labels, optionally multiplied by ``loss_mask`` and pooled over the batch."""
    probs = torch.softmax(x, 1)[:, 1:]
    onehot = torch.zeros_like(x).scatter_(1, skeleton_labels[:, None].long(), 1)[:, 1:]
    axes = list(range(2, x.ndim))
    mask = 1 if loss_mask is None else loss_mask[:, None].to(x.dtype)
    sum_gt = (onehot * mask).sum(axes)
    inter = (probs * onehot * mask).sum(axes)
    if batch_dice:
        inter, sum_gt = inter.sum(0), sum_gt.sum(0)
    return -((inter + smooth) / torch.clip(sum_gt + smooth, 1e-8)).mean()


@pytest.mark.parametrize("shape", [(2, 4, 24, 26), (2, 3, 10, 11, 12)])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_equals_the_forks_loss_plus_one(shape, batch, ignore):
    """On the fork's inputs (its tubed skeleton label map; the ignore mask as its compound loss builds
    it): ours with ``include_background=False`` is the fork's ``-recall`` plus 1, gradient included."""
    n, c, *spatial = shape
    labels = np.stack([label_maps(tuple(spatial), c, seed=k) for k in range(n)])
    skeleton_labels = torch.from_numpy(np.stack([fork_tubed_skeleton(s) for s in labels]))
    target = torch.from_numpy(labels)
    mask = None
    if ignore:
        mask = torch.rand(target.shape, generator=torch.Generator().manual_seed(0)) > 0.3
        target = target.masked_fill(~mask, IGNORE)
        skeleton_labels = torch.where(mask, skeleton_labels, 0)
    logits = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    logits.requires_grad_()
    skeletons = torch.zeros(shape, dtype=torch.bool).scatter_(1, skeleton_labels[:, None], True)
    value = skeleton_recall_loss(
        logits, target, skeletons, include_background=False, batch=batch,
        ignore_index=IGNORE if ignore else None,
    )  # fmt: skip
    expected = 1 + fork_skeleton_recall(logits, skeleton_labels, mask, batch_dice=batch)
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(value, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)


def test_hand_derived_line_ring_and_tube():
    """``p = sigmoid(0) = 1/2`` everywhere: ``L = 1 - (n/2 + 1) / (n + 1)`` for ``n = |S|``.
    Line of 7 pixels: its own skeleton, and the tube cut by the mask is the line again: n = 7.
    The 8-pixel diamond ring (city-block distance 2 from a centre) is thin already: n = 8.
    3-D: the 3 × 3 bar of length 7 thins to its 7-voxel centre line; one cross dilation covers the
    5-voxel cross of each slice (the ends stick out of the mask): n = 35; two cover each whole
    3 × 3 slice (corners at city-block distance 2): n = 63."""
    line = torch.zeros(1, 1, 5, 9)
    line[0, 0, 2, 1:8] = 1
    ring = torch.zeros(1, 1, 7, 7)
    for i, j in itertools.product(range(7), repeat=2):
        ring[0, 0, i, j] = float(abs(i - 3) + abs(j - 3) == 2)
    bar = torch.zeros(1, 1, 9, 5, 5)
    bar[0, 0, 1:8, 1:4, 1:4] = 1
    for target, tube, n in (
        (line, 2, 7),
        (line, 0, 7),
        (ring, 2, 8),
        (bar, 0, 7),
        (bar, 1, 35),
        (bar, 2, 63),
    ):
        value = binary_skeleton_recall_loss(torch.zeros_like(target), target, tube=tube)
        assert value.item() == pytest.approx(1 - (n / 2 + 1) / (n + 1), abs=1e-7)


def test_missing_a_thin_structure_costs_and_a_perfect_prediction_does_not():
    """Background predicted everywhere: ``1 - s / (n + s)``, near 1 (the case MONAI issue 8239 is about
    for clDice); the exact prediction: 0, softmax and sigmoid, on the fly and precomputed."""
    labels = torch.zeros(1, 9, 12, dtype=torch.long)
    labels[0, 4, 1:11] = 1  # a one-pixel line of 10
    missed = torch.stack([torch.full((9, 12), 20.0), torch.full((9, 12), -20.0)])[None]
    value = skeleton_recall_loss(missed, labels, include_background=False)
    assert value.item() == pytest.approx(1 - 1 / 11, abs=1e-6)
    perfect = torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).double() * 200 - 100
    assert skeleton_recall_loss(perfect, labels).item() == pytest.approx(0, abs=1e-12)
    skeletons = target_skeletons(labels, 2)
    assert skeleton_recall_loss(perfect, labels, skeletons).item() == pytest.approx(0, abs=1e-12)
    binary = (labels[:, None] == 1).double() * 200 - 100
    assert binary_skeleton_recall_loss(binary, labels[:, None]).item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 22, 20), (1, 3, 9, 10, 8)])
def test_on_the_fly_equals_precomputed(shape):
    n, c, *spatial = shape
    labels = torch.from_numpy(np.stack([label_maps(tuple(spatial), c, seed=k) for k in range(n)]))
    labels[:, :2] = IGNORE
    logits = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for include_background in (True, False):
        options = {"ignore_index": IGNORE, "include_background": include_background, "reduction": "none"}
        transform = SkeletonTransform(c, ignore_index=IGNORE, include_background=include_background)
        skeletons = torch.stack([transform(sample) for sample in labels])
        module = SkeletonRecallLoss(**options)
        torch.testing.assert_close(module(logits, labels), module(logits, labels, skeletons))
    channels = (labels[:, None] == torch.arange(1, c).view(1, -1, *[1] * len(spatial))).long()
    channels = torch.where(labels[:, None] == IGNORE, IGNORE, channels)
    sigmoid_logits = logits[:, 1:]
    skeletons = torch.stack([SkeletonTransform(ignore_index=IGNORE)(sample) for sample in channels])
    module = BinarySkeletonRecallLoss(ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(module(sigmoid_logits, channels), module(sigmoid_logits, channels, skeletons))


def test_dense_target_equals_index_target():
    labels = torch.from_numpy(np.stack([label_maps((18, 19), 3, seed=k) for k in range(2)]))
    logits = torch.randn(2, 3, 18, 19, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    torch.testing.assert_close(skeleton_recall_loss(logits, onehot), skeleton_recall_loss(logits, labels))


def test_shapes_and_the_compound_input():
    labels = torch.from_numpy(np.stack([label_maps((16, 17), 3, seed=k) for k in range(2)]))
    logits = torch.randn(2, 3, 16, 17)
    assert skeleton_recall_loss(logits, labels, reduction="none").shape == (2, 2)  # the foreground classes
    with_background = skeleton_recall_loss(
        logits, labels, include_background=True, batch=True, reduction="none"
    )
    assert with_background.shape == (3,)
    skeletons = target_skeletons(labels, 3)
    criterion = sl.create_loss("dice + 0.5*skeleton_recall")
    expected = sl.dice_loss(logits, labels) + 0.5 * skeleton_recall_loss(logits, labels, skeletons)
    torch.testing.assert_close(criterion(logits, labels, skeletons=skeletons), expected)
    torch.testing.assert_close(
        criterion(logits, labels), sl.dice_loss(logits, labels) + 0.5 * skeleton_recall_loss(logits, labels)
    )


def test_bad_inputs_raise():
    logits, labels = torch.randn(1, 2, 6, 7), torch.zeros(1, 6, 7, dtype=torch.long)
    with pytest.raises(sl.SegLossError, match="skeletons of the logits' shape"):
        skeleton_recall_loss(logits, labels, torch.zeros(1, 6, 7))
    with pytest.raises(sl.SegLossError, match=r"values in \[0, 1\]"):
        skeleton_recall_loss(logits, labels, torch.full((1, 2, 6, 7), 2.0))
    with pytest.raises(sl.SegLossError, match="tube"):
        SkeletonRecallLoss(tube=-1)
    with pytest.raises(sl.SegLossError, match="integer index target"):
        target_skeletons(labels.float(), 2)
    with pytest.raises(sl.SegLossError, match="num_classes"):
        SkeletonTransform(num_classes=1)


# --- weight_map and mask (issue 19, item 9) ----------------------------------------------------------


def _weighted_inputs(seed: int = 50):
    """Small softmax inputs: float64 logits ``(2, 3, 9, 10)``, labels of ``3 × 4`` blocks (every class in
    every sample, so that no skeleton is empty), a weight map and a mask."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 9, 10, generator=g, dtype=torch.float64).requires_grad_()
    blocks = torch.tensor([[[0, 1, 2], [1, 2, 0], [2, 0, 1]], [[1, 1, 0], [2, 2, 0], [0, 1, 2]]])
    labels = blocks.repeat_interleave(3, 1).repeat_interleave(4, 2)  # 3 x 4 blocks of each class
    weights = torch.rand(2, 9, 10, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(2, 9, 10, generator=g) > 0.3
    return logits, labels[:, :9, :10], weights, mask


def test_weighted_value_by_hand():
    """Precomputed skeleton ``S = [1,1,0,1]``, ``p = σ([0, 50, 0, -50]) = [1/2, 1, 1/2, 0]``,
    ``ω = [2, 1, 5, 3]``: ``Σ ω p S = 2·1/2 + 1·1 + 0 + 3·0 = 2``, ``Σ ω S = 2 + 1 + 3 = 6``; with
    ``s = 0`` the loss is ``1 - 2/6 = 2/3``, with ``s = 1`` ``1 - 3/7 = 4/7`` (unweighted, ``s = 0``:
    ``1 - 1.5/3 = 1/2``)."""
    logits = torch.tensor([[[0.0, 50, 0, -50]]], dtype=torch.float64)
    skeletons = torch.tensor([[[True, True, False, True]]])
    target, weights = skeletons.double(), torch.tensor([[2.0, 1, 5, 3]], dtype=torch.float64)
    torch.testing.assert_close(binary_skeleton_recall_loss(logits, target, skeletons, smooth=0).item(), 1 / 2)
    value = binary_skeleton_recall_loss(logits, target, skeletons, weights, smooth=0)
    torch.testing.assert_close(value.item(), 2 / 3)
    torch.testing.assert_close(binary_skeleton_recall_loss(logits, target, skeletons, weights).item(), 4 / 7)


def test_integer_weights_repeat_pixels_given_the_skeletons():
    """With the skeletons given the loss is pixel-local: an integer ``ω`` is the pixel (with its skeleton
    value and target) repeated ``ω`` times (1-D, pixels repeated along the axis)."""
    g = torch.Generator().manual_seed(51)
    logits = torch.randn(2, 3, 12, generator=g, dtype=torch.float64)
    skeletons = torch.rand(2, 3, 12, generator=g) > 0.4
    counts = torch.randint(0, 4, (12,), generator=g)
    weights = counts.double().expand(2, 12)
    cases = (
        (skeleton_recall_loss, torch.randint(0, 3, (2, 12), generator=g), {"include_background": True}),
        (binary_skeleton_recall_loss, skeletons.double(), {}),
    )
    for function, target, options in cases:
        value = function(logits, target, skeletons, weights, reduction="none", **options)
        repeated = [t.repeat_interleave(counts, dim=-1) for t in (logits, target, skeletons)]
        torch.testing.assert_close(value, function(*repeated, reduction="none", **options))


def test_weights_leave_the_skeletons_and_precomputed_ones_agree_with_a_mask():
    """On the fly the skeletons are the unweighted target's (``1 - (Σ ω p S + s)/(Σ ω S + s)`` with
    ``S`` from :func:`target_skeletons`); precomputed with the masked pixels as ``ignore_index`` they
    give the loss with the mask."""
    logits, labels, weights, mask = _weighted_inputs()
    skeletons = target_skeletons(labels, 3).double()
    probs = logits.softmax(1)[:, 1:]
    covered = (weights.unsqueeze(1) * probs * skeletons[:, 1:]).sum((2, 3))
    total = (weights.unsqueeze(1) * skeletons[:, 1:]).sum((2, 3))
    assert (total > 0).all()  # every class of every sample has a skeleton
    value = skeleton_recall_loss(logits, labels, None, weights, reduction="none")
    torch.testing.assert_close(value, 1 - (covered + 1) / (total + 1))
    masked = labels.masked_fill(~mask, IGNORE)
    given = target_skeletons(masked, 3, ignore_index=IGNORE)
    torch.testing.assert_close(
        skeleton_recall_loss(logits, labels, given, weights, mask),
        skeleton_recall_loss(logits, labels, None, weights, mask),
    )


@pytest.mark.parametrize("binary", [False, True])
def test_mask_on_a_soft_target(binary):
    """A float target's masked pixels are ignored ones (no class before the skeletonisation), and a NaN
    logit there reaches neither value nor gradient."""
    logits, labels, _, mask = _weighted_inputs(52)
    hard = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1)
    function = binary_skeleton_recall_loss if binary else skeleton_recall_loss
    ignored = hard.masked_fill(~mask.unsqueeze(1), IGNORE) if binary else labels.masked_fill(~mask, IGNORE)
    expected = function(logits, ignored, ignore_index=IGNORE)
    poisoned = logits.detach().masked_fill(~mask.unsqueeze(1), float("nan")).requires_grad_()
    value = function(poisoned, hard.double(), mask=mask)
    (grad,) = torch.autograd.grad(value, poisoned)
    torch.testing.assert_close(value, expected)
    assert torch.isfinite(grad).all() and (grad.masked_select(~mask.unsqueeze(1)) == 0).all()


@pytest.mark.parametrize("name", ["skeleton_recall", "binary_skeleton_recall"])
def test_weighted_module_function_and_compound_agree(name):
    logits, labels, weights, mask = _weighted_inputs(53)
    binary = name.startswith("binary")
    target = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1) if binary else labels
    function = getattr(sl.functional, f"{name}_loss")
    value = function(logits, target, None, weights, mask)
    module = SkeletonRecallLoss if not binary else BinarySkeletonRecallLoss
    torch.testing.assert_close(module()(logits, target, weight_map=weights, mask=mask), value)
    dice = "binary_dice" if binary else "dice"
    compound = sl.create_loss(f"{dice} + {name}")(logits, target, weight_map=weights, mask=mask)
    dice_value = getattr(sl.functional, f"{dice}_loss")(logits, target, weights, mask)
    torch.testing.assert_close(compound, dice_value + value)
