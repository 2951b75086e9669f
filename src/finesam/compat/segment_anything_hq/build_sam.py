"""``segment_anything_hq.build_sam``: HQ-SAM (``vit_b``/``vit_l``/``vit_h``/``default``) and
Light HQ-SAM (``vit_tiny``). As the official builders, they leave only the HQ modules trainable
(``requires_grad=False`` elsewhere: 25 parameter tensors learn), so official training loops train
the same set; the files load strictly."""

from ...registry import HQ_PACKAGE
from ..registry import official_registry

sam_model_registry = official_registry(HQ_PACKAGE, freeze=True)
build_sam_vit_h = sam_model_registry["vit_h"]
build_sam_vit_l = sam_model_registry["vit_l"]
build_sam_vit_b = sam_model_registry["vit_b"]
build_sam_vit_t = sam_model_registry["vit_tiny"]
build_sam = build_sam_vit_h

__all__ = ["build_sam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_t", "sam_model_registry"]
