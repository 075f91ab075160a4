"""Every pure loss function of seglosses: ``import seglosses.functional as SF``.

The functions take ``(logits, target)`` and keyword-only options; see :mod:`seglosses._core.reduction`
for what ``reduction`` returns and what ``mean`` divides by. An unknown or missing argument is a
:class:`~seglosses.SegLossError` (with the seglosses way for a MONAI or segmentation_models_pytorch
option name), as the modules and :func:`~seglosses.create_loss` answer it, not Python's ``TypeError``.
"""

import functools
import inspect
from typing import Any, Callable, Dict, Optional, Tuple

from ._core.errors import SegLossError, unknown_option
from ._core.registry import domain_names, list_losses
from .adaptive.losses import difficulty_ce_loss
from .losses.boundary import (
    active_contour_loss,
    binary_active_contour_loss,
    binary_boundary_iou_loss,
    binary_boundary_loss,
    binary_hausdorff_dt_loss,
    boundary_iou_loss,
    boundary_loss,
    hausdorff_dt_loss,
)
from .losses.cbdice import binary_cbdice_loss, cbdice_loss
from .losses.cldice import binary_cldice_loss, binary_dice_cldice_loss, cldice_loss, dice_cldice_loss
from .losses.combo import binary_combo_loss, combo_loss
from .losses.cross_entropy import binary_cross_entropy_loss, cross_entropy_loss
from .losses.distance_weighted import (
    binary_boundary_dou_loss,
    binary_distance_ce_loss,
    binary_region_wise_loss,
    boundary_dou_loss,
    distance_ce_loss,
    region_wise_loss,
)
from .losses.embedding import center_loss, contrastive_loss, pixel_info_nce_loss, triplet_loss
from .losses.focal import binary_focal_loss, focal_loss
from .losses.hard_pixels import ohem_ce_loss, topk_ce_loss
from .losses.hausdorff_er import (
    binary_hausdorff_er_loss,
    binary_log_hausdorff_dt_loss,
    hausdorff_er_loss,
    log_hausdorff_dt_loss,
)
from .losses.lovasz import binary_lovasz_loss, lovasz_loss
from .losses.marginal import marginal_ce_loss, marginal_dice_loss
from .losses.overlap import (
    binary_dice_loss,
    binary_focal_tversky_loss,
    binary_generalized_dice_loss,
    binary_jaccard_loss,
    binary_log_cosh_dice_loss,
    binary_mcc_loss,
    binary_penalty_gdl_loss,
    binary_tversky_loss,
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    jaccard_loss,
    log_cosh_dice_loss,
    mcc_loss,
    penalty_gdl_loss,
    tversky_loss,
)
from .losses.sensitivity import binary_sensitivity_specificity_loss, sensitivity_specificity_loss
from .losses.skeleton_recall import binary_skeleton_recall_loss, skeleton_recall_loss
from .losses.unified_focal import binary_unified_focal_loss, unified_focal_loss
from .losses.wasserstein import gwdl_loss

__all__ = [
    "binary_cbdice_loss",
    "cbdice_loss",
    "binary_cldice_loss",
    "binary_dice_cldice_loss",
    "cldice_loss",
    "dice_cldice_loss",
    "binary_skeleton_recall_loss",
    "skeleton_recall_loss",
    "binary_boundary_dou_loss",
    "binary_distance_ce_loss",
    "binary_hausdorff_er_loss",
    "binary_log_hausdorff_dt_loss",
    "binary_region_wise_loss",
    "boundary_dou_loss",
    "distance_ce_loss",
    "hausdorff_er_loss",
    "log_hausdorff_dt_loss",
    "region_wise_loss",
    "binary_combo_loss",
    "binary_sensitivity_specificity_loss",
    "binary_unified_focal_loss",
    "combo_loss",
    "gwdl_loss",
    "sensitivity_specificity_loss",
    "unified_focal_loss",
    "active_contour_loss",
    "binary_active_contour_loss",
    "binary_boundary_iou_loss",
    "binary_boundary_loss",
    "binary_hausdorff_dt_loss",
    "boundary_iou_loss",
    "boundary_loss",
    "hausdorff_dt_loss",
    "binary_cross_entropy_loss",
    "binary_dice_loss",
    "binary_focal_loss",
    "binary_focal_tversky_loss",
    "binary_generalized_dice_loss",
    "binary_jaccard_loss",
    "binary_lovasz_loss",
    "binary_log_cosh_dice_loss",
    "binary_mcc_loss",
    "binary_penalty_gdl_loss",
    "binary_tversky_loss",
    "center_loss",
    "contrastive_loss",
    "cross_entropy_loss",
    "difficulty_ce_loss",
    "dice_loss",
    "focal_loss",
    "focal_tversky_loss",
    "generalized_dice_loss",
    "jaccard_loss",
    "lovasz_loss",
    "marginal_ce_loss",
    "marginal_dice_loss",
    "log_cosh_dice_loss",
    "mcc_loss",
    "penalty_gdl_loss",
    "ohem_ce_loss",
    "pixel_info_nce_loss",
    "triplet_loss",
    "topk_ce_loss",
    "tversky_loss",
]


def _registered_names(function: Callable[..., Any]) -> Optional[Tuple[str, str]]:
    """The registered softmax and binary names of the loss whose module runs ``function``, if any."""
    entries = list_losses(details=True)
    entry = next((e for e in entries if getattr(e.module, "function", None) is function), None)
    return None if entry is None else domain_names(entry.name)


def _argument_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` whose unknown or missing arguments raise a SegLossError instead of a TypeError (the
    call is checked against the signature only when it fails, so a valid call pays nothing)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except TypeError:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as error:
                options: Dict[str, inspect.Parameter] = dict(signature.parameters)
                known = [n for n, p in options.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
                unknown = [name for name in kwargs if name not in options]
                if unknown:
                    names = _registered_names(function)
                    raise unknown_option(function.__name__, unknown[0], known, names=names) from None
                given = [n for n, p in options.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
                usage = f"{function.__name__}({', '.join(given)}, *, {', '.join(known)})"
                raise SegLossError(f"expected the arguments of {usage}, got {error}") from None
            raise

    return call


for _name in __all__:
    globals()[_name] = _argument_errors(globals()[_name])
