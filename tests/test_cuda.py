"""CUDA agrees with the CPU: every registered loss and the distance transform (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import ENTRIES, IGNORE, make_inputs

import seglosses as sl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
@pytest.mark.parametrize("shape", [(2, 3, 9, 10), (1, 3, 5, 6, 7)], ids=["2d", "3d"])
def test_loss_and_gradient_match_the_cpu(entry, shape):
    logits, target = make_inputs(entry.domain, shape, ignore_fraction=0.2)
    loss = entry.module(ignore_index=IGNORE)
    cpu = loss(logits, target)
    (cpu_grad,) = torch.autograd.grad(cpu, logits)
    cuda_logits = logits.detach().cuda().requires_grad_()
    gpu = entry.module(ignore_index=IGNORE).cuda()(cuda_logits, target.cuda())  # fresh: stateful losses
    (gpu_grad,) = torch.autograd.grad(gpu, cuda_logits)
    torch.testing.assert_close(gpu.cpu(), cpu)
    torch.testing.assert_close(gpu_grad.cpu(), cpu_grad)


@pytest.mark.parametrize("shape, spacing", [((4, 70, 50), (1.0, 1.0)), ((2, 20, 33, 25), (2.0, 0.5, 1.2))])
def test_distance_transform_matches_scipy(shape, spacing):
    ndimage = pytest.importorskip("scipy.ndimage")
    mask = torch.rand(shape) < 0.9
    mask[0] = True  # a sample without zero pixels: the surrounded-by-background rule
    result = sl.distance_transform(mask.cuda(), spacing)
    assert result.is_cuda
    for b in range(1, shape[0]):
        expected = torch.from_numpy(ndimage.distance_transform_edt(mask[b].numpy(), sampling=spacing))
        torch.testing.assert_close(result[b].cpu().double(), expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(result.cpu(), sl.distance_transform(mask, spacing, backend="torch"))
    signed = sl.signed_distance_map(mask.cuda(), spacing)
    torch.testing.assert_close(signed.cpu(), sl.signed_distance_map(mask, spacing))


@pytest.mark.parametrize("spec", ["ce", "focal", "dice", "ce + dice", "tversky", "gdl", "bce", "binary_dice"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_a_training_step_with_checks_on_makes_no_host_sync(spec, backend):
    """Issue 17: the data checks are deferred on CUDA (seglosses._core.deferred), so a forward + backward
    step with the checks on passes under torch's sync debug mode; a bad input raises at a later call."""
    if backend == "triton":
        pytest.importorskip("triton")
    binary = spec.startswith("b")
    logits = torch.randn(2, 3, 32, 32, device="cuda", requires_grad=True)
    target = (
        (torch.rand_like(logits) > 0.5).float() if binary else torch.randint(0, 3, (2, 32, 32), device="cuda")
    )
    loss = sl.create_loss(spec)
    with sl.backend(backend):
        loss(logits, target).backward()  # the first call: lazy initialisation may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss(logits, target).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sl.flush_input_checks()
    bad = logits.detach().clone()
    bad[0, 0, 0, 0] = torch.nan
    loss(bad, target)
    with pytest.raises(sl.SegLossError, match="NaN or \\+inf"):
        sl.flush_input_checks()
