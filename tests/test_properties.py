"""Property tests: random shapes and values give finite, non-negative losses invariant to pixel order."""

from __future__ import annotations

import torch
from helpers import ENTRIES, IGNORE
from hypothesis import given
from hypothesis import strategies as st

# the boundary family depends on where pixels are (distances, bands, neighbours), and the surface loss
# is negative inside the target by design (SPEC section 4)
SPATIAL = {"boundary", "hausdorff_dt", "boundary_iou", "active_contour", "skeleton_recall", "cldice"}
SPATIAL |= {"dice_cldice", "cbdice", "hausdorff_er", "log_hausdorff_dt", "boundary_dou", "region_wise"}
SPATIAL |= {"distance_ce"}  # each reads where pixels are (distances, erosions, skeletons)
SPATIAL |= {f"binary_{name}" for name in SPATIAL}
NEGATIVE_ALLOWED = {"boundary", "binary_boundary"}
# the rectified region-wise maps are -D / max D inside a class (docs/families/topology.rst): negative there
NEGATIVE_ALLOWED |= {"region_wise", "binary_region_wise"}


@st.composite
def cases(draw, entries=tuple(ENTRIES)):
    entry = draw(st.sampled_from(entries))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(2, 6))
    spatial = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.0, 1.0, 10.0, 100.0]))
    ignore = draw(st.sampled_from([0.0, 0.3, 1.0]))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, *spatial, generator=g, dtype=torch.float64) * scale
    if entry.domain == "softmax":
        target = torch.randint(0, c, (n, *spatial), generator=g)
    else:
        target = torch.randint(0, 2, logits.shape, generator=g)
    target = target.masked_fill(torch.rand(target.shape, generator=g) < ignore, IGNORE)
    return entry, logits.requires_grad_(), target


@given(cases())
def test_finite_non_negative_with_finite_gradients(case):
    entry, logits, target = case
    loss = entry.module(ignore_index=IGNORE)(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and (loss >= 0 or entry.name in NEGATIVE_ALLOWED)
    assert torch.isfinite(grad).all()


@given(cases(tuple(e for e in ENTRIES if e.name not in SPATIAL)))
def test_invariant_to_permuting_pixels(case):
    """Every loss here is a function of the set of (logit, target) pixels of each sample."""
    entry, logits, target = case
    n, c = logits.shape[:2]
    perm = torch.randperm(logits[0, 0].numel())
    flat_logits = logits.detach().reshape(n, c, -1)[..., perm]
    if entry.domain == "softmax":
        flat_target = target.reshape(n, -1)[..., perm]
    else:
        flat_target = target.reshape(n, c, -1)[..., perm]

    def loss():  # a fresh module per call: a stateful loss folds in each training-mode batch
        return entry.module(ignore_index=IGNORE, reduction="none" if entry.kind == "region" else "mean")

    torch.testing.assert_close(loss()(logits, target), loss()(flat_logits, flat_target))
