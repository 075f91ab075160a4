"""Difficulty-weighted CE and the stateful losses: weights and focusing that change as training goes.

SPEC §1 (difficulty weights, adaptive label smoothing) and §2 (frequency-derived α, class-balanced focal,
adaptive α and γ). :func:`difficulty_ce_loss` is stateless (a pure function and its module). The others
are modules whose statistics live in buffers and follow one rule (SPEC §2, "Running statistics"):

* each forward in training mode is one step (under gradient accumulation every micro-batch counts); the
  batch's statistic ``x`` (valid pixels only) is folded in first, ``s ← (1-m) s + m x`` with momentum
  ``m ∈ (0, 1]``, then the loss is computed with the updated state. The first batch with data for a
  statistic sets it; a class absent from a batch keeps its value. (``cb_focal`` sums its counts instead.)
* before any update the module equals its static form (α = α_init, γ = γ_0, ε = ε_0); ``eval()`` freezes
  the state and uses it; the state round-trips through ``state_dict``, so a resumed run continues exactly.
* ``forward(logits, target, weight_map=None, mask=None)``: a per-pixel ``weight_map`` ``ω`` ``(N, *S)``
  weights the loss as the function's (``Σ ω_i L_i``, ``mean`` divided by the valid pixels' ``Σ ω_i``) and
  the batch's statistics alike: each valid pixel counts ``ω_i`` times in every sum and count the state
  folds in (an integer ``ω_i`` is the pixel repeated). ``mask`` is ``ignore_index`` in the state too.
* :meth:`AdaptiveLoss.update` is the only place the state changes, and it receives the batch's sums and
  counts (``batch_sums``), so that a distributed run can all-reduce them before folding them in. The
  statistics are detached: the loss is differentiated (logits, a soft target), its state is not.
* the batch's sums run in the compute dtype (float32 for half inputs, float64 for float64 ones) and the
  floating state is float64 whatever the module is converted to (``.half()``, ``.double()``, ``.to(dtype)``
  ...), so a float64 loss is float64-accurate and a half-precision module keeps exact statistics.
* ``load_state_dict`` checks what it loads: a state for another class count, a statistic of the wrong
  shape, NaN, ``±inf`` or a negative value raise :class:`~seglosses.SegLossError` naming the buffer.

Each stateful module computes the loss of a pure function (its ``function``, e.g. :func:`focal_loss`) with
options derived from the state (its ``options``), from the tensors that function computes anyway.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Literal, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.errors import unknown_choice
from .._core.numerics import compute_dtype
from .._core.options import (
    ClassValues,
    Options,
    Reduction,
    call_input,
    check_bool,
    check_choice,
    check_ignore_index,
    check_int,
    check_number,
    check_reduction,
    class_values,
)
from .._core.pixel_weights import PixelWeights, pixel_inputs, pixel_weights, weighted_pixel_loss
from .._core.reduction import reduce
from .._core.registry import register
from .._core.state import Accumulator, PerClass
from .._core.targets import IndexTarget, SoftmaxTarget, num_valid, softmax_target
from ..losses.base import PixelWeightedModule, module_for
from ..losses.cross_entropy import (
    CrossEntropyOptions,
    _cross_entropy,
    _torch_ignore,
    ce_from_prepared,
    cross_entropy_loss,
    index_term,
)
from ..losses.focal import (
    FocalOptions,
    _focal,
    _FocalDense,
    _pixel_shares,
    focal_from_prepared,
    focal_loss,
    focal_modulation,
    index_cross_entropy,
)

Adapt = Literal["both", "alpha", "gamma"]
ADAPT = ("both", "alpha", "gamma")


# --------------------------------------------------------------------------- difficulty-weighted CE


def difficulty_ce_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    detach: bool = True,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Difficulty-weighted cross-entropy (SPEC §1): ``L_i = w_i · (-log p_{i,y_i})``.

    The per-pixel weight ``w_i = α + (1-α)(1 - p_{i,y_i})^γ`` is a weight, not a new loss: it is detached
    by default, so the gradient is ``w_i (p_i - y_i)``. With ``detach=False`` the weight is differentiated
    too and ``α = 0`` gives exactly :func:`focal_loss` (``α·CE + (1-α)·focal``; finite gradients for every
    ``γ >= 0``). ``γ = 0`` or ``α = 1`` gives cross-entropy. A soft target gives
    ``-Σ_c y_ic (α + (1-α)(1-p_ic)^γ) log p_ic``.

    ``mean`` is the plain mean over valid pixels (the weight is part of the formula, as focal's factor);
    for a dense target the pixel count is ``Σ y``, summed in the compute dtype (float64 for float64
    logits). A soft target that requires a gradient gets ``∂L/∂y_ic = -w_ic log p_ic`` (through the mean's
    ``Σ y`` too).

    Args:
        logits: ``(N, C, *S)``, ``C >= 2``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.
        weight_map: per-pixel weights ``(N, *S)``, ``>= 0``, multiplying the difficulty weight: the loss
            sums ``ω_i w_i CE_i`` and ``mean`` divides by the valid pixels' summed ``ω_i`` (``Σ_i ω_i Σ_c
            y_ic`` for a soft target); an integer ``ω_i`` is pixel i repeated ``ω_i`` times.
        mask: ``(N, *S)`` bool, True where a pixel counts (the general form of ``ignore_index``; on a
            soft target a masked pixel's logits reach neither value nor gradient).
        alpha: the weight floor ``α ∈ [0, 1]``.
        gamma: ``γ >= 0``.
        detach: compute the weight without gradient (default).
        ignore_index: index-target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``; ``mean`` / ``sum`` -> scalar.

    Raises:
        SegLossError: bad shapes, dtypes, target values or options.
    """
    opts = DifficultyCEOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        alpha=alpha,
        gamma=gamma,
        detach=detach,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _difficulty_ce(logits, target, opts)


def _difficulty_ce(logits: Tensor, target: Tensor, opts: DifficultyCEOptions) -> Tensor:
    """:func:`difficulty_ce_loss` on checked options (its module's forward too)."""
    if opts.pixel_weights is not None:  # the per-pixel shares of mean's denominator are focal's
        return weighted_pixel_loss(_difficulty_ce, _pixel_shares, logits, target, opts, binary=False)
    prepared = softmax_target(logits, target, opts.ignore_index, log_terms=True, kernel_checks=True)
    work = logits.to(compute_dtype(logits))
    a, g, detach = opts.alpha, opts.gamma, opts.detach
    fused = index_term(work, prepared, g, a, detach) if isinstance(prepared, IndexTarget) else None
    if fused is not None and isinstance(prepared, IndexTarget):
        loss, denominator = fused, prepared.num_valid()
    elif isinstance(prepared, IndexTarget):
        ce = index_cross_entropy(work, prepared, opts.ignore_index)
        if detach:
            loss = (a + (1 - a) * torch.expm1(-ce.detach()).neg_().pow_(g)) * ce
        else:
            loss = a * ce + (1 - a) * focal_modulation(ce, g)
        denominator = prepared.num_valid()
    else:
        dense = prepared.dense.to(work.dtype)
        log_p = torch.log_softmax(work, dim=1)
        if detach:
            weight = dense * (a + (1 - a) * torch.expm1(log_p.detach()).neg_().pow_(g))
            loss = -torch.where(dense > 0, weight * log_p, 0.0).sum(1)  # y = 0 at log p = -inf: 0; NaN stays
        else:
            ce = -torch.where(dense > 0, dense * log_p, 0.0).sum(1)
            loss = a * ce + (1 - a) * _FocalDense.apply(work, dense, None, g)
        denominator = dense.sum()  # Σ y in the compute dtype: float64 for a float64 loss
    return reduce(loss, opts.reduction, denominator)


@dataclass(frozen=True, kw_only=True, eq=False)
class DifficultyCEOptions(Options):
    """The options of :func:`difficulty_ce_loss` (and its module), checked once."""

    alpha: float
    gamma: float
    detach: bool
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "alpha": check_number("alpha", self.alpha, low=0.0, high=1.0),
            "gamma": check_number("gamma", self.gamma, low=0.0),
            "detach": check_bool("detach", self.detach),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


DifficultyCELoss = module_for(
    "DifficultyCELoss", difficulty_ce_loss, DifficultyCEOptions, _difficulty_ce, PixelWeightedModule
)


# --------------------------------------------------------------------------- pure helpers of the state


def fold_in(state: Tensor, seen: Tensor, sums: Tensor, counts: Tensor, momentum: float) -> None:
    """SPEC's running-statistics rule, in place, for means ``x = sums / counts``: ``s ← (1-m) s + m x``
    where ``counts > 0``; the first batch with data sets ``s = x`` (``seen`` False there, then set); where
    ``counts = 0`` ``s`` keeps its value. ``counts`` broadcasts over ``sums`` (a table of statistics is
    folded in one go). Detached, and computed in the state's dtype (``x``, ``m`` and the blend), whatever
    the dtype of the sums."""
    sums, counts = sums.detach().to(state.dtype), counts.detach().to(state.dtype)
    has_data = counts > 0
    value = sums / counts.clamp_min(torch.finfo(state.dtype).tiny)  # 0 where no data
    rate = torch.where(seen, state.new_full((), momentum), 1.0) * has_data  # 1 gives x, 0 keeps s
    # through a view with a leading 1: torch.compile (AOTAutograd, torch 2.13) drops an in-place update
    # of a 0-d float64 CPU buffer (``confidence``) written directly, not one written through a view
    state.unsqueeze(0).lerp_(value, rate)
    seen |= has_data


def class_balanced_alpha(counts: Tensor, beta: float) -> Tensor:
    """Effective-number α (Cui et al. 2019) from class counts ``(C,)``, normalised to sum to C.

    ``w_c = (1-β) / (1-β^{N_c})`` for ``N_c > 0`` and 0 for a class never seen; ``α = C w / Σ w``, or 1
    everywhere while no class has a count (the static focal loss). Computed on the counts' device in
    float64, without a host synchronisation (the same values as ``class_weights(counts,
    method="effective_number")`` where every count is positive).
    """
    n = counts.to(torch.float64)
    present = n > 0
    log_beta = torch.log(torch.tensor(beta, dtype=torch.float64, device=n.device))
    w = torch.where(present, (1 - beta) / -torch.expm1(torch.where(present, n, 1.0) * log_beta), 0.0)
    total = w.sum()
    return torch.where(total > 0, w * (n.numel() / torch.where(total > 0, total, 1.0)), 1.0)


def frequency_alpha(frequencies: Tensor, *, scale: float = 1.0) -> Tensor:
    """Frequency-derived α (SPEC §2): ``α_c = 1 / (1 + k f_c)`` with the scale ``k = scale >= 0`` and class
    frequencies ``f_c`` ``(C,)`` (the document calls ``k`` β; here β is always the effective-number β)."""
    return 1.0 / (1.0 + check_number("scale", scale, low=0.0) * frequencies)


def adaptive_alpha(alpha: Tensor, class_ce: Tensor, mean_ce: Tensor, seen: Tensor) -> Tensor:
    """``α_c(t) = α_c^init · L̄_c / L̄`` (SPEC §2); ``α_c^init`` where ``seen`` is False (a class, or the
    mean, never seen) and where ``L̄ = 0`` (no error anywhere: the ratio is taken as 1)."""
    ratio = class_ce / mean_ce.clamp_min(torch.finfo(class_ce.dtype).tiny)
    return alpha * torch.where(seen & (mean_ce > 0), ratio, 1.0)


def adaptive_gamma(gamma: float, recall: Tensor, seen: Tensor, lam: float) -> Tensor:
    """``γ_c(t) = γ_0 · exp(-λ (A_c - A_min) / (A_max - A_min))`` over the classes seen (SPEC §2); ``γ_0``
    for a class never seen and everywhere when ``A_max = A_min``: the worst class gets the strongest
    focusing."""
    a_min = torch.where(seen, recall, torch.inf).amin()
    span = torch.where(seen, recall, -torch.inf).amax() - a_min  # -inf while no class is seen
    relative = (recall - a_min) / span.clamp_min(torch.finfo(recall.dtype).tiny)
    return gamma * torch.exp(-lam * torch.where(seen, relative, 0.0))


def class_sums(
    index: Tensor,
    valid: Optional[Tensor],
    rows: Sequence[Tensor],
    num_classes: int,
    dtype: torch.dtype,
    weight: Optional[Tensor] = None,
) -> Tensor:
    """Per-class sums over the valid pixels ``(len(rows) + 1, C)``: of each pixel tensor in ``rows`` (of
    ``index``'s shape), then the pixel counts. Ignored pixels go to an extra bin that is dropped. With
    per-pixel weights ``ω`` (``index``'s shape) each pixel counts ``ω_i`` times: ``Σ ω r`` and ``Σ ω``
    (a pixel of weight 0 adds nothing, not even a NaN of its row)."""
    bins = (index if valid is None else torch.where(valid, index, num_classes)).reshape(-1)
    if weight is None:
        ones = torch.ones((), dtype=dtype, device=index.device).expand(bins.shape)
        rows = [*(row.reshape(-1).to(dtype) for row in rows), ones]
    else:
        w = weight.detach().reshape(-1).to(dtype)
        rows = [*(torch.where(w > 0, row.reshape(-1).to(dtype) * w, 0.0) for row in rows), w]
    return torch.stack([_bin_sum(bins, row, num_classes + 1) for row in rows])[:, :num_classes]


def with_total(sums: Tensor) -> Tensor:
    """``(K, C)`` per-class sums and their total over the classes as a last column, ``(K, C + 1)``."""
    return torch.cat([sums, sums.sum(-1, keepdim=True)], -1)


def _bin_sum(bins: Tensor, values: Tensor, size: int) -> Tensor:
    """``Σ values`` per bin, ``(size,)``. CUDA (eager): ``bincount``, whose per-block histograms avoid
    millions of contended atomic adds into a few bins, or with deterministic algorithms on, one masked
    sum per bin (a bin is a class: a loop over classes, not pixels). Otherwise a 1-D ``scatter_add_``
    (``torch.compile`` traces it: ``bincount``'s output size depends on the data)."""
    if values.is_cuda and not torch.compiler.is_compiling():
        if torch.are_deterministic_algorithms_enabled():  # deterministic scatter_add_ sorts: 16x slower
            return torch.stack([torch.where(bins == b, values, 0).sum() for b in range(size)])
        return torch.bincount(bins, weights=values, minlength=size)[:size].to(values.dtype)
    return values.new_zeros(size).scatter_add_(0, bins, values)


def dense_class_sums(dense: Tensor, rows: Sequence[Tensor], weight: Optional[Tensor] = None) -> Tensor:
    """Per-class sums ``(len(rows) + 1, C)`` of ``y · r`` for a dense target ``y`` ``(N, C, *S)``, then
    ``Σ y`` (the soft class counts); detached (statistics, not part of the loss's graph). With per-pixel
    weights ``ω`` ``(N, *S)``: of ``ω y r`` and ``Σ ω y``."""
    dense = dense.detach()
    if weight is not None:
        dense = dense * weight.detach().unsqueeze(1).to(dense.dtype)
    dims = [0, *range(2, dense.ndim)]
    weighted = [torch.where(dense > 0, dense * r, 0.0).sum(dims) for r in rows]  # y = 0 at -log p = inf: 0
    return torch.stack([*weighted, dense.sum(dims)])


def argmax_hits(log_p: Tensor, ce: Tensor) -> Tensor:
    """Whether argmax is the true class (ties count as hits), ``(N, *S)``: ``log p_t = -ce`` is the largest
    log-probability. From the ``log_softmax`` and CE the loss computes anyway, plus one max over classes
    (``argmax`` over the class dim is far slower on CPU)."""
    return -ce >= log_p.amax(1)


# --------------------------------------------------------------------------- the stateful base


class AdaptiveLoss(Accumulator):
    """Base of the stateful losses (see the module docstring).

    A subclass sets ``function`` (the pure loss its state parameterises) and implements ``batch_sums``
    (the batch's sums and counts, detached), :meth:`update` (fold them in) and ``checked_options`` (the
    function's options under the current state). Its statistics are those of an
    :class:`~seglosses._core.state.Accumulator`, declared with ``add_state``; the per-class ones are sized
    at the first forward when ``num_classes`` is not given, or by ``load_state_dict`` from the state dict.

    **State dtype.** Every floating buffer (running means, recall, frequencies, confidence, counts, α^init)
    is float64 and stays float64: ``.half()``, ``.bfloat16()``, ``.float()``, ``.double()`` and
    ``.to(dtype)`` move it with the module's device but leave its dtype (and so its values) as they are,
    and flags stay bool. The batch's sums run in the compute dtype of the logits (float32 for half inputs,
    float64 for float64 ones) and are folded in float64, so any input dtype works with any conversion of
    the module, a float64 loss is float64-accurate, and a converted module follows an unconverted one bit
    for bit. A state dict of an earlier float32 state loads (converted exactly).

    **Loading state.** ``load_state_dict`` checks every statistic before loading any: a state for
    another class count than the module's (given as ``num_classes`` or sized by a forward), a wrong
    shape, NaN, ``±inf``, a negative value, or a flag that is not 0 or 1 raise
    :class:`~seglosses.SegLossError` naming the buffer, and the module keeps its state. A valid state
    loads exactly (a resumed run continues bit for bit).
    """

    stateful: ClassVar[bool] = True
    lazy_classes: ClassVar[bool] = True
    function: ClassVar[Callable[..., Tensor]]
    #: ``function`` on checked options, ``implementation(logits, target, options)``
    implementation: ClassVar[Callable[..., Tensor]]
    #: the keyword inputs it takes in a compound (as :class:`~seglosses.losses.base.PixelWeightedModule`)
    term_inputs: ClassVar[Dict[str, bool]] = {"weight_map": False, "mask": False}

    def __init__(self, num_classes: Optional[int], ignore_index: Optional[int], reduction: str) -> None:
        super().__init__(num_classes, min_classes=2)  # sync on by default: see fold()
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)

    @property
    def smoothing(self) -> bool:
        """Whether the loss may put label-smoothing mass on every class (then a ``-inf`` logit anywhere
        makes it ``+inf``: SPEC section 6)."""
        return False

    def _prepare(
        self, logits: Tensor, target: Tensor, ignore_index: Union[int, None, str] = "own"
    ) -> Tuple[Tensor, SoftmaxTarget]:
        """Check the inputs once, size the state to C; the logits in their compute dtype and the target.
        ``ignore_index``: the module's own (``"own"``), or the one a mask was folded in with."""
        ignore = self.ignore_index if ignore_index == "own" else cast(Optional[int], ignore_index)
        prepared = softmax_target(logits, target, ignore, log_terms=True, smoothing=self.smoothing)
        self.size_state(logits.shape[1], logits.device)
        return prepared.clean(logits.to(compute_dtype(logits))), prepared

    def updates_state(self) -> bool:
        """Whether a forward now folds its batch in (training mode)."""
        return self.training

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        weight_map: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        """The loss under the running statistics, after folding the batch in (training mode); with a
        ``weight_map`` or ``mask``, :meth:`weighted_forward`."""
        if weight_map is not None or mask is not None:
            return self.weighted_forward(logits, target, weight_map, mask)
        return self.plain_forward(logits, target)

    def plain_forward(self, logits: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - overridden
        """The forward without weight map and mask (each subclass's own statistics and loss)."""
        raise NotImplementedError

    def forward_term(self, logits: Tensor, target: Tensor, inputs: Dict[str, Tensor]) -> Tensor:
        """The loss as a term of a :class:`~seglosses.CompoundLoss` (its ``weight_map`` and ``mask``)."""
        return self(logits, target, inputs.get("weight_map"), inputs.get("mask"))

    def weighted_forward(
        self, logits: Tensor, target: Tensor, weight_map: Optional[Tensor], mask: Optional[Tensor]
    ) -> Tensor:
        """The forward with a ``weight_map`` and / or a ``mask`` ``(N, *S)`` (one of them given).

        The statistics count each valid pixel ``ω_i`` times (:meth:`batch_sums` with ``weight``); a mask
        on an index target is folded into it as ``ignore_index`` first (a masked pixel is an ignored one,
        in the state too), on a soft target a masked pixel has weight 0 and its logits are set to 0. The
        loss is ``implementation`` with the options under the updated state and the weights:
        ``function(logits, target, weight_map, mask, **options)``."""
        pixels = cast(PixelWeights, pixel_weights(logits, weight_map, mask))
        logits, folded, ignore, weight = pixel_inputs(logits, target, self.ignore_index, pixels, binary=False)
        work, prepared = self._prepare(logits, folded, ignore)
        if self.updates_state():
            self.fold(self.batch_sums(work, prepared, weight=weight))
        options = self.checked_options.with_values(pixel_weights=pixels)
        # the logits cleaned as the unweighted forward's (a NaN at an ignored pixel reaches nothing)
        return type(self).implementation(prepared.clean(logits), target, options)

    def batch_sums(  # pragma: no cover - every subclass overrides it
        self, work: Tensor, prepared: SoftmaxTarget, *, weight: Optional[Tensor] = None
    ) -> Tensor:
        """The batch's sums and counts (detached), each valid pixel counted ``weight_i`` times."""
        raise NotImplementedError

    @property
    def checked_options(self) -> Options:  # pragma: no cover - every subclass overrides it
        """The options of ``function`` under the current state, as the options object its forward passes
        on (the state's values as they are: checked at construction, not per forward)."""
        raise NotImplementedError

    @property
    def options(self) -> Dict[str, Any]:
        """The options of ``function`` under the current state: ``function(logits, target, **options)``
        is what the last forward computed (after its update)."""
        return self.checked_options.as_dict()

    def update(self, sums: Tensor) -> None:  # pragma: no cover - every subclass overrides it
        """Fold one batch's sums and counts into the state: the only method that changes it."""
        raise NotImplementedError

    def fold(self, sums: Tensor) -> None:
        """:meth:`update` with the batch's sums summed over the processes first when ``sync`` is on and
        a ``torch.distributed`` group is initialised (every rank must run the training forward), so every
        process holds the same state; set the attributes ``sync = False`` or ``process_group`` to change it.
        """
        (sums,) = self.synced(sums.detach())  # statistics: never part of the loss's graph
        self.update(sums)

    def _config(self) -> Dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self._config().items())


def _reject_unknown(module: nn.Module, unknown: Dict[str, Any]) -> None:
    """Unknown options raise, naming the nearest known one."""
    known = [p for p in inspect.signature(type(module).__init__).parameters if p not in ("self", "unknown")]
    for name in unknown:
        raise unknown_choice(f"an option of {type(module).__name__}", name, known)


def _focal_options(gamma: float, ignore_index: Optional[int], reduction: str) -> FocalOptions:
    """The static options of :func:`focal_loss` that a focal module completes with its state's α (and γ)."""
    return FocalOptions(
        gamma=gamma, alpha=None, alpha_schedule=None, step=0.0, ignore_index=ignore_index, reduction=reduction
    )


def _momentum(momentum: float) -> float:
    return check_number("momentum", momentum, low=0.0, high=1.0, low_open=True)


def _class_counts(work: Tensor, prepared: SoftmaxTarget, weight: Optional[Tensor] = None) -> Tensor:
    """The batch's class counts ``(C,)`` over valid pixels: float64 for an index target, ``Σ y`` (float) for
    a dense one; with per-pixel weights ``ω``, ``Σ ω`` and ``Σ ω y``."""
    if isinstance(prepared, IndexTarget):
        return class_sums(prepared.index(), prepared.valid, [], work.shape[1], torch.float64, weight)[0]
    return dense_class_sums(prepared.dense.to(work.dtype), [], weight)[0]  # detached


# --------------------------------------------------------------------------- adaptive focal


class AdaptiveFocalLoss(AdaptiveLoss):
    r"""Focal loss whose α, per-class γ, or both follow running per-class statistics (SPEC §2).

    * adaptive α: ``α_c(t) = α_c^init · L̄_c(t) / L̄(t)``, with ``L̄_c`` the running mean of the unweighted
      CE ``-log p_t`` over the valid pixels of true class c and ``L̄`` the same over all valid pixels
      (``α^init = 1`` when ``alpha`` is None): classes the model gets wrong weigh more.
    * adaptive γ: ``γ_c(t) = γ_0 · exp(-λ (A_c - A_min) / (A_max - A_min))``, ``A_c`` the running per-class
      recall under argmax (ties count as hits), ``A_min`` / ``A_max`` over the classes seen so far; ``γ_0``
      when ``A_max = A_min`` and for a class never seen: the worst class gets the strongest focusing.

    The loss is :func:`focal_loss` with ``alpha = α(t)`` and ``gamma = γ(t)`` (see :attr:`options`); the
    statistics come from the per-pixel CE the focal loss computes anyway, plus one max over classes for
    the recall. A soft target ``y`` counts pixel i towards class c with weight ``y_ic``. State (buffers):
    ``class_ce``, ``class_recall`` (tracked when γ adapts), ``class_seen`` ``(C,)``; ``mean_ce``,
    ``mean_seen``. ``update(sums)`` takes the batch's per-class sums ``(3, C)``: ``Σ CE``, ``Σ hits``,
    pixel count. The statistics and ``alpha`` (α^init) are float64 buffers whatever the module is converted
    to (see :class:`AdaptiveLoss`, "State dtype"; checked when loaded).

    **Weight maps** (:meth:`AdaptiveLoss.weighted_forward`): ``forward(logits, target, weight_map=None,
    mask=None)``; the loss is ``focal_loss(logits, target, weight_map, mask, **options)`` and the
    statistics count pixel i ``ω_i`` times: ``L̄_c = Σ ω CE / Σ ω`` over class c, ``A_c = Σ ω hits / Σ ω``.

    Args:
        num_classes: C, or None to size the state at the first forward.
        gamma: ``γ_0 >= 0``.
        alpha: ``α^init``: None, a scalar or one value per class ``(C,)``, non-negative.
        adapt: ``"both"``, ``"alpha"`` or ``"gamma"``: what follows the statistics (the rest is static).
        lam: ``λ >= 0`` of the adaptive γ (``λ = 0``: ``γ_0`` everywhere).
        momentum: ``m ∈ (0, 1]`` of the running averages (1 keeps only the last batch).
        ignore_index: index-target value whose pixels count nowhere (neither in the loss nor the state).
        reduction: ``none`` -> ``(N, *S)``; ``mean`` (over valid pixels) / ``sum`` -> scalar.

    Raises:
        SegLossError: a bad option (``λ < 0``, momentum outside ``(0, 1]``, ...), bad inputs, or logits whose
            C differs from the state's.
    """

    function = staticmethod(focal_loss)
    implementation = staticmethod(_focal)
    alpha: Optional[Tensor]
    running: Tensor
    seen: Tensor

    def __init__(
        self,
        *,
        num_classes: Optional[int] = None,
        gamma: float = 2.0,
        alpha: Optional[ClassValues] = None,
        adapt: Adapt = "both",
        lam: float = 1.0,
        momentum: float = 0.1,
        ignore_index: Optional[int] = None,
        reduction: Reduction = "mean",
        **unknown: Any,
    ) -> None:
        _reject_unknown(self, unknown)
        super().__init__(num_classes, ignore_index, reduction)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.adapt = check_choice("adapt", adapt, ADAPT)
        self.lam = check_number("lam", lam, low=0.0)
        self.momentum = _momentum(momentum)
        initial = class_values("alpha", alpha, num_classes=self.num_classes)
        if initial is not None and initial.ndim == 1 and self.num_classes is None:
            self.num_classes = check_int("num_classes (the length of alpha)", initial.numel(), low=2)
        if initial is not None:  # float64 state; Python numbers as written, not rounded through float32
            exact = alpha if isinstance(alpha, Tensor) else torch.as_tensor(alpha, dtype=torch.float64)
            initial = exact.detach().to(torch.float64).reshape(initial.shape).clone()
        self.register_buffer("alpha", initial)
        if initial is not None:  # configured, checked on load, kept by reset()
            self.declare_state("alpha", kind="sum", reset=False)
        self.add_state("running", (2, PerClass(1)))
        self.add_state("seen", (PerClass(1),), dtype=torch.bool, kind="flag")
        self._static_options = _focal_options(self.gamma, self.ignore_index, self.reduction)

    def plain_forward(self, logits: Tensor, target: Tensor) -> Tensor:
        work, prepared = self._prepare(logits, target)
        if not isinstance(prepared, IndexTarget):
            if self.training:
                self.fold(self.batch_sums(work, prepared))
            return focal_from_prepared(work, prepared, self.checked_options)
        # F.cross_entropy in its two steps, so that the statistics reuse log p
        log_p = torch.log_softmax(work, 1)
        ce = F.nll_loss(
            log_p, prepared.labels.long(), ignore_index=_torch_ignore(self.ignore_index), reduction="none"
        )
        if self.training:
            self.fold(self.batch_sums(work, prepared, log_p.detach(), ce.detach()))
        return focal_from_prepared(work, prepared, self.checked_options, ce=ce)

    def batch_sums(
        self,
        work: Tensor,
        prepared: SoftmaxTarget,
        log_p: Optional[Tensor] = None,
        ce: Optional[Tensor] = None,
        *,
        weight: Optional[Tensor] = None,
    ) -> Tensor:
        """Sums ``(3, C + 1)`` over the batch's valid pixels of each class, then of all classes: ``Σ CE``,
        ``Σ hits`` (0 while γ is static), pixel count; ``log_p`` and ``ce``: the detached ``log_softmax``
        and per-pixel CE of an index target, when already computed; ``weight`` ``(N, *S)``: each pixel
        counts ``ω_i`` times (``Σ ω CE``, ``Σ ω hits``, ``Σ ω``)."""
        log_p = torch.log_softmax(work.detach(), 1) if log_p is None else log_p
        if not isinstance(prepared, IndexTarget):
            hits = log_p == log_p.amax(1, keepdim=True)
            dense = prepared.dense.to(work.dtype)
            return with_total(dense_class_sums(dense, [-log_p, hits], weight))  # detached
        if ce is None:
            ignore = _torch_ignore(prepared.ignore_index)
            ce = F.nll_loss(log_p, prepared.labels.long(), ignore_index=ignore, reduction="none")
        hits = argmax_hits(log_p, ce) if self.adapt != "alpha" else torch.zeros_like(ce)
        index, valid, classes = prepared.index(), prepared.valid, work.shape[1]
        return with_total(class_sums(index, valid, [ce, hits], classes, ce.dtype, weight))

    def update(self, sums: Tensor) -> None:
        """Fold the batch's sums ``(3, C + 1)`` (``Σ CE``, ``Σ hits``, count; per class, then all) in."""
        fold_in(self.running, self.seen, sums[:2], sums[2], self.momentum)

    @property
    def class_ce(self) -> Tensor:
        """``L̄_c`` ``(C,)``, the running mean CE of each class."""
        return self.running[0, :-1]

    @property
    def class_recall(self) -> Tensor:
        """``A_c`` ``(C,)``, the running recall of each class (0 while γ is static)."""
        return self.running[1, :-1]

    @property
    def mean_ce(self) -> Tensor:
        """``L̄``, the running mean CE over all valid pixels."""
        return self.running[0, -1]

    @property
    def class_seen(self) -> Tensor:
        return self.seen[:-1]

    @property
    def mean_seen(self) -> Tensor:
        return self.seen[-1]

    @property
    def checked_options(self) -> FocalOptions:
        return self._static_options.with_values(gamma=self.current_gamma(), alpha=self.current_alpha())

    def current_alpha(self) -> Optional[Tensor]:
        """α(t): ``(C,)`` when α adapts (once C is known), else ``alpha`` as given."""
        if self.adapt == "gamma" or self.num_classes is None:
            return self.alpha
        initial = self.alpha if self.alpha is not None else self.class_ce.new_ones(())
        return adaptive_alpha(initial, self.class_ce, self.mean_ce, self.class_seen & self.mean_seen)

    def current_gamma(self) -> Union[float, Tensor]:
        """γ(t): ``(C,)`` when γ adapts (once C is known), else ``γ_0``."""
        if self.adapt == "alpha" or self.num_classes is None:
            return self.gamma
        return adaptive_gamma(self.gamma, self.class_recall, self.class_seen, self.lam)

    def _config(self) -> Dict[str, Any]:
        return {
            "gamma": self.gamma,
            "adapt": self.adapt,
            "lam": self.lam,
            "momentum": self.momentum,
            **super()._config(),
        }


# --------------------------------------------------------------------------- class-balanced focal


class ClassBalancedFocalLoss(AdaptiveLoss):
    r"""Class-balanced focal loss (Cui et al. 2019; SPEC §2): focal with effective-number α.

    ``α_c = C w_c / Σ w``, ``w_c = (1-β) / (1-β^{N_c})`` (:func:`class_balanced_alpha`), from the class
    counts ``N_c``: given as ``counts`` (all must be > 0), or, when None, the counts of the valid pixels of
    every training batch, summed in the ``counts`` buffer (the batch is folded in before α is computed; a
    class not counted yet gets ``w = 0``; before any count the loss is the static focal loss). A soft
    target counts ``Σ y``. ``update(counts)`` takes the batch's class counts ``(C,)``. The loss is
    :func:`focal_loss` with ``alpha = α`` (see :attr:`options`). ``counts`` is a float64 buffer (a soft
    target's counts are fractional; integers are exact up to 2^53) whatever the module is converted to
    (see :class:`AdaptiveLoss`, "State dtype"; checked when loaded: finite, non-negative).

    **Weight maps** (:meth:`AdaptiveLoss.weighted_forward`): ``forward(logits, target, weight_map=None,
    mask=None)``; the loss is ``focal_loss(logits, target, weight_map, mask, **options)`` and a
    counted batch adds ``N_c += Σ_{i: y_i = c} ω_i`` (``Σ ω y`` for a soft target).

    Args:
        counts: class pixel counts ``(C,)``, all positive, or None to count the training batches.
        beta: ``β ∈ [0, 1)``.
        gamma: ``γ >= 0``.
        num_classes: C, or None (from ``counts``, or sized at the first forward).
        ignore_index: index-target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``; ``mean`` (over valid pixels) / ``sum`` -> scalar.

    Raises:
        SegLossError: a count that is not positive, ``β`` outside ``[0, 1)``, another bad option or input.
    """

    function = staticmethod(focal_loss)
    implementation = staticmethod(_focal)
    counts: Tensor

    def __init__(
        self,
        *,
        counts: Optional[ClassValues] = None,
        beta: float = 0.9999,
        gamma: float = 2.0,
        num_classes: Optional[int] = None,
        ignore_index: Optional[int] = None,
        reduction: Reduction = "mean",
        **unknown: Any,
    ) -> None:
        _reject_unknown(self, unknown)
        super().__init__(num_classes, ignore_index, reduction)
        self.beta = check_number("beta", beta, low=0.0, high=1.0, high_open=True)
        self.gamma = check_number("gamma", gamma, low=0.0)
        fixed = class_values(
            "counts", counts, num_classes=self.num_classes, low_open=True, allow_scalar=False
        )
        if fixed is not None and self.num_classes is None:
            self.num_classes = check_int("num_classes (the length of counts)", fixed.numel(), low=2)
        self.fixed = fixed is not None
        self.add_state("counts", (PerClass(),))
        if fixed is not None:
            self.counts.copy_(fixed)
        self._static_options = _focal_options(self.gamma, self.ignore_index, self.reduction)

    def plain_forward(self, logits: Tensor, target: Tensor) -> Tensor:
        work, prepared = self._prepare(logits, target)
        if self.updates_state():
            self.fold(self.batch_sums(work, prepared))
        return focal_from_prepared(work, prepared, self.checked_options)

    def updates_state(self) -> bool:
        return self.training and not self.fixed

    def batch_sums(self, work: Tensor, prepared: SoftmaxTarget, *, weight: Optional[Tensor] = None) -> Tensor:
        """The batch's class counts ``(C,)`` over valid pixels (``Σ ω`` per class with ``weight``)."""
        return _class_counts(work, prepared, weight)

    def update(self, sums: Tensor) -> None:
        """Add the batch's class counts ``(C,)``."""
        self.counts += sums.detach().to(self.counts.dtype)

    def reset(self) -> None:
        if not self.fixed:
            super().reset()

    @property
    def checked_options(self) -> FocalOptions:
        alpha = None if self.num_classes is None else class_balanced_alpha(self.counts, self.beta)
        return self._static_options.with_values(alpha=alpha)

    def _config(self) -> Dict[str, Any]:
        return {"beta": self.beta, "gamma": self.gamma, "fixed": self.fixed, **super()._config()}


# --------------------------------------------------------------------------- frequency-weighted focal


class FrequencyFocalLoss(AdaptiveLoss):
    r"""Focal loss with frequency-derived α (SPEC §2): ``α_c = 1 / (1 + k f̄_c)``.

    ``f̄_c`` is the running average of the class frequencies of the training batches' valid pixels (a
    class absent from a batch has frequency 0 in it); ``k = scale >= 0`` (the document's β). Before any
    update ``f̄ = 0``, ``α = 1``: the static focal loss. ``update(counts)`` takes the batch's class counts
    ``(C,)``. The loss is :func:`focal_loss` with ``alpha = α`` (see :attr:`options`). ``frequency`` is a
    float64 buffer whatever the module is converted to (see :class:`AdaptiveLoss`, "State dtype").

    **Weight maps** (:meth:`AdaptiveLoss.weighted_forward`): ``forward(logits, target, weight_map=None,
    mask=None)``; the loss is ``focal_loss(logits, target, weight_map, mask, **options)`` and the
    batch's frequencies are weighted, ``f_c = Σ_{i: y_i = c} ω_i / Σ_i ω_i`` over the valid pixels.

    Args:
        num_classes: C, or None to size the state at the first forward.
        scale: ``k >= 0``.
        gamma: ``γ >= 0``.
        momentum: ``m ∈ (0, 1]`` of the running average.
        ignore_index: index-target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``; ``mean`` (over valid pixels) / ``sum`` -> scalar.
    """

    function = staticmethod(focal_loss)
    implementation = staticmethod(_focal)
    frequency: Tensor
    frequency_seen: Tensor

    def __init__(
        self,
        *,
        num_classes: Optional[int] = None,
        scale: float = 1.0,
        gamma: float = 2.0,
        momentum: float = 0.1,
        ignore_index: Optional[int] = None,
        reduction: Reduction = "mean",
        **unknown: Any,
    ) -> None:
        _reject_unknown(self, unknown)
        super().__init__(num_classes, ignore_index, reduction)
        self.scale = check_number("scale", scale, low=0.0)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.momentum = _momentum(momentum)
        self.add_state("frequency", (PerClass(),))
        self.add_state("frequency_seen", dtype=torch.bool, kind="flag")
        self._static_options = _focal_options(self.gamma, self.ignore_index, self.reduction)

    def plain_forward(self, logits: Tensor, target: Tensor) -> Tensor:
        work, prepared = self._prepare(logits, target)
        if self.training:
            self.fold(self.batch_sums(work, prepared))
        return focal_from_prepared(work, prepared, self.checked_options)

    def batch_sums(self, work: Tensor, prepared: SoftmaxTarget, *, weight: Optional[Tensor] = None) -> Tensor:
        """The batch's class counts ``(C,)`` over valid pixels (``Σ ω`` per class with ``weight``)."""
        return _class_counts(work, prepared, weight)

    def update(self, sums: Tensor) -> None:
        """Fold the batch's class frequencies (from its counts ``(C,)``) into ``frequency``."""
        fold_in(self.frequency, self.frequency_seen, sums, sums.sum(), self.momentum)

    @property
    def checked_options(self) -> FocalOptions:
        alpha = None if self.num_classes is None else frequency_alpha(self.frequency, scale=self.scale)
        return self._static_options.with_values(alpha=alpha)

    def _config(self) -> Dict[str, Any]:
        return {"scale": self.scale, "gamma": self.gamma, "momentum": self.momentum, **super()._config()}


# --------------------------------------------------------------------------- adaptive label smoothing


class AdaptiveSmoothingCELoss(AdaptiveLoss):
    r"""Cross-entropy with adaptive label smoothing (SPEC §1): ``ε_t = clip(ε_0 · m_t / m*, ε_min, ε_max)``.

    ``m_t`` is the running average of the batches' mean max-probability ``max_c p_ic`` over valid pixels
    (detached) and ``m*`` the ``target_confidence``: an over-confident model gets more smoothing. Before
    any update ``ε = ε_0``. The loss is :func:`cross_entropy_loss` with ``label_smoothing = ε_t`` as a 0-d
    tensor (no host synchronisation; see :attr:`options`). State: ``confidence`` (a float64 buffer
    whatever the module is converted to: see :class:`AdaptiveLoss`, "State dtype"), ``confidence_seen``;
    ``update(sums)`` takes ``(Σ max-probability, valid pixel count)``.

    **Weight maps** (:meth:`AdaptiveLoss.weighted_forward`): ``forward(logits, target, weight_map=None,
    mask=None)``; the loss is ``cross_entropy_loss(logits, target, weight_map, mask, **options)`` and the
    batch's confidence is the weighted mean ``Σ ω_i max_c p_ic / Σ ω_i`` over the valid pixels.

    Args:
        epsilon: ``ε_0``, with ``eps_min <= ε_0 <= eps_max``.
        eps_min: lower clip, in ``[0, 1)``.
        eps_max: upper clip, in ``[0, 1)``.
        target_confidence: ``m* ∈ (0, 1]``.
        momentum: ``m ∈ (0, 1]`` of the running average.
        ignore_index: index-target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``; ``mean`` (over valid pixels) / ``sum`` -> scalar.
    """

    function = staticmethod(cross_entropy_loss)
    implementation = staticmethod(_cross_entropy)
    confidence: Tensor
    confidence_seen: Tensor

    def __init__(
        self,
        *,
        epsilon: float = 0.1,
        eps_min: float = 0.0,
        eps_max: float = 0.3,
        target_confidence: float = 0.9,
        momentum: float = 0.1,
        ignore_index: Optional[int] = None,
        reduction: Reduction = "mean",
        **unknown: Any,
    ) -> None:
        _reject_unknown(self, unknown)
        super().__init__(None, ignore_index, reduction)
        self.eps_min = check_number("eps_min", eps_min, low=0.0, high=1.0, high_open=True)
        self.eps_max = check_number("eps_max", eps_max, low=self.eps_min, high=1.0, high_open=True)
        self.epsilon = check_number("epsilon", epsilon, low=self.eps_min, high=self.eps_max)
        self.target_confidence = check_number(
            "target_confidence", target_confidence, low=0.0, high=1.0, low_open=True
        )
        self.momentum = _momentum(momentum)
        self.add_state("confidence")
        self.add_state("confidence_seen", dtype=torch.bool, kind="flag")
        self._static_options = CrossEntropyOptions(
            weight=None, weight_schedule=None, step=0.0, label_smoothing=self.epsilon,
            ignore_index=self.ignore_index, reduction=self.reduction,
        )  # fmt: skip

    @property
    def smoothing(self) -> bool:
        return self.eps_max > 0

    def plain_forward(self, logits: Tensor, target: Tensor) -> Tensor:
        work, prepared = self._prepare(logits, target)
        log_p = torch.log_softmax(work.detach(), 1)  # shared by the statistic and the loss
        if self.training:
            self.fold(self.batch_sums(work, prepared, log_p))
        return ce_from_prepared(work, prepared, self.checked_options, log_p=log_p)

    def batch_sums(
        self,
        work: Tensor,
        prepared: SoftmaxTarget,
        log_p: Optional[Tensor] = None,
        *,
        weight: Optional[Tensor] = None,
    ) -> Tensor:
        """``(Σ max_c p_ic, count)`` over the batch's valid pixels, ``(2,)``; ``log_p``: the detached
        ``log_softmax(work)`` when already computed; ``weight`` ``(N, *S)``: ``(Σ ω max_c p, Σ ω)``."""
        log_p = torch.log_softmax(work.detach(), 1) if log_p is None else log_p
        top = log_p.amax(1).exp()
        valid = getattr(prepared, "valid", None)
        if weight is not None:  # each valid pixel counted ω_i times (one of weight 0 adds nothing)
            w = weight.detach().to(top.dtype)
            w = w if valid is None else torch.where(valid, w, 0.0)
            return torch.stack([torch.where(w > 0, top * w, 0.0).sum(), w.sum()])
        total = top.sum() if valid is None else torch.where(valid, top, 0.0).sum()
        count = torch.as_tensor(num_valid(valid, top.shape), device=total.device)
        return torch.stack([total, count.to(total.dtype)])

    def update(self, sums: Tensor) -> None:
        """Fold the batch's mean max-probability (from ``(Σ, count)``) into ``confidence``."""
        fold_in(self.confidence, self.confidence_seen, sums[0], sums[1], self.momentum)

    def current_epsilon(self) -> Tensor:
        """``ε_t`` as a 0-d tensor (``ε_0`` before any update)."""
        adapted = (self.epsilon / self.target_confidence * self.confidence).clamp(self.eps_min, self.eps_max)
        return torch.where(self.confidence_seen, adapted, self.epsilon)

    @property
    def checked_options(self) -> CrossEntropyOptions:
        return self._static_options.with_values(label_smoothing=self.current_epsilon())

    def _config(self) -> Dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "eps_min": self.eps_min,
            "eps_max": self.eps_max,
            "target_confidence": self.target_confidence,
            "momentum": self.momentum,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
        }


for _name, _module, _text in (
    ("difficulty_ce", DifficultyCELoss, "CE weighted per pixel by α + (1-α)(1-p_t)^γ (detached)"),
    ("adaptive_smoothing_ce", AdaptiveSmoothingCELoss, "CE with label smoothing from the running confidence"),
    ("cb_focal", ClassBalancedFocalLoss, "class-balanced focal: effective-number α from class counts"),
    ("adaptive_focal", AdaptiveFocalLoss, "focal with running per-class α (CE ratio) and/or γ (recall)"),
    ("frequency_focal", FrequencyFocalLoss, "focal with α = 1/(1 + k f) from running class frequencies"),
):
    register(_name, _module, domain="softmax", description=_text)


__all__ = [
    "AdaptiveFocalLoss",
    "AdaptiveLoss",
    "AdaptiveSmoothingCELoss",
    "ClassBalancedFocalLoss",
    "DifficultyCELoss",
    "FrequencyFocalLoss",
    "adaptive_alpha",
    "adaptive_gamma",
    "class_balanced_alpha",
    "difficulty_ce_loss",
    "fold_in",
    "frequency_alpha",
]
