"""The backend switch, and every fused implementation held to the plain torch reference (issue 17).

The option grids run for both fused backends, ``"cpu"`` (the fused eager-CPU Functions at any size; on a
CUDA machine the reference serves CUDA tensors there) and ``"triton"`` (the kernels). Without a GPU the
Triton kernels run under Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set in
``conftest.py``); on a GPU the same tests run them on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch

import seglosses as sl
import seglosses.functional as SF
from seglosses._core import backend as backend_module

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, on the interpreter's masked lanes

LOSSES = {
    "ce": lambda z, t, **k: SF.cross_entropy_loss(z, t, **k),
    "ce(weight)": lambda z, t, **k: SF.cross_entropy_loss(
        z, t, weight=torch.linspace(0.5, 2.0, z.shape[1], dtype=torch.float64).tolist(), **k
    ),
    "focal": lambda z, t, **k: SF.focal_loss(z, t, gamma=2.0, **k),
    "focal(gamma=0.5, alpha)": lambda z, t, **k: SF.focal_loss(
        z, t, gamma=0.5, alpha=torch.linspace(0.2, 1.0, z.shape[1], dtype=torch.float64).tolist(), **k
    ),
    "difficulty_ce": lambda z, t, **k: SF.difficulty_ce_loss(z, t, **k),
    "difficulty_ce(detach)": lambda z, t, **k: SF.difficulty_ce_loss(z, t, detach=True, **k),
    "dice": lambda z, t, **k: SF.dice_loss(z, t, **k),
    "jaccard(batch)": lambda z, t, **k: SF.jaccard_loss(z, t, batch=True, **k),
    "tversky": lambda z, t, **k: SF.tversky_loss(z, t, alpha=0.3, beta=0.7, **k),
    "focal_tversky": lambda z, t, **k: SF.focal_tversky_loss(z, t, **k),
    "gdl": lambda z, t, **k: SF.generalized_dice_loss(z, t, **k),
}


def case(shape, dtype=torch.float32, ignore=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    if ignore:
        t.view(-1)[::7] = 255
    return z.to(DEVICE), t.to(DEVICE)


def value_and_grad(fn, z, t, name, reduction="mean", **kwargs):
    z = z.detach().requires_grad_()
    loss = fn(z, t, reduction=reduction, **kwargs)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).view_as(loss)
    (grad,) = torch.autograd.grad((loss * weights).sum(), z)
    return loss.detach(), grad


@pytest.fixture(params=["cpu", "triton"])
def fused(request):
    """The fused backend under test."""
    return request.param


def compare(name, z, t, rtol=1e-5, atol=1e-6, fused="triton", **kwargs):
    with sl.backend("reference"):
        expected = value_and_grad(LOSSES[name], z, t, name, **kwargs)
    with sl.backend(fused):
        got = value_and_grad(LOSSES[name], z, t, name, **kwargs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shape", [(2, 5, 9, 7), (1, 3, 4, 5, 6), (2, 2, 33)], ids=["2d", "3d", "1d-2cls"])
def test_fused_equals_the_reference(name, shape, fused):
    compare(name, *case(shape, ignore=True), ignore_index=255, fused=fused)


@pytest.mark.parametrize("name", ["ce", "focal", "dice"])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_fused_reductions(name, reduction, fused):
    compare(name, *case((2, 4, 6, 5)), reduction=reduction, fused=fused)


@pytest.mark.parametrize("name", ["ce", "focal(gamma=0.5, alpha)", "difficulty_ce", "dice", "tversky"])
def test_fused_float64_is_float64_accurate(name, fused):
    compare(
        name,
        *case((2, 4, 6, 5), dtype=torch.float64, ignore=True),
        rtol=1e-12,
        atol=1e-13,
        ignore_index=255,
        fused=fused,
    )


@pytest.mark.parametrize("name", ["ce", "focal", "dice"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_inputs_compute_in_float32(name, dtype):
    z, t = case((2, 4, 6, 5), dtype=dtype)
    compare(name, z, t, rtol=2e-2, atol=2e-3)
    with sl.backend("triton"):
        assert value_and_grad(LOSSES[name], z, t, name)[1].dtype == dtype


@pytest.mark.parametrize("name", ["ce", "focal", "dice"])
def test_fused_takes_any_layout(name, fused):
    z, t = case((2, 4, 6, 5))
    layouts = [(z.to(memory_format=torch.channels_last), t.transpose(1, 2).contiguous().transpose(1, 2))]
    for z_layout, t_layout in layouts + [(z[:, :, ::2], t[:, ::2])]:
        compare(name, z_layout, t_layout, fused=fused)


@pytest.mark.parametrize("name", ["ce", "focal", "dice"])
def test_triton_several_blocks_and_a_ragged_last_one(name, monkeypatch):
    monkeypatch.setattr(
        "seglosses.ops.triton_softmax._grid_config", lambda c, p: (triton.next_power_of_2(c), 16)
    )
    compare(name, *case((2, 3, 7, 11), ignore=True), ignore_index=255)


@pytest.mark.parametrize("name", ["ce", "focal", "dice"])
def test_fused_empty_batch_and_all_ignored(name, fused):
    z, t = case((0, 3, 4, 4))
    with sl.backend(fused):
        loss, grad = value_and_grad(LOSSES[name], z, t, name)
    assert loss.item() == 0 and grad.shape == z.shape
    z, t = case((2, 3, 4, 4))
    with sl.backend(fused):
        loss, grad = value_and_grad(LOSSES[name], z, torch.full_like(t, 255), name, ignore_index=255)
    assert torch.isfinite(loss).all() and not grad.any()


@pytest.mark.parametrize("name", ["ce", "focal", "dice"])
def test_fused_nan_at_ignored_pixels_reaches_nothing(name, fused):
    z, t = case((2, 3, 4, 4), ignore=True)
    z = z.clone()
    z[:, 0][t == 255] = torch.nan
    sl.set_input_checks(False)  # checks on refuse a NaN logit anywhere
    compare(name, z, t, ignore_index=255, fused=fused)
    with sl.backend(fused):
        loss, grad = value_and_grad(LOSSES[name], z, t, name, ignore_index=255)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", ["ce", "focal", "dice"])
def test_triton_an_unchecked_label_out_of_range_gives_nan_not_a_number(name):
    z, t = case((1, 3, 4, 4))
    t[0, 1, 1] = 7
    with sl.backend("triton"), sl.input_checks(False):
        assert torch.isnan(LOSSES[name](z, t)).all()


def test_triton_is_deterministic_run_to_run():
    z, t = case((2, 5, 16, 16), ignore=True)
    with sl.backend("triton"):
        first = value_and_grad(LOSSES["dice"], z, t, "dice", ignore_index=255)
        second = value_and_grad(LOSSES["dice"], z, t, "dice", ignore_index=255)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


GUARD, MARGIN = 12345.0, 64


@pytest.fixture
def guarded_outputs(monkeypatch):
    """Every kernel output is a view into a buffer whose margins hold GUARD: a write outside the output
    (which the interpreter does not report) changes a margin. Yields the list of (buffer, size)."""
    from seglosses.ops import triton_sigmoid, triton_softmax

    buffers = []

    def guarded(like, shape=None, dtype=None):
        shape = tuple(like.shape if shape is None else shape)
        size = int(torch.Size(shape).numel())
        buffer = torch.full((size + 2 * MARGIN,), GUARD, dtype=dtype or like.dtype, device=like.device)
        buffers.append((buffer, size))
        return buffer[MARGIN : MARGIN + size].view(shape)

    monkeypatch.setattr(triton_softmax, "kernel_output", guarded)
    monkeypatch.setattr(triton_sigmoid, "kernel_output", guarded)
    return buffers


def test_triton_kernels_write_nothing_outside_their_outputs(guarded_outputs, monkeypatch):
    monkeypatch.setattr(
        "seglosses.ops.triton_softmax._grid_config", lambda c, p: (triton.next_power_of_2(c), 16)
    )
    monkeypatch.setattr("seglosses.ops.triton_sigmoid._grid_config", lambda c, p: (1, 16))
    z, t = case((2, 3, 5, 7), ignore=True)
    y = (z > 0).float()
    dense = torch.softmax(z, 1)
    with sl.backend("triton"):
        for loss in (
            SF.focal_loss(z.requires_grad_(), t, ignore_index=255),
            SF.dice_loss(z, t, ignore_index=255),
            SF.focal_loss(z, dense),
            SF.dice_loss(z, dense),
            SF.binary_focal_loss(z, y),
            SF.binary_dice_loss(z, t.unsqueeze(1).expand_as(z) % 2, ignore_index=255),
        ):
            torch.autograd.grad(loss, z)
    assert len(guarded_outputs) >= 14  # every kernel's outputs, forward and backward
    for buffer, size in guarded_outputs:
        assert (buffer[:MARGIN] == GUARD).all() and (buffer[MARGIN + size :] == GUARD).all()


def test_triton_kernels_read_nothing_outside_their_tensors():
    """The logits and labels are views into buffers whose margins hold NaN / an out-of-range label: an
    out-of-bounds read (which the interpreter does not report) would make a value or gradient NaN."""
    from seglosses.ops import triton_softmax

    shape, margin = (2, 3, 37), 64
    z, t = case(shape)
    z_buffer = torch.full((z.numel() + 2 * margin,), torch.nan, device=DEVICE)
    t_buffer = torch.full((t.numel() + 2 * margin,), 99, dtype=t.dtype, device=DEVICE)
    z_view = z_buffer[margin : margin + z.numel()].view(shape).copy_(z).requires_grad_()
    t_view = t_buffer[margin : margin + t.numel()].view(t.shape).copy_(t)
    loss, _, term_checks = triton_softmax.softmax_term(z_view, t_view, 0, False, 2.0, 0.0, False, True)
    sums, _, sums_checks = triton_softmax.softmax_region_sums(z_view, t_view, 0, False, True)
    grads = torch.autograd.grad([loss.sum(), sums[:, :2].sum()], z_view)
    for result in (loss, sums, *grads):
        assert torch.isfinite(result).all()
    assert not term_checks.any() and not sums_checks.any()  # nothing NaN or out of range was read


def test_triton_custom_ops_compile_with_fullgraph():
    """Every kernel is a custom op with a fake implementation: torch.compile traces the losses through
    them in one graph, values and gradients as in eager mode."""
    z, t = case((2, 3, 4, 4))
    y, dense = (z > 0).float(), torch.softmax(z, 1)

    def step(a):
        return (
            SF.dice_loss(a, t) + SF.focal_loss(a, t) + SF.cross_entropy_loss(a, dense)
            + SF.jaccard_loss(a, dense) + SF.binary_dice_loss(a, y) + SF.binary_cross_entropy_loss(a, y)
        )  # fmt: skip

    with sl.backend("triton"):
        eager = value_and_grad(lambda a, b, **k: step(a), z, t, "all")
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        got = value_and_grad(lambda a, b, **k: compiled(a), z, t, "all")
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)


def test_backend_names_and_errors():
    assert sl.get_backend() == "auto"
    with sl.backend("reference"):
        assert sl.get_backend() == "reference"
        with sl.backend("cpu"):
            assert sl.get_backend() == "cpu"
        assert sl.get_backend() == "reference"
    assert sl.get_backend() == "auto"
    with pytest.raises(sl.SegLossError, match="expected a backend name in .*got 'cuda'"):
        sl.set_backend("cuda")
    with pytest.raises(sl.SegLossError):
        with sl.backend("nope"):
            pass  # pragma: no cover
    assert sl.get_backend() == "auto"


def test_one_decision_for_every_primitive(monkeypatch):
    big, tiny = torch.zeros(2, 5, 128, 128), torch.zeros(2, 5, 4, 4)
    assert backend_module.implementation(big) == "cpu"
    assert backend_module.implementation(tiny) == "reference"
    with sl.backend("cpu"):
        assert backend_module.implementation(tiny) == "cpu"
    with sl.backend("reference"):
        assert backend_module.implementation(big) == "reference"
    with sl.backend("triton"):
        assert backend_module.implementation(tiny) == "triton"
        labels = torch.randint(0, 5, (2, 4, 4))
        logits = torch.randn(2, 5, 4, 4)
        by_func = torch.func.grad(lambda z: SF.dice_loss(z, labels))(logits)  # torch.func: the reference
        (by_autograd,) = torch.autograd.grad(SF.dice_loss(logits.requires_grad_(), labels), logits)
        torch.testing.assert_close(by_func, by_autograd)
        monkeypatch.delenv("TRITON_INTERPRET")
        if DEVICE == "cpu":
            with pytest.raises(sl.SegLossError, match="CUDA tensors for backend 'triton'"):
                backend_module.implementation(tiny)


BINARY = {
    "binary_dice": SF.binary_dice_loss,
    "binary_jaccard(batch)": lambda z, t, **k: SF.binary_jaccard_loss(z, t, batch=True, **k),
    "binary_tversky": lambda z, t, **k: SF.binary_tversky_loss(z, t, alpha=0.3, beta=0.7, **k),
    "binary_focal_tversky": SF.binary_focal_tversky_loss,
    "binary_gdl": SF.binary_generalized_dice_loss,
}


def binary_case(shape, kind, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    if kind == "soft":
        t = torch.rand(shape, generator=gen)
    elif kind == "bool":
        t = torch.rand(shape, generator=gen) > 0.6
    else:  # integer with ignored elements
        t = torch.randint(0, 2, shape, generator=gen)
        t.view(-1)[::5] = 255
    return z.to(DEVICE), t.to(DEVICE)


def compare_binary(name, z, t, rtol=1e-5, atol=1e-6, fused="triton", **kwargs):
    fn = BINARY[name]
    results = []
    for chosen in ("reference", fused):
        with sl.backend(chosen):
            zz = z.detach().requires_grad_()
            loss = fn(zz, t, reduction="none", **kwargs)
            weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device)
            results.append((loss.detach(), torch.autograd.grad((loss * weights.view_as(loss)).sum(), zz)[0]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("kind", ["soft", "bool", "ignored"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (1, 2, 4, 5, 6)], ids=["2d", "3d"])
def test_fused_sigmoid_statistics_equal_the_reference(name, kind, shape, fused):
    z, t = binary_case(shape, kind)
    compare_binary(name, z, t, fused=fused, **({"ignore_index": 255} if kind == "ignored" else {}))


def test_triton_sigmoid_statistics_dtypes_layouts_blocks_and_nan(monkeypatch):
    z, t = binary_case((2, 3, 6, 5), "ignored", dtype=torch.float64)
    compare_binary("binary_dice", z, t, rtol=1e-12, atol=1e-13, ignore_index=255)
    z16, t16 = binary_case((2, 3, 6, 5), "soft", dtype=torch.bfloat16)
    compare_binary("binary_dice", z16, t16, rtol=2e-2, atol=2e-3)
    z, t = binary_case((2, 3, 6, 5), "bool")
    compare_binary("binary_tversky", z.to(memory_format=torch.channels_last), t)
    monkeypatch.setattr("seglosses.ops.triton_sigmoid._grid_config", lambda c, p: (1, 16))
    z, t = binary_case((2, 2, 7, 11), "ignored")
    z[t == 255] = torch.nan  # ignored: reaches nothing
    sl.set_input_checks(False)
    compare_binary("binary_dice", z, t, ignore_index=255)
    z[0, 0, 0, 0] = torch.inf  # invalid: NaN, as the reference gives
    t[0, 0, 0, 0] = 1
    with sl.backend("triton"):
        assert torch.isnan(SF.binary_dice_loss(z, t, ignore_index=255))


BINARY_TERMS = {
    "bce": SF.binary_cross_entropy_loss,
    "bce(pos_weight, weight, smoothing)": lambda z, t, **k: SF.binary_cross_entropy_loss(
        z,
        t,
        pos_weight=[2.0, 0.5, 1.0][: z.shape[1]],
        weight=[1.0, 3.0, 0.5][: z.shape[1]],
        label_smoothing=0.1,
        **k,
    ),
    "binary_focal": SF.binary_focal_loss,
    "binary_focal(gamma=0.5, alpha)": lambda z, t, **k: SF.binary_focal_loss(
        z, t, gamma=0.5, alpha=0.25, **k
    ),
    "binary_focal(alpha per channel)": lambda z, t, **k: SF.binary_focal_loss(
        z, t, gamma=1.0, alpha=[0.2, 0.7, 0.5][: z.shape[1]], **k
    ),
}


@pytest.mark.parametrize("name", BINARY_TERMS)
@pytest.mark.parametrize("kind", ["soft", "bool", "ignored"])
def test_fused_sigmoid_terms_equal_the_reference(name, kind, fused):
    z, t = binary_case((2, 3, 9, 7), kind)
    z[0, 0, 0, :3] = torch.tensor([-30.0, 30.0, -200.0])  # saturated
    BINARY[name] = BINARY_TERMS[name]
    try:
        compare_binary(name, z, t, fused=fused, **({"ignore_index": 255} if kind == "ignored" else {}))
    finally:
        del BINARY[name]


@pytest.mark.parametrize("name", ["bce", "binary_focal(gamma=0.5, alpha)"])
def test_triton_sigmoid_terms_dtypes_and_infinities(name):
    BINARY[name] = BINARY_TERMS[name]
    try:
        z, t = binary_case((2, 2, 6, 5), "ignored", dtype=torch.float64)
        compare_binary(name, z, t, rtol=1e-12, atol=1e-13, ignore_index=255)
        z, t = binary_case((2, 2, 6, 5), "soft", dtype=torch.bfloat16)
        compare_binary(name, z, t, rtol=2e-2, atol=2e-3)
        z, t = binary_case((1, 2, 4, 4), "bool")
        z[t == 0] = -torch.inf  # legal: target 0 there
        compare_binary(name, z, t)
        sl.set_input_checks(False)
        z[0, 0, 0, 0], t[0, 0, 0, 0] = torch.inf, True
        with sl.backend("triton"):
            assert torch.isnan(BINARY[name](z, t))
    finally:
        del BINARY[name]


def test_triton_sigmoid_term_is_relatively_exact_at_saturated_logits():
    """-log σ(z) ≈ exp(-z) for large z: the log1p of a tiny exp(-|z|) must keep its digits."""
    z = torch.tensor([[[5.0, 20.0, 40.0, -20.0, -40.0]]], dtype=torch.float64, device=DEVICE)
    t = torch.tensor([[[1.0, 1.0, 1.0, 0.0, 0.0]]], dtype=torch.float64, device=DEVICE)
    with sl.backend("triton"):
        got = SF.binary_cross_entropy_loss(z, t, reduction="none")
    expected = torch.nn.functional.softplus(torch.where(t == 1, -z, z))  # exact (torch's BCE is not, here)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "fn, binary",
    [(SF.cross_entropy_loss, False), (SF.focal_loss, False), (SF.difficulty_ce_loss, False),
     (SF.dice_loss, False), (SF.binary_dice_loss, True), (SF.binary_cross_entropy_loss, True),
     (SF.binary_focal_loss, True)],
)  # fmt: skip
def test_triton_double_backward_is_the_references(fn, binary):
    """Asked for a graph (create_graph=True), a kernel's backward differentiates the primitive's plain
    torch formula, so second derivatives are those of the reference."""
    z, t = case((2, 3, 4, 5), dtype=torch.float64, ignore=not binary)
    target, kwargs = ((z > 0).double(), {}) if binary else (t, {"ignore_index": 255})
    results = []
    for chosen in ("reference", "triton"):
        with sl.backend(chosen):
            zz = z.detach().requires_grad_()
            (grad,) = torch.autograd.grad(fn(zz, target, **kwargs), zz, create_graph=True)
            (second,) = torch.autograd.grad((grad * grad).sum(), zz)
            results.append((grad.detach(), second))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


DENSE = {
    "ce": SF.cross_entropy_loss,
    "ce(weight, smoothing)": lambda z, t, **k: SF.cross_entropy_loss(
        z, t, weight=[0.5, 2.0, 1.0][: z.shape[1]], label_smoothing=0.1, **k
    ),
    "focal": SF.focal_loss,
    "focal(gamma=0.5, alpha)": lambda z, t, **k: SF.focal_loss(
        z, t, gamma=0.5, alpha=[0.2, 0.5, 0.3][: z.shape[1]], **k
    ),
    "dice": SF.dice_loss,
    "tversky(batch)": lambda z, t, **k: SF.tversky_loss(z, t, alpha=0.3, beta=0.7, batch=True, **k),
}


def dense_case(shape, soft, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    if soft:
        y = torch.softmax(2 * torch.randn(shape, generator=gen, dtype=torch.float64), 1).to(dtype)
        y[:, :, 0] = 0.0  # pixels without target mass
    else:
        y = torch.nn.functional.one_hot(
            torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen), shape[1]
        )
        y = y.movedim(-1, 1).to(dtype)
    return z.to(DEVICE), y.to(DEVICE)


def compare_dense(name, z, y, rtol=1e-5, atol=1e-6, fused="triton"):
    results = []
    for chosen in ("reference", fused):
        with sl.backend(chosen):
            zz = z.detach().requires_grad_()
            loss = DENSE[name](zz, y, reduction="none")
            weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device)
            results.append((loss.detach(), torch.autograd.grad((loss * weights.view_as(loss)).sum(), zz)[0]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("soft", [True, False], ids=["soft", "one-hot"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (1, 3, 4, 5, 6)], ids=["2d", "3d"])
def test_fused_dense_targets_equal_the_reference(name, soft, shape, fused):
    compare_dense(name, *dense_case(shape, soft), fused=fused)


def test_triton_dense_targets_dtypes_layouts_and_infinities():
    z, y = dense_case((2, 3, 6, 5), True, dtype=torch.float64)
    for name in ("ce", "focal(gamma=0.5, alpha)", "dice"):
        compare_dense(name, z, y, rtol=1e-12, atol=1e-13)
    z, y = dense_case((2, 3, 6, 5), True, dtype=torch.bfloat16)
    compare_dense("focal", z, y, rtol=2e-2, atol=2e-3)
    z, y = dense_case((2, 3, 6, 5), False)
    compare_dense("ce", z.to(memory_format=torch.channels_last), y)
    z[:, 0][y[:, 0] == 0] = -torch.inf  # legal: no target mass there
    for name in ("ce", "focal", "dice"):
        compare_dense(name, z, y)
    sl.set_input_checks(False)
    z[0, 1, 0, 0] = torch.nan
    with sl.backend("triton"):
        assert torch.isnan(DENSE["ce"](z, y, reduction="none")[0, 0, 0])
    y_grad = y.clone().requires_grad_()
    grads = []
    for chosen in ("reference", "triton"):  # a target that requires a gradient takes the reference
        with sl.backend(chosen):
            grads.append(torch.autograd.grad(SF.cross_entropy_loss(z.nan_to_num(), y_grad), y_grad)[0])
    torch.testing.assert_close(grads[1], grads[0])
    assert grads[0].abs().sum() > 0
