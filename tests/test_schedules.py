"""Schedules of an explicit step, scheduled class weights of ce / focal, and compound losses with scheduled
term weights (SPEC §1; issue 4, items 2 and 5)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import IGNORE, make_inputs

import seglosses as sl
import seglosses.functional as SF
from seglosses.schedules import (
    Schedule,
    as_schedule,
    constant_schedule,
    cosine_schedule,
    exponential_schedule,
    linear_schedule,
    scheduled_class_weights,
    step_schedule,
    warmup_schedule,
)

# --------------------------------------------------------------------------- the pure schedules


def test_constant():
    assert constant_schedule(0, value=0.3) == 0.3 and constant_schedule(1e6, value=0.3) == 0.3


def test_linear_by_hand():
    """start + (end - start) min(t / steps, 1)."""
    assert linear_schedule(0, start=2.0, end=0.0, steps=4) == 2.0
    assert linear_schedule(1, start=2.0, end=0.0, steps=4) == 2.0 - 2.0 * 1 / 4
    assert linear_schedule(4, start=2.0, end=0.0, steps=4) == 0.0
    assert linear_schedule(40, start=2.0, end=0.0, steps=4) == 0.0
    assert linear_schedule(2.5, start=0.0, end=1.0, steps=10) == 0.25  # fractional epochs


def test_boundary_rebalancing_is_a_linear_schedule():
    """The boundary-loss rebalancing α(e) = max(0.01, 1 - 0.01 e) is linear from 1 to 0.01 in 99 steps."""
    for epoch in range(300):
        expected = max(0.01, 1 - 0.01 * epoch)
        assert linear_schedule(epoch, start=1.0, end=0.01, steps=99) == pytest.approx(expected, abs=1e-12)


def test_cosine_by_hand():
    """end + (start - end)(1 + cos(π t / steps)) / 2: start, the midpoint, end, and end after."""
    assert cosine_schedule(0, start=1.0, end=0.2, steps=10) == 1.0
    assert cosine_schedule(5, start=1.0, end=0.2, steps=10) == pytest.approx((1.0 + 0.2) / 2)
    assert cosine_schedule(10, start=1.0, end=0.2, steps=10) == pytest.approx(0.2)
    assert cosine_schedule(2.5, start=1.0, end=0.0, steps=10) == pytest.approx(
        (1 + math.cos(math.pi / 4)) / 2
    )
    assert cosine_schedule(99, start=1.0, end=0.2, steps=10) == pytest.approx(0.2)


def test_exponential_by_hand_and_limits():
    """end + (start - end) exp(-λ t); λ = 0 stays at start; t -> ∞ reaches end."""
    assert exponential_schedule(2, start=3.0, end=1.0, lam=0.5) == pytest.approx(1.0 + 2.0 * math.exp(-1.0))
    assert exponential_schedule(1000, start=3.0, end=1.0, lam=0.0) == 3.0
    assert exponential_schedule(1e4, start=3.0, end=1.0, lam=0.5) == 1.0


def test_step_by_hand():
    """start · factor^⌊t / every⌋."""
    values = [step_schedule(t, start=1.0, factor=0.5, every=3) for t in range(7)]
    assert values == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_warmup_by_hand():
    """Linear from start to then(0) over `steps`, then then(t - steps)."""
    then = Schedule("linear", start=1.0, end=0.0, steps=10)
    assert warmup_schedule(0, steps=4, then=then) == 0.0
    assert warmup_schedule(1, steps=4, then=then) == 0.25
    assert warmup_schedule(4, steps=4, then=then) == 1.0
    assert warmup_schedule(9, steps=4, then=then) == 0.5
    assert warmup_schedule(2, steps=4) == 0.5  # default: warm up to the constant 1


# --------------------------------------------------------------------------- Schedule objects and specs


@pytest.mark.parametrize(
    "kind, options, function",
    [
        ("constant", dict(value=0.7), constant_schedule),
        ("linear", dict(start=1.0, end=0.01, steps=99), linear_schedule),
        ("cosine", dict(start=1.0, end=0.0, steps=20), cosine_schedule),
        ("exponential", dict(lam=0.3), exponential_schedule),
        ("step", dict(factor=0.1, every=5), step_schedule),
        ("warmup", dict(steps=3, start=0.1), warmup_schedule),
    ],
)
def test_schedule_object_is_the_pure_function_and_round_trips_as_text(kind, options, function):
    schedule = Schedule(kind, **options)
    for step in (0, 1, 2.5, 7, 50):
        assert schedule(step) == function(step, **options)
    assert as_schedule(str(schedule)) == schedule
    assert as_schedule(repr(schedule)[len("Schedule('") : -2]) == schedule


def test_arithmetic_gives_the_complement_and_scaled_schedules():
    alpha = Schedule("linear", start=1.0, end=0.01, steps=99)
    for step in (0, 10, 99, 200):
        assert (1 - alpha)(step) == pytest.approx(1 - alpha(step))
        assert (0.5 * alpha + 2)(step) == pytest.approx(0.5 * alpha(step) + 2)
        assert (-alpha)(step) == -alpha(step)
        assert (alpha - 0.25)(step) == pytest.approx(alpha(step) - 0.25)
    assert str(1 - alpha) == "1 - linear(start=1.0, end=0.01, steps=99)"
    assert as_schedule("1 - linear(start=1.0, end=0.01, steps=99)") == 1 - alpha
    odd = 0.1 + 1 / 3 * (2 - alpha)  # offsets and scales read back exactly
    assert as_schedule(str(odd)) == odd


def test_nested_warmup_spec():
    schedule = as_schedule("warmup(steps=5, then=cosine(start=1, end=0, steps=100))")
    inner = Schedule("cosine", start=1, end=0, steps=100)
    assert schedule(2) == pytest.approx(2 / 5) and schedule(55) == inner(50)
    assert as_schedule(str(schedule)) == schedule


def test_numbers_are_constant_schedules():
    assert as_schedule(0.3)(12) == 0.3


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Schedule("cosin", steps=3), r"did you mean 'cosine'"),
        (lambda: Schedule("linear", start=1, stop=0, steps=3), r"option of the linear schedule.*'steps'"),
        (lambda: Schedule("linear", start=1, end=0), r"option 'steps' of the linear schedule"),
        (lambda: Schedule("linear", steps=0), r"steps in \(0, inf\]"),
        (lambda: Schedule("exponential", lam=-0.1), r"lam in \[0, inf\]"),
        (lambda: Schedule("step", every=2, factor=-1), r"factor in \[0"),
        (lambda: Schedule("linear", steps=3)(-1), r"step in \[0, inf\]"),
        (lambda: Schedule("linear", steps=float("nan")), r"steps to be a finite real number"),
        (lambda: as_schedule("linear(steps=3) * cosine(steps=3)"), r"two schedules"),
        (lambda: as_schedule("linear(steps=x)"), r"literal option value"),
        (lambda: as_schedule("linear(steps="), r"schedule spec"),
        (lambda: as_schedule([1, 2]), r"Schedule, a number or a schedule spec"),
        (lambda: Schedule("linear", steps=3) + "a", r"number on the other side of \+"),
    ],
)
def test_bad_schedules_raise(make, message):
    with pytest.raises(sl.SegLossError, match=message):
        make()


# --------------------------------------------------------------------------- scheduled class weights


def test_scheduled_class_weights_by_hand_and_limits():
    """w_c(t) = 1 + (w_c - 1) exp(-λ t): λ = 0 keeps the initial weights; t -> ∞ reaches uniform."""
    w = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    at_two = scheduled_class_weights(w, "exponential(lam=0.5)", 2)
    torch.testing.assert_close(at_two, 1 + (w - 1) * math.exp(-1.0))
    torch.testing.assert_close(scheduled_class_weights(w, "exponential(lam=0)", 1e6), w)
    torch.testing.assert_close(scheduled_class_weights(w, "exponential(lam=0.5)", 1e4), torch.ones_like(w))
    torch.testing.assert_close(scheduled_class_weights(w, "linear(steps=10)", 5), 1 + (w - 1) / 2)
    with pytest.raises(sl.SegLossError, match=r"value in \[0, 1\]"):
        scheduled_class_weights(w, "linear(start=2, steps=10)", 0)


@pytest.mark.parametrize("ignore", [0.0, 0.3])
def test_ce_with_a_weight_schedule_is_ce_with_the_weights_of_that_step(ignore):
    logits, target = make_inputs("softmax", ignore_fraction=ignore)
    w = [1.0, 4.0, 10.0]
    for step in (0, 1, 3, 1000):
        expected_w = [1 + (v - 1) * math.exp(-0.4 * step) for v in w]
        scheduled = SF.cross_entropy_loss(
            logits, target, weight=w, weight_schedule="exponential(lam=0.4)", step=step, ignore_index=IGNORE
        )
        torch.testing.assert_close(
            scheduled, SF.cross_entropy_loss(logits, target, weight=expected_w, ignore_index=IGNORE)
        )


def test_focal_with_an_alpha_schedule_is_focal_with_the_alpha_of_that_step():
    logits, target = make_inputs("softmax")
    alpha = [0.25, 1.0, 3.0]
    schedule = Schedule("cosine", start=1.0, end=0.0, steps=10)
    for step in (0, 4, 10):
        expected_alpha = [1 + (a - 1) * schedule(step) for a in alpha]
        torch.testing.assert_close(
            SF.focal_loss(logits, target, alpha=alpha, alpha_schedule=schedule, step=step),
            SF.focal_loss(logits, target, alpha=expected_alpha),
        )


@pytest.mark.parametrize("name, option", [("ce", "weight"), ("focal", "alpha")])
def test_module_set_step_and_state_dict_round_trip(name, option):
    logits, target = make_inputs("softmax")
    spec = f"{name}({option}=[1, 5, 10], {option}_schedule=exponential(lam=0.3))"
    loss = sl.create_loss(spec)
    assert isinstance(loss, sl.CrossEntropyLoss if name == "ce" else sl.FocalLoss)
    loss.set_step(4)
    function = SF.cross_entropy_loss if name == "ce" else SF.focal_loss
    expected = function(logits, target, **{option: [1 + (v - 1) * math.exp(-1.2) for v in (1, 5, 10)]})
    torch.testing.assert_close(loss(logits, target), expected)
    restored = sl.create_loss(spec)
    restored.load_state_dict(loss.state_dict())
    assert restored.step == 4.0
    torch.testing.assert_close(restored(logits, target), expected)
    quoted = sl.create_loss(f"{name}({option}=[1, 5, 10], {option}_schedule='exponential(lam=0.3)')")
    assert as_schedule(quoted.options[f"{option}_schedule"]) == loss.options[f"{option}_schedule"]


def test_unscheduled_modules_keep_their_state_dict():
    """No schedule, no step in the state dict; a step where none is expected is an unexpected key."""
    assert list(sl.CrossEntropyLoss(weight=[1.0, 2.0]).state_dict()) == ["weight"]
    assert list(sl.FocalLoss().state_dict()) == []
    with pytest.raises(RuntimeError, match="Unexpected key.*step"):
        sl.FocalLoss().load_state_dict({"step": torch.tensor(3.0)})
    with pytest.raises(RuntimeError, match="Missing key.*step"):
        sl.FocalLoss(alpha=[1.0, 2.0], alpha_schedule="linear(steps=3)").load_state_dict(
            {"alpha": torch.ones(2)}
        )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sl.CrossEntropyLoss(weight_schedule="linear(steps=3)"), r"weight .* with weight_schedule"),
        (lambda: sl.FocalLoss(alpha_schedule="linear(steps=3)"), r"alpha .* with alpha_schedule"),
        (lambda: sl.CrossEntropyLoss(weight=[1.0, 2.0], weight_schedule="linear(steps=-3)"), r"steps in"),
        (lambda: sl.CrossEntropyLoss(weight=[1.0, 2.0], weight_schedule=[1]), r"Schedule, a number"),
        (lambda: sl.CrossEntropyLoss(weight=[1.0, 2.0], step=-1), r"step in \[0"),
        (lambda: sl.CrossEntropyLoss().set_step(-2), r"step in \[0"),
        (lambda: sl.CrossEntropyLoss(label_smoothing=torch.ones(2)), r"0-d float tensor"),
    ],
)
def test_bad_scheduled_options_raise(make, message):
    with pytest.raises(sl.SegLossError, match=message):
        make()


def test_tensor_label_smoothing_equals_the_float_one():
    """A 0-d tensor ε (no host sync) gives the value and gradient of torch's label smoothing."""
    logits, target = make_inputs("softmax", (2, 4, 5, 6), ignore_fraction=0.3)
    soft = torch.softmax(torch.randn(2, 4, 5, 6, dtype=torch.float64), 1)
    for t, weight in (
        (target, None),
        (target, [0.5, 1.0, 2.0, 3.0]),
        (soft, None),
        (soft, [1.0, 2.0, 1.0, 0.5]),
    ):
        for reduction in ("none", "mean", "sum"):
            options = dict(weight=weight, ignore_index=IGNORE, reduction=reduction)
            as_float = SF.cross_entropy_loss(logits, t, label_smoothing=0.15, **options)
            as_tensor = SF.cross_entropy_loss(
                logits, t, label_smoothing=torch.tensor(0.15, dtype=torch.float64), **options
            )
            torch.testing.assert_close(as_tensor, as_float)
            grads = [torch.autograd.grad(v.sum(), logits)[0] for v in (as_tensor, as_float)]
            torch.testing.assert_close(*grads)


# --------------------------------------------------------------------------- compound losses


REBALANCED = "linear(start=1, end=0.01, steps=99)*dice + (1 - linear(start=1, end=0.01, steps=99))*boundary"


def test_rebalanced_boundary_compound_follows_the_schedule():
    """α·dice + (1-α)·boundary with α(e) = max(0.01, 1 - 0.01 e), step by step; logs give everything."""
    logits, target = make_inputs("softmax")
    loss = sl.create_loss(REBALANCED)
    assert isinstance(loss, sl.CompoundLoss) and loss.labels == ["dice", "boundary"]
    dice = SF.dice_loss(logits, target)
    boundary = SF.boundary_loss(logits, target)
    for epoch in (0, 1, 30, 99, 150):
        loss.set_step(epoch)
        alpha = max(0.01, 1 - 0.01 * epoch)
        total = loss(logits, target)
        torch.testing.assert_close(total, alpha * dice + (1 - alpha) * boundary)
        logs = loss.logs()
        assert logs["weight/dice"] == pytest.approx(alpha) and logs["weight/boundary"] == pytest.approx(
            1 - alpha
        )
        assert logs["loss/dice"] == pytest.approx(dice.item()) and logs["loss"] == pytest.approx(total.item())
        torch.testing.assert_close(loss.last_terms["boundary"], boundary.detach())
        assert loss.last_weights["dice"] == pytest.approx(alpha)


def test_python_api_with_schedule_objects():
    logits, target = make_inputs("softmax")
    alpha = Schedule("linear", start=1.0, end=0.01, steps=99)
    loss = sl.CompoundLoss([(alpha, "dice", sl.DiceLoss()), (1 - alpha, "boundary", sl.BoundaryLoss())])
    reference = sl.create_loss(REBALANCED)
    for epoch in (0, 50):
        loss.set_step(epoch)
        reference.set_step(epoch)
        torch.testing.assert_close(loss(logits, target), reference(logits, target))
    assert "(1 - linear(start=1.0, end=0.01, steps=99))*boundary" in repr(loss)


def test_compound_state_dict_carries_the_step_and_set_step_reaches_the_terms():
    logits, target = make_inputs("softmax")
    spec = (
        "cosine(start=1, end=0, steps=10)*ce(weight=[1, 5, 10], weight_schedule=exponential(lam=0.5)) + dice"
    )
    loss = sl.create_loss(spec)
    loss.set_step(6)
    assert loss.losses[0].step == 6.0
    value = loss(logits, target)
    restored = sl.create_loss(spec)
    restored.load_state_dict(loss.state_dict())
    assert sorted(loss.state_dict()) == ["losses.0.step", "losses.0.weight", "step"]
    torch.testing.assert_close(restored(logits, target), value)
    assert restored.step == 6.0 and restored.losses[0].step == 6.0


def test_one_scheduled_term_is_a_compound_and_term_times_schedule_works():
    loss = sl.create_loss("dice * linear(start=0, end=1, steps=4)")
    assert isinstance(loss, sl.CompoundLoss)
    loss.set_step(1)
    assert loss.current_weights() == [0.25]
    assert sl.create_loss("-0.5*ce + dice").weights == [-0.5, 1.0]  # numbers stay numbers


def test_unscheduled_compound_keeps_its_state_dict_and_logs_need_a_forward():
    loss = sl.create_loss("ce + dice")
    assert list(loss.state_dict()) == []
    with pytest.raises(sl.SegLossError, match="forward before logs"):
        loss.logs()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("linear(start=1, steps=0)*dice", r"steps in \(0, inf\].*position 0"),
        ("linear(steps=3)*cosine(steps=3)*dice", r"two schedules.*position 0"),
        ("linea(steps=3)*dice", r"number\*loss|did you mean 'linear'"),
        ("ce(weight=[1, 2, 3], weight_schedule=linear(steps=x))", r"literal option value.*position"),
        ("dice + linear(steps=3)", r"registered loss name"),
    ],
)
def test_bad_scheduled_specs(spec, message):
    with pytest.raises(sl.SegLossError, match=message):
        sl.create_loss(spec)
