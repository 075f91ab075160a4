"""The fused index-target path of cross-entropy and focal loss on CPU (``FusedIndexCE``): the same values
and gradients as torch's kernels (the path CUDA and ``torch.compile`` keep), ignored pixels included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs

import seglosses as sl
import seglosses.functional as SF
from seglosses.losses.focal import _FocalModulation


def _reference_focal(logits, target, gamma):
    """Focal loss per pixel from torch's cross-entropy kernel and the closed-form modulation."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    return _FocalModulation.apply(ce, gamma) if gamma else ce


@pytest.mark.parametrize("shape", [(3, 2, 7, 9), (2, 5, 4, 5, 6)])
@pytest.mark.parametrize("ignore", [0.0, 0.3])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
def test_fused_path_matches_torch_kernels(shape, ignore, gamma):
    logits, target = make_inputs("softmax", shape, ignore_fraction=ignore, scale=4.0)
    ours = SF.focal_loss(logits, target, gamma=gamma, ignore_index=IGNORE, reduction="none")
    reference = _reference_focal(logits, target, gamma)
    torch.testing.assert_close(ours, reference)
    weights = torch.rand_like(ours)
    grads = [torch.autograd.grad((v * weights).sum(), logits)[0] for v in (ours, reference)]
    torch.testing.assert_close(grads[0], grads[1])
    if ignore:
        assert (grads[0].movedim(1, -1)[target == IGNORE] == 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_equals_torch(reduction):
    logits, target = make_inputs("softmax", (2, 4, 6, 6), ignore_fraction=0.2)
    ours = SF.cross_entropy_loss(logits, target, ignore_index=IGNORE, reduction=reduction)
    theirs = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction=reduction)
    torch.testing.assert_close(ours, theirs)
    g = [torch.autograd.grad(v.sum(), logits)[0] for v in (ours, theirs)]
    torch.testing.assert_close(g[0], g[1])


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_nan_at_ignored_pixels_changes_nothing_with_checks_off(name):
    logits, target = make_inputs("softmax", (2, 3, 5, 6), dtype=torch.float32, ignore_fraction=0.3)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    dirty = logits.detach().masked_fill(ignored, float("nan")).requires_grad_()
    loss = sl.create_loss(f"{name}(ignore_index={IGNORE})")
    with sl.input_checks(False):
        results = [(v, torch.autograd.grad(v, x)[0]) for x in (logits, dirty) for v in [loss(x, target)]]
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    assert (results[1][1][ignored] == 0).all()


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_a_retained_graph_gives_the_same_gradient_twice(name):
    logits, target = make_inputs("softmax", (2, 3, 5, 6), dtype=torch.float32, ignore_fraction=0.2)
    value = sl.create_loss(f"{name}(ignore_index={IGNORE})")(logits, target)
    first = torch.autograd.grad(value, logits, retain_graph=True)[0].clone()
    second = torch.autograd.grad(value, logits)[0]
    torch.testing.assert_close(second, first, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_empty_batch(name):
    logits = torch.zeros(0, 3, 4, 4, requires_grad=True)
    value = sl.create_loss(name)(logits, torch.zeros(0, 4, 4, dtype=torch.long))
    assert value.item() == 0
    assert torch.autograd.grad(value, logits)[0].shape == logits.shape


def test_saturated_logits_give_finite_focal_gradients():
    """|z| = 100 in float32: log-space CE and expm1 keep the loss and the gradient finite."""
    target = torch.randint(0, 3, (2, 4, 4))
    logits = (F.one_hot(target, 3).movedim(-1, 1).float() * 200 - 100).requires_grad_()
    for gamma in (0.5, 2.0):
        value = SF.focal_loss(logits, target, gamma=gamma)
        grad = torch.autograd.grad(value, logits)[0]
        assert value.isfinite() and grad.isfinite().all()


@pytest.mark.parametrize("options", [{}, {"pos_weight": [2.0, 0.5, 1.0]}, {"label_smoothing": 0.1},
                                     {"weight": [1.0, 2.0, 3.0], "ignore_index": 255}])  # fmt: skip
def test_bce_fused_kernel_equals_the_log_space_terms(options, monkeypatch):
    """bce on eager CPU runs torch's fused kernel; it gives the log-space formula's value and gradient."""
    import seglosses.losses.cross_entropy as ce_module

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 2, (2, 3, 5, 6), generator=g)
    if "ignore_index" in options:
        target[0, 1, :2] = 255
    else:
        target = target.double()
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(ce_module, "_fused_binary_ce", lambda *args: None)
        value = (
            sl.create_loss("bce")(logits, target)
            if not options
            else sl.BinaryCrossEntropyLoss(**options)(logits, target)
        )
        results.append((value, torch.autograd.grad(value, logits)[0]))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_bce_minus_inf_logit_with_target_zero_is_legal():
    """torch's kernel gives NaN there; the fallback gives the loss 0 and a zero gradient (SPEC 6)."""
    logits = torch.tensor([-torch.inf, 0.5]).view(1, 2, 1, 1).requires_grad_()
    target = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    with sl.input_checks(False):
        value = sl.create_loss("bce")(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    torch.testing.assert_close(value, F.softplus(torch.tensor(-0.5)) / 2)
    assert grad.flatten()[0] == 0 and grad.isfinite().all()
