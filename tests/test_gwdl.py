"""Generalised Wasserstein Dice loss: hand-derived values, the M = 1 - I identities, equality with MONAI's
GeneralizedWassersteinDiceLoss (values and gradients), targets, ignore_index, batch pooling, option checks,
and the conformance suite run with a class-distance matrix (the registered default has none)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, make_inputs
from test_conformance import LossConformance
from torch.profiler import ProfilerActivity, profile

import seglosses as sl
from seglosses._core.registry import LossEntry
from seglosses.losses.wasserstein import GWDLoss, gwdl_loss

# MONAI's example: background 0 at distance 1 from both foreground classes, which are 0.5 apart
M3 = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]
MONAI_WEIGHTING = {"default": "default", "gdl": "GDL"}


def probabilities_as_logits(rows):
    """Logits ``(1, C, P)`` whose softmax is ``rows`` (one row of probabilities per pixel)."""
    return torch.tensor(rows, dtype=torch.float64).log().T.unsqueeze(0)


def random_matrix(c, generator, scale=3.0):
    """A symmetric distance matrix with zero diagonal whose largest entry is not 1 (MONAI divides by it)."""
    a = torch.rand(c, c, generator=generator, dtype=torch.float64) * scale
    return (a + a.T) * (1 - torch.eye(c, dtype=torch.float64))


def one_hot(target, c):
    return F.one_hot(target, c).movedim(-1, 1).double()


# --- hand-derived values ------------------------------------------------------------------------------


def test_three_classes_by_hand():
    """M = M3, pixels (p, y): a = ((1/4, 1/2, 1/4), 1), b = ((1/2, 1/4, 1/4), 2), c = ((1/2, 1/4, 1/4), 0).
    ε_a = 1·1/4 + 0.5·1/4 = 3/8, ε_b = 1·1/2 + 0.5·1/4 = 5/8, ε_c = 1/4 + 1/4 = 1/2.
    default (α = (0, 1, 1)): TP = (1 - 3/8) + (1 - 5/8) = 1, D = 2·1 + (3/8 + 5/8 + 1/2) = 7/2,
    L = 1 - 2/(7/2) = 3/7; class terms 3·R_l / D with R = (1/2, 3/8, 5/8): (3/7, 9/28, 15/28).
    gdl (V = (1, 1, 1), α = 1/2): TP = (5/8 + 3/8 + 1/2)/2 = 3/4, D = (13/8 + 11/8 + 3/2)/2 = 9/4,
    L = 1 - (3/2)/(9/4) = 1/3."""
    z = probabilities_as_logits([[1 / 4, 1 / 2, 1 / 4], [1 / 2, 1 / 4, 1 / 4], [1 / 2, 1 / 4, 1 / 4]])
    y = torch.tensor([[1, 2, 0]])
    loss = functools.partial(gwdl_loss, z, y, dist_matrix=M3, smooth=0.0)
    assert loss().item() == pytest.approx(3 / 7, rel=1e-14)
    terms = loss(reduction="none")
    torch.testing.assert_close(terms, torch.tensor([[3 / 7, 9 / 28, 15 / 28]], dtype=torch.float64))
    assert loss(weighting="gdl").item() == pytest.approx(1 / 3, rel=1e-14)


def test_two_classes_three_pixels_by_hand():
    """M = 1 - I, p_1 = (3/4, 1/2, 1/4), y = (1, 1, 0): ε = (1/4, 1/2, 1/4).
    default: TP = 3/4 + 1/2 = 5/4, D = 5/2 + 1 = 7/2, L = 2/7 (the Dice loss of class 1:
    TP_1 = 5/4, FP_1 = 1/4, FN_1 = 3/4, 1 - (5/2)/(7/2)); terms 2·(1/4, 3/4)/(7/2) = (1/7, 3/7).
    gdl: V = (1, 2), α = (1/2, 1/3): TP = (3/4 + 1/2)/3 + (3/4)/2 = 19/24, errors
    (1/4 + 1/2)/3 + (1/4)/2 = 3/8, D = 19/12 + 3/8 = 47/24, L = (3/8)/(47/24) = 9/47."""
    z = probabilities_as_logits([[1 / 4, 3 / 4], [1 / 2, 1 / 2], [3 / 4, 1 / 4]])
    y = torch.tensor([[1, 1, 0]])
    loss = functools.partial(gwdl_loss, z, y, smooth=0.0)
    assert loss().item() == pytest.approx(2 / 7, rel=1e-14)
    torch.testing.assert_close(loss(reduction="none"), torch.tensor([[1 / 7, 3 / 7]], dtype=torch.float64))
    assert loss(weighting="gdl").item() == pytest.approx(9 / 47, rel=1e-14)


def test_smooth_enters_numerator_and_denominator():
    """L = 1 - (2 TP + s) / (D + s): the three-class example with s = 1 gives 1 - 3 / (9/2) = 1/3."""
    z = probabilities_as_logits([[1 / 4, 1 / 2, 1 / 4], [1 / 2, 1 / 4, 1 / 4], [1 / 2, 1 / 4, 1 / 4]])
    assert gwdl_loss(z, torch.tensor([[1, 2, 0]]), dist_matrix=M3, smooth=1.0).item() == pytest.approx(1 / 3)


def test_only_ratios_of_distances_matter():
    """M is divided by its largest entry (as in MONAI): 4·M gives the same loss."""
    z, y = make_inputs("softmax", (2, 3, 4, 5))
    scaled = [[4 * v for v in row] for row in M3]
    torch.testing.assert_close(gwdl_loss(z, y, dist_matrix=scaled), gwdl_loss(z, y, dist_matrix=M3))


@pytest.mark.parametrize("weighting", ["default", "gdl"])
def test_perfect_prediction_gives_zero(weighting):
    target = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    logits = torch.where(one_hot(target, 3).bool(), 0.0, -math.inf)  # probabilities exactly one-hot
    for dist in (None, M3):
        loss = gwdl_loss(logits, target, dist_matrix=dist, weighting=weighting)
        assert loss.item() == 0.0


def test_class_terms_average_to_the_sample_loss():
    z, y = make_inputs("softmax", (3, 3, 4, 5))
    for weighting in ("default", "gdl"):
        terms = gwdl_loss(z, y, dist_matrix=M3, weighting=weighting, reduction="none")
        per_sample = torch.stack([gwdl_loss(z[k : k + 1], y[k : k + 1], dist_matrix=M3, weighting=weighting)
                                  for k in range(3)])  # fmt: skip
        torch.testing.assert_close(terms.mean(-1), per_sample)
        torch.testing.assert_close(gwdl_loss(z, y, dist_matrix=M3, weighting=weighting, reduction="sum"),
                                   terms.sum())  # fmt: skip


# --- M = 1 - I --------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["default", "gdl"])
@pytest.mark.parametrize("dense", [False, True])
def test_no_matrix_is_one_minus_identity(weighting, dense):
    """dist_matrix=None (the overlap statistics' path) equals M = 1 - I given explicitly (the soft
    confusion matrix's path), values and gradients, with ignored pixels."""
    z, y = make_inputs("softmax", (2, 4, 5, 6), ignore_fraction=0.2)
    if dense:
        y = torch.softmax(torch.randn(z.shape, dtype=torch.float64), 1)
    ignore = None if dense else IGNORE
    identity = 1 - torch.eye(4, dtype=torch.float64)
    values = [
        gwdl_loss(z, y, dist_matrix=m, weighting=weighting, ignore_index=ignore) for m in (None, identity)
    ]
    torch.testing.assert_close(values[0], values[1])
    grads = [torch.autograd.grad(v, z)[0] for v in values]
    torch.testing.assert_close(grads[0], grads[1])


def overlap_stats(z, y, c):
    """TP, FP, FN ``(N, C)`` from a one-hot target, written out."""
    p, t = torch.softmax(z, 1).flatten(2), one_hot(y, c).flatten(2)
    return (p * t).sum(-1), (p * (1 - t)).sum(-1), ((1 - p) * t).sum(-1)


def test_identity_default_is_a_pooled_foreground_dice():
    """M = 1 - I, default: 1 - (2 Σ_{c≥1} TP_c + s) / (2 Σ_{c≥1} TP_c + ½ Σ_c (FP_c + FN_c) + s)."""
    z, y = make_inputs("softmax", (3, 4, 5, 6))
    tp, fp, fn = overlap_stats(z, y, 4)
    s = 1e-5
    fore = tp[:, 1:].sum(-1)
    expected = 1 - (2 * fore + s) / (2 * fore + (fp + fn).sum(-1) / 2 + s)
    torch.testing.assert_close(gwdl_loss(z, y, reduction="none").mean(-1), expected)


def test_identity_gdl_is_a_generalised_dice_without_false_positives():
    """M = 1 - I, gdl: 1 - (2 Σ_c α_c TP_c + s) / (Σ_c α_c (2 TP_c + FN_c) + s), with
    α_c = 1 / (TP_c + FN_c + 1)."""
    z, y = make_inputs("softmax", (3, 4, 5, 6))
    tp, _, fn = overlap_stats(z, y, 4)
    alpha, s = 1 / (tp + fn + 1), 1e-5
    expected = 1 - (2 * (alpha * tp).sum(-1) + s) / ((alpha * (2 * tp + fn)).sum(-1) + s)
    torch.testing.assert_close(gwdl_loss(z, y, weighting="gdl", reduction="none").mean(-1), expected)


def test_two_classes_identity_is_the_foreground_dice_loss():
    """C = 2, M = 1 - I, default weighting: the Dice loss of class 1, values and gradients (FP_0 = FN_1
    and FN_0 = FP_1, so ½ Σ_c (FP_c + FN_c) = FP_1 + FN_1)."""
    z, y = make_inputs("softmax", (3, 2, 6, 7))
    ours = gwdl_loss(z, y)
    dice = sl.dice_loss(z, y, include_background=False)
    torch.testing.assert_close(ours, dice)
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(dice, z)[0])
    sigmoid = sl.binary_dice_loss(z[:, 1:] - z[:, :1], y[:, None])  # softmax(0, δ)_1 = σ(δ): binary_dice
    torch.testing.assert_close(ours, sigmoid)


# --- MONAI --------------------------------------------------------------------------------------------


def monai_gwdl(dist, weighting, **options):
    losses = pytest.importorskip("monai.losses", reason="MONAI (the [docs] extra) is not installed")
    return losses.GeneralizedWassersteinDiceLoss(dist, weighting_mode=MONAI_WEIGHTING[weighting], **options)


def balanced_target(shape, generator):
    """Index targets of 16 pixels per sample with class counts (7, 7, 1, 1): MONAI computes the gdl weights
    1 / (V + 1) in float32, exact for these counts, so the comparison can be float64-tight."""
    n, *spatial = shape
    labels = torch.tensor([0] * 7 + [1] * 7 + [2, 3])
    return torch.stack([labels[torch.randperm(16, generator=generator)] for _ in range(n)]).view(n, *spatial)


@pytest.mark.parametrize("weighting", ["default", "gdl"])
@pytest.mark.parametrize("spatial", [(4, 4), (2, 2, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("identity", [False, True], ids=["matrix", "identity"])
def test_equals_monai(weighting, spatial, identity):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, *spatial, generator=g, dtype=torch.float64, requires_grad=True)
    target = balanced_target((3, *spatial), g)
    dist = 1 - torch.eye(4, dtype=torch.float64) if identity else random_matrix(4, g)
    theirs_none = monai_gwdl(dist, weighting, reduction="none")(logits, target)
    ours_none = gwdl_loss(logits, target, dist_matrix=None if identity else dist, weighting=weighting,
                          reduction="none")  # fmt: skip
    torch.testing.assert_close(ours_none.mean(-1), theirs_none, rtol=1e-12, atol=1e-14)
    ours = gwdl_loss(logits, target, dist_matrix=None if identity else dist, weighting=weighting)
    theirs = monai_gwdl(dist, weighting)(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    grads = [torch.autograd.grad(v, logits)[0] for v in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    total = monai_gwdl(dist, weighting, reduction="sum")(logits, target)
    torch.testing.assert_close(ours_none.sum(), 4 * total)  # sum: C times MONAI's (class terms)


@pytest.mark.parametrize("weighting", ["default", "gdl"])
def test_equals_monai_on_random_targets(weighting):
    """Any class counts: MONAI's float32 gdl weights limit the agreement to ~1e-7 relative there."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 7, 9), generator=g)
    ours = gwdl_loss(logits, target, dist_matrix=M3, weighting=weighting, smooth=1e-3)
    theirs = monai_gwdl(torch.tensor(M3, dtype=torch.float64), weighting, smooth_nr=1e-3, smooth_dr=1e-3)(
        logits, target[:, None]
    )
    tolerance = 1e-12 if weighting == "default" else 1e-6
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)
    grads = [torch.autograd.grad(v, logits)[0] for v in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=tolerance, atol=tolerance)


# --- targets, ignore_index, batch ---------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["default", "gdl"])
def test_one_hot_target_equals_index_target(weighting):
    z, y = make_inputs("softmax", (2, 3, 5, 6))
    values = [
        gwdl_loss(z, t, dist_matrix=M3, weighting=weighting, reduction="none") for t in (y, one_hot(y, 3))
    ]
    torch.testing.assert_close(values[0], values[1])
    grads = [torch.autograd.grad(v.sum(), z)[0] for v in values]
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("weighting", ["default", "gdl"])
def test_soft_target_formula(weighting):
    """Soft y: ε_il = Σ_c M[l, c] p_ic per pixel and class, TP = Σ_i Σ_l y_il α_l (1 - ε_il),
    errors Σ_i Σ_l y_il a_l ε_il, written per pixel (not through the confusion matrix)."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    y = torch.softmax(torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64), 1)
    m = torch.tensor(M3, dtype=torch.float64)
    eps = torch.einsum("lc,ncp->nlp", m, torch.softmax(z, 1).flatten(2))
    t = y.flatten(2)
    if weighting == "gdl":
        alpha = a = 1 / (t.sum(-1, keepdim=True) + 1)
    else:
        alpha, a = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64).view(1, 3, 1), 1.0
    tp = (t * alpha * (1 - eps)).sum((1, 2))
    errors = (t * a * eps).sum((1, 2))
    s = 1e-5
    expected = 1 - (2 * tp + s) / (2 * tp + errors + s)
    ours = gwdl_loss(z, y, dist_matrix=M3, weighting=weighting, reduction="none").mean(-1)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("weighting", ["default", "gdl"])
@pytest.mark.parametrize("dist", [None, M3], ids=["identity", "matrix"])
def test_ignore_index_equals_dropping_the_pixels(weighting, dist):
    z, y = make_inputs("softmax", (3, 3, 6, 7), ignore_fraction=0.3)
    ours = gwdl_loss(z, y, dist_matrix=dist, weighting=weighting, ignore_index=IGNORE, reduction="none")
    for k in range(3):
        keep = y[k] != IGNORE
        kept = gwdl_loss(z[k][:, keep][None], y[k][keep][None], dist_matrix=dist, weighting=weighting,
                         reduction="none")  # fmt: skip
        torch.testing.assert_close(ours[k], kept[0])


@pytest.mark.parametrize("weighting", ["default", "gdl"])
@pytest.mark.parametrize("dist", [None, M3], ids=["identity", "matrix"])
def test_batch_pools_the_pixels_of_all_samples(weighting, dist):
    """batch=True is the loss of one sample made of every valid pixel of the batch."""
    z, y = make_inputs("softmax", (3, 3, 6, 7), ignore_fraction=0.3)
    pooled = gwdl_loss(z, y, dist_matrix=dist, weighting=weighting, ignore_index=IGNORE, batch=True,
                       reduction="none")  # fmt: skip
    keep = y != IGNORE
    one = gwdl_loss(z.movedim(1, -1)[keep].T[None], y[keep][None], dist_matrix=dist, weighting=weighting,
                    reduction="none")  # fmt: skip
    torch.testing.assert_close(pooled, one[0])


def test_empty_batch_and_all_ignored_with_a_matrix_give_zero():
    z, y = make_inputs("softmax", (2, 3, 4, 5))
    for weighting in ("default", "gdl"):
        empty = gwdl_loss(z[:0], y[:0], dist_matrix=M3, weighting=weighting)
        assert empty.item() == 0.0 and empty.requires_grad
        ignored = gwdl_loss(z, torch.full_like(y, IGNORE), dist_matrix=M3, ignore_index=IGNORE, smooth=0.0,
                            weighting=weighting)  # fmt: skip
        assert ignored.item() == 0.0
        assert torch.count_nonzero(torch.autograd.grad(ignored, z)[0]) == 0


def test_no_one_hot_of_the_logits_size_with_a_matrix():
    z, y = make_inputs("softmax", (2, 4, 16, 16), ignore_fraction=0.2)
    dist = random_matrix(4, torch.Generator().manual_seed(0))
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        gwdl_loss(z, y, dist_matrix=dist, ignore_index=IGNORE).backward()
    ops = {event.key for event in trace.key_averages()}
    assert not ops & {"aten::one_hot", "aten::scatter", "aten::scatter_", "aten::eye"}


# --- the matrix as an input ---------------------------------------------------------------------------


def test_matrix_that_requires_grad_gets_its_gradient():
    """gradcheck over the off-diagonal distances (a perturbed diagonal would not be a distance matrix)."""
    z, y = make_inputs("softmax", (2, 3, 3, 4))
    z = z.detach()
    off = 1 - torch.eye(3, dtype=torch.float64)
    m = torch.tensor([[1.0, 1.0, 0.7], [0.9, 1.0, 0.5], [0.6, 0.4, 1.0]], dtype=torch.float64)  # unique max
    m.requires_grad_()
    for weighting in ("default", "gdl"):
        loss = functools.partial(gwdl_loss, z, y, weighting=weighting)
        assert torch.autograd.gradcheck(lambda d, loss=loss: loss(dist_matrix=d * off), (m,))


def test_module_keeps_the_matrix_as_a_buffer():
    dist = torch.tensor(M3, dtype=torch.float64)
    module = GWDLoss(dist_matrix=dist, weighting="gdl")
    assert module.dist_matrix is not dist and torch.equal(module.dist_matrix, dist)
    assert set(module.state_dict()) == {"dist_matrix"}
    fresh = GWDLoss(dist_matrix=torch.ones(3, 3).fill_diagonal_(0), weighting="gdl", ignore_index=IGNORE)
    fresh.load_state_dict(module.state_dict())
    z, y = make_inputs("softmax", (2, 3, 4, 5), ignore_fraction=0.2)
    expected = gwdl_loss(z, y, dist_matrix=M3, weighting="gdl", ignore_index=IGNORE)
    torch.testing.assert_close(GWDLoss(dist_matrix=M3, weighting="gdl", ignore_index=IGNORE)(z, y), expected)
    torch.testing.assert_close(fresh.to(torch.float32)(z.float(), y), expected.float())
    spec = sl.create_loss(f"gwdl(dist_matrix={M3}, weighting='gdl', ignore_index={IGNORE})")
    torch.testing.assert_close(spec(z, y), expected)


def test_matrix_as_list_numpy_or_tensor_agree():
    np = pytest.importorskip("numpy")
    z, y = make_inputs("softmax", (2, 3, 4, 5))
    forms = [
        M3,
        np.array(M3),
        torch.tensor(M3, dtype=torch.float64),
        torch.tensor([[0, 2, 2], [2, 0, 1], [2, 1, 0]]),
    ]
    values = [gwdl_loss(z, y, dist_matrix=m) for m in forms]
    for value in values[1:]:
        torch.testing.assert_close(value, values[0])


@pytest.mark.parametrize(
    "dist, match",
    [
        ([[0.0, 1.0], [1.0, 0.0]], r"shape \(C, C\) = \(3, 3\).*got shape \(2, 2\)"),  # C of the logits
        ([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]], r"shape \(C, C\) with C >= 2.*\(2, 3\)"),
        ([0.0, 1.0, 1.0], r"shape \(C, C\)"),
        ([[0.0]], r"C >= 2"),
        ([[0.0, -1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], "non-negative"),
        ([[0.5, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], r"zero diagonal.*\[0.5, 0.0, 0.0\]"),
        ([[0.0, math.nan, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], "finite"),
        ([[0.0, math.inf, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], "finite"),
        ([[0.0] * 3] * 3, "at least one positive"),
        ([[False, True], [True, False]], "real values"),
        ([[0.0, 1.0], [1.0]], "matrix of real numbers"),
        (1.0, r"\(C, C\) matrix"),
        ("M", r"\(C, C\) matrix"),
    ],
)
def test_bad_dist_matrix_raises(dist, match):
    z, y = make_inputs("softmax", (1, 3, 2, 2))
    with pytest.raises(sl.SegLossError, match=match):
        gwdl_loss(z, y, dist_matrix=dist)


def test_bad_tensor_matrix_raises_in_the_module_and_is_not_read_with_checks_off():
    bad = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    with pytest.raises(sl.SegLossError, match="non-negative"):
        GWDLoss(dist_matrix=bad)
    with sl.input_checks(False):
        GWDLoss(dist_matrix=bad)  # a tensor's values are data: read only with the checks on
    with pytest.raises(sl.SegLossError, match="without requires_grad"):
        GWDLoss(dist_matrix=torch.tensor(M3, requires_grad=True))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"weighting": "GDL"}, "weighting='gdl'"),
        ({"weighting": "foo"}, "weighting to be one of 'default', 'gdl'"),
        ({"weighting": None}, "weighting"),
        ({"sync": True}, "batch=True with sync=True"),
        ({"smooth": -1.0}, "smooth"),
        ({"weighting_mode": "GDL"}, "did you mean 'weighting'"),
        ({"smooth_nr": 1e-5}, "use smooth="),
    ],
)
def test_bad_options_raise(options, match):
    with pytest.raises(sl.SegLossError, match=match):
        GWDLoss(**options)


# --- the conformance suite with a matrix -------------------------------------------------------------


def _with_matrix(weighting):
    """A module class whose function defaults to ``dist_matrix=M3`` (the conformance inputs have C = 3)."""
    function = functools.partial(gwdl_loss, dist_matrix=M3, weighting=weighting)
    return type(f"GWDLoss_{weighting}", (GWDLoss,), {"function": staticmethod(function)})


class TestGWDLWithMatrix(LossConformance):
    """The conformance suite on the soft-confusion-matrix path (the registry's gwdl has no matrix)."""

    entries = [
        LossEntry(f"gwdl_m3_{w}", _with_matrix(w), "softmax", "gwdl with M3", kind="region")
        for w in ("default", "gdl")
    ]

    def test_registry_spec_builds_the_module(self, entry):
        pytest.skip(
            "not registered: a test-only class (test_module_keeps_the_matrix_as_a_buffer builds the spec)"
        )


@pytest.mark.parametrize("weighting", ["default", "gdl"])
def test_matrix_path_under_torch_func_and_double_backward(weighting):
    loss = GWDLoss(dist_matrix=M3, weighting=weighting, ignore_index=IGNORE)
    z, y = make_inputs("softmax", (2, 3, 3, 4), ignore_fraction=0.2)
    z = z.detach()
    grad = torch.func.grad(lambda x: loss(x, y))(z)
    reference = z.clone().requires_grad_()
    loss(reference, y).backward()
    torch.testing.assert_close(grad, reference.grad)
    stacked_z, stacked_y = torch.stack([z, z.flip(-1)]), torch.stack([y, y.flip(-1)])
    values = torch.func.vmap(loss)(stacked_z, stacked_y)
    torch.testing.assert_close(values, torch.stack([loss(stacked_z[k], stacked_y[k]) for k in range(2)]))
    small_y = y[:1, :2, :2]
    assert torch.autograd.gradgradcheck(
        lambda x: loss(x, small_y), (z[:1, :, :2, :2].clone().requires_grad_(),)
    )


# --- weight maps and masks (issue 19, item 9) ---------------------------------------------------------


def test_weight_map_by_hand():
    """M = M3, pixels (p, y, ω): a = ((0.1, 0.7, 0.2), 1, 2), b = ((0.6, 0.3, 0.1), 0, 0.5),
    c = ((0.2, 0.2, 0.6), 2, 3). ε_a = 0.1 + 0.5·0.2 = 0.2, ε_b = 0.3 + 0.1 = 0.4, ε_c = 0.2 + 0.5·0.2 = 0.3.
    default: TP = Σ ω α (1 - ε) = 2·0.8 + 3·0.7 = 3.7 (b is background), E = Σ ω ε = 0.4 + 0.2 + 0.9 = 1.5,
    L = E / (2 TP + E) = 1.5 / 8.9.
    gdl: weighted volumes V = (0.5, 2, 3), α = 1 / (V + 1) = (2/3, 1/3, 1/4):
    TP = 2·(1/3)·0.8 + 0.5·(2/3)·0.6 + 3·(1/4)·0.7, E = 2·(1/3)·0.2 + 0.5·(2/3)·0.4 + 3·(1/4)·0.3,
    L = E / (2 TP + E)."""
    z = probabilities_as_logits([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    y = torch.tensor([[1, 0, 2]])
    w = torch.tensor([[2.0, 0.5, 3.0]], dtype=torch.float64)
    loss = functools.partial(gwdl_loss, z, y, w, dist_matrix=M3, smooth=0.0)
    assert loss().item() == pytest.approx(1.5 / 8.9, rel=1e-12)
    tp = 2 * (1 / 3) * 0.8 + 0.5 * (2 / 3) * 0.6 + 3 * (1 / 4) * 0.7
    error = 2 * (1 / 3) * 0.2 + 0.5 * (2 / 3) * 0.4 + 3 * (1 / 4) * 0.3
    assert loss(weighting="gdl").item() == pytest.approx(error / (2 * tp + error), rel=1e-12)
    # without a matrix (M = 1 - I): ε = 1 - p_y = (0.3, 0.4, 0.4), TP = 2·0.7 + 3·0.6, E = 0.6 + 0.2 + 1.2
    plain = gwdl_loss(z, y, w, smooth=0.0).item()
    assert plain == pytest.approx(2.0 / (2 * (2 * 0.7 + 3 * 0.6) + 2.0), rel=1e-12)


def _repeated(logits, target, counts):
    """Every pixel of the batch repeated ``counts`` times, side by side in one long row: one sample."""
    rows_z, rows_y = [], []
    for n in range(logits.shape[0]):
        k = counts[n].flatten()
        rows_z.append(logits[n].flatten(1).repeat_interleave(k, dim=1))
        rows_y.append(target[n].flatten(target.ndim - 3).repeat_interleave(k, dim=-1))
    return torch.cat(rows_z, 1)[None], torch.cat(rows_y, -1)[None]


@pytest.mark.parametrize("weighting", ["default", "gdl"])
@pytest.mark.parametrize("dist", [None, M3], ids=["identity", "matrix"])
@pytest.mark.parametrize("dense", [False, True], ids=["index", "soft"])
def test_integer_weights_repeat_the_pixel(weighting, dist, dense):
    """ω ∈ {0, 1, 2, 3} is the loss with each pixel repeated ω times (pooled over the batch): R, V and
    the gdl volumes are sums over pixels, and ε_i is the pixel's own."""
    z, y = make_inputs("softmax", (2, 3, 4, 5), seed=11)
    if dense:
        y = torch.softmax(torch.randn(2, 3, 4, 5, dtype=torch.float64), 1)
    counts = torch.randint(0, 4, (2, 4, 5), generator=torch.Generator().manual_seed(12))
    loss = GWDLoss(dist_matrix=dist, weighting=weighting, batch=True)
    torch.testing.assert_close(loss(z, y, weight_map=counts.double()), loss(*_repeated(z, y, counts)))


@pytest.mark.parametrize("dist", [None, M3], ids=["identity", "matrix"])
def test_mask_on_a_soft_target_drops_the_pixels(dist):
    """A soft target's masked pixels count nowhere: the loss of the kept pixels alone; a NaN logit there
    (data checks off) reaches neither value nor gradient."""
    z, _ = make_inputs("softmax", (1, 3, 4, 6), seed=13)
    soft = torch.softmax(torch.randn(1, 3, 4, 6, dtype=torch.float64), 1)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[..., 3:] = True
    poisoned = z.detach().clone()
    poisoned[..., :3] = torch.nan
    poisoned.requires_grad_()
    for weighting in ("default", "gdl"):
        with sl.input_checks(False):
            value = gwdl_loss(poisoned, soft, mask=mask, dist_matrix=dist, weighting=weighting)
        expected = gwdl_loss(z[..., 3:], soft[..., 3:], dist_matrix=dist, weighting=weighting)
        torch.testing.assert_close(value, expected)
        (grad,) = torch.autograd.grad(value, poisoned)
        assert torch.isfinite(grad).all() and (grad[..., :3] == 0).all()


@pytest.mark.parametrize("weighting", ["default", "gdl"])
def test_unit_weights_equal_monai(weighting):
    """ω = 1 everywhere (and a mask of every pixel) is still MONAI's loss, value and gradient."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = balanced_target((3, 4, 4), g)
    dist = random_matrix(4, g)
    ones = torch.ones(3, 4, 4, dtype=torch.float64)
    ours = gwdl_loss(logits, target, ones, ones.bool(), dist_matrix=dist, weighting=weighting)
    theirs = monai_gwdl(dist, weighting)(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    grads = [torch.autograd.grad(v, logits)[0] for v in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_weighted_module_function_and_compound_agree():
    z, y = make_inputs("softmax", (2, 3, 5, 6), seed=14)
    g = torch.Generator().manual_seed(15)
    w = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    m = torch.rand(2, 5, 6, generator=g) > 0.3
    value = GWDLoss(dist_matrix=M3)(z, y, w, m)
    torch.testing.assert_close(value, gwdl_loss(z, y, w, m, dist_matrix=M3))
    expected = sl.dice_loss(z, y, w, m) + 0.5 * gwdl_loss(z, y, w, m)
    torch.testing.assert_close(sl.create_loss("dice + 0.5*gwdl")(z, y, weight_map=w, mask=m), expected)
