"""Input factories shared by the tests."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

import seglosses as sl

IGNORE = 255
# embedding losses take (embeddings, labels): tests/test_embedding.py has their conformance class
ENTRIES = [entry for entry in sl.list_losses(details=True) if entry.domain != "embedding"]


def make_inputs(
    domain: str,
    shape: Tuple[int, ...] = (2, 3, 5, 6),
    *,
    dtype: torch.dtype = torch.float64,
    ignore_fraction: float = 0.0,
    seed: int = 0,
    scale: float = 2.0,
) -> Tuple[Tensor, Tensor]:
    """Random logits and target for a loss domain; ``ignore_fraction`` of the target set to IGNORE."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    n, c, *spatial = shape
    if domain == "softmax":
        target = torch.randint(0, c, (n, *spatial), generator=g)
        ignore_shape = target.shape
    else:
        target = torch.randint(0, 2, shape, generator=g)
        ignore_shape = shape
    if ignore_fraction:
        mask = torch.rand(ignore_shape, generator=g) < ignore_fraction
        target = target.masked_fill(mask, IGNORE)
    return logits.requires_grad_(), target


def perfect_logits(domain: str, target: Tensor, num_classes: int, magnitude: float = 100.0) -> Tensor:
    """Saturated logits that predict ``target`` exactly."""
    if domain == "softmax":
        one_hot = torch.nn.functional.one_hot(target, num_classes).movedim(-1, 1)
        return (one_hot.double() * 2 - 1) * magnitude
    return (target.double() * 2 - 1) * magnitude


def peak_extra_bytes(step) -> int:
    """Peak bytes the CPU allocator held during ``step`` above what it held before (profiler events)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    peak = total = 0
    for _, size in sorted(events):
        total += size
        peak = max(peak, total)
    return peak


def smp_losses():
    """``segmentation_models_pytorch.losses`` (installed with ``pip install --no-deps
    segmentation-models-pytorch``), or None. The package's ``__init__`` imports its encoders, which need
    torchvision (it does not import beside torch 2.13); its ``losses`` subpackage needs only torch and
    numpy, so it is imported under an empty stand-in for the package when the real one fails."""
    import importlib
    import importlib.util
    import sys
    import types

    if "segmentation_models_pytorch.losses" in sys.modules:  # imported already (the stand-in has no spec)
        return sys.modules["segmentation_models_pytorch.losses"]
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or spec.submodule_search_locations is None:
        return None
    try:
        return importlib.import_module("segmentation_models_pytorch.losses")
    except Exception:  # noqa: BLE001 - any import failure of the encoders: fall back to the stand-in
        for name in [m for m in sys.modules if m.startswith("segmentation_models_pytorch")]:
            del sys.modules[name]
    package = types.ModuleType("segmentation_models_pytorch")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["segmentation_models_pytorch"] = package
    return importlib.import_module("segmentation_models_pytorch.losses")


def check_soft_mask_is_ignore_index(name: str, logits: Tensor, target: Tensor, weights: Tensor, mask: Tensor):
    """A one-hot (binary: float) target with a mask equals the index target with ``IGNORE`` at the masked
    pixels, value and gradient; a NaN logit there reaches neither (``target``: class indices, or the binary
    loss's 0 / 1 integer target)."""
    binary = name.startswith("binary_")
    if binary:
        soft = target.double()
    else:
        soft = torch.nn.functional.one_hot(target, logits.shape[1]).movedim(-1, 1).double()
    ignored = target.masked_fill(~(mask.unsqueeze(1) if binary else mask), IGNORE)
    module = sl.create_loss(name)
    masked = module(logits, soft, weight_map=weights, mask=mask)
    expected = type(module)(ignore_index=IGNORE)(logits, ignored, weight_map=weights)
    torch.testing.assert_close(masked, expected)
    (grad,) = torch.autograd.grad(masked, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)
    poisoned = logits.detach().masked_fill(~mask.unsqueeze(1), torch.nan).requires_grad_()
    value = module(poisoned, soft, weight_map=weights, mask=mask)
    torch.testing.assert_close(value, masked)
    (grad,) = torch.autograd.grad(value, poisoned)
    assert torch.isfinite(grad).all() and (grad.masked_select(~mask.unsqueeze(1)) == 0).all()


def check_weighted_module_function_and_compound(
    name: str, logits: Tensor, target: Tensor, weights: Tensor, mask: Tensor
):
    """With a weight map and a mask: the module equals its function, and ``dice + name`` the sum."""
    module = sl.create_loss(name)
    value = module(logits, target, weight_map=weights, mask=mask)
    torch.testing.assert_close(value, module.function(logits, target, weight_map=weights, mask=mask))
    dice = "binary_dice" if name.startswith("binary_") else "dice"
    compound = sl.create_loss(f"{dice} + {name}")(logits, target, weight_map=weights, mask=mask)
    expected = sl.create_loss(dice)(logits, target, weight_map=weights, mask=mask) + value
    torch.testing.assert_close(compound, expected)
