"""Compound losses: weighted sums of registered losses, built from spec strings; weights may be schedules."""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor, nn

from .._core.errors import SegLossError, expected, show
from .._core.options import check_number
from .._core.registry import Weight, build, get_entry, parse_spec
from ..schedules import Schedule, ScheduleLike, as_schedule, check_step
from .base import LossModule, ScheduledLossModule, load_step, save_step
from .deep_supervision import DeepSupervision


class CompoundLoss(nn.Module):
    """``Σ_k w_k(t) L_k(logits, target)`` over registered losses; each weight is a number or a schedule.

    A scheduled weight is a :class:`~seglosses.schedules.Schedule` of the step ``t`` that
    :meth:`set_step` sets (an epoch or iteration count, never counted from forwards), e.g. the boundary-loss
    rebalancing ``α·dice + (1-α)·boundary`` with ``α = Schedule("linear", start=1, end=0.01, steps=99)``:
    ``CompoundLoss([(alpha, "dice", DiceLoss()), (1 - alpha, "boundary", BoundaryLoss())])``.
    :meth:`set_step` also sets the step of every term with schedules of its own (``ce`` with
    ``weight_schedule``), and the step is part of :meth:`state_dict` when anything is scheduled.

    **Inputs beyond (logits, target).** A term that takes more than the logits and the target names its
    inputs (``term_inputs``), and the compound passes each term its own:
    ``create_loss("ce + 0.1*info_nce")(logits, labels, embeddings=e)`` gives the embedding loss ``e``
    (and the logits, when its sampler reads them), ``create_loss("dice + 0.5*boundary")(logits, target,
    dist_maps=maps)`` gives the surface loss its precomputed distance maps. A missing required input
    raises, naming the term; an input no term takes raises too. A per-pixel ``weight_map=`` or ``mask=``
    goes to every term, and every term must take it. A compound of embedding losses alone is called as
    each of them is, ``(embeddings, labels)``.

    After each forward, for logging: :attr:`last_terms` maps each term's label (its text in the spec) to its
    detached unweighted value, :attr:`last_weights` to the weight it was given, :attr:`last_total` is the
    detached total; :meth:`logs` gives all three as floats. Every term must reduce to a scalar
    (``reduction`` ``mean`` or ``sum``).
    """

    def __init__(self, terms: Sequence[Tuple[Union[Weight, str], str, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise SegLossError("expected at least one loss term, got none")
        self.weights: List[Weight] = [_weight(w) for w, _, _ in terms]
        self.labels: List[str] = _unique([label for _, label, _ in terms])
        self.losses = nn.ModuleList([module for _, _, module in terms])
        for label, module in zip(self.labels, self.losses):
            if getattr(module, "reduction", "mean") == "none":
                raise SegLossError(f"expected term {label!r} to reduce to a scalar, got reduction='none'")
        # embedding losses alone take (embeddings, labels) positionally, as each of them does
        self._embeddings_only = all(_inputs_of(m).get("embeddings", False) for m in self.losses)
        self._step = 0.0
        self.last_terms: Dict[str, Tensor] = {}
        self.last_weights: Dict[str, float] = {}
        self.last_total: Optional[Tensor] = None

    @property
    def step(self) -> float:
        return self._step

    def set_step(self, step: float) -> None:
        """Set the step ``t >= 0`` that the scheduled weights and the terms' own schedules read."""
        self._step = check_step(step)
        for loss in self.losses:
            if isinstance(loss, (ScheduledLossModule, CompoundLoss)):
                loss.set_step(self._step)

    def has_schedule(self) -> bool:
        return any(isinstance(w, Schedule) for w in self.weights)

    def current_weights(self) -> List[float]:
        """Each term's weight at the current step."""
        return [w(self._step) if isinstance(w, Schedule) else w for w in self.weights]

    @property
    def term_inputs(self) -> Dict[str, bool]:
        """The keyword inputs the terms take: name -> whether some term requires it."""
        if self._embeddings_only:
            return {}
        inputs: Dict[str, bool] = {}
        for loss in self.losses:
            for name, required in _inputs_of(loss).items():
                inputs[name] = inputs.get(name, False) or required
        return inputs

    def forward_term(self, logits: Tensor, target: Tensor, inputs: Dict[str, Tensor]) -> Tensor:
        return self(logits, target, **inputs)

    def forward(self, logits: Tensor, target: Tensor, **inputs: Tensor) -> Tensor:
        """``Σ_k w_k L_k``; ``inputs`` are the keyword inputs of the terms that take more than
        ``(logits, target)`` (the class docstring)."""
        self._check_inputs(inputs)
        weights = self.current_weights()
        values = [
            self._term(label, loss, logits, target, inputs) for label, loss in zip(self.labels, self.losses)
        ]
        total = values[0] * weights[0]
        for weight, value in zip(weights[1:], values[1:]):
            total = total + weight * value
        self.last_terms = {label: value.detach() for label, value in zip(self.labels, values)}
        self.last_weights = dict(zip(self.labels, weights))
        self.last_total = total.detach()
        return total

    def _check_inputs(self, inputs: Dict[str, Tensor]) -> None:
        taken = self.term_inputs
        for name in inputs:
            if name in _EVERY_TERM:  # a weight map or mask left out of one term would be silently wrong
                for label, loss in zip(self.labels, self.losses):
                    if name not in _inputs_of(loss):
                        raise SegLossError(
                            f"expected every term to take {name}= (it weighs the whole loss), got term "
                            f"{label!r} ({type(loss).__name__}), which does not: leave it out of the "
                            f"compound, or apply {name} to the other terms yourself"
                        )
                continue
            if name not in taken:
                takes = ", ".join(f"{n}=" for n in taken) or "no keyword input"
                raise SegLossError(
                    f"expected only the keyword inputs this loss's terms take ({takes}), got {name}=: "
                    f"no term of {self.extra_repr()!r} takes it"
                )

    def _term(
        self, label: str, loss: nn.Module, logits: Tensor, target: Tensor, inputs: Dict[str, Tensor]
    ) -> Tensor:
        """One term's value, given the inputs it takes (a plain module: ``loss(logits, target)``)."""
        wanted = _inputs_of(loss)
        if self._embeddings_only or not wanted:
            return loss(logits, target)
        for name, required in wanted.items():
            if required and name not in inputs:
                raise SegLossError(
                    f"expected {name}= for term {label!r} ({type(loss).__name__} takes {name}), got none: "
                    f"call the loss as criterion(logits, target, {name}=...)"
                )
        given = {name: inputs[name] for name in wanted if name in inputs}
        return cast(LossModule, loss).forward_term(logits, target, given)

    def logs(self) -> Dict[str, float]:
        """The last forward as floats (one host sync): ``loss`` (the total), ``loss/<label>`` (each term's
        unweighted value) and ``weight/<label>`` (its weight at that step)."""
        if self.last_total is None:
            raise SegLossError("expected a forward before logs(), got none")
        values = torch.stack([self.last_total, *self.last_terms.values()]).tolist()
        logs = {"loss": values[0]}
        logs.update({f"loss/{label}": value for label, value in zip(self.last_terms, values[1:])})
        logs.update({f"weight/{label}": weight for label, weight in self.last_weights.items()})
        return logs

    def extra_repr(self) -> str:
        return " + ".join(f"{_text(w)}*{label}" for w, label in zip(self.weights, self.labels))

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        save_step(self, destination, prefix)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        load_step(self, state_dict, prefix, args, super()._load_from_state_dict)


def _weight(weight: Union[Weight, ScheduleLike]) -> Weight:
    """A finite real number as a float; a schedule (or its spec string) as a Schedule; else an error.

    A one-element tensor counts as its number unless it requires a gradient (the sum would not
    differentiate it)."""
    if isinstance(weight, (Schedule, str)):
        return as_schedule(weight)
    if isinstance(weight, Tensor) and weight.numel() == 1 and not weight.requires_grad:
        if not (weight.is_floating_point() or weight.is_complex() or weight.dtype == torch.bool):
            weight = int(weight.item())
        elif weight.is_floating_point():
            weight = float(weight.item())
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        got = f"a tensor of shape {tuple(weight.shape)}" if isinstance(weight, Tensor) else show(weight)
        if isinstance(weight, Tensor) and weight.requires_grad:
            got += " that requires grad (pass a number: the weights are not differentiated)"
        raise expected("each term's weight to be a finite real number or a schedule", got)
    return check_number("each term's weight", weight)


_EVERY_TERM = ("weight_map", "mask")  # inputs that change what the whole loss means: every term takes them


def _inputs_of(loss: nn.Module) -> Dict[str, bool]:
    """The keyword inputs a term takes besides ``(logits, target)`` (none for a plain module)."""
    return dict(getattr(loss, "term_inputs", {}))


def _text(weight: Weight) -> str:
    return f"({weight})" if isinstance(weight, Schedule) else f"{weight:g}"


def _unique(labels: List[str]) -> List[str]:
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def create_loss(spec: str, *, ignore_index: Optional[int] = None) -> nn.Module:
    """Build a loss from a spec string: ``create_loss("ce + 0.5*dice")``.

    A single unweighted term returns that loss's own module (``create_loss("focal(gamma=1)")`` is a
    :class:`~seglosses.FocalLoss`); anything else returns a :class:`CompoundLoss`. A weight may be a
    schedule of the step (``"linear(start=1, end=0.01, steps=99)*dice + (1 - linear(start=1, end=0.01,
    steps=99))*boundary"``; call ``set_step(epoch)``). ``ignore_index`` given here is every term's
    (``create_loss("ce + dice", ignore_index=255)``); a term that sets another value raises. Unknown
    names, bad syntax and bad options raise :class:`SegLossError`, naming the position and the known
    loss names.
    """
    inner = _deep_supervised(spec)
    if inner is not None:  # deep_supervision(<spec>): the wrapper around the inner spec's loss
        return DeepSupervision(create_loss(inner, ignore_index=ignore_index))
    if isinstance(spec, str) and "deep_supervision" in spec:
        raise SegLossError(
            "expected deep_supervision(...) to wrap the whole spec once, e.g. 'deep_supervision(ce + dice)', "
            f"got {spec!r}: the wrapper sums the scales; weight the terms inside it"
        )
    terms = parse_spec(spec)
    loss_domain(spec)  # a softmax and a binary loss cannot share one (logits, target) pair
    if ignore_index is not None:
        for _, _, options, label in terms:
            if options.get("ignore_index", ignore_index) != ignore_index:
                raise SegLossError(
                    f"expected term {label!r} to ignore {ignore_index} like the whole spec, got "
                    f"ignore_index={options['ignore_index']!r}"
                )
            options["ignore_index"] = ignore_index
    modules = [(weight, label, build(name, **options)) for weight, name, options, label in terms]
    if len(modules) == 1 and not isinstance(modules[0][0], Schedule) and modules[0][0] == 1.0:
        return modules[0][2]
    return CompoundLoss(modules)


def _deep_supervised(spec: str) -> Optional[str]:
    """The inner spec of ``deep_supervision(<spec>)`` (the whole string, parentheses balanced), or None."""
    text = spec.strip() if isinstance(spec, str) else ""
    head = "deep_supervision("
    if not (text.startswith(head) and text.endswith(")")):
        return None
    depth = 0
    for position, char in enumerate(text[len(head) - 1 :], len(head) - 1):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and position != len(text) - 1:
            return None  # "deep_supervision(ce) + dice": the wrapper is not the whole spec
    inner = text[len(head) : -1].strip()
    if "deep_supervision" in inner:
        raise SegLossError(f"expected one deep_supervision(...) around the spec, got it nested in {spec!r}")
    if not inner:
        raise SegLossError(
            "expected a loss spec inside deep_supervision(...), e.g. 'deep_supervision(ce + dice)'"
        )
    return inner


def loss_domain(spec: str) -> str:
    """The input domain (``softmax`` or ``binary``) of a spec's losses; mixing them is an error."""
    inner = _deep_supervised(spec)
    if inner is not None:
        return loss_domain(inner)
    domains = {get_entry(name).domain for _, name, _, _ in parse_spec(spec)}
    if domains == {"embedding"}:
        return "embedding"
    domains.discard("embedding")  # an embedding term takes the index target as its labels: softmax only
    if len(domains) > 1:
        raise SegLossError(f"expected losses of one input domain in {spec!r}, got {sorted(domains)}")
    if domains == {"binary"} and any(
        get_entry(name).domain == "embedding" for _, name, _, _ in parse_spec(spec)
    ):
        raise SegLossError(
            f"expected embedding losses beside softmax losses only in {spec!r}, got binary ones: an "
            "embedding loss takes labels (N, *S), a binary loss a target of the logits' shape; use the "
            "softmax forms"
        )
    return domains.pop()


__all__ = ["CompoundLoss", "create_loss", "loss_domain"]
