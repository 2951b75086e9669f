"""``segment_anything_hq``'s public names: ``from finesam.compat.segment_anything_hq import ...``.

``sam_model_registry`` maps ``vit_b``/``vit_l``/``vit_h``/``default`` to HQ-SAM and ``vit_tiny``
to Light HQ-SAM (builders that freeze all but the HQ modules, as the official ones);
``sam_model_registry_baseline`` (``segment_anything_hq.build_sam_baseline``) maps them to SAM and
``vit_tiny`` to MobileSAM. ``SamPredictor.predict`` and ``SamAutomaticMaskGenerator`` take
``hq_token_only`` as the official ones do. The official submodules are here too: ``.build_sam``,
``.build_sam_baseline``, ``.modeling``, ``.utils.transforms``, ``.utils.amg``, ``.utils.onnx``.
"""

from ...predict.automatic_mask_generator import AutomaticMaskGenerator as SamAutomaticMaskGenerator
from ...predict.predictor import SamPredictor
from .build_sam import build_sam, build_sam_vit_b, build_sam_vit_h, build_sam_vit_l, build_sam_vit_t, sam_model_registry
from .build_sam_baseline import sam_model_registry_baseline

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
