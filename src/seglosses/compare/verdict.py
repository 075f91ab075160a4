"""Which loss wins, and how sure that is: metrics of the comparison with paired-bootstrap intervals.

Every (loss, seed) run is scored on the same test images; per image and class it keeps the pixel counts
``TP, FP, FN``, the Boundary-IoU band counts and the HD95 (where the class is in both maps). A data-set
metric pools the counts over the images first (Dice ``2ΣTP / (2ΣTP + ΣFP + ΣFN)``), then averages over
the *scored classes*: the foreground classes (index ≥ 1) present in the test split. A class absent from
every test mask is not scored anywhere. A loss's value is the mean over seeds.

**Uncertainty.** A paired bootstrap resamples the test images and the seeds with replacement, the same
draw for every loss, and recomputes every metric on each draw (2,000 draws). The spread of the draws is
the standard error; because a loss comparison has few seeds, the 95 % interval is Student's
``estimate ± t(0.975, S - 1) · se``, with the bootstrap's small-sample bias undone (``se`` scaled by
``√(S / (S - 1))``; with one seed, ``S`` is the number of test images), not the draws' percentiles,
which are far too narrow for three seeds. Loss A is better than loss B on a metric when the interval of
``A - B`` excludes 0; a value in the report is bold only then, against every other loss. HD95 is
compared on the (seed, image, class) triples where both losses have it, so a loss that misses a class
is never rewarded for it; how often each loss missed a class is reported beside it.

Most of the noise of a loss comparison is training noise, which only seeds measure: below
:data:`MIN_SEEDS` seeds the intervals are still given, but no loss is declared better or worse than
another. With one seed and one test image there is nothing to resample and no interval either.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

DRAWS = 2000
# Student's t quantiles t(0.975, ν) for ν = 1..30; beyond, a Cornish-Fisher expansion (error < 1e-4)
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)  # fmt: skip
MIN_SEEDS = 3  # fewer seeds: intervals, but no claim that one loss beats another
RISE = 0.01  # a test-Dice rise over the last quarter of the epochs above this is "not converged"


@dataclass(frozen=True)
class Scores:
    """Per-image statistics of every run, as arrays ``(L losses, S seeds, I images, K classes)``."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    band_intersection: np.ndarray
    band_union: np.ndarray
    hd95: np.ndarray  # NaN where the class is not in both the prediction and the target

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        return self.tp.shape  # type: ignore[return-value]

    def predicted(self) -> np.ndarray:
        return (self.tp + self.fp) > 0

    def in_target(self) -> np.ndarray:
        return (self.tp + self.fn) > 0


def _ratio(numerator: np.ndarray, denominator: np.ndarray, empty: float) -> np.ndarray:
    """``numerator / denominator``, ``empty`` where the denominator is 0."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, empty)


# per-class metrics of pooled counts ``(..., K)``; a ratio with nothing in it scores its empty value
COUNT_METRICS: Dict[str, Callable[[Dict[str, np.ndarray]], np.ndarray]] = {
    "dice": lambda c: _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"], 1.0),
    "iou": lambda c: _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"], 1.0),
    "boundary_iou": lambda c: _ratio(c["band_intersection"], c["band_union"], 1.0),
    "precision": lambda c: _ratio(c["tp"], c["tp"] + c["fp"], 0.0),
    "recall": lambda c: _ratio(c["tp"], c["tp"] + c["fn"], 0.0),
}
LOWER_IS_BETTER = frozenset({"hd95"})


def _pooled(scores: Scores, image_weights: np.ndarray) -> Dict[str, np.ndarray]:
    """Counts summed over weighted images: ``(B, L, S, K)`` for weights ``(B, I)``."""
    names = ("tp", "fp", "fn", "band_intersection", "band_union")
    return {
        n: np.einsum("bi,lsik->blsk", image_weights, getattr(scores, n).astype(np.float64)) for n in names
    }


def _hd95_mean(hd: np.ndarray, keep: np.ndarray, image_weights: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Mean HD95 ``(B, L, S)`` over the kept (image, scored class) pairs, weighted; NaN where none."""
    weights = np.einsum("bi,lsik->blsk", image_weights, keep.astype(np.float64))[..., scored]
    total = np.einsum("bi,lsik->blsk", image_weights, np.where(keep, hd, 0.0))[..., scored]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = total / weights  # NaN for a class with no kept image in the draw
        counted = weights > 0
        return np.where(counted.any(-1), np.nansum(per_class, -1) / np.maximum(counted.sum(-1), 1), np.nan)


@dataclass
class Comparison:
    """Point values, intervals and the verdict of one comparison (see the module docstring)."""

    losses: List[str]
    classes: List[str]
    scored: np.ndarray  # (K,) bool: foreground classes present in the test split
    values: Dict[str, np.ndarray]  # metric -> (L,) over scored classes; "dice_<k>" -> (L,) per class
    per_seed: Dict[str, np.ndarray]  # metric -> (L, S)
    intervals: Dict[str, np.ndarray]  # metric -> (L, 2): the loss's own interval
    differences: Dict[str, np.ndarray]  # metric -> (L, 3): value - best's, its interval (HD95's unclipped)
    best: Dict[str, Optional[int]]  # metric -> index of the loss that beats every other, or None
    missed: np.ndarray  # (L, K): (seed, image) pairs where the class is in the target and not predicted
    hd95_pairs: np.ndarray  # (L, K): (seed, image) pairs where HD95 is defined
    hd95_per_class: np.ndarray  # (L, K): mean HD95 over those pairs (NaN where none)
    converged: List[Optional[bool]]  # per loss; None: too few epochs to tell
    resampled: bool  # False with one seed and one test image: no intervals
    claims: bool  # at least MIN_SEEDS seeds: differences beyond noise are declared

    @property
    def leader(self) -> int:
        """The loss with the highest mean Dice (whether or not it is better beyond noise)."""
        return int(np.argmax(self.values["dice"]))


def metric_names(classes: Sequence[str]) -> List[str]:
    return ["dice", *[f"dice_{k}" for k in range(1, len(classes))], "iou", "boundary_iou", "hd95",
            "precision", "recall"]  # fmt: skip


def _draw_values(scores: Scores, scored: np.ndarray, image_weights: np.ndarray, seed_weights: np.ndarray
                 ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:  # fmt: skip
    """Every metric per draw: loss values ``(B, L)`` and per-seed values ``(B, L, S)``."""
    pooled = _pooled(scores, image_weights)
    per_seed: Dict[str, np.ndarray] = {}
    for name, metric in COUNT_METRICS.items():
        per_class = metric(pooled)  # (B, L, S, K)
        per_seed[name] = per_class[..., scored].mean(-1)
        if name == "dice":
            for k in range(1, scores.shape[3]):
                per_seed[f"dice_{k}"] = per_class[..., k]
    defined = ~np.isnan(scores.hd95)
    per_seed["hd95"] = _hd95_mean(scores.hd95, defined, image_weights, scored)
    values = {name: _nan_over_seeds(v, seed_weights) for name, v in per_seed.items()}
    return values, per_seed


def _nan_over_seeds(values: np.ndarray, seed_weights: np.ndarray) -> np.ndarray:
    """Weighted mean over seeds that skips NaN (HD95 of a seed that never found a class)."""
    present = ~np.isnan(values)
    weights = seed_weights[:, None, :] * present
    with np.errstate(invalid="ignore", divide="ignore"):
        total = (np.where(present, values, 0) * weights).sum(-1)
        return np.where(weights.sum(-1) > 0, total / weights.sum(-1),
                        np.nan)  # fmt: skip


def _hd95_differences(scores: Scores, scored: np.ndarray, image_weights: np.ndarray,
                      seed_weights: np.ndarray, best: int) -> np.ndarray:  # fmt: skip
    """HD95 of each loss minus the reference's on their common defined pairs, per draw ``(B, L)``."""
    defined = ~np.isnan(scores.hd95)
    rows = []
    for loss in range(scores.shape[0]):
        both = defined[[loss]] & defined[[best]]
        pair = np.stack([scores.hd95[loss], scores.hd95[best]])
        keep = np.stack([both[0], both[0]])
        means = _hd95_mean(pair, keep, image_weights, scored)  # (B, 2, S)
        rows.append(_nan_over_seeds(means[:, :1] - means[:, 1:], seed_weights)[:, 0])
    return np.stack(rows, 1)


def _weights(draws: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Multinomial resampling weights ``(draws, count)``; row 0 is all ones (the data itself)."""
    picks = rng.integers(0, count, size=(draws, count))
    weights = np.zeros((draws, count))
    np.add.at(weights, (np.arange(draws)[:, None], picks), 1.0)
    weights[0] = 1.0
    return weights


def compare_scores(
    scores: Scores,
    losses: Sequence[str],
    classes: Sequence[str],
    scored: np.ndarray,
    curves: Sequence[np.ndarray],
    *,
    draws: int = DRAWS,
    seed: int = 0,
) -> Comparison:
    """Values, intervals, pairwise differences with the best and convergence (``curves[l]``: the test
    mean Dice per (seed, epoch) of loss ``l``)."""
    n_losses, n_seeds, n_images, _ = scores.shape
    resampled = n_seeds > 1 or n_images > 1
    claims = n_seeds >= MIN_SEEDS
    rng = np.random.default_rng(seed)
    count = draws if resampled else 1
    image_weights, seed_weights = _weights(count, n_images, rng), _weights(count, n_seeds, rng)
    draws_values, draws_per_seed = _draw_values(scores, scored, image_weights, seed_weights)
    values = {name: v[0] for name, v in draws_values.items()}
    per_seed = {name: v[0] for name, v in draws_per_seed.items()}
    units = n_seeds if n_seeds > 1 else n_images
    intervals: Dict[str, np.ndarray] = {}
    differences: Dict[str, np.ndarray] = {}
    best: Dict[str, Optional[int]] = {}
    for name, draws_of in draws_values.items():
        intervals[name] = _student(draws_of, units).clip(0.0, None if name in LOWER_IS_BETTER else 1.0)
        lower = name in LOWER_IS_BETTER
        point = values[name]
        if np.all(np.isnan(point)):
            differences[name], best[name] = np.full((n_losses, 3), np.nan), None
            continue
        top = int(np.nanargmin(point) if lower else np.nanargmax(point))
        if name == "hd95":
            delta = _hd95_differences(scores, scored, image_weights, seed_weights, top)
        else:
            delta = draws_of - draws_of[:, [top]]
        bounds = _student(delta, units)
        # a difference of two metrics in [0, 1] lies in [-1, 1]: so does its interval as reported (the
        # claims read the unclipped bounds, which exclude 0 exactly when the clipped ones do)
        shown = bounds if lower else bounds.clip(-1.0, 1.0)
        differences[name] = np.column_stack([delta[0], shown])
        others = [k for k in range(n_losses) if k != top]
        clear = all((bounds[k, 0] > 0) if lower else (bounds[k, 1] < 0) for k in others)
        best[name] = top if claims and others and clear else None
    predicted, in_target = scores.predicted(), scores.in_target()
    missed = (in_target & ~predicted).sum((1, 2))
    hd95_pairs = (~np.isnan(scores.hd95)).sum((1, 2))
    hd95_per_class = np.where(
        hd95_pairs > 0, np.nansum(scores.hd95, (1, 2)) / np.maximum(hd95_pairs, 1), np.nan
    )
    return Comparison(
        list(losses), list(classes), scored, values, per_seed, intervals, differences, best, missed,
        hd95_pairs, hd95_per_class, [converged(curve) for curve in curves], resampled, claims,
    )  # fmt: skip


def t_quantile(dof: int) -> float:
    """Student's ``t(0.975, dof)``."""
    if dof <= len(T_975):
        return T_975[dof - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def _student(draws: np.ndarray, units: int) -> np.ndarray:
    """``(L, 2)`` intervals ``estimate ± t(0.975, units - 1) · se`` from draws ``(B, L)`` (row 0: the
    estimate; the rest: bootstrap draws), ``se`` their spread scaled by ``√(units / (units - 1))``."""
    if draws.shape[0] < 2 or units < 2:
        return np.full((draws.shape[1], 2), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a loss with no HD95 anywhere: NaN
        spread = np.nanstd(draws[1:], axis=0, ddof=1) * math.sqrt(units / (units - 1))
    half = t_quantile(units - 1) * spread
    return np.column_stack([draws[0] - half, draws[0] + half])


def converged(curve: np.ndarray) -> Optional[bool]:
    """Whether the seeds' mean test Dice ``curve (S, E)`` stopped rising: the mean of the last quarter of
    the epochs is at most :data:`RISE` above the quarter before it. None below 4 epochs."""
    mean = np.asarray(curve, dtype=np.float64).mean(0)
    if mean.size < 4:
        return None
    k = max(1, mean.size // 4)
    return bool(mean[-k:].mean() - mean[-2 * k : -k].mean() <= RISE)
