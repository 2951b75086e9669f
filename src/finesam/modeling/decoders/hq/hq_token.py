"""HQ-SAM's part: the HQ output token and the global-local feature fusion."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import InvalidInputError
from ....ops.activations import activate_in_place
from ....ops.bands import conv_pair_by_bands
from ....ops.inference import eager_inference
from ....ops.upscaling import channels_last_upscaling
from ...common import MLP, LayerNorm2d
from ...contracts.decoder_api import broadcast_to_prompts
from ...contracts.features import ImageFeatures
from ..sam.mask_decoder import MaskDecoder

# The part's modules, named as the official keys under ``mask_decoder.``.
HQ_MODULES = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")


def upsample_x4(in_chans: int, mid_chans: int, out_chans: int) -> nn.Sequential:
    """Two stride-2 transposed convs with LayerNorm2d + GELU between: (B, C, h, w) -> (B, C', 4h, 4w)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_chans, mid_chans, kernel_size=2, stride=2),
        LayerNorm2d(mid_chans),
        nn.GELU(),
        nn.ConvTranspose2d(mid_chans, out_chans, kernel_size=2, stride=2),
    )


class HQStage(NamedTuple):
    """SAM's decoder run with the HQ token: what the HQ and Pi decoders build their masks on."""

    sam_masks: torch.Tensor  # (B, 4, 256, 256) logits of SAM's mask tokens
    iou: torch.Tensor  # (B, 4) SAM's IoU predictions
    hyper: torch.Tensor  # (B, 1, 32) the HQ token's hypernetwork weights
    upscaled: torch.Tensor  # (B, 32, 256, 256) SAM's upscaled decoder feature


class HQTokenFusion(nn.Module):
    """The HQ token (its embedding and hypernetwork MLP) and the fused feature it is read on:
    early encoder feature + final embedding (per image) + SAM's upscaled decoder feature
    (per prompt).

    ``vit_dim``: channels of the early feature (768/1024/1280 for ViT-B/L/H, 160 for TinyViT).
    """

    def __init__(self, vit_dim: int, transformer_dim: int = 256) -> None:
        super().__init__()
        quarter, eighth = transformer_dim // 4, transformer_dim // 8
        self.hf_token = nn.Embedding(1, transformer_dim)
        self.hf_mlp = MLP(transformer_dim, transformer_dim, eighth, 3)
        self.compress_vit_feat = upsample_x4(vit_dim, transformer_dim, eighth)
        self.embedding_encoder = upsample_x4(transformer_dim, quarter, eighth)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(eighth, quarter, kernel_size=3, padding=1),
            LayerNorm2d(quarter),
            nn.GELU(),
            nn.Conv2d(quarter, eighth, kernel_size=3, padding=1),
        )

    @property
    def token(self) -> torch.Tensor:
        """(1, 256) the HQ token, appended after SAM's mask tokens."""
        return self.hf_token.weight

    def run_with(
        self, sam: MaskDecoder, embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> HQStage:
        """The two-way transformer on SAM's tokens and the HQ token, SAM's masks, and the HQ
        token's hypernetwork weights.

        embedding: (1 or B, 256, 64, 64); image_pe: (1, 256, 64, 64); sparse: (B, N, 256);
        dense: (B, 256, 64, 64).
        """
        hs, src = sam.run_transformer(embedding, image_pe, sparse, dense, self.token)
        sam_masks, iou, upscaled = sam.sam_masks(hs, src)
        return HQStage(sam_masks, iou, self.hypernetwork(hs[:, 1 + sam.num_mask_tokens]), upscaled)

    def image_fusion(self, features: ImageFeatures) -> torch.Tensor:
        """Global-local fusion of the image: (B_img, 32, 256, 256), computed once per image."""
        if features.early is None:
            raise InvalidInputError("the HQ token needs the early encoder feature (ImageFeatures.early); use Sam.encode_image")

        def fuse() -> torch.Tensor:
            early = features.early.permute(0, 3, 1, 2)
            if not eager_inference(self.compress_vit_feat, self.embedding_encoder):
                return self.embedding_encoder(features.embedding) + self.compress_vit_feat(early)
            # Inference channels-last: the early feature's 768-wide transposed convolution as a
            # matrix product (1.6x oneDNN's), the embedding's through oneDNN on an NHWC map.
            fused = channels_last_upscaling(self.compress_vit_feat, early)
            return fused.add_(self.embedding_encoder(features.embedding.contiguous(memory_format=torch.channels_last)))

        return features.derive_once(self, "image_fusion", fuse)

    def fused_feature(self, upscaled: torch.Tensor, features: ImageFeatures) -> torch.Tensor:
        """SAM's upscaled decoder feature (B, 32, 256, 256) fused with the image -> (B, 32, 256, 256)."""
        fusion = self.image_fusion(features)
        if not eager_inference(self.embedding_maskfeature):
            return self.embedding_maskfeature(upscaled) + broadcast_to_prompts(fusion, upscaled.shape[0])
        return self._fused_feature_by_bands(upscaled, fusion)

    def _fused_feature_by_bands(self, upscaled: torch.Tensor, fusion: torch.Tensor) -> torch.Tensor:
        """:meth:`fused_feature` in eager inference, per prompt and by bands of rows: the
        64-channel intermediate (16 MB per prompt, 1 GB for an AMG batch of 64) is never whole,
        and its layer norm and GELU run on a band in cache. Same sums as the plain graph."""
        first, norm, act, second = self.embedding_maskfeature
        prompts, _, height, width = upscaled.shape
        out = torch.empty((prompts, second.out_channels, height, width), dtype=upscaled.dtype,
                          device=upscaled.device, memory_format=torch.channels_last)
        fusion = broadcast_to_prompts(fusion, prompts)

        def first_conv(rows: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
            mid = F.conv2d(rows, first.weight, first.bias, padding=padding)
            mid = F.layer_norm(mid.permute(0, 2, 3, 1), norm.weight.shape, norm.weight, norm.bias, norm.eps)
            return activate_in_place(act, mid).permute(0, 3, 1, 2)

        for prompt in range(prompts):
            image = fusion[prompt : prompt + 1]
            conv_pair_by_bands(
                upscaled[prompt : prompt + 1], first, second, first_conv,
                lambda mid, padding, start, stop: F.conv2d(mid, second.weight, second.bias, padding=padding)
                .add_(image[:, :, start:stop]),
                out=out[prompt : prompt + 1],
            )
        return out

    def hypernetwork(self, token_out: torch.Tensor) -> torch.Tensor:
        """The HQ token's transformer output (B, 256) -> hypernetwork weights (B, 1, 32)."""
        return self.hf_mlp(token_out).unsqueeze(1)
