"""Every pure loss function of seglosses: ``import seglosses.functional as SF``.

The functions take ``(logits, target)`` and keyword-only options; see :mod:`seglosses._core.reduction`
for what ``reduction`` returns and what ``mean`` divides by.
"""

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
from .losses.cross_entropy import binary_cross_entropy_loss, cross_entropy_loss
from .losses.embedding import center_loss, contrastive_loss, pixel_info_nce_loss, triplet_loss
from .losses.focal import binary_focal_loss, focal_loss
from .losses.overlap import (
    binary_dice_loss,
    binary_focal_tversky_loss,
    binary_generalized_dice_loss,
    binary_jaccard_loss,
    binary_tversky_loss,
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    jaccard_loss,
    tversky_loss,
)

__all__ = [
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
    "pixel_info_nce_loss",
    "triplet_loss",
    "tversky_loss",
]
