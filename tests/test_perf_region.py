"""The fast index-target paths of the region statistics (``_SoftmaxIndexSums``): C = 2 by arithmetic on the
labels, C > 2 by per-sample gather / scatter_add_, the softmax buffer reused as the gradient. Each is
checked against the dense (one-hot) formula, which is exact by construction."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs, peak_extra_bytes

import seglosses as sl
import seglosses.functional as SF
from seglosses._core import numerics
from seglosses._core.stats import overlap_from_dense, softmax_overlap_from_index


@pytest.fixture(autouse=True)
def fused_at_every_size(monkeypatch):
    """These tests exercise the fused paths: taken at every input size here (in use, inputs below
    numerics.FUSED_MIN elements take torch's kernels and the plain references)."""
    monkeypatch.setattr(numerics, "FUSED_MIN", 0)


REGION = ["dice", "jaccard", "tversky", "focal_tversky", "gdl"]


def _dense_reference(logits, target, ignore_index):
    """TP / FP / FN from the one-hot target (the slow formula the fast paths replace)."""
    valid = target != ignore_index
    index = target.masked_fill(~valid, 0)
    one_hot = torch.nn.functional.one_hot(index, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    mask = valid.unsqueeze(1).expand_as(one_hot)
    return overlap_from_dense(torch.softmax(logits, 1), one_hot * mask, mask)


@pytest.mark.parametrize("c, shape", list(itertools.product([2, 3, 5], [(3, 7, 9), (2, 4, 5, 6)])))
@pytest.mark.parametrize("ignore", [0.0, 0.3])
def test_statistics_and_gradient_match_the_dense_formula(c, shape, ignore):
    """Both index paths (C = 2 and C > 2) give the one-hot formula's TP / FP / FN and their gradient."""
    logits, target = make_inputs("softmax", (shape[0], c, *shape[1:]), ignore_fraction=ignore, seed=c)
    valid = target != IGNORE
    fast = softmax_overlap_from_index(logits, target, valid if ignore else None)  # IGNORE where ignored
    slow = _dense_reference(logits, target, IGNORE)
    weights = torch.randn(3, *fast.tp.shape, dtype=logits.dtype)
    grads = []
    for stats in (fast, slow):
        torch.testing.assert_close(torch.stack(stats), torch.stack(slow))
        grads.append(torch.autograd.grad((torch.stack(stats) * weights).sum(), logits)[0])
    torch.testing.assert_close(grads[0], grads[1])
    if ignore:
        assert (grads[0].movedim(1, -1)[~valid] == 0).all()


@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("name", REGION)
def test_a_retained_graph_gives_the_same_gradient_twice(name, c):
    """The first backward turns the saved probabilities into the gradient; a second one recomputes them."""
    logits, target = make_inputs("softmax", (2, c, 6, 7), dtype=torch.float32, ignore_fraction=0.2)
    loss = getattr(SF, _function_name(name))(logits, target, ignore_index=IGNORE)
    first = torch.autograd.grad(loss, logits, retain_graph=True)[0].clone()
    second = torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def _function_name(name):
    return {"gdl": "generalized_dice_loss"}.get(name, f"{name}_loss")


@pytest.mark.parametrize("c", [2, 4])
def test_nan_at_ignored_pixels_stays_out_with_checks_off(c):
    """Checks off, a NaN / +inf logit at an ignored pixel changes neither the loss nor any gradient."""
    logits, target = make_inputs("softmax", (2, c, 5, 6), dtype=torch.float32, ignore_fraction=0.3)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    dirty = logits.detach().masked_fill(ignored, float("nan"))
    dirty[:, 0][target == IGNORE] = float("inf")
    dirty.requires_grad_()
    with sl.input_checks(False):
        results = []
        for x in (logits, dirty):
            value = SF.dice_loss(x, target, ignore_index=IGNORE)
            results.append((value, torch.autograd.grad(value, x)[0]))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    assert (results[1][1][ignored] == 0).all()


@pytest.mark.parametrize("c", [2, 4])
def test_nan_at_a_valid_pixel_gives_nan_and_zero_gradient_at_ignored_ones(c):
    """A NaN loss (checks off) still leaves exactly 0 at ignored pixels of the gradient."""
    logits, target = make_inputs("softmax", (2, c, 5, 6), dtype=torch.float32, ignore_fraction=0.3)
    valid_pixel = (target != IGNORE).nonzero()[0]
    dirty = logits.detach().clone()
    dirty[valid_pixel[0], :, valid_pixel[1], valid_pixel[2]] = float("nan")
    dirty.requires_grad_()
    with sl.input_checks(False):
        value = SF.dice_loss(dirty, target, ignore_index=IGNORE)
        grad = torch.autograd.grad(value, dirty)[0]
    assert value.isnan()
    assert (grad.movedim(1, -1)[target == IGNORE] == 0).all()


@pytest.mark.parametrize("c", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(c, dtype):
    """Half logits: statistics in float32 from the rounded values, gradient returned in the half dtype."""
    logits, target = make_inputs("softmax", (2, c, 6, 6), dtype=dtype, ignore_fraction=0.2)
    rounded = logits.detach().float().requires_grad_()
    value = SF.dice_loss(logits, target, ignore_index=IGNORE)
    reference = SF.dice_loss(rounded, target, ignore_index=IGNORE)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference)
    grad = torch.autograd.grad(value, logits)[0]
    assert grad.dtype == dtype
    expected = torch.autograd.grad(reference, rounded)[0].to(dtype)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("c", [2, 4, 5, 21])
@pytest.mark.parametrize("ignore, bound", [(None, 2.0), (0.2, 2.4)])
def test_peak_memory_of_a_region_step(c, ignore, bound):
    """Forward + backward of dice holds at most 2x the logits' bytes, the returned gradient included
    (the issue's target; F.cross_entropy takes 3x). With ignore_index a masked int64 copy of the labels
    is added (8 bytes a pixel: 0.5x the logits at C = 4). Memory, not time: stable on a busy machine.
    An image of 256 x 256 is worked in parts (a smaller one, below 4 parts of stats.MIN_PART pixels,
    is worked whole: its temporaries are small)."""
    shape = (1, c, 256, 256)
    logits, target = make_inputs("softmax", shape, dtype=torch.float32, ignore_fraction=ignore or 0)
    options = {} if ignore is None else {"ignore_index": IGNORE}
    logits_bytes = logits.numel() * logits.element_size()
    SF.dice_loss(logits, target, **options).backward()  # warm up
    peak = peak_extra_bytes(lambda: torch.autograd.grad(SF.dice_loss(logits, target, **options), logits))
    assert peak <= bound * logits_bytes, f"peak {peak / logits_bytes:.2f}x the logits"


def test_empty_batch_on_both_paths():
    """N = 0 gives 0 with a gradient on the C = 2 and the C > 2 path."""
    for c in (2, 4):
        logits = torch.zeros(0, c, 4, 4, requires_grad=True)
        value = SF.dice_loss(logits, torch.zeros(0, 4, 4, dtype=torch.long))
        assert value.item() == 0
        assert torch.autograd.grad(value, logits)[0].shape == logits.shape


def test_two_class_softmax_by_sigmoid_and_its_fallback():
    """C = 2 on CPU: (σ(-δ), σ(δ)) equals the softmax; with a non-finite logit torch's softmax decides
    (+inf gives NaN, -inf probability 0), as at C > 2."""
    from seglosses._core.stats import _softmax

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 40, generator=g, dtype=torch.float64) * 30  # saturated ones included
    torch.testing.assert_close(_softmax(logits, logits.dtype), torch.softmax(logits, 1), rtol=1e-15, atol=0)
    for bad in (torch.inf, -torch.inf, torch.nan):
        dirty = logits.clone()
        dirty[1, 0, 5] = bad
        torch.testing.assert_close(_softmax(dirty, dirty.dtype), torch.softmax(dirty, 1), equal_nan=True)
    dirty = logits.clone()
    dirty[1, 1, 5] = torch.inf
    assert _softmax(dirty, dirty.dtype)[1, :, 5].isnan().all()


def test_small_inputs_are_one_part_and_large_ones_several():
    """Parts keep the temporaries of a large input small; a small one pays no per-part operations."""
    from seglosses._core.stats import MIN_PART, even_parts

    assert even_parts(64 * 64, 4) == [(0, 64 * 64)]
    assert even_parts(256 * 256, 4) == [(k * MIN_PART, (k + 1) * MIN_PART) for k in range(4)]
    assert len(even_parts(512 * 512, 8)) == 8


@pytest.mark.parametrize("c", [2, 5])
def test_several_parts_give_the_formula(c):
    """A 256 x 256 input is worked in four parts: statistics, loss and gradient equal the dense formula."""
    logits, target = make_inputs("softmax", (1, c, 256, 256), ignore_fraction=0.2)
    valid = target != IGNORE
    probs = torch.softmax(logits, 1) * valid.unsqueeze(1)
    one_hot = F.one_hot(torch.where(valid, target, 0), c).movedim(-1, 1) * valid.unsqueeze(1)
    tp, p_sum, y_sum = (probs * one_hot).sum((2, 3)), probs.sum((2, 3)), one_hot.sum((2, 3))
    expected = (1 - (2 * tp + 1e-5) / (p_sum + y_sum + 1e-5)).mean()
    value = SF.dice_loss(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(value, expected)
    (grad,), (expected_grad,) = torch.autograd.grad(value, logits), torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)
