"""The base of every loss module: options validated once, tensors kept as buffers, the function called."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from .._core.errors import SegLossError, expected, unknown_option
from .._core.options import Options, keyword_options
from .._core.pixel_weights import pixel_weights
from .._core.registry import domain_names, loss_name
from ..schedules import check_step


def _domain_names(module: type) -> Optional[Tuple[str, str]]:
    """The registered softmax and binary names of a loss module's loss, for the hints of unknown options."""
    name = loss_name(module)
    return None if name is None else domain_names(name)


class LossModule(nn.Module):
    """``nn.Module`` form of a pure loss function.

    Subclasses (made by :func:`module_for`) set ``function`` (the pure loss), ``options_type`` (its
    :class:`~seglosses._core.options.Options` dataclass) and ``implementation`` (the loss on checked
    options, which the function calls too: ``implementation(logits, target, options)``). ``__init__``
    takes the function's keyword options, fills in its defaults and checks them once, so a bad or
    unknown option fails at construction with a :class:`SegLossError`. Tensor-valued options (class
    weights, α) become buffers that follow ``.to(device)`` and ``state_dict``. ``forward(logits, target)``
    calls the implementation with the checked options and the current buffers.
    """

    function: ClassVar[Callable[..., Tensor]]
    options_type: ClassVar[Type[Options]]
    implementation: ClassVar[Callable[..., Tensor]]
    #: the keyword inputs this loss takes as a term of a compound, besides ``(logits, target)``: name ->
    #: whether it is required (the embedding losses' ``embeddings``, the surface losses' ``dist_maps``)
    term_inputs: ClassVar[Dict[str, bool]] = {}

    def __init__(self, **options: Any) -> None:
        super().__init__()
        known = keyword_options(type(self).function)
        for name in options:
            if name not in known:
                raise unknown_option(type(self).__name__, name, known, names=_domain_names(type(self)))
        missing = [name for name, p in known.items() if p.default is p.empty and name not in options]
        if missing:
            raise SegLossError(
                f"expected {type(self).__name__} to be given {', '.join(missing)} (no default), got none: "
                f"pass {missing[0]}=..."
            )
        options = {name: options.get(name, p.default) for name, p in known.items()}
        checked = type(self).options_type(**options)
        self._tensor_options: List[str] = []
        for name, tensor in checked.tensor_fields().items():
            given = options[name]
            if isinstance(given, Tensor) and given.requires_grad:  # a buffer would drop its gradient
                raise expected(
                    f"{name} of {type(self).__name__} without requires_grad (module options are buffers, "
                    f"constants of the loss; to differentiate it, pass it to "
                    f"{type(self).function.__name__}(..., {name}=...))",
                    "a tensor that requires grad",
                )
            self.register_buffer(name, tensor.detach().clone())  # not the caller's tensor
            self._tensor_options.append(name)
        self._checked = checked.with_values(**{name: getattr(self, name) for name in self._tensor_options})

    @property
    def checked_options(self) -> Options:
        """The checked options, with the tensor options as the current buffers."""
        if not self._tensor_options:
            return self._checked
        return self._checked.with_values(**{name: getattr(self, name) for name in self._tensor_options})

    @property
    def options(self) -> Dict[str, Any]:
        """The checked options as the function's keywords, in its signature's order (tensor options as
        the current buffers): ``module(x, y)`` equals ``module.function(x, y, **module.options)``."""
        values = self.checked_options.as_dict()
        return {name: values[name] for name in keyword_options(type(self).function) if name in values}

    @property
    def reduction(self) -> str:
        return str(getattr(self._checked, "reduction", "mean"))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return type(self).implementation(logits, target, self.checked_options)

    def forward_term(self, logits: Tensor, target: Tensor, inputs: Dict[str, Tensor]) -> Tensor:
        """The loss as a term of a :class:`~seglosses.CompoundLoss`: ``inputs`` holds the compound's keyword
        inputs that :attr:`term_inputs` names (every required one is there)."""
        return self(logits, target)

    def extra_repr(self) -> str:
        return ", ".join(
            f"{k}={v.tolist()}" if k in self._tensor_options else f"{k}={v!r}"
            for k, v in self.options.items()
        )


class PixelWeightedModule(LossModule):
    """A loss module whose forward also takes a per-pixel ``weight_map`` and a ``mask`` ``(N, *S)``
    (:mod:`seglosses._core.pixel_weights`): ``forward(logits, target, weight_map=None, mask=None)``, in a
    compound ``criterion(logits, target, weight_map=w, mask=m)``. Its options carry them into the loss
    for the one call (``pixel_weights``)."""

    term_inputs = {"weight_map": False, "mask": False}

    def forward(  # type: ignore[override]
        self,
        logits: Tensor,
        target: Tensor,
        weight_map: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        return type(self).implementation(logits, target, self.weighted_options(logits, weight_map, mask))

    def weighted_options(
        self, logits: Tensor, weight_map: Optional[Tensor], mask: Optional[Tensor]
    ) -> Options:
        """The checked options carrying one call's checked ``weight_map`` and ``mask`` (if any)."""
        options = self.checked_options
        if weight_map is not None or mask is not None:
            options = options.with_values(pixel_weights=pixel_weights(logits, weight_map, mask))
        return options

    def forward_term(self, logits: Tensor, target: Tensor, inputs: Dict[str, Tensor]) -> Tensor:
        return self(logits, target, inputs.get("weight_map"), inputs.get("mask"))


class PrecomputedInputModule(PixelWeightedModule):
    """A loss module whose forward also takes an optional precomputed part of the target (the surface
    losses' ``dist_maps``, boundary IoU's ``bands``, ...) before ``weight_map`` and ``mask``.

    A subclass names that input in :attr:`precomputed_input` and defines
    ``forward(logits, target, <name>=None, weight_map=None, mask=None)`` as one call of :meth:`call`, so
    that the input keeps its name in ``help()`` and as a keyword; in a compound it is
    ``criterion(logits, target, <name>=...)``. The implementation is
    ``implementation(logits, target, precomputed, options)``.
    """

    precomputed_input: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = getattr(cls, "precomputed_input", None)
        if name is not None:
            cls.term_inputs = {name: False, **PixelWeightedModule.term_inputs}

    def call(
        self,
        logits: Tensor,
        target: Tensor,
        precomputed: Optional[Tensor],
        weight_map: Optional[Tensor],
        mask: Optional[Tensor],
    ) -> Tensor:
        """The loss on one call's inputs (what ``forward`` does)."""
        options = self.weighted_options(logits, weight_map, mask)
        return type(self).implementation(logits, target, precomputed, options)

    def forward_term(self, logits: Tensor, target: Tensor, inputs: Dict[str, Tensor]) -> Tensor:
        return self.call(
            logits, target, inputs.get(self.precomputed_input), inputs.get("weight_map"), inputs.get("mask")
        )


def module_for(
    name: str,
    function: Callable[..., Tensor],
    options_type: Type[Options],
    implementation: Callable[..., Tensor],
    base: Type[LossModule] = LossModule,
) -> Type[LossModule]:
    """Make the ``nn.Module`` class of a loss function; its constructor takes the function's options.

    ``options_type`` checks them; ``implementation(logits, target, options)`` computes the loss from
    checked options (the function is ``implementation(logits, target, options_type(**keywords))``).
    ``base`` may override ``forward`` (e.g. to take a third input); it must derive from LossModule.
    """
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += list(keyword_options(function).values())
    namespace = {
        "function": staticmethod(function),
        "options_type": options_type,
        "implementation": staticmethod(implementation),
        "__doc__": (inspect.getdoc(function) or "")
        + f"\n\nThe module form of :func:`{function.__name__}`; the constructor checks its options once.",
        "__module__": function.__module__,
        "__qualname__": name,
    }

    def __init__(self: LossModule, **options: Any) -> None:
        LossModule.__init__(self, **options)

    __init__.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    namespace["__init__"] = __init__
    return type(name, (base,), namespace)


def module_pair(
    name: str,
    softmax: Callable[..., Tensor],
    binary: Callable[..., Tensor],
    options_type: Type[Options],
    implementation: Callable[..., Tensor],
    base: Type[LossModule] = LossModule,
) -> Tuple[Type[LossModule], Type[LossModule]]:
    """The module classes ``{name}Loss`` and ``Binary{name}Loss`` of a loss with a softmax and a sigmoid
    form, both computed by ``implementation(..., options, binary=False / True)``."""
    return (
        module_for(
            f"{name}Loss", softmax, options_type, functools.partial(implementation, binary=False), base
        ),
        module_for(
            f"Binary{name}Loss", binary, options_type, functools.partial(implementation, binary=True), base
        ),
    )


__all__ = [
    "LossModule",
    "PixelWeightedModule",
    "PrecomputedInputModule",
    "SegLossError",
    "keyword_options",
    "module_for",
    "module_pair",
]


class ScheduledLossModule(LossModule):
    """A :class:`LossModule` whose function takes a ``*_schedule`` option and the ``step`` it reads.

    :meth:`set_step` sets the step (an epoch or iteration count: explicit, never counted from forwards).
    When a schedule is set, the step is part of :meth:`state_dict` (key ``step``), so a resumed run
    continues where it stopped.
    """

    @property
    def step(self) -> float:
        return float(getattr(self._checked, "step", 0.0))

    def set_step(self, step: float) -> None:
        """Set the step the schedules read (``>= 0``)."""
        self._checked = self._checked.with_values(step=check_step(step))

    def has_schedule(self) -> bool:
        return any(k.endswith("_schedule") and v is not None for k, v in self._checked.as_dict().items())

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        save_step(self, destination, prefix)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        load_step(self, state_dict, prefix, args, super()._load_from_state_dict)


def save_step(module: Any, destination: Any, prefix: str) -> None:
    """Add the step of a scheduled module to its state dict (nothing for an unscheduled one)."""
    if module.has_schedule():
        destination[prefix + "step"] = torch.tensor(module.step, dtype=torch.float64)


def load_step(
    module: Any, state_dict: Any, prefix: str, args: Tuple[Any, ...], load: Callable[..., None]
) -> None:
    """Restore the step of a scheduled module, then load the rest with ``load`` (the usual loader)."""
    local_metadata, strict, missing_keys, unexpected_keys, error_msgs = args
    key = prefix + "step"
    scheduled = module.has_schedule()
    if scheduled and key in state_dict:
        module.set_step(float(state_dict[key]))
    elif scheduled and strict:
        missing_keys.append(key)
    load(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
    if scheduled and key in unexpected_keys:
        unexpected_keys.remove(key)


class ScheduledPixelWeightedModule(PixelWeightedModule, ScheduledLossModule):
    """A :class:`ScheduledLossModule` whose forward also takes ``weight_map`` and ``mask``."""
