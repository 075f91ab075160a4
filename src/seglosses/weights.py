"""Class-weight estimators from class pixel counts, and a streaming class-frequency counter (SPEC §1).

With ``N_c`` the pixel count of class c, ``N = Σ N_c``, ``f_c = N_c / N`` and ``C`` classes:

* ``inverse_frequency``: ``1 / f_c``
* ``balanced``: ``N / (C N_c)``
* ``median_frequency``: ``median(f) / f_c``, the median over classes with ``N_c > 0`` (the mean of the two
  middle values for an even count)
* ``effective_number``: ``(1 - β) / (1 - β^N_c)`` (Cui et al. 2019), ``β ∈ [0, 1)``

A class with ``N_c = 0`` gets weight 0 and a warning, never ``inf``. ``normalize=True`` rescales the
weights so that they sum to ``C``.
"""

from __future__ import annotations

import warnings
from typing import Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._core.errors import expected
from ._core.options import check_bool, check_choice, check_ignore_index, check_int, check_number
from ._core.state import Accumulator, PerClass
from ._core.targets import check_class_indices
from .distributed import ProcessGroup

WeightMethod = Literal["inverse_frequency", "balanced", "median_frequency", "effective_number"]
METHODS: Tuple[WeightMethod, ...] = ("inverse_frequency", "balanced", "median_frequency", "effective_number")


def _as_counts(counts: Union[Tensor, Sequence[float]]) -> Tensor:
    try:
        tensor = torch.as_tensor(counts)
    except (TypeError, ValueError, RuntimeError) as error:
        raise expected("counts as a sequence or 1-D tensor of numbers", repr(counts)) from error
    if tensor.ndim != 1 or tensor.numel() == 0 or tensor.dtype == torch.bool or tensor.is_complex():
        raise expected(
            "counts of shape (C,) with C >= 1 real values", f"shape {tuple(tensor.shape)}, {tensor.dtype}"
        )
    tensor = tensor.to(torch.float64)
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise expected("finite, non-negative counts", tensor.tolist())
    return tensor


def class_weights(
    counts: Union[Tensor, Sequence[float]],
    *,
    method: WeightMethod = "inverse_frequency",
    beta: float = 0.9999,
    normalize: bool = True,
) -> Tensor:
    """Class weights ``(C,)`` (float32) from class pixel counts ``(C,)`` by one of the methods above.

    ``beta`` is accepted by every method and used by ``effective_number``.

    Raises:
        SegLossError: counts not 1-D, negative or non-finite, all zero; unknown method; ``beta`` outside
            ``[0, 1)``.
    """
    check_choice("method", method, METHODS)
    beta = check_number("beta", beta, low=0.0, high=1.0, high_open=True)
    check_bool("normalize", normalize)
    n_c = _as_counts(counts)
    present = n_c > 0
    if not bool(present.any()):
        raise expected("at least one class with a non-zero count", n_c.tolist())
    if not bool(present.all()):
        absent = torch.nonzero(~present).flatten().tolist()
        warnings.warn(f"classes {absent} have no pixels; they get weight 0", stacklevel=2)
    safe = torch.where(present, n_c, 1.0)
    freq = safe / n_c.sum()
    if method == "inverse_frequency":
        w = 1.0 / freq
    elif method == "balanced":
        w = n_c.sum() / (n_c.numel() * safe)
    elif method == "median_frequency":
        w = torch.quantile(freq[present], 0.5) / freq  # quantile interpolates: mean of the middle two
    else:
        w = (1.0 - beta) / -torch.expm1(safe * torch.log(torch.tensor(beta, dtype=torch.float64)))
    w = torch.where(present, w, 0.0)
    if normalize:
        w = w * (n_c.numel() / w.sum())
    return w.to(torch.float32)


class ClassFrequency(Accumulator):
    """Streaming class pixel counter: ``update(target)`` per batch, ``compute()`` -> int64 counts ``(C,)``.

    Targets are integer class maps of any shape; ``ignore_index`` pixels are skipped, any other value
    outside ``[0, C)`` raises. The counts are an int64 statistic of an
    :class:`~seglosses._core.state.Accumulator`: ``state_dict`` round-trips them, ``reset()`` zeros
    them, and ``load_state_dict`` checks what it loads (counts of another class count, NaN, ``±inf``,
    negative or fractional counts raise :class:`~seglosses.SegLossError` naming ``'counts'`` and leave
    the counter as it was). In a process
    group every ``update`` sums the batch's counts over the processes (``sync=True``, the default).

    Example:
        >>> counter = ClassFrequency(3, ignore_index=255)
        >>> counter.update(torch.tensor([[0, 0, 1], [2, 255, 0]]))
        >>> counter.compute().tolist()
        [3, 1, 1]
        >>> class_weights(counter.compute(), method="balanced", normalize=False).tolist()
        [0.5555555820465088, 1.6666666269302368, 1.6666666269302368]
    """

    counts: Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: Optional[int] = None,
        sync: bool = True,
        process_group: Optional[ProcessGroup] = None,
    ) -> None:
        super().__init__(check_int("num_classes", num_classes), sync=sync, process_group=process_group)
        self.ignore_index = check_ignore_index(ignore_index)
        self.add_state("counts", (PerClass(),), dtype=torch.int64, kind="count")

    def update(self, target: Tensor) -> None:
        """Add the class pixel counts of one batch of integer targets."""
        if (
            not isinstance(target, Tensor)
            or target.is_floating_point()
            or target.is_complex()
            or target.dtype == torch.bool
        ):
            got = target.dtype if isinstance(target, Tensor) else type(target).__name__
            raise expected("an integer target tensor of class indices", got)
        values = target.reshape(-1)
        if self.ignore_index is not None:
            values = values[values != self.ignore_index]
        check_class_indices(values, self.classes, "target")
        (counts,) = self.synced(torch.bincount(values.long(), minlength=self.classes).to(self.counts.device))
        self.counts += counts

    def compute(self) -> Tensor:
        """The accumulated counts ``(C,)``, int64."""
        return self.counts.clone()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"

    def forward(self, target: Tensor) -> Tensor:  # pragma: no cover - alias so the module is callable
        self.update(target)
        return self.compute()


__all__ = ["METHODS", "ClassFrequency", "class_weights"]
