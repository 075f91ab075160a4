"""Compound losses: weighted sums of registered losses, built from spec strings."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from torch import Tensor, nn

from .._core.errors import SegLossError
from .._core.registry import build, get_entry, parse_spec


class CompoundLoss(nn.Module):
    """``Σ_k w_k L_k(logits, target)`` over registered losses.

    After each forward, :attr:`last_terms` maps each term's label (its text in the spec) to its detached
    unweighted value, for logging. Every term must reduce to a scalar (``reduction`` ``mean`` or ``sum``).
    """

    def __init__(self, terms: Sequence[Tuple[float, str, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise SegLossError("expected at least one loss term, got none")
        self.weights: List[float] = [float(w) for w, _, _ in terms]
        self.labels: List[str] = _unique([label for _, label, _ in terms])
        self.losses = nn.ModuleList([module for _, _, module in terms])
        for label, module in zip(self.labels, self.losses):
            if getattr(module, "reduction", "mean") == "none":
                raise SegLossError(f"expected term {label!r} to reduce to a scalar, got reduction='none'")
        self.last_terms: Dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        values = [loss(logits, target) for loss in self.losses]
        self.last_terms = {label: value.detach() for label, value in zip(self.labels, values)}
        total = values[0] * self.weights[0]
        for weight, value in zip(self.weights[1:], values[1:]):
            total = total + weight * value
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{label}" for w, label in zip(self.weights, self.labels))


def _unique(labels: List[str]) -> List[str]:
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def create_loss(spec: str) -> nn.Module:
    """Build a loss from a spec string: ``create_loss("ce + 0.5*dice")``.

    A single unweighted term returns that loss's own module (``create_loss("focal(gamma=1)")`` is a
    :class:`~seglosses.FocalLoss`); anything else returns a :class:`CompoundLoss`. Unknown names, bad syntax
    and bad options raise :class:`SegLossError`, naming the position and the known loss names.
    """
    terms = parse_spec(spec)
    loss_domain(spec)  # a softmax and a binary loss cannot share one (logits, target) pair
    modules = [(weight, label, build(name, **options)) for weight, name, options, label in terms]
    if len(modules) == 1 and modules[0][0] == 1.0:
        return modules[0][2]
    return CompoundLoss(modules)


def loss_domain(spec: str) -> str:
    """The input domain (``softmax`` or ``binary``) of a spec's losses; mixing them is an error."""
    domains = {get_entry(name).domain for _, name, _, _ in parse_spec(spec)}
    if len(domains) > 1:
        raise SegLossError(f"expected losses of one input domain in {spec!r}, got {sorted(domains)}")
    return domains.pop()


__all__ = ["CompoundLoss", "create_loss", "loss_domain"]
