"""A small U-Net (Ronneberger et al. 2015) for 2-D and 3-D images, any spatial size."""

from __future__ import annotations

from typing import List, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.errors import expected
from .._core.options import check_int


def _layers(spatial_dims: int) -> "tuple[Type[nn.Module], Type[nn.Module], Type[nn.Module]]":
    if spatial_dims == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d
    return nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d


class _DoubleConv(nn.Sequential):
    """(3×3 convolution, group norm, ReLU) twice."""

    def __init__(self, conv: Type[nn.Module], in_channels: int, out_channels: int) -> None:
        groups = max(1, min(8, out_channels // 4))
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; level ``k`` has ``width · 2^k`` channels.

    Input ``(N, in_channels, *S)`` with ``len(S) == spatial_dims``; output logits ``(N, num_classes, *S)``.
    Spatial sizes need not be multiples of ``2^depth``: the input is padded (replicate) to the next
    multiple and the output cropped back. Group normalisation keeps it independent of the batch size
    (and of how a batch is split across processes).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        width: int = 16,
        depth: int = 3,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("num_classes", num_classes, 1),
                                 ("width", width, 1), ("depth", depth, 0)):  # fmt: skip
            check_int(name, value, low=low)
        if spatial_dims not in (2, 3):
            raise expected("spatial_dims 2 or 3", repr(spatial_dims))
        conv, up_conv, pool = _layers(spatial_dims)
        self.spatial_dims, self.depth = spatial_dims, depth
        channels = [width * 2**k for k in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [_DoubleConv(conv, c_in, c_out) for c_in, c_out in zip([in_channels, *channels], channels)]
        )
        self.pool = pool(2)
        self.ups = nn.ModuleList([up_conv(channels[k + 1], channels[k], 2, stride=2) for k in range(depth)])
        self.decoders = nn.ModuleList([_DoubleConv(conv, 2 * channels[k], channels[k]) for k in range(depth)])
        self.head = conv(channels[0], num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != self.spatial_dims + 2:
            raise expected(
                f"images of shape (N, C, *S) with {self.spatial_dims} spatial dims", tuple(images.shape)
            )
        size = images.shape[2:]
        multiple = 2**self.depth
        pad: List[int] = []
        for extent in reversed(size):
            pad += [0, (-extent) % multiple]
        x = F.pad(images, pad, mode="replicate") if any(pad) else images
        skips = []
        for k, encoder in enumerate(self.encoders):
            x = encoder(x if k == 0 else self.pool(x))
            skips.append(x)
        for k in reversed(range(self.depth)):
            x = self.decoders[k](torch.cat([self.ups[k](x), skips[k]], dim=1))
        logits = self.head(x)
        crop = (Ellipsis,) + tuple(slice(0, extent) for extent in size)
        return logits[crop]
