"""Regression guard (memory, not time): index targets are never expanded to a one-hot tensor.

Each softmax loss runs forward + backward once on a small input under the profiler; no op that builds a
one-hot tensor (``one_hot``, ``scatter`` into a class dim) may run. The boundary family is exempt: its
formulas need the per-class target maps themselves (distance maps, bands, region terms). So is Lovász:
it sorts every class's errors, so it needs each class's mask in sorted order (a bool tensor), and it
scatters its sorted weights back to the pixels (a permutation, not a one-hot). And TopK: the backward of
``topk`` scatters the kept values' gradient into the pixel grid.
"""

from __future__ import annotations

import pytest
import torch
from helpers import ENTRIES, IGNORE, make_inputs
from torch.profiler import ProfilerActivity, profile

DENSE_BY_NATURE = {"boundary", "hausdorff_dt", "boundary_iou", "active_contour", "lovasz", "topk_ce"}
ONE_HOT_OPS = {"aten::one_hot", "aten::scatter", "aten::scatter_", "aten::eye"}
INDEX_LOSSES = [e for e in ENTRIES if e.domain == "softmax" and e.name not in DENSE_BY_NATURE]


@pytest.mark.parametrize("entry", INDEX_LOSSES, ids=lambda e: e.name)
def test_no_one_hot_for_index_targets(entry):
    logits, target = make_inputs("softmax", (2, 4, 16, 16), ignore_fraction=0.2)
    loss = entry.module(ignore_index=IGNORE)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        loss(logits, target).backward()
    ops = {event.key for event in trace.key_averages()}
    assert not ops & ONE_HOT_OPS, f"{entry.name} ran {sorted(ops & ONE_HOT_OPS)}"


def test_the_guard_sees_a_one_hot():
    """The check itself: a loss written with F.one_hot is caught."""
    logits, target = make_inputs("softmax", (2, 4, 8, 8))
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        one_hot = torch.nn.functional.one_hot(target, 4).movedim(-1, 1)
        (torch.softmax(logits, 1) * one_hot).sum().backward()
    assert "aten::one_hot" in {event.key for event in trace.key_averages()}
