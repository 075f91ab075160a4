"""Pairwise distances between flat embeddings, and the row blocks the embedding losses work in.

One small interface shared by the embedding losses (SPEC section 5): :class:`Distance` names a metric,
``euclidean`` (``‖a - b‖``), ``squared_euclidean`` (``‖a - b‖²``) or ``cosine`` (``1 - â·b̂``), and whether
rows are L2-normalised first. It gives a whole block of distances (from one matrix product,
``‖a‖² + ‖b‖² - 2 a·b``) or the distances of given row pairs (from their differences, exact).

**Scale.** Squares of finite float32 values overflow from ``|x| ~ 1.8e19``: ``‖a‖² + ‖b‖² - 2 a·b`` then
gives ``inf - inf = NaN`` and ``F.normalize`` a 0-row, though the distance or the unit row is finite. So
rows are divided by a power of two :func:`power_of_two_scale` first, ``s = 2^e`` with the largest ``|x|``
in ``[s, 2s)``, and the result multiplied back: a distance overflows only where its value does. Dividing
by a power of two is exact, so in the normal range every value and gradient is bit for bit what the
unscaled formula gives. :func:`l2_normalize` is ``F.normalize`` computed the same way.

Pairwise work over ``M`` rows is done ``B`` rows at a time, ``B = BLOCK_ELEMENTS // M``, so that a block
holds about ``BLOCK_ELEMENTS`` entries whatever ``M`` is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Literal, Optional, Tuple

import torch
from torch import Tensor

from .._core.numerics import LeanFunction
from .._core.options import check_bool, check_choice

Metric = Literal["euclidean", "squared_euclidean", "cosine"]
METRICS = ("euclidean", "squared_euclidean", "cosine")

BLOCK_ELEMENTS = 1 << 22
"""Entries of one ``(B, M)`` block of pairwise work (16 MiB in float32)."""


def power_of_two_scale(peak: Tensor) -> Tensor:
    """``2^e`` with ``peak`` in ``[2^e, 2^(e+1))`` (elementwise, detached); 1 where ``peak`` is 0 or infinite.

    Dividing by it is exact (no rounding, barring subnormal results), so a computation on ``x / s`` that is
    homogeneous in ``x`` gives, scaled back, bit for bit the result on ``x`` wherever that does not overflow,
    and a finite one where only an intermediate (a square) would; ``|x / s| < 2``. ``s <= peak``, so ``s``
    itself never overflows. NaN and ``inf`` keep scale 1 and propagate.

    Example:
        >>> power_of_two_scale(torch.tensor([3.0, 0.5, 1e20, 0.0])).tolist()
        [2.0, 0.5, 7.378697629483821e+19, 1.0]
    """
    peak = peak.detach()
    mantissa = torch.frexp(peak).mantissa  # peak = mantissa · 2^(e+1), mantissa in [0.5, 1)
    usable = (peak > 0) & torch.isfinite(peak)
    return torch.where(usable, peak / torch.where(usable, 2 * mantissa, 1.0), 1.0)  # exactly 2^e


def row_scale(x: Tensor) -> Tensor:
    """:func:`power_of_two_scale` of each row's largest ``|x|``, shape ``(M, 1)`` for rows ``(M, D)``."""
    return power_of_two_scale(torch.linalg.vector_norm(x.detach(), ord=torch.inf, dim=1, keepdim=True))


def joint_scale(*rows: Tensor) -> Tensor:
    """:func:`power_of_two_scale` of the largest ``|x|`` over every row of ``rows`` (a 0-d tensor)."""
    peaks = [torch.linalg.vector_norm(t.detach(), ord=torch.inf) for t in rows if t.numel()]
    if not peaks:
        return rows[0].new_ones(())
    return power_of_two_scale(torch.stack(peaks).amax())


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x / max(‖x‖, eps)`` along dim 1 (``F.normalize``), without squaring the rows as given.

    Each row is divided by its :func:`row_scale` ``s`` first, then by ``max(‖x/s‖, eps/s)``: the same value
    and gradient bit for bit in the normal range, and unit rows also where ``‖x‖²`` overflows (``|x|``
    from ~1.8e19 in float32, where ``F.normalize`` gives 0). A row shorter than ``eps`` is ``x / eps``, as
    there; a zero row stays 0.

    Example:
        >>> l2_normalize(torch.tensor([[3e30, 4e30], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    scale = row_scale(x)
    scaled = x / scale
    return scaled / torch.linalg.vector_norm(scaled, dim=1, keepdim=True).clamp_min(eps / scale)


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

    ``prepare`` L2-normalises rows when ``normalize`` is set or the metric is ``cosine``; ``block``,
    ``paired`` and ``gap`` expect prepared rows. Squares are taken of rows divided by a power of two where
    the rows' own squares could overflow first (see the module docstring), so a Euclidean distance is
    finite wherever it is representable and a squared one overflows only where its value does.

    Args:
        metric: ``euclidean`` ``‖a - b‖``, ``squared_euclidean`` ``‖a - b‖²``, ``cosine`` ``1 - â·b̂``.
        normalize: L2-normalise rows first (``x / max(‖x‖, 1e-12)``, as ``F.normalize``; see
            :func:`l2_normalize`).

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
        return l2_normalize(x) if self.normalize or self.metric == "cosine" else x

    def block(self, a: Tensor, b: Tensor, *, rescale: bool = True) -> Tensor:
        """Distances ``(A, B)`` between every row of ``a`` ``(A, D)`` and of ``b`` ``(B, D)``.

        From ``s² (‖â‖² + ‖b̂‖² - 2 â·b̂)`` (clamped at 0) with ``â = a / s``, ``b̂ = b / s`` and ``s`` the
        :func:`joint_scale` of both: one matrix product, as ``torch.cdist`` does for large inputs; the
        diagonal of ``block(x, x)`` is about 0, not exactly. ``rescale=False`` takes ``s = 1``: for rows a
        caller has already divided by a power of two (it then gets the same autograd graph as without
        scaling, so gradients accumulate in the same order).
        """
        if self.metric == "cosine":
            with _without_autocast(a.device):  # autocast would run the product in half precision
                return torch.mm(a, b.T).neg_().add_(1)
        if not rescale:
            squared = _squared_block(a, b)
            return squared if self.squared else safe_sqrt(squared)
        scaled, scale = self._scaled_squares(a, b)
        if self.squared:
            return scaled.mul_(scale).mul_(scale)  # s · s: s² alone may overflow where the product does not
        return safe_sqrt(scaled).mul_(scale)

    def _scaled_squares(self, a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
        """``(‖â_i - b̂_j‖²)`` ``(A, B)`` of the rows divided by their :func:`joint_scale` ``s``, and ``s``
        (0-d): the squared distances are the first times ``s²``, the distances its root times ``s``."""
        scale = joint_scale(a, b)
        return _squared_block(a / scale, b / scale), scale

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Dot products ``(A, B)`` of the prepared rows, ``â·b̂`` for ``cosine`` (``1 - block``, without the
        rounding of the subtraction); autocast off, as in :meth:`block`."""
        with _without_autocast(a.device):
            return torch.mm(a, b.T)

    def paired(self, a: Tensor, b: Tensor) -> Tensor:
        """Distances ``(K,)`` between row ``k`` of ``a`` and row ``k`` of ``b`` (both ``(K, D)``), from
        their difference (exact, also for nearly equal rows), each divided by its :func:`row_scale` for a
        Euclidean distance."""
        if self.metric == "cosine":
            return 1 - (a * b).sum(1)
        if self.squared:  # a sum of squares overflows only where its value does: no scaling needed
            return (a - b).square().sum(1)
        squared, scale = self._paired_squares(a, b)
        return safe_sqrt(squared) * scale

    def gap(self, anchor: Tensor, first: Tensor, second: Tensor) -> Tensor:
        """``d(anchor_k, first_k) - d(anchor_k, second_k)`` ``(K,)``, the difference a triplet loss takes.

        As ``paired(anchor, first) - paired(anchor, second)``, except where a squared distance overflows
        (``|x|`` beyond ~1.8e19 in float32, where that gives ``inf - inf = NaN``): there it is the same
        difference as ``(second - first)·(2 anchor - first - second)`` (:class:`_RowDot`), finite wherever the
        difference is, with a finite gradient.
        """
        if not self.squared:
            return self.paired(anchor, first) - self.paired(anchor, second)
        squared_1, squared_2 = self.paired(anchor, first), self.paired(anchor, second)
        bilinear = _RowDot.apply(second - first, 2 * anchor - first - second)
        return torch.where(torch.isinf(squared_1) | torch.isinf(squared_2), bilinear, squared_1 - squared_2)

    def _paired_squares(self, a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
        difference = a - b
        scale = row_scale(difference)[:, 0]
        return (difference / scale[:, None]).square().sum(1), scale


class _RowDot(LeanFunction):
    """``Σ_d u_kd v_kd`` ``(K,)`` of rows ``(K, D)`` whose products may overflow where the sum does not.

    Forward on each row pair divided by its power of two ``σ_k`` (:func:`row_scale`), times ``σ_k²``;
    backward ``g v`` and ``g u`` as they are, not through ``σ²`` (whose product with the gradient could
    overflow where the gradient does not). The backward is made of differentiable operations on the
    inputs, so higher derivatives (``torch.func``) differentiate it; ``vmap`` is generated.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(u: Tensor, v: Tensor) -> Tensor:
        scale = row_scale(torch.cat([u, v], 1))
        return (u / scale * (v / scale)).sum(1) * scale[:, 0] * scale[:, 0]

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, Tensor]:
        u, v = ctx.saved_tensors
        return grad[:, None] * v, grad[:, None] * u


def _squared_block(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_i‖² + ‖b_j‖² - 2 a_i·b_j`` clamped at 0, in one ``(A, B)`` buffer; autocast off."""
    with _without_autocast(a.device):  # autocast would run the product in half precision
        squared = torch.addmm(b.square().sum(1)[None], a, b.T, alpha=-2)
        return squared.add_(a.square().sum(1, keepdim=True)).clamp_min_(0)


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


__all__ = [
    "BLOCK_ELEMENTS",
    "Distance",
    "METRICS",
    "Metric",
    "joint_scale",
    "l2_normalize",
    "pairwise_distances",
    "power_of_two_scale",
    "row_blocks",
    "row_scale",
    "safe_sqrt",
]
