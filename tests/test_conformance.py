"""The conformance suite every registered loss passes (DESIGN.md, Tests).

:class:`LossConformance` holds the checks; a subclass picks the registry entries it runs over (the
``entries`` attribute, parametrised by ``conftest.pytest_generate_tests``) and may override the input
factory and the exemptions, so that later loss families (boundary, embedding) reuse it.

Stateful losses (a ``stateful`` class attribute: statistics in buffers, updated by each training-mode
forward) pass the same checks: "module equals function" compares with ``function(..., **module.options)``
(the options under the state the forward just updated); checks that call one module repeatedly (gradcheck)
run it in ``eval()`` after one training step; the others use a fresh module per call. Losses whose weight
is detached by default (``detach`` option) are gradchecked with ``detach=False`` (SPEC §2).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Tuple

import pytest
import torch
from helpers import ENTRIES, IGNORE, make_inputs, perfect_logits
from torch import Tensor

import seglosses as sl

SHAPES = [(2, 3, 7), (2, 3, 5, 6), (1, 3, 3, 4, 5)]
# SPEC section 4: the surface loss is negative at a perfect prediction, the active contour keeps its length
PERFECT_NOT_ZERO = {"boundary", "binary_boundary", "active_contour", "binary_active_contour"}
PERFECT_NOT_ZERO |= {"adaptive_smoothing_ce"}  # label smoothing: a perfect prediction still costs ε
PERFECT_NOT_ZERO |= {"region_wise", "binary_region_wise"}  # -D / max D inside the class: negative there


def drops_background(entry) -> bool:
    """A softmax region loss whose default leaves class 0 out (``include_background=False``, as the
    paper of ``skeleton_recall``): its ``none`` has ``C - 1`` classes."""
    parameter = inspect.signature(entry.module).parameters.get("include_background")
    return entry.domain == "softmax" and parameter is not None and parameter.default is False


def is_stateful(entry) -> bool:
    return bool(getattr(entry.module, "stateful", False))


def gradcheck_options(entry) -> Dict[str, Any]:
    """``detach=False`` for a loss whose weight is detached by default: gradcheck needs the full gradient."""
    return {"detach": False} if "detach" in inspect.signature(entry.module).parameters else {}


def for_gradcheck(entry, logits: Tensor, target: Tensor, **options):
    """A module to call many times on the same input: a stateful one after one training step, in eval()."""
    loss = entry.module(**gradcheck_options(entry), **options)
    if is_stateful(entry):
        loss(logits.detach(), target)
        loss.eval()
    return loss


def takes_weight_maps(entry) -> bool:
    """Whether the loss takes ``weight_map=`` and ``mask=`` (issue 19, item 9)."""
    return "weight_map" in getattr(entry.module, "term_inputs", {})


def skip_unless_weighted(entry) -> None:
    if not takes_weight_maps(entry):
        pytest.skip(f"{entry.name} takes no weight_map / mask")


def spatial_shape(logits: Tensor) -> Tuple[int, ...]:
    """``(N, *S)``: the shape of a weight map or mask for ``logits`` ``(N, C, *S)``."""
    return (logits.shape[0], *logits.shape[2:])


class LossConformance:
    """Checks every registered loss passes; see the module docstring."""

    entries = ENTRIES
    perfect_is_zero = True

    def inputs(self, entry, shape=(2, 3, 5, 6), **options) -> Tuple[Tensor, Tensor]:
        """Logits and a target for ``entry`` (override for other input kinds)."""
        return make_inputs(entry.domain, shape, **options)

    @staticmethod
    def expected_none_shape(entry, logits: torch.Tensor, batch: bool = False):
        n, c, *spatial = logits.shape
        if entry.kind == "region":
            c -= drops_background(entry)
            return (c,) if batch else (n, c)
        if entry.kind == "class":  # one loss per class over the batch (per image: (N, C))
            return (c,)
        return (n, c, *spatial) if entry.domain == "binary" else (n, *spatial)

    @pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d", "3d"])
    def test_output_shape_per_reduction(self, entry, shape):
        """none gives the family's documented shape; mean and sum give scalars; 1-D to 3-D all work."""
        logits, target = self.inputs(entry, shape)
        none = entry.module(reduction="none")(logits, target)
        assert none.shape == self.expected_none_shape(entry, logits)
        for reduction in ("mean", "sum"):
            assert entry.module(reduction=reduction)(logits, target).shape == ()
        if entry.kind == "region":
            pooled = entry.module(reduction="none", batch=True)(logits, target)
            assert pooled.shape == self.expected_none_shape(entry, logits, batch=True)

    def test_mean_and_sum_agree_with_none(self, entry):
        """sum is the sum of the unreduced loss; without weights, region mean is its plain mean."""
        logits, target = self.inputs(entry)
        none = entry.module(reduction="none")(logits, target)
        total = entry.module(reduction="sum")(logits, target)
        torch.testing.assert_close(total, none.sum())
        if entry.kind == "region":
            torch.testing.assert_close(entry.module()(logits, target), none.mean())

    def test_module_equals_function(self, entry):
        logits, target = self.inputs(entry)
        module = entry.module(ignore_index=IGNORE)
        value = module(logits, target)
        if is_stateful(entry):  # the function under the state this forward updated
            expected = entry.module.function(logits, target, **module.options)
        else:
            expected = entry.module.function(logits, target, ignore_index=IGNORE)
            again = entry.module.function(logits, target, **module.options)  # the checked options re-fed
            torch.testing.assert_close(value, again)
            assert repr(entry.module(**module.options)) == repr(module)
        torch.testing.assert_close(value, expected)

    @pytest.mark.parametrize("ignore_fraction", [0.0, 0.3])
    def test_gradcheck_float64(self, entry, ignore_fraction):
        logits, target = self.inputs(entry, (2, 3, 3, 4), ignore_fraction=ignore_fraction, scale=1.0)
        loss = for_gradcheck(entry, logits, target, ignore_index=IGNORE)
        assert torch.autograd.gradcheck(lambda z: loss(z, target), (logits,), eps=1e-6, atol=1e-5)

    def test_gradcheck_batch_pooled(self, entry):
        if entry.kind != "region":
            pytest.skip("batch pooling is a region-loss option")
        logits, target = self.inputs(entry, (2, 3, 3, 4), scale=1.0)
        loss = for_gradcheck(entry, logits, target, batch=True)
        assert torch.autograd.gradcheck(lambda z: loss(z, target), (logits,), eps=1e-6, atol=1e-5)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_finite_at_extreme_logits(self, entry, dtype):
        """±100 logits, right and wrong: finite loss and finite gradients."""
        logits, target = self.inputs(entry, dtype=dtype)
        extreme = (torch.sign(logits.detach()) * 100).requires_grad_()
        loss = entry.module()(extreme, target)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(extreme.grad).all()

    def test_perfect_prediction_gives_zero(self, entry):
        if not self.perfect_is_zero or entry.name in PERFECT_NOT_ZERO:
            pytest.skip("this family is exempt from 'perfect gives 0' (SPEC)")
        _, target = self.inputs(entry)
        logits = perfect_logits(entry.domain, target, 3).requires_grad_()
        loss = entry.module()(logits, target)
        torch.testing.assert_close(loss, torch.zeros((), dtype=loss.dtype), atol=1e-6, rtol=0)

    def test_all_ignored_gives_zero_with_gradient(self, entry):
        logits, target = self.inputs(entry)
        target = torch.full_like(target, IGNORE)
        for reduction in ("mean", "sum"):
            loss = entry.module(ignore_index=IGNORE, reduction=reduction)(logits, target)
            assert loss.item() == 0.0
            assert loss.requires_grad
            (grad,) = torch.autograd.grad(loss, logits)
            assert torch.count_nonzero(grad) == 0

    def test_empty_batch_gives_zero_with_gradient(self, entry):
        """N = 0 (an empty shard of a distributed batch) is valid input: 0 on the graph, never NaN."""
        logits, target = self.inputs(entry)
        logits, target = logits[:0], target[:0]
        loss = entry.module()(logits, target)
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad.shape == logits.shape

    def test_ignored_pixels_change_nothing(self, entry):
        """Logits at ignored pixels affect neither the loss (nor a stateful loss's state) nor receive
        gradient."""
        logits, target = self.inputs(entry, ignore_fraction=0.4)
        first, second = entry.module(ignore_index=IGNORE), entry.module(ignore_index=IGNORE)
        ignored = target == IGNORE
        if entry.domain == "softmax":
            ignored = ignored.unsqueeze(1).expand_as(logits)
        other = logits.detach().clone()
        other[ignored] = torch.randn(int(ignored.sum()), dtype=other.dtype) * 50
        torch.testing.assert_close(first(logits, target), second(other, target))
        for name, state in first.state_dict().items():
            torch.testing.assert_close(state, second.state_dict()[name])
        (grad,) = torch.autograd.grad(entry.module(ignore_index=IGNORE)(logits, target), logits)
        assert torch.count_nonzero(grad[ignored]) == 0

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_close_to_float32(self, entry, dtype):
        """Half inputs compute in float32 internally: within the inputs' rounding of the float32 loss,
        with a gradient of the input's dtype."""
        logits, target = self.inputs(entry, (2, 3, 16, 16), dtype=torch.float32)
        half_logits = logits.detach().to(dtype).requires_grad_()
        half = entry.module()(half_logits, target)
        single = entry.module()(logits, target)
        (grad,) = torch.autograd.grad(half, half_logits)
        assert torch.isfinite(half) and grad.dtype == dtype and torch.isfinite(grad).all()
        tolerance = 2e-3 if dtype == torch.float16 else 1.5e-2  # 11 vs 8 mantissa bits
        torch.testing.assert_close(half.float(), single.detach(), atol=tolerance, rtol=tolerance)

    def test_weight_maps_of_ones_change_nothing(self, entry):
        """``weight_map`` of ones and a ``mask`` of every pixel give the loss without them (issue 19)."""
        skip_unless_weighted(entry)
        logits, target = self.inputs(entry)
        ones = torch.ones(spatial_shape(logits), dtype=logits.dtype)
        for reduction in ("mean", "none"):
            plain = entry.module(reduction=reduction)(logits, target)
            weighted = entry.module(reduction=reduction)(logits, target, weight_map=ones)
            masked = entry.module(reduction=reduction)(logits, target, mask=ones.bool())
            torch.testing.assert_close(weighted, plain)
            torch.testing.assert_close(masked, plain)

    def test_mask_is_ignore_index(self, entry):
        """``mask`` False at a pixel is that pixel set to ``ignore_index``: value and gradient."""
        skip_unless_weighted(entry)
        logits, target = self.inputs(entry)
        mask = torch.rand(spatial_shape(logits), generator=torch.Generator().manual_seed(7)) > 0.3
        ignored = target.masked_fill(~(mask if entry.domain == "softmax" else mask.unsqueeze(1)), IGNORE)
        for reduction in ("mean", "none"):
            masked = entry.module(ignore_index=IGNORE, reduction=reduction)(logits, target, mask=mask)
            expected = entry.module(ignore_index=IGNORE, reduction=reduction)(logits, ignored)
            torch.testing.assert_close(masked, expected)
        (masked_grad,) = torch.autograd.grad(masked.sum(), logits)
        (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
        torch.testing.assert_close(masked_grad, expected_grad)

    def test_weighted_gradcheck(self, entry):
        skip_unless_weighted(entry)
        logits, target = self.inputs(entry, (2, 3, 3, 4), scale=1.0)
        g = torch.Generator().manual_seed(8)
        weights = torch.rand(spatial_shape(logits), generator=g, dtype=torch.float64) + 0.1
        mask = torch.rand(spatial_shape(logits), generator=g) > 0.25
        loss = for_gradcheck(entry, logits, target)
        assert torch.autograd.gradcheck(
            lambda z: loss(z, target, weight_map=weights, mask=mask), (logits,), eps=1e-6, atol=1e-5
        )

    def test_bad_option_raises(self, entry):
        with pytest.raises(sl.SegLossError, match="reduction"):
            entry.module(reduction="avg")
        with pytest.raises(sl.SegLossError, match="did you mean"):
            entry.module(ignore_idx=3)
        with pytest.raises(sl.SegLossError, match="ignore_index"):
            entry.module(ignore_index=1.5)

    def test_registry_spec_builds_the_module(self, entry):
        assert isinstance(sl.create_loss(entry.spec), entry.module)

    @pytest.mark.slow
    def test_torch_compile_equals_eager(self, entry):
        logits, target = self.inputs(entry, dtype=torch.float32, ignore_fraction=0.2)
        loss, twin = entry.module(ignore_index=IGNORE), entry.module(ignore_index=IGNORE)
        if is_stateful(entry):  # size the state (an eval forward changes nothing else), then train both
            for module in (loss, twin):
                module.eval()(logits, target)
                module.train()
        torch._dynamo.reset()  # every module shares LossModule.forward: start each from a clean cache
        compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
        eager_value = loss(logits, target)
        (eager_grad,) = torch.autograd.grad(eager_value, logits)
        compiled_value = compiled(logits, target)
        (compiled_grad,) = torch.autograd.grad(compiled_value, logits)
        torch.testing.assert_close(compiled_value, eager_value)
        torch.testing.assert_close(compiled_grad, eager_grad)


class TestRegisteredLosses(LossConformance):
    """The conformance suite over every loss in the registry."""


@pytest.mark.parametrize("name", ["focal", "dice"])
def test_double_backward_is_the_formulas(name):
    """A closed-form backward asked for a graph (create_graph=True) differentiates the formula in plain
    torch: the exact second derivative, never a wrong Hessian (tests/test_reliability_core.py: every loss)."""
    logits, target = make_inputs("softmax")
    loss = sl.create_loss(name)
    small = logits[:1, :, :2, :2].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: loss(z, target[:1, :2, :2]), (small,))


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.domain == "softmax"], ids=lambda e: e.name)
def test_gradcheck_soft_targets(entry):
    """The dense (one-hot / soft) target path, float64."""
    logits, _ = make_inputs("softmax", (2, 3, 3, 4), scale=1.0)
    soft = torch.softmax(torch.randn(2, 3, 3, 4, dtype=torch.float64), 1)
    loss = for_gradcheck(entry, logits, soft)
    assert torch.autograd.gradcheck(lambda z: loss(z, soft), (logits,), eps=1e-6, atol=1e-5)
