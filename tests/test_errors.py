"""Every invalid input raises SegLossError (a ValueError) saying what was expected and what came."""

from __future__ import annotations

import pytest
import torch
from helpers import IGNORE, make_inputs

import seglosses as sl
import seglosses.functional as SF

SOFTMAX = [SF.cross_entropy_loss, SF.focal_loss, SF.dice_loss, SF.jaccard_loss, SF.tversky_loss,
           SF.focal_tversky_loss, SF.generalized_dice_loss]  # fmt: skip
BINARY = [SF.binary_cross_entropy_loss, SF.binary_focal_loss, SF.binary_dice_loss, SF.binary_jaccard_loss,
          SF.binary_tversky_loss, SF.binary_focal_tversky_loss, SF.binary_generalized_dice_loss]  # fmt: skip


def test_is_a_value_error():
    assert issubclass(sl.SegLossError, ValueError)


@pytest.mark.parametrize("function", SOFTMAX)
class TestSoftmaxInputs:
    def test_target_shape_mismatch(self, function):
        logits, target = make_inputs("softmax", (2, 3, 4, 4))
        with pytest.raises(
            sl.SegLossError,
            match=r"expected target of shape \(N, \*S\) = \(2, 4, 4\).*got shape \(2, 1, 4, 4\)",
        ):
            function(logits, target[:, None])

    def test_target_value_out_of_range(self, function):
        logits, target = make_inputs("softmax", (2, 3, 4, 4))
        target[0, 0, 0] = 3
        with pytest.raises(sl.SegLossError, match=r"in \[0, 3\).*got values \[3\]"):
            function(logits, target)
        target[0, 0, 0] = -1
        with pytest.raises(sl.SegLossError, match=r"got values \[-1\]"):
            function(logits, target, ignore_index=IGNORE)

    def test_ignore_index_outside_range_is_fine(self, function):
        logits, target = make_inputs("softmax", (2, 3, 4, 4), ignore_fraction=0.3)
        assert torch.isfinite(function(logits, target, ignore_index=IGNORE))
        with pytest.raises(sl.SegLossError, match="255"):
            function(logits, target)

    def test_float_index_target(self, function):
        logits, target = make_inputs("softmax", (2, 3, 4, 4))
        with pytest.raises(sl.SegLossError, match="integer index target.*float"):
            function(logits, target.float())

    def test_soft_target_outside_unit_interval(self, function):
        logits, _ = make_inputs("softmax", (2, 3, 4, 4))
        soft = torch.rand(2, 3, 4, 4, dtype=torch.float64)
        soft[0, 0, 0, 0] = 1.5
        with pytest.raises(sl.SegLossError, match=r"values in \[0, 1\]"):
            function(logits, soft)

    def test_single_class(self, function):
        logits, target = make_inputs("softmax", (2, 1, 4, 4))
        with pytest.raises(sl.SegLossError, match="at least 2 classes.*binary"):
            function(logits, target.zero_())

    def test_empty(self, function):
        """An empty spatial dim is an error; an empty batch (N = 0, an empty shard) is valid and gives 0."""
        with pytest.raises(sl.SegLossError, match="non-empty class and spatial dims"):
            function(torch.zeros(2, 3, 0, 4), torch.zeros(2, 0, 4, dtype=torch.long))
        assert function(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)).item() == 0

    def test_non_finite_logits(self, function):
        logits, target = make_inputs("softmax", (2, 3, 4, 4))
        logits = logits.detach().clone()
        logits[0, 0, :3, 0] = float("nan")
        logits[1, 1, 0, 0] = float("inf")
        with pytest.raises(sl.SegLossError, match=r"expected finite logits, got 3 NaN and 1 \+inf"):
            function(logits, target)

    def test_non_finite_logits_with_checks_off_give_non_finite_loss(self, function):
        logits, target = make_inputs("softmax", (2, 3, 4, 4))
        logits = logits.detach().clone()
        logits[0, 0, 1, 1] = float("nan")
        with sl.input_checks(False):
            assert not torch.isfinite(function(logits, target))

    def test_minus_inf_logit_is_legal(self, function):
        logits, target = make_inputs("softmax", (2, 3, 4, 4))
        logits = logits.detach().clone()
        logits[:, 2] = -float("inf")
        target = target.clamp_max(1)
        assert torch.isfinite(function(logits, target))

    def test_bad_logits(self, function):
        with pytest.raises(sl.SegLossError, match="1 to 3 spatial dims"):
            function(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
        with pytest.raises(sl.SegLossError, match="floating-point logits"):
            function(torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
        with pytest.raises(sl.SegLossError, match="torch.Tensor"):
            function(torch.zeros(2, 3, 4), [[0, 1, 2, 0]] * 2)

    def test_unknown_reduction_lists_valid_ones(self, function):
        logits, target = make_inputs("softmax")
        with pytest.raises(sl.SegLossError, match="'none', 'mean', 'sum'.*did you mean 'mean'"):
            function(logits, target, reduction="meen")


@pytest.mark.parametrize("function", BINARY)
class TestBinaryInputs:
    def test_shape_mismatch_suggests_channel(self, function):
        logits, target = make_inputs("binary", (2, 1, 4, 4))
        with pytest.raises(sl.SegLossError, match=r"unsqueeze\(1\)"):
            function(logits, target[:, 0])

    def test_values_outside_unit_interval(self, function):
        logits, target = make_inputs("binary", (2, 1, 4, 4))
        target[0, 0, 0, 0] = 2
        with pytest.raises(sl.SegLossError, match=r"binary target values in \[0, 1\].*got values \[2\]"):
            function(logits, target)

    def test_ignore_index_on_integer_targets(self, function):
        logits, target = make_inputs("binary", (2, 1, 4, 4), ignore_fraction=0.3)
        assert torch.isfinite(function(logits, target, ignore_index=IGNORE))


@pytest.mark.parametrize(
    "function, options, message",
    [
        (SF.cross_entropy_loss, {"weight": [1.0, 2.0]}, r"weight of length C = 3, got length 2"),
        (SF.cross_entropy_loss, {"weight": [1.0, -2.0, 1.0]}, r"weight values finite and in \[0, inf\]"),
        (SF.cross_entropy_loss, {"weight": 2.0}, r"weight to have one value per class"),
        (SF.cross_entropy_loss, {"label_smoothing": 1.0}, r"label_smoothing in \[0, 1\), got 1"),
        (SF.cross_entropy_loss, {"label_smoothing": -0.1}, r"label_smoothing in \[0, 1\)"),
        (SF.focal_loss, {"gamma": -1.0}, r"gamma in \[0, inf\], got -1"),
        (SF.focal_loss, {"gamma": "2"}, r"gamma to be a finite real number"),
        (SF.focal_loss, {"alpha": [0.5, 0.5]}, r"alpha of length C = 3"),
        (SF.focal_loss, {"alpha": [[0.5]]}, r"alpha as one value per class"),
        (SF.dice_loss, {"smooth": -1.0}, r"smooth in \[0, inf\]"),
        (SF.dice_loss, {"batch": 1}, r"batch to be True or False"),
        (SF.dice_loss, {"weight": [1.0, 1.0]}, r"weight of length C = 3"),
        (SF.tversky_loss, {"alpha": -0.1}, r"alpha in \[0, inf\]"),
        (SF.focal_tversky_loss, {"gamma": [1.0, 2.0]}, r"gamma of length C = 3"),
        (SF.focal_tversky_loss, {"gamma": -1.0}, r"gamma values finite and in \(0, inf\]"),
        (SF.dice_loss, {"ignore_index": "255"}, r"ignore_index to be an int or None"),
    ],
)
def test_bad_options(function, options, message):
    logits, target = make_inputs("softmax")
    with pytest.raises(sl.SegLossError, match=message):
        function(logits, target, **options)


def test_binary_focal_alpha_must_be_a_probability():
    logits, target = make_inputs("binary")
    with pytest.raises(sl.SegLossError, match=r"alpha values finite and in \[0, 1\]"):
        SF.binary_focal_loss(logits, target, alpha=1.5)


def test_modules_fail_at_construction():
    with pytest.raises(sl.SegLossError, match="gamma"):
        sl.FocalLoss(gamma=-2)
    with pytest.raises(sl.SegLossError, match="did you mean 'label_smoothing'"):
        sl.CrossEntropyLoss(label_smothing=0.1)


def test_set_input_checks_validates():
    with pytest.raises(sl.SegLossError):
        sl.set_input_checks("no")


@pytest.mark.parametrize(
    "function, options, message",
    [
        (SF.focal_loss, {"gamma": float("inf")}, r"gamma to be a finite real number"),
        (SF.dice_loss, {"smooth": float("inf")}, r"smooth to be a finite real number"),
        (SF.tversky_loss, {"alpha": 0.0, "beta": 0.0}, r"alpha \+ beta > 0"),
        (SF.focal_tversky_loss, {"gamma": 0.0}, r"gamma values finite and in \(0"),
        (SF.cross_entropy_loss, {"ignore_index": 2**70}, r"ignore_index within the int64 range"),
        (SF.cross_entropy_loss, {"weight": [1.0, float("nan"), 1.0]}, r"weight values finite"),
    ],
)
def test_non_finite_and_degenerate_options(function, options, message):
    logits, target = make_inputs("softmax")
    with pytest.raises(sl.SegLossError, match=message):
        function(logits, target, **options)


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    logits, target = make_inputs("softmax")
    expected = SF.focal_loss(logits, target, gamma=2.0, ignore_index=7)
    torch.testing.assert_close(
        SF.focal_loss(logits, target, gamma=np.float32(2), ignore_index=np.int64(7)), expected
    )


@pytest.mark.parametrize("dtype, ignore_index, outside", [(torch.int8, 255, -1), (torch.uint8, -1, 255)])
def test_ignore_index_the_target_dtype_cannot_hold(dtype, ignore_index, outside):
    """255 in an int8 target would wrap to -1 (and -1 to 255 in uint8): such labels are out of range."""
    logits, target = make_inputs("softmax", (2, 3, 4, 4))
    target = target.to(dtype)
    target[0, 0, 0] = outside
    for function in SOFTMAX:
        with pytest.raises(sl.SegLossError, match=rf"got values \[{outside}\]"):
            function(logits, target, ignore_index=ignore_index)


@pytest.mark.parametrize("function", BINARY)
def test_binary_minus_inf_logit_is_legal(function):
    """-inf (probability 0) with target 0 gives a finite loss and finite gradients."""
    logits, target = make_inputs("binary", (2, 1, 4, 4))
    logits = logits.detach().clone()
    logits[target == 0] = -float("inf")
    logits.requires_grad_()
    loss = function(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("function", BINARY)
def test_binary_non_finite_logits_with_checks_off_give_non_finite_loss(function):
    logits, target = make_inputs("binary", (2, 1, 4, 4))
    for bad in (float("nan"), float("inf")):
        corrupted = logits.detach().clone()
        corrupted[0, 0, 1, 1] = bad
        with sl.input_checks(False):
            assert not torch.isfinite(function(corrupted, target))


@pytest.mark.parametrize("function", BINARY)
def test_binary_nan_target_is_rejected(function):
    logits, _ = make_inputs("binary", (2, 1, 4, 4))
    target = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    target[0, 0, 0, 0] = float("nan")
    with pytest.raises(sl.SegLossError, match=r"binary target values in \[0, 1\]"):
        function(logits, target)
