"""Input checks without host synchronisation (issue 17): on CUDA the data checks are computed on the
device and judged at a later call. Here the CPU stands in for CUDA (``DEFERRED_DEVICES``), so the
mechanism and every message are tested without a GPU; ``tests/test_cuda.py`` runs the real thing."""

from __future__ import annotations

import pytest
import torch

import seglosses as sl
import seglosses.functional as SF
from seglosses._core import deferred

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, on the Triton interpreter's lanes


@pytest.fixture(autouse=True)
def cpu_defers(monkeypatch):
    monkeypatch.setattr(deferred, "DEFERRED_DEVICES", ("cpu",))
    deferred._PENDING.clear()
    yield
    deferred._PENDING.clear()


def good():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 4, 4, generator=gen), torch.randint(0, 3, (2, 4, 4), generator=gen)


def test_a_bad_input_raises_at_the_next_call_not_its_own():
    z, t = good()
    bad = z.clone()
    bad[0, 1, 2, 2] = torch.nan
    value = SF.dice_loss(bad, t)  # no verdict yet: it would need a host synchronisation
    assert torch.isnan(value)
    with pytest.raises(
        sl.SegLossError, match=r"expected finite logits, got NaN or \+inf at 1 pixel .*earlier call"
    ):
        SF.cross_entropy_loss(z, t)
    assert torch.isfinite(SF.cross_entropy_loss(z, t))  # reported once, then forgotten


def test_flush_waits_and_raises():
    z, t = good()
    t[0, 0, 0] = 7
    with sl.input_checks(False):
        sl.flush_input_checks()  # nothing pending
    SF.focal_loss(z, t.clamp_max(2))
    sl.flush_input_checks()  # a good input: no error
    with sl.input_checks(False):  # checks off queue nothing
        SF.cross_entropy_loss(z, t.clamp_max(2))
    assert not deferred._PENDING
    with pytest.raises(
        (RuntimeError, IndexError)
    ):  # torch's own kernel refuses 7 at a valid pixel (CUDA: a device assert)
        SF.focal_loss(z, t)
    with pytest.raises(sl.SegLossError, match=r"target class indices in \[0, 3\), got 1 pixel outside"):
        sl.flush_input_checks()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda z, t: (z, torch.where(t == 0, 255, t)), None),  # ignored pixels are legal
        (lambda z, t: (z.index_fill(1, torch.tensor([0, 1, 2]), -torch.inf), t),
         "at least one finite logits value per valid pixel .*got 32 pixels whose logits are all -inf"),
        (lambda z, t: (z.index_fill(1, torch.tensor([0]), -torch.inf), torch.zeros_like(t)),
         r"finite logits where the loss takes log p \(the target puts mass there.*got 32 -inf logits values"),
        (lambda z, t: (z.index_fill(1, torch.tensor([0]), -torch.inf), torch.ones_like(t)), None),
    ],
)  # fmt: skip
def test_index_target_verdicts(make, message):
    z, t = make(*good())
    SF.cross_entropy_loss(z, t, ignore_index=255)
    if message is None:
        sl.flush_input_checks()
    else:
        with pytest.raises(sl.SegLossError, match=message):
            sl.flush_input_checks()


def test_label_smoothing_and_dense_and_binary_verdicts():
    z, t = good()
    z = z.index_fill(1, torch.tensor([2]), -torch.inf)
    SF.cross_entropy_loss(z, torch.zeros_like(t), label_smoothing=0.1)
    with pytest.raises(
        sl.SegLossError, match="label smoothing puts mass on every class.*32 -inf logits values"
    ):
        sl.flush_input_checks()
    soft = torch.full((2, 3, 4, 4), 0.6)
    SF.dice_loss(good()[0], soft)
    sl.flush_input_checks()  # 0.6 is in range: nothing to report
    SF.dice_loss(good()[0], soft * 2)
    with pytest.raises(
        sl.SegLossError, match=r"one-hot or soft target values in \[0, 1\], got 96 values outside"
    ):
        sl.flush_input_checks()
    logits = good()[0]
    SF.binary_cross_entropy_loss(logits.index_fill(1, torch.tensor([0]), -torch.inf), torch.ones_like(logits))
    with pytest.raises(sl.SegLossError, match="the target puts mass there.*got 32 -inf logits values"):
        sl.flush_input_checks()
    target = torch.randint(0, 2, logits.shape)
    target[0, 0, 0, 0] = 3
    SF.binary_dice_loss(logits, target, ignore_index=255)
    with pytest.raises(
        sl.SegLossError, match=r"binary target values in \[0, 1\] or ignore_index = 255, got 1 values"
    ):
        sl.flush_input_checks()


def test_deferred_values_equal_the_synchronous_ones(monkeypatch):
    z, t = good()
    y = z > 0
    deferred_values = [SF.cross_entropy_loss(z, t), SF.dice_loss(z, t), SF.binary_dice_loss(z, y)]
    monkeypatch.setattr(deferred, "DEFERRED_DEVICES", ())
    assert torch.equal(deferred_values[0], SF.cross_entropy_loss(z, t))
    assert torch.equal(deferred_values[1], SF.dice_loss(z, t))
    assert torch.equal(deferred_values[2], SF.binary_dice_loss(z, y))
    sl.flush_input_checks()


def test_pending_checks_are_bounded(monkeypatch):
    monkeypatch.setattr(deferred, "MAX_PENDING", 3)
    z, t = good()
    for _ in range(10):
        SF.cross_entropy_loss(z, t)
    assert len(deferred._PENDING) <= 3


KERNEL_CHECKED = {
    "ce": lambda z, t: SF.cross_entropy_loss(z, t, ignore_index=255),
    "ce(weight)": lambda z, t: SF.cross_entropy_loss(z, t, weight=[1.0, 2.0, 3.0], ignore_index=255),
    "focal": lambda z, t: SF.focal_loss(z, t, ignore_index=255),
    "difficulty_ce": lambda z, t: SF.difficulty_ce_loss(z, t, ignore_index=255),
    "dice": lambda z, t: SF.dice_loss(z, t, ignore_index=255),
    "tversky": lambda z, t: SF.tversky_loss(z, t, ignore_index=255),
}


@pytest.mark.parametrize("name", KERNEL_CHECKED)
def test_the_triton_kernels_count_the_checks_as_they_read(name, monkeypatch):
    """Deferred, the checks of an index target are counted inside the kernel that reads the logits (no
    pass of their own), with the messages of the synchronous checks."""
    pytest.importorskip("triton")
    from seglosses._core import targets

    def no_extra_pass(*args):
        raise AssertionError("the data checks took a pass of their own")

    monkeypatch.setattr(targets, "_defer_index_checks", no_extra_pass)
    fn = KERNEL_CHECKED[name]
    z, t = good()
    t[0, 0, 0] = 255
    with sl.backend("triton"):
        fn(z, t)
        sl.flush_input_checks()  # clean input
        bad = z.clone()
        bad[1, 2, 3, 3] = torch.inf
        fn(bad, t)
        with pytest.raises(sl.SegLossError, match=r"expected finite logits, got NaN or \+inf at 1 pixel"):
            sl.flush_input_checks()
        out_of_range = t.clone()
        out_of_range[1, 1, 1] = 3
        assert torch.isnan(fn(z, out_of_range))  # the kernel's answer: NaN, never a plausible number
        with pytest.raises(
            sl.SegLossError, match=r"class indices in \[0, 3\) or ignore_index = 255, got 1 pixel"
        ):
            sl.flush_input_checks()
        empty = z.clone()
        empty[0, :, 2, 2] = -torch.inf
        fn(empty, t)
        with pytest.raises(sl.SegLossError, match="got 1 pixel whose logits are all -inf"):
            sl.flush_input_checks()
        at_target = z.clone()
        at_target[0, t[0, 1, 1], 1, 1] = -torch.inf
        fn(at_target, t)
        if name in ("dice", "tversky"):  # no log p: legal
            sl.flush_input_checks()
        else:
            with pytest.raises(sl.SegLossError, match="the target puts mass there.*got 1 -inf logits value"):
                sl.flush_input_checks()


def test_options_the_kernels_do_not_serve_keep_the_pass_of_their_own():
    pytest.importorskip("triton")
    z, t = good()
    z = z.index_fill(1, torch.tensor([2]), -torch.inf)
    with sl.backend("triton"):
        SF.cross_entropy_loss(z, torch.zeros_like(t), label_smoothing=0.1)
    with pytest.raises(sl.SegLossError, match="label smoothing puts mass on every class"):
        sl.flush_input_checks()
