"""Cross-entropy (document section 1; SPEC section 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.backend import fused_cpu, implementation
from .._core.errors import expected
from .._core.numerics import LeanFunction, binary_log_terms, compute_dtype, first_order_backward
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
from .._core.stats import class_labels, row_gather, row_scatter_add, valid_weights
from .._core.targets import (
    IndexTarget,
    SoftmaxTarget,
    _valid_mask,
    binary_target,
    defer_kernel_checks,
    num_valid,
    softmax_target,
)
from ..schedules import ScheduleLike, as_schedule, check_step, scheduled_class_weights
from .base import PixelWeightedModule, ScheduledPixelWeightedModule, module_for


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    weight: Optional[ClassValues] = None,
    weight_schedule: Optional[ScheduleLike] = None,
    step: float = 0.0,
    label_smoothing: Union[float, Tensor] = 0.0,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Softmax cross-entropy, optionally class-weighted (with a schedule) and label-smoothed.

    ``L_i = -Σ_c w_c y'_ic log p_ic`` with ``p = softmax(z)`` over the class dim and the smoothed target
    ``y' = (1 - ε) y + ε / C`` (``ε = label_smoothing``, PyTorch's convention). The gradient of ``L_i`` with
    respect to the logits is ``p_j Σ_c w_c y'_ic - w_j y'_ij``, which is ``p - y`` without weights and
    smoothing.

    **Scheduled class weights** (SPEC §1): with ``weight_schedule`` ``s``, the weights at ``step`` ``t`` are
    ``w_c(t) = 1 + (w_c - 1) · s(t)``, from ``weight`` at ``s = 1`` to uniform at ``s = 0``; the SPEC's
    ``1 + (w_c^init - 1) · exp(-λ t)`` is ``weight_schedule="exponential(lam=λ)"``. The document's literal
    ``w_c^init · exp(-λ t)`` scales every class alike, which only rescales the loss.

    ``mean`` divides by ``Σ_{i∈V} Σ_c w_c y_ic`` with the *unsmoothed* target: the number of valid pixels
    without weights, never the count of all pixels. For index targets this is exactly
    ``torch.nn.functional.cross_entropy``; for soft targets torch divides by the pixel count instead, and
    seglosses keeps ``Σ w y`` so that a one-hot target gives exactly what its index target gives.

    Args:
        logits: ``(N, C, *S)``, ``C >= 2``, one to three spatial dims.
        target: class indices ``(N, *S)`` (integer) or one-hot / soft probabilities ``(N, C, *S)``.
        weight_map: per-pixel weights ``(N, *S)``, ``>= 0``: the loss sums ``ω_i L_i`` and ``mean``
            divides by the valid pixels' summed ``ω_i w_{y_i}``.
        mask: ``(N, *S)`` bool, True where a pixel counts (the general form of ``ignore_index``).
        weight: per-class weights ``(C,)``, non-negative.
        weight_schedule: a schedule ``s`` with values in ``[0, 1]`` (a
            :class:`~seglosses.schedules.Schedule` or its spec string) moving ``weight`` to
            uniform; needs ``weight``.
        step: the step ``t >= 0`` that ``weight_schedule`` reads (an epoch or iteration count).
        label_smoothing: ``ε`` in ``[0, 1)``; or a 0-d float tensor (an adaptive ``ε``, read without a host
            synchronisation: ``L_i = (1-ε) w_t ce_i + ε (w̄ lse_i - Σ_c w_c z_ic / C)``, the same value).
        ignore_index: index-target value whose pixels count nowhere.
        reduction: ``none`` -> ``(N, *S)``; ``mean`` / ``sum`` -> scalar.

    Raises:
        SegLossError: bad shapes, dtypes, target values, weights or options.
    """
    opts = CrossEntropyOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        weight=weight,
        weight_schedule=weight_schedule,
        step=step,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _cross_entropy(logits, target, opts)


def _cross_entropy(logits: Tensor, target: Tensor, opts: CrossEntropyOptions) -> Tensor:
    """:func:`cross_entropy_loss` on checked options (its module's forward too)."""
    if opts.pixel_weights is not None:
        return weighted_pixel_loss(_cross_entropy, _ce_shares, logits, target, opts, binary=False)
    smoothing = isinstance(opts.label_smoothing, Tensor) or opts.label_smoothing > 0
    prepared = softmax_target(  # an index target without smoothing goes to index_term
        logits, target, opts.ignore_index, log_terms=True, smoothing=smoothing, kernel_checks=not smoothing
    )
    return ce_from_prepared(logits.to(compute_dtype(logits)), prepared, opts)


def _class_weights(opts: CrossEntropyOptions, work: Tensor) -> Optional[Tensor]:
    """The class weights ``(C,)`` at the current step (``weight_schedule``), in ``work``'s dtype, or None."""
    w = cast(Optional[Tensor], opts.weight)
    if w is not None and opts.weight_schedule is not None:
        w = scheduled_class_weights(w, opts.weight_schedule, opts.step)
    return class_tensor(w, work, "weight")


def _ce_shares(logits: Tensor, target: Tensor, opts: CrossEntropyOptions) -> Tensor:
    """Each pixel's share of ``mean``'s denominator ``(N, *S)``: ``w_{y_i}`` (1 without class weights) at a
    valid pixel and 0 at an ignored one; ``Σ_c w_c y_ic`` for a one-hot / soft target (a checked target)."""
    work = logits.to(compute_dtype(logits))
    w = _class_weights(opts, work)
    if target.shape == logits.shape:
        dense = target.to(work.dtype)
        return dense.sum(1) if w is None else torch.einsum("nc...,c->n...", dense, w)
    valid = _valid_mask(target, opts.ignore_index)
    index = target.long() if valid is None else target.long().masked_fill(~valid, 0)
    shares = work.new_ones(index.shape) if w is None else torch.take(w, index)
    return shares if valid is None else shares * valid


def ce_from_prepared(
    work: Tensor, prepared: SoftmaxTarget, opts: CrossEntropyOptions, log_p: Optional[Tensor] = None
) -> Tensor:
    """:func:`cross_entropy_loss` after its checks: ``work`` the logits in their compute dtype, ``prepared``
    the checked target, ``opts`` the checked options; ``log_p`` the detached ``log_softmax(work)`` when
    the caller has it (used by the tensor-ε path)."""
    w = _class_weights(opts, work)
    eps, reduction = opts.label_smoothing, opts.reduction
    if isinstance(prepared, IndexTarget):
        # w_t per pixel, read at a clamped label (an unchecked label out of range reads a weight; its loss
        # is NaN): the denominator's and the fused term's factor
        pixel_w = None if w is None else torch.take(w, prepared.index().clamp(0, work.shape[1] - 1))
        denominator = _index_denominator(prepared, pixel_w, work.dtype) if reduction == "mean" else None
        if isinstance(eps, Tensor):  # the adaptive smoothing: its caller cleaned the logits
            loss = _index_smoothed(work, prepared, w, eps.to(work.dtype), opts.ignore_index, log_p)
            return reduce(loss, reduction, denominator)
        fused = index_term(work, prepared, 0.0) if not eps else None
        if fused is not None:  # class weights multiply the term (w_t (p - onehot) by autograd)
            return reduce(fused if pixel_w is None else fused * pixel_w, reduction, denominator)
        if w is not None and pixel_w is not None and w.requires_grad:  # torch's kernel refuses it
            if eps:
                loss = _index_smoothed(work, prepared, w, work.new_tensor(eps), opts.ignore_index)
            else:  # w_t · ce (0 at ignored pixels)
                ce = F.cross_entropy(
                    prepared.clean(work), prepared.labels.long(),
                    ignore_index=_torch_ignore(opts.ignore_index), reduction="none",
                )  # fmt: skip
                loss = ce * pixel_w
            return reduce(loss, reduction, denominator)
        # torch's own kernel. Its mean divides by the valid count as ours does but gives NaN for none, so
        # it serves a mean only when the count is known on the host and positive; else its sum is reduced
        own_mean = reduction == "mean" and w is None and isinstance(denominator, int) and denominator > 0
        loss = F.cross_entropy(
            prepared.clean(work),
            prepared.labels.long(),
            weight=w,
            ignore_index=_torch_ignore(opts.ignore_index),
            reduction="mean" if own_mean else "none" if reduction == "none" else "sum",
            label_smoothing=eps,
        )
        return loss if own_mean else reduce(loss, reduction, denominator)
    dense = prepared.dense.to(work.dtype)
    smoothed = dense
    if isinstance(eps, Tensor):
        smoothed, eps = dense * (1 - eps.to(work.dtype)) + eps.to(work.dtype) / work.shape[1], 0.0
    if eps:
        smoothed = smoothed * (1 - eps) + eps / work.shape[1]
    fused = dense_term(work, smoothed, w, 0.0)
    if fused is not None:
        loss = fused
    else:
        weighted = smoothed if w is None else smoothed * w.view(1, -1, *[1] * (work.ndim - 2))
        # -Σ_c w_c y_c log p_c, with 0 where y_c = 0: a -inf logit of a class without target mass is legal
        # (SPEC section 6), and 0 · log 0 must not become NaN as in F.cross_entropy's probability path
        log_p = torch.log_softmax(work, 1)
        terms = torch.where(weighted != 0, weighted * log_p, 0.0)
        loss = -torch.where(log_p.isnan(), log_p, terms).sum(1)  # a NaN / +inf logit stays visible
    target_mass = dense.sum(1) if w is None else torch.einsum("nc...,c->n...", dense, w)
    return reduce(loss, reduction, target_mass.sum(dtype=work.dtype))


def index_term(
    work: Tensor, prepared: IndexTarget, gamma: float, floor: float = 0.0, detach: bool = False
) -> Optional[Tensor]:
    """The per-pixel softmax term ``m_i · ce_i`` (``(N, *S)``, 0 at ignored pixels; see
    :class:`FusedIndexCE` for ``m``) by the fused implementation that the backend picks
    (:func:`~seglosses._core.backend.implementation`): :class:`FusedIndexCE` on eager CPU, the Triton
    kernel (``seglosses::softmax_term``); None when the plain torch reference serves (the caller's own
    formula, by autograd)."""
    chosen = implementation(work)
    if chosen == "cpu":
        return FusedIndexCE.apply(work, prepared.labels, prepared.valid, gamma, floor, detach)
    if chosen == "triton":
        from ..ops import triton_softmax

        ignore = 0 if prepared.ignore_index is None else prepared.ignore_index
        check = prepared.kernel_checks is not None
        loss, _, counted = triton_softmax.softmax_term(
            work.flatten(2), prepared.labels.flatten(1), ignore,
            prepared.ignore_index is not None, float(gamma), float(floor), detach, check,
        )  # fmt: skip
        if check:
            defer_kernel_checks(prepared, work.shape[1], counted)
        return loss.view(prepared.labels.shape)
    return None


def focal_factor(ce: Tensor, u: Tensor, gamma: Union[float, Tensor]) -> Tensor:
    """The focal factor, the one place it is written: ``F = d/d ce`` of ``u^γ ce`` with
    ``u = 1 - p = -expm1(-ce)``, i.e. ``u^γ - γ u^(γ-1) p log p``, finite for every ``γ >= 0``: evaluated
    as ``u^(γ-1) (u + γ p ce)`` for a number ``γ >= 1``, else as ``u^γ (1 + γ p ce / u)`` with
    ``p ce / u -> 1`` at ``u = 0`` (a tensor ``γ`` broadcasts with ``u``). At ``p = 0`` (``ce = inf``)
    ``p ce`` is 0. A new tensor."""
    # p ce = (1 - u) ce; 0 at p = 0 (0 · inf; where ce is NaN, u is too and keeps the factor NaN)
    p_ce = torch.addcmul(ce, u, ce, value=-1.0).nan_to_num_(nan=0.0, posinf=torch.inf, neginf=-torch.inf)
    if not isinstance(gamma, Tensor) and gamma >= 1:
        return p_ce.mul_(gamma).add_(u).mul_(u if gamma == 2 else u.pow(gamma - 1))
    ratio = (p_ce / u).nan_to_num_(nan=1.0, posinf=torch.inf)  # p ce / u -> 1 at u = 0 (0 / 0)
    return (ratio * gamma).add_(1.0).mul_(u.pow(gamma))


def _fused_index_reference(
    ctx: Any, logits: Tensor, labels: Tensor, valid: Optional[Tensor], *_: Optional[Tensor]
) -> Tuple[Tuple[Any, ...], Tensor]:
    """:class:`FusedIndexCE`'s formula in plain torch (what a double backward differentiates):
    ``m · ce`` with ``ce = -log_softmax(z)_t`` and ``m = α + (1 - α) (1 - p_t)^γ``."""
    log_p_t = torch.log_softmax(logits.flatten(2), 1).gather(1, class_labels(labels, valid).unsqueeze(1))
    ce = -log_p_t.squeeze(1)
    loss = ce
    if ctx.gamma > 0:
        modulation = ctx.floor + (1 - ctx.floor) * (-torch.expm1(-ce)) ** ctx.gamma
        loss = (modulation.detach() if ctx.detach else modulation) * ce
    if valid is not None:
        loss = torch.where(valid.flatten(1), loss, 0.0)
    return (logits, None, None, None, None, None), loss.view(labels.shape)


class FusedIndexCE(torch.autograd.Function):
    """Per-pixel ``m_i · ce_i`` for an index target, ``(N, *S)``, 0 at ignored pixels; eager CPU
    (:func:`index_term`). ``ce_i = -log p_{i,t}`` and ``m_i = α + (1 - α) u_i^γ`` with
    ``u_i = 1 - p_{i,t}``: cross-entropy (``γ = 0``), focal loss (``α = 0``) and the difficulty-weighted
    CE (``α`` the floor; ``detach``: ``m`` is a constant weight).

    Backward, with ``w_i = ∂L/∂ce_i`` (times the incoming gradient): ``1`` for CE, ``m_i`` detached, else
    ``α + (1 - α) F_i`` with the focal factor ``F`` (:func:`focal_factor`); then
    ``∂L/∂z_ij = w_i (p_ij - [j = t_i])``.

    * ``C = 2``, every logit finite: the margin ``δ_i = z_{i,o} - z_{i,t}`` (``o`` the other class) is all
      it takes: ``ce = softplus(δ)``, ``u = σ(δ)``, and ``∂L/∂z_o = -∂L/∂z_t = w u``. Every step is
      pixel-sized; the gradient is the only logits-sized tensor written.
    * Otherwise: ``softmax``, ``p_t`` read at each pixel's target class along its sample's flat ``(C·P)``
      row (``stats.row_gather``) and ``ce = -log p_t`` (:func:`_target_terms`); the backward writes
      ``w (p - onehot(t))`` into the saved probabilities in place (``-1`` added at the target class, a
      product). A second backward through a retained graph recomputes them from the logits.

    ``F.cross_entropy`` makes a log-softmax pass, an indexed read, a zero-filled logits-sized gradient,
    an indexed write and a log-softmax backward that reads two logits-sized tensors and takes ``exp`` of
    one; here the one ``exp`` pass is the softmax's.

    Ignored pixels get loss and gradient 0: by a product with the float mask, and only when something
    is not finite (a NaN / inf logit or incoming gradient) by ``where`` / ``masked_fill_``, so that a NaN
    at an ignored pixel reaches nothing.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        labels: Tensor,
        valid: Optional[Tensor],
        gamma: float,
        floor: float = 0.0,
        detach: bool = False,
    ) -> Tensor:
        flat = logits.flatten(2)
        ctx.gamma, ctx.floor, ctx.detach, ctx.logits_shape = gamma, floor, detach, logits.shape
        ctx.probs, two = None, _two_class_terms(flat, labels) if logits.shape[1] == 2 else None
        u: Optional[Tensor]
        if two is not None:
            ce, u, label_one = two
        else:
            ctx.probs = torch.softmax(flat, dim=1)
            ce, u = _target_terms(flat, ctx.probs, class_labels(labels, valid), gamma > 0)
            label_one = None
        loss = ce if gamma == 0 or u is None else _modulation(u, gamma, floor).mul_(ce)
        ctx.dirty = False
        if valid is not None:
            loss = loss * valid_weights(valid, loss.dtype)
            if two is None and not bool(loss.sum().isfinite()):  # a NaN / inf at an ignored pixel
                ctx.dirty = True
                loss = torch.where(valid.flatten(1), loss, 0.0)
        ctx.save_for_backward(logits, labels, valid, None if gamma == 0 else ce, u, label_one)
        return loss.view(labels.shape)

    @staticmethod
    @first_order_backward("cross_entropy_loss / focal_loss / difficulty_ce_loss", _fused_index_reference)
    def backward(ctx: Any, grad_loss: Tensor) -> Tuple[Tensor, None, None, None, None, None]:
        logits, labels, valid, ce, u, label_one = ctx.saved_tensors
        w = grad_loss.flatten(1)  # (N, P); a new tensor below except for CE without ignored pixels
        if ctx.gamma > 0:
            w = _ce_factor(ce, u, ctx.gamma, ctx.floor, ctx.detach).mul_(w)
        if valid is not None:
            w = w * valid_weights(valid, w.dtype)
            if ctx.dirty or not bool(w.sum().isfinite()):
                ctx.dirty = True
                w = torch.where(valid.flatten(1), w, 0.0)
        if label_one is not None:
            w_u = w * u if w.data_ptr() == grad_loss.data_ptr() else w.mul_(u)
            return _two_class_grad(w_u, label_one, ctx.logits_shape), None, None, None, None, None
        if ctx.probs is not None:  # the first backward: the probabilities become the gradient
            grad, ctx.probs = ctx.probs, None
        else:  # the same operation as the first time, so the same gradient to the last bit
            grad = torch.softmax(logits.flatten(2), dim=1)
        minus_one = grad.new_full((1, 1), -1.0).expand(w.shape)
        row_scatter_add(grad, class_labels(labels, valid), minus_one)  # p - onehot(t)
        grad.mul_(w.unsqueeze(1))
        if ctx.dirty:  # p · 0 is NaN where p is (a NaN logit at an ignored pixel)
            grad.masked_fill_(~valid.flatten(1).unsqueeze(1), 0.0)
        return grad.view(ctx.logits_shape), None, None, None, None, None


def _target_terms(
    flat: Tensor, probs: Tensor, index: Tensor, with_u: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """``ce = -log p_t`` and (``with_u``) ``u = 1 - p_t``, each ``(N, P)``, from the softmax ``probs``
    ``(N, C, P)`` at the target classes ``index``. ``ce`` equals the log-softmax's
    ``z_t - max - log Σ exp(z - max)`` to rounding while ``p_t`` is a normal number; when one is not
    (``ce > 87`` in float32: a saturated wrong prediction, a ``-inf`` target logit, or a NaN), every
    ``ce`` is read from ``log_softmax`` instead. ``1 - p_t`` is as exact as ``-expm1(-ce)``: both carry
    the rounding of the softmax's sum."""
    p_t = row_gather(probs, index)
    u = torch.sub(1.0, p_t) if with_u else None
    if p_t.numel() == 0 or bool(p_t.amin() >= torch.finfo(p_t.dtype).tiny):  # NaN compares False
        return p_t.log_().neg_(), u
    return row_gather(torch.log_softmax(flat, dim=1), index).neg_(), u


def _two_class_terms(flat: Tensor, labels: Tensor) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """``C = 2``: ``ce = softplus(δ)``, ``u = σ(δ)`` and ``[t = 1]`` as a number, each ``(N, P)``, from the
    margin ``δ = z_o - z_t = (z_1 - z_0)(1 - 2 [t = 1])`` (any label but 1, ``ignore_index`` included,
    counts as class 0: the pixel is masked later). None when a margin is not finite (a NaN or infinite
    logit anywhere, ignored pixels included): the log-softmax path handles those."""
    label_one = valid_weights(labels.eq(1), flat.dtype)
    margin = torch.sub(flat[:, 1], flat[:, 0])
    margin = torch.addcmul(margin, label_one, margin, value=-2.0)
    if not bool(margin.sum().isfinite()):
        return None
    ce = F.softplus(margin, threshold=40.0)  # exact to float64 precision
    return ce, margin.sigmoid_(), label_one


def _two_class_grad(w_u: Tensor, label_one: Tensor, shape: torch.Size) -> Tensor:
    """``∂L/∂z_o = -∂L/∂z_t = w u``, so ``∂L/∂z_1 = w u (1 - 2 [t = 1]) = -∂L/∂z_0``."""
    grad = w_u.new_empty(w_u.shape[0], 2, w_u.shape[1])
    torch.addcmul(w_u, label_one, w_u, value=-2.0, out=grad[:, 1])
    torch.neg(grad[:, 1], out=grad[:, 0])
    return grad.view(shape)


def _modulation(u: Tensor, gamma: float, floor: float) -> Tensor:
    """``α + (1 - α) u^γ`` (a new tensor)."""
    modulation = u.pow(gamma)
    return modulation if floor == 0 else modulation.mul_(1 - floor).add_(floor)


def _ce_factor(ce: Tensor, u: Tensor, gamma: float, floor: float, detach: bool) -> Tensor:
    """``∂(m · ce)/∂ce`` for ``γ > 0``: ``m`` itself when it is detached, else ``α + (1 - α) F``."""
    if detach:
        return _modulation(u, gamma, floor)
    factor = focal_factor(ce, u, gamma)
    return factor if floor == 0 else factor.mul_(1 - floor).add_(floor)


def _torch_ignore(ignore_index: Optional[int]) -> int:
    return -100 if ignore_index is None else ignore_index


def _index_smoothed(
    work: Tensor,
    prepared: IndexTarget,
    w: Optional[Tensor],
    eps: Tensor,
    ignore_index: Optional[int],
    log_p: Optional[Tensor] = None,
) -> Tensor:
    """Label-smoothed CE per pixel for a tensor ``ε`` (0 at ignored pixels). Without weights, the closed
    form of :class:`_SmoothedIndexCE` (``log_p``: the detached ``log_softmax`` when the caller has it);
    with weights ``(1-ε) w_t ce + ε (w̄ (ce + z_t) - Σ_c w_c z_c / C)`` from the unsmoothed CE
    ``ce = lse - z_t``."""
    index = prepared.index()
    if w is None:
        log_p = torch.log_softmax(work.detach(), 1) if log_p is None else log_p
        return _SmoothedIndexCE.apply(work, log_p, index, prepared.valid, eps)
    ce = F.cross_entropy(
        work, prepared.labels.long(), ignore_index=_torch_ignore(ignore_index), reduction="none"
    )
    z_t = work.gather(1, index.unsqueeze(1)).squeeze(1)
    smooth = w.mean() * (ce + z_t) - torch.einsum("nc...,c->n...", work, w) / work.shape[1]
    loss = (1 - eps) * torch.take(w, index) * ce + eps * smooth
    return loss if prepared.valid is None else torch.where(prepared.valid, loss, 0.0)


class _SmoothedIndexCE(LeanFunction):
    """Label-smoothed CE per pixel for an index target ``t`` and a 0-d tensor ``ε``, from ``log p``:
    ``L_i = -(1-ε) log p_it - (ε/C) Σ_c log p_ic`` (0 at ignored pixels), with the closed-form gradient
    ``∂L_i/∂z_j = p_ij - (1-ε) [j = t] - ε/C`` (one logits-sized pass each way). ``ε`` is a constant
    here (the adaptive smoothing's, detached). ``forward`` / ``setup_context``: the ``torch.func`` form."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, log_p: Tensor, index: Tensor, valid: Optional[Tensor], eps: Tensor) -> Tensor:
        log_p_t = log_p.gather(1, index.unsqueeze(1)).squeeze(1)
        # (1-ε)(-log p_t) + ε (-mean_c log p_c), each term 0 when its weight is: +inf where a log is -inf
        # (lerp would give inf - inf = NaN there)
        smooth = torch.where(eps == 0, 0.0, -eps * log_p.mean(1))
        loss = torch.where(eps == 1, 0.0, (eps - 1) * log_p_t) + smooth
        return loss if valid is None else loss.masked_fill(~valid, 0.0)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)  # the logits only for a double backward (no copy)

    @staticmethod
    def reference(ctx: Any, logits: Tensor, log_p: Tensor, index: Tensor, valid: Optional[Tensor],
                  eps: Tensor) -> Tuple[Tuple[Any, ...], Tensor]:  # fmt: skip
        """The formula in plain torch, from the logits (what a double backward differentiates)."""
        return (logits, None, None, None, None), _SmoothedIndexCE.forward(
            logits, torch.log_softmax(logits, 1), index, valid, eps
        )

    @staticmethod
    @first_order_backward("cross_entropy_loss", lambda *a: _SmoothedIndexCE.reference(*a))
    def backward(ctx: Any, grad_loss: Tensor) -> Tuple[Tensor, None, None, None, None]:
        _, log_p, index, valid, eps = ctx.saved_tensors
        g = grad_loss if valid is None else grad_loss.masked_fill(~valid, 0.0)
        g = g.unsqueeze(1)
        grad = (log_p.exp() - eps / log_p.shape[1]) * g
        grad = grad.scatter_add(1, index.unsqueeze(1), g * (eps - 1))
        return grad, None, None, None, None


def _index_denominator(
    prepared: IndexTarget, pixel_weight: Optional[Tensor], dtype: torch.dtype
) -> Union[int, Tensor]:
    """``Σ_{i∈V} w_{y_i}``: the valid pixel count, or the valid pixels' summed class weights
    ``pixel_weight`` ``(N, *S)``, in ``dtype`` (the compute dtype: float64 for a float64 loss)."""
    if pixel_weight is None:
        return prepared.num_valid()
    if prepared.valid is not None:
        pixel_weight = pixel_weight * prepared.valid
    return pixel_weight.sum(dtype=dtype)


def binary_cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    weight_map: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    *,
    weight: Optional[ClassValues] = None,
    pos_weight: Optional[ClassValues] = None,
    label_smoothing: float = 0.0,
    ignore_index: Optional[int] = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Sigmoid binary cross-entropy per channel (binary or multi-label segmentation).

    ``L = -w_c [ρ_c y' log σ(z) + (1 - y') log(1 - σ(z))]`` with ``y' = (1 - ε) y + ε / 2``, ``w_c`` the
    channel ``weight`` and ``ρ_c`` the ``pos_weight`` (part of the formula, as in
    ``torch.nn.BCEWithLogitsLoss``). ``mean`` divides by the number of valid elements or, with ``weight``,
    by the summed weights of the valid elements.

    Args:
        logits: ``(N, C, *S)``.
        target: same shape; bool, integer (``ignore_index`` allowed) or float in ``[0, 1]``.
        weight_map: per-pixel weights ``(N, *S)``, ``>= 0``, on every channel: the loss sums
            ``ω_i L_ic`` and ``mean`` divides by the valid elements' summed ``ω_i w_c``.
        mask: ``(N, *S)`` bool, True where a pixel counts (the general form of ``ignore_index``).
        weight: per-channel weights ``(C,)`` or a scalar.
        pos_weight: per-channel weight of the positive term ``(C,)`` or a scalar, ``>= 0``.
        label_smoothing: ``ε`` in ``[0, 1)``.
        ignore_index: integer-target value whose elements count nowhere.
        reduction: ``none`` -> ``(N, C, *S)``; ``mean`` / ``sum`` -> scalar.
    """
    opts = BinaryCrossEntropyOptions(
        pixel_weights=pixel_weights(logits, weight_map, mask),
        weight=weight,
        pos_weight=pos_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _binary_cross_entropy(logits, target, opts)


def _binary_cross_entropy(logits: Tensor, target: Tensor, opts: BinaryCrossEntropyOptions) -> Tensor:
    """:func:`binary_cross_entropy_loss` on checked options (its module's forward too)."""
    if opts.pixel_weights is not None:
        return weighted_pixel_loss(_binary_cross_entropy, _bce_shares, logits, target, opts, binary=True)
    eps, reduction = opts.label_smoothing, opts.reduction
    prepared = binary_target(logits, target, opts.ignore_index, log_terms=True, smoothing=eps > 0)
    logits = logits.to(compute_dtype(logits))
    w = channel_tensor(class_tensor(cast(Optional[Tensor], opts.weight), logits, "weight"), logits)
    rho = channel_tensor(class_tensor(cast(Optional[Tensor], opts.pos_weight), logits, "pos_weight"), logits)
    y = prepared.dense if eps == 0 else prepared.dense * (1 - eps) + eps / 2
    if w is None:
        denominator = num_valid(prepared.valid, logits.shape)
    else:
        element_weight = w.expand_as(logits)
        if prepared.valid is not None:
            element_weight = element_weight * prepared.valid
        denominator = element_weight.sum(dtype=logits.dtype)
    fused = binary_term(logits, y, prepared.valid, rho, None, 0.0)
    if fused is not None:
        return reduce(fused if w is None else fused * w, reduction, denominator)
    summed = prepared.valid is None and reduction != "none"
    loss = _fused_binary_ce(logits, y, w, rho, summed)
    if loss is not None and summed:  # the weighted sum, nothing ignored
        return reduce(loss, reduction, denominator)
    if loss is None:  # log space; ignored elements' logits replaced first, so a NaN there reaches nothing
        if prepared.valid is not None:
            logits = logits.masked_fill(~prepared.valid, 0.0)
        positive, negative = binary_log_terms(logits, y)
        loss = -(positive + negative) if rho is None else -(rho * positive + negative)
    if w is not None:
        loss = loss * w
    if prepared.valid is not None:
        loss = loss.masked_fill(~prepared.valid, 0)
    return reduce(loss, reduction, denominator)


def _bce_shares(logits: Tensor, target: Tensor, opts: BinaryCrossEntropyOptions) -> Tensor:
    """Each element's share of ``mean``'s denominator ``(N, C, *S)``: its channel weight (1 without) at a
    valid element, 0 at an ignored one."""
    work = logits.to(compute_dtype(logits))
    w = channel_tensor(class_tensor(cast(Optional[Tensor], opts.weight), work, "weight"), work)
    shares = torch.ones_like(work) if w is None else w.expand_as(work)
    valid = (
        None
        if target.is_floating_point() or target.dtype == torch.bool
        else _valid_mask(target, opts.ignore_index)
    )
    return shares if valid is None else shares * valid


def dense_term(
    work: Tensor, target: Tensor, weight: Optional[Tensor], gamma: Union[float, Tensor]
) -> Optional[Tensor]:
    """The per-pixel softmax term of a dense target ``-Σ_c w_c y_c (1-p_c)^γ log p_c`` (``(N, *S)``) by
    the Triton kernel ``seglosses::softmax_dense_term`` when the backend picks it, else None (the
    caller's forms). ``weight``: per class, broadcastable to ``(C,)``, None for 1. A target or weight that
    requires a gradient, or a tensor ``γ``, always takes the caller's forms."""
    if implementation(work) != "triton" or target.requires_grad or isinstance(gamma, Tensor):
        return None
    if weight is not None and weight.requires_grad:
        return None
    from ..ops import triton_softmax

    c = work.shape[1]
    ones = work.new_ones(c)
    w = (
        ones
        if weight is None
        else torch.broadcast_to(weight.reshape(-1).to(work.dtype) * ones, (c,)).contiguous()
    )
    loss = triton_softmax.softmax_dense_term(
        work.flatten(2), target.to(work.dtype).flatten(2), w, float(gamma)
    )
    return loss.view(target.shape[0], *target.shape[2:])


def binary_term(
    work: Tensor,
    y: Tensor,
    valid: Optional[Tensor],
    pos: Optional[Tensor],
    neg: Optional[Tensor],
    gamma: float,
) -> Optional[Tensor]:
    """The per-element sigmoid term ``-[a⁺ y (1-p)^γ log p + a⁻ (1-y) p^γ log(1-p)]`` (0 at ignored elements)
    by the Triton kernel ``seglosses::sigmoid_term`` when the backend picks it, else None (the caller's
    CPU or reference forms). ``pos`` / ``neg``: per-channel weights broadcastable to ``(C,)``, None for 1;
    a target that requires a gradient always takes the caller's forms."""
    if y.requires_grad or implementation(work) != "triton":
        return None
    from ..ops import triton_sigmoid

    c = work.shape[1]

    def channels(weights: Optional[Tensor]) -> Tensor:
        ones = work.new_ones(c)
        return ones if weights is None else torch.broadcast_to(weights.reshape(-1) * ones, (c,)).contiguous()

    flat = work.flatten(2).contiguous()
    mask = flat if valid is None else valid.view(torch.uint8).flatten(2).contiguous()
    loss = triton_sigmoid.sigmoid_term(
        flat, y.flatten(2).contiguous(), mask, valid is not None, channels(pos), channels(neg), float(gamma)
    )
    return loss.view(work.shape)


def _fused_binary_ce(
    logits: Tensor, y: Tensor, w: Optional[Tensor], rho: Optional[Tensor], summed: bool
) -> Optional[Tensor]:
    """``-(ρ y log σ(z) + (1 - y) log σ(-z))`` by torch's fused kernel on eager CPU (where the host read
    is free): per element (unweighted), or, when ``summed``, its ``w``-weighted sum (0-d), which keeps
    the per-element loss out of memory. None on CUDA and under ``torch.compile``, and when the result is
    not finite: the kernel gives NaN for a ``-inf`` logit with target 0, whose loss is 0 (SPEC 6), and its
    gradient would carry a NaN logit at an ignored element into the result; such inputs take
    :func:`binary_log_terms`, which handles both."""
    if not fused_cpu(logits):
        return None
    if summed:
        loss = F.binary_cross_entropy_with_logits(logits, y, weight=w, pos_weight=rho, reduction="sum")
    else:
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=rho, reduction="none")
    return loss if bool(loss.sum().isfinite()) else None


@dataclass(frozen=True, kw_only=True, eq=False)
class CrossEntropyOptions(Options):
    """The options of :func:`cross_entropy_loss` (and its module), checked once."""

    weight: Optional[ClassValues]
    weight_schedule: Optional[ScheduleLike]
    step: float
    label_smoothing: Union[float, Tensor]
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "weight": class_values("weight", self.weight, allow_scalar=False),
            **check_weight_schedule("weight", self.weight, self.weight_schedule, self.step),
            "label_smoothing": check_smoothing(self.label_smoothing),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


def check_weight_schedule(
    option: str, weight: object, schedule: Optional[ScheduleLike], step: float
) -> Dict[str, Any]:
    """``{option}_schedule`` as a :class:`Schedule` (or None) and the step; a schedule needs ``option``."""
    if schedule is not None and weight is None:
        raise expected(f"{option} (the initial class weights) with {option}_schedule", f"{option}=None")
    return {
        f"{option}_schedule": None if schedule is None else as_schedule(schedule),
        "step": check_step(step),
    }


def check_smoothing(label_smoothing: Union[float, Tensor]) -> Union[float, Tensor]:
    """``ε`` in ``[0, 1)``, or a 0-d float tensor (its value checked only with the data checks on)."""
    if not isinstance(label_smoothing, Tensor):
        return check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
    if label_smoothing.ndim != 0 or not label_smoothing.is_floating_point():
        got = f"shape {tuple(label_smoothing.shape)}, {label_smoothing.dtype}"
        raise expected("label_smoothing as a number or a 0-d float tensor", got)
    return cast(Tensor, class_values("label_smoothing", label_smoothing, high=1.0))


@dataclass(frozen=True, kw_only=True, eq=False)
class BinaryCrossEntropyOptions(Options):
    """The options of :func:`binary_cross_entropy_loss` (and its module), checked once."""

    weight: Optional[ClassValues]
    pos_weight: Optional[ClassValues]
    label_smoothing: float
    ignore_index: Optional[int]
    reduction: str
    pixel_weights: Optional[PixelWeights] = call_input()  # a call's weight map and mask

    def checked(self) -> Dict[str, Any]:
        return {
            "weight": class_values("weight", self.weight),
            "pos_weight": class_values("pos_weight", self.pos_weight),
            "label_smoothing": check_number(
                "label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True
            ),
            "ignore_index": check_ignore_index(self.ignore_index),
            "reduction": check_reduction(self.reduction),
        }


CrossEntropyLoss = module_for(
    "CrossEntropyLoss", cross_entropy_loss, CrossEntropyOptions, _cross_entropy, ScheduledPixelWeightedModule
)
BinaryCrossEntropyLoss = module_for(
    "BinaryCrossEntropyLoss",
    binary_cross_entropy_loss,
    BinaryCrossEntropyOptions,
    _binary_cross_entropy,
    PixelWeightedModule,
)

register(
    "ce",
    CrossEntropyLoss,
    domain="softmax",
    description="softmax cross-entropy (class weights, label smoothing)",
)
register(
    "bce", BinaryCrossEntropyLoss, domain="binary", description="sigmoid binary cross-entropy per channel"
)
