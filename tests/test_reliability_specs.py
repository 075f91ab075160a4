"""Reliability II (issue 16): numbers that must be checked, torch.compile with dynamic shapes, crashes that
must be SegLossError, misparsed specs, one-line CLI errors, and hints for MONAI / SMP option names."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from helpers import make_inputs

import seglosses as sl
import seglosses.functional as SF
import seglosses.losses  # noqa: F401  (every loss registered)
from seglosses._core.registry import MAX_NESTING, parse_spec
from seglosses.cli import main
from seglosses.metrics import ConfusionMatrix, boundary_iou, hausdorff_distance
from seglosses.ops import distance_transform, signed_distance_map, two_sided_distance
from seglosses.schedules import Schedule, as_schedule, step_schedule

HUGE = 10**400  # no float holds it
HUGER = 10**5000  # Python will not even write it out (more than 4,300 digits)


# --- 1. unvalidated numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["1e400*ce", "ce - 1e400*dice", "-1e400*ce", "ce*1e400", "(1e400 - linear(steps=3))*ce",
     "ce(weight_schedule=1e400*linear(steps=3), weight=[1, 2, 3])"],
)  # fmt: skip
def test_spec_weights_must_be_finite(spec):
    with pytest.raises(sl.SegLossError, match="finite"):
        sl.create_loss(spec)


@pytest.mark.parametrize(
    "weight",
    [None, float("nan"), float("inf"), -float("inf"), np.float64("nan"), True, object(), [1.0], HUGE, HUGER,
     torch.tensor([1.0, 2.0]), torch.tensor(0.5, requires_grad=True), torch.tensor(float("nan"))],
    ids=["None", "nan", "inf", "-inf", "numpy-nan", "bool", "object", "list", "1e400", "1e5000", "vector",
         "requires-grad", "nan-tensor"],
)  # fmt: skip
def test_compound_weights_are_finite_numbers_or_schedules(weight):
    with pytest.raises(sl.SegLossError, match="weight"):
        sl.CompoundLoss([(weight, "ce", sl.CrossEntropyLoss())])


def test_compound_weights_that_are_fine():
    schedule = Schedule("linear", start=1.0, end=0.0, steps=4)
    weights = [0.5, 2, np.float32(0.25), torch.tensor(1.5), schedule, "cosine(steps=3)"]
    loss = sl.CompoundLoss([(w, f"ce{k}", sl.CrossEntropyLoss()) for k, w in enumerate(weights)])
    assert loss.current_weights()[:4] == [0.5, 2.0, 0.25, 1.5]


def test_schedule_values_stay_finite_or_raise():
    growing = Schedule("step", start=1.0, factor=10.0, every=1.0)
    assert growing(3) == pytest.approx(1000.0)
    with pytest.raises(sl.SegLossError, match="finite value"):
        growing(1000)  # 10**1000 overflows (an OverflowError before)
    loss = sl.CompoundLoss([(growing, "ce", sl.CrossEntropyLoss())])
    loss.set_step(1000)
    logits, target = make_inputs("softmax")
    with pytest.raises(sl.SegLossError, match="finite value"):
        loss(logits, target)
    with pytest.raises(sl.SegLossError, match="finite value"):
        (1e308 * Schedule("constant", value=10.0))(0)  # inf before
    # where the math has a finite answer, it is given: a tiny step length makes ⌊t / every⌋ = inf
    assert step_schedule(10.0, start=2.0, factor=0.5, every=1e-300) == 0.0
    assert step_schedule(10.0, start=2.0, factor=1.0, every=1e-300) == 2.0


BOUNDARY = [
    (SF.boundary_loss, "softmax"),
    (SF.binary_boundary_loss, "binary"),
    (lambda z, y, d: sl.BoundaryLoss()(z, y, d), "softmax"),
    (lambda z, y, d: sl.BinaryBoundaryLoss()(z, y, d), "binary"),
]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("function, domain", BOUNDARY)
def test_dist_maps_must_be_finite(function, domain, bad):
    logits, target = make_inputs(domain, (2, 3, 5, 6))
    maps = torch.randn(logits.shape, dtype=logits.dtype)
    maps[1, 2, 3, 4] = bad
    with pytest.raises(sl.SegLossError, match="finite dist_maps"):
        function(logits, target, maps)
    with sl.input_checks(False):  # a non-finite loss, never a silent finite one
        assert not torch.isfinite(function(logits, target, maps))


def test_dist_maps_get_their_gradient():
    """SPEC section 6: a floating input that requires grad gets the formula's gradient, ∂ mean(φ p) / ∂φ."""
    logits, target = make_inputs("softmax", (2, 3, 5, 6))
    maps = torch.randn(logits.shape, dtype=logits.dtype, requires_grad=True)
    SF.boundary_loss(logits, target, maps, include_background=True).backward()
    expected = torch.softmax(logits.detach(), 1) / (2 * 5 * 6 * 3)
    torch.testing.assert_close(maps.grad, expected)


@pytest.mark.parametrize(
    "damage, message",
    [("nan", "1 NaN"), ("posinf", r"1 \+inf"), ("dead", "1 pixels with every logit -inf")],
)
def test_confusion_matrix_rejects_logits_that_name_no_class(damage, message):
    logits = torch.randn(2, 3, 4, 4)
    if damage == "nan":
        logits[0, 1, 2, 3] = float("nan")  # argmax made it class 0, silently
    elif damage == "posinf":
        logits[0, 1, 2, 3] = float("inf")
    else:
        logits[1, :, 0, 0] = -float("inf")
    metric = ConfusionMatrix(3)
    with pytest.raises(sl.SegLossError, match=f"expected finite logits, got {message}"):
        metric.update(logits, torch.zeros(2, 4, 4, dtype=torch.long))
    assert int(metric.matrix.sum()) == 0


def test_confusion_matrix_takes_a_minus_inf_logit():
    logits = torch.randn(2, 3, 4, 4)
    logits[:, 0] = -float("inf")  # probability 0 for class 0: legal
    metric = ConfusionMatrix(3)
    metric.update(logits, torch.zeros(2, 4, 4, dtype=torch.long))
    assert int(metric.matrix[:, 0].sum()) == 0 and int(metric.matrix.sum()) == 32


@pytest.mark.parametrize("spacing", [1e-30, 1e-20, 1e20, 1e30])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_distances_at_extreme_spacings(spacing, backend):
    """Squared distances used to underflow to 0 (tiny spacing) or overflow to inf (huge): both wrong."""
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    expected = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]) * spacing
    distance = distance_transform(mask, spacing, backend=backend)
    torch.testing.assert_close(distance, expected, atol=0, rtol=1e-6)
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[0, 2:5, 2:5] = 1
    distance = hausdorff_distance(torch.roll(label, 2, dims=-1), label, spacing=spacing)
    torch.testing.assert_close(distance[0, 1], torch.tensor(2.0 * spacing), atol=0, rtol=1e-6)


def test_spacing_beyond_float32_distances_raises():
    for spacing in (1e38, 1e200):
        with pytest.raises(sl.SegLossError, match="spacing"):
            distance_transform(torch.tensor([[0, 1, 1]]), spacing)
        with pytest.raises(sl.SegLossError, match="spacing"):
            hausdorff_distance(torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long),
                               spacing=spacing)  # fmt: skip


# --- 2. torch.compile with dynamic shapes -------------------------------------------------------------


def _inputs(domain: str, shape):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g)
    if domain == "softmax":
        return logits, torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return logits, torch.randint(0, 2, shape, generator=g).float()


SIZES = [(2, 3, 8, 8), (2, 3, 12, 10)]


def test_dynamic_compile_of_a_function_and_a_module():
    """Option checks on symbolic floats (SymFloat) used to call math.isfinite, which dynamo cannot trace."""
    function = torch.compile(
        lambda z, t: SF.focal_loss(z, t, gamma=2.0), fullgraph=True, dynamic=True, backend="aot_eager"
    )
    torch._dynamo.reset()
    module = torch.compile(sl.FocalLoss(gamma=2.0), fullgraph=True, dynamic=True, backend="eager")
    for shape in SIZES:
        logits, target = _inputs("softmax", shape)
        logits.requires_grad_()
        eager = SF.focal_loss(logits, target, gamma=2.0)
        (eager_grad,) = torch.autograd.grad(eager, logits)
        compiled = function(logits, target)
        (compiled_grad,) = torch.autograd.grad(compiled, logits)
        torch.testing.assert_close(compiled, eager)
        torch.testing.assert_close(compiled_grad, eager_grad)
        torch.testing.assert_close(module(logits, target), eager)


COMPILED = [e for e in sl.list_losses(details=True) if e.domain != "embedding"]  # embeddings: elsewhere


@pytest.mark.slow
@pytest.mark.parametrize("entry", COMPILED, ids=[e.name for e in COMPILED])
def test_every_loss_compiles_with_dynamic_shapes(entry):
    torch._dynamo.reset()  # every LossModule shares one forward: a clean cache per loss
    loss, twin = sl.create_loss(entry.spec), sl.create_loss(entry.spec)  # twin: eager, same state updates
    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend="eager")
    for shape in SIZES:
        logits, target = _inputs(entry.domain, shape)
        torch.testing.assert_close(compiled(logits, target), twin(logits, target))


# --- 3. crashes that must be SegLossError (or a defined answer) ---------------------------------------


@pytest.mark.parametrize("transform", [distance_transform, two_sided_distance, signed_distance_map])
@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize(
    "shape, spatial_dims", [((2, 0, 4), None), ((2, 4, 0), None), ((2, 3, 0), 1), ((2, 3, 0, 4), 2),
                            ((0, 3, 4), None), ((2, 0, 3, 4), 3)],
)  # fmt: skip
def test_distances_of_an_empty_mask_are_empty(transform, backend, shape, spatial_dims):
    result = transform(torch.ones(shape), spatial_dims=spatial_dims, backend=backend)
    assert result.shape == shape and result.dtype == torch.float32


def test_a_long_spec_parses_without_recursion():
    loss = sl.create_loss(" + ".join(["ce"] * 1000))
    assert isinstance(loss, sl.CompoundLoss) and len(loss.weights) == 1000
    long = " - ".join(["0.5*dice"] * 20_000)
    terms = parse_spec(long)
    assert len(terms) == 20_000 and terms[1][0] == -0.5

    def deep(levels: int):  # parse near the recursion limit: Python's own parser gives up there
        return parse_spec(" + ".join(["ce"] * 3000)) if levels == 0 else deep(levels - 1)

    assert len(deep(sys.getrecursionlimit() - 200)) == 3000


@pytest.mark.parametrize(
    "spec",
    ["1*" * 5000 + "ce", "-" * 5000 + "ce", "ce(weight=" + "[" * 60 + "1" + "]" * 60 + ")",
     "(" + "1 + " * 3000 + "linear(steps=2))*ce"],
    ids=["products", "signs", "option", "schedule"],
)  # fmt: skip
def test_a_deep_spec_raises_with_its_limit(spec):
    with pytest.raises(sl.SegLossError, match=f"nested at most {MAX_NESTING} levels deep"):
        sl.create_loss(spec)


def test_a_deep_schedule_string_raises():
    with pytest.raises(sl.SegLossError, match=f"at most {MAX_NESTING}"):
        as_schedule("1 + " * 3000 + "linear(steps=2)")


HUGE_CASES = {  # id: (call, what the message names, whether the number is written into a spec string)
    "module": (lambda v: sl.FocalLoss(gamma=v), "gamma", False),
    "function": (lambda v: SF.focal_loss(*make_inputs("softmax"), alpha=v), "alpha", False),
    "spec-option": (lambda v: sl.create_loss(f"focal(gamma={v})"), "gamma", True),
    "spec-weight": (lambda v: sl.create_loss(f"{v}*ce"), "weight", True),
    "spec-schedule": (lambda v: sl.create_loss(f"({v} - linear(steps=3))*ce"), "number", True),
    "set_step": (lambda v: sl.create_loss("linear(steps=3)*ce + dice").set_step(v), "step", False),
    "schedule-step": (lambda v: Schedule("linear", start=1.0, end=0.0, steps=10)(v), "step", False),
    "schedule-option": (lambda v: Schedule("linear", start=v, end=0.0, steps=10), "start", False),
    "as_schedule": (lambda v: as_schedule(v), "schedule", False),
    "schedule-arithmetic": (lambda v: 0.5 * Schedule("linear", steps=10) + v, "combined", False),
    "metric-size": (lambda v: ConfusionMatrix(v), "num_classes", False),
    "spacing": (lambda v: distance_transform(torch.ones(1, 3), v), "spacing", False),
    "ignore_index": (lambda v: sl.DiceLoss(ignore_index=v), "ignore_index", False),
    "target_distance_maps": (
        lambda v: sl.target_distance_maps(torch.zeros(1, 4, dtype=torch.long), v),
        "num_classes",
        False,
    ),  # fmt: skip
    "spatial_dims": (lambda v: distance_transform(torch.ones(2, 3), spatial_dims=v), "spatial dims", False),
}


@pytest.mark.parametrize(
    "case, number",
    [pytest.param(case, number, id=f"{case}-{label}") for case, (_, _, spec) in HUGE_CASES.items()
     for label, number in (("1e400", HUGE), ("-1e400", -HUGE), ("1e5000", HUGER))
     if not (spec and number is HUGER)],  # a 5,000-digit literal is a syntax error (tested below)
)  # fmt: skip
def test_huge_integers_raise_naming_the_option(case, number):
    call, option, _ = HUGE_CASES[case]
    with pytest.raises(sl.SegLossError, match=option) as raised:
        call(number)
    assert "integer of about" in str(raised.value)  # its size, not its 400 or 5,000 digits


def test_a_literal_beyond_pythons_digit_limit_is_a_syntax_error():
    with pytest.raises(sl.SegLossError, match="invalid loss spec syntax"):
        sl.create_loss("1" + "0" * 5000 + "*ce")


def test_a_huge_band_ratio_is_the_widest_band():
    logits, target = make_inputs("softmax", (2, 3, 8, 8))
    widest = SF.boundary_iou_loss(logits, target, dilation_ratio=1.0)
    for ratio in (1e20, 1e308):  # round(inf) raised OverflowError; 1e20 a padding overflow
        torch.testing.assert_close(SF.boundary_iou_loss(logits, target, dilation_ratio=ratio), widest)
        labels = target.roll(1, -1)
        metric = boundary_iou(labels, target, dilation_ratio=ratio)
        torch.testing.assert_close(metric, boundary_iou(labels, target, dilation_ratio=1.0))


# --- 4. misparsed or unclear --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, position",
    [("focal(gamma=1, gamma=5)", 15), ("ce + dice(smooth=1, batch=True, smooth=2)", 32),
     ("linear(start=1, start=0.5, steps=3)*ce", 0),
     ("ce(weight=[1, 2, 3], weight_schedule=linear(steps=2, steps=3))", 37)],
)  # fmt: skip
def test_a_repeated_option_raises(spec, position):
    with pytest.raises(sl.SegLossError, match=f"once.*again at position {position}"):
        sl.create_loss(spec)


def test_a_repeated_schedule_option_raises():
    with pytest.raises(sl.SegLossError, match="'steps' again"):
        as_schedule("linear(steps=2, steps=3)")


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("exists", [True, False])
def test_cli_error_names_a_path_with_a_newline_on_one_line(tmp_path, capsys, exists):
    folder = tmp_path / "x\ny"
    if exists:
        folder.mkdir()  # an empty folder: no images
    code, err = _cli(["weights", f"folder:{folder}"], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(folder).replace("\n", "\\n") in err


def test_cli_spec_error_is_one_line_without_its_caret(capsys):
    code, err = _cli(["plot", "focal(gamma=1, gamma=5)"], capsys)
    assert code == 2 and err.count("\n") == 1 and "'gamma' again at position 15" in err
    with pytest.raises(sl.SegLossError) as raised:  # the API keeps the caret under the position
        sl.create_loss("focal(gamma=1, gamma=5)")
    assert str(raised.value).endswith("\n  focal(gamma=1, gamma=5)\n                 ^")


# --- 5. hints for option names from MONAI / segmentation_models_pytorch ------------------------------


HINTS = [
    ("to_onehot_y", r"class-index targets .* drop to_onehot_y"),
    ("softmax", r"activation by the loss name \('dice' takes a softmax .* 'binary_dice' a sigmoid"),
    ("sigmoid", r"'binary_dice' a sigmoid per channel\), both from logits: drop sigmoid"),
    ("mode", r"'multiclass' is the plain name"),
    ("from_logits", r"always takes logits"),
    ("squared_pred", r"not their squares .* drop squared_pred"),
    ("smooth_nr", r"use smooth=.*; did you mean 'smooth'\?"),
    ("smooth_dr", r"use smooth=.*; did you mean 'smooth'\?"),
]


@pytest.mark.parametrize("name, message", HINTS, ids=[h[0] for h in HINTS])
@pytest.mark.parametrize(
    "build",
    [lambda o: sl.DiceLoss(**{o: True}), lambda o: sl.BinaryDiceLoss(**{o: True}),
     lambda o: sl.create_loss(f"dice({o}=True)"),
     lambda o: sl.create_loss(f"binary_dice + binary_dice({o}=1)")],
    ids=["module", "binary-module", "spec", "compound-spec"],
)  # fmt: skip
def test_foreign_option_names_get_the_seglosses_way(build, name, message):
    with pytest.raises(sl.SegLossError, match=message):
        build(name)


@pytest.mark.parametrize(
    "build, message",
    [(lambda: sl.FocalLoss(use_softmax=False), r"'focal' takes a softmax .* 'binary_focal' a sigmoid"),
     (lambda: sl.create_loss("bce(sigmoid=True)"), r"'ce' takes a softmax .* 'bce' a sigmoid"),
     (lambda: sl.AdaptiveFocalLoss(softmax=True), r"e\.g\. 'dice' takes a softmax"),
     (lambda: sl.create_loss("adaptive_focal(to_onehot_y=True)"), r"class-index targets"),
     (lambda: sl.create_loss("ce(include_background=False)"), r"dice, jaccard, boundary, \.\.\.\) take "
                                                                r"include_background"),
     (lambda: sl.CrossEntropyLoss(from_logits=True), r"always takes logits")],
)  # fmt: skip
def test_foreign_option_hints_name_the_loss_at_hand(build, message):
    with pytest.raises(sl.SegLossError, match=message):
        build()


def test_unknown_options_keep_did_you_mean_and_no_foreign_hint():
    with pytest.raises(sl.SegLossError, match=r"got 'smoth'; did you mean 'smooth'\?$"):
        sl.DiceLoss(smoth=1.0)
    with pytest.raises(sl.SegLossError, match=r"got 'smoth'; did you mean 'smooth'\?"):
        sl.create_loss("dice(smoth=1)")
    assert sl.DiceLoss(include_background=False) is not None  # a real option stays one
    assert math.isfinite(sl.create_loss("dice(smooth=1)")(*make_inputs("softmax")).item())


@pytest.mark.parametrize("num_classes", [HUGE, 2.5, True, 0, -1], ids=["1e400", "2.5", "True", "0", "-1"])
@pytest.mark.parametrize("metric", [boundary_iou, hausdorff_distance, sl.metrics.mask_iou])
def test_metric_functions_check_num_classes(metric, num_classes):
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(sl.SegLossError, match="num_classes"):  # an OverflowError, a TypeError or a result
        metric(labels, labels, num_classes=num_classes)
