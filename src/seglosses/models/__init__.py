"""The small networks the comparison trains, and sliding-window inference for images larger than a patch."""

from .sliding_window import sliding_window_inference
from .unet import UNet

__all__ = ["UNet", "sliding_window_inference"]
