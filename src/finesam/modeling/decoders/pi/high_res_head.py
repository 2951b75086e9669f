"""Pi-SAM's high-resolution head: the Object Embedder on the HQ-fused feature, transposed-conv
upsampling to 1024x1024 plus an RGB embedding of the input image, and a convolutional head
with one logit map."""

from __future__ import annotations

import torch
from torch import nn

from ....errors import InvalidInputError
from ....ops.inference import eager_inference
from ...common import LayerNorm2d
from ...contracts.decoder_api import broadcast_to_prompts, hypernetwork_product
from ...contracts.features import ImageFeatures
from .object_embedder import OBJECT_DIM, ObjectEmbedder

# The part's modules, named as the official keys under ``mask_decoder.``.
HIGH_RES_MODULES = ("embedding_act", "mask_aspp", "output_upscaling_2", "out_act", "rgb_embed")


def rgb_embedding() -> nn.Sequential:
    """(B, 3, 1024, 1024) normalised padded image -> (B, 8, 1024, 1024); no activation, as trained."""
    return nn.Sequential(nn.Conv2d(3, 8, kernel_size=1), nn.Conv2d(8, 8, kernel_size=3, padding=1))


class HighResHead(nn.Module):
    """``embedding_act`` + ``mask_aspp`` (Object Embedder) at 256x256, then ``output_upscaling_2``
    and ``out_act`` at 1024x1024 with ``rgb_embed`` of the image added."""

    def __init__(self, dim: int = OBJECT_DIM, rgb_embed: nn.Module | None = None) -> None:
        super().__init__()
        self.embedding_act = nn.Sequential(LayerNorm2d(dim), nn.Conv2d(dim, dim, 3, padding=1), nn.GELU())
        self.mask_aspp = ObjectEmbedder(dim)
        self.output_upscaling_2 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        )
        self.out_act = nn.Sequential(
            LayerNorm2d(dim // 4),
            nn.Conv2d(dim // 4, dim // 4, 3, padding=1),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, 1, 3, padding=1),
        )
        self.rgb_embed = rgb_embed if rgb_embed is not None else rgb_embedding()

    def object_embedding(self, fused: torch.Tensor, hyper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HQ-fused feature (B, 32, 256, 256) and HQ hypernetwork (B, 1, 32) -> stage-1 logits
        (B, 1, 256, 256) and the object embedding (B, 32, 256, 256)."""
        feature = self.embedding_act(fused)
        low_res = hypernetwork_product(hyper, feature)
        return low_res, self.mask_aspp(feature, low_res)

    def rgb(self, features: ImageFeatures) -> torch.Tensor:
        """RGB embedding of the image (B_img, 8, 1024, 1024), computed once per image."""
        if features.image is None:
            raise InvalidInputError("Pi-SAM needs the preprocessed image in ImageFeatures.image (use Sam.encode_image)")
        def embed() -> torch.Tensor:
            image = features.image.to(self.rgb_embed[0].weight.dtype)
            if not eager_inference():
                return self.rgb_embed(image)
            # Inference channels-last: oneDNN's 3- and 8-channel convolutions at 1024x1024 run 3x
            # faster on NHWC maps, and it is the layout the head adds the embedding in.
            return self.rgb_embed(image.contiguous(memory_format=torch.channels_last))

        return features.derive_once(self, "rgb", embed)

    def logits(self, object_embedding: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 32, 256, 256) object embedding + (1 or B, 8, 1024, 1024) RGB -> (B, 1, 1024, 1024) logits."""
        upscaled = self.output_upscaling_2(object_embedding)
        rgb = broadcast_to_prompts(rgb, upscaled.shape[0])
        # In inference the fresh 1024x1024 map takes the RGB embedding in place (both channels-last).
        return self.out_act(upscaled.add_(rgb) if eager_inference() else upscaled + rgb)
