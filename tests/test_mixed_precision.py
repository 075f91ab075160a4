"""Every registered loss in half precision matches float32 within a per-loss tolerance (issue 9).

Three ways half precision reaches a loss, on the CPU (bfloat16 autocast) and, when one is present, a CUDA
device (float16 autocast):

* **half tensors passed directly** (float16, bfloat16). seglosses computes in float32 inside, so the loss
  must equal the float32 loss *of the same (rounded) values* to float32 rounding, with a gradient of the
  input's dtype that is that float32 gradient rounded once (``ROUNDED``). Against the float32 loss of the
  unrounded values the inputs' rounding enters too: that is what the per-loss table ``TOLERANCE`` bounds.
* **float32 tensors inside** ``torch.autocast``: autocast must not change the result at all (a matrix
  product inside a loss would otherwise run in half precision); the backward runs outside the region, as
  PyTorch recommends.
* **a model's output under autocast** (half logits from a 1x1 convolution): the loss and the model's
  gradients are finite and within ``TOLERANCE`` of the float32 model.

Losses are read from the registry (as in tests/test_fuzz.py), so new ones are covered with the default
tolerances; a loss that needs a looser one gets a row in ``TOLERANCE`` with the reason.
"""

from __future__ import annotations

from typing import Dict, Tuple

import pytest
import torch
from test_fuzz import BUILDABLE, ENTRIES, make_loss, one_thread  # noqa: F401  (an autouse fixture)

HALF = [torch.float16, torch.bfloat16]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]
AUTOCAST = {"cpu": torch.bfloat16, "cuda": torch.float16}
IGNORE = 255
CLASSES, DIM = 3, 8

# relative error of one rounding of the gradient to the input's dtype (2^-11, 2^-8), with headroom
ROUNDED = {torch.float16: 1e-3, torch.bfloat16: 8e-3}

# (loss, gradient) relative tolerance against float32 on the unrounded values, per input dtype; measured
# maxima over the registry on these inputs were fp16 1e-5 / 7e-4 and bf16 1.4e-4 / 4.3e-3
DEFAULT: Dict[torch.dtype, Tuple[float, float]] = {torch.float16: (1e-4, 3e-3), torch.bfloat16: (1e-3, 2e-2)}
TOLERANCE: Dict[str, Dict[torch.dtype, Tuple[float, float]]] = {
    # d_P comes from the thresholded prediction p > 0.5: a pixel whose rounding crosses 0.5 moves the
    # distance field (bf16 measured: loss 3.1e-3, gradient 5.3e-2)
    "hausdorff_dt": {torch.bfloat16: (1e-2, 1e-1)},
    "binary_hausdorff_dt": {torch.bfloat16: (1e-2, 1e-1)},
    # the soft band is x - minpool(x): the min-pool's argmin flips between nearly equal rounded values
    # (bf16 measured: gradient 2.1e-2)
    "boundary_iou": {torch.float16: (1e-4, 5e-2), torch.bfloat16: (1e-3, 5e-2)},
    # the soft skeleton's min / max pools: an argmin flips between nearly equal rounded values (bf16
    # measured: gradient 5.1e-2 binary_cldice, 3.0e-2 binary_dice_cldice)
    "binary_cldice": {torch.bfloat16: (1e-3, 1e-1)},
    "binary_dice_cldice": {torch.bfloat16: (1e-3, 1e-1)},
    "binary_boundary_iou": {torch.float16: (1e-4, 5e-2), torch.bfloat16: (1e-3, 5e-2)},
    # γ_c follows the per-class recall under argmax: a rounding that changes an argmax moves γ_c (fp16
    # measured on the 3-D input: loss 1.0e-3)
    "adaptive_focal": {torch.float16: (5e-3, 5e-2), torch.bfloat16: (1e-2, 5e-2)},
    # the kept pixels are the hardest: a rounding that reorders two nearly equal losses (or moves p_t across
    # the threshold) swaps which pixel is kept (fp16 measured on the 3-D input: loss 1.2e-4)
    "topk_ce": {torch.float16: (1e-3, 5e-2), torch.bfloat16: (1e-2, 1e-1)},
    "ohem_ce": {torch.float16: (1e-3, 5e-2), torch.bfloat16: (1e-2, 1e-1)},
}


def tolerance(name: str, dtype: torch.dtype) -> Tuple[float, float]:
    return TOLERANCE.get(name, {}).get(dtype, DEFAULT[dtype])


def names():
    return [name for name in sorted(ENTRIES) if ENTRIES[name].domain in BUILDABLE]


def inputs(name: str, device: str, shape3d: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Float32 input and target of a loss's domain, a tenth of the target ignored."""
    g = torch.Generator().manual_seed(7)
    domain = ENTRIES[name].domain
    if domain == "embedding":
        x = torch.randn(2, DIM, 6, 7, generator=g)
        target = torch.randint(CLASSES, (2, 6, 7), generator=g)
    else:
        spatial = (3, 4, 5) if shape3d else (8, 9)
        x = torch.randn(2, CLASSES, *spatial, generator=g) * 3
        shape = (2, *spatial) if domain == "softmax" else x.shape
        target = torch.randint(CLASSES if domain == "softmax" else 2, shape, generator=g)
    target = target.masked_fill(torch.rand(target.shape, generator=g) < 0.1, IGNORE)
    return x.to(device), target.to(device)


def loss_and_grad(name: str, x: torch.Tensor, target: torch.Tensor, autocast: bool = False):
    """The loss (float64 copy) and its gradient w.r.t. ``x`` (in ``x``'s dtype); forward only under
    autocast."""
    x = x.detach().requires_grad_()
    loss = make_loss(name, classes=CLASSES, dim=DIM, ignore_index=IGNORE).to(x.device)
    with torch.autocast(x.device.type, dtype=AUTOCAST[x.device.type], enabled=autocast):
        value = loss(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return value, grad


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / max(|b|, 1)`` for losses, ``‖a - b‖ / ‖b‖`` for gradients (0 for two zero tensors)."""
    a, b = a.detach().double(), b.detach().double()
    if b.ndim == 0:
        return float((a - b).abs() / b.abs().clamp_min(1.0))
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float(a.norm())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", names())
def test_half_inputs_are_computed_in_float32(name, dtype, device):
    """A half input gives the float32 loss of its (rounded) values, and that gradient rounded once."""
    x, target = inputs(name, device)
    half = x.to(dtype)
    value, grad = loss_and_grad(name, half, target)
    expected, expected_grad = loss_and_grad(name, half.float(), target)
    assert value.dtype == torch.float32 and grad.dtype == dtype
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    assert relative(grad, expected_grad) <= ROUNDED[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", names())
def test_half_inputs_match_float32_within_the_table(name, dtype, device):
    """Against float32 on the unrounded values: within the loss's row of ``TOLERANCE`` (1-D to 3-D)."""
    loss_rtol, grad_rtol = tolerance(name, dtype)
    for shape3d in (False, True) if ENTRIES[name].domain != "embedding" else (False,):
        x, target = inputs(name, device, shape3d)
        value, grad = loss_and_grad(name, x.to(dtype), target)
        expected, expected_grad = loss_and_grad(name, x, target)
        assert relative(value, expected) <= loss_rtol, (float(value), float(expected))
        assert relative(grad.float(), expected_grad) <= grad_rtol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", names())
def test_autocast_does_not_change_a_float32_loss(name, device):
    """Float32 inputs inside torch.autocast: the same loss and gradient as outside (float32 rounding).
    Found this way: the embedding losses' distance and similarity products ran in half precision (fixed
    in ops/pairwise.py; the hard triplet miner even crashed)."""
    x, target = inputs(name, device)
    value, grad = loss_and_grad(name, x, target, autocast=True)
    expected, expected_grad = loss_and_grad(name, x, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", names())
def test_a_models_autocast_output(name, device):
    """A 1x1 convolution under autocast (its output in half precision) trains with the loss: finite loss
    and parameter gradients within the table's tolerance of the float32 model (for the output's dtype)."""
    x, target = inputs(name, device)
    dtype = AUTOCAST[device]
    torch.manual_seed(0)
    model = torch.nn.Conv2d(x.shape[1], x.shape[1], 1).to(device)
    results = []
    for autocast in (True, False):
        loss = make_loss(name, classes=CLASSES, dim=DIM, ignore_index=IGNORE).to(device)  # fresh state
        with torch.autocast(device, dtype=dtype, enabled=autocast):
            output = model(x)
            value = loss(output, target)
        assert output.dtype == (dtype if autocast else torch.float32)
        grads = torch.autograd.grad(value, list(model.parameters()))
        assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads)
        results.append((value, torch.cat([g.flatten() for g in grads])))
    (value, grad), (expected, expected_grad) = results
    loss_rtol, grad_rtol = tolerance(name, dtype)
    assert relative(value, expected) <= 4 * loss_rtol, (float(value), float(expected))  # model rounding too
    assert relative(grad, expected_grad) <= 4 * grad_rtol
