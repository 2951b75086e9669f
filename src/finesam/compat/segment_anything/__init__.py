"""``segment_anything``'s public names: ``from finesam.compat.segment_anything import ...``.

``sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")`` returns a :class:`~finesam.Sam`;
``vit_t`` is MobileSAM (as in the MobileSAM package). The official submodules are here too:
``.build_sam``, ``.modeling``, ``.utils.transforms``, ``.utils.amg``, ``.utils.onnx``.
"""

from ...predict.automatic_mask_generator import AutomaticMaskGenerator as SamAutomaticMaskGenerator
from ...predict.predictor import SamPredictor
from .build_sam import build_sam, build_sam_vit_b, build_sam_vit_h, build_sam_vit_l, build_sam_vit_t, sam_model_registry

__all__ = [
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]
