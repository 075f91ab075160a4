"""seglosses: loss functions for image segmentation, correct on every input and fast.

Every loss is a pure function in :mod:`seglosses.functional` and an ``nn.Module`` here; compound losses
come from spec strings with :func:`create_loss`.
"""

from ._core.backend import backend, get_backend, set_backend
from ._core.deferred import flush_input_checks
from ._core.errors import SegLossError
from ._core.registry import list_losses
from ._core.targets import input_checks, set_input_checks
from .adaptive.losses import (
    AdaptiveFocalLoss,
    AdaptiveSmoothingCELoss,
    ClassBalancedFocalLoss,
    DifficultyCELoss,
    FrequencyFocalLoss,
)
from .functional import *  # noqa: F401,F403  (the pure functions, also at top level)
from .functional import __all__ as _functional_all
from .losses.base import LossModule
from .losses.boundary import (
    ActiveContourLoss,
    BinaryActiveContourLoss,
    BinaryBoundaryIoULoss,
    BinaryBoundaryLoss,
    BinaryHausdorffDTLoss,
    BoundaryBandTransform,
    BoundaryIoULoss,
    BoundaryLoss,
    DistanceMapTransform,
    HausdorffDTLoss,
    target_boundary_bands,
    target_distance_maps,
)
from .losses.cbdice import BinaryCbDiceLoss, CbDiceLoss, CbDiceMapTransform, target_cbdice_maps
from .losses.cldice import BinaryClDiceLoss, BinaryDiceClDiceLoss, ClDiceLoss, DiceClDiceLoss
from .losses.combo import BinaryComboLoss, ComboLoss
from .losses.compound import CompoundLoss, create_loss
from .losses.cross_entropy import BinaryCrossEntropyLoss, CrossEntropyLoss
from .losses.deep_supervision import DeepSupervision
from .losses.distance_weighted import (
    BinaryBoundaryDoULoss,
    BinaryDistanceCELoss,
    BinaryRegionWiseLoss,
    BoundaryDoULoss,
    DistanceCELoss,
    RegionWiseLoss,
    boundary_penalty_maps,
    rectified_region_maps,
)
from .losses.embedding import CenterLoss, ContrastiveLoss, PixelInfoNCELoss, TripletLoss
from .losses.focal import BinaryFocalLoss, FocalLoss
from .losses.hard_pixels import OHEMCELoss, TopKCELoss
from .losses.hausdorff_er import (
    BinaryHausdorffERLoss,
    BinaryLogHausdorffDTLoss,
    HausdorffERLoss,
    LogHausdorffDTLoss,
)
from .losses.lovasz import BinaryLovaszLoss, LovaszLoss
from .losses.marginal import MarginalCELoss, MarginalDiceLoss
from .losses.overlap import (
    BinaryDiceLoss,
    BinaryFocalTverskyLoss,
    BinaryGeneralizedDiceLoss,
    BinaryJaccardLoss,
    BinaryLogCoshDiceLoss,
    BinaryMCCLoss,
    BinaryPenaltyGDLLoss,
    BinaryTverskyLoss,
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    LogCoshDiceLoss,
    MCCLoss,
    PenaltyGDLLoss,
    TverskyLoss,
)
from .losses.sensitivity import BinarySensitivitySpecificityLoss, SensitivitySpecificityLoss
from .losses.skeleton_recall import (
    BinarySkeletonRecallLoss,
    SkeletonRecallLoss,
    SkeletonTransform,
    target_skeletons,
)
from .losses.unified_focal import BinaryUnifiedFocalLoss, UnifiedFocalLoss
from .losses.wasserstein import GWDLoss
from .ops.distance import distance_transform, signed_distance_map
from .ops.skeleton import skeletonize
from .schedules import Schedule, as_schedule
from .weights import ClassFrequency, class_weights

__version__ = "0.1.0"

__all__ = [
    "BinaryCbDiceLoss",
    "CbDiceLoss",
    "CbDiceMapTransform",
    "target_cbdice_maps",
    "BinaryClDiceLoss",
    "BinaryDiceClDiceLoss",
    "ClDiceLoss",
    "DiceClDiceLoss",
    "BinarySkeletonRecallLoss",
    "SkeletonRecallLoss",
    "SkeletonTransform",
    "skeletonize",
    "target_skeletons",
    "BinaryBoundaryDoULoss",
    "BinaryDistanceCELoss",
    "BinaryHausdorffERLoss",
    "BinaryLogHausdorffDTLoss",
    "BinaryRegionWiseLoss",
    "BoundaryDoULoss",
    "DistanceCELoss",
    "HausdorffERLoss",
    "LogHausdorffDTLoss",
    "RegionWiseLoss",
    "boundary_penalty_maps",
    "rectified_region_maps",
    "BinaryComboLoss",
    "BinarySensitivitySpecificityLoss",
    "BinaryUnifiedFocalLoss",
    "ComboLoss",
    "GWDLoss",
    "SensitivitySpecificityLoss",
    "UnifiedFocalLoss",
    "ActiveContourLoss",
    "AdaptiveFocalLoss",
    "AdaptiveSmoothingCELoss",
    "CenterLoss",
    "ClassBalancedFocalLoss",
    "ContrastiveLoss",
    "DifficultyCELoss",
    "FrequencyFocalLoss",
    "PixelInfoNCELoss",
    "Schedule",
    "TripletLoss",
    "as_schedule",
    "BinaryActiveContourLoss",
    "BinaryBoundaryIoULoss",
    "BinaryBoundaryLoss",
    "BinaryHausdorffDTLoss",
    "BoundaryBandTransform",
    "BoundaryIoULoss",
    "BoundaryLoss",
    "DistanceMapTransform",
    "HausdorffDTLoss",
    "BinaryCrossEntropyLoss",
    "BinaryDiceLoss",
    "BinaryFocalLoss",
    "BinaryFocalTverskyLoss",
    "BinaryGeneralizedDiceLoss",
    "BinaryJaccardLoss",
    "BinaryLovaszLoss",
    "BinaryLogCoshDiceLoss",
    "BinaryMCCLoss",
    "BinaryPenaltyGDLLoss",
    "BinaryTverskyLoss",
    "ClassFrequency",
    "CompoundLoss",
    "CrossEntropyLoss",
    "DeepSupervision",
    "DiceLoss",
    "FocalLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "JaccardLoss",
    "LovaszLoss",
    "OHEMCELoss",
    "LogCoshDiceLoss",
    "MCCLoss",
    "PenaltyGDLLoss",
    "MarginalCELoss",
    "MarginalDiceLoss",
    "LossModule",
    "SegLossError",
    "TopKCELoss",
    "TverskyLoss",
    "class_weights",
    "create_loss",
    "distance_transform",
    "flush_input_checks",
    "backend",
    "get_backend",
    "input_checks",
    "list_losses",
    "set_backend",
    "set_input_checks",
    "signed_distance_map",
    "target_boundary_bands",
    "target_distance_maps",
    *_functional_all,
]
