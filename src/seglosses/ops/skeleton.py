"""Topology-preserving skeletons (thinning) of binary masks, computed with torch on the mask's device.

Each sample of a mask ``(N, *S)`` is thinned on its own, the image border counting as background.
The two algorithms are those of scikit-image's ``skimage.morphology.skeletonize`` and give its result
exactly (tests/test_skeleton.py compares them; in 3-D with ``preserve_topology=False``):

* **2-D**: the parallel two-subiteration thinning of Zhang & Suen (1984). A pixel's 8 neighbours give a
  code ``Σ 2^k`` (NW 1, N 2, NE 4, E 8, SE 16, S 32, SW 64, W 128); the first subiteration deletes, all at
  once, the foreground pixels whose code a table marks for it, the second those it marks for the second,
  and the two repeat until neither deletes anything. The table is scikit-image's
  (``_fast_skeletonize``, BSD-3-Clause): Zhang and Suen's conditions changed at 25 codes (e.g. a pixel
  whose only neighbours are N and E, a staircase corner, is deleted, which their conditions keep).
* **3-D**: the thinning of Lee, Kashyap & Chu (1994), as scikit-image (after Arganda-Carreras's
  Skeletonize3D) runs it. For each of the six border directions in turn (``-r, +r, +c, -c, +p, -p`` of
  the axes ``(p, r, c)``) the candidates are the foreground voxels whose neighbour in that direction is
  background, that are not end points (exactly one of 26 neighbours set), whose deletion keeps the
  Euler characteristic (summed over the 8 octants of the 3×3×3 neighbourhood) and that are simple (the
  26 neighbours set form at most one 26-connected set); then the candidates are re-checked in raster
  order, each deleted if it is still simple given the deletions before it (and, with
  ``preserve_topology``, the default, still Euler invariant: scikit-image's re-check asks for simplicity
  only, which can delete a whole thin plate; see :func:`skeletonize`). That sequential re-check is
  computed in parallel here: a candidate's decision depends only on the decisions of the candidates
  before it among its 26 neighbours, so the decisions are the unique solution of a triangular system,
  which Jacobi sweeps (every candidate re-decided at once from the previous sweep's decisions) reach
  exactly once a sweep changes nothing. The passes repeat until a whole round of six deletes nothing; a
  volume of depth 1 takes the four in-plane directions only, as scikit-image does.
* **1-D**: each run of foreground pixels becomes its middle pixel (the right one of two), what deleting
  the left and the right end of every run in turn leaves.

**Cost and host reads.** The loops run until nothing changes, bounded by the number of pixels per
sample (every round that changes something deletes at least one). 2-D reads one flag from the device
every :data:`CHECK_EVERY` iterations (after the fixed point further iterations change nothing, so the
late exit gives the same result); 3-D gathers the border voxels of each pass (``nonzero``: a host read
per pass) and reads one flag per re-check sweep. A skeleton is computed once per target (see
:class:`seglosses.losses.skeleton_recall.SkeletonTransform`), not in the training step; under
``torch.compile`` and ``torch.func`` transforms the computation is one opaque operator
(``seglosses::skeletonize``, with a ``vmap`` rule), so it traces without a graph break.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.errors import expected
from .._core.numerics import tracing
from .._core.options import check_bool

CHECK_EVERY = 4  # 2-D iterations between two reads of the "anything changed" flag
_CHUNK = 1 << 16  # 3-D voxels whose neighbourhoods are gathered at once

# --- 2-D: Zhang & Suen ---------------------------------------------------------------------------------

# Deletion table indexed by the neighbour code: 1 deletes in the first subiteration, 2 in the second,
# 3 in both, 0 never. The values of scikit-image's ``_fast_skeletonize`` (BSD-3-Clause), so that the
# skeletons are identical to ``skimage.morphology.skeletonize``.
_ZHANG_SUEN_TABLE = (
    "00010013003110130000000020203033"
    "00000000300000000000000020003022"
    "00000000000000000000000000000000"
    "20000000200020003000000030003020"
    "00310013000000010000000000000001"
    "31000000000000002000000000000000"
    "23130013000000010000000000000000"
    "23010001000000003301000022002000"
)
# the neighbours' bits in the code, as (row, column) offsets
_CODE_BITS_2D = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _zhang_suen_tables(device: torch.device) -> Tensor:
    """``(2, 256)`` uint8: 1 where a pixel with that neighbour code is deleted in subiteration 1 / 2."""
    values = torch.tensor([int(v) for v in _ZHANG_SUEN_TABLE], dtype=torch.uint8, device=device)
    return torch.stack([values & 1, values >> 1])


def _neighbour_codes_2d(x: Tensor) -> Tensor:
    """``(B, H, W)`` uint8 0/1 -> the neighbour codes, int64 ``(B·H·W,)`` (outside the image counts 0)."""
    height, width = x.shape[1:]
    padded = F.pad(x, (1, 1, 1, 1))
    codes = torch.zeros_like(x)
    for bit, (dr, dc) in enumerate(_CODE_BITS_2D):
        codes |= padded[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width] << bit
    return codes.view(-1).long()


def _thin_2d(foreground: Tensor) -> Tensor:
    tables = _zhang_suen_tables(foreground.device)
    x = foreground.to(torch.uint8)
    bound = foreground[0].numel() + 1  # iterations that change something, per sample (module docstring)
    for done in range(0, bound, CHECK_EVERY):
        before = x
        for _ in range(min(CHECK_EVERY, bound - done)):
            for table in tables:  # a gather: several times faster on CPU than indexing
                x = x & ~table.gather(0, _neighbour_codes_2d(x)).view_as(x)
        if torch.equal(x, before):
            break
    return x.bool()


# --- 3-D: Lee, Kashyap & Chu ---------------------------------------------------------------------------

# The 3 × 3 × 3 neighbourhood as bits: (dp, dr, dc) in {-1, 0, 1}^3 is bit 9 (dp + 1) + 3 (dr + 1) + dc + 1,
# the centre bit 13.
_CUBE = tuple(itertools.product((-1, 0, 1), repeat=3))
_CENTRE = 13
_DILATIONS = 8  # a flood fill from one neighbour reaches its whole 26-connected set within 8 steps
# (checked over all 2^26 neighbourhoods; a sketch: any two neighbours in one octant are adjacent, and a
# shortest path visits each of the 8 octants at most once)


def _bits(keep: Callable[..., bool]) -> int:
    return sum(1 << k for k, (dp, dr, dc) in enumerate(_CUBE) if keep(dp, dr, dc))


_ALL_BITS = _bits(lambda dp, dr, dc: True)
# the bits a shift by +-1 along an axis may land on (not wrapped from the other side of the cube)
_SHIFT_MASKS = tuple(
    (_bits(lambda *d, a=axis: d[a] != -1), _bits(lambda *d, a=axis: d[a] != 1)) for axis in range(3)
)


def _dilate_in_cube(x: Tensor) -> Tensor:
    """The 26-neighbour dilation of bit sets ``x`` (int32) within the 3 × 3 × 3 cube."""
    for axis, step in ((2, 1), (1, 3)):
        up, down = _SHIFT_MASKS[axis]
        x = x | ((x << step) & up) | ((x >> step) & down)
    return (x | (x << 9) | (x >> 9)) & _ALL_BITS  # across planes nothing wraps: only the top spills


def _codes(neighbourhoods: Tensor, columns: Tensor) -> Tensor:
    """``(K, len(columns))`` 0/1 values of the neighbours ``columns`` -> their bit sets (int32), the
    centre left out."""
    powers = torch.tensor([0 if k == _CENTRE else 1 << k for k in range(27)], dtype=torch.int32)
    weights = powers.to(neighbourhoods.device)[columns]
    return (neighbourhoods.to(torch.int32) * weights).sum(1, dtype=torch.int32)


def _connected(codes: Tensor) -> Tensor:
    """Whether each bit set of neighbours is at most one 26-connected set (Lee et al.'s simplicity test),
    by a flood fill from its lowest bit."""
    reached = codes & -codes
    for _ in range(_DILATIONS):  # stop early when a step adds nothing anywhere
        grown = _dilate_in_cube(reached) & codes
        if torch.equal(grown, reached):
            break
        reached = grown
    return reached == codes


def _octant_change(corner: int) -> int:
    """8 × the change of the Euler characteristic (26-connected foreground: the union of closed unit
    cubes) at one lattice vertex when the voxel at its corner 0 of the 2 × 2 × 2 block ``corner`` (bit
    ``4a + 2b + c`` set for the voxel at ``(a, b, c)``) is removed. Each vertex counts itself, minus half
    of its edges, plus a quarter of its faces, minus an eighth of its cubes, where an edge / face / cube
    at the vertex is present when a voxel of the block holding it is set. Equals column δG26 of Lee et
    al.'s Table 2 (checked against scikit-image's copy of it)."""

    def local(block: int) -> int:  # 8 × the vertex's share of the Euler characteristic
        voxels = [
            (a, b, c) for a, b, c in itertools.product((0, 1), repeat=3) if block >> (4 * a + 2 * b + c) & 1
        ]
        edges = sum(any(v[axis] == side for v in voxels) for axis in range(3) for side in (0, 1))
        faces = sum(
            any(v[i] == si and v[j] == sj for v in voxels)
            for i, j in ((0, 1), (0, 2), (1, 2))
            for si in (0, 1)
            for sj in (0, 1)
        )
        return 8 * bool(voxels) - 4 * edges + 2 * faces - len(voxels)

    return local(corner | 1) - local(corner & ~1)


_EULER_TABLE = tuple(_octant_change(block) for block in range(256))


def _octant_weights() -> Tensor:
    """``(27, 8)``: the code of each octant's 2 × 2 × 2 block seen from the centre, reflected so that the
    centre is its corner 0 (the Euler change is the same under reflections)."""
    weights = torch.zeros(27, 8)
    for octant, signs in enumerate(itertools.product((-1, 1), repeat=3)):
        for a, b, c in itertools.product((0, 1), repeat=3):
            k = _CUBE.index((a * signs[0], b * signs[1], c * signs[2]))
            weights[k, octant] = 1 << (4 * a + 2 * b + c)
    return weights


_OCTANT_WEIGHTS = _octant_weights()


def _euler_invariant(neighbourhoods: Tensor) -> Tensor:
    """``(K, 27)`` -> whether deleting the centre keeps the Euler characteristic (the octant codes are
    sums of at most 255: exact in float32)."""
    weights = _OCTANT_WEIGHTS.to(neighbourhoods.device)
    table = torch.tensor(_EULER_TABLE, device=neighbourhoods.device)
    parts = [table[(part.float() @ weights).long()].sum(1) == 0 for part in neighbourhoods.split(_CHUNK)]
    return torch.cat(parts) if parts else neighbourhoods.new_zeros(0, dtype=torch.bool)


def _at(volume: Tensor, index: Tensor) -> Tensor:
    """``volume[index]`` for a flat volume, by a gather (several times faster on CPU than indexing)."""
    return volume.gather(0, index.reshape(-1)).view(index.shape)


def _neighbourhoods(volume: Tensor, points: Tensor, offsets: Tensor) -> Tensor:
    """``(K, len(offsets))`` values of ``volume`` at ``points + offsets``, gathered a chunk of points at a
    time (the index tensor takes 8 bytes per value)."""
    parts = [_at(volume, part[:, None] + offsets) for part in points.split(_CHUNK)]
    return torch.cat(parts) if parts else volume.new_zeros(0, offsets.numel())


def _candidates(volume: Tensor, border: Tensor, offsets: Tensor) -> Tuple[Tensor, Tensor]:
    """Lee et al.'s first step on the border voxels: the candidates (not an end point, Euler invariant,
    simple) and their neighbourhoods."""
    neighbourhoods = _neighbourhoods(volume, border, offsets)
    endpoint = neighbourhoods.sum(1, dtype=torch.int32) == 2  # the centre and one neighbour
    every = torch.arange(27, device=volume.device)
    keep = ~endpoint & _euler_invariant(neighbourhoods) & _connected(_codes(neighbourhoods, every))
    return border[keep], neighbourhoods[keep]


def _recheck(volume: Tensor, points: Tensor, neighbourhoods: Tensor, offsets: Tensor, euler: bool) -> Tensor:
    """Lee et al.'s sequential re-check in raster order, by Jacobi sweeps (module docstring): whether
    each of ``points`` (flat indices, ascending; ``neighbourhoods`` theirs now) is deleted. ``euler``:
    the re-check asks for Euler invariance too."""
    columns = torch.arange(27, device=points.device)
    earlier = offsets < 0  # the neighbours before a voxel in raster order: their decisions count
    later_codes = _codes(neighbourhoods[:, ~earlier], columns[~earlier])
    deleted = torch.ones_like(points, dtype=torch.bool)  # the first guess: every candidate
    for _ in range(points.numel() + 1):  # the system is triangular: at most one sweep per candidate
        volume.scatter_(0, points, (~deleted).to(volume.dtype))
        now = _neighbourhoods(volume, points, offsets[earlier])
        volume.scatter_(0, points, torch.ones_like(points, dtype=volume.dtype))
        decided = _connected(later_codes + _codes(now, columns[earlier]))
        if euler:
            neighbourhoods[:, earlier] = now
            decided &= _euler_invariant(neighbourhoods)
        if torch.equal(decided, deleted):
            break
        deleted = decided
    return deleted


def _thin_3d(foreground: Tensor, euler: bool) -> Tensor:
    batch, depth, rows, cols = foreground.shape
    padded = F.pad(foreground.to(torch.uint8), (1, 1, 1, 1, 1, 1))
    volume = padded.view(-1)  # samples one after the other, each in its own zero frame
    strides = ((rows + 2) * (cols + 2), cols + 2, 1)
    offsets = torch.tensor(
        [dp * strides[0] + dr * strides[1] + dc * strides[2] for dp, dr, dc in _CUBE], device=volume.device
    )
    # scikit-image's order of the border directions: -r, +r, +c, -c, +p, -p (a depth of 1: in-plane only)
    directions = [(1, -1), (1, 1), (2, 1), (2, -1)] + [(0, 1), (0, -1)] * (depth > 1)
    alive = volume.nonzero().squeeze(1)
    for _ in range(alive.numel() + 1):  # a round that changes something deletes a voxel
        changed = False
        for axis, sign in directions:
            border = alive[_at(volume, alive + sign * strides[axis]) == 0]
            points, neighbourhoods = _candidates(volume, border, offsets)
            deleted = points[_recheck(volume, points, neighbourhoods, offsets, euler)]
            if deleted.numel():
                volume.index_fill_(0, deleted, 0)
                alive = alive[_at(volume, alive) > 0]
                changed = True
        if not changed:
            break
    return padded[:, 1:-1, 1:-1, 1:-1].bool()


# --- 1-D -----------------------------------------------------------------------------------------------


def _thin_1d(foreground: Tensor) -> Tensor:
    """The middle pixel ``start + length // 2`` of each run."""
    length = foreground.shape[-1]
    position = torch.arange(length, device=foreground.device).expand_as(foreground)
    last_gap = torch.cummax(torch.where(foreground, -1, position), dim=-1).values  # -1: none before
    gap_after = torch.where(foreground, length, position).flip(-1).cummin(dim=-1).values.flip(-1)
    return foreground & (position - last_gap - 1 == (gap_after - last_gap - 1) // 2)


# --- entry points --------------------------------------------------------------------------------------


def _thin(foreground: Tensor, preserve_topology: bool) -> Tensor:
    """The skeleton of a bool ``(B, *S)`` mask, 1 to 3 spatial dims."""
    if foreground.numel() == 0:
        return foreground.clone()
    with torch.no_grad():
        if foreground.ndim == 4:
            return _thin_3d(foreground.contiguous(), preserve_topology)
        return (_thin_1d if foreground.ndim == 2 else _thin_2d)(foreground.contiguous())


@torch.library.custom_op("seglosses::skeletonize", mutates_args=())
def _thin_op(foreground: Tensor, preserve_topology: bool) -> Tensor:
    return _thin(foreground, preserve_topology)


@_thin_op.register_fake
def _(foreground: Tensor, preserve_topology: bool) -> Tensor:
    return torch.empty_like(foreground)


def _thin_vmap(
    info: Any, in_dims: Tuple[Optional[int], Optional[int]], foreground: Tensor, preserve_topology: bool
) -> Tuple[Tensor, Optional[int]]:
    """Under ``torch.func.vmap``: the mapped dim joins the samples."""
    dim = in_dims[0]
    if dim is None:
        return _thin_op(foreground, preserve_topology), None
    moved = foreground.movedim(dim, 0)
    return _thin_op(moved.flatten(0, 1), preserve_topology).view(moved.shape), 0


_thin_op.register_vmap(_thin_vmap)


def skeletonize(mask: Tensor, *, preserve_topology: bool = True) -> Tensor:
    """The skeleton of each sample of a mask by thinning, as ``skimage.morphology.skeletonize``.

    2-D: Zhang & Suen's thinning; 3-D: Lee et al.'s; 1-D: the middle of each run (module docstring).
    Every connected component (8-connected in 2-D, 26-connected in 3-D) keeps its connectivity and holes
    and is thinned to lines one pixel wide (pixel noise can leave a 2 × 2 block whose every pixel holds a
    branch or a hole). No gradient.

    Args:
        mask: ``(N, *S)`` with 1 to 3 spatial dims, bool or any real dtype (nonzero is foreground).
        preserve_topology: 3-D only. True: Lee et al.'s sequential re-check asks for Euler invariance as
            well as simplicity (as Fiji's Skeletonize3D proposes), so that no component, cavity or tunnel
            is lost. False: scikit-image's re-check, simplicity only, identical to its ``skeletonize``,
            which can delete a whole component, e.g. a plate three voxels thick (scikit-image issue
            3757). The two part only where one of scikit-image's deletions changes the Euler
            characteristic, i.e. the topology.

    Returns:
        bool ``(N, *S)`` on the mask's device, a subset of the mask.

    Example:
        >>> ring = torch.ones(1, 5, 5, dtype=torch.bool)
        >>> ring[0, 2, 2] = False
        >>> skeletonize(ring)[0].int().tolist()
        [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    """
    if not isinstance(mask, Tensor):
        raise expected("mask to be a torch.Tensor", type(mask).__name__)
    if mask.is_complex():
        raise expected("a real or bool mask", f"dtype {mask.dtype}")
    if not 2 <= mask.ndim <= 4:
        raise expected("a mask of shape (N, *S) with 1 to 3 spatial dims", f"shape {tuple(mask.shape)}")
    preserve_topology = check_bool("preserve_topology", preserve_topology)
    foreground = mask if mask.dtype == torch.bool else mask != 0
    if tracing():  # torch.compile and torch.func: one opaque operator (with a vmap rule)
        return _thin_op(foreground, preserve_topology)
    return _thin(foreground, preserve_topology)


def dilate_cross(mask: Tensor, times: int, rank: int) -> Tensor:
    """``times`` dilations of a bool ``(..., *S)`` mask by the cross (each pixel and its ``2 rank`` face
    neighbours) over the last ``rank`` axes: the city-block ball of radius ``times``; outside is
    background (scikit-image's ``dilation`` with its default footprint, repeated)."""
    for _ in range(times):
        padded = F.pad(mask, [1, 1] * rank)
        inner: List[slice] = [slice(None)] * (mask.ndim - rank) + [slice(1, -1)] * rank
        grown = mask.clone()
        for axis in range(mask.ndim - rank, mask.ndim):
            for start in (0, 2):
                index = list(inner)
                index[axis] = slice(start, start + mask.shape[axis])
                grown |= padded[tuple(index)]
        mask = grown
    return mask


__all__: Tuple[str, ...] = ("dilate_cross", "skeletonize")
