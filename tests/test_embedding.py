"""Embedding losses (SPEC section 5): sampler, distances, the four losses, blocking and their peers.

References enumerate pairs and triplets in plain Python over the sampled rows (autograd through the
row arithmetic gives their gradients too); pytorch-metric-learning comparisons run where it is installed.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE
from torch import Tensor

import seglosses as sl
from seglosses._core.registry import list_losses, parse_spec
from seglosses.losses.embedding import (
    CenterLoss,
    ContrastiveLoss,
    PixelInfoNCELoss,
    TripletLoss,
    center_loss,
    contrastive_loss,
    pixel_info_nce_loss,
    triplet_loss,
)
from seglosses.ops import pairwise
from seglosses.ops.pairwise import Distance, pairwise_distances
from seglosses.sampling import sample_pixels

EMBEDDING_ENTRIES = [entry for entry in list_losses(details=True) if entry.domain == "embedding"]
SHAPES = [(2, 3, 7), (2, 3, 5, 6), (1, 3, 3, 4, 5)]


def make_embeddings(shape=(2, 3, 5, 6), *, dtype=torch.float64, ignore_fraction=0.0, seed=0, classes=3):
    """Random embeddings ``(N, D, *S)`` and labels ``(N, *S)`` in ``[0, classes)``, some set to IGNORE."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    n, _, *spatial = shape
    labels = torch.randint(0, classes, (n, *spatial), generator=g)
    if ignore_fraction:
        labels = labels.masked_fill(torch.rand(labels.shape, generator=g) < ignore_fraction, IGNORE)
    return x.requires_grad_(), labels


def flat_rows(x: Tensor, labels: Tensor, ignore_index: Optional[int] = IGNORE):
    """The valid pixels of ``(N, D, *S)`` as rows, in image-then-raster order (the sampler's default)."""
    rows = x.movedim(1, -1).reshape(-1, x.shape[1])
    keep = labels.reshape(-1) != ignore_index if ignore_index is not None else slice(None)
    return rows[keep], labels.reshape(-1)[keep]


# --- plain-Python references ---------------------------------------------------------------------------


def _rows(x: Tensor, normalize: bool) -> List[Tensor]:
    return [row / row.norm() if normalize else row for row in x]


def _dist(a: Tensor, b: Tensor, squared: bool = False) -> Tensor:
    s = ((a - b) ** 2).sum()
    return s if squared else s.sqrt()


def ref_contrastive(x, y, margin=1.0, normalize=False, reduction="mean"):
    rows, labels = _rows(x, normalize), y.tolist()
    terms = []
    for i, j in itertools.combinations(range(len(rows)), 2):
        d = _dist(rows[i], rows[j])
        terms.append(d**2 if labels[i] == labels[j] else torch.clamp(margin - d, min=0) ** 2)
    total = sum(terms, x.sum() * 0)
    return total if reduction == "sum" else total / max(len(terms), 1) if terms else total


def ref_info_nce(x, y, temperature=0.1, reduction="mean"):
    rows, labels = _rows(x, True), y.tolist()
    losses = []
    for a in range(len(rows)):
        positives = [p for p in range(len(rows)) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(len(rows)) if labels[n] != labels[a]]
        if not positives:
            continue
        negative_sum = sum((torch.exp(rows[a] @ rows[n] / temperature) for n in negatives), x.sum() * 0)
        terms = []
        for p in positives:
            e = torch.exp(rows[a] @ rows[p] / temperature)
            terms.append(-torch.log(e / (e + negative_sum)))
        losses.append(sum(terms) / len(terms))
    total = sum(losses, x.sum() * 0)
    return total if reduction == "sum" or not losses else total / len(losses)


def ref_triplet(
    x, y, margin=0.2, mining="hard", squared=False, normalize=True, average="all", reduction="mean"
):
    rows, labels = _rows(x, normalize), y.tolist()
    m = len(rows)
    d = [[_dist(rows[i], rows[j], squared) if i != j else None for j in range(m)] for i in range(m)]
    value = [[None if v is None else float(v.detach()) for v in row] for row in d]
    triplets = []
    for a in range(m):
        positives = [p for p in range(m) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(m) if labels[n] != labels[a]]
        if mining == "hard":
            if positives and negatives:
                p = max(positives, key=lambda j: value[a][j])
                n = min(negatives, key=lambda j: value[a][j])
                triplets.append((a, p, n))
            continue
        for p, n in itertools.product(positives, negatives):
            if mining == "all" or value[a][p] < value[a][n] <= value[a][p] + margin:
                triplets.append((a, p, n))
    losses = [torch.clamp(d[a][p] - d[a][n] + margin, min=0) for a, p, n in triplets]
    total = sum(losses, x.sum() * 0)
    count = len(losses) if average == "all" else sum(float(v.detach()) > 0 for v in losses)
    return total if reduction == "sum" or count == 0 else total / count


def ref_center(x, y, centers, reduction="mean"):
    terms = [0.5 * ((row - centers[label]) ** 2).sum() for row, label in zip(x, y.tolist())]
    total = sum(terms, x.sum() * 0)
    return total if reduction == "sum" or not terms else total / len(terms)


REFERENCES = {
    "contrastive": (contrastive_loss, ref_contrastive, [{}, {"margin": 2.5, "normalize": True}]),
    "info_nce": (pixel_info_nce_loss, ref_info_nce, [{}, {"temperature": 0.5}]),
    "triplet": (
        triplet_loss,
        ref_triplet,
        [
            {},
            {"mining": "hard", "squared": True, "normalize": False, "average": "nonzero", "margin": 1.0},
            {"mining": "all"},
            {"mining": "all", "average": "nonzero", "margin": 0.5, "squared": True},
            {"mining": "semi_hard", "margin": 0.5},
            {"mining": "semi_hard", "margin": 3.0, "normalize": False, "average": "nonzero"},
        ],
    ),
}
CASES = [(name, options) for name, (_, _, variants) in REFERENCES.items() for options in variants]


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_brute_force_reference(name, options, reduction):
    """Values and gradients equal a plain-Python enumeration of pairs / triplets of the valid pixels."""
    function, reference, _ = REFERENCES[name]
    x, labels = make_embeddings((2, 4, 3, 4), ignore_fraction=0.25, seed=3)
    value = function(x, labels, ignore_index=IGNORE, reduction=reduction, **options)
    rows, y = flat_rows(x, labels)
    expected = reference(rows, y, reduction=reduction, **options)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(torch.autograd.grad(value, x)[0], torch.autograd.grad(expected, x)[0])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_center_loss_matches_reference(reduction):
    x, labels = make_embeddings((2, 4, 3, 4), ignore_fraction=0.25, seed=3)
    centers = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    value = center_loss(x, labels, centers, ignore_index=IGNORE, reduction=reduction)
    rows, y = flat_rows(x, labels)
    expected = ref_center(rows, y, centers, reduction=reduction)
    torch.testing.assert_close(value, expected)
    for got, want in zip(
        torch.autograd.grad(value, (x, centers)), torch.autograd.grad(expected, (x, centers))
    ):
        torch.testing.assert_close(got, want)


def test_hand_computed_values():
    """Small cases worked out by hand."""
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.5]])
    y = torch.tensor([0, 0, 1])
    # pairs: (0,1) positive d² = 25; (0,2) negative (1 - 0.5)² = 0.25; (1,2) negative beyond the margin
    torch.testing.assert_close(contrastive_loss(x, y), torch.tensor((25 + 0.25 + 0) / 3))
    torch.testing.assert_close(contrastive_loss(x, y, reduction="sum"), torch.tensor(25 + 0.25))
    # batch-hard, unnormalised: anchor 0 -> p 1 (5), n 2 (0.5): 5 - 0.5 + 0.2; anchor 1 -> p 0 (5), n 2
    # (sqrt(9 + 3.5²)); anchor 2 has no positive
    far = math.sqrt(9 + 3.5**2)
    expected = ((5 - 0.5 + 0.2) + max(0.0, 5 - far + 0.2)) / 2
    torch.testing.assert_close(triplet_loss(x, y, normalize=False), torch.tensor(expected))


# --- sampler -------------------------------------------------------------------------------------------


def test_sampler_default_keeps_every_valid_pixel_in_order():
    x, labels = make_embeddings(ignore_fraction=0.3)
    rows, y = sample_pixels(x, labels, ignore_index=IGNORE)
    want_rows, want_y = flat_rows(x, labels)
    assert torch.equal(rows, want_rows) and torch.equal(y, want_y) and y.dtype == torch.long
    assert rows.requires_grad


def test_sampler_flat_input():
    x = torch.randn(10, 4)
    labels = torch.tensor([0, 1, IGNORE, 1, 0, 2, 2, IGNORE, 0, 1])
    rows, y = sample_pixels(x, labels, ignore_index=IGNORE)
    assert torch.equal(rows, x[labels != IGNORE]) and torch.equal(y, labels[labels != IGNORE])


def test_sampler_resizes_labels_by_nearest_neighbour():
    """Labels at twice (or any other) resolution are resized as SPEC fixes; embeddings never are."""
    x = torch.randn(2, 4, 6, 5)
    labels = torch.randint(0, 3, (2, 12, 9))
    labels[0, :3] = IGNORE
    resized = F.interpolate(labels[:, None].float(), size=(6, 5), mode="nearest")[:, 0].long()
    rows, y = sample_pixels(x, labels, ignore_index=IGNORE)
    want_rows, want_y = flat_rows(x, resized)
    assert torch.equal(rows, want_rows) and torch.equal(y, want_y)


def _group_counts(y: Tensor, image: Tensor) -> Dict[tuple, int]:
    counts: Dict[tuple, int] = {}
    for key in zip(image.tolist(), y.tolist()):
        counts[key] = counts.get(key, 0) + 1
    return counts


def _sample_with_image(x, labels, **options):
    """Sample ``x`` with a tag channel holding each pixel's image and flat index, to recover them."""
    n, _, *spatial = x.shape
    index = torch.arange(labels.numel(), dtype=x.dtype).view(n, 1, *spatial)
    rows, y = sample_pixels(torch.cat([x, index], 1), labels, **options)
    flat = rows[:, -1].long()
    return rows[:, :-1], y, flat // math.prod(spatial), flat


@pytest.mark.parametrize("cap", [1, 3, 10])
def test_sampler_caps_each_image_and_class(cap):
    x, labels = make_embeddings((3, 2, 6, 6), ignore_fraction=0.2, seed=1, classes=4)
    rows, y, image, flat = _sample_with_image(
        x.detach(), labels, ignore_index=IGNORE, max_per_class=cap, generator=torch.Generator().manual_seed(0)
    )
    valid = flat_rows(x.detach(), labels)[1]
    image_all = torch.arange(3).repeat_interleave(36)[labels.reshape(-1) != IGNORE]
    available = _group_counts(valid, image_all)
    got = _group_counts(y, image)
    assert got == {key: min(count, cap) for key, count in available.items()}
    assert torch.equal(labels.reshape(-1)[flat], y)  # every row is a pixel of its own label
    assert IGNORE not in y.tolist() and bool((flat.diff() > 0).all())  # original order, no repeats


def test_sampler_total_budget_is_water_filled():
    """max_total lowers every group to a common level (±1): small groups stay whole."""
    labels = torch.zeros(1, 100, dtype=torch.long)
    labels[0, :5] = 1  # 5 pixels of class 1, 95 of class 0, 0 of class 2 ...
    labels[0, 5:25] = 2  # ... 20 of class 2, 75 of class 0
    x = torch.randn(1, 2, 100)
    _, y = sample_pixels(x, labels, max_total=30, generator=torch.Generator().manual_seed(0))
    # level 12 for the two large groups (5 + 12 + 12 = 29), the last pixel to one of them at random
    assert torch.bincount(y).tolist() in ([13, 5, 12], [12, 5, 13])
    _, y = sample_pixels(x, labels, max_total=30, max_per_class=8, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(y).tolist() == [8, 5, 8]  # the caps come first, and 21 <= 30


def test_sampler_is_deterministic_under_a_generator():
    x, labels = make_embeddings((2, 3, 8, 8), seed=2)
    options = dict(max_per_class=5, max_total=20)
    first = sample_pixels(x, labels, generator=torch.Generator().manual_seed(7), **options)
    again = sample_pixels(x, labels, generator=torch.Generator().manual_seed(7), **options)
    other = sample_pixels(x, labels, generator=torch.Generator().manual_seed(8), **options)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def _hard_setup():
    """One image, one class (0) of 20 pixels of which 6 are misclassified by the logits."""
    labels = torch.zeros(1, 20, dtype=torch.long)
    logits = torch.zeros(1, 2, 20)
    logits[0, 1, :6] = 1.0  # predicts class 1 on the first 6 pixels
    x = torch.arange(20.0).view(1, 1, 20)
    return x, labels, logits


@pytest.mark.parametrize(
    "strategy, cap, fraction, hard_taken",
    [("hard", 4, 0.5, 4), ("hard", 10, 0.5, 6), ("mix", 10, 0.5, 5), ("mix", 10, 0.9, 6), ("mix", 3, 0.0, 0)],
)
def test_sampler_hard_first_and_mix(strategy, cap, fraction, hard_taken):
    """hard takes misclassified pixels first, then correct ones; mix takes round(f·cap) hard ones and
    fills with the other kind when one runs short."""
    x, labels, logits = _hard_setup()
    rows, y = sample_pixels(
        x,
        labels,
        logits=logits,
        strategy=strategy,
        max_per_class=cap,
        hard_fraction=fraction,
        generator=torch.Generator().manual_seed(0),
    )
    picked = rows[:, 0].long()
    assert picked.numel() == cap and int((picked < 6).sum()) == hard_taken


def test_sampler_hard_reads_logits_at_the_embeddings_resolution():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 2, 8, 8)
    logits[0, 1, :2, :2] = 1.0  # a 2x2 wrong patch at 8x8 is pixel (0, 0) at 4x4
    x = torch.arange(16.0).view(1, 1, 4, 4)
    rows, _ = sample_pixels(x, labels, logits=logits, strategy="hard", max_per_class=1)
    assert rows[:, 0].tolist() == [0.0]


def test_sampler_never_samples_ignored_pixels_under_any_strategy():
    x, labels = make_embeddings((2, 3, 6, 6), ignore_fraction=0.5, seed=4)
    logits = torch.randn(2, 3, 6, 6)
    for strategy in ("random", "hard", "mix"):
        _, y = sample_pixels(
            x, labels, ignore_index=IGNORE, logits=logits, strategy=strategy, max_per_class=2, max_total=5
        )
        assert IGNORE not in y.tolist() and y.numel() == 5


def test_sampler_all_ignored_gives_empty_rows_on_the_graph():
    x, labels = make_embeddings()
    rows, y = sample_pixels(x, torch.full_like(labels, IGNORE), ignore_index=IGNORE, max_per_class=3)
    assert rows.shape == (0, 3) and y.shape == (0,)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(strategy="hardest"), "did you mean 'hard'"),
        (dict(strategy="hard"), "logits= for strategy 'hard'"),
        (dict(max_per_class=0), "max_per_class to be an int >= 1"),
        (dict(max_total=2.5), "max_total to be an int"),
        (dict(hard_fraction=1.5), r"hard_fraction in \[0, 1\]"),
        (dict(generator=0), "generator to be a torch.Generator"),
    ],
)
def test_sampler_bad_options_raise(options, message):
    x, labels = make_embeddings()
    with pytest.raises(sl.SegLossError, match=message):
        sample_pixels(x, labels, **options)


@pytest.mark.parametrize(
    "embeddings, labels, message",
    [
        (torch.randn(2, 3), torch.zeros(3, dtype=torch.long), r"labels of shape \(M,\) = \(2,\)"),
        (
            torch.randn(2, 3, 4, 4),
            torch.zeros(3, 4, 4, dtype=torch.long),
            "labels of shape .N, .S. with N = 2",
        ),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4), "integer labels"),
        (torch.randn(2, 3, 4, 4, dtype=torch.float64).long(), torch.zeros(2, 4, 4).long(), "floating-point"),
        (torch.randn(2, 3, 4, 4, 4, 4), torch.zeros(2, 4, 4, 4, 4).long(), "1 to 3 spatial dims"),
    ],
)
def test_sampler_bad_inputs_raise(embeddings, labels, message):
    with pytest.raises(sl.SegLossError, match=message):
        sample_pixels(embeddings, labels)


def test_non_finite_embeddings_raise_with_checks_on_and_propagate_with_checks_off():
    x, labels = make_embeddings(ignore_fraction=0.3)
    bad = x.detach().clone()
    valid = (labels != IGNORE).nonzero()[0].tolist()
    bad[valid[0], 0, valid[1], valid[2]] = torch.nan
    with pytest.raises(sl.SegLossError, match="expected finite embeddings, got 1 NaN"):
        contrastive_loss(bad, labels, ignore_index=IGNORE)
    ignored = (labels == IGNORE).nonzero()[0].tolist()
    fine = x.detach().clone()
    fine[ignored[0], :, ignored[1], ignored[2]] = torch.inf  # ignored pixels are never read
    assert torch.isfinite(contrastive_loss(fine, labels, ignore_index=IGNORE))
    with sl.input_checks(False):
        for function, options in [
            (contrastive_loss, {}),
            (pixel_info_nce_loss, {}),
            (triplet_loss, {}),
            (triplet_loss, {"mining": "all"}),
            (triplet_loss, {"mining": "semi_hard"}),
        ]:
            assert not torch.isfinite(function(bad, labels, ignore_index=IGNORE, **options))
        assert not torch.isfinite(center_loss(bad, labels, torch.zeros(3, 3), ignore_index=IGNORE))


# --- distances -----------------------------------------------------------------------------------------


def test_distances_match_torch():
    a, b = torch.randn(7, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(pairwise_distances(a, b), torch.cdist(a, b))
    torch.testing.assert_close(pairwise_distances(a, b, metric="squared_euclidean"), torch.cdist(a, b) ** 2)
    cosine = 1 - F.cosine_similarity(a[:, None], b[None], dim=-1)
    torch.testing.assert_close(pairwise_distances(a, b, metric="cosine"), cosine)
    unit = F.normalize(a, dim=1), F.normalize(b, dim=1)
    torch.testing.assert_close(pairwise_distances(a, b, normalize=True), torch.cdist(*unit))
    for metric in ("euclidean", "squared_euclidean", "cosine"):
        distance = Distance(metric)  # type: ignore[arg-type]
        pa, pb = distance.prepare(a[:4]), distance.prepare(b)
        torch.testing.assert_close(distance.paired(pa, pb), distance.block(pa, pb).diagonal())


def test_distance_gradient_is_finite_at_zero():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(pairwise_distances(x).sum() + Distance().paired(x[:1], x[1:]).sum(), x)
    assert torch.isfinite(grad).all()


def test_distance_bad_metric_raises():
    with pytest.raises(sl.SegLossError, match="did you mean 'cosine'"):
        Distance("cos")  # type: ignore[arg-type]
    with pytest.raises(sl.SegLossError, match="normalize to be True or False"):
        pairwise_distances(torch.randn(2, 2), normalize=1)  # type: ignore[arg-type]


# --- conformance ---------------------------------------------------------------------------------------


def build(entry, **options):
    """The entry's module with its minimal spec's options (center needs num_classes, dim), in eval mode
    so that center loss keeps its centers between the calls a check makes."""
    minimal = parse_spec(entry.spec)[0][2]
    return entry.module(**minimal, **options).eval()


def call_function(entry, module, x, labels, **options):
    """The entry's pure function on the module's state (center loss takes the centers)."""
    if entry.name == "center":
        return entry.module.function(x, labels, module.centers, **options)
    return entry.module.function(x, labels, **options)


class TestEmbeddingConformance:
    """The conformance checks of tests/test_conformance.py, for losses of (embeddings, labels)."""

    entries = EMBEDDING_ENTRIES

    def test_registered(self, entry):
        assert {e.name for e in EMBEDDING_ENTRIES} == {"contrastive", "info_nce", "triplet", "center"}
        assert entry.kind == "scalar" and entry.description
        modules = {"contrastive": ContrastiveLoss, "info_nce": PixelInfoNCELoss, "triplet": TripletLoss}
        assert entry.module is modules.get(entry.name, CenterLoss)

    @pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d", "3d"])
    def test_output_shape_per_reduction(self, entry, shape):
        """mean and sum give scalars for 1-D to 3-D maps; none raises (no per-pixel value)."""
        x, labels = make_embeddings(shape)
        for reduction in ("mean", "sum"):
            assert build(entry, reduction=reduction)(x, labels).shape == ()
        with pytest.raises(sl.SegLossError, match="reduction to be one of 'mean', 'sum', got 'none'"):
            build(entry, reduction="none")

    def test_mean_is_sum_over_a_positive_count(self, entry):
        x, labels = make_embeddings()
        ratio = (build(entry, reduction="sum")(x, labels) / build(entry)(x, labels)).item()
        assert ratio >= 1 and abs(ratio - round(ratio)) < 1e-9

    def test_module_equals_function(self, entry):
        x, labels = make_embeddings(ignore_fraction=0.2)
        module = build(entry, ignore_index=IGNORE)
        expected = call_function(entry, module, x, labels, ignore_index=IGNORE)
        torch.testing.assert_close(module(x, labels), expected)

    def test_mask_is_ignore_index(self, entry):
        """``mask=`` (the labels' shape) is ``ignore_index`` at the pixels it leaves out, for the module,
        the function and a compound with a pixel loss; with and without an ignore_index (issue 19)."""
        x, labels = make_embeddings((2, 3, 6, 6), ignore_fraction=0.2)
        mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3)) > 0.3
        module = build(entry, ignore_index=IGNORE)
        expected = module(x, labels.masked_fill(~mask, IGNORE))
        torch.testing.assert_close(module(x, labels, mask=mask), expected)
        function = call_function(entry, module, x, labels, ignore_index=IGNORE, mask=mask)
        torch.testing.assert_close(function, expected)
        valid = labels != IGNORE
        plain = build(entry)  # no ignore_index: the masked pixels are dropped all the same
        torch.testing.assert_close(plain(x, labels.where(valid, 0), mask=mask & valid), expected)
        compound = sl.CompoundLoss(
            [(1.0, "dice", sl.DiceLoss(ignore_index=IGNORE)), (0.5, entry.name, module)]
        )
        logits = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        total = compound(logits, labels, embeddings=x, mask=mask)
        dice = sl.dice_loss(logits, labels.masked_fill(~mask, IGNORE), ignore_index=IGNORE)
        torch.testing.assert_close(total, dice + 0.5 * expected)

    def test_bad_masks_and_weight_maps_raise(self, entry):
        x, labels = make_embeddings((2, 3, 6, 6))
        with pytest.raises(sl.SegLossError, match="mask as a bool tensor"):
            build(entry)(x, labels, mask=torch.ones(labels.shape))
        with pytest.raises(sl.SegLossError, match=r"mask of the labels' shape \(2, 6, 6\)"):
            build(entry)(x, labels, mask=torch.ones(2, 3, 3, dtype=torch.bool))
        compound = sl.CompoundLoss([(1.0, "dice", sl.DiceLoss()), (0.5, entry.name, build(entry))])
        with pytest.raises(sl.SegLossError, match="every term to take weight_map="):
            compound(torch.randn(2, 4, 6, 6), labels, embeddings=x, weight_map=torch.ones(2, 6, 6))

    def test_module_passes_sampler_options_and_logits(self, entry):
        x, labels = make_embeddings((2, 3, 6, 6), ignore_fraction=0.2)
        logits = torch.randn(2, 4, 12, 12, dtype=torch.float64)
        options = dict(ignore_index=IGNORE, strategy="mix", max_per_class=4, max_total=15, hard_fraction=0.25)
        module = build(entry, generator=torch.Generator().manual_seed(3), **options)
        expected = call_function(
            entry, module, x, labels, logits=logits, generator=torch.Generator().manual_seed(3), **options
        )
        torch.testing.assert_close(module(x, labels, logits=logits), expected)

    @pytest.mark.parametrize("ignore_fraction", [0.0, 0.3])
    def test_gradcheck_float64(self, entry, ignore_fraction):
        x, labels = make_embeddings((2, 3, 3, 4), ignore_fraction=ignore_fraction)
        loss = build(entry, ignore_index=IGNORE)
        assert torch.autograd.gradcheck(lambda z: loss(z, labels), (x,), eps=1e-6, atol=1e-5)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_finite_at_extreme_embeddings(self, entry, dtype):
        """±100 embeddings: finite loss and finite gradients."""
        x, labels = make_embeddings(dtype=dtype)
        extreme = (torch.sign(x.detach()) * 100).requires_grad_()
        loss = build(entry)(extreme, labels)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(extreme.grad).all()

    def test_all_ignored_gives_zero_with_gradient(self, entry):
        x, labels = make_embeddings()
        labels = torch.full_like(labels, IGNORE)
        for reduction in ("mean", "sum"):
            loss = build(entry, ignore_index=IGNORE, reduction=reduction)(x, labels)
            assert loss.item() == 0.0 and loss.requires_grad
            (grad,) = torch.autograd.grad(loss, x)
            assert torch.count_nonzero(grad) == 0

    def test_ignored_pixels_change_nothing(self, entry):
        x, labels = make_embeddings(ignore_fraction=0.4)
        loss = build(entry, ignore_index=IGNORE)
        ignored = (labels == IGNORE).unsqueeze(1).expand_as(x)
        other = x.detach().clone()
        other[ignored] = torch.randn(int(ignored.sum()), dtype=other.dtype) * 50
        torch.testing.assert_close(loss(x, labels), loss(other, labels))
        (grad,) = torch.autograd.grad(loss(x, labels), x)
        assert torch.count_nonzero(grad[ignored]) == 0

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_close_to_float32(self, entry, dtype):
        """Half embeddings are computed in float32: within their rounding of the float32 loss."""
        x, labels = make_embeddings((2, 3, 8, 8), dtype=torch.float32)
        half_x = x.detach().to(dtype).requires_grad_()
        half = build(entry)(half_x, labels)
        (grad,) = torch.autograd.grad(half, half_x)
        assert half.dtype == torch.float32 and grad.dtype == dtype and torch.isfinite(grad).all()
        single = build(entry)(half_x.detach().float(), labels)  # the same rounded inputs in float32
        torch.testing.assert_close(half, single, atol=1e-5, rtol=1e-5)

    def test_bad_options_raise(self, entry):
        with pytest.raises(sl.SegLossError, match="reduction"):
            build(entry, reduction="avg")
        with pytest.raises(sl.SegLossError, match="did you mean"):
            build(entry, ignore_idx=3)
        with pytest.raises(sl.SegLossError, match="ignore_index"):
            build(entry, ignore_index=1.5)
        with pytest.raises(sl.SegLossError, match="strategy"):
            build(entry, strategy="easy")
        with pytest.raises(sl.SegLossError, match="option"):
            sl.create_loss(f"{entry.name}(unknown_option=1)")

    def test_registry_spec_builds_the_module(self, entry):
        assert isinstance(sl.create_loss(entry.spec), entry.module)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("center", "bad options for loss 'center'.*num_classes"),
        ("center(num_classes=3)", "bad options for loss 'center'.*dim"),
        ("center(num_classes=0, dim=3)", "num_classes to be an int >= 1"),
        ("center(num_classes=3, dim=3, alpha=2)", r"alpha in \[0, 1\]"),
        ("center(num_classes=3, dim=3, learn='sgd')", "learn to be one of 'buffer', 'parameter'"),
        ("center(num_classes=3, dim=3, alpah=0.1)", "did you mean 'alpha'"),
        ("triplet(mining='semihard')", "did you mean 'semi_hard'"),
        ("triplet(average='non_zero')", "did you mean 'nonzero'"),
        ("triplet(margin=-1)", "margin in"),
        ("triplet(squared=1)", "squared to be True or False"),
        ("info_nce(temperature=0)", r"temperature in \(0, inf\]"),
        ("contrastive(margin='1')", "margin to be a finite real number"),
    ],
)
def test_bad_embedding_specs_raise(spec, message):
    with pytest.raises(sl.SegLossError, match=message):
        sl.create_loss(spec)


@pytest.mark.parametrize("entry", EMBEDDING_ENTRIES, ids=lambda e: e.name)
def test_autocast_does_not_lower_the_precision(entry):
    """Under torch.autocast the pairwise products still run in float32: the same value and gradient."""
    x, labels = make_embeddings((2, 3, 6, 6), dtype=torch.float32)
    loss = build(entry)
    value = loss(x, labels)
    (grad,) = torch.autograd.grad(value, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = loss(x, labels)
    torch.testing.assert_close(autocast, value)
    torch.testing.assert_close(torch.autograd.grad(autocast, x)[0], grad)


# --- edge cases ----------------------------------------------------------------------------------------


def _flat(labels):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(len(labels), 4, generator=g, dtype=torch.float64)
    return x.requires_grad_(), torch.tensor(labels, dtype=torch.long)


def test_class_with_one_pixel_has_no_positive():
    """Class 2 has one pixel: it is a negative for others, never an anchor with a positive."""
    x, y = _flat([0, 0, 0, 1, 1, 2])
    for name, (function, reference, _) in REFERENCES.items():
        torch.testing.assert_close(function(x, y), reference(x, y), msg=name)
    # InfoNCE averages over the 5 anchors with a positive; hard triplet over the 5 such anchors
    for function in (pixel_info_nce_loss, triplet_loss):
        assert round((function(x, y, reduction="sum") / function(x, y)).item()) == 5


def test_one_class_has_no_negative():
    """One class: InfoNCE and triplet give 0 on the graph; contrastive is the mean squared distance."""
    x, y = _flat([1, 1, 1, 1])
    for function in (pixel_info_nce_loss, triplet_loss):
        for mining in ("hard", "all", "semi_hard") if function is triplet_loss else ("",):
            loss = function(x, y, **({"mining": mining} if mining else {}))
            assert loss.item() == 0.0 and loss.requires_grad
    torch.testing.assert_close(contrastive_loss(x, y), ref_contrastive(x, y))
    torch.testing.assert_close(contrastive_loss(x, y), torch.pdist(x.detach()).square().mean())


def test_single_pixel_and_empty_input_give_zero():
    for labels in ([3], []):
        x, y = _flat(labels)
        for function in (contrastive_loss, pixel_info_nce_loss, triplet_loss):
            loss = function(x, y)
            assert loss.item() == 0.0 and loss.requires_grad


# --- blocking and memory -------------------------------------------------------------------------------

BLOCKED_CASES = [
    (contrastive_loss, {}),
    (contrastive_loss, {"normalize": True, "margin": 0.7}),
    (pixel_info_nce_loss, {}),
    (triplet_loss, {}),
    (triplet_loss, {"mining": "all", "squared": True}),
    (triplet_loss, {"mining": "semi_hard", "margin": 0.5, "average": "nonzero"}),
]


@pytest.mark.parametrize("function, options", BLOCKED_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_blocks_equal_the_unblocked_computation(monkeypatch, function, options):
    """Blocks of 1, 3 or 7 anchors give the one-block value and gradient."""
    x, y = _flat([0, 1, 2, 0, 1, 2, 2, 2, 0, 3, 3, 1, 0, 0, 1, 2, 2, 3, 1, 0, 0, 1, 2])
    monkeypatch.setattr(pairwise, "BLOCK_ELEMENTS", 1 << 30)
    whole = function(x, y, **options)
    (whole_grad,) = torch.autograd.grad(whole, x)
    for rows in (1, 3, 7):
        monkeypatch.setattr(pairwise, "BLOCK_ELEMENTS", rows * x.shape[0] * (4 if "mining" in options else 1))
        value = function(x, y, **options)
        torch.testing.assert_close(value, whole)
        torch.testing.assert_close(torch.autograd.grad(value, x)[0], whole_grad)


PEAK_SCRIPT = """
import ctypes, json, sys, torch
from seglosses.losses.embedding import contrastive_loss, pixel_info_nce_loss, triplet_loss
from seglosses.ops import pairwise
torch.set_num_threads(2)
m, d, block = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
pairwise.BLOCK_ELEMENTS = block
functions = {"contrastive": contrastive_loss, "info_nce": pixel_info_nce_loss, "triplet": triplet_loss}
g = torch.Generator().manual_seed(0)
x, y = torch.randn(m, d, generator=g).requires_grad_(), torch.randint(0, 10, (m,), generator=g)
def status(key):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1]) * 1024
def reset():  # the high-water mark from here on is the next step's alone
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc: return freed heap memory to the
    if trim is not None:  # system, so that reusing it shows as growth
        trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")
peaks = {}
for name in sys.argv[4:]:
    functions[name](x[:64], y[:64]).backward()  # warm up the kernels and thread pools
    before = reset()
    functions[name](x, y).backward()
    peaks[name] = status("VmHWM") - before
print(json.dumps(peaks))
"""
NAMES = ["contrastive", "info_nce", "triplet"]


@functools.lru_cache(maxsize=None)
def peak_bytes(m: int, d: int, block: int) -> Dict[str, int]:
    """Forward+backward peak resident memory of each loss above what the process held before it, in one
    fresh process (``VmHWM`` after resetting it through ``/proc/self/clear_refs``: Linux only)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the resident-memory high-water mark")
    command = [sys.executable, "-c", PEAK_SCRIPT, str(m), str(d), str(block), *NAMES]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", NAMES)
def test_memory_is_linear_in_pixels(name):
    """4,096 pixels in blocks of 128 rows: peak below one 4,096² float matrix (64 MiB), of which a dense
    forward+backward holds several."""
    assert peak_bytes(4096, 32, 128 * 4096)[name] < 48 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_16k_pixels_of_128_channels_under_1gb(name):
    """The issue's bound with the default block size: 16,384 × 128, forward+backward under 1 GB."""
    assert peak_bytes(16384, 128, pairwise.BLOCK_ELEMENTS)[name] < 2**30


# --- center loss ---------------------------------------------------------------------------------------


def test_center_update_follows_the_paper():
    """c_j ← c_j - α Σ_{y_i=j}(c_j - x_i) / (1 + n_j), from the centers before the update; the loss
    uses the centers before it too."""
    module = CenterLoss(num_classes=3, dim=2, alpha=0.5)
    module.centers.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]]))
    x = torch.tensor([[3.0, 1.0], [1.0, 3.0], [2.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    loss = module(x, y)
    torch.testing.assert_close(loss, torch.tensor((4 + 4 + 4) / 2 / 3))
    # class 0: n = 2, Σ(c - x) = (-2, 0) + (0, -2) = (-2, -2): c = 1 + 0.5·2/3; class 1: (0 - 2)/2 · 0.5
    expected = torch.tensor([[1 + 1 / 3, 1 + 1 / 3], [0.5, 0.0], [5.0, 5.0]])
    torch.testing.assert_close(module.centers, expected)
    (grad,) = torch.autograd.grad(loss, x)  # the in-place update left the graph intact
    torch.testing.assert_close(grad, (x.detach() - torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])) / 3)


def test_center_update_from_batch_sums_and_counts():
    """update_centers takes sums and counts (what a distributed run all-reduces) and matches forward."""
    x, labels = make_embeddings((2, 4, 4, 4), ignore_fraction=0.2, dtype=torch.float32)
    a, b = CenterLoss(num_classes=3, dim=4, ignore_index=IGNORE), CenterLoss(num_classes=3, dim=4)
    a(x, labels)
    rows, y = flat_rows(x.detach(), labels)
    b.update_centers(*b.batch_statistics(rows[:10], y[:10]))
    sums, counts = b.batch_statistics(rows[10:], y[10:])
    b.centers.copy_(torch.zeros(3, 4))
    b.update_centers(*(s + t for s, t in zip(b.batch_statistics(rows[:10], y[:10]), (sums, counts))))
    torch.testing.assert_close(a.centers, b.centers)


def test_center_eval_and_parameter_modes_keep_the_rule_off():
    x, labels = make_embeddings(dtype=torch.float32)
    module = CenterLoss(num_classes=3, dim=3).eval()
    module(x, labels)
    assert torch.count_nonzero(module.centers) == 0
    learned = CenterLoss(num_classes=3, dim=3, learn="parameter")
    assert isinstance(learned.centers, torch.nn.Parameter)
    learned(x, labels).backward()
    assert torch.count_nonzero(learned.centers) == 0 and learned.centers.grad is not None
    assert torch.count_nonzero(learned.centers.grad) > 0
    assert [name for name, _ in learned.named_parameters()] == ["centers"]


@pytest.mark.parametrize("learn", ["buffer", "parameter"])
def test_center_state_dict_round_trip(learn):
    x, labels = make_embeddings(dtype=torch.float32)
    module = CenterLoss(num_classes=3, dim=3, learn=learn)
    with torch.no_grad():
        module.centers.add_(torch.randn(3, 3))
    module(x, labels)
    restored = CenterLoss(num_classes=3, dim=3, learn=learn)
    restored.load_state_dict(module.state_dict())
    assert list(module.state_dict()) == ["centers"]
    torch.testing.assert_close(restored.centers, module.centers)


def test_center_bad_inputs_raise():
    module = CenterLoss(num_classes=3, dim=3)
    x, labels = make_embeddings()
    with pytest.raises(sl.SegLossError, match=r"labels class indices in \[0, 3\)"):
        module(x, labels + 1)
    with pytest.raises(sl.SegLossError, match="centers of shape .K, D. with D = 3"):
        center_loss(x, labels, torch.zeros(3, 4))


# --- losses with the sampler ---------------------------------------------------------------------------


def test_losses_use_the_sampled_pixels():
    """With caps, each loss equals itself on sample_pixels' rows drawn with the same seed."""
    x, labels = make_embeddings((2, 3, 8, 8), ignore_fraction=0.2)
    logits = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    options = dict(ignore_index=IGNORE, strategy="hard", max_per_class=3, max_total=12)
    for function in (contrastive_loss, pixel_info_nce_loss, triplet_loss):
        value = function(x, labels, logits, generator=torch.Generator().manual_seed(1), **options)
        rows, y = sample_pixels(
            x, labels, logits=logits, generator=torch.Generator().manual_seed(1), **options
        )
        torch.testing.assert_close(value, function(rows, y))


# --- pytorch-metric-learning ---------------------------------------------------------------------------


def _equal_classes(dtype, classes=4, per_class=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, dim, generator=g).to(dtype).requires_grad_()
    y = torch.arange(classes).repeat_interleave(per_class)[torch.randperm(classes * per_class, generator=g)]
    return x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_triplet_equals_pml_batch_hard(dtype):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    miners = pytest.importorskip("pytorch_metric_learning.miners")
    x, y = _equal_classes(dtype, per_class=5, dim=16)
    y = y.clone()
    y[:3] = 9  # an unequal class too: it does not matter here
    theirs = losses.TripletMarginLoss(margin=0.2)(x, y, miners.BatchHardMiner()(x, y))
    ours = triplet_loss(x, y, margin=0.2, mining="hard", normalize=True, average="nonzero")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(v, x)[0] for v in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_info_nce_equals_pml_ntxent_with_equal_class_counts(dtype):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    x, y = _equal_classes(dtype)
    theirs = losses.NTXentLoss(temperature=0.1)(x, y)
    ours = pixel_info_nce_loss(x, y, temperature=0.1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(v, x)[0] for v in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_info_nce_differs_from_pml_ntxent_with_unequal_class_counts():
    """NTXent averages over positive pairs, we over anchors: classes of 2 and 6 pixels weigh differently."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    x, _ = _equal_classes(torch.float64, classes=1, per_class=8)
    y = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])
    theirs = losses.NTXentLoss(temperature=0.1)(x, y)
    pair_mean = _pair_terms_mean(x, y, 0.1)
    torch.testing.assert_close(theirs, pair_mean)
    assert not torch.allclose(pixel_info_nce_loss(x, y, temperature=0.1), theirs, atol=1e-5)


def _pair_terms_mean(x, y, temperature):
    """Mean over positive pairs (a, p) of -log(e^{s_ap/τ} / (e^{s_ap/τ} + Σ_n e^{s_an/τ})): NTXent's."""
    rows, labels = _rows(x, True), y.tolist()
    terms = []
    for a, p in itertools.permutations(range(len(rows)), 2):
        if labels[a] == labels[p]:
            e = torch.exp(rows[a] @ rows[p] / temperature)
            negatives = [rows[a] @ rows[n] / temperature for n in range(len(rows)) if labels[n] != labels[a]]
            terms.append(-torch.log(e / (e + sum(torch.exp(s) for s in negatives))))
    return sum(terms) / len(terms)


def test_pml_contrastive_is_a_different_loss():
    """pml's ContrastiveLoss: plain-distance hinges on normalised embeddings, positives and negatives each
    averaged over their non-zero terms, then added (module docstring); ours is the squared form."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    x, y = _equal_classes(torch.float64)
    theirs = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)(x, y)
    d = pairwise_distances(x, normalize=True)
    same = y[:, None] == y[None, :]
    off = ~torch.eye(len(y), dtype=torch.bool)
    positive, negative = d[same & off], (1.0 - d[~same]).clamp_min(0)
    expected = positive[positive > 0].mean() + negative[negative > 0].mean()
    torch.testing.assert_close(theirs, expected)
    assert not torch.allclose(contrastive_loss(x, y, normalize=True, margin=1.0), theirs, atol=1e-3)


def test_pml_supcon_is_a_different_loss():
    """pml's SupConLoss keeps the other positives in the denominator:
    ``-log(e^{s_ap/τ} / Σ_{k≠a} e^{s_ak/τ})``."""
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    x, y = _equal_classes(torch.float64)
    theirs = losses.SupConLoss(temperature=0.1)(x, y)
    s = pairwise_distances(x, metric="cosine").neg().add(1) / 0.1
    off = ~torch.eye(len(y), dtype=torch.bool)
    log_prob = s - torch.logsumexp(s.masked_fill(~off, -torch.inf), 1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & off
    expected = -((log_prob * positive).sum(1) / positive.sum(1)).mean()
    torch.testing.assert_close(theirs, expected)
    assert not torch.allclose(pixel_info_nce_loss(x, y, temperature=0.1), theirs, atol=1e-3)
