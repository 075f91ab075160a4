"""The fused CPU paths of the binary (sigmoid) losses, against the formulas they replace.

* ``_SigmoidDenseSums`` (``_core/stats.py``): TP, Σp and Σy of ``p = σ(z)`` and a dense target, with the
  closed-form backward ``p (1 - p) (G + H y)`` written into the saved probabilities. Checked against
  ``overlap_from_dense(sigmoid_f32(z), y, valid)`` (autograd through plain tensor operations).
* ``_BinaryFocal`` (``losses/focal.py``): sigmoid focal loss with its gradient in closed form, checked
  against the log-space terms of ``binary_log_terms`` (autograd), which stay the path for logits out of
  its range, CUDA and ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch
from helpers import IGNORE, make_inputs, peak_extra_bytes

import seglosses as sl
import seglosses.functional as SF
from seglosses._core import numerics
from seglosses._core.numerics import binary_log_terms, compute_dtype, sigmoid_f32
from seglosses._core.stats import overlap_from_dense, sigmoid_overlap_from_dense


@pytest.fixture(autouse=True)
def fused_at_every_size(monkeypatch):
    """These tests exercise the fused paths: taken at every input size here (in use, inputs below
    numerics.FUSED_MIN elements take torch's kernels and the plain references)."""
    monkeypatch.setattr(numerics, "FUSED_MIN", 0)


REGION = {
    "binary_dice": SF.binary_dice_loss,
    "binary_jaccard": SF.binary_jaccard_loss,
    "binary_tversky": SF.binary_tversky_loss,
    "binary_focal_tversky": SF.binary_focal_tversky_loss,
    "binary_gdl": SF.binary_generalized_dice_loss,
}
TARGETS = ["bool", "int64", "uint8", "float_hard", "float_soft", "float64_soft", "int64_ignored"]


def _target(kind, shape, seed=0):
    """A binary target of ``kind`` and the valid mask (None: nothing ignored)."""
    g = torch.Generator().manual_seed(seed)
    hard = torch.randint(0, 2, shape, generator=g)
    if kind == "bool":
        return hard.bool(), None
    if kind in ("int64", "uint8"):
        return hard.to(getattr(torch, kind)), None
    if kind == "float_hard":
        return hard.float(), None
    if kind in ("float_soft", "float64_soft"):
        return torch.rand(shape, generator=g, dtype=torch.float64).to(
            torch.float32 if kind == "float_soft" else torch.float64
        ), None
    valid = torch.rand(shape, generator=g) > 0.3
    return hard.masked_fill(~valid, IGNORE), valid


def _reference_overlap(logits, target, valid, finite=False, squared=False, soft_label=False, weight=None):
    """The formula the fused statistics replace: sigmoid_f32, the target as numbers zeroed where ignored
    (the plain form only: the other forms and weights never take the fused path)."""
    assert not squared and not soft_label and weight is None
    dense = target.to(compute_dtype(logits))
    if valid is not None:
        dense = dense.masked_fill(~valid, 0)
    return overlap_from_dense(sigmoid_f32(logits), dense, valid)


def _reference_focal(logits, target, gamma, alpha, ignore_index):
    """The log-space formula the fused focal replaces (per element, 0 at ignored elements)."""
    work = logits.to(compute_dtype(logits))
    valid = None if ignore_index is None or target.is_floating_point() else target != ignore_index
    y = target.to(work.dtype) if valid is None else target.to(work.dtype).masked_fill(~valid, 0)
    positive, negative = binary_log_terms(work, y, gamma)
    if alpha is None:
        loss = -(positive + negative)
    else:
        a = torch.as_tensor(alpha, dtype=work.dtype)
        a = a.view(1, -1, *[1] * (work.ndim - 2)) if a.ndim else a
        loss = -(a * positive + (1 - a) * negative)
    return loss if valid is None else loss.masked_fill(~valid, 0)


def _grad(value, logits, weights=None):
    value = value if weights is None else (value * weights).sum()
    return torch.autograd.grad(value, logits)[0]


# --------------------------------------------------------------------------- overlap statistics


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("shape", [(2, 3, 17), (2, 2, 5, 7), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_statistics_and_gradient_equal_the_dense_formula(kind, shape, dtype):
    """TP, FP, FN and their gradient (any weighting of the three tables) equal the autograd formula, for
    bool, integer, float and soft targets, ignored elements included (exactly 0 gradient there)."""
    logits, _ = make_inputs("binary", shape, dtype=dtype, scale=3.0)
    target, valid = _target(kind, shape)
    fast, slow = sigmoid_overlap_from_dense(logits, target, valid), _reference_overlap(logits, target, valid)
    weights = torch.randn(3, *fast.tp.shape, dtype=fast.tp.dtype)
    torch.testing.assert_close(torch.stack(fast), torch.stack(slow))
    grad = _grad(torch.stack(fast), logits, weights)
    torch.testing.assert_close(grad, _grad(torch.stack(slow), logits, weights))
    if valid is not None:
        assert (grad[~valid] == 0).all()


@pytest.mark.parametrize("name", REGION)
@pytest.mark.parametrize("batch", [False, True])
def test_region_losses_equal_the_dense_formula(name, batch):
    """Every binary region loss, with ignore_index, per sample or pooled: value and gradient as with the
    reference statistics."""
    logits, target = make_inputs("binary", (3, 2, 6, 7), ignore_fraction=0.25)
    function = REGION[name]
    fast = function(logits, target, ignore_index=IGNORE, batch=batch, reduction="none")
    from seglosses.losses import overlap

    original = overlap.sigmoid_overlap_from_dense
    overlap.sigmoid_overlap_from_dense = _reference_overlap
    try:
        slow = function(logits, target, ignore_index=IGNORE, batch=batch, reduction="none")
    finally:
        overlap.sigmoid_overlap_from_dense = original
    weights = torch.rand_like(fast)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(_grad(fast, logits, weights), _grad(slow, logits, weights))


@pytest.mark.parametrize("name", REGION)
def test_region_retained_graph_gives_the_same_gradient_twice(name):
    """The first backward turns the saved probabilities into the gradient; a second one recomputes them."""
    logits, target = make_inputs("binary", (2, 3, 6, 7), dtype=torch.float32, ignore_fraction=0.2)
    loss = REGION[name](logits, target, ignore_index=IGNORE)
    first = torch.autograd.grad(loss, logits, retain_graph=True)[0].clone()
    second = torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_region_nan_and_inf_at_ignored_elements_stay_out_with_checks_off():
    """Checks off: NaN / ±inf logits at ignored elements change neither the loss nor any gradient, and
    the gradient there is exactly 0."""
    logits, target = make_inputs("binary", (2, 3, 5, 6), dtype=torch.float32, ignore_fraction=0.3)
    ignored = target == IGNORE
    dirty = logits.detach().masked_fill(ignored, float("nan"))
    dirty[:, 0][ignored[:, 0]] = float("inf")
    dirty[:, 1][ignored[:, 1]] = -float("inf")
    dirty.requires_grad_()
    with sl.input_checks(False):
        for function in REGION.values():
            clean = function(logits, target, ignore_index=IGNORE)
            value = function(dirty, target, ignore_index=IGNORE)
            torch.testing.assert_close(value, clean)
            grad = _grad(value, dirty)
            torch.testing.assert_close(grad, _grad(clean, logits))
            assert (grad[ignored] == 0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_region_invalid_logit_at_a_valid_element_gives_nan(bad):
    """Checks off: NaN or +inf at a valid element makes the loss NaN, never finite; ignored elements still
    get exactly 0 gradient. A -inf logit is legal (probability 0): finite loss and gradient."""
    logits, target = make_inputs("binary", (2, 2, 4, 5), dtype=torch.float32, ignore_fraction=0.3)
    index = tuple((target != IGNORE).nonzero()[0])
    dirty = logits.detach().clone()
    dirty[index] = bad
    dirty.requires_grad_()
    with sl.input_checks(False):
        value = SF.binary_dice_loss(dirty, target, ignore_index=IGNORE)
        grad = _grad(value, dirty)
        assert value.isnan()
        assert (grad[target == IGNORE] == 0).all()
        dirty = dirty.detach().clone()
        dirty[index] = -float("inf")
        dirty.requires_grad_()
        value = SF.binary_dice_loss(dirty, target, ignore_index=IGNORE)
        assert value.isfinite() and _grad(value, dirty).isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_region_half_inputs_are_computed_in_float32(dtype):
    """Half logits: statistics in float32 from the rounded values, gradient in the half dtype."""
    logits, target = make_inputs("binary", (2, 3, 6, 6), dtype=dtype, ignore_fraction=0.2)
    rounded = logits.detach().float().requires_grad_()
    value = SF.binary_dice_loss(logits, target, ignore_index=IGNORE)
    reference = SF.binary_dice_loss(rounded, target, ignore_index=IGNORE)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference)
    grad = _grad(value, logits)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, _grad(reference, rounded).to(dtype))


def test_region_gradcheck_float64():
    """The closed-form backward against finite differences, soft target and ignored elements."""
    logits, target = make_inputs("binary", (2, 2, 3, 4), ignore_fraction=0.3, scale=1.0)
    soft = torch.rand(logits.shape, dtype=torch.float64)
    for options, y in (({"ignore_index": IGNORE}, target), ({}, soft)):
        for function in (SF.binary_dice_loss, SF.binary_tversky_loss):
            check = lambda z, f=function, y=y, o=options: f(z, y, **o)  # noqa: E731
            assert torch.autograd.gradcheck(check, (logits,), eps=1e-6, atol=1e-5)


def test_a_target_that_needs_a_gradient_gets_one():
    """A soft target that requires a gradient takes the autograd formula (the fused backward gives only
    the logits' gradient)."""
    logits, _ = make_inputs("binary", (2, 2, 4, 4))
    soft = torch.rand(logits.shape, dtype=torch.float64, requires_grad=True)
    value = SF.binary_dice_loss(logits, soft)
    grad_target = torch.autograd.grad(value, soft)[0]
    assert grad_target.abs().sum() > 0


def test_region_double_backward_is_the_formulas():
    """The fused statistics asked for a graph differentiate their plain-torch formula."""
    logits, target = make_inputs("binary", (1, 2, 3, 3))
    assert torch.autograd.gradgradcheck(lambda z: SF.binary_dice_loss(z, target), (logits,))


def test_region_empty_batch():
    logits = torch.zeros(0, 2, 4, 4, requires_grad=True)
    value = SF.binary_dice_loss(logits, torch.zeros(0, 2, 4, 4))
    assert value.item() == 0
    assert torch.autograd.grad(value, logits)[0].shape == logits.shape


# --------------------------------------------------------------------------- focal


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0, 2.5])
@pytest.mark.parametrize("alpha", [None, 0.25, [0.2, 0.5, 0.9]])
@pytest.mark.parametrize("kind", ["int64_ignored", "float_soft", "bool", "float_hard"])
def test_focal_equals_the_log_space_formula(gamma, alpha, kind):
    """Values (every reduction) and gradients of the fused focal equal the log-space terms, for soft
    targets, α per channel, ignored elements and γ in (0, 1) included."""
    logits, _ = make_inputs("binary", (2, 3, 9, 11), dtype=torch.float32, scale=4.0)
    target, valid = _target(kind, logits.shape, seed=1)
    options = dict(gamma=gamma, alpha=alpha, ignore_index=IGNORE if valid is not None else None)
    count = valid.sum() if valid is not None else logits.numel()
    for reduction in ("none", "sum", "mean"):
        reference = _reference_focal(logits, target, gamma, alpha, options["ignore_index"])
        expected = {"none": reference, "sum": reference.sum(), "mean": reference.sum() / count}[reduction]
        value = SF.binary_focal_loss(logits, target, reduction=reduction, **options)
        torch.testing.assert_close(value, expected)
        weights = torch.rand_like(reference) if reduction == "none" else None
        grad = _grad(value, logits, weights)
        torch.testing.assert_close(grad, _grad(expected, logits, weights))
        if valid is not None:
            assert (grad[~valid] == 0).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_out_of_range_and_non_finite_logits(gamma):
    """Logits beyond ±80 take the log-space path, with the same values; a -inf logit with target 0 gives
    loss and gradient 0, +inf gives NaN, and NaN / inf at ignored elements change nothing (checks off)."""
    z = torch.tensor([[[-100.0, -30.0, 0.0, 30.0, 100.0, -float("inf"), float("nan"), float("inf")]]])
    y = torch.tensor([[[1, 0, 1, 0, 1, 0, IGNORE, IGNORE]]])
    with sl.input_checks(False):
        logits = z.clone().requires_grad_()
        value = SF.binary_focal_loss(logits, y, gamma=gamma, ignore_index=IGNORE, reduction="none")
        expected = _reference_focal(z[..., :6], y[..., :6], gamma, None, None)
        torch.testing.assert_close(value[..., :6], expected)
        assert (value[..., 5:] == 0).all()
        grad = _grad(value.sum(), logits)
        assert grad.isfinite().all() and (grad[..., 5:] == 0).all()
        plus_inf = SF.binary_focal_loss(torch.tensor([[[float("inf"), 0.0]]]), torch.tensor([[[1, 0]]]))
        assert plus_inf.isnan()


def test_focal_half_inputs_are_computed_in_float32():
    logits, target = make_inputs("binary", (2, 3, 6, 6), dtype=torch.bfloat16, ignore_fraction=0.2)
    rounded = logits.detach().float().requires_grad_()
    value = SF.binary_focal_loss(logits, target, ignore_index=IGNORE)
    reference = SF.binary_focal_loss(rounded, target, ignore_index=IGNORE)
    torch.testing.assert_close(value, reference)
    grad = _grad(value, logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad, _grad(reference, rounded).to(torch.bfloat16))


@pytest.mark.parametrize("gamma, alpha", [(0.5, [0.3, 0.8]), (2.0, 0.25), (2.5, None)])
def test_focal_gradcheck_float64(gamma, alpha):
    logits, target = make_inputs("binary", (2, 2, 3, 4), ignore_fraction=0.3, scale=2.0)
    soft = torch.rand(logits.shape, dtype=torch.float64)
    for options, y in (({"ignore_index": IGNORE}, target), ({}, soft)):
        function = lambda z, y=y, o=options: SF.binary_focal_loss(z, y, gamma=gamma, alpha=alpha, **o)  # noqa: E731
        assert torch.autograd.gradcheck(function, (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_focal_retained_graph_gives_the_same_gradient_twice(reduction):
    logits, target = make_inputs("binary", (2, 3, 6, 7), dtype=torch.float32, ignore_fraction=0.2)
    loss = SF.binary_focal_loss(logits, target, ignore_index=IGNORE, reduction=reduction).sum()
    first = torch.autograd.grad(loss, logits, retain_graph=True)[0].clone()
    second = torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_focal_double_backward_is_the_formulas():
    logits, target = make_inputs("binary", (1, 2, 3, 3))
    assert torch.autograd.gradgradcheck(lambda z: SF.binary_focal_loss(z, target), (logits,))


def test_focal_large_input_spans_several_parts():
    from seglosses._core.stats import MIN_PART, even_parts

    assert len(even_parts(299 * 301, 8)) == 5 == 89_999 // MIN_PART
    """An input long enough for several parts of the fused loop (and a shorter last part): 299 x 301 =
    89,999 pixels, five parts of at least stats.MIN_PART pixels, the last one shorter."""
    logits, target = make_inputs("binary", (1, 2, 299, 301), dtype=torch.float32, scale=3.0)
    value = SF.binary_focal_loss(logits, target, alpha=[0.3, 0.6])
    expected = _reference_focal(logits, target, 2.0, [0.3, 0.6], None).mean()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(_grad(value, logits), _grad(expected, logits))


def test_non_contiguous_inputs():
    """Logits and target in channels-last order (strided views): the same values and gradients."""
    logits, target = make_inputs("binary", (2, 3, 8, 9), dtype=torch.float32, ignore_fraction=0.2)
    strided = logits.detach().to(memory_format=torch.channels_last).requires_grad_()
    strided_target = target.to(memory_format=torch.channels_last)
    soft = torch.rand(logits.shape).to(memory_format=torch.channels_last)
    for function in (*REGION.values(), SF.binary_focal_loss):
        for options, y, y_strided in (
            ({"ignore_index": IGNORE}, target, strided_target),
            ({}, soft.contiguous(), soft),
        ):
            for reduction in ("none", "mean"):
                expected = function(logits, y, reduction=reduction, **options)
                value = function(strided, y_strided, reduction=reduction, **options)
                torch.testing.assert_close(value, expected)
                weights = torch.rand_like(expected)
                torch.testing.assert_close(_grad(value, strided, weights), _grad(expected, logits, weights))


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "name, kind, bound",
    [
        ("binary_dice", "float_hard", 2.0),
        ("binary_gdl", "float_hard", 2.0),
        ("binary_dice", "bool", 2.0),
        ("binary_tversky", "int64_ignored", 2.5),
        ("binary_focal", "float_hard", 2.5),
    ],
)
def test_peak_memory_of_a_binary_step(name, kind, bound):
    """Forward + backward, the returned gradient included: region losses hold at most 2x the logits'
    bytes (the issue's target; before: 3.25x), 2.5x with an int64 target and ignore_index (its valid mask
    and a part of the target as numbers); focal (no target in the issue) at most 2.5x (before: 13.75x)."""
    logits, _ = make_inputs("binary", (1, 3, 384, 384), dtype=torch.float32)  # large enough for 8 parts
    target, valid = _target(kind, logits.shape)
    options = {} if valid is None else {"ignore_index": IGNORE}
    function = {**REGION, "binary_focal": SF.binary_focal_loss}[name]
    function(logits, target, **options).backward()  # warm up
    logits_bytes = logits.numel() * logits.element_size()
    peak = peak_extra_bytes(lambda: torch.autograd.grad(function(logits, target, **options), logits))
    assert peak <= bound * logits_bytes, f"peak {peak / logits_bytes:.2f}x the logits"
