"""Embedding losses, issue 16 ("Reliability II"): scale, ``torch.func``, dynamic ``torch.compile``, layouts.

* Scale: no square of an embedding overflows where the loss does not, so losses that are scale-invariant
  by construction agree at any finite norm, and the others are finite wherever their value is (else a
  ``SegLossError`` saying the formula overflows, or ``+inf`` without the checks; never NaN).
* ``torch.func``: ``grad`` (any order) equals autograd; ``vmap`` works without caps, raises
  ``SegLossError`` with them.
* ``torch.compile(fullgraph=True, dynamic=True)`` equals eager, ignored pixels included.
* Layouts and label dtypes: channels_last, expanded and offset views, uint8 to int64 labels.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
from torch import Tensor

import seglosses as sl
from seglosses.losses.embedding import (
    CenterLoss,
    center_loss,
    contrastive_loss,
    pixel_info_nce_loss,
    triplet_loss,
)
from seglosses.ops.pairwise import Distance, l2_normalize, pairwise_distances

IGNORE = 255
CENTERS = torch.randn(4, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _center(embeddings: Tensor, labels: Tensor, *args: Any, **options: Any) -> Tensor:
    return center_loss(embeddings, labels, CENTERS.to(embeddings.dtype), *args, **options)


# every embedding loss, with the options that take a path of their own
LOSSES: Dict[str, Tuple[Callable[..., Tensor], Dict[str, Any]]] = {
    "contrastive": (contrastive_loss, {}),
    "contrastive_normalized": (contrastive_loss, {"normalize": True, "reduction": "sum"}),
    "info_nce": (pixel_info_nce_loss, {}),
    "triplet_hard": (triplet_loss, {}),
    "triplet_hard_squared": (triplet_loss, {"squared": True, "normalize": False}),
    "triplet_all": (triplet_loss, {"mining": "all"}),
    "triplet_all_squared": (triplet_loss, {"mining": "all", "squared": True, "normalize": False}),
    "triplet_semi_hard": (triplet_loss, {"mining": "semi_hard", "margin": 0.5, "average": "nonzero"}),
    "center": (_center, {}),
}
SCALE_INVARIANT = {
    "info_nce": (pixel_info_nce_loss, {}),
    "triplet_hard": (triplet_loss, {}),
    "triplet_all": (triplet_loss, {"mining": "all"}),
    "triplet_semi_hard": (triplet_loss, {"mining": "semi_hard"}),
    "contrastive_normalized": (contrastive_loss, {"normalize": True}),
}


def make(shape=(2, 5, 3, 4), *, seed=0, dtype=torch.float64, ignore=True, classes=4):
    """Embeddings ``(N, D, *S)`` and labels ``(N, *S)``, a few of them ``IGNORE``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    n, _, *spatial = shape
    labels = torch.randint(0, classes, (n, *spatial), generator=g)
    if ignore:
        labels.view(-1)[:: max(labels.numel() // 4, 1)] = IGNORE
    return x, labels


def value_and_grad(function: Callable[[Tensor], Tensor], x: Tensor) -> Tuple[Tensor, Tensor]:
    leaf = x.detach().clone().requires_grad_()
    value = function(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def bound(name: str, **extra: Any) -> Callable[..., Tensor]:
    function, options = LOSSES[name]
    return lambda x, labels: function(x, labels, ignore_index=IGNORE, **options, **extra)


# --- 1. scale -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCALE_INVARIANT))
@pytest.mark.parametrize("scale", [1e19, 1e30])
def test_scale_invariant_losses_agree_at_huge_norms(name, scale):
    """Float32 embeddings of norm ~1e19 (squares beyond float32) or 1e30 give the value of the same
    embeddings at norm ~1, and the gradient times the scale (F.normalize gave 0-rows there, and the losses
    wrong finite values)."""
    function, options = SCALE_INVARIANT[name]
    x, labels = make((2, 8, 4, 4), dtype=torch.float32, ignore=False, classes=3)
    small, small_grad = value_and_grad(lambda e: function(e, labels, **options), x)
    big, big_grad = value_and_grad(lambda e: function(e, labels, **options), x * scale)
    torch.testing.assert_close(big, small, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(big_grad).all()
    torch.testing.assert_close(big_grad * scale, small_grad, rtol=1e-4, atol=1e-5)


def test_plain_contrastive_beyond_float32_raises_or_is_inf_never_nan():
    """Plain contrastive of norm ~1e19: its mean of squared distances (~4.7e38) is beyond float32. Checks
    on: a SegLossError saying so. Off: +inf (it was NaN) with the float64 gradient, finite."""
    x, labels = make((2, 8, 4, 4), dtype=torch.float32, ignore=False, classes=3)
    big = x * 1e19
    assert contrastive_loss(big.double(), labels) > torch.finfo(torch.float32).max  # the formula overflows
    with pytest.raises(sl.SegLossError, match="overflows"):
        contrastive_loss(big, labels)
    with sl.input_checks(False):
        value, grad = value_and_grad(lambda e: contrastive_loss(e, labels), big)
        _, reference = value_and_grad(lambda e: contrastive_loss(e, labels), big.double())
    assert value == torch.inf
    scale = reference.abs().max()
    torch.testing.assert_close(grad.double() / scale, reference / scale, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("name", ["center", "triplet_all_squared", "triplet_hard_squared"])
def test_other_losses_beyond_float32_raise_or_are_inf_never_nan(name):
    """Center loss and squared triplets of norm ~1e19: beyond float32 by their formula; SegLossError with
    the checks on, +inf (not NaN) and a finite gradient without."""
    function = bound(name)
    x, labels = make((2, 5, 4, 4), dtype=torch.float32, ignore=False)
    big = x * 3e19
    assert function(big.double(), labels) > torch.finfo(torch.float32).max
    with pytest.raises(sl.SegLossError, match="overflows"):
        function(big, labels)
    with sl.input_checks(False):
        value, grad = value_and_grad(lambda e: function(e, labels), big)
    assert value == torch.inf and torch.isfinite(grad).all()


def _far_from_the_origin(dtype=torch.float32) -> Tuple[Tensor, Tensor]:
    """Three classes around centers of norm ~1.5e19 (their squares overflow float32), spread ~1e18."""
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(3, 4, generator=g, dtype=torch.float64)
    centers = 1.5e19 * centers / centers.norm(dim=1, keepdim=True)
    labels = torch.randint(0, 3, (30,), generator=g)
    x = centers[labels] + 1e18 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    return x.to(dtype), labels


@pytest.mark.parametrize(
    "name, options",
    [
        ("contrastive", {"margin": 1e19}),
        ("triplet", {"normalize": False, "margin": 2.5e19}),
        ("triplet", {"normalize": False, "mining": "all", "margin": 2.5e19, "average": "nonzero"}),
        ("triplet", {"normalize": False, "mining": "semi_hard", "margin": 2e19}),
    ],
)
def test_representable_losses_of_huge_embeddings_are_finite_and_right(name, options):
    """Rows whose squared norms overflow float32 but whose loss does not: the float64 value and gradient
    (‖a‖² + ‖b‖² - 2ab used to give inf - inf = NaN)."""
    function = contrastive_loss if name == "contrastive" else triplet_loss
    x, labels = _far_from_the_origin()
    value, grad = value_and_grad(lambda e: function(e, labels, **options), x)
    reference, reference_grad = value_and_grad(lambda e: function(e, labels, **options), x.double())
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=0.0)
    scale = reference_grad.abs().max()
    torch.testing.assert_close(grad.double() / scale, reference_grad / scale, rtol=0.0, atol=1e-4)


@pytest.mark.parametrize("mining", ["hard", "all"])
def test_squared_triplet_differences_beyond_the_squares(mining):
    """d(a,p)² = 4e38 and d(a,n)² = 3.61e38 overflow float32, their difference 3.9e37 does not: the triplet
    is that, not inf - inf = NaN."""
    x = torch.tensor([[0.0, 0.0], [2e19, 0.0], [0.0, 1.9e19]])
    labels = torch.tensor([0, 0, 1])
    loss = triplet_loss(x, labels, mining=mining, squared=True, normalize=False, margin=0.0, reduction="sum")
    expected = x[1].double().square().sum() - x[2].double().square().sum()  # anchor 0; anchor 1 gives 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0.0)


def test_distances_and_normalisation_of_huge_rows():
    """pairwise_distances, Distance.paired / gap and l2_normalize at norms ~1e19 to 1e37: the float64
    values (F.normalize gives a 0-row beyond 1.8e19)."""
    g = torch.Generator().manual_seed(0)
    norms = torch.logspace(19, 37, 6, dtype=torch.float64)[:, None]
    rows = (torch.randn(6, 8, generator=g, dtype=torch.float64) * norms).float()
    reference, apart = rows.double(), ~torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(l2_normalize(rows).norm(dim=1), torch.ones(6))
    assert torch.isfinite(pairwise_distances(rows, normalize=True)).all()
    for metric in ("euclidean", "squared_euclidean"):  # squares beyond float32 are inf, the others right
        got, expected = (
            pairwise_distances(rows, metric=metric).double(),
            pairwise_distances(reference, metric=metric),
        )
        fits = apart & (expected < torch.finfo(torch.float32).max)
        torch.testing.assert_close(got[fits], expected[fits], rtol=1e-5, atol=0.0)
        assert (got[apart & ~fits] == torch.inf).all()
    euclidean = Distance("euclidean")
    got, expected = euclidean.block(rows, rows).double(), euclidean.block(reference, reference)
    torch.testing.assert_close(got[apart], expected[apart], rtol=1e-5, atol=0.0)
    got, expected = euclidean.paired(rows, rows.flip(0)), euclidean.paired(reference, reference.flip(0))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0.0)


def test_normalisation_is_bit_for_bit_f_normalize_in_the_normal_range():
    """Scaling by a power of two first changes no bit of F.normalize's value or gradient."""
    x = (torch.randn(50, 7, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_()
    weights = torch.arange(7.0)
    ours = l2_normalize(x)
    theirs = torch.nn.functional.normalize(x, dim=1)
    assert torch.equal(ours, theirs)
    assert torch.equal(*(torch.autograd.grad((y * weights).sum(), x)[0] for y in (ours, theirs)))


# --- 2. torch.func ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("capped", [False, True], ids=["all", "capped"])
def test_func_grad_equals_autograd(name, capped):
    """torch.func.grad of every embedding loss (ignored pixels, caps) is the autograd gradient."""
    x, labels = make()
    extra = {"max_per_class": 3, "generator": torch.Generator().manual_seed(0)} if capped else {}

    def loss(e):
        if capped:
            extra["generator"].manual_seed(0)  # the same sample both times
        return bound(name, **extra)(e, labels)

    _, expected = value_and_grad(loss, x)
    torch.testing.assert_close(torch.func.grad(loss)(x), expected)


@pytest.mark.parametrize("name", ["contrastive", "info_nce", "triplet_all", "triplet_hard", "center"])
def test_func_second_derivatives_equal_the_reference(name):
    """jacrev(grad) under torch.func: the Hessian of plain autograd on the flattened rows (the Functions'
    closed-form backwards are first order, so torch.func takes plain autograd)."""
    x, labels = make((1, 5, 2, 3), ignore=False, classes=2)
    function = bound(name)
    hessian = torch.func.jacrev(torch.func.grad(lambda e: function(e, labels)))(x)
    reference = torch.autograd.functional.hessian(lambda e: _plain(name, e, labels), x)
    torch.testing.assert_close(hessian, reference)


def _plain(name: str, x: Tensor, labels: Tensor) -> Tensor:
    """The loss from its formula, pair by pair (no sampler, no blocks; every pixel valid)."""
    rows, y = x.movedim(1, -1).reshape(-1, x.shape[1]), labels.reshape(-1).tolist()
    m = len(y)
    if name == "center":
        return 0.5 * ((rows - CENTERS[labels.reshape(-1)]) ** 2).sum(1).mean()
    unit = rows / rows.norm(dim=1, keepdim=True)
    dist = lambda a, b: ((a - b) ** 2).sum().sqrt()  # noqa: E731
    if name == "contrastive":
        terms = [
            dist(rows[i], rows[j]) ** 2
            if y[i] == y[j]
            else torch.clamp(1.0 - dist(rows[i], rows[j]), min=0) ** 2
            for i, j in itertools.combinations(range(m), 2)
        ]
        return sum(terms) / len(terms)
    if name == "info_nce":
        losses = []
        for a in range(m):
            positives = [p for p in range(m) if p != a and y[p] == y[a]]
            negatives = sum(torch.exp(unit[a] @ unit[n] / 0.1) for n in range(m) if y[n] != y[a])
            if positives:
                terms = [
                    -torch.log(
                        torch.exp(unit[a] @ unit[p] / 0.1) / (torch.exp(unit[a] @ unit[p] / 0.1) + negatives)
                    )
                    for p in positives
                ]
                losses.append(sum(terms) / len(terms))
        return sum(losses) / len(losses)
    d = [[dist(unit[i], unit[j]) for j in range(m)] for i in range(m)]
    triplets = []
    for a in range(m):
        positives = [p for p in range(m) if p != a and y[p] == y[a]]
        negatives = [n for n in range(m) if y[n] != y[a]]
        if name == "triplet_hard" and positives and negatives:
            p = max(positives, key=lambda j: float(d[a][j]))
            n = min(negatives, key=lambda j: float(d[a][j]))
            triplets.append(torch.clamp(d[a][p] - d[a][n] + 0.2, min=0))
        elif name == "triplet_all":
            triplets += [torch.clamp(d[a][p] - d[a][n] + 0.2, min=0) for p in positives for n in negatives]
    return sum(triplets) / len(triplets)


@pytest.mark.parametrize("name", list(LOSSES))
def test_vmap_equals_a_loop(name):
    """torch.func.vmap over a stack of batches (ignored pixels included) gives each batch's loss."""
    x, labels = make()
    stacked, stacked_labels = torch.stack([x, 2 * x.flip(0)]), torch.stack([labels, labels.flip(0)])
    function = bound(name)
    expected = torch.stack([function(e, y) for e, y in zip(stacked, stacked_labels)])
    torch.testing.assert_close(torch.func.vmap(function)(stacked, stacked_labels), expected)


@pytest.mark.parametrize("name", ["contrastive", "info_nce", "triplet_hard", "center"])
def test_vmap_with_caps_raises_seglosserror(name):
    """A capped sample is a random subset of data-dependent size: vmap raises SegLossError saying so."""
    x, labels = make()
    function = bound(name, max_per_class=2)
    with pytest.raises(sl.SegLossError, match="vmap is not supported"):
        torch.func.vmap(lambda e: function(e, labels))(torch.stack([x, x]))


def test_center_module_under_torch_func():
    """CenterLoss in training mode under torch.func.grad: the gradient and the center update of eager
    autograd; under vmap a SegLossError (eval() works)."""
    x, labels = make(dtype=torch.float32)
    eager, transformed = (CenterLoss(num_classes=4, dim=5, ignore_index=IGNORE) for _ in range(2))
    for _ in range(2):
        _, expected = value_and_grad(lambda e: eager(e, labels), x)
        torch.testing.assert_close(torch.func.grad(lambda e: transformed(e, labels))(x), expected)
        torch.testing.assert_close(transformed.centers, eager.centers)
    with pytest.raises(sl.SegLossError, match="vmap is not supported"):
        torch.func.vmap(lambda e: transformed(e, labels))(torch.stack([x, x]))
    transformed.eval()
    torch.testing.assert_close(
        torch.func.vmap(lambda e: transformed(e, labels))(torch.stack([x, x]))[1], eager.eval()(x, labels)
    )


@pytest.mark.parametrize("name", ["contrastive", "info_nce", "triplet_all", "triplet_semi_hard"])
def test_eager_double_backward_still_raises_a_clear_error(name):
    """The closed-form backwards stay first order in eager use: create_graph=True raises SegLossError."""
    x, labels = make()
    leaf = x.clone().requires_grad_()
    with pytest.raises(sl.SegLossError, match="first-order"):
        torch.autograd.grad(bound(name)(leaf, labels), leaf, create_graph=True)


# --- 3. torch.compile ---------------------------------------------------------------------------------


COMPILE_FULL_ONLY = {"contrastive_normalized", "triplet_hard_squared", "triplet_all_squared"}


def assert_compiled_equals_eager(function, compiled):
    """Values and gradients of ``compiled`` equal ``function``'s on two shapes (dynamic shapes)."""
    for shape in [(2, 5, 3, 4), (3, 5, 4, 5)]:
        x, labels = make(shape, dtype=torch.float32)
        value, grad = value_and_grad(lambda e, y=labels: function(e, y), x)
        compiled_value, compiled_grad = value_and_grad(lambda e, y=labels: compiled(e, y), x)
        torch.testing.assert_close(compiled_value, value)
        torch.testing.assert_close(compiled_grad, grad)


@pytest.mark.parametrize(
    "name",
    [  # one per loss and mining in the default run; the other options with -m full (tests/conftest.py)
        pytest.param(name, marks=pytest.mark.full) if name in COMPILE_FULL_ONLY else name for name in LOSSES
    ],
)
def test_compile_fullgraph_dynamic_equals_eager(name):
    """torch.compile(fullgraph=True, dynamic=True) of every loss, ignored pixels included, on two shapes:
    eager's values and gradients (the gathered valid pixels and nonzero() had data-dependent shapes)."""
    torch._dynamo.reset()
    function = bound(name)
    compiled = torch.compile(function, fullgraph=True, dynamic=True, backend="eager")
    assert_compiled_equals_eager(function, compiled)


@pytest.mark.parametrize("name", ["triplet_all", "center_module"])
def test_compile_aot_eager_equals_eager(name):
    """aot_eager (the autograd graph traced): batch-all triplets (checkpointed blocks) and CenterLoss in
    training mode (its buffer update traced; AOT's min-cut partitioner may recompute a read of a buffer
    the forward mutates, pytorch/pytorch#197039, which would show here as a gradient with the updated
    centers)."""
    torch._dynamo.reset()
    if name == "center_module":
        module, twin = (CenterLoss(num_classes=4, dim=5, ignore_index=IGNORE) for _ in range(2))
        function, compiled = module, torch.compile(twin, fullgraph=True, dynamic=True, backend="aot_eager")
    else:
        function = bound(name)
        compiled = torch.compile(function, fullgraph=True, dynamic=True, backend="aot_eager")
    assert_compiled_equals_eager(function, compiled)
    if name == "center_module":
        torch.testing.assert_close(twin.centers, module.centers)


# --- 4. layouts and label dtypes ----------------------------------------------------------------------


def _layouts(base: Tensor) -> Dict[str, Tuple[Tensor, Tensor]]:
    """Each layout of ``base`` ``(N, D, H, W)`` (a function of it, for gradients) and a contiguous copy."""
    n, d, h, w = base.shape
    wide = torch.cat([base.new_zeros(3), base.reshape(-1)])  # storage offset 3
    return {
        "channels_last": (base.contiguous(memory_format=torch.channels_last), base.clone()),
        "expanded": (base[:, :, :1].expand(n, d, h, w), base[:, :, :1].expand(n, d, h, w).contiguous()),
        "offset_view": (wide[3:].view(n, d, h, w), base.clone()),
        "transposed": (base.transpose(2, 3).contiguous().transpose(2, 3), base.clone()),
    }


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("layout", ["channels_last", "expanded", "offset_view", "transposed"])
def test_layouts_equal_a_contiguous_copy(name, layout):
    """channels_last, a stride-0 (expanded) dim, a view with a storage offset: the value and gradient of
    a contiguous copy."""
    x, labels = make((2, 5, 3, 4))
    function = bound(name)
    base = x.clone().requires_grad_()
    strided, contiguous = _layouts(base)[layout]
    assert not strided.is_contiguous() or strided.storage_offset() > 0
    value, copied = function(strided, labels), function(contiguous, labels)
    torch.testing.assert_close(value, copied)
    grads = [torch.autograd.grad(v, base, retain_graph=True)[0] for v in (value, copied)]
    torch.testing.assert_close(*grads)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("resized", [False, True])
def test_integer_label_dtypes(name, dtype, resized):
    """uint8 to int64 labels (ignore_index 255 included; resized by nearest neighbour or not): the value
    and gradient of int64 labels."""
    x, labels = make((2, 5, 3, 4))
    if resized:
        labels = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    function = bound(name)
    expected = value_and_grad(lambda e: function(e, labels), x)
    got = value_and_grad(lambda e: function(e, labels.to(dtype)), x)
    torch.testing.assert_close(got, expected)
