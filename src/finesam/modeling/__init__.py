"""Model components, one file each; decoders declare what they accept and return."""

from .decoder_api import (
    HQ_OUTPUTS,
    CorrectionState,
    DecoderCapabilities,
    DecoderOutput,
    OutputMode,
)
from .features import ImageFeatures
from .high_res_head import HighResHead
from .hq_decoder import HQMaskDecoder
from .hq_token import HQTokenFusion
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .object_embedder import ObjectEmbedder
from .pi_decoder import PiMaskDecoder
from .pi_interactor import PreciseInteractor
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

__all__ = [
    "HQ_OUTPUTS",
    "CorrectionState",
    "DecoderCapabilities",
    "DecoderOutput",
    "HQMaskDecoder",
    "HQTokenFusion",
    "HighResHead",
    "ImageEncoderViT",
    "ImageFeatures",
    "MaskDecoder",
    "ObjectEmbedder",
    "OutputMode",
    "PiMaskDecoder",
    "PreciseInteractor",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TwoWayTransformer",
]
