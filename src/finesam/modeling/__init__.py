"""Model components, one file each."""

from .features import ImageFeatures
from .deform_conv import DeformableConv2d, deform_conv2d
from .hq_decoder import HQMaskDecoder
from .hr_decoder import HRMaskDecoder, HRState, ObjectEmbedder
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder, OutputMode
from .pi_interactor import PreciseInteractor
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

__all__ = [
    "DeformableConv2d",
    "HRMaskDecoder",
    "HRState",
    "ObjectEmbedder",
    "PreciseInteractor",
    "deform_conv2d",
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
