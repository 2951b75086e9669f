"""Model components, one file each."""

from .features import ImageFeatures
from .hq_decoder import HQMaskDecoder
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder, OutputMode
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

__all__ = [
    "HQMaskDecoder",
    "ImageEncoderViT",
    "ImageFeatures",
    "MaskDecoder",
    "OutputMode",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TwoWayTransformer",
]
