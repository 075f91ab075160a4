"""Focal family: CE identity, the closed-form gradients of SPEC §2 (and the document's erratum)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs

import seglosses.functional as SF


def naive_focal(logits, target, gamma, alpha=None):
    """Textbook per-pixel focal loss by plain autograd (fine away from saturation)."""
    log_p = torch.log_softmax(logits, 1)
    log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * torch.as_tensor(alpha, dtype=logits.dtype)[target]
    return loss


@pytest.mark.parametrize("dense", [False, True])
def test_gamma_zero_equals_cross_entropy_with_gradients(dense):
    logits, target = make_inputs("softmax", (2, 4, 5, 6), ignore_fraction=0.0 if dense else 0.3)
    if dense:
        target = torch.softmax(torch.randn(2, 4, 5, 6, dtype=torch.float64), 1)
    focal = SF.focal_loss(logits, target, gamma=0.0, ignore_index=IGNORE)
    ce = SF.cross_entropy_loss(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(focal, ce)
    torch.testing.assert_close(torch.autograd.grad(focal, logits)[0], torch.autograd.grad(ce, logits)[0])


def test_hand_value():
    """p_t = 3/4, γ = 2, α_t = 0.25: L = -0.25 (1/4)^2 ln(3/4)."""
    logits = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64).view(1, 2, 1)
    value = SF.focal_loss(logits, torch.tensor([[1]]), gamma=2.0, alpha=[0.5, 0.25])
    torch.testing.assert_close(value.item(), -0.25 * (1 / 4) ** 2 * math.log(3 / 4))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
def test_value_and_gradient_match_textbook_formula(gamma):
    logits, target = make_inputs("softmax", (2, 3, 4, 4))
    alpha = [0.25, 1.0, 2.0]
    ours = SF.focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction="none")
    reference = naive_focal(logits, target, gamma, alpha)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(reference.sum(), logits)[0]
    )


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_closed_form_logit_gradient_of_spec(gamma):
    """∂L/∂z_j = α_t (p_j - [j = t]) ((1-p_t)^γ - γ (1-p_t)^(γ-1) p_t log p_t)."""
    logits, target = make_inputs("softmax", (1, 4, 3, 3))
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(
        SF.focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction="sum"), logits
    )
    p = torch.softmax(logits, 1)
    pt = p.gather(1, target.unsqueeze(1))
    factor = (1 - pt) ** gamma - gamma * (1 - pt) ** (gamma - 1) * pt * pt.log()
    y = F.one_hot(target, 4).movedim(-1, 1)
    expected = alpha[target].unsqueeze(1) * (p - y) * factor
    torch.testing.assert_close(grad, expected)


def test_probability_gradient_and_document_erratum():
    """∂L/∂p_t = α[γ(1-p)^(γ-1) log p - (1-p)^γ / p]; the document's sign on the first term is wrong."""
    gamma, alpha = 2.0, 0.25
    p = torch.tensor([0.1, 0.4, 0.8], dtype=torch.float64, requires_grad=True)
    loss = -alpha * (1 - p) ** gamma * p.log()
    (grad,) = torch.autograd.grad(loss.sum(), p)
    q = p.detach()
    spec = alpha * (gamma * (1 - q) ** (gamma - 1) * q.log() - (1 - q) ** gamma / q)
    document = -alpha * (gamma * (1 - q) ** (gamma - 1) * q.log() + (1 - q) ** gamma / q)
    torch.testing.assert_close(grad, spec)
    assert not torch.allclose(grad, document)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("dense", [False, True])
def test_no_nan_gradient_for_small_gamma_at_saturated_logits(gamma, dense):
    """The must-not-happen: NaN gradients with 0 < γ < 1 at |z| = 100."""
    target = torch.tensor([[0, 1, 2, 1]])
    logits = (F.one_hot(target, 3).movedim(-1, 1).float() * 200 - 100).requires_grad_()
    wrong = logits.detach().flip(1).requires_grad_()
    for z in (logits, wrong):
        t = F.one_hot(target, 3).movedim(-1, 1).float() if dense else target
        loss = SF.focal_loss(z, t, gamma=gamma)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert SF.focal_loss(logits, target, gamma=gamma).item() == 0.0


def test_softmax_not_one_vs_all_sigmoid():
    """Multi-class focal is softmax over classes; a one-vs-all sigmoid version gives another value."""
    logits, target = make_inputs("softmax", (1, 3, 4, 4))
    ours = SF.focal_loss(logits, target)
    torch.testing.assert_close(ours, naive_focal(logits, target, 2.0).mean())
    one_hot = F.one_hot(target, 3).movedim(-1, 1).double()
    sigmoid_version = SF.binary_focal_loss(logits, one_hot)
    assert not torch.isclose(ours, sigmoid_version)


def test_mean_is_plain_mean_over_valid_pixels():
    logits, target = make_inputs("softmax", (2, 3, 4, 4), ignore_fraction=0.3)
    alpha = [0.1, 0.2, 0.3]
    none = SF.focal_loss(logits, target, alpha=alpha, ignore_index=IGNORE, reduction="none")
    mean = SF.focal_loss(logits, target, alpha=alpha, ignore_index=IGNORE)
    torch.testing.assert_close(mean, none.sum() / (target != IGNORE).sum())


def test_scalar_alpha_scales_every_class():
    logits, target = make_inputs("softmax")
    torch.testing.assert_close(
        SF.focal_loss(logits, target, alpha=0.25), 0.25 * SF.focal_loss(logits, target)
    )


def torchvision_sigmoid_focal(logits, target, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss's formula, written out (hard targets)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_binary_matches_torchvision_formula(alpha):
    logits, target = make_inputs("binary", (2, 2, 4, 4))
    ours = SF.binary_focal_loss(logits, target, alpha=alpha, gamma=2.0, reduction="none")
    torch.testing.assert_close(ours, torchvision_sigmoid_focal(logits, target.double(), alpha, 2.0))


def test_binary_equals_softmax_on_two_logits():
    """Sigmoid focal on z equals softmax focal on (0, z), for soft targets too."""
    logits, _ = make_inputs("binary", (2, 1, 4, 4))
    soft = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    binary = SF.binary_focal_loss(logits, soft, gamma=1.5, reduction="none")
    two = torch.cat([torch.zeros_like(logits), logits], 1)
    softmax = SF.focal_loss(two, torch.cat([1 - soft, soft], 1), gamma=1.5, reduction="none")
    torch.testing.assert_close(binary.squeeze(1), softmax)


def test_binary_gamma_zero_equals_bce_with_gradients():
    logits, target = make_inputs("binary", (2, 3, 4, 4), ignore_fraction=0.2)
    a = SF.binary_focal_loss(logits, target, gamma=0.0, ignore_index=IGNORE)
    b = SF.binary_cross_entropy_loss(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, logits)[0], torch.autograd.grad(b, logits)[0])


def test_dense_target_with_empty_rows_gamma_zero_is_still_cross_entropy():
    """Both divide a dense target's loss by Σ y, so rows of zeros count nowhere in either."""
    logits, target = make_inputs("softmax", (2, 3, 4, 4))
    one_hot = F.one_hot(target, 3).movedim(-1, 1).double()
    one_hot[:, :, :2] = 0
    torch.testing.assert_close(
        SF.focal_loss(logits, one_hot, gamma=0.0), SF.cross_entropy_loss(logits, one_hot)
    )


@pytest.mark.parametrize("gamma", [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], 0.5, 0.0])
def test_double_backward_is_finite_with_ignored_pixels(gamma):
    """The reference of the focal modulation (what a double backward differentiates) is the constant 0
    where ce = 0: the second derivative of u^γ there is infinite for γ < 2, times ce's zero derivative
    at an ignored pixel it was NaN (a per-class γ takes that path)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (1, 2, 3), generator=g)
    target[0, 0, 0] = 255
    assert torch.autograd.gradgradcheck(
        lambda z: SF.focal_loss(z, target, gamma=gamma, ignore_index=255), (logits,)
    )
