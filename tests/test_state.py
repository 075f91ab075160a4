"""The base of accumulating state (``seglosses._core.state.Accumulator``): declared statistics, reset,
sync, lazily sized per-class shapes, float64 kept under conversions, and checked loading."""

import math

import pytest
import torch

import seglosses as sl
import seglosses.metrics
from seglosses._core.state import Accumulator, PerClass, check_statistic


class Counter(Accumulator):
    lazy_classes = True

    def __init__(self, num_classes=None):
        super().__init__(num_classes, min_classes=2)
        self.add_state("sums", (2, PerClass(1)))
        self.add_state("hits", (PerClass(),), dtype=torch.int64, kind="count")
        self.add_state("seen", dtype=torch.bool, kind="flag")
        self.register_buffer("prior", torch.tensor([0.5, 1.5], dtype=torch.float64))
        self.declare_state("prior", kind="sum", reset=False)


def test_shapes_follow_the_class_count_given_or_found():
    assert Counter(3).sums.shape == (2, 4) and Counter(3).hits.shape == (3,)
    lazy = Counter()
    assert lazy.sums.shape == (2, 0)
    lazy.size_state(5, torch.device("cpu"))
    assert lazy.num_classes == 5 and lazy.sums.shape == (2, 6) and lazy.hits.shape == (5,)
    with pytest.raises(sl.SegLossError, match=r"C = 5 classes .* got C = 4"):
        lazy.size_state(4, torch.device("cpu"))


def test_reset_zeros_the_statistics_and_keeps_configured_values():
    counter = Counter(2)
    counter.sums += 3
    counter.hits += 2
    counter.seen.fill_(True)
    counter.reset()
    assert not counter.sums.any() and not counter.hits.any() and not counter.seen
    assert counter.prior.tolist() == [0.5, 1.5]


def test_synced_is_a_no_op_outside_a_process_group_and_keeps_shapes():
    counter = Counter(2)
    a, b, c = torch.ones(2, 3), torch.arange(4), torch.zeros(())
    out = counter.synced(a, b, c)
    assert [t.shape for t in out] == [a.shape, b.shape, c.shape]
    assert all(torch.equal(x, y) for x, y in zip(out, (a, b, c)))


def test_float64_statistics_stay_float64_under_conversions():
    counter = Counter(2).half()
    assert counter.sums.dtype == torch.float64 and counter.prior.dtype == torch.float64
    assert counter.hits.dtype == torch.int64 and counter.seen.dtype == torch.bool


def test_state_dict_round_trip_and_lazy_sizing_on_load():
    source = Counter(3)
    source.sums += torch.rand(2, 4, dtype=torch.float64)
    source.hits += torch.tensor([1, 2, 3])
    target = Counter()  # C from the state dict
    target.load_state_dict(source.state_dict())
    assert target.num_classes == 3
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


@pytest.mark.parametrize(
    "name, value, message",
    [
        (
            "sums",
            torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
            r"'sums'.*1 negative",
        ),
        (
            "sums",
            torch.tensor([[math.nan, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
            r"'sums'.*1 NaN",
        ),
        ("hits", torch.tensor([1.5, 2.0]), r"integers in Counter's state 'hits'.*1 not an integer"),
        ("seen", torch.tensor(2), r"flags \(0 or 1\)"),
        ("prior", torch.tensor([0.5, math.inf], dtype=torch.float64), r"'prior'.*1 inf"),
        ("prior", torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), r"'prior' of shape \(2,\)"),
        ("sums", torch.zeros(3, 3, dtype=torch.float64), r"'sums' of shape \(2, 3\)"),
        (
            "hits",
            torch.zeros(5, dtype=torch.int64),
            r"C = 2 classes .*C = 5 in 'hits'.*Counter\(num_classes=5\)",
        ),
    ],
)
def test_loading_an_invalid_statistic_raises_and_keeps_the_state(name, value, message):
    counter = Counter(2)
    counter.sums += 1
    state = counter.state_dict()
    state[name] = value
    with pytest.raises(sl.SegLossError, match=message):
        counter.load_state_dict(state)
    assert counter.sums.eq(1).all() and counter.prior.tolist() == [0.5, 1.5]


def test_per_class_statistics_must_agree_on_the_class_count():
    counter = Counter()
    state = Counter(3).state_dict()
    state["hits"] = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(sl.SegLossError, match=r"one class count.*C = 3 in 'sums', C = 4 in 'hits'"):
        counter.load_state_dict(state)


def test_value_statistics_may_be_negative_but_not_infinite():
    check_statistic("M", "v", torch.tensor([-1.0, 2.0]), "value")
    with pytest.raises(sl.SegLossError, match="finite values in M's state 'v', got 1 inf"):
        check_statistic("M", "v", torch.tensor([-1.0, math.inf]), "value")


def test_center_loss_checks_its_centers_on_load_and_resets_them():
    center = sl.CenterLoss(num_classes=2, dim=3)
    center.centers += 1
    bad = {**center.state_dict(), "centers": torch.full((2, 3), math.nan)}
    with pytest.raises(sl.SegLossError, match=r"'centers'.*6 NaN"):
        center.load_state_dict(bad)
    center.reset()
    assert not center.centers.any()


def test_every_stateful_class_uses_the_one_base():
    classes = [
        sl.ClassFrequency,
        sl.metrics.ConfusionMatrix,
        sl.metrics.BoundaryIoU,
        sl.metrics.HausdorffDistance,
    ]
    classes += [
        sl.AdaptiveFocalLoss,
        sl.ClassBalancedFocalLoss,
        sl.FrequencyFocalLoss,
        sl.AdaptiveSmoothingCELoss,
    ]
    classes += [sl.CenterLoss]
    assert all(issubclass(cls, Accumulator) for cls in classes)


@pytest.mark.parametrize("cls", [sl.AdaptiveFocalLoss, sl.FrequencyFocalLoss, sl.ClassBalancedFocalLoss])
def test_a_state_saved_before_the_first_batch_loads_and_stays_lazy(cls):
    """An epoch-0 checkpoint: the per-class statistics have 0 columns; loading them keeps C unknown."""
    restored = cls()
    restored.load_state_dict(cls().state_dict())
    assert restored.num_classes is None
    restored(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)))
    assert restored.num_classes == 3
