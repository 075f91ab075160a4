"""Focal loss (document section 2; SPEC section 2), softmax and sigmoid forms."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.numerics import binary_log_terms, compute_dtype, first_order_backward
from .._core.options import (
    ClassValues,
    Reduction,
    channel_tensor,
    check_ignore_index,
    check_number,
    check_reduction,
    class_tensor,
    class_values,
)
from .._core.reduction import reduce
from .._core.registry import register
from .._core.targets import IndexTarget, SoftmaxTarget, binary_target, num_valid, softmax_target
from ..adaptive.schedules import ScheduledLossModule, ScheduleLike, scheduled_class_weights
from .base import module_for
from .cross_entropy import FusedIndexCE, check_weight_schedule, fused_index_path


def _focal_factor_terms(log_p: Tensor, gamma: Union[float, Tensor]) -> Tuple[Tensor, Tensor]:
    """``(1-p)^γ`` and the gradient factor ``F = (1-p)^γ (1 + γ p r)`` with ``r = -log p / (1-p)``.

    ``F`` is ``(1-p)^γ - γ (1-p)^(γ-1) p log p`` rewritten so that it stays finite for every ``γ >= 0``:
    ``1 - p = -expm1(log p)`` is exact near ``p = 1``, where ``p r -> 1``; at ``p = 0``, ``p log p = 0``.
    ``0^0 = 1`` makes ``γ = 0`` exactly cross-entropy.
    """
    one_minus_p = -torch.expm1(log_p)
    modulator = one_minus_p.pow(gamma)
    p = log_p.exp()
    safe = one_minus_p.clamp_min(torch.finfo(log_p.dtype).tiny)
    p_ratio = torch.where(one_minus_p > 0, -torch.special.xlogy(p, p) / safe, 1.0)
    return modulator, modulator * (1 + gamma * p_ratio)


class _FocalModulation(torch.autograd.Function):
    """``(1 - p_t)^γ · ce`` from the per-pixel cross-entropy ``ce = -log p_t``, with a finite gradient.

    ``d/d ce`` of the focal term is ``F = (1-p_t)^γ - γ (1-p_t)^(γ-1) p_t log p_t``. With ``u = 1 - p_t``
    (``-expm1(-ce)``, exact near ``p_t = 1``) it is evaluated as ``u^(γ-1) (u + γ p_t ce)`` for ``γ >= 1``
    and as ``u^γ (1 + γ p_t ce / u)`` for ``γ < 1`` or a per-pixel tensor ``γ`` (``ce / u -> 1`` as
    ``u -> 0``): finite for every γ, even at saturated logits. Chained into the cross-entropy's own
    backward ``p - onehot`` it gives SPEC's ``∂L/∂z_j = (p_j - [j = t]) F``, and torch's fused
    cross-entropy kernels do the logits-sized work.
    """

    @staticmethod
    def forward(ctx: Any, ce: Tensor, gamma: Union[float, Tensor]) -> Tensor:
        u = torch.expm1(-ce).neg_()
        ctx.gamma = gamma
        if isinstance(gamma, Tensor):  # per pixel: u^γ = exp(γ log u) (0^0 = 1), kept for the backward
            modulator = torch.log(u).clamp_min_(torch.finfo(u.dtype).min).mul_(gamma).exp_()
            ctx.save_for_backward(ce, u, modulator)
            return modulator * ce
        ctx.save_for_backward(ce, u)
        return u.pow(gamma).mul_(ce)

    @staticmethod
    @first_order_backward("focal_loss")
    def backward(ctx: Any, grad_loss: Tensor) -> Tuple[Tensor, None]:
        ce, u, *saved = ctx.saved_tensors
        gamma = ctx.gamma
        p_ce = torch.addcmul(ce, u, ce, value=-1.0)  # p_t · ce = (1 - u) · ce
        if not isinstance(gamma, Tensor) and gamma >= 1:
            factor = torch.add(u, p_ce, alpha=gamma).mul_(u.pow(gamma - 1))
        else:
            ratio = p_ce.div_(u).nan_to_num_(nan=1.0, posinf=torch.inf)  # p_t ce / u -> 1 at u = 0 (0/0)
            factor = ratio.mul_(gamma).add_(1.0).mul_(saved[0] if saved else u.pow(gamma))
        return factor.mul_(grad_loss), None


class _FocalDense(torch.autograd.Function):
    """Softmax focal loss per pixel for a one-hot / soft target ``y``: ``L = -Σ_c y_c α_c (1-p_c)^γ log p_c``.

    Gradient: ``∂L/∂z_j = p_j Σ_c h_c - h_j`` with ``h_c = y_c α_c F_c`` (``F`` as in :class:`_FocalIndex`).
    """

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, target: Tensor, alpha: Optional[Tensor], gamma: Union[float, Tensor]
    ) -> Tensor:
        log_p = torch.log_softmax(logits, dim=1)
        modulator, grad_factor = _focal_factor_terms(log_p, gamma)
        weight = target if alpha is None else target * alpha
        ctx.save_for_backward(log_p, weight * grad_factor)
        terms = torch.where(weight > 0, weight * modulator * log_p, 0.0)  # y = 0 at p = 0 counts 0
        return -terms.sum(1)

    @staticmethod
    @first_order_backward("focal_loss")
    def backward(ctx: Any, grad_loss: Tensor) -> Tuple[Optional[Tensor], None, None, None]:
        log_p, h = ctx.saved_tensors
        g = grad_loss.unsqueeze(1)
        grad = log_p.exp() * h.sum(1, keepdim=True) - h
        return grad * g, None, None, None


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: Union[float, ClassValues] = 2.0,
    alpha: Optional[ClassValues] = None,
    alpha_schedule: Optional[ScheduleLike] = None,
    step: float = 0.0,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Softmax focal loss (Lin et al. 2017), multi-class over C classes (not one-vs-all sigmoid).

    ``L_i = -α_{y_i} (1 - p_{i,y_i})^{γ_{y_i}} log p_{i,y_i}`` with ``p = softmax(z)``; a soft target gives
    ``-Σ_c y_ic α_c (1-p_ic)^γ_c log p_ic``. ``γ = 0`` and ``α = None`` give exactly cross-entropy, values and
    gradients. The factor is computed in log space (``1 - p = -expm1(log p)``) and the gradient in closed
    form, finite for every ``γ >= 0`` even at saturated logits (``|z| = 100``, ``0 < γ < 1``).

    **Erratum** (document section 2.1.3): the document's ``∂L/∂p_t`` has the wrong sign on its first term.
    The correct derivatives are ``∂L/∂p_t = α_t [γ (1-p_t)^(γ-1) log p_t - (1-p_t)^γ / p_t]`` and
    ``∂L/∂z_j = α_t (p_j - [j = t]) ((1-p_t)^γ - γ (1-p_t)^(γ-1) p_t log p_t)``, which is what is implemented.

    **Scheduled α** (SPEC §1's class-weight schedule): with ``alpha_schedule`` ``s``, ``α_c(t) = 1 +
    (α_c - 1) · s(t)`` at ``step`` ``t``, from ``alpha`` at ``s = 1`` to uniform at ``s = 0``
    (``alpha_schedule="exponential(lam=λ)"`` is ``1 + (α_c - 1) exp(-λ t)``).

    ``mean`` is the plain mean over valid pixels: ``α_t (1-p_t)^γ`` is part of the formula, not a weight.
    For a dense target the pixel count is ``Σ y`` (as for :func:`cross_entropy_loss`), the number of
    pixels when each target row is a distribution.

    Args:
        logits: ``(N, C, *S)``, ``C >= 2``.
        target: class indices ``(N, *S)`` or one-hot / soft ``(N, C, *S)``.
        gamma: focusing parameter ``γ >= 0``, or one per class ``(C,)`` (the adaptive-γ form).
        alpha: None, a scalar (every class alike, which only rescales the loss) or one non-negative
            value per class ``(C,)`` (the class-balancing form).
        alpha_schedule: a schedule with values in ``[0, 1]`` moving ``alpha`` to uniform; needs ``alpha``.
        step: the step ``t >= 0`` that ``alpha_schedule`` reads.
        ignore_index: index-target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``; ``mean`` / ``sum`` -> scalar.
    """
    opts = check_focal_options(
        gamma=gamma,
        alpha=alpha,
        alpha_schedule=alpha_schedule,
        step=step,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    prepared = softmax_target(logits, target, ignore_index)
    return focal_from_prepared(logits.to(compute_dtype(logits)), prepared, opts)


def index_cross_entropy(work: Tensor, prepared: IndexTarget, ignore_index: Optional[int]) -> Tensor:
    """The per-pixel CE ``-log p_t`` of an index target, ``(N, *S)``, 0 at ignored pixels: the fused
    :class:`~seglosses.losses.cross_entropy.FusedIndexCE` on eager CPU, else torch's kernel."""
    if fused_index_path(work):
        return FusedIndexCE.apply(work, prepared.labels, prepared.valid, 0.0)
    torch_ignore = -100 if ignore_index is None else ignore_index
    return F.cross_entropy(work, prepared.labels.long(), ignore_index=torch_ignore, reduction="none")


def focal_from_prepared(
    work: Tensor, prepared: SoftmaxTarget, opts: Dict[str, Any], ce: Optional[Tensor] = None
) -> Tensor:
    """:func:`focal_loss` after its checks: ``work`` the logits in their compute dtype, ``prepared`` the
    checked target, ``opts`` the checked options (``alpha_schedule`` and ``step`` may be left out); ``ce``
    the index path's :func:`index_cross_entropy`
    when the caller already has it (the adaptive losses take their statistics from it)."""
    a = opts["alpha"]
    if a is not None and opts.get("alpha_schedule") is not None:
        a = scheduled_class_weights(a, opts["alpha_schedule"], opts.get("step", 0.0))
    a = class_tensor(a, work, "alpha")
    gamma = opts["gamma"]
    if isinstance(gamma, Tensor):
        gamma = class_tensor(gamma, work, "gamma")
    if (
        isinstance(prepared, IndexTarget)
        and ce is None
        and not isinstance(gamma, Tensor)
        and fused_index_path(work)
    ):
        loss = FusedIndexCE.apply(work, prepared.labels, prepared.valid, float(gamma))  # 0 at ignored pixels
        if a is not None:
            loss = loss * (torch.take(a, prepared.index()) if a.ndim else a)
        denominator = num_valid(prepared.valid, prepared.labels.shape, work.device)
    elif isinstance(prepared, IndexTarget):
        ce = index_cross_entropy(work, prepared, opts["ignore_index"]) if ce is None else ce
        index = prepared.index()
        # ce = 0 at ignored pixels, so their focal term and gradient are 0; γ = 0 is CE itself
        if isinstance(gamma, Tensor):
            loss = _FocalModulation.apply(ce, torch.take(gamma, index) if gamma.ndim else gamma)
        else:
            loss = _FocalModulation.apply(ce, gamma) if gamma > 0 else ce
        if a is not None:
            loss = loss * (torch.take(a, index) if a.ndim else a)
        denominator = num_valid(prepared.valid, prepared.labels.shape, work.device)
    else:
        alpha_dense = None if a is None else channel_tensor(a, work)
        gamma_dense = channel_tensor(gamma, work) if isinstance(gamma, Tensor) else gamma
        loss = _FocalDense.apply(work, prepared.dense.to(work.dtype), alpha_dense, gamma_dense)
        denominator = prepared.dense.sum(dtype=torch.float32)  # Σ y, as cross-entropy: γ = 0 is CE
    return reduce(loss, opts["reduction"], denominator)


def binary_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: Optional[ClassValues] = None,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Sigmoid focal loss per channel (binary or multi-label).

    ``L = -[α y (1-p)^γ log p + (1-α)(1-y) p^γ log(1-p)]`` with ``p = σ(z)``; ``α = None`` weights both
    terms by 1, a scalar α weights positives by α and negatives by ``1 - α`` (Lin et al.; torchvision's
    ``sigmoid_focal_loss`` for hard targets), or one α per channel ``(C,)``. A soft target mixes the two
    terms; with ``α = None`` this equals the softmax :func:`focal_loss` on the two logits ``(0, z)``.
    Powers are computed in log space, ``(1-p)^γ = exp(γ logσ(-z))``, so gradients are finite for every
    ``γ >= 0``, and a ``-inf`` logit with target 0 contributes 0.

    ``mean`` is the plain mean over valid elements.

    Args:
        logits: ``(N, C, *S)``.
        target: same shape; bool, integer (``ignore_index`` allowed) or float in ``[0, 1]``.
        gamma: ``γ >= 0``.
        alpha: None, a scalar in ``[0, 1]`` or one value per channel.
        ignore_index: integer-target value whose elements count nowhere.
        reduction: ``none`` -> ``(N, C, *S)``; ``mean`` / ``sum`` -> scalar.
    """
    opts = check_binary_focal_options(
        gamma=gamma, alpha=alpha, ignore_index=ignore_index, reduction=reduction
    )
    prepared = binary_target(logits, target, ignore_index)
    work = logits.to(compute_dtype(logits))
    y = prepared.dense.to(work.dtype)
    positive, negative = binary_log_terms(work, y, opts["gamma"])
    a = channel_tensor(class_tensor(opts["alpha"], work, "alpha"), work)
    loss = -(positive + negative) if a is None else -(a * positive + (1 - a) * negative)
    if prepared.valid is not None:
        loss = loss.masked_fill(~prepared.valid, 0)
    return reduce(loss, opts["reduction"], num_valid(prepared.valid, logits.shape, logits.device))


def check_focal_options(
    *,
    gamma: Union[float, ClassValues],
    alpha: Optional[ClassValues],
    alpha_schedule: Optional[ScheduleLike],
    step: float,
    ignore_index: Optional[int],
    reduction: str,
) -> Dict[str, Any]:
    """Validate the options of :func:`focal_loss` (shared with its module)."""
    return {
        "gamma": check_gamma(gamma),
        "alpha": class_values("alpha", alpha),
        **check_weight_schedule("alpha", alpha, alpha_schedule, step),
        "ignore_index": check_ignore_index(ignore_index),
        "reduction": check_reduction(reduction),
    }


def check_gamma(gamma: Union[float, ClassValues]) -> Union[float, Tensor]:
    """``γ >= 0`` as a float, or one value per class (or a 0-d tensor) as a tensor."""
    if not isinstance(gamma, (Tensor, list, tuple)):
        return check_number("gamma", gamma, low=0.0)
    return cast(Tensor, class_values("gamma", gamma))  # not None: gamma is a tensor or a sequence


def check_binary_focal_options(
    *, gamma: float, alpha: Optional[ClassValues], ignore_index: Optional[int], reduction: str
) -> Dict[str, Any]:
    """Validate the options of :func:`binary_focal_loss` (shared with its module)."""
    return {
        "gamma": check_number("gamma", gamma, low=0.0),
        "alpha": class_values("alpha", alpha, high=1.0),
        "ignore_index": check_ignore_index(ignore_index),
        "reduction": check_reduction(reduction),
    }


FocalLoss = module_for("FocalLoss", focal_loss, check_focal_options, ScheduledLossModule)
BinaryFocalLoss = module_for("BinaryFocalLoss", binary_focal_loss, check_binary_focal_options)

register(
    "focal", FocalLoss, domain="softmax", description="softmax focal loss (Lin et al. 2017), α per class"
)
register("binary_focal", BinaryFocalLoss, domain="binary", description="sigmoid focal loss per channel")
