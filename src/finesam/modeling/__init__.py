"""Model components, one file each, in folders by role (encoders/, decoders/ by paper, contracts/);
decoders declare what they accept and return."""

from .contracts.decoder_api import (
    HQ_OUTPUTS,
    CorrectionState,
    DecoderCapabilities,
    DecoderOutput,
    OutputMode,
)
from .contracts.features import ImageFeatures
from .decoders.hq.hq_decoder import HQMaskDecoder
from .decoders.hq.hq_token import HQTokenFusion
from .decoders.pi.high_res_head import HighResHead
from .decoders.pi.object_embedder import ObjectEmbedder
from .decoders.pi.pi_decoder import PiMaskDecoder
from .decoders.pi.pi_interactor import PreciseInteractor
from .decoders.sam.mask_decoder import MaskDecoder
from .decoders.sam.transformer import TwoWayTransformer
from .encoders.image_encoder import ImageEncoderViT
from .encoders.tiny_vit import TinyViT
from .prompt_encoder import PromptEncoder
from .sam import Sam

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
