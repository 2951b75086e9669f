"""``segment_anything.build_sam``: the registry and builders (``vit_t`` is MobileSAM, as in the
MobileSAM package)."""

from ...registry import SAM_PACKAGE
from ..registry import official_registry

sam_model_registry = official_registry(SAM_PACKAGE)
build_sam_vit_h = sam_model_registry["vit_h"]
build_sam_vit_l = sam_model_registry["vit_l"]
build_sam_vit_b = sam_model_registry["vit_b"]
build_sam_vit_t = sam_model_registry["vit_t"]
build_sam = build_sam_vit_h

__all__ = ["build_sam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_t", "sam_model_registry"]
