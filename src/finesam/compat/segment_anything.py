"""``segment_anything``'s public names: ``from finesam.compat.segment_anything import ...``.

``sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")`` returns a :class:`~finesam.Sam`;
``vit_t`` is MobileSAM (as in the MobileSAM package).
"""

from ..predict.automatic_mask_generator import AutomaticMaskGenerator as SamAutomaticMaskGenerator
from ..predict.predictor import SamPredictor
from ..registry import SAM_PACKAGE
from .registry import official_registry

sam_model_registry = official_registry(SAM_PACKAGE)
build_sam_vit_h = sam_model_registry["vit_h"]
build_sam_vit_l = sam_model_registry["vit_l"]
build_sam_vit_b = sam_model_registry["vit_b"]
build_sam = build_sam_vit_h

__all__ = [
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "sam_model_registry",
]
