"""The small U-Net."""

from __future__ import annotations

import pytest
import torch

import seglosses as sl
from seglosses.__main__ import synthetic_batch
from seglosses.models import UNet


@pytest.mark.parametrize(
    "spatial_dims, size", [(2, (32, 32)), (2, (37, 50)), (3, (8, 8, 8)), (3, (9, 10, 11))]
)
def test_output_has_the_input_spatial_size(spatial_dims, size):
    model = UNet(2, 5, width=4, depth=2, spatial_dims=spatial_dims)
    assert model(torch.randn(2, 2, *size)).shape == (2, 5, *size)


def test_width_scales_the_parameters():
    small, large = UNet(1, 3, width=4), UNet(1, 3, width=8)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 3.5 < count(large) / count(small) < 4.1  # convolutions dominate: ~ width²


def test_errors():
    with pytest.raises(sl.SegLossError, match="spatial_dims 2 or 3"):
        UNet(1, 2, spatial_dims=1)
    with pytest.raises(sl.SegLossError, match="width to be an int >= 1"):
        UNet(1, 2, width=0)
    with pytest.raises(sl.SegLossError, match="2 spatial dims"):
        UNet(1, 2)(torch.randn(1, 1, 4, 4, 4))


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images, labels = synthetic_batch(4, 32, g)
    model = UNet(1, 3, width=8, depth=2)
    criterion = sl.create_loss("ce + dice")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.7 * first
