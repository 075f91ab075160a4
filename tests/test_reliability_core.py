"""Issue 16 (Reliability II), the core losses: gradients of every floating input, float64 accuracy,
one reading of the input-check switch per call, torch.func transforms, non-finite logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seglosses as sl
import seglosses.functional as SF
from seglosses._core import targets as targets_module
from seglosses.losses import overlap as overlap_module

LOGIT_DOMAINS = ("softmax", "binary")


def logit_losses():
    return [e for e in sl.list_losses(details=True) if e.domain in LOGIT_DOMAINS]


def inputs(domain, batch=(), dtype=torch.float64, seed=0):
    """Logits and a target for a loss of ``domain``: (2, 3, 4, 5) with an index target, or (2, 2, 4, 5)
    with a 0/1 target (``batch``: extra leading dims for vmap)."""
    g = torch.Generator().manual_seed(seed)
    if domain == "softmax":
        return (torch.randn(*batch, 2, 3, 4, 5, generator=g, dtype=dtype),
                torch.randint(0, 3, (*batch, 2, 4, 5), generator=g))  # fmt: skip
    return (torch.randn(*batch, 2, 2, 4, 5, generator=g, dtype=dtype),
            (torch.rand(*batch, 2, 2, 4, 5, generator=g) > 0.5).to(dtype))  # fmt: skip


# --- 1. gradients of every floating input ----------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_dense_focal_differentiates_target_and_alpha(gamma):
    """A soft target and a tensor α get the gradient of ``-Σ_c y_c α_c (1-p_c)^γ log p_c`` (they got
    none before), checked in float64."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64)
    y = torch.softmax(torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64), 1).requires_grad_()
    alpha = torch.rand(3, generator=g, dtype=torch.float64).add(0.1).requires_grad_()
    zz = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z, y, a: SF.focal_loss(z, y, gamma=gamma, alpha=a), (zz, y, alpha))


def test_alpha_gradient_is_the_same_for_index_and_one_hot_targets():
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 4, 4))
    one_hot = F.one_hot(t, 3).movedim(-1, 1).double()
    grads = []
    for target in (t, one_hot):
        alpha = torch.tensor([0.2, 0.5, 1.5], dtype=torch.float64, requires_grad=True)
        SF.focal_loss(z, target, gamma=2.0, alpha=alpha).backward()
        grads.append(alpha.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_a_gamma_that_requires_grad_is_refused():
    with pytest.raises(sl.SegLossError, match="gamma.detach"):
        SF.focal_loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                      gamma=torch.tensor([1.0, 2.0, 3.0], requires_grad=True))  # fmt: skip


# --- 2. float64 is float64-accurate ----------------------------------------------------------------


def test_float64_losses_match_torch_to_float64_precision():
    """Sums of weights, counts and target mass run in float64 for float64 logits (they ran in float32:
    relative errors of 2e-8 to 2e-7)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 5, 16, 16, generator=g, dtype=torch.float64)
    t = torch.randint(0, 5, (4, 16, 16), generator=g)
    t[:, :2] = 255
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    y = torch.softmax(torch.randn(4, 5, 16, 16, generator=g, dtype=torch.float64), 1)
    wy = y * w[:, None, None]
    per_pixel = F.cross_entropy(z, t, ignore_index=255, reduction="none")
    cases = [
        (SF.cross_entropy_loss(z, t, weight=w, ignore_index=255),
         F.cross_entropy(z, t, weight=w, ignore_index=255)),
        (SF.cross_entropy_loss(z, y), F.cross_entropy(z, y)),
        (SF.cross_entropy_loss(z, y, weight=w), -(wy * z.log_softmax(1)).sum() / wy.sum()),
        (SF.focal_loss(z, t, gamma=0.0, alpha=w, ignore_index=255),
         (per_pixel * w[t.clamp(max=4)]).sum() / (t != 255).sum()),
    ]  # fmt: skip
    for ours, reference in cases:
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, reference, rtol=1e-14, atol=0)


def test_float64_gradcheck_with_respect_to_a_soft_target():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64)
    y = torch.softmax(torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64), 1).requires_grad_()
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, w: SF.cross_entropy_loss(z, y, weight=w), (y, w))
    assert torch.autograd.gradcheck(lambda y: SF.cross_entropy_loss(z, y, label_smoothing=0.1), (y,))


# --- 3. the input-check switch is read once per call -----------------------------------------------


def test_binary_region_losses_read_the_check_switch_once(monkeypatch):
    """Toggled between two reads (off, then on), a +inf logit went through the checks unseen and then
    the shortcut that trusts them: a finite 0.51. One reading per call: off, so a non-finite loss."""
    answers = iter([False, True, True, True])

    def toggling():
        return next(answers)

    monkeypatch.setattr(targets_module, "input_checks_enabled", toggling)
    monkeypatch.setattr(overlap_module, "input_checks_enabled", toggling)
    logits = torch.zeros(1, 1, 2, 2)
    logits[0, 0, 0, 0] = torch.inf
    loss = SF.binary_dice_loss(logits, torch.ones(1, 1, 2, 2))
    assert not torch.isfinite(loss)


# --- 7. torch.func ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", logit_losses(), ids=lambda e: e.name)
def test_torch_func_grad_equals_autograd(entry):
    """``torch.func.grad`` works on every loss and gives autograd's gradient (the plain-torch paths
    serve it; custom Functions are in the form torch.func needs)."""
    loss = sl.create_loss(entry.spec)
    loss.eval()  # stateful losses: frozen statistics
    logits, target = inputs(entry.domain)
    grad = torch.func.grad(lambda z: loss(z, target))(logits)
    reference = logits.clone().requires_grad_()
    loss(reference, target).backward()
    torch.testing.assert_close(grad, reference.grad)


@pytest.mark.parametrize("entry", logit_losses(), ids=lambda e: e.name)
def test_torch_func_vmap_over_a_batch_of_batches(entry):
    loss = sl.create_loss(entry.spec)
    loss.eval()
    logits, target = inputs(entry.domain, batch=(3,))
    values = torch.func.vmap(loss)(logits, target)
    torch.testing.assert_close(values, torch.stack([loss(logits[k], target[k]) for k in range(3)]))


# --- 5. -inf logits: one rule for the family ---------------------------------------------------------

LOG_LOSSES = [
    "ce",
    "focal",
    "focal(gamma=0.5)",
    "ce(label_smoothing=0.1)",
    "ce(weight=[1.0, 2.0, 3.0])",
    "difficulty_ce",
    "adaptive_focal",
    "adaptive_smoothing_ce",
    "cb_focal",
    "frequency_focal",
]


def neg_inf_case(where):
    """(1, 3, 2, 2) float64 logits, index target 0 everywhere; -inf at pixel (0, 0): every class
    (``all``), the target class (``target``) or another class (``other``)."""
    z = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    classes = {"all": slice(None), "target": 0, "other": 1}[where]
    z[0, classes, 0, 0] = -torch.inf
    return z.requires_grad_(), torch.zeros(1, 2, 2, dtype=torch.long)


@pytest.mark.parametrize("spec", [e.spec for e in logit_losses() if e.domain == "softmax"])
def test_a_pixel_with_every_logit_minus_inf_is_an_error(spec):
    z, t = neg_inf_case("all")
    with pytest.raises(sl.SegLossError, match="1 pixel whose logits are all -inf"):
        sl.create_loss(spec)(z, t)


@pytest.mark.parametrize("spec", LOG_LOSSES)
def test_minus_inf_where_the_target_has_mass(spec):
    """Checks on: an error saying so; off: +inf with the finite gradient p - y (focal's was NaN)."""
    z, t = neg_inf_case("target")
    loss = sl.create_loss(spec)
    with pytest.raises(sl.SegLossError, match="-inf logits value there|1 -inf logits value"):
        loss(z, t)
    with sl.input_checks(False):
        value = loss(z, t)
        value.backward()
    assert value == torch.inf and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("spec", LOG_LOSSES)
def test_minus_inf_is_found_when_huge_logits_make_the_checked_sum_nan(spec):
    """Finite logits near float32's maximum overflow the checked sum to +inf, and a -inf logit then
    makes it NaN rather than -inf: the checks must still find the -inf where the target has mass."""
    z, t = neg_inf_case("target")
    z = z.detach().float()
    z[0, :, 1, :] = 3e38  # finite, but their sum overflows
    with pytest.raises(sl.SegLossError, match="1 -inf logits value"):
        sl.create_loss(spec)(z, t)


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_small_cross_entropy_is_torch_mean_to_the_bit(ignore_index):
    """With the valid count known on the host (checks on, or no ignore_index), the mean is torch's own;
    checks off with an ignore mask it is the summed loss over a counted denominator (same value)."""
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(2, 5, 16, 16, generator=gen)
    t = torch.randint(0, 5, (2, 16, 16), generator=gen)
    if ignore_index is not None:
        t[0, :4] = ignore_index
    torch_ignore = -100 if ignore_index is None else ignore_index
    expected = F.cross_entropy(z, t, ignore_index=torch_ignore)
    assert torch.equal(SF.cross_entropy_loss(z, t, ignore_index=ignore_index), expected)
    with sl.input_checks(False):
        torch.testing.assert_close(SF.cross_entropy_loss(z, t, ignore_index=ignore_index), expected)
    everything_ignored = torch.full_like(t, 255)
    for checks in (True, False):
        with sl.input_checks(checks):
            zero = SF.cross_entropy_loss(z.requires_grad_(), everything_ignored, ignore_index=255)
        assert zero.item() == 0 and zero.requires_grad


def test_minus_inf_elsewhere_is_legal_except_under_label_smoothing():
    z, t = neg_inf_case("other")
    for spec in ("ce", "focal", "dice"):
        assert torch.isfinite(sl.create_loss(spec)(z, t))
    with pytest.raises(sl.SegLossError, match="label smoothing puts mass on every class"):
        SF.cross_entropy_loss(z, t, label_smoothing=0.1)
    with sl.input_checks(False):
        value = SF.cross_entropy_loss(z, t, label_smoothing=0.1)
        value.backward()
    assert value == torch.inf and torch.isfinite(z.grad).all()


def test_binary_log_losses_and_minus_inf():
    """bce / binary_focal: -inf where the target is 1 is +inf (an error with the checks on); where it
    is 0, or in a region loss, it is legal."""
    z = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    z[0, 0, 0, 0] = -torch.inf
    y = torch.ones(1, 2, 2, 2, dtype=torch.float64)
    for loss in (SF.binary_cross_entropy_loss, SF.binary_focal_loss):
        with pytest.raises(sl.SegLossError, match="target puts mass there"):
            loss(z, y)
        assert torch.isfinite(loss(z, 1 - y))
    assert torch.isfinite(SF.binary_dice_loss(z, y))
    with pytest.raises(sl.SegLossError, match="label smoothing"):
        SF.binary_cross_entropy_loss(z, 1 - y, label_smoothing=0.1)


# --- 12. double backward: the second derivative of the formula, on every path ------------------------


@pytest.mark.parametrize("entry", logit_losses(), ids=lambda e: e.name)
def test_double_backward_works_for_every_loss(entry):
    """A backward with create_graph=True differentiates the plain formula (the fused paths raised; the
    torch-kernel paths, weight= or CUDA, worked). difficulty_ce's detached weight is a constant, so its
    gradient is not a gradient field: checked with detach=False."""
    spec = "difficulty_ce(detach=False)" if entry.name == "difficulty_ce" else entry.spec
    loss = sl.create_loss(spec, ignore_index=255)
    loss.eval()
    logits, target = inputs(entry.domain)
    logits, target = logits[:1, :, :3, :3], target[:1, ..., :3, :3]
    if entry.domain == "softmax":
        target = target.clone()
        target[0, 0, 0] = 255
    assert torch.autograd.gradgradcheck(lambda z: loss(z, target), (logits.clone().requires_grad_(),))


def test_double_backward_with_and_without_weights_agree():
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 4, 4))
    hessian_vector = []
    for weight in (None, [1.0, 1.0, 1.0]):
        (grad,) = torch.autograd.grad(SF.cross_entropy_loss(z, t, weight=weight), z, create_graph=True)
        hessian_vector.append(torch.autograd.grad(grad.square().sum(), z)[0])
    torch.testing.assert_close(hessian_vector[0], hessian_vector[1])


# --- 10, 11. targets a user of another library passes --------------------------------------------------


def test_a_bool_one_hot_target_is_a_one_hot_target():
    """It was refused with 'expected (N, C, *S) = (2, 3, 4, 5), got shape (2, 3, 4, 5)'."""
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 4, 5))
    one_hot = F.one_hot(t, 3).movedim(-1, 1)
    for spec in ("ce", "focal", "dice"):
        loss = sl.create_loss(spec)
        torch.testing.assert_close(loss(z, one_hot.bool()), loss(z, t))


@pytest.mark.parametrize(
    "target, hint",
    [
        (torch.zeros(2, 1, 4, 5, dtype=torch.long), r"target.squeeze\(1\)"),
        (torch.full((2, 4, 5), -100), "ignore_index=-100"),
        (torch.full((2, 4, 5), 255), "ignore_index=255"),
    ],
    ids=["monai-channel-dim", "torch-ignore-value", "void-255"],
)
def test_targets_from_other_libraries_get_a_hint(target, hint):
    for loss in (SF.cross_entropy_loss, SF.dice_loss):
        with pytest.raises(sl.SegLossError, match=hint):
            loss(torch.randn(2, 3, 4, 5), target)


def test_a_zero_255_binary_mask_gets_a_hint():
    with pytest.raises(sl.SegLossError, match=r"target // 255"):
        SF.binary_dice_loss(torch.randn(2, 1, 4, 5), torch.full((2, 1, 4, 5), 255))


def test_the_functions_answer_unknown_and_missing_arguments_with_a_seglosses_error():
    """They raised Python's TypeError (the modules and create_loss already answered with hints)."""
    z, t = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    with pytest.raises(sl.SegLossError, match="'binary_dice' a sigmoid per channel"):
        SF.dice_loss(z, t, softmax=True)
    with pytest.raises(sl.SegLossError, match="did you mean 'smooth'"):
        sl.dice_loss(z, t, smoth=1.0)
    signature = r"focal_loss\(logits, target, weight_map, mask, \*, gamma"
    with pytest.raises(sl.SegLossError, match=signature + r".*missing .*'target'"):
        SF.focal_loss(z)
    compiled = torch.compile(SF.dice_loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(z, t), SF.dice_loss(z, t))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3, 256, 256)], ids=["reference", "fused"])
def test_class_weights_that_require_grad_get_their_gradient(label_smoothing, shape):
    """SPEC 6: a tensor option that requires a gradient gets the formula's (torch's cross-entropy kernel
    refuses a weight that requires grad); the module form refuses one, since its options are buffers."""
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 3, (shape[0], *shape[2:]), generator=gen)
    t[0, 0] = 255
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    loss = SF.cross_entropy_loss(z, t, weight=w, label_smoothing=label_smoothing, ignore_index=255)
    (grad,) = torch.autograd.grad(loss, w)
    expected = F.cross_entropy(z, t, weight=w.detach(), label_smoothing=label_smoothing, ignore_index=255)
    torch.testing.assert_close(loss, expected)
    if shape[-1] == 4:
        torch.autograd.gradcheck(
            lambda weight: SF.cross_entropy_loss(
                z, t, weight=weight, label_smoothing=label_smoothing, ignore_index=255
            ),
            (w,),
        )
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(sl.SegLossError, match="weight of CrossEntropyLoss without requires_grad"):
        sl.CrossEntropyLoss(weight=w)
