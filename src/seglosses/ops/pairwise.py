"""Pairwise distances between flat embeddings, and the row blocks the embedding losses work in.

One small interface shared by the embedding losses (SPEC section 5): :class:`Distance` names a metric,
``euclidean`` (``‖a - b‖``), ``squared_euclidean`` (``‖a - b‖²``) or ``cosine`` (``1 - â·b̂``), and whether
rows are L2-normalised first. It gives a whole block of distances (from one matrix product,
``‖a‖² + ‖b‖² - 2 a·b``) or the distances of given row pairs (from their differences, exact).

Pairwise work over ``M`` rows is done ``B`` rows at a time, ``B = BLOCK_ELEMENTS // M``, so that a block
holds about ``BLOCK_ELEMENTS`` entries whatever ``M`` is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.options import check_bool, check_choice

Metric = Literal["euclidean", "squared_euclidean", "cosine"]
METRICS = ("euclidean", "squared_euclidean", "cosine")

BLOCK_ELEMENTS = 1 << 22
"""Entries of one ``(B, M)`` block of pairwise work (16 MiB in float32)."""


def safe_sqrt(squared: Tensor) -> Tensor:
    """``sqrt(x)`` of ``x >= 0`` with gradient 0 at 0, where the true one is infinite (``0 · inf = NaN``).

    Only an exact 0 is special, so a NaN input stays NaN.
    """
    zero = squared == 0
    return torch.where(zero, 0.0, torch.where(zero, 1.0, squared).sqrt())


def _without_autocast(device: torch.device) -> ContextManager[Any]:
    """Autocast off on ``device`` while the block is computed: under ``torch.autocast`` the matrix product
    of the distances would run in float16 / bfloat16 (an error of ~1e-3 in the loss; the triplet miner's
    float32 outputs would not even accept the result), whatever the rows' own dtype."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def row_blocks(rows: int, width: int) -> Iterator[slice]:
    """Slices of ``B = max(1, BLOCK_ELEMENTS // width)`` rows covering ``range(rows)``."""
    size = max(1, BLOCK_ELEMENTS // max(width, 1))
    for start in range(0, rows, size):
        yield slice(start, min(start + size, rows))


@dataclass(frozen=True)
class Distance:
    """A distance between embedding rows; the embedding losses' one distance interface.

    ``prepare`` L2-normalises rows when ``normalize`` is set or the metric is ``cosine``; ``block`` and
    ``paired`` expect prepared rows.

    Args:
        metric: ``euclidean`` ``‖a - b‖``, ``squared_euclidean`` ``‖a - b‖²``, ``cosine`` ``1 - â·b̂``.
        normalize: L2-normalise rows first (``x / max(‖x‖, 1e-12)``, as ``F.normalize``).

    Example:
        >>> d = Distance("euclidean", normalize=True)
        >>> x = d.prepare(torch.tensor([[3.0, 0.0], [0.0, 2.0]]))
        >>> torch.allclose(d.block(x, x), torch.tensor([[0.0, 2**0.5], [2**0.5, 0.0]]))  # unit vectors
        True
    """

    metric: Metric = "euclidean"
    normalize: bool = False

    def __post_init__(self) -> None:
        check_choice("metric", self.metric, METRICS)
        check_bool("normalize", self.normalize)

    @property
    def squared(self) -> bool:
        return self.metric == "squared_euclidean"

    def prepare(self, x: Tensor) -> Tensor:
        """Rows ``(M, D)`` as the metric uses them (L2-normalised or unchanged)."""
        return F.normalize(x, dim=1) if self.normalize or self.metric == "cosine" else x

    def block(self, a: Tensor, b: Tensor) -> Tensor:
        """Distances ``(A, B)`` between every row of ``a`` ``(A, D)`` and of ``b`` ``(B, D)``.

        From ``‖a‖² + ‖b‖² - 2 a·b`` (clamped at 0): one matrix product, as ``torch.cdist`` does for
        large inputs; the diagonal of ``block(x, x)`` is about 0, not exactly.
        """
        with _without_autocast(a.device):  # autocast would run the product in half precision
            if self.metric == "cosine":
                return torch.mm(a, b.T).neg_().add_(1)
            squared = torch.addmm(b.square().sum(1)[None], a, b.T, alpha=-2)  # one (A, B) buffer, in place
            squared = squared.add_(a.square().sum(1, keepdim=True)).clamp_min_(0)
            return squared if self.squared else safe_sqrt(squared)

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Dot products ``(A, B)`` of the prepared rows, ``â·b̂`` for ``cosine`` (``1 - block``, without the
        rounding of the subtraction); autocast off, as in :meth:`block`."""
        with _without_autocast(a.device):
            return torch.mm(a, b.T)

    def paired(self, a: Tensor, b: Tensor) -> Tensor:
        """Distances ``(K,)`` between row ``k`` of ``a`` and row ``k`` of ``b`` (both ``(K, D)``), from
        their difference (exact, also for nearly equal rows)."""
        if self.metric == "cosine":
            return 1 - (a * b).sum(1)
        squared = (a - b).square().sum(1)
        return squared if self.squared else safe_sqrt(squared)


def pairwise_distances(
    a: Tensor, b: Optional[Tensor] = None, *, metric: Metric = "euclidean", normalize: bool = False
) -> Tensor:
    """Distance matrix ``(A, B)`` between the rows of ``a`` ``(A, D)`` and ``b`` ``(B, D)`` (default ``a``).

    See :class:`Distance` for the metrics; gradients are finite everywhere (0 where ``‖a - b‖ = 0``).

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> pairwise_distances(x).tolist()
        [[0.0, 5.0], [5.0, 0.0]]
        >>> pairwise_distances(x, metric="squared_euclidean")[0, 1].item()
        25.0
    """
    distance = Distance(metric, normalize)
    a = distance.prepare(a)
    return distance.block(a, a if b is None else distance.prepare(b))


__all__ = ["BLOCK_ELEMENTS", "Distance", "METRICS", "Metric", "pairwise_distances", "row_blocks", "safe_sqrt"]
