"""Difficulty-weighted CE and the stateful losses (issue 4; SPEC §1, §2): hand-derived values on tiny
inputs, the limits, the running-statistics rule, state handling (eval, state_dict, resume) and the
conformance suite for every new registered loss."""

from __future__ import annotations

import io
import math
from typing import List

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs
from test_conformance import for_gradcheck

import seglosses as sl
import seglosses.functional as SF
from seglosses.adaptive.losses import (
    AdaptiveFocalLoss,
    AdaptiveSmoothingCELoss,
    ClassBalancedFocalLoss,
    DifficultyCELoss,
    FrequencyFocalLoss,
    class_balanced_alpha,
    difficulty_ce_loss,
    frequency_alpha,
)

NEW = ("adaptive_focal", "adaptive_smoothing_ce", "cb_focal", "difficulty_ce", "frequency_focal")
OURS = [entry for entry in sl.list_losses(details=True) if entry.name in NEW]
STATEFUL = [AdaptiveFocalLoss, AdaptiveSmoothingCELoss, ClassBalancedFocalLoss, FrequencyFocalLoss]
LN3 = math.log(3.0)


@pytest.mark.parametrize("entry", OURS, ids=lambda e: e.name)
def test_gradcheck_soft_targets(entry):
    """The dense (soft target) path, float64 (stateful losses in eval() after one step)."""
    logits, _ = make_inputs("softmax", (2, 3, 3, 4), scale=1.0)
    soft = torch.softmax(torch.randn(2, 3, 3, 4, dtype=torch.float64), 1)
    loss = for_gradcheck(entry, logits, soft)
    assert torch.autograd.gradcheck(lambda z: loss(z, soft), (logits,), eps=1e-6, atol=1e-5)


def test_registered_with_working_minimal_specs():
    assert {entry.name for entry in OURS} == set(NEW)
    for entry in OURS:
        logits, target = make_inputs("softmax")
        assert isinstance(sl.create_loss(entry.spec), entry.module)
        assert torch.isfinite(sl.create_loss(entry.spec)(logits, target))


def tiny():
    """One sample, C = 2, four pixels: A = (ln 3, 0) of class 0 (p_t = 3/4, a hit), B = (0, ln 3) of class 0
    (p_t = 1/4, a miss), C = (0, ln 3) of class 1 (p_t = 3/4, a hit), D ignored."""
    logits = torch.tensor([[LN3, 0.0, 0.0, 5.0], [0.0, LN3, LN3, -5.0]], dtype=torch.float64)
    return logits.unsqueeze(0).requires_grad_(), torch.tensor([[0, 0, 1, IGNORE]])


# --------------------------------------------------------------------------- difficulty-weighted CE


def test_difficulty_ce_hand_value():
    """p_t = 3/4, α = 0.25, γ = 2: w = 0.25 + 0.75 (1/4)^2, L = w ln(4/3)."""
    logits = torch.tensor([0.0, LN3], dtype=torch.float64).view(1, 2, 1)
    value = difficulty_ce_loss(logits, torch.tensor([[1]]), alpha=0.25, gamma=2.0)
    torch.testing.assert_close(value.item(), (0.25 + 0.75 * (1 / 4) ** 2) * math.log(4 / 3))


@pytest.mark.parametrize("dense", [False, True])
def test_difficulty_ce_without_detach_and_alpha_zero_is_focal(dense):
    """detach=False, α = 0: exactly focal loss, values and gradients (SPEC §1)."""
    logits, target = make_inputs("softmax", (2, 4, 5, 6), ignore_fraction=0.0 if dense else 0.3)
    if dense:
        target = torch.softmax(torch.randn(2, 4, 5, 6, dtype=torch.float64), 1)
    for gamma in (0.5, 2.0):
        ours = difficulty_ce_loss(logits, target, alpha=0.0, gamma=gamma, detach=False, ignore_index=IGNORE)
        focal = SF.focal_loss(logits, target, gamma=gamma, ignore_index=IGNORE)
        torch.testing.assert_close(ours, focal)
        torch.testing.assert_close(*(torch.autograd.grad(v, logits)[0] for v in (ours, focal)))


def test_difficulty_ce_detached_gradient_is_weight_times_p_minus_y():
    """The weight is a constant of the gradient: ∂L_i/∂z = w_i (p_i - y_i)."""
    logits, target = make_inputs("softmax", (2, 3, 4, 4))
    (grad,) = torch.autograd.grad(difficulty_ce_loss(logits, target, reduction="sum"), logits)
    p = torch.softmax(logits.detach(), 1)
    p_t = p.gather(1, target.unsqueeze(1))
    weight = 0.25 + 0.75 * (1 - p_t) ** 2
    torch.testing.assert_close(grad, weight * (p - F.one_hot(target, 3).movedim(-1, 1)))


def test_difficulty_ce_limits_and_dense_equals_index():
    """γ = 0 or α = 1 is cross-entropy; a one-hot target gives what its index target gives."""
    logits, target = make_inputs("softmax", ignore_fraction=0.2)
    ce = SF.cross_entropy_loss(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(difficulty_ce_loss(logits, target, gamma=0.0, ignore_index=IGNORE), ce)
    torch.testing.assert_close(difficulty_ce_loss(logits, target, alpha=1.0, ignore_index=IGNORE), ce)
    logits, target = make_inputs("softmax")
    one_hot = F.one_hot(target, 3).movedim(-1, 1).double()
    for detach in (True, False):
        torch.testing.assert_close(
            difficulty_ce_loss(logits, one_hot, detach=detach),
            difficulty_ce_loss(logits, target, detach=detach),
        )


# --------------------------------------------------------------------------- adaptive focal


def test_adaptive_focal_hand_values():
    """Class means L̄_0 = (ln 4/3 + ln 4)/2, L̄_1 = ln 4/3, L̄ = (2 ln 4/3 + ln 4)/3; recalls A = (1/2, 1):
    α_c = L̄_c / L̄, γ = (γ_0, γ_0 e^{-λ}); the loss is the focal loss with them (D ignored)."""
    logits, target = tiny()
    loss = AdaptiveFocalLoss(gamma=2.0, lam=1.0, ignore_index=IGNORE)
    value = loss(logits, target)
    easy, hard = math.log(4 / 3), math.log(4)
    mean_0, mean_1, mean = (easy + hard) / 2, easy, (2 * easy + hard) / 3
    alpha = [mean_0 / mean, mean_1 / mean]
    gamma = [2.0, 2.0 * math.exp(-1.0)]
    torch.testing.assert_close(loss.current_alpha().double(), torch.tensor(alpha, dtype=torch.float64))
    torch.testing.assert_close(loss.current_gamma().double(), torch.tensor(gamma, dtype=torch.float64))
    expected = (
        alpha[0] * (1 / 4) ** gamma[0] * easy
        + alpha[0] * (3 / 4) ** gamma[0] * hard
        + alpha[1] * (1 / 4) ** gamma[1] * easy
    ) / 3
    torch.testing.assert_close(value.item(), expected, rtol=1e-14, atol=0)  # float64 state, float64 loss


def test_running_average_rule():
    """The first batch sets the state, later ones blend with momentum; a class absent from a batch keeps
    its value; every training forward is one step."""
    logits, target = tiny()
    loss = AdaptiveFocalLoss(momentum=0.5, ignore_index=IGNORE)
    loss(logits, target)
    second = torch.tensor([[[LN3], [0.0]]], dtype=torch.float64)  # one pixel of class 1, p_t = 1/4: a miss
    loss(second, torch.tensor([[1]]))
    easy, hard = math.log(4 / 3), math.log(4)
    state = torch.tensor([(easy + hard) / 2, 0.5 * easy + 0.5 * hard], dtype=torch.float64)
    torch.testing.assert_close(loss.class_ce, state)
    torch.testing.assert_close(loss.class_recall, torch.tensor([0.5, 0.5 * 1 + 0.5 * 0], dtype=torch.float64))
    mean = 0.5 * (2 * easy + hard) / 3 + 0.5 * hard
    torch.testing.assert_close(loss.mean_ce, torch.tensor(mean, dtype=torch.float64))
    # momentum 1 keeps only the last batch
    last = AdaptiveFocalLoss(momentum=1.0, ignore_index=IGNORE)
    last(logits, target)
    last(second, torch.tensor([[1]]))
    torch.testing.assert_close(last.class_ce[1], torch.tensor(hard, dtype=torch.float64))


def test_adaptive_focal_limits():
    """λ = 0 gives γ_0 everywhere; A_max = A_min gives γ_0; a class never seen keeps α^init and γ_0 and a
    finite state."""
    logits, target = tiny()
    flat = AdaptiveFocalLoss(lam=0.0, ignore_index=IGNORE)
    flat(logits, target)
    torch.testing.assert_close(flat.current_gamma(), torch.full((2,), 2.0, dtype=torch.float64))
    same = AdaptiveFocalLoss(ignore_index=IGNORE)
    same(logits[..., :1], target[..., :1])  # only pixel A: class 0 seen, recall 1; class 1 never seen
    torch.testing.assert_close(same.current_gamma(), torch.full((2,), 2.0, dtype=torch.float64))
    unseen = AdaptiveFocalLoss(num_classes=4, alpha=[0.5, 1.0, 2.0, 3.0], ignore_index=IGNORE)
    wide = torch.cat([logits.detach(), torch.zeros(1, 2, 4, dtype=torch.float64)], 1)
    unseen(wide, target)
    assert unseen.class_seen.tolist() == [True, True, False, False]
    assert torch.isfinite(unseen.class_ce).all() and torch.isfinite(unseen.class_recall).all()
    torch.testing.assert_close(unseen.current_alpha()[2:], torch.tensor([2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(unseen.current_gamma()[2:], torch.tensor([2.0, 2.0], dtype=torch.float64))


def test_perfect_prediction_keeps_alpha_finite():
    """No error anywhere (L̄ = 0): the ratio is taken as 1, α = α^init."""
    target = torch.tensor([[0, 1, 1]])
    logits = (F.one_hot(target, 2).movedim(-1, 1).double() * 200 - 100).requires_grad_()
    loss = AdaptiveFocalLoss(alpha=[0.25, 0.75])
    assert loss(logits, target).item() == 0.0
    torch.testing.assert_close(loss.current_alpha(), torch.tensor([0.25, 0.75], dtype=torch.float64))


@pytest.mark.parametrize("adapt", ["alpha", "gamma"])
def test_adapt_one_keeps_the_other_static(adapt):
    logits, target = tiny()
    loss = AdaptiveFocalLoss(adapt=adapt, alpha=[0.3, 0.7], gamma=1.5, ignore_index=IGNORE)
    loss(logits, target)
    options = loss.options
    if adapt == "alpha":
        assert options["gamma"] == 1.5 and options["alpha"].shape == (2,)
        assert loss.class_recall.tolist() == [0.0, 0.0]  # the recall is tracked only when γ adapts
    else:
        assert options["alpha"] is loss.alpha and options["gamma"].shape == (2,)


def test_dense_target_statistics_equal_the_index_ones():
    """A one-hot target counts each pixel towards its class: the same state as the index target."""
    logits, target = make_inputs("softmax", (2, 3, 5, 6))
    index, dense = AdaptiveFocalLoss(), AdaptiveFocalLoss()
    value = index(logits, target)
    torch.testing.assert_close(dense(logits, F.one_hot(target, 3).movedim(-1, 1).double()), value)
    for name, state in index.state_dict().items():
        torch.testing.assert_close(dense.state_dict()[name], state)


# --------------------------------------------------------------------------- class-balanced and frequency α


def test_class_balanced_alpha_by_hand():
    """β = 1/2, counts (3, 1): w = (1/2 / (1 - 1/8), 1/2 / (1 - 1/2)) = (4/7, 1); α = 2 w / (11/7)."""
    torch.testing.assert_close(
        class_balanced_alpha(torch.tensor([3, 1]), 0.5), torch.tensor([8 / 11, 14 / 11], dtype=torch.float64)
    )
    counts = torch.tensor([10.0, 300.0, 5000.0])
    torch.testing.assert_close(
        class_balanced_alpha(counts, 0.999).float(),
        sl.class_weights(counts, method="effective_number", beta=0.999),
    )
    torch.testing.assert_close(class_balanced_alpha(torch.zeros(3), 0.9), torch.ones(3, dtype=torch.float64))


def test_cb_focal_with_counts_is_focal_with_effective_number_alpha():
    logits, target = make_inputs("softmax", ignore_fraction=0.2)
    counts = [120, 30, 7]
    loss = ClassBalancedFocalLoss(counts=counts, beta=0.99, gamma=1.5, ignore_index=IGNORE)
    alpha = sl.class_weights(counts, method="effective_number", beta=0.99)
    expected = SF.focal_loss(logits, target, gamma=1.5, alpha=alpha.double(), ignore_index=IGNORE)
    torch.testing.assert_close(loss(logits, target), expected)
    assert loss.counts.tolist() == counts  # given counts are not added to


def test_cb_focal_counts_training_batches_only():
    """Without counts: the valid pixels of each training batch are counted before α is computed; eval()
    counts nothing."""
    logits, target = tiny()
    loss = ClassBalancedFocalLoss(beta=0.5, ignore_index=IGNORE)
    value = loss(logits, target)
    assert loss.counts.tolist() == [2.0, 1.0]
    alpha = class_balanced_alpha(torch.tensor([2.0, 1.0]), 0.5)
    torch.testing.assert_close(value, SF.focal_loss(logits, target, alpha=alpha, ignore_index=IGNORE))
    loss(logits, target)
    assert loss.counts.tolist() == [4.0, 2.0]
    loss.eval()(logits, target)
    assert loss.counts.tolist() == [4.0, 2.0]


def test_frequency_alpha_by_hand():
    """Counts (3, 1), k = 2: f = (3/4, 1/4), α = (1/(1 + 3/2), 1/(1 + 1/2))."""
    logits = torch.zeros(1, 2, 4, dtype=torch.float64)
    loss = FrequencyFocalLoss(scale=2.0)
    loss(logits, torch.tensor([[0, 0, 0, 1]]))
    torch.testing.assert_close(loss.options["alpha"], torch.tensor([2 / 5, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(
        frequency_alpha(torch.tensor([0.0, 0.5]), scale=4.0), torch.tensor([1.0, 1 / 3])
    )


# --------------------------------------------------------------------------- adaptive label smoothing


def test_adaptive_smoothing_hand_value():
    """Max-probabilities 3/4 and 1/2: m = 5/8; ε = clip(0.1 · (5/8) / 0.5, 0, 0.3) = 0.125."""
    logits = torch.tensor([[[LN3, 0.0, 7.0], [0.0, 0.0, -7.0]]], dtype=torch.float64)
    target = torch.tensor([[0, 1, IGNORE]])
    loss = AdaptiveSmoothingCELoss(epsilon=0.1, target_confidence=0.5, ignore_index=IGNORE)
    value = loss(logits, target)
    torch.testing.assert_close(loss.confidence, torch.tensor(5 / 8, dtype=torch.float64))
    torch.testing.assert_close(loss.current_epsilon(), torch.tensor(0.125, dtype=torch.float64))
    expected = SF.cross_entropy_loss(logits, target, label_smoothing=0.125, ignore_index=IGNORE)
    torch.testing.assert_close(value, expected)


def test_adaptive_smoothing_is_clipped():
    logits, target = make_inputs("softmax", scale=20.0)  # over-confident: m close to 1
    high = AdaptiveSmoothingCELoss(epsilon=0.2, eps_max=0.25, target_confidence=0.5)
    high(logits, target)
    torch.testing.assert_close(high.current_epsilon(), torch.tensor(0.25, dtype=torch.float64))
    low = AdaptiveSmoothingCELoss(epsilon=0.1, eps_min=0.08, target_confidence=1.0)
    low(torch.zeros(1, 4, 3, dtype=torch.float64), torch.tensor([[0, 1, 2]]))  # m = 1/4: ε_0 / 4 < ε_min
    torch.testing.assert_close(low.current_epsilon(), torch.tensor(0.08, dtype=torch.float64))


# --------------------------------------------------------------------------- state


@pytest.mark.parametrize("cls", STATEFUL, ids=lambda c: c.__name__)
def test_fresh_module_is_its_static_form_and_eval_freezes_it(cls):
    logits, target = make_inputs("softmax", ignore_fraction=0.2)
    fresh = cls(ignore_index=IGNORE).eval()
    static = cls.function(logits, target, ignore_index=IGNORE)
    if cls is AdaptiveSmoothingCELoss:
        static = SF.cross_entropy_loss(logits, target, label_smoothing=0.1, ignore_index=IGNORE)
    torch.testing.assert_close(fresh(logits, target), static)
    trained = cls(ignore_index=IGNORE)
    trained(logits, target)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.eval()
    value = trained(logits * 3, target)
    for name, state in trained.state_dict().items():
        assert torch.equal(state, before[name]), name
    torch.testing.assert_close(value, cls.function(logits * 3, target, **trained.options))


@pytest.mark.parametrize("cls", STATEFUL, ids=lambda c: c.__name__)
def test_state_dict_round_trip_into_a_fresh_module(cls):
    """Every statistic is a buffer; a fresh module (state not sized yet) takes the saved sizes."""
    logits, target = make_inputs("softmax", ignore_fraction=0.2)
    trained = cls(ignore_index=IGNORE)
    trained(logits, target)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored = cls(ignore_index=IGNORE)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for module in (trained, restored):
        module.eval()
    torch.testing.assert_close(restored(logits, target), trained(logits, target))


@pytest.mark.parametrize("cls", STATEFUL, ids=lambda c: c.__name__)
def test_sums_of_shards_fold_in_as_the_whole_batch(cls):
    """update() receives sums and counts: the sums of two half batches (what an all-reduce gives) fold in
    exactly as the whole batch does."""
    logits, target = make_inputs("softmax", (4, 3, 5, 6), ignore_fraction=0.2)
    whole = cls(ignore_index=IGNORE)
    value = whole(logits, target)
    sharded = cls(ignore_index=IGNORE).eval()
    sums = [sharded.batch_sums(*sharded._prepare(logits[i : i + 2], target[i : i + 2])) for i in (0, 2)]
    sharded.update(sums[0] + sums[1])
    torch.testing.assert_close(sharded(logits, target), value)


def test_wrong_class_count_and_reset():
    logits, target = make_inputs("softmax")
    loss = AdaptiveFocalLoss()
    loss(logits, target)
    with pytest.raises(sl.SegLossError, match=r"C = 3 classes \(the loss's state\), got C = 4"):
        loss(torch.randn(2, 4, 5, 6), target)
    loss.reset()
    assert not loss.class_seen.any() and not loss.mean_seen
    torch.testing.assert_close(loss.eval()(logits, target), SF.focal_loss(logits, target))


def run(loss: torch.nn.Module, steps: range, state=None) -> List[float]:
    """Train a 1x1-conv model with ``loss``, optionally from a checkpoint; the loss of each step, and the
    checkpoint after the last one."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(2, 3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loss.load_state_dict(state["loss"])
    values = []
    for step in steps:
        g = torch.Generator().manual_seed(step)
        images = torch.randn(2, 2, 6, 6, generator=g)
        target = torch.randint(0, 3, (2, 6, 6), generator=g).masked_fill(
            torch.rand(2, 6, 6, generator=g) < 0.2, 255
        )
        if callable(getattr(loss, "set_step", None)):
            loss.set_step(step // 2)  # an "epoch" of two steps
        value = loss(model(images), target)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    run.checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loss": loss.state_dict(),
    }
    return values


RESUMED = [
    "adaptive_focal(ignore_index=255)",
    "adaptive_focal(ignore_index=255, adapt='alpha', alpha=[0.5, 1, 2], momentum=0.5)",
    "cb_focal(ignore_index=255, beta=0.99)",
    "frequency_focal(ignore_index=255, scale=3)",
    "adaptive_smoothing_ce(ignore_index=255, target_confidence=0.5)",
    "linear(start=1, end=0, steps=3)*adaptive_focal(ignore_index=255) "
    "+ 0.5*ce(weight=[1, 5, 10], weight_schedule=exponential(lam=0.5), ignore_index=255) "
    "+ (1 - linear(start=1, end=0, steps=3))*dice(ignore_index=255)",
]


@pytest.mark.parametrize("spec", RESUMED)
def test_interrupted_and_resumed_run_gives_the_same_losses_step_for_step(spec):
    """A run stopped after 4 steps and resumed from its checkpoint (model, optimiser and loss state dicts,
    through torch.save / torch.load(weights_only=True)) gives exactly the losses of an uninterrupted run."""
    uninterrupted = run(sl.create_loss(spec), range(8))
    first = run(sl.create_loss(spec), range(4))
    buffer = io.BytesIO()
    torch.save(run.checkpoint, buffer)
    buffer.seek(0)
    resumed = run(sl.create_loss(spec), range(4, 8), torch.load(buffer, weights_only=True))
    assert first + resumed == uninterrupted
    assert len(set(uninterrupted)) == 8  # the state and the schedules did change the loss along the way


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("entry", OURS, ids=lambda e: e.name)
def test_cuda_matches_the_cpu_step_by_step(entry, deterministic):
    """Values, gradients and state on CUDA follow the CPU over training steps, also with deterministic
    algorithms on (where the statistics take the deterministic scatter path), and repeat bitwise there."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        cpu, gpu, again = (entry.module(ignore_index=IGNORE) for _ in range(3))
        gpu, again = gpu.cuda(), again.cuda()
        for step in range(3):
            logits, target = make_inputs("softmax", (2, 3, 9, 10), ignore_fraction=0.2, seed=step)
            cuda_logits = logits.detach().cuda().requires_grad_()
            value = cpu(logits, target)
            gpu_value = gpu(cuda_logits, target.cuda())
            torch.testing.assert_close(gpu_value.cpu(), value)
            grads = [
                torch.autograd.grad(v, x)[0].cpu() for v, x in ((value, logits), (gpu_value, cuda_logits))
            ]
            torch.testing.assert_close(grads[1], grads[0])
            repeated = again(cuda_logits, target.cuda())
            if deterministic:
                assert torch.equal(repeated, gpu_value)
        for name, state in cpu.state_dict().items():
            torch.testing.assert_close(gpu.state_dict()[name].cpu(), state)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dense", [False, True], ids=["index", "one-hot"])
@pytest.mark.parametrize("entry", OURS, ids=lambda e: e.name)
def test_non_finite_logit_gives_a_non_finite_loss_with_checks_off(entry, dense, bad):
    """SPEC §6: with the input checks off a NaN or +inf logit at a valid pixel never gives a finite loss
    (on, it raises)."""
    logits = torch.tensor([[[2.0, 0.1], [bad, 0.3], [0.0, -1.0]]], dtype=torch.float64)
    target = torch.tensor([[0, 1]])
    if dense:
        target = F.one_hot(target, 3).movedim(-1, 1).double()
    with sl.input_checks(False):
        assert not torch.isfinite(entry.module()(logits, target))
    with pytest.raises(sl.SegLossError, match="expected finite logits"):
        entry.module()(logits, target)


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: AdaptiveFocalLoss(lam=-0.1), r"lam in \[0, inf\]"),
        (lambda: AdaptiveFocalLoss(momentum=0.0), r"momentum in \(0, 1\]"),
        (lambda: AdaptiveFocalLoss(momentum=1.5), r"momentum in \(0, 1\]"),
        (lambda: AdaptiveFocalLoss(adapt="beta"), r"adapt to be one of"),
        (lambda: AdaptiveFocalLoss(alpha=[-1.0, 1.0]), r"alpha values finite and in \[0"),
        (lambda: AdaptiveFocalLoss(num_classes=3, alpha=[1.0, 1.0]), r"alpha of length C = 3"),
        (lambda: AdaptiveFocalLoss(num_classes=1), r"num_classes to be an int >= 2"),
        (lambda: AdaptiveFocalLoss(gama=1.0), r"did you mean 'gamma'"),
        (lambda: ClassBalancedFocalLoss(beta=1.0), r"beta in \[0, 1\)"),
        (lambda: ClassBalancedFocalLoss(beta=-0.1), r"beta in \[0, 1\)"),
        (lambda: ClassBalancedFocalLoss(counts=[3, 0, 1]), r"counts values finite and in \(0"),
        (lambda: FrequencyFocalLoss(scale=-1.0), r"scale in \[0"),
        (lambda: FrequencyFocalLoss(momentum=2.0), r"momentum in \(0, 1\]"),
        (lambda: AdaptiveSmoothingCELoss(momentum=0), r"momentum in \(0, 1\]"),
        (lambda: AdaptiveSmoothingCELoss(eps_min=0.2, eps_max=0.1), r"eps_max in \[0.2, 1\)"),
        (lambda: AdaptiveSmoothingCELoss(epsilon=0.5), r"epsilon in \[0, 0.3\]"),
        (lambda: AdaptiveSmoothingCELoss(target_confidence=0.0), r"target_confidence in \(0, 1\]"),
        (lambda: DifficultyCELoss(alpha=1.5), r"alpha in \[0, 1\]"),
        (lambda: DifficultyCELoss(detach="no"), r"detach to be True or False"),
        (lambda: sl.create_loss("adaptive_focal(lam=-1)"), r"lam in \[0, inf\]"),
    ],
)
def test_bad_options_raise(make, message):
    with pytest.raises(sl.SegLossError, match=message):
        make()


# --------------------------------------------------------------------------- weight maps and masks (issue 19)

WEIGHTED = [DifficultyCELoss, *STATEFUL]


def test_difficulty_ce_weighted_by_hand():
    """Logits (0, ln 3) at two pixels, of class 1 (p_t = 3/4) and class 0 (p_t = 1/4); α = 0.25, γ = 2:
    w = 0.25 + 0.75 (1/4)^2 and 0.25 + 0.75 (3/4)^2; ω = (2, 0.5):
    mean = (2 w_1 ln 4/3 + 0.5 w_2 ln 4) / 2.5."""
    logits = torch.tensor([[0.0, 0.0], [LN3, LN3]], dtype=torch.float64).unsqueeze(0)
    target, weights = torch.tensor([[1, 0]]), torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    w1, w2 = 0.25 + 0.75 * (1 / 4) ** 2, 0.25 + 0.75 * (3 / 4) ** 2
    expected = (2 * w1 * math.log(4 / 3) + 0.5 * w2 * math.log(4)) / 2.5
    torch.testing.assert_close(difficulty_ce_loss(logits, target, weights).item(), expected)


def test_weighted_statistics_by_hand():
    """tiny() with ω = (2, 1, 0.5, 7), D ignored: class 0 has mass 2 + 1 = 3, class 1 has 0.5.
    Counts (3, 0.5); frequencies (3, 0.5) / 3.5; adaptive focal: L̄_0 = (2 ln 4/3 + ln 4) / 3, L̄_1 = ln 4/3,
    L̄ = (2.5 ln 4/3 + ln 4) / 3.5, recalls (2/3, 1), and the loss Σ ω_i focal_i / 3.5 under them."""
    logits, target = tiny()
    weights = torch.tensor([[2.0, 1.0, 0.5, 7.0]], dtype=torch.float64)
    cb = ClassBalancedFocalLoss(ignore_index=IGNORE)
    cb(logits, target, weights)
    torch.testing.assert_close(cb.counts, torch.tensor([3.0, 0.5], dtype=torch.float64))
    frequency = FrequencyFocalLoss(ignore_index=IGNORE)
    frequency(logits, target, weights)
    torch.testing.assert_close(frequency.frequency, torch.tensor([3 / 3.5, 0.5 / 3.5], dtype=torch.float64))
    loss = AdaptiveFocalLoss(gamma=2.0, lam=1.0, ignore_index=IGNORE)
    value = loss(logits, target, weights)
    easy, hard = math.log(4 / 3), math.log(4)
    mean_0, mean_1, mean = (2 * easy + hard) / 3, easy, (2.5 * easy + hard) / 3.5
    alpha = [mean_0 / mean, mean_1 / mean]
    gamma = [2.0, 2.0 * math.exp(-1.0)]  # A = (2/3, 1): class 0 is the worst
    torch.testing.assert_close(loss.class_recall, torch.tensor([2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(loss.current_alpha(), torch.tensor(alpha, dtype=torch.float64))
    expected = (
        2 * alpha[0] * (1 / 4) ** gamma[0] * easy
        + 1 * alpha[0] * (3 / 4) ** gamma[0] * hard
        + 0.5 * alpha[1] * (1 / 4) ** gamma[1] * easy
    ) / 3.5
    torch.testing.assert_close(value.item(), expected, rtol=1e-14, atol=0)


def test_weighted_confidence_by_hand():
    """Max-probabilities 3/4 (logits (ln 3, 0)) and 1/2 (logits (0, 0)) with ω = (2, 1): the batch's
    confidence is (2 · 3/4 + 1/2) / 3 = 2/3, and ε = clip(0.1 · (2/3) / 0.9, 0, 0.3)."""
    logits = torch.tensor([[LN3, 0.0], [0.0, 0.0]], dtype=torch.float64).unsqueeze(0)
    loss = AdaptiveSmoothingCELoss()
    loss(logits, torch.tensor([[0, 1]]), torch.tensor([[2.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(loss.confidence.item(), 2 / 3)
    torch.testing.assert_close(loss.current_epsilon().item(), 0.1 * (2 / 3) / 0.9)


def one_image(seed=0, length=14):
    """Logits (1, 3, L) and an index target with two ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(1, 3, length, generator=g, dtype=torch.float64) * 2).requires_grad_()
    target = torch.randint(0, 3, (1, length), generator=g)
    target[0, :2] = IGNORE
    return logits, target, g


@pytest.mark.parametrize("cls", WEIGHTED, ids=lambda c: c.__name__)
def test_integer_weights_are_repeated_pixels(cls):
    """An integer ω_i is pixel i repeated ω_i times: the loss, its gradient and the state after two
    training steps (the second under the state the first folded in)."""
    logits, target, g = one_image()
    counts = torch.randint(0, 4, (1, 14), generator=g)
    big_logits, big_target = logits.repeat_interleave(counts[0], 2), target.repeat_interleave(counts[0], 1)
    weighted, plain = cls(ignore_index=IGNORE), cls(ignore_index=IGNORE)
    for _ in range(2):
        value, expected = weighted(logits, target, counts.double()), plain(big_logits, big_target)
        torch.testing.assert_close(value, expected)
    # big_logits repeats logits: the gradient reaching logits sums over each pixel's copies
    torch.testing.assert_close(*(torch.autograd.grad(v, logits)[0] for v in (value, expected)))
    for name, state in weighted.state_dict().items():
        torch.testing.assert_close(state, plain.state_dict()[name])


@pytest.mark.parametrize("cls", WEIGHTED, ids=lambda c: c.__name__)
def test_mask_on_a_soft_target(cls):
    """A soft target's masked pixels count nowhere (loss, gradient, state) even with NaN logits there:
    the loss and the state are those of the unmasked pixels alone."""
    logits, _, g = one_image(1)
    soft = torch.softmax(torch.randn(1, 3, 14, generator=g, dtype=torch.float64), 1)
    mask = torch.rand(1, 14, generator=g) > 0.3
    weights = torch.rand(1, 14, generator=g, dtype=torch.float64) + 0.5
    poisoned = logits.detach().masked_fill(~mask.unsqueeze(1), torch.nan).requires_grad_()
    masked, alone = cls(), cls()
    value = masked(poisoned, soft, weights, mask)
    (grad,) = torch.autograd.grad(value, poisoned)
    assert torch.isfinite(grad).all() and not grad.masked_select(~mask.unsqueeze(1)).any()
    keep = mask[0]
    torch.testing.assert_close(value, alone(logits[..., keep], soft[..., keep], weights[..., keep]))
    for name, state in masked.state_dict().items():
        torch.testing.assert_close(state, alone.state_dict()[name])


@pytest.mark.parametrize("name", NEW)
def test_weighted_function_module_and_compound_agree(name):
    """module(z, y, ω, m) is function(z, y, ω, m, **module.options) under the state it folded in, and a
    compound passes the weights and the mask to the term."""
    logits, target = make_inputs("softmax", ignore_fraction=0.2)
    g = torch.Generator().manual_seed(11)
    weights = torch.rand(target.shape, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(target.shape, generator=g) > 0.2
    module = sl.create_loss(f"{name}(ignore_index={IGNORE})")
    value = module(logits, target, weights, mask)
    torch.testing.assert_close(value, module.function(logits, target, weights, mask, **module.options))
    compound = sl.create_loss(f"dice(ignore_index={IGNORE}) + {name}(ignore_index={IGNORE})")
    total = compound(logits, target, weight_map=weights, mask=mask)
    dice = sl.dice_loss(logits, target, weights, mask, ignore_index=IGNORE)
    torch.testing.assert_close(total, dice + value)
