"""Class-weight estimators and the streaming class-frequency counter."""

from __future__ import annotations

import pytest
import torch

import seglosses as sl

COUNTS = [10, 30, 60]  # N = 100, f = (0.1, 0.3, 0.6)


@pytest.mark.parametrize(
    "method, expected",
    [
        ("inverse_frequency", [1 / 0.1, 1 / 0.3, 1 / 0.6]),
        ("balanced", [100 / (3 * 10), 100 / (3 * 30), 100 / (3 * 60)]),
        ("median_frequency", [0.3 / 0.1, 0.3 / 0.3, 0.3 / 0.6]),
        ("effective_number", [(1 - 0.99) / (1 - 0.99**n) for n in COUNTS]),
    ],
)
def test_hand_values(method, expected):
    weights = sl.class_weights(COUNTS, method=method, beta=0.99, normalize=False)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32))
    normalized = sl.class_weights(COUNTS, method=method, beta=0.99)
    torch.testing.assert_close(normalized.sum(), torch.tensor(3.0))
    torch.testing.assert_close(normalized / normalized[0], weights / weights[0])


def test_median_of_even_count_is_mean_of_middle_two():
    """f = (0.1, 0.2, 0.3, 0.4): median 0.25."""
    weights = sl.class_weights([10, 20, 30, 40], method="median_frequency", normalize=False)
    torch.testing.assert_close(weights, torch.tensor([2.5, 1.25, 0.25 / 0.3, 0.625]))


def test_absent_class_gets_zero_and_a_warning():
    with pytest.warns(UserWarning, match=r"classes \[1\] have no pixels"):
        weights = sl.class_weights([10, 0, 30], method="inverse_frequency")
    assert weights[1] == 0 and torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(3.0))


def test_effective_number_default_beta_and_limit():
    """β = 0 gives uniform weights; the default β = 0.9999 is Cui et al.'s."""
    torch.testing.assert_close(sl.class_weights(COUNTS, method="effective_number", beta=0.0), torch.ones(3))
    w = sl.class_weights([1, 10**6], method="effective_number", normalize=False)
    torch.testing.assert_close(w, torch.tensor([1.0, (1 - 0.9999) / (1 - 0.9999**10**6)]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"counts": [0, 0]}, "at least one class with a non-zero count"),
        ({"counts": [-1, 2]}, "non-negative"),
        ({"counts": [[1, 2]]}, r"shape \(C,\)"),
        ({"counts": [1, 2], "method": "inverse"}, "did you mean 'inverse_frequency'"),
        ({"counts": [1, 2], "beta": 1.0}, r"beta in \[0, 1\)"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(sl.SegLossError, match=message):
        sl.class_weights(**kwargs)


def test_class_frequency_counts_and_ignores():
    counter = sl.ClassFrequency(3, ignore_index=255)
    counter.update(torch.tensor([[0, 0, 1], [2, 255, 0]]))
    counter.update(torch.tensor([[[2, 2]]], dtype=torch.uint8))
    assert counter.compute().tolist() == [3, 1, 3]
    assert counter.compute().dtype == torch.int64


def test_class_frequency_state_dict_round_trip():
    counter = sl.ClassFrequency(4)
    counter.update(torch.randint(0, 4, (2, 8, 8)))
    restored = sl.ClassFrequency(4)
    restored.load_state_dict(counter.state_dict())
    assert torch.equal(restored.compute(), counter.compute())
    assert int(restored.compute().sum()) == 128


def test_class_frequency_errors():
    with pytest.raises(sl.SegLossError, match=r"class indices in \[0, 3\).*\[3\]"):
        sl.ClassFrequency(3).update(torch.tensor([0, 3]))
    with pytest.raises(sl.SegLossError, match="integer target"):
        sl.ClassFrequency(3).update(torch.tensor([0.0, 1.0]))
    with pytest.raises(sl.SegLossError, match="num_classes"):
        sl.ClassFrequency(0)


def test_counter_feeds_estimator():
    counter = sl.ClassFrequency(2)
    counter.update(torch.tensor([0, 0, 0, 1]))
    torch.testing.assert_close(
        sl.class_weights(counter.compute(), method="balanced", normalize=False), torch.tensor([4 / 6, 4 / 2])
    )
