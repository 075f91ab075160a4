"""Hausdorff loss by erosion (Karimi & Salcudean 2019) and log(1 + HD-DT): hand-derived values on a line, a
ring and a 3-D tube, and equality with kornia's HausdorffERLoss / HausdorffERLoss3D and MONAI's
LogHausdorffDTLoss (values and gradients, float64)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import IGNORE, check_soft_mask_is_ignore_index, check_weighted_module_function_and_compound

import seglosses as sl
import seglosses.functional as SF
from seglosses.losses.hausdorff_er import (
    HausdorffERLoss,
    LogHausdorffDTLoss,
    binary_hausdorff_er_loss,
    binary_log_hausdorff_dt_loss,
    erosion_sum,
    hausdorff_er_loss,
    log_hausdorff_dt_loss,
)

SATURATED = 100.0  # float64 logits ±100: σ is 1 exactly and 3.7e-44 (squared: 1e-87, nothing)


def saturated(mask: torch.Tensor) -> torch.Tensor:
    """Binary logits (1, 1, *S) predicting ``mask`` exactly (in float64)."""
    return ((mask.double() * 2 - 1) * SATURATED)[None, None].requires_grad_()


def two_class_logits(p1) -> torch.Tensor:
    """Logits (1, 2, *S) whose softmax gives class 1 the probabilities ``p1`` (*S)."""
    p1 = torch.as_tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p1), torch.log(p1 / (1 - p1))])[None].requires_grad_()


# --- hand-derived values -----------------------------------------------------------------------------


def test_erosion_of_a_1d_segment_by_hand():
    """E_0 = [0 1 1 1 0] (a predicted segment, empty target), K = [1 1 1]/3:
    K*E_0 = [1/3 2/3 1 2/3 1/3] -> minus 1/2, clipped: [0 1/6 1/2 1/6 0] -> / max: E_1 = [0 1/3 1 1/3 0];
    K*E_1 = [1/9 4/9 5/9 4/9 1/9] -> [0 0 1/18 0 0] -> E_2 = [0 0 1 0 0]; K*E_2 <= 1/3: E_3 = 0 (constant,
    left as it is). k = 1: mean(E_1) = 1/3; k >= 2 (α = 2): mean(E_1 + 4 E_2) = (5/3 + 4) / 5 = 17/15."""
    predicted = saturated(torch.tensor([0, 1, 1, 1, 0]))
    target = torch.zeros(1, 1, 5, dtype=torch.long)
    assert binary_hausdorff_er_loss(predicted, target, k=1).item() == pytest.approx(1 / 3, rel=1e-6)
    for k in (2, 3, 10):
        assert binary_hausdorff_er_loss(predicted, target, k=k).item() == pytest.approx(17 / 15, rel=1e-6)
    assert binary_hausdorff_er_loss(predicted, target, k=2, alpha=0.0).item() == pytest.approx(
        (5 / 3 + 1) / 5, rel=1e-6
    )


def test_missed_line_2d_by_hand():
    """A missed one-pixel-wide line of length 7 in a 3 × 9 image (row 1, columns 1..7). Cross kernel 1/5:
    an inner line pixel sees itself and 2 line neighbours, 3/5 - 1/2 = 1/10; an end pixel 2/5 and the
    pixels beside the line 1/5 fall under 1/2. After the normalisation the line is 1, 2 pixels shorter:
    |E_j| = 5, 3, 1, then 0 (a single pixel sees 1/5). α = 2: (1·5 + 4·3 + 9·1) / 27 = 26/27."""
    line = torch.zeros(3, 9, dtype=torch.long)
    line[1, 1:8] = 1
    empty = saturated(torch.zeros(3, 9))
    loss = binary_hausdorff_er_loss(empty, line[None, None])
    assert loss.item() == pytest.approx(26 / 27, rel=1e-6)
    # the same line as a softmax target with an empty class-1 prediction: the background channel has the
    # same error map (p_0 = 1 on the line, y_0 = 0), so the class mean is the binary value
    logits = torch.stack([torch.ones(3, 9), -torch.ones(3, 9)])[None].double() * SATURATED
    assert hausdorff_er_loss(logits, line[None]).item() == pytest.approx(26 / 27, rel=1e-6)


def test_missed_ring_never_erodes():
    """A one-pixel-wide square ring (5 × 5 outline, 16 pixels) in a 7 × 7 image: every ring pixel, corners
    too, has exactly 2 ring neighbours, 3/5 - 1/2 = 1/10 everywhere on it, so after the normalisation
    E_j = the ring for every j: the loss is 16 · Σ_{j=1..k} j^α / 49 (k = 10, α = 2: 16 · 385 / 49)."""
    ring = torch.zeros(7, 7, dtype=torch.long)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0
    assert int(ring.sum()) == 16
    loss = binary_hausdorff_er_loss(saturated(torch.zeros(7, 7)), ring[None, None])
    assert loss.item() == pytest.approx(16 * 385 / 49, rel=1e-6)
    three = binary_hausdorff_er_loss(saturated(torch.zeros(7, 7)), ring[None, None], k=3, alpha=1.0)
    assert three.item() == pytest.approx(16 * 6 / 49, rel=1e-6)


def test_missed_3d_tube_by_hand():
    """3-D, kernel 1/7 (a voxel and its 6 face neighbours). A missed one-voxel-wide tube: each voxel sees
    at most 3/7 < 1/2, so E_1 = 0 and the loss is 0 (a thin tube is invisible to this loss, in kornia too).
    A missed 3 × 3 tube of length 5 in a 5 × 5 × 7 volume: every tube voxel sees at least 4/7 (an end-cap
    corner: itself, 2 in-plane neighbours, 1 along the tube), every outside voxel at most 1/7, and the 3
    inner centre voxels 7/7; so E_1 = (K·E_0 - 1/2) / (1 - 1/2) on the tube, 0 elsewhere."""
    thin = torch.zeros(5, 5, 7, dtype=torch.long)
    thin[2, 2, 1:6] = 1
    loss = binary_hausdorff_er_loss(saturated(torch.zeros(5, 5, 7)), thin[None, None])
    assert loss.item() == 0.0
    tube = torch.zeros(5, 5, 7, dtype=torch.long)
    tube[1:4, 1:4, 1:6] = 1
    error = tube.double()[None, None]
    kernel = torch.zeros(1, 1, 3, 3, 3, dtype=torch.float64)
    kernel[0, 0, 1, 1, :] = kernel[0, 0, 1, :, 1] = kernel[0, 0, :, 1, 1] = 1 / 7
    seen = torch.nn.functional.conv3d(error, kernel, padding=1)
    first = (seen - 0.5).clamp_min(0)
    assert torch.equal(first > 0, tube.bool()[None, None])  # every tube voxel sees at least 4/7
    assert seen.max().item() == pytest.approx(1.0) and first.max().item() == pytest.approx(0.5)
    e1 = first / first.max()  # min 0 (outside)
    one_step = binary_hausdorff_er_loss(saturated(torch.zeros(5, 5, 7)), tube[None, None], k=1)
    assert one_step.item() == pytest.approx(e1.mean().item(), rel=1e-6)


def test_perfect_prediction_gives_zero_and_gradient():
    target = torch.randint(0, 3, (2, 9, 8), generator=torch.Generator().manual_seed(0))
    perfect = (torch.nn.functional.one_hot(target, 3).movedim(-1, 1).double() * 2 - 1) * SATURATED
    perfect.requires_grad_()
    loss = hausdorff_er_loss(perfect, target)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, perfect)
    assert torch.isfinite(grad).all()


def test_erosion_sum_weights_and_threshold_derivative():
    """The threshold passes gradient 1 at exactly 1/2 (kornia's masked_fill), 0 below."""
    error = torch.zeros(1, 1, 1, 5, dtype=torch.float64)
    error[..., 1:4] = torch.tensor([0.75, 0.75, 0.75])  # centre: (3 · 0.75) / 5 = 0.45 < 1/2
    error.requires_grad_()
    total = erosion_sum(error, 2.0, 1)
    assert total.abs().sum().item() == 0.0
    (grad,) = torch.autograd.grad(total.sum(), error)
    assert grad.abs().sum().item() == 0.0


# --- kornia ------------------------------------------------------------------------------------------

kornia_losses = pytest.importorskip("kornia.losses", reason="kornia (the [docs] extra) is not installed")


def _blobby(shape, classes, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, shape, generator=g)
    spatial = len(shape) - 1
    pool = (torch.nn.functional.max_pool2d, torch.nn.functional.max_pool3d)[spatial - 2]
    return pool(target.double()[:, None], 3, 1, 1)[:, 0].long(), g  # blobs, so that errors survive erosion


@pytest.mark.parametrize(
    "shape, reference",
    [((2, 12, 11), "HausdorffERLoss"), ((2, 7, 8, 9), "HausdorffERLoss3D")],
    ids=["2d", "3d"],
)
@pytest.mark.parametrize("alpha, k", [(2.0, 10), (1.5, 4)])
def test_equals_kornia_values_and_gradients(shape, reference, alpha, k):
    target, g = _blobby(shape, 3, 1)
    logits = (torch.randn(shape[0], 3, *shape[1:], generator=g, dtype=torch.float64) * 3).requires_grad_()
    kornia_loss = getattr(kornia_losses, reference)
    ours = hausdorff_er_loss(logits, target, alpha=alpha, k=k)
    theirs = kornia_loss(alpha=alpha, k=k)(logits.softmax(1), target[:, None])
    assert ours.item() > 0
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-15)
    # none: kornia (C, N, 1, *S), class axis first; ours its class mean (N, *S); kornia's sum is C · ours
    none = hausdorff_er_loss(logits, target, alpha=alpha, k=k, reduction="none")
    theirs_none = kornia_loss(alpha=alpha, k=k, reduction="none")(logits.softmax(1), target[:, None])
    torch.testing.assert_close(none, theirs_none.mean(0)[:, 0], rtol=1e-12, atol=1e-15)
    total = hausdorff_er_loss(logits, target, alpha=alpha, k=k, reduction="sum")
    theirs_total = kornia_loss(alpha=alpha, k=k, reduction="sum")(logits.softmax(1), target[:, None])
    torch.testing.assert_close(3 * total, theirs_total, rtol=1e-12, atol=0)


def test_binary_equals_kornia_on_the_complement_target():
    """kornia compares its channel i with target == i and refuses a label >= C: for one sigmoid channel it
    gets the two channels [σ(z), 1 - σ(z)] and the target 1 - y, each of whose error maps is (σ(z) - y)²."""
    target, g = _blobby((2, 10, 12), 2, 3)
    logits = (torch.randn(2, 2, 10, 12, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.stack([target, 1 - target], 1)  # two sigmoid channels
    ours = binary_hausdorff_er_loss(logits, y)
    kornia = kornia_losses.HausdorffERLoss()
    theirs = 0
    for c in range(2):
        p = logits[:, c : c + 1].sigmoid()
        theirs = theirs + kornia(torch.cat([p, 1 - p], 1), 1 - y[:, c : c + 1]) / 2
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-15)


def test_float32_equals_kornia():
    target, g = _blobby((2, 16, 16), 3, 5)
    logits = torch.randn(2, 3, 16, 16, generator=g) * 3
    ours = hausdorff_er_loss(logits, target)
    theirs = kornia_losses.HausdorffERLoss()(logits.softmax(1), target[:, None])
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


# --- options, ignore_index, modules ------------------------------------------------------------------


def test_include_background_and_ignore_index():
    """The class mean over 3 classes is (H_0 + 2 · the mean over classes 1 and 2) / 3."""
    target, g = _blobby((2, 10, 9), 3, 7)
    logits = torch.randn(2, 3, 10, 9, generator=g, dtype=torch.float64) * 3
    every = hausdorff_er_loss(logits, target, reduction="none")
    foreground = hausdorff_er_loss(logits, target, include_background=False, reduction="none")
    error = (logits.softmax(1)[:, :1] - (target == 0).double()[:, None]) ** 2
    zeroth = erosion_sum(error, 2.0, 10)[:, 0]
    torch.testing.assert_close(every * 3, zeroth + foreground * 2)
    # ignored pixels: background for every class, so their logits change nothing
    ignored = target.clone()
    ignored[:, :3] = IGNORE
    other = logits.clone()
    other[:, :, :3] = 50.0
    torch.testing.assert_close(
        hausdorff_er_loss(logits, ignored, ignore_index=IGNORE),
        hausdorff_er_loss(other, ignored, ignore_index=IGNORE),
    )


def test_options_are_checked():
    with pytest.raises(sl.SegLossError, match="k"):
        HausdorffERLoss(k=0)
    with pytest.raises(sl.SegLossError, match="alpha"):
        HausdorffERLoss(alpha=-1.0)
    with pytest.raises(sl.SegLossError, match="alpha"):
        LogHausdorffDTLoss(alpha=0.0)
    assert isinstance(sl.create_loss("hausdorff_er(alpha=1.0, k=3)"), HausdorffERLoss)


# --- log(1 + HD-DT) ----------------------------------------------------------------------------------


def test_log_hausdorff_dt_by_hand():
    """G = [0 1 1 0], P = {p > 0.5} = [0 1 0 0] (tests/test_boundary_losses.py): the HD-DT mean is
    (0.2² · 2 + 0.3² · 2 + 0.6² · 2 + 0.1² · 5) / 4; the loss is log(1 + that). none: log(1 + t_i)."""
    p = [0.2, 0.7, 0.4, 0.1]
    target = torch.tensor([[0, 1, 1, 0]])
    terms = [0.2**2 * 2, 0.3**2 * 2, 0.6**2 * 2, 0.1**2 * 5]
    loss = log_hausdorff_dt_loss(two_class_logits(p), target)
    assert loss.item() == pytest.approx(math.log1p(sum(terms) / 4), rel=1e-12)
    none = log_hausdorff_dt_loss(two_class_logits(p), target, reduction="none")
    assert none[0].tolist() == pytest.approx([math.log1p(t) for t in terms], rel=1e-12)
    total = log_hausdorff_dt_loss(two_class_logits(p), target, reduction="sum")
    assert total.item() == pytest.approx(sum(math.log1p(t) for t in terms), rel=1e-12)
    hd = SF.hausdorff_dt_loss(two_class_logits(p), target)
    assert loss.item() == pytest.approx(math.log1p(hd.item()), rel=1e-14)


def test_log_hausdorff_dt_perfect_gives_zero():
    target = torch.randint(0, 3, (2, 6, 7), generator=torch.Generator().manual_seed(0))
    perfect = (torch.nn.functional.one_hot(target, 3).movedim(-1, 1).double() * 2 - 1) * SATURATED
    assert log_hausdorff_dt_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-150)  # p - y ~ e^-200


monai_losses = pytest.importorskip("monai.losses", reason="MONAI (the [docs] extra) is not installed")


@pytest.mark.parametrize("shape", [(2, 3, 9, 10), (2, 3, 5, 6, 7)], ids=["2d", "3d"])
@pytest.mark.parametrize("include_background", [False, True])
def test_log_hausdorff_dt_equals_monai(shape, include_background):
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    target = torch.randint(0, 3, (shape[0], *shape[2:]), generator=g)
    ours = log_hausdorff_dt_loss(logits, target, include_background=include_background)
    reference = monai_losses.LogHausdorffDTLoss(
        softmax=True, to_onehot_y=True, include_background=include_background
    )
    theirs = reference(logits, target[:, None])
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    # both compute the distances in float32 (MONAI from scipy's float64, seglosses by the edt package): a
    # distance may differ in its last bit, hence the tolerances
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=0)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-10)


def test_binary_log_hausdorff_dt_equals_monai():
    """MONAI's field has the target's dtype: an integer target truncates its distances, so it gets a
    float one (its value for an integer target is not the loss it documents)."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 2, 9, 10, generator=g, dtype=torch.float64) * 2).requires_grad_()
    target = torch.randint(0, 2, (2, 2, 9, 10), generator=g)
    ours = binary_log_hausdorff_dt_loss(logits, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = monai_losses.LogHausdorffDTLoss(sigmoid=True, include_background=True)(
            logits, target.double()
        )
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=0)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-10)


def test_log_hausdorff_dt_ignore_index():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (1, 8, 8), generator=g)
    ignored = target.clone()
    ignored[:, 0] = IGNORE
    other = logits.clone()
    other[:, :, 0] = -40.0
    torch.testing.assert_close(
        log_hausdorff_dt_loss(logits, ignored, ignore_index=IGNORE),
        log_hausdorff_dt_loss(other, ignored, ignore_index=IGNORE),
    )
    none = log_hausdorff_dt_loss(logits, ignored, ignore_index=IGNORE, reduction="none")
    assert (none[:, 0] == 0).all()


# --- weight_map and mask (issue 19, item 9) ----------------------------------------------------------


def test_hausdorff_er_weighted_hand_value():
    """y = 1 everywhere on 5 pixels, prediction 0: E_0 = [1 1 1 1 1]; K * E_0 (1-D cross of weight 1/3,
    zero padding) = [2/3 1 1 1 2/3], minus 1/2: [1/6 1/2 1/2 1/2 1/6], normalised: E_1 = [0 1 1 1 0]. With
    k = 1 and ω = [3 1 1 2 1] the erosion does not see ω and the mean is weighted: (1 + 1 + 2) / 8."""
    logits = torch.full((1, 1, 5), -SATURATED, dtype=torch.float64, requires_grad=True)
    target = torch.ones(1, 1, 5, dtype=torch.long)
    w = torch.tensor([[3.0, 1, 1, 2, 1]], dtype=torch.float64)
    loss = binary_hausdorff_er_loss(logits, target, w, k=1)
    assert loss.item() == pytest.approx(4 / 8, rel=1e-6)
    none = binary_hausdorff_er_loss(logits, target, w, k=1, reduction="none")
    expected = torch.tensor([[[0.0, 1, 1, 2, 0]]], dtype=torch.float64)
    torch.testing.assert_close(none, expected, rtol=1e-6, atol=1e-12)  # σ(-100)² is not quite 0


def weighted_inputs(name: str, shape=(2, 3, 6, 7)):
    """Logits, an index (softmax) or 0/1 (binary) target, a weight map and a mask for ``name``."""
    g = torch.Generator().manual_seed(13)
    n, c, *spatial = shape
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).requires_grad_()
    if name.startswith("binary_"):
        target = torch.randint(0, 2, shape, generator=g)
    else:
        target = torch.randint(0, c, (n, *spatial), generator=g)
    weights = torch.rand((n, *spatial), generator=g, dtype=torch.float64) * 3
    mask = torch.rand((n, *spatial), generator=g) > 0.3
    return logits, target, weights, mask


NAMES = ["hausdorff_er", "binary_hausdorff_er", "log_hausdorff_dt", "binary_log_hausdorff_dt"]


@pytest.mark.parametrize("name", ["hausdorff_er", "binary_hausdorff_er"])
def test_erosion_sees_no_weights(name):
    """The erosions run on the unweighted error maps: the weighted mean is Σ ω H / Σ ω of the unweighted
    per-pixel sums H (``none``), and ``none`` with ω is ω H."""
    logits, target, weights, _ = weighted_inputs(name)
    loss = sl.create_loss(name)
    terms = type(loss)(reduction="none")(logits, target)
    omega = weights.unsqueeze(1).expand_as(terms) if name.startswith("binary_") else weights
    torch.testing.assert_close(loss(logits, target, weight_map=weights), (omega * terms).sum() / omega.sum())
    torch.testing.assert_close(
        type(loss)(reduction="none")(logits, target, weight_map=weights), omega * terms
    )


@pytest.mark.parametrize("binary", [False, True])
def test_log_hausdorff_dt_is_the_log_of_the_weighted_loss(binary):
    """mean: log(1 + weighted HD-DT); none: ω log(1 + t); sum: its sum."""
    name = "binary_log_hausdorff_dt" if binary else "log_hausdorff_dt"
    logits, target, weights, mask = weighted_inputs(name)
    plain = SF.binary_hausdorff_dt_loss if binary else SF.hausdorff_dt_loss
    logged = binary_log_hausdorff_dt_loss if binary else log_hausdorff_dt_loss
    value = logged(logits, target, weights, mask)
    torch.testing.assert_close(value, torch.log1p(plain(logits, target, weights, mask)))
    terms = plain(logits, target, mask=mask, reduction="none")
    omega = weights.unsqueeze(1) if binary else weights
    none = logged(logits, target, weights, mask, reduction="none")
    torch.testing.assert_close(none, omega * torch.log1p(terms))
    torch.testing.assert_close(logged(logits, target, weights, mask, reduction="sum"), none.sum())


@pytest.mark.parametrize("name", NAMES)
def test_mask_on_a_soft_target_is_ignore_index(name):
    """A one-hot (binary: float) target with a mask is ignore_index at the masked pixels (helpers)."""
    check_soft_mask_is_ignore_index(name, *weighted_inputs(name))


@pytest.mark.parametrize("name", NAMES)
def test_weighted_module_function_and_compound_agree(name):
    check_weighted_module_function_and_compound(name, *weighted_inputs(name))
