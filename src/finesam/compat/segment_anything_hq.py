"""``segment_anything_hq``'s public names: ``from finesam.compat.segment_anything_hq import ...``.

``sam_model_registry`` maps ``vit_b``/``vit_l``/``vit_h``/``default`` to HQ-SAM and ``vit_tiny``
to Light HQ-SAM; ``sam_model_registry_baseline`` (``segment_anything_hq.build_sam_baseline``)
maps them to SAM and ``vit_tiny`` to MobileSAM. ``SamPredictor.predict`` and
``SamAutomaticMaskGenerator`` take ``hq_token_only`` as the official ones do.
"""

from ..predict.automatic_mask_generator import AutomaticMaskGenerator as SamAutomaticMaskGenerator
from ..predict.predictor import SamPredictor
from ..registry import HQ_BASELINE, HQ_PACKAGE
from .registry import official_registry

sam_model_registry = official_registry(HQ_PACKAGE)
sam_model_registry_baseline = official_registry(HQ_BASELINE)
build_sam_vit_h = sam_model_registry["vit_h"]
build_sam_vit_l = sam_model_registry["vit_l"]
build_sam_vit_b = sam_model_registry["vit_b"]
build_sam_vit_t = sam_model_registry["vit_tiny"]
build_sam = build_sam_vit_h

__all__ = [
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
    "sam_model_registry_baseline",
]
