"""The fused index-target path of cross-entropy and focal loss on CPU (``FusedIndexCE``): the same values
and gradients as torch's kernels (the path CUDA and ``torch.compile`` keep), ignored pixels included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs

import seglosses as sl
import seglosses.functional as SF
from seglosses._core import numerics
from seglosses.losses.focal import focal_modulation


@pytest.fixture(autouse=True)
def fused_at_every_size(monkeypatch):
    """These tests exercise the fused paths: taken at every input size here (in use, inputs below
    numerics.FUSED_MIN elements take torch's kernels and the plain references)."""
    monkeypatch.setattr(numerics, "FUSED_MIN", 0)


def _reference_focal(logits, target, gamma):
    """Focal loss per pixel from torch's cross-entropy kernel and the closed-form modulation."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    return focal_modulation(ce, gamma) if gamma else ce


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


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("name", ["ce", "focal", "difficulty_ce"])
def test_nan_at_ignored_pixels_changes_nothing_with_checks_off(name, classes):
    logits, target = make_inputs("softmax", (2, classes, 5, 6), dtype=torch.float32, ignore_fraction=0.3)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    dirty = logits.detach().masked_fill(ignored, float("nan")).requires_grad_()
    loss = sl.create_loss(f"{name}(ignore_index={IGNORE})")
    with sl.input_checks(False):
        results = [(v, torch.autograd.grad(v, x)[0]) for x in (logits, dirty) for v in [loss(x, target)]]
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    assert (results[1][1][ignored] == 0).all()


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("name", ["ce", "focal", "difficulty_ce(detach=False)"])
def test_a_retained_graph_gives_the_same_gradient_twice(name, classes):
    logits, target = make_inputs("softmax", (2, classes, 5, 6), dtype=torch.float32, ignore_fraction=0.2)
    spec = name[:-1] + f", ignore_index={IGNORE})" if name.endswith(")") else f"{name}(ignore_index={IGNORE})"
    value = sl.create_loss(spec)(logits, target)
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
                                     {"weight": [1.0, 2.0, 3.0], "pos_weight": 1.5, "reduction": "sum"},
                                     {"weight": [1.0, 2.0, 3.0]}, {"reduction": "none"},
                                     {"weight": [1.0, 2.0, 3.0], "ignore_index": 255}])  # fmt: skip
def test_bce_fused_kernel_equals_the_log_space_terms(options, monkeypatch):
    """bce on eager CPU runs torch's fused kernel (summed in it when nothing is ignored and the reduction
    is mean / sum); it gives the log-space formula's value and gradient."""
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
        results.append((value, torch.autograd.grad(value.sum(), logits)[0]))
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


@pytest.mark.parametrize("shape", [(3, 2, 7, 9), (2, 5, 4, 5, 6)])
@pytest.mark.parametrize("ignore", [0.0, 0.3])
@pytest.mark.parametrize("options", [{"alpha": 0.25, "gamma": 2.0}, {"alpha": 0.6, "gamma": 0.5},
                                     {"alpha": 0.0, "gamma": 3.0}, {"alpha": 0.3, "gamma": 0.0}])  # fmt: skip
@pytest.mark.parametrize("detach", [True, False])
def test_fused_difficulty_ce_matches_its_formula(shape, ignore, options, detach):
    """The fused path of the difficulty-weighted CE against its formula on torch's CE kernel (the path
    CUDA and torch.compile keep): values and gradients, detached weight or not."""
    logits, target = make_inputs("softmax", shape, ignore_fraction=ignore, scale=4.0)
    kwargs = dict(options, detach=detach, ignore_index=IGNORE, reduction="none")
    ours = SF.difficulty_ce_loss(logits, target, **kwargs)
    with sl.backend("reference"):
        reference = SF.difficulty_ce_loss(logits, target, **kwargs)
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    a, g = options["alpha"], options["gamma"]
    by_hand = (a + (1 - a) * (1 - torch.exp(-ce)) ** g) * ce
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours, by_hand)
    weights = torch.rand_like(ours)
    grads = [torch.autograd.grad((v * weights).sum(), logits)[0] for v in (ours, reference)]
    torch.testing.assert_close(grads[0], grads[1])
    if detach:  # a constant weight: w_i (p - onehot(t))
        weight = (a + (1 - a) * (1 - torch.exp(-ce.detach())) ** g) * weights
        expected = torch.autograd.grad((weight * ce).sum(), logits)[0]
        torch.testing.assert_close(grads[0], expected)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("floor", [0.0, 0.4])
def test_two_class_margin_path_gradcheck(gamma, floor):
    """float64 gradcheck of the fused function at C = 2 (the margin path) with ignored pixels (a detached
    weight is not the value's derivative: ``test_fused_difficulty_ce_matches_its_formula`` checks it)."""
    from seglosses.losses.cross_entropy import FusedIndexCE

    logits, target = make_inputs("softmax", (2, 2, 3, 4), ignore_fraction=0.25, scale=3.0)
    valid = target != IGNORE
    torch.autograd.gradcheck(lambda z: FusedIndexCE.apply(z, target, valid, gamma, floor, False), (logits,))


def test_two_class_margin_is_exact_at_large_margins():
    """softplus of the margin keeps float64 precision where it is large (ce ≈ m) and tiny (ce ≈ e^m)."""
    z = torch.tensor([[30.0, -30.0], [-50.0, 50.0], [0.0, 745.0], [2.0, -1.5]], dtype=torch.float64)
    logits = z.T.reshape(1, 2, 4, 1).contiguous().requires_grad_()
    target = torch.tensor([1, 1, 0, 0]).view(1, 4, 1)
    ours = SF.cross_entropy_loss(logits, target, reduction="none")
    margin = torch.tensor([60.0, -100.0, 745.0, -3.5], dtype=torch.float64)  # z_other - z_target
    torch.testing.assert_close(
        ours.flatten(), torch.logaddexp(margin, torch.zeros_like(margin)), rtol=1e-15, atol=0
    )
    grad = torch.autograd.grad(ours.sum(), logits)[0].flatten(2).squeeze(-1)[0]  # (2, 4)
    torch.testing.assert_close(grad[1], torch.sigmoid(margin) * torch.tensor([-1.0, -1.0, 1.0, 1.0]).double())
    torch.testing.assert_close(grad[0], -grad[1])


@pytest.mark.parametrize("name", ["ce", "focal", "difficulty_ce"])
def test_two_class_non_finite_logits_take_the_log_softmax_path(name):
    """C = 2 with a legal -inf logit (probability 0) and an invalid +inf one, checks off: the -inf pixel
    gives the log-softmax result, the +inf pixel NaN, as at C = 3."""
    target = torch.tensor([0, 1, 0]).view(1, 3, 1)
    logits = torch.tensor([[1.0, 0.5, 2.0], [-torch.inf, 0.5, torch.inf]]).view(1, 2, 3, 1).requires_grad_()
    loss = {"ce": SF.cross_entropy_loss, "focal": SF.focal_loss, "difficulty_ce": SF.difficulty_ce_loss}[name]
    with sl.input_checks(False):
        per_pixel = loss(logits, target, reduction="none")
    flat = per_pixel.flatten()
    assert flat[0] == 0 and flat[1].isfinite() and flat[2].isnan()
    grad = torch.autograd.grad(flat[:2].sum(), logits)[0]
    assert (
        grad[..., 0, :].eq(0).all() and grad[..., :2, :].isfinite().all()
    )  # NaN at the +inf pixel, as in torch


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_saturated_wrong_prediction_keeps_its_exact_ce(gamma):
    """C = 3, float32: where p_t underflows (ce = 200 > 87) ce comes from log_softmax, so the loss is 200,
    not inf, and every other pixel keeps torch's value."""
    logits, target = make_inputs("softmax", (2, 3, 4, 5), dtype=torch.float32)
    logits = logits.detach()
    logits[0, :, 0, 0] = torch.tensor([100.0, -100.0, 0.0])
    target[0, 0, 0] = 1
    logits.requires_grad_()
    ours = SF.focal_loss(logits, target, gamma=gamma, reduction="none")
    reference = _reference_focal(logits, target, gamma)
    assert ours[0, 0, 0].item() == 200.0
    torch.testing.assert_close(ours, reference)
    grads = [torch.autograd.grad(v.sum(), logits)[0] for v in (ours, reference)]
    torch.testing.assert_close(grads[0], grads[1])


def test_bce_nan_at_an_ignored_element_reaches_nothing():
    """Checks off, a NaN logit at an ignored element: the fallback's value and gradient equal those
    with a finite logit there, and the gradient there is 0."""
    logits = torch.tensor([0.3, float("nan"), -1.2]).view(1, 3, 1, 1).requires_grad_()
    clean = torch.tensor([0.3, 5.0, -1.2]).view(1, 3, 1, 1).requires_grad_()
    target = torch.tensor([1, 255, 0]).view(1, 3, 1, 1)
    results = []
    with sl.input_checks(False):
        for x in (logits, clean):
            value = SF.binary_cross_entropy_loss(x, target, ignore_index=255)
            results.append((value, torch.autograd.grad(value, x)[0]))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][1].flatten()[1] == 0
