"""``segment_anything_hq.build_sam_baseline``: SAM (``vit_b``/``vit_l``/``vit_h``/``default``)
and MobileSAM (``vit_tiny``), nothing frozen, as the official baseline builders."""

from ...registry import HQ_BASELINE
from ..registry import official_registry

sam_model_registry_baseline = official_registry(HQ_BASELINE)
build_sam_vit_h = sam_model_registry_baseline["vit_h"]
build_sam_vit_l = sam_model_registry_baseline["vit_l"]
build_sam_vit_b = sam_model_registry_baseline["vit_b"]
build_sam_vit_t = sam_model_registry_baseline["vit_tiny"]
build_sam = build_sam_vit_h

__all__ = ["build_sam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_t", "sam_model_registry_baseline"]
