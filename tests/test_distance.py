"""The exact distance transform and signed distance maps (SPEC section 4) against scipy and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import seglosses as sl
from seglosses.ops.distance import distance_transform, signed_distance_map

ndimage = pytest.importorskip("scipy.ndimage")
BACKENDS = ["torch", "scipy"] + (["edt"] if __import__("importlib").util.find_spec("edt") else [])


def scipy_reference(mask: torch.Tensor, spacing) -> torch.Tensor:
    rank = len(spacing)
    flat = mask.reshape(-1, *mask.shape[mask.ndim - rank :]).numpy()
    out = [ndimage.distance_transform_edt(sample, sampling=spacing) for sample in flat]
    return torch.from_numpy(np.stack(out)).reshape(mask.shape)


CASES = [
    ((3, 31, 17), (1.0, 1.0)),
    ((2, 20, 25), (0.7, 2.3)),
    ((2, 2, 12, 9), (3.0, 0.5)),  # (N, C, *S), rank from spacing
    ((2, 8, 11, 13), (1.0, 1.0, 1.0)),
    ((1, 9, 7, 12), (2.0, 0.6, 1.3)),
    ((4, 50), (0.25,)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, spacing", CASES)
@pytest.mark.parametrize("density", [0.5, 0.97])
def test_matches_scipy_on_random_masks(backend, shape, spacing, density):
    """Sparse and dense background, 1-D to 3-D, anisotropic spacing: scipy's values to float32 precision."""
    g = torch.Generator().manual_seed(len(shape) * 7 + int(density * 100))
    mask = torch.rand(shape, generator=g) < density
    flat = mask.reshape(-1, *shape[len(shape) - len(spacing) :])
    flat[:, 0] = False  # every sample has a zero pixel (scipy's values are garbage otherwise)
    result = distance_transform(mask, spacing, backend=backend)
    assert result.dtype == torch.float32 and result.shape == mask.shape
    torch.testing.assert_close(result.double(), scipy_reference(mask, spacing), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_thin_structures(backend):
    """One-pixel lines and a single zero pixel: the long-range cases of the envelope pass."""
    mask = torch.ones(3, 40, 33, dtype=torch.bool)
    mask[0, :, 16] = False  # a vertical zero line
    mask[1, 5, 7] = False  # a single zero pixel
    mask[2] = False
    mask[2, 10:30, 20] = True  # a thin foreground line in background
    for spacing in [(1.0, 1.0), (1.7, 0.4)]:
        result = distance_transform(mask, spacing, backend=backend)
        torch.testing.assert_close(result.double(), scipy_reference(mask, spacing), rtol=1e-6, atol=1e-5)


def test_hand_values_of_a_square():
    """A 3×3 square in a 7×7 image: inside distances 1 (ring) and 2 (centre), outside 0."""
    mask = torch.zeros(1, 7, 7)
    mask[0, 2:5, 2:5] = 1
    d = distance_transform(mask, backend="torch")[0]
    assert d[3, 3] == 2 and d[2, 2] == 1 and d[2, 3] == 1 and d[0, 0] == 0 and d.sum() == 8 + 2


def test_signed_map_hand_values():
    """SPEC's example: inner ring 0, centre -1, outside 1 (face neighbours), √2 (diagonal), 2, √5, √8."""
    mask = torch.zeros(1, 7, 7)
    mask[0, 2:5, 2:5] = 1
    phi = signed_distance_map(mask)[0]
    assert phi[3, 3] == -1 and phi[2, 2] == 0 and phi[2, 3] == 0
    assert phi[1, 3] == 1 and phi[1, 1] == pytest.approx(math.sqrt(2))
    assert phi[0, 3] == 2 and phi[0, 2] == 2
    assert phi[0, 1] == pytest.approx(math.sqrt(5)) and phi[0, 0] == pytest.approx(math.sqrt(8))


def test_signed_map_with_spacing_uses_the_smallest_step():
    """h = min(spacing): a pixel face-adjacent to the outside along the finest axis is 0."""
    mask = torch.tensor([[0, 1, 1, 1, 0]])
    phi = signed_distance_map(mask, (0.5,))
    assert phi.tolist() == [[0.5, 0.0, -0.5, 0.0, 0.5]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_without_zero_is_surrounded_by_background(backend):
    """All foreground: the distance to just outside the image, min_a s_a · min(i_a + 1, n_a - i_a)."""
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[1, 1, 2] = False  # the other sample is an ordinary one
    d = distance_transform(mask, (2.0, 1.0), backend=backend)
    rows = torch.tensor([2.0, 4.0, 2.0])[:, None]  # 2 · min(i + 1, 3 - i)
    cols = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0])[None, :]
    assert torch.equal(d[0], torch.minimum(rows, cols))
    torch.testing.assert_close(d[1:].double(), scipy_reference(mask[1:], (2.0, 1.0)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_background_is_zero(backend):
    assert torch.count_nonzero(distance_transform(torch.zeros(2, 4, 6), backend=backend)) == 0


def test_signed_map_of_absent_and_full_classes():
    """Absent: φ ≡ 0. Filling the image: finite and ≤ 0 (0 on the image edge, negative inside)."""
    mask = torch.zeros(2, 5, 5)
    mask[1] = 1
    phi = signed_distance_map(mask)
    assert torch.count_nonzero(phi[0]) == 0
    assert torch.isfinite(phi[1]).all() and (phi[1] <= 0).all() and phi[1, 0, 0] == 0 and phi[1, 2, 2] == -2


def test_channels_need_the_rank():
    """(N, C, *S) with spatial_dims=2: each (sample, channel) alone; the default rank would be 3."""
    mask = torch.rand(2, 3, 6, 7) < 0.6
    mask[..., 0, 0] = False
    per_channel = distance_transform(mask, spatial_dims=2)
    torch.testing.assert_close(per_channel.double(), scipy_reference(mask, (1.0, 1.0)))
    assert not torch.equal(per_channel, distance_transform(mask))


def test_large_lines_are_chunked(monkeypatch):
    """The envelope pass in many small chunks gives the same result as in one."""
    import seglosses.ops.distance as distance

    mask = torch.rand(3, 30, 40) < 0.9
    whole = distance_transform(mask, backend="torch")
    monkeypatch.setattr(distance, "_CHUNK_ELEMENTS", 40 * 40 * 7)
    assert torch.equal(distance_transform(mask, backend="torch"), whole)


def test_public_names_and_device():
    mask = torch.rand(2, 5, 5) < 0.5
    assert sl.distance_transform is distance_transform and sl.signed_distance_map is signed_distance_map
    assert distance_transform(mask).device == mask.device


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: distance_transform([[0, 1]]), "torch.Tensor"),
        (lambda: distance_transform(torch.zeros(2, 3), (1.0, 1.0, 1.0)), "spatial dims"),
        (lambda: distance_transform(torch.zeros(2, 3, 4, 5, 6)), "1 to 3 spatial dims"),
        (lambda: distance_transform(torch.zeros(2, 3, 4), (1.0, 0.0)), "spacing"),
        (lambda: distance_transform(torch.zeros(2, 3, 4), (1.0, float("nan"))), "spacing"),
        (lambda: distance_transform(torch.zeros(2, 3, 4), spatial_dims=2.0), "spatial_dims"),
        (lambda: distance_transform(torch.zeros(2, 3, 4), backend="cuda"), "backend"),
        (lambda: distance_transform(torch.zeros(2, 3, 4, dtype=torch.complex64)), "real or bool"),
    ],
)
def test_errors(call, message):
    with pytest.raises(sl.SegLossError, match=message):
        call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_sided_distance_is_the_sum_of_both_transforms(backend):
    """EDT(M) + EDT(¬M), to float32 precision; a one-valued sample gets the distances to outside."""
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(4, 2, 15, 12, generator=g) < 0.5
    mask[1, 0] = True
    mask[2, 1] = False
    spacing = (1.5, 0.8)
    both = sl.ops.two_sided_distance(mask, spacing, backend=backend)
    expected = sum(distance_transform(m, spacing, backend="torch") for m in (mask, ~mask))
    torch.testing.assert_close(both, expected, rtol=1e-6, atol=1e-5)
    assert torch.equal(both[1, 0], both[2, 1])  # both one-valued: the same distances to outside
