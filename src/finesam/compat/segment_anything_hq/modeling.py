"""``segment_anything_hq.modeling``: the model classes under their official names.

``MaskDecoderHQ`` is finesam's HQ decoder (SAM's decoder composed with the HQ part): it takes
the official constructor keywords, answers the official call and ``predict_masks``, and its
``state_dict()`` and attributes (``hf_token``, ``transformer``, ...) have the official names.
"""

from ...modeling import HQMaskDecoder as MaskDecoderHQ
from ...modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "MaskDecoderHQ", "PromptEncoder", "Sam", "TinyViT", "TwoWayTransformer"]
