"""Issue 16 ("Reliability II") for the stateful losses and the class-frequency counter: dtype conversions of
the modules, checked state loading, float64 accuracy of the statistics and sums, and the gradient with
respect to a soft target (SPEC §2 "Running statistics", §6 accumulation dtype and gradients)."""

from __future__ import annotations

import copy
import io
import math
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE
from torch import Tensor

import seglosses as sl
from seglosses.adaptive.losses import (
    AdaptiveFocalLoss,
    AdaptiveSmoothingCELoss,
    ClassBalancedFocalLoss,
    DifficultyCELoss,
    FrequencyFocalLoss,
)
from seglosses.weights import ClassFrequency

STATEFUL = [AdaptiveFocalLoss, ClassBalancedFocalLoss, FrequencyFocalLoss, AdaptiveSmoothingCELoss]
PER_CLASS = [AdaptiveFocalLoss, ClassBalancedFocalLoss, FrequencyFocalLoss]
ALL = [*STATEFUL, DifficultyCELoss]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
CONVERSIONS: Dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
    "double": lambda m: m.double(),
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "float": lambda m: m.float(),
    "to(float64)": lambda m: m.to(torch.float64),
    "to(float16)": lambda m: m.to(torch.float16),
    "to(bfloat16)": lambda m: m.to(dtype=torch.bfloat16),
    "double().float()": lambda m: m.double().float(),
}


def name_of(cls: type) -> str:
    return cls.__name__


def batch(seed: int, dtype: torch.dtype = torch.float64, dense: bool = False, ignore: float = 0.2):
    """Logits ``(2, 3, 6, 7)`` and an index target with ignored pixels, or a soft target whose pixel mass
    is not 1 (so that ``Σ y`` is no integer: a float32 sum of it shows)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64) * 2).to(dtype)
    if dense:
        soft = torch.softmax(torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64) * 2, 1)
        return logits, soft * (0.5 + 0.5 * torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64))
    target = torch.randint(0, 3, (2, 6, 7), generator=g)
    return logits, target.masked_fill(torch.rand(2, 6, 7, generator=g) < ignore, IGNORE)


def make(cls: type, **options) -> torch.nn.Module:
    return cls(**{"ignore_index": IGNORE, **options})


# --------------------------------------------------------------------------- 1. dtype conversions


@pytest.mark.parametrize("conversion", CONVERSIONS, ids=str)
@pytest.mark.parametrize("cls", ALL, ids=name_of)
def test_module_works_after_a_dtype_conversion_with_inputs_of_any_float_dtype(cls, conversion):
    """``.double()``, ``.half()``, ``.bfloat16()``, ``.float()``, ``.to(dtype)``: training and eval forwards
    work for logits of every float dtype and index or dense targets, and the floating statistics stay
    float64 (bool flags bool): the state's dtype does not follow the module's."""
    for dtype in DTYPES:
        for dense in (False, True):
            loss = CONVERSIONS[conversion](make(cls))
            logits, target = batch(0, dtype, dense)
            if dense:
                target = target.to(dtype)
            for _ in range(2):
                assert torch.isfinite(loss(logits, target)), (dtype, dense)
            assert torch.isfinite(loss.eval()(logits, target)), (dtype, dense)
            for name, buffer in loss.named_buffers():
                assert buffer.dtype in (torch.float64, torch.bool), (name, buffer.dtype)


@pytest.mark.parametrize("conversion", CONVERSIONS, ids=str)
@pytest.mark.parametrize("cls", STATEFUL, ids=name_of)
def test_converted_module_follows_the_unconverted_one_exactly(cls, conversion):
    """The state is float64 whatever the module was converted to, so a converted module gives bit for bit
    the losses and the state of an unconverted one; a conversion after training does not round the state;
    its state dict loads into a fresh module."""
    plain, converted = make(cls), CONVERSIONS[conversion](make(cls))
    for step in range(3):
        logits, target = batch(step)
        assert torch.equal(converted(logits, target), plain(logits, target))
    for name, state in plain.state_dict().items():
        assert torch.equal(converted.state_dict()[name], state), name
    before = {name: state.clone() for name, state in plain.state_dict().items()}
    CONVERSIONS[conversion](plain)
    for name, state in plain.state_dict().items():
        assert state.dtype == before[name].dtype and torch.equal(state, before[name]), name
    fresh = make(cls)
    fresh.load_state_dict(converted.state_dict())
    logits, target = batch(7)
    assert torch.equal(fresh.eval()(logits, target), plain.eval()(logits, target))


def test_adaptive_focal_alpha_keeps_its_values_under_half():
    """α^init is state too: ``.half()`` must not round 0.3 to float16."""
    loss = AdaptiveFocalLoss(alpha=[0.3, 1.7, 0.9]).half()
    assert loss.alpha.dtype == torch.float64
    assert loss.alpha.tolist() == [0.3, 1.7, 0.9]


@pytest.mark.parametrize("conversion", CONVERSIONS, ids=str)
def test_class_frequency_after_a_dtype_conversion(conversion):
    """The counts stay int64 through every conversion and the counter keeps counting and round-tripping."""
    counter = CONVERSIONS[conversion](ClassFrequency(3, ignore_index=IGNORE))
    counter.update(torch.tensor([[0, 0, 1], [2, IGNORE, 0]]))
    assert counter.counts.dtype == torch.int64
    assert counter.compute().tolist() == [3, 1, 1]
    restored = ClassFrequency(3, ignore_index=IGNORE).half()
    restored.load_state_dict(counter.state_dict())
    assert restored.compute().dtype == torch.int64 and restored.compute().tolist() == [3, 1, 1]


# --------------------------------------------------------------------------- 2. loading state


def trained(cls: type, **options) -> torch.nn.Module:
    loss = make(cls, **options)
    for step in range(2):
        loss(*batch(step))
    return loss


@pytest.mark.parametrize("sized", ["num_classes", "first forward"])
@pytest.mark.parametrize("cls", PER_CLASS, ids=name_of)
def test_loading_a_state_of_another_class_count_raises(cls, sized):
    """A 3-class state into a 5-class module: a SegLossError that says so and what to do, not torch's
    size-mismatch RuntimeError; the module's own state is untouched."""
    state = trained(cls).state_dict()
    if sized == "num_classes":
        target = make(cls, num_classes=5)
    else:
        target = make(cls)
        target(torch.randn(1, 5, 4, dtype=torch.float64), torch.tensor([[0, 1, 2, 4]]))
    before = {name: value.clone() for name, value in target.state_dict().items()}
    with pytest.raises(sl.SegLossError, match=r"expected .*C = 5 classes.*got .*C = 3.*num_classes=3"):
        target.load_state_dict(state)
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0], ids=["nan", "inf", "-inf", "negative"])
@pytest.mark.parametrize("cls", STATEFUL, ids=name_of)
def test_loading_non_finite_or_negative_statistics_raises_naming_the_buffer(cls, bad):
    """NaN, ±inf or a negative value in any floating statistic (running means, recall, counts, frequency,
    confidence, α^init): a SegLossError naming the buffer, and nothing is loaded."""
    source = trained(cls, **({"alpha": [0.5, 1.0, 2.0]} if cls is AdaptiveFocalLoss else {}))
    state = source.state_dict()
    names = [name for name, value in state.items() if value.is_floating_point()]
    assert names
    for name in names:
        for position in range(state[name].numel()):
            corrupted = {key: value.clone() for key, value in state.items()}
            corrupted[name].view(-1)[position] = bad
            fresh = make(cls, **({"alpha": [1.0, 1.0, 1.0]} if cls is AdaptiveFocalLoss else {}))
            before = {key: value.clone() for key, value in fresh.state_dict().items()}
            with pytest.raises(sl.SegLossError, match=rf"'{name}'"):
                fresh.load_state_dict(corrupted)
            for key, value in fresh.state_dict().items():
                assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("cls", STATEFUL, ids=name_of)
def test_loading_a_bad_shape_or_flag_raises(cls):
    """A statistic of the wrong shape or a flag that is neither 0 nor 1: a SegLossError naming it."""
    state = trained(cls).state_dict()
    for name, value in state.items():
        wrong = {**state, name: torch.cat([value.reshape(-1), value.reshape(-1)]).reshape(2, -1)}
        with pytest.raises(sl.SegLossError, match=rf"'{name}'"):
            make(cls).load_state_dict(wrong)
        if value.dtype == torch.bool:
            flags = {**state, name: value.to(torch.float64) * 2}
            with pytest.raises(sl.SegLossError, match=rf"'{name}'.*0 or 1"):
                make(cls).load_state_dict(flags)


@pytest.mark.parametrize("cls", STATEFUL, ids=name_of)
def test_valid_state_loads_exactly(cls):
    """A valid state loads bit for bit, also through torch.save with weights_only, also a float32 state
    of an earlier version (converted exactly)."""
    source = trained(cls)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    restored = make(cls)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name, value in source.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    old = {k: v.float() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    from_old = make(cls)
    from_old.load_state_dict(old)
    for name, value in old.items():
        assert torch.equal(from_old.state_dict()[name], value.to(from_old.state_dict()[name].dtype)), name


@pytest.mark.parametrize(
    "counts, message",
    [
        (torch.tensor([1, 2, 3, 4, 5]), r"ClassFrequency\(num_classes=5\)"),
        (torch.tensor([1, -2, 3]), r"'counts'.*1 negative"),
        (torch.tensor([1.0, math.nan, 3.0]), r"'counts'.*1 NaN"),
        (torch.tensor([1.0, math.inf, 3.0]), r"'counts'.*1 inf"),
        (torch.tensor([1.5, 2.0, 3.0]), r"'counts'.*1 not an integer"),
    ],
    ids=["classes", "negative", "nan", "inf", "fraction"],
)
def test_class_frequency_loading_bad_counts_raises(counts, message):
    counter = ClassFrequency(3)
    with pytest.raises(sl.SegLossError, match=message):
        counter.load_state_dict({"counts": counts})
    assert counter.compute().tolist() == [0, 0, 0]
    counter.load_state_dict({"counts": torch.tensor([1.0, 2.0, 2.0**40])})  # integral floats are exact
    assert counter.compute().tolist() == [1, 2, 2**40]


# --------------------------------------------------------------------------- 3. float64 accuracy


def dense_of(target: Tensor, classes: int = 3) -> Tensor:
    """The target as float64 ``(N, C, *S)``: a soft target as given, an index target one-hot with 0 at
    ignored pixels."""
    if target.is_floating_point():
        return target.double()
    valid = target != IGNORE
    return F.one_hot(torch.where(valid, target, 0), classes).movedim(-1, 1).double() * valid.unsqueeze(1)


def ref_focal(log_p: Tensor, y: Tensor, alpha: Tensor, gamma: Tensor) -> Tensor:
    """``-Σ_ic y_ic α_c (1-p_ic)^γ_c log p_ic / Σ y`` in float64."""
    shape = (1, -1, *[1] * (log_p.ndim - 2))
    factor = alpha.view(shape) * (-torch.expm1(log_p)) ** gamma.view(shape)
    return -(y * factor * log_p).sum() / y.sum()


def ref_steps(cls: type, options: Dict, batches: List[Tuple[Tensor, Tensor]]) -> Tensor:
    """The loss of the last training step of ``cls`` after ``batches``, by SPEC §2's formulas in float64."""
    m = options.get("momentum", 0.1)
    state: Dict[str, Tensor] = {}
    seen: Dict[str, Tensor] = {}

    def fold(name: str, x: Tensor, has: Tensor) -> None:
        """``s ← (1-m) s + m x`` where ``has``; the first batch with data sets ``s = x``."""
        s = state.get(name, torch.zeros_like(x))
        was = seen.get(name, torch.zeros_like(has))
        state[name] = torch.where(has, torch.where(was, (1 - m) * s + m * x, x), s)
        seen[name] = was | has

    for logits, target in batches:
        log_p, y = torch.log_softmax(logits.detach().double(), 1), dense_of(target)
        dims = [0, *range(2, y.ndim)]
        if cls is AdaptiveFocalLoss:
            ce = -torch.where(y > 0, y * log_p, 0.0)
            hit = (log_p == log_p.amax(1, keepdim=True)).double()
            count = y.sum(dims)
            fold("class_ce", ce.sum(dims) / count, count > 0)
            fold("recall", (y * hit).sum(dims) / count, count > 0)
            fold("mean_ce", ce.sum() / y.sum(), y.sum() > 0)
            alpha = torch.tensor(options["alpha"], dtype=torch.float64) * state["class_ce"] / state["mean_ce"]
            a = state["recall"]
            gamma = options["gamma"] * torch.exp(-options["lam"] * (a - a.min()) / (a.max() - a.min()))
            value = ref_focal(log_p, y, alpha, gamma)
        elif cls is ClassBalancedFocalLoss:
            state["counts"] = state.get("counts", 0) + y.sum(dims)
            beta = options["beta"]
            w = (1 - beta) / (1 - beta ** state["counts"])
            alpha = 3 * w / w.sum()
            value = ref_focal(log_p, y, alpha, torch.full((3,), options["gamma"], dtype=torch.float64))
        elif cls is FrequencyFocalLoss:
            counts = y.sum(dims)
            fold("frequency", counts / counts.sum(), torch.ones(3, dtype=torch.bool))
            alpha = 1 / (1 + options["scale"] * state["frequency"])
            value = ref_focal(log_p, y, alpha, torch.full((3,), options["gamma"], dtype=torch.float64))
        else:
            valid = y.sum(1) > 0 if not target.is_floating_point() else torch.ones_like(y[:, 0], dtype=bool)
            top = log_p.amax(1).exp()
            fold("confidence", top[valid].sum() / valid.sum(), torch.tensor(True))
            eps = (options["epsilon"] * state["confidence"] / options["target_confidence"]).clamp(
                options["eps_min"], options["eps_max"]
            )
            smoothed = ((1 - eps) * y + eps / 3) * valid.unsqueeze(1)
            value = -(smoothed * log_p).sum() / y.sum()
    return value


REFERENCE_OPTIONS = {
    AdaptiveFocalLoss: {"alpha": [0.3, 1.1, 0.7], "gamma": 1.7, "lam": 0.8, "momentum": 0.3},
    ClassBalancedFocalLoss: {"beta": 0.99, "gamma": 1.3},
    FrequencyFocalLoss: {"scale": 2.5, "gamma": 1.6, "momentum": 0.4},
    AdaptiveSmoothingCELoss: {
        "epsilon": 0.1,
        "eps_min": 0.0,
        "eps_max": 0.3,
        "target_confidence": 0.7,
        "momentum": 0.35,
    },
}


@pytest.mark.parametrize("dense", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("cls", STATEFUL, ids=name_of)
def test_float64_training_steps_are_float64_accurate(cls, dense):
    """Three training steps of a default module (no ``.double()``) on float64 logits: each loss equals SPEC's
    formulas evaluated in float64 by hand to float64 accuracy (statistics, their running averages, α, γ,
    ε and the sums of the loss)."""
    options = REFERENCE_OPTIONS[cls]
    loss = cls(**options, **({} if dense else {"ignore_index": IGNORE}))
    batches = [batch(step, dense=dense) for step in range(3)]
    for step in range(3):
        value = loss(*batches[step])
        expected = ref_steps(cls, options, batches[: step + 1])
        torch.testing.assert_close(value, expected, rtol=1e-13, atol=0)


def test_difficulty_ce_float64_soft_target_is_float64_accurate():
    """``-Σ y w log p / Σ y`` with soft targets: the target mass is summed in float64."""
    logits, soft = batch(3, dense=True)
    log_p = torch.log_softmax(logits, 1)
    for gamma, alpha in ((2.0, 0.25), (0.5, 0.6)):
        weight = alpha + (1 - alpha) * (-torch.expm1(log_p)) ** gamma
        expected = -(soft * weight * log_p).sum() / soft.sum()
        value = DifficultyCELoss(alpha=alpha, gamma=gamma)(logits, soft)
        torch.testing.assert_close(value, expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("cls", STATEFUL, ids=name_of)
def test_statistics_of_a_float64_batch_are_float64(cls):
    """The batch's statistic is folded in without a float32 rounding: the first step's state is the
    float64 mean itself."""
    logits, target = batch(5)
    loss = make(cls)
    loss(logits, target)
    y, log_p = dense_of(target), torch.log_softmax(logits.detach(), 1)
    dims = [0, 2, 3]
    if cls is AdaptiveFocalLoss:
        ce = -(y * log_p).sum(dims) / y.sum(dims)
        torch.testing.assert_close(loss.class_ce, ce, rtol=1e-14, atol=0)
    elif cls is ClassBalancedFocalLoss:
        assert torch.equal(loss.counts, y.sum(dims))
    elif cls is FrequencyFocalLoss:
        torch.testing.assert_close(loss.frequency, y.sum(dims) / y.sum(), rtol=1e-15, atol=0)
    else:
        valid = y.sum(1) > 0
        mean = log_p.amax(1).exp()[valid].sum() / valid.sum()
        torch.testing.assert_close(loss.confidence, mean, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------- 4. gradients, dense targets


@pytest.mark.parametrize(
    "cls, options",
    [pytest.param(cls, {}, id=cls.__name__) for cls in ALL]
    + [pytest.param(DifficultyCELoss, {"detach": False}, id="DifficultyCELoss-no-detach")],
)
def test_soft_target_gradient_in_eval_matches_gradcheck(cls, options):
    """SPEC §6: a soft target that requires a gradient gets the gradient of the formula. Stateful losses
    in eval() after a training step (frozen statistics); float64 gradcheck against finite differences."""
    loss = cls(**options)
    logits, soft = batch(11, dense=True)
    logits = logits.requires_grad_()
    loss(logits.detach(), soft)
    loss.eval()
    target = soft.clone().requires_grad_()
    grad = torch.autograd.grad(loss(logits, target), target, allow_unused=True)[0]
    assert grad is not None
    assert torch.autograd.gradcheck(lambda y: loss(logits.detach(), y), (target,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", STATEFUL, ids=name_of)
def test_training_statistics_are_detached_from_a_soft_target(cls):
    """SPEC §2: statistics are detached, the loss is not. In training mode the gradients with respect to
    the logits and to a soft target requiring grad are those of the loss under the updated state, frozen;
    the buffers never join the graph, so step after step backpropagates."""
    loss = cls()
    for step in range(3):
        logits, soft = batch(step, dense=True)
        logits, target = logits.requires_grad_(), soft.clone().requires_grad_()
        value = loss(logits, target)
        assert not any(buffer.requires_grad for buffer in loss.buffers())
        frozen = copy.deepcopy(loss).eval()
        expected = torch.autograd.grad(frozen(logits, target), (logits, target), allow_unused=True)
        got = torch.autograd.grad(value, (logits, target), allow_unused=True)
        for g, e in zip(got, expected):
            assert (g is None) == (e is None)
            if g is not None:
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize("cls", STATEFUL, ids=name_of)
def test_compiled_module_updates_its_float64_state_like_eager(cls):
    """The float64 state under torch.compile (fullgraph, aot_eager): three training steps give the eager
    losses, gradients and state (AOTAutograd dropped the in-place update of the 0-d float64 ``confidence``
    written directly; fold_in writes through a view)."""
    eager, twin = make(cls), make(cls)
    for module in (eager, twin):  # size the state (an eval forward changes nothing)
        module.eval()(*batch(0, torch.float32))
        module.train()
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for step in range(3):
        logits, target = batch(step, torch.float32)
        logits.requires_grad_()
        expected = eager(logits, target)
        value = compiled(logits, target)
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(*(torch.autograd.grad(v, logits)[0] for v in (value, expected)))
    for name, state in eager.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[name], state, rtol=1e-12, atol=0)
