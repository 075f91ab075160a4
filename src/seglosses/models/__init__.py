"""The small networks the comparison trains."""

from .unet import UNet

__all__ = ["UNet"]
