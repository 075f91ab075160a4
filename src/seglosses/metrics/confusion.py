"""Confusion-matrix metrics: per-class Dice, IoU, precision and recall from one accumulated statistic.

The state is a ``(C, C)`` int64 matrix ``M[t, p]`` of pixel counts (rows: target class, columns:
predicted class) over the valid pixels of every batch seen, so that processes can sum it with one
all-reduce. From it, per class ``c``: ``TP = M[c, c]``, ``FP = Σ_t M[t, c] - TP``, ``FN = Σ_p M[c, p] - TP``,
and

* Dice ``2 TP / (2 TP + FP + FN)``, IoU ``TP / (TP + FP + FN)``,
* precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``.

**Absent classes.** A ratio whose denominator is 0 scores 1.0 when the class is absent from both target
and prediction (nothing to get wrong, the losses' convention) and 0.0 otherwise (e.g. the precision of a
class present in the target but never predicted). The macro means average over the classes present in
the target or the prediction, so classes never seen do not inflate them; never NaN.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .._core.errors import expected
from .._core.numerics import safe_divide
from .._core.options import check_ignore_index, check_int
from .._core.state import Accumulator, PerClass
from .._core.targets import check_class_indices
from ..distributed import ProcessGroup

METRICS = ("dice", "iou", "precision", "recall")


class ConfusionMatrix(Accumulator):
    """Accumulates a ``(C, C)`` confusion matrix of hard predictions and computes per-class metrics.

    ``update(prediction, target)`` takes logits ``(N, C, *S)`` (argmax over C) or predicted labels
    ``(N, *S)``, and integer targets ``(N, *S)``; ``ignore_index`` pixels of the target are skipped.
    Logits with a NaN or ``+inf``, or a pixel whose logits are all ``-inf``, raise :class:`SegLossError`
    (always, like out-of-range labels: the matrix has no place for them).
    ``compute()`` returns per-class tensors ``(C,)`` for ``dice``, ``iou``, ``precision``, ``recall`` and
    ``support`` (target pixels per class), and their macro means under ``mean_<metric>``.

    In a ``torch.distributed`` process group every ``update`` sums the batch's contribution over the
    processes (``sync=True``, the default; every rank must then call ``update`` together), so every
    process holds the same state; ``process_group`` picks the group. The matrix is an int64 statistic of
    an :class:`~seglosses._core.state.Accumulator` (``reset()``, checked ``load_state_dict``).

    Example:
        >>> metric = ConfusionMatrix(2)
        >>> metric.update(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))
        >>> metric.compute()["dice"].tolist()  # class 0: 2·1 / (2·1 + 0 + 1); class 1: 2·2 / (2·2 + 1 + 0)
        [0.6666666865348816, 0.800000011920929]
    """

    matrix: Tensor

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
        self.add_state("matrix", (PerClass(), PerClass()), dtype=torch.int64, kind="count")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add one batch: logits ``(N, C, *S)`` or labels ``(N, *S)``, and targets ``(N, *S)``."""
        labels = self._predicted_labels(prediction, target)
        target = _integer(target, "target")
        keep = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            info = torch.iinfo(target.dtype)
            if info.min <= self.ignore_index <= info.max:
                keep = target != self.ignore_index
        truth, predicted = target[keep].long(), labels[keep].long()
        c = self.classes
        check_class_indices(truth, c, "target")
        check_class_indices(predicted, c, "predicted")
        (counts,) = self.synced(torch.bincount(truth * c + predicted, minlength=c * c).to(self.matrix.device))
        self.matrix += counts.view(c, c)

    def _predicted_labels(self, prediction: Tensor, target: Tensor) -> Tensor:
        if not isinstance(prediction, Tensor) or not isinstance(target, Tensor):
            raise expected(
                "prediction and target tensors", f"{type(prediction).__name__}, {type(target).__name__}"
            )
        if prediction.is_floating_point():
            if prediction.ndim != target.ndim + 1 or prediction.shape[1] != self.num_classes:
                raise expected(
                    f"logits (N, C = {self.num_classes}, *S) for a target of shape {tuple(target.shape)}",
                    f"shape {tuple(prediction.shape)}",
                )
            _check_finite(prediction)
            prediction = prediction.argmax(1)
        prediction = _integer(prediction, "prediction")
        if prediction.shape != target.shape:
            raise expected(
                f"predicted labels of the target's shape {tuple(target.shape)}", tuple(prediction.shape)
            )
        return prediction

    def compute(self) -> Dict[str, Tensor]:
        """Per-class metrics ``(C,)`` (float32) and their macro means (see the module docstring)."""
        m = self.matrix.to(torch.float64)
        tp = m.diagonal()
        fp = m.sum(0) - tp
        fn = m.sum(1) - tp
        absent = (tp + fp + fn) == 0
        empty = absent.to(m.dtype)  # 1.0 for classes absent from both, 0.0 otherwise

        def ratio(num: Tensor, den: Tensor) -> Tensor:
            return torch.where(den == 0, empty, safe_divide(num, den, 0.0))

        per_class = {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
        }
        seen = ~absent
        result = {name: value.float() for name, value in per_class.items()}
        for name, value in per_class.items():
            result[f"mean_{name}"] = (
                value[seen].mean() if bool(seen.any()) else value.new_tensor(1.0)
            ).float()
        result["support"] = self.matrix.sum(1)
        return result

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"


def _check_finite(logits: Tensor) -> None:
    """Raise for logits that name no class: NaN or +inf (argmax would pick class 0 for a NaN, silently),
    or a pixel whose logits are all -inf (no distribution). Run always, like the class-index checks of
    :meth:`ConfusionMatrix.update`: a metric has no non-finite value to return instead."""
    if logits.numel() == 0:
        return
    nan, posinf, dead = torch.stack(
        [torch.isnan(logits).sum(), torch.isposinf(logits).sum(), torch.isneginf(logits).all(1).sum()]
    ).tolist()  # one host sync
    if nan or posinf or dead:
        parts = [f"{nan} NaN"] * bool(nan) + [f"{posinf} +inf"] * bool(posinf)
        parts += [f"{dead} pixels with every logit -inf"] * bool(dead)
        raise expected("finite logits", " and ".join(parts))


def _integer(tensor: Tensor, name: str) -> Tensor:
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise expected(f"integer {name} labels", f"dtype {tensor.dtype}")
    return tensor  # an empty batch (an empty distributed shard) adds nothing
