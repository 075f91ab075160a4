"""Focal loss (document section 2; SPEC section 2), softmax and sigmoid forms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.backend import fused_cpu
from .._core.errors import expected
from .._core.numerics import (
    LeanFunction,
    binary_log_terms,
    compute_dtype,
    first_order_backward,
    sum_to,
)
from .._core.options import (
    ClassValues,
    Options,
    Reduction,
    call_input,
    channel_tensor,
    check_ignore_index,
    check_number,
    check_reduction,
    class_tensor,
    class_values,
)
from .._core.pixel_weights import PixelWeights, pixel_weights, weighted_pixel_loss
from .._core.reduction import reduce
from .._core.registry import register
from .._core.stats import even_parts
from .._core.targets import (
    IndexTarget,
    SoftmaxTarget,
    _valid_mask,
    binary_target,
    num_valid,
    softmax_target,
)
from ..schedules import ScheduleLike, scheduled_class_weights
from .base import PixelWeightedModule, ScheduledPixelWeightedModule, module_for
from .cross_entropy import binary_term, check_weight_schedule, dense_term, focal_factor, index_term


def _focal_factor_terms(log_p: Tensor, gamma: Union[float, Tensor]) -> Tuple[Tensor, Tensor]:
    """``(1-p)^γ`` and the focal factor :func:`~seglosses.losses.cross_entropy.focal_factor` from ``log p``
    (``1 - p = -expm1(log p)``, exact near ``p = 1``; ``0^0 = 1`` makes ``γ = 0`` exactly cross-entropy)."""
    u = -torch.expm1(log_p)
    return u.pow(gamma), focal_factor(-log_p, u, gamma)


class _FocalModulation(LeanFunction):
    """``(1 - p_t)^γ · ce`` from the per-pixel cross-entropy ``ce = -log p_t``, with a finite gradient.

    ``d/d ce`` of the focal term is ``F = (1-p_t)^γ - γ (1-p_t)^(γ-1) p_t log p_t``. With ``u = 1 - p_t``
    (``-expm1(-ce)``, exact near ``p_t = 1``) it is evaluated as ``u^(γ-1) (u + γ p_t ce)`` for ``γ >= 1``
    and as ``u^γ (1 + γ p_t ce / u)`` for ``γ < 1`` or a per-pixel tensor ``γ`` (``ce / u -> 1`` as
    ``u -> 0``): finite for every γ, even at saturated logits. Chained into the cross-entropy's own
    backward ``p - onehot`` it gives SPEC's ``∂L/∂z_j = (p_j - [j = t]) F``, and torch's fused
    cross-entropy kernels do the logits-sized work. A tensor ``γ`` is a constant (not differentiated:
    :func:`check_gamma` refuses one that requires a gradient). ``forward`` / ``setup_context`` in the form
    ``torch.func`` transforms need; ``u`` is a second, non-differentiable output that the backward reuses
    (:func:`focal_modulation` returns the loss alone).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(ce: Tensor, gamma: Union[float, Tensor]) -> Tuple[Tensor, Tensor]:
        u = torch.expm1(-ce).neg_()
        return u.pow(gamma) * ce, u

    @staticmethod
    def setup_context(
        ctx: Any, inputs: Tuple[Tensor, Union[float, Tensor]], output: Tuple[Tensor, Tensor]
    ) -> None:
        ce, gamma = inputs
        ctx.gamma = gamma
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zeros for the gradient of u
        ctx.save_for_backward(ce, output[1], gamma if isinstance(gamma, Tensor) else None)

    @staticmethod
    def reference(
        ctx: Any, ce: Tensor, _: Tensor, gamma_tensor: Optional[Tensor]
    ) -> Tuple[Tuple[Any, ...], Tensor]:
        """``(1 - p_t)^γ · ce`` by autograd (what a double backward differentiates). At ``ce = 0`` (an
        ignored pixel, or ``p_t = 1`` exactly) the term is 0 and ``u^γ``'s derivatives for ``γ < 2`` are
        infinite, but ``ce``'s own derivatives in the logits vanish there (a constant, or ``p = onehot``):
        the term is taken as the constant 0 there, so no ``0 · inf`` makes a NaN."""
        gamma = ctx.gamma if gamma_tensor is None else gamma_tensor
        positive = ce > 0
        safe = torch.where(positive, ce, 1.0)
        return (ce, None), torch.where(positive, (-torch.expm1(-safe)) ** gamma * safe, 0.0)

    @staticmethod
    @first_order_backward("focal_loss", lambda *a: _FocalModulation.reference(*a))
    def backward(ctx: Any, grad_loss: Tensor, _: Optional[Tensor]) -> Tuple[Tensor, None]:
        ce, u, gamma_tensor = ctx.saved_tensors
        if grad_loss is None:  # the loss itself was not used (gradients are not materialised)
            return None, None
        gamma = ctx.gamma if gamma_tensor is None else gamma_tensor
        return focal_factor(ce, u, gamma).mul_(grad_loss), None


def focal_modulation(ce: Tensor, gamma: Union[float, Tensor]) -> Tensor:
    """``(1 - p_t)^γ · ce`` from the per-pixel cross-entropy, by :class:`_FocalModulation`."""
    return _FocalModulation.apply(ce, gamma)[0]


class _FocalDense(LeanFunction):
    """Softmax focal loss per pixel for a one-hot / soft target ``y``: ``L = -Σ_c y_c α_c (1-p_c)^γ log p_c``.

    Gradients: ``∂L/∂z_j = p_j Σ_c h_c - h_j`` with ``h_c = y_c α_c F_c`` (``F`` as in
    :class:`_FocalModulation`); ``∂L/∂y_c = -α_c (1-p_c)^γ log p_c`` (``+inf`` at ``p_c = 0``: more target
    mass on an impossible class costs without bound); ``∂L/∂α_c = -Σ y_c (1-p_c)^γ log p_c`` over the
    pixels. ``γ`` is a constant. The backward recomputes ``log p`` from the saved logits (``torch.func``
    form: ``forward`` / ``setup_context``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: Tensor, target: Tensor, alpha: Optional[Tensor], gamma: Union[float, Tensor]
    ) -> Tensor:
        log_p = torch.log_softmax(logits, dim=1)
        modulator, _ = _focal_factor_terms(log_p, gamma)
        weight = target if alpha is None else target * alpha
        terms = torch.where(weight > 0, weight * modulator * log_p, 0.0)  # y = 0 at p = 0 counts 0
        return -terms.sum(1)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
        logits, target, alpha, gamma = inputs
        ctx.gamma = gamma
        ctx.save_for_backward(logits, target, alpha, gamma if isinstance(gamma, Tensor) else None)

    @staticmethod
    def reference(ctx: Any, logits: Tensor, target: Tensor, alpha: Optional[Tensor],
                  gamma_tensor: Optional[Tensor]) -> Tuple[Tuple[Any, ...], Tensor]:  # fmt: skip
        """The formula by autograd (what a double backward differentiates)."""
        gamma = ctx.gamma if gamma_tensor is None else gamma_tensor
        log_p = torch.log_softmax(logits, dim=1)
        weight = target if alpha is None else target * alpha
        terms = torch.where(weight > 0, weight * (-torch.expm1(log_p)) ** gamma * log_p, 0.0)
        return (logits, target, alpha, None), -terms.sum(1)

    @staticmethod
    @first_order_backward("focal_loss", lambda *a: _FocalDense.reference(*a))
    def backward(ctx: Any, grad_loss: Tensor) -> Tuple[Optional[Tensor], ...]:
        logits, target, alpha, gamma_tensor = ctx.saved_tensors
        gamma = ctx.gamma if gamma_tensor is None else gamma_tensor
        log_p = torch.log_softmax(logits, dim=1)
        modulator, grad_factor = _focal_factor_terms(log_p, gamma)
        g = grad_loss.unsqueeze(1)
        weight = target if alpha is None else target * alpha
        grad_logits = grad_target = grad_alpha = None
        if ctx.needs_input_grad[0]:
            h = weight * grad_factor
            grad_logits = (log_p.exp() * h.sum(1, keepdim=True) - h) * g
        if ctx.needs_input_grad[1] or (alpha is not None and ctx.needs_input_grad[2]):
            term = torch.where(g == 0, 0.0, -modulator * log_p * g)  # ∂L/∂w_c per pixel, w = y α
            if ctx.needs_input_grad[1]:
                grad_target = term if alpha is None else torch.where(alpha > 0, term * alpha, 0.0)
            if alpha is not None and ctx.needs_input_grad[2]:
                grad_alpha = sum_to(torch.where(target > 0, term * target, 0.0), alpha.shape)
        return grad_logits, grad_target, grad_alpha, None


def focal_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
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
        weight_map: per-pixel weights ``(N, *S)``, ``>= 0``: the loss sums ``ω_i L_i`` and ``mean``
            divides by the valid pixels' summed ``ω_i`` (``Σ_i ω_i Σ_c y_ic`` for a soft target).
        mask: ``(N, *S)`` bool, True where a pixel counts (the general form of ``ignore_index``).
        gamma: focusing parameter ``γ >= 0``, or one per class ``(C,)`` (the adaptive-γ form).
        alpha: None, a scalar (every class alike, which only rescales the loss) or one non-negative
            value per class ``(C,)`` (the class-balancing form).
        alpha_schedule: a schedule with values in ``[0, 1]`` moving ``alpha`` to uniform; needs ``alpha``.
        step: the step ``t >= 0`` that ``alpha_schedule`` reads.
        ignore_index: index-target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``; ``mean`` / ``sum`` -> scalar.
    """
    opts = FocalOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        gamma=gamma,
        alpha=alpha,
        alpha_schedule=alpha_schedule,
        step=step,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _focal(logits, target, opts)


def _focal(logits: Tensor, target: Tensor, opts: FocalOptions) -> Tensor:
    """:func:`focal_loss` on checked options (its module's forward too)."""
    if opts.pixel_weights is not None:
        return weighted_pixel_loss(_focal, _pixel_shares, logits, target, opts, binary=False)
    fused = not isinstance(opts.gamma, Tensor)  # an index target then goes to index_term
    prepared = softmax_target(logits, target, opts.ignore_index, log_terms=True, kernel_checks=fused)
    return focal_from_prepared(logits.to(compute_dtype(logits)), prepared, opts)


def _pixel_shares(logits: Tensor, target: Tensor, opts: FocalOptions) -> Tensor:
    """Each pixel's share of ``mean``'s denominator ``(N, *S)``: 1 at a valid pixel, 0 at an ignored one;
    ``Σ_c y_ic`` for a one-hot / soft target (as cross-entropy: γ = 0 is CE)."""
    dtype = compute_dtype(logits)
    if target.shape == logits.shape:
        return target.to(dtype).sum(1)
    valid = _valid_mask(target, opts.ignore_index)
    return torch.ones(target.shape, dtype=dtype, device=logits.device) if valid is None else valid.to(dtype)


def _element_shares(logits: Tensor, target: Tensor, opts: BinaryFocalOptions) -> Tensor:
    """Each element's share of ``mean``'s denominator ``(N, C, *S)``: 1 where valid, 0 where ignored."""
    dtype = compute_dtype(logits)
    integer = not (target.is_floating_point() or target.dtype == torch.bool)
    valid = _valid_mask(target, opts.ignore_index) if integer else None
    return torch.ones(logits.shape, dtype=dtype, device=logits.device) if valid is None else valid.to(dtype)


def index_cross_entropy(work: Tensor, prepared: IndexTarget, ignore_index: Optional[int]) -> Tensor:
    """The per-pixel CE ``-log p_t`` of an index target, ``(N, *S)``, 0 at ignored pixels: the fused
    implementation of :func:`~seglosses.losses.cross_entropy.index_term`, else torch's kernel."""
    fused = index_term(work, prepared, 0.0)
    if fused is not None:
        return fused
    torch_ignore = -100 if ignore_index is None else ignore_index
    labels = prepared.labels.long()
    return F.cross_entropy(prepared.clean(work), labels, ignore_index=torch_ignore, reduction="none")


def focal_from_prepared(
    work: Tensor, prepared: SoftmaxTarget, opts: FocalOptions, ce: Optional[Tensor] = None
) -> Tensor:
    """:func:`focal_loss` after its checks: ``work`` the logits in their compute dtype, ``prepared`` the
    checked target, ``opts`` the checked options; ``ce`` the index path's :func:`index_cross_entropy`
    when the caller already has it (the adaptive losses take their statistics from it)."""
    a = cast(Optional[Tensor], opts.alpha)
    if a is not None and opts.alpha_schedule is not None:
        a = scheduled_class_weights(a, opts.alpha_schedule, opts.step)
    a = class_tensor(a, work, "alpha")
    gamma = cast(Union[float, Tensor], opts.gamma)
    if isinstance(gamma, Tensor):
        gamma = cast(Tensor, class_tensor(gamma, work, "gamma"))  # a tensor in, a tensor out
    fused = None
    if isinstance(prepared, IndexTarget) and ce is None and not isinstance(gamma, Tensor):
        fused = index_term(work, prepared, float(gamma))  # 0 at ignored pixels
    if fused is not None:
        loss, index_target = fused, cast(IndexTarget, prepared)
        if a is not None:
            loss = loss * (torch.take(a, index_target.index()) if a.ndim else a)
        denominator = index_target.num_valid()
    elif isinstance(prepared, IndexTarget):  # the reference, or ce given
        ce = index_cross_entropy(work, prepared, opts.ignore_index) if ce is None else ce
        index = prepared.index()
        # ce = 0 at ignored pixels, so their focal term and gradient are 0; γ = 0 is CE itself
        if isinstance(gamma, Tensor):
            loss = focal_modulation(ce, torch.take(gamma, index) if gamma.ndim else gamma)
        else:
            loss = focal_modulation(ce, gamma) if gamma > 0 else ce
        if a is not None:
            loss = loss * (torch.take(a, index) if a.ndim else a)
        denominator = prepared.num_valid()
    else:
        fused_dense = dense_term(work, prepared.dense, a, gamma)
        if fused_dense is not None:
            loss = fused_dense
        else:
            alpha_dense = None if a is None else channel_tensor(a, work)
            gamma_dense = channel_tensor(gamma, work) if isinstance(gamma, Tensor) else gamma
            loss = _FocalDense.apply(work, prepared.dense.to(work.dtype), alpha_dense, gamma_dense)
        denominator = prepared.dense.sum(dtype=work.dtype)  # Σ y, as cross-entropy: γ = 0 is CE
    return reduce(loss, opts.reduction, denominator)


def _power(base: Tensor, neg_log: Tensor, gamma: float, out: Tensor) -> Tensor:
    """``base^γ`` into ``out``: by products for ``γ`` in 0..4, else ``exp(-γ · neg_log)`` with
    ``neg_log = -log base`` (log space, finite for every ``γ >= 0``)."""
    if gamma == 0:
        return out.fill_(1.0)
    if gamma in (1, 2, 3, 4):
        torch.mul(base, base if gamma > 1 else 1.0, out=out)
        for _ in range(int(gamma) - 2):
            out.mul_(base)
        return out
    return torch.mul(neg_log, -gamma, out=out).exp_()


_FOCAL_PARTS = 8  # the fused binary focal loss works on an eighth of the elements at a time
# |z| up to which exp(|z|) and σ(-|z|) are normal numbers: the fused path's range (else log space)
_FOCAL_RANGE = {torch.float32: 80.0, torch.float64: 700.0}


class _FocalBuffers:
    """The stacked work buffers of :func:`_binary_focal_part` for parts ``(N, C, k)``, and their views,
    made once per part width (an operation's Python cost is a fair share of its time on a part).

    Term A (weight ``α y``, base ``q``, other ``p``, ``-l_p``) sits in slot 0 and term B (``(1-α)(1-y)``,
    ``p``, ``q``, ``-l_q``) in slot 1, so that one operation serves both; ``sides = (q, p, q)`` holds
    both orders of ``(base, other)``, and for a non-integer γ ``neg_logs = (-l_q, -l_p, -l_q)`` holds
    ``-log`` of both bases too.
    """

    def __init__(self, like: Tensor, width: int, integer: bool) -> None:
        shape = (*like.shape[:2], width)
        self.r = like.new_empty(shape)
        self.sides = like.new_empty((3, *shape))
        self.neg_logs = like.new_empty((2 if integer else 3, *shape))
        self.w = like.new_empty((2, *shape))
        self.p, self.q_slots = self.sides[1], self.sides[::2]
        self.base, self.other = self.sides[:2], self.sides[1:]
        self.logs = self.neg_logs[-2:]  # (-l_p, -l_q)
        self.neg_lp, self.neg_lq = self.logs[0], self.logs[1]
        self.base_logs = self.neg_logs[:2]  # (-l_q, -l_p), only for a non-integer γ
        self.lq_slots = self.neg_logs[::2]
        self.r2, self.p2, self.neg_lp2 = (t.expand_as(self.q_slots) for t in (self.r, self.p, self.neg_lp))
        self.w_pos, self.w_neg = self.w[0], self.w[1]
        self.w_flat, self.logs_flat = self.w.view(-1), self.logs.reshape(-1)  # contiguous: views


def _binary_focal_part(
    b: _FocalBuffers,
    z: Tensor,
    y: Tensor,
    keep: Optional[Tensor],
    alpha: Optional[Tensor],
    gamma: float,
    loss_out: Optional[Tensor],
    grad_out: Optional[Tensor],
) -> Tensor:
    """The terms of :class:`_BinaryFocal` on a part ``(N, C, k)`` of the elements, in the buffers ``b``:
    the loss written into ``loss_out`` (or None), ``∂L/∂z`` into ``grad_out`` (or None); returns the
    part's loss sum. ``alpha`` is ``(α, 1 - α)`` stacked ``(2, 1, C, 1)`` (or ``(2, 1, 1, 1)``), or None.
    """
    r = torch.neg(z, out=b.r).exp_()  # exp(-z), finite in the fused range
    torch.add(r, 1.0, out=b.p).reciprocal_()  # p = σ(z) = 1 / (1 + exp(-z))
    torch.mul(b.r2, b.p2, out=b.q_slots)  # q = σ(-z) = exp(-z) σ(z), in slots 0 and 2
    torch.log1p(r, out=b.neg_lp)  # -log σ(z) = log(1 + exp(-z))
    if b.neg_logs.shape[0] == 2:  # an integer γ: powers by products
        torch.add(b.neg_lp, z, out=b.neg_lq)  # -log σ(-z) = -log σ(z) + z
        w = _power(b.base, b.base_logs, gamma, out=b.w)
    else:  # -l_q into slots 0 and 2; base^γ = exp(-γ (-l_q, -l_p))
        torch.add(b.neg_lp2, z.expand_as(b.lq_slots), out=b.lq_slots)
        w = _power(b.base, b.base_logs, gamma, out=b.w)
    b.w_pos.mul_(y)  # W_+ = q^γ α y
    b.w_neg.addcmul_(b.w_neg, y, value=-1.0)  # W_- = p^γ (1-α)(1-y)
    if keep is not None:  # y = 0 at ignored elements: (1 - y) keep is all that is left to zero
        b.w_neg.mul_(keep)
    if alpha is not None:
        w.mul_(alpha)
    if loss_out is None:  # Σ (W_+ (-l_p) + W_- (-l_q)), read only
        total = torch.vdot(b.w_flat, b.logs_flat)
    else:
        x = torch.mul(w, b.logs)
        total = x.sum()
        torch.add(x[0], x[1], out=loss_out)
    if grad_out is not None:  # ∂L/∂z = g_B - g_A, g_s = W_s (base_s + γ other_s (-log_s))
        g = torch.addcmul(b.base, b.other, b.logs, value=gamma, out=b.logs).mul_(w)
        torch.sub(g[1], g[0], out=grad_out)
    return total


class _HardBuffers:
    """The work buffers of :func:`_hard_focal_part` for parts ``(N, C, k)``, made once per part width."""

    def __init__(self, like: Tensor, width: int, integer: bool) -> None:
        shape = (*like.shape[:2], width)
        self.margin, self.p_t, self.u, self.w = (like.new_empty(shape) for _ in range(4))
        self.r = self.margin if integer else like.new_empty(shape)  # a non-integer γ keeps -z_t


def _hard_focal_part(
    b: _HardBuffers,
    z: Tensor,
    y: Tensor,
    keep: Optional[Tensor],
    alpha: Optional[Tuple[Tensor, Tensor]],
    gamma: float,
    loss_out: Optional[Tensor],
    grad_out: Optional[Tensor],
) -> Tensor:
    """:func:`_binary_focal_part` for a target of 0 and 1 only: one term per element, in the target's
    margin ``z_t = (2y - 1) z``, ``p_t = σ(z_t)``, ``u = 1 - p_t``, ``-log p_t = log1p(exp(-z_t))``:
    ``L = α_t u^γ (-log p_t)`` and ``∂L/∂z = (1 - 2y) W (u + γ p_t (-log p_t))`` with ``W = α_t u^γ``
    (from ``du/dz_t = -u p_t``, ``d(-log p_t)/dz_t = -u``). ``alpha`` is ``(2α - 1, 1 - α)`` shaped
    ``(1, C, 1)`` (``α_t = (1 - α) + (2α - 1) y``), or None."""
    neg_margin = torch.addcmul(z, z, y, value=-2.0, out=b.margin)  # -z_t = (1 - 2y) z, exactly
    r = torch.exp(neg_margin, out=b.r)  # exp(-z_t)
    p_t = torch.add(r, 1.0, out=b.p_t).reciprocal_()
    u = torch.mul(r, p_t, out=b.u)  # σ(-z_t), exact near p_t = 1
    if gamma in (0, 1, 2, 3, 4):
        neg_log = torch.log1p(r, out=r)  # -log p_t
        w = _power(u, u, gamma, out=b.w)
    else:  # u^γ = exp(-γ (-log u)), -log u = -log p_t + z_t
        neg_log = torch.log1p(r, out=r)
        w = torch.sub(neg_log, neg_margin, out=b.w).mul_(-gamma).exp_()
    if alpha is not None:
        w.mul_(torch.mul(y, alpha[0]).add_(alpha[1]))
    if keep is not None:
        w.mul_(keep)
    total = (
        torch.vdot(w.view(-1), neg_log.view(-1)) if loss_out is None else torch.mul(w, neg_log, out=loss_out)
    )
    if grad_out is not None:
        g = torch.addcmul(u, p_t, neg_log, value=gamma, out=u).mul_(w)  # W (u + γ p_t (-log p_t))
        torch.addcmul(g, g, y, value=-2.0, out=grad_out)  # times 1 - 2y
    return total


class _BinaryFocal(torch.autograd.Function):
    """Sigmoid focal loss for logits with ``|z| <= 80`` (700 in float64) on eager CPU, with its gradient
    in closed form; per element ``(N, C, *S)``, or its sum (``summed``: the elementwise loss is never
    stored).

    With ``l_p = log σ(z)``, ``l_q = log σ(-z)``, ``p = σ(z)``, ``q = 1 - p = σ(-z)``, the weights
    ``w_+ = α y`` and ``w_- = (1-α)(1-y)`` (1 and ``1 - y`` without α; both 0 at ignored elements):

        L = -(w_+ q^γ l_p + w_- p^γ l_q)

    and, from ``d l_p/dz = q``, ``d l_q/dz = -p``, ``dp/dz = -dq/dz = p q``:

        ∂L/∂z = w_+ q^γ (γ p l_p - q) + w_- p^γ (p - γ q l_q)
              = W_- (p + γ q (-l_q)) - W_+ (q + γ p (-l_p)),   W_+ = w_+ q^γ,  W_- = w_- p^γ.

    Everything comes from ``r = exp(-z)``: ``p = 1 / (1 + r)``, ``q = r p``, ``-l_p = log1p(r)`` (each to
    a few units in the last place) and ``-l_q = -l_p + z`` (absolute error about one unit in the last
    place of ``z``, as in ``F.binary_cross_entropy_with_logits``). In the range ``r``, ``p`` and ``q`` are
    normal numbers; beyond it (``|z|`` over 80 in float32) the caller takes the log-space path. Powers
    are products for ``γ`` in 0..4 and ``exp(γ l)`` otherwise, so every term is finite for every
    ``γ >= 0``.

    A target of 0 and 1 only (bool or integer, or float found so by one test of ``y - y²``) takes the
    one-term form of :func:`_hard_focal_part` (fewer passes, every quantity without cancellation).

    The work goes an eighth of the elements at a time: a part's temporaries stay in cache and are reused
    by the allocator, where a dozen logits-sized ones would be paged in afresh at every step. The forward
    also writes ``∂L/∂z`` (when the logits need a gradient), the one logits-sized tensor it keeps; the
    first backward scales it in place, a second one through a retained graph recomputes it.
    """

    @staticmethod
    def forward(
        ctx: Any,
        z: Tensor,
        y: Tensor,
        valid: Optional[Tensor],
        alpha: Optional[Tensor],
        gamma: float,
        summed: bool,
        hard: bool,
    ) -> Tensor:
        ctx.options = gamma, summed, hard
        ctx.save_for_backward(z, y, valid, alpha)
        need_grad = ctx.needs_input_grad[0]
        loss, ctx.grad = _binary_focal_terms(z, y, valid, alpha, gamma, summed, hard, need_grad)
        return loss

    @staticmethod
    def reference(ctx: Any, z: Tensor, y: Tensor, valid: Optional[Tensor],
                  alpha: Optional[Tensor]) -> Tuple[Tuple[Any, ...], Tensor]:  # fmt: skip
        """The log-space formula by autograd (what a double backward differentiates)."""
        gamma, summed, _ = ctx.options
        ctx.grad = None
        work = z if valid is None else z.masked_fill(~valid, 0.0)
        positive, negative = binary_log_terms(work, y, gamma)
        loss = -(positive + negative) if alpha is None else -(alpha * positive + (1 - alpha) * negative)
        loss = loss if valid is None else loss.masked_fill(~valid, 0.0)
        return (z, None, None, None, None, None, None), loss.sum() if summed else loss

    @staticmethod
    @first_order_backward("binary_focal_loss", lambda *a: _BinaryFocal.reference(*a))
    def backward(ctx: Any, grad_loss: Tensor) -> Tuple[Optional[Tensor], ...]:
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # a later backward through a retained graph
            z, y, valid, alpha = ctx.saved_tensors
            gamma, summed, hard = ctx.options
            grad = _binary_focal_terms(z, y, valid, alpha, gamma, summed, hard, True)[1]
        return grad.mul_(grad_loss), None, None, None, None, None, None


def _binary_focal_terms(
    z: Tensor,
    y: Tensor,
    valid: Optional[Tensor],
    alpha: Optional[Tensor],
    gamma: float,
    summed: bool,
    hard: bool,
    need_grad: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The loss (per element, or its sum) and ``∂L/∂z`` (or None) of :class:`_BinaryFocal`, by parts
    (:func:`_hard_focal_part` for a target of 0 and 1 only, else :func:`_binary_focal_part`)."""
    # contiguous, whatever the logits' strides: flatten(2) must give views of these
    loss = None if summed else z.new_empty(z.shape)
    grad = z.new_empty(z.shape) if need_grad else None
    z_flat, y_flat = z.flatten(2), y.flatten(2)
    rest = [None if t is None else t.flatten(2) for t in (valid, loss, grad)]
    integer, totals = gamma in (0, 1, 2, 3, 4), [z.new_zeros(())]
    part: Callable[..., Tensor]
    make: Callable[..., Any]
    if hard:
        part, make = _hard_focal_part, _HardBuffers
        a: Any = None if alpha is None else ((2 * alpha - 1).view(1, -1, 1), (1 - alpha).view(1, -1, 1))
    else:
        part, make = _binary_focal_part, _FocalBuffers
        a = None if alpha is None else torch.stack([alpha, 1 - alpha]).view(2, 1, -1, 1)  # (α, 1 - α)
    buffers: Any = None
    for start, stop in even_parts(z_flat.shape[-1], _FOCAL_PARTS):
        if buffers is None or buffers.w.shape[-1] != stop - start:  # the first part, or a shorter last
            buffers = make(z, stop - start, integer)
        valid_, loss_, grad_ = (None if t is None else t[..., start:stop] for t in rest)
        z_, y_ = z_flat[..., start:stop], y_flat[..., start:stop]
        keep_ = None if valid_ is None else valid_.view(torch.uint8).to(z.dtype)  # 1.0 / 0.0, a part
        totals.append(part(buffers, z_, y_, keep_, a, gamma, loss_, grad_))
    return (torch.stack(totals).sum() if loss is None else loss), grad


def _fused_binary_focal(
    work: Tensor,
    target: Tensor,
    y: Tensor,
    valid: Optional[Tensor],
    alpha: Optional[Tensor],
    gamma: float,
    summed: bool,
) -> Optional[Tensor]:
    """:class:`_BinaryFocal` on eager CPU when every logit is in its range (one host read; the loss is
    summed when ``summed``); else None, and the caller takes the log-space terms of :func:`binary_log_terms`,
    which handle ``-inf`` (loss and gradient 0 for target 0), ``+inf`` (NaN) and a NaN at an ignored
    element (0), and which trace under ``torch.compile``. Also None when the target or α needs a gradient
    (the closed form gives only the logits' one)."""
    if not fused_cpu(work) or y.requires_grad:
        return None
    if (alpha is not None and alpha.requires_grad) or work.dtype not in _FOCAL_RANGE:
        return None
    hard = not target.is_floating_point()  # bool or integer: 0 and 1 (checked with the data checks)
    if work.numel():  # one host read: finite (NaN fails the comparison too), in range, target 0 / 1
        low, high = torch.aminmax(work.detach())
        bound = _FOCAL_RANGE[work.dtype]
        tests = [low >= -bound, high <= bound]
        if not hard:  # y - y² is exactly 0 at 0 and 1 only (its square underflows below |y| ~ 1e-23)
            square_gap = torch.addcmul(y, y, y, value=-1.0).reshape(-1)
            tests.append(torch.vdot(square_gap, square_gap) == 0)
            del square_gap
        in_range_low, in_range_high, *zero_one = torch.stack(tests).tolist()
        if not (in_range_low and in_range_high):
            return None
        hard = hard or bool(zero_one[0])
    return _BinaryFocal.apply(work, y, valid, alpha, gamma, summed, hard)


def binary_focal_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
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
    Powers are computed in log space, ``(1-p)^γ = exp(γ logσ(-z))`` (products for integer γ up to 4), so
    gradients are finite for every ``γ >= 0``, and a ``-inf`` logit with target 0 contributes 0.

    Gradient: ``∂L/∂z = α y (1-p)^γ (γ p log p - (1-p)) + (1-α)(1-y) p^γ (p - γ (1-p) log(1-p))``. On eager
    CPU, with every logit within ``±80`` (``±700`` in float64), loss and gradient come in closed form from
    ``exp(-z)``, an eighth of the elements at a time (:class:`_BinaryFocal`); other inputs (``±inf``, a
    NaN at an ignored element, larger logits), CUDA and ``torch.compile`` take the log-space terms with
    autograd.

    ``mean`` is the plain mean over valid elements.

    Args:
        logits: ``(N, C, *S)``.
        target: same shape; bool, integer (``ignore_index`` allowed) or float in ``[0, 1]``.
        weight_map: per-pixel weights ``(N, *S)``, ``>= 0``, on every channel: the loss sums
            ``ω_i L_ic`` and ``mean`` divides by the valid elements' summed ``ω_i``.
        mask: ``(N, *S)`` bool, True where a pixel counts (the general form of ``ignore_index``).
        gamma: ``γ >= 0``.
        alpha: None, a scalar in ``[0, 1]`` or one value per channel.
        ignore_index: integer-target value whose elements count nowhere.
        reduction: ``none`` -> ``(N, C, *S)``; ``mean`` / ``sum`` -> scalar.
    """
    opts = BinaryFocalOptions(
        gamma=gamma, alpha=alpha, ignore_index=ignore_index, reduction=reduction,
        pixel_weights=pixel_weights(logits, weight_map, mask),
    )  # fmt: skip
    return _binary_focal(logits, target, opts)


def _binary_focal(logits: Tensor, target: Tensor, opts: BinaryFocalOptions) -> Tensor:
    """:func:`binary_focal_loss` on checked options (its module's forward too)."""
    if opts.pixel_weights is not None:
        return weighted_pixel_loss(_binary_focal, _element_shares, logits, target, opts, binary=True)
    gamma, reduction = opts.gamma, opts.reduction
    prepared = binary_target(logits, target, opts.ignore_index, log_terms=True)
    work = logits.to(compute_dtype(logits))
    y = prepared.dense.to(work.dtype)
    a = channel_tensor(class_tensor(cast(Optional[Tensor], opts.alpha), work, "alpha"), work)
    summed = reduction != "none"
    loss = binary_term(work, y, prepared.valid, a, None if a is None else 1 - a, gamma)
    if loss is None:
        loss = _fused_binary_focal(work, target, y, prepared.valid, a, gamma, summed)  # 0 where ignored
    if loss is None:  # log space; ignored elements' logits replaced first, so a NaN there reaches nothing
        if prepared.valid is not None:
            work = work.masked_fill(~prepared.valid, 0.0)
        positive, negative = binary_log_terms(work, y, gamma)
        loss = -(positive + negative) if a is None else -(a * positive + (1 - a) * negative)
        if prepared.valid is not None:
            loss = loss.masked_fill(~prepared.valid, 0)
    return reduce(loss, reduction, num_valid(prepared.valid, logits.shape))


@dataclass(frozen=True, kw_only=True, eq=False)
class FocalOptions(Options):
    """The options of :func:`focal_loss` (and its module), checked once."""

    gamma: Union[float, ClassValues]
    alpha: Optional[ClassValues]
    alpha_schedule: Optional[ScheduleLike]
    step: float
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "gamma": check_gamma(self.gamma),
            "alpha": class_values("alpha", self.alpha),
            **check_weight_schedule("alpha", self.alpha, self.alpha_schedule, self.step),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


def check_gamma(gamma: Union[float, ClassValues]) -> Union[float, Tensor]:
    """``γ >= 0`` as a float, or one value per class (or a 0-d tensor) as a tensor; a tensor that requires
    a gradient is refused (γ is a constant of the formula here)."""
    if not isinstance(gamma, (Tensor, list, tuple)):
        return check_number("gamma", gamma, low=0.0)
    if isinstance(gamma, Tensor) and gamma.requires_grad:
        raise expected("gamma as a constant (focal_loss does not differentiate it)",
                       "a tensor that requires grad: pass gamma.detach()")  # fmt: skip
    return cast(Tensor, class_values("gamma", gamma))  # not None: gamma is a tensor or a sequence


@dataclass(frozen=True, kw_only=True, eq=False)
class BinaryFocalOptions(Options):
    """The options of :func:`binary_focal_loss` (and its module), checked once."""

    gamma: float
    alpha: Optional[ClassValues]
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "gamma": check_number("gamma", self.gamma, low=0.0),
            "alpha": class_values("alpha", self.alpha, high=1.0),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


FocalLoss = module_for("FocalLoss", focal_loss, FocalOptions, _focal, ScheduledPixelWeightedModule)
BinaryFocalLoss = module_for(
    "BinaryFocalLoss", binary_focal_loss, BinaryFocalOptions, _binary_focal, PixelWeightedModule
)

register(
    "focal", FocalLoss, domain="softmax", description="softmax focal loss (Lin et al. 2017), α per class"
)
register("binary_focal", BinaryFocalLoss, domain="binary", description="sigmoid focal loss per channel")
