"""Pi-SAM's high-resolution mask decoder: HQ-style token and fusion, the Object Embedder
(mask-conditioned, deformable 3x3 and 7x7 branches), transposed-conv upsampling to 1024x1024
plus an RGB embedding of the input image, and a convolutional head with one logit map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import LayerNorm2d
from .deform_conv import DeformableConv2d
from .features import ImageFeatures
from .hq_decoder import HQMaskDecoder
from .mask_decoder import OutputMode, broadcast_to_prompts, hypernetwork_product
from .pi_interactor import PreciseInteractor

OBJECT_DIM = 32


def conv_norm_gelu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, LayerNorm2d(channels), nn.GELU())


class DeformableBranch(nn.Module):
    """Modulated deformable conv -> LayerNorm2d -> GELU (``atrous_conv`` in the official keys)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.atrous_conv = conv_norm_gelu(
            DeformableConv2d(channels, channels, kernel_size=kernel_size, padding=kernel_size // 2), channels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.atrous_conv(x)


class ObjectEmbedder(nn.Module):
    """(B, 32, 256, 256) feature + (B, 1, 256, 256) stage-1 logits -> (B, 32, 256, 256) object embedding.

    The 33-channel input is embedded to 32 channels, then a skip path and deformable 3x3 and
    7x7 branches are concatenated (96 channels) and projected back to 32.
    """

    def __init__(self, dim: int = OBJECT_DIM) -> None:
        super().__init__()
        self.mask_embedding = nn.Sequential(
            *conv_norm_gelu(nn.Conv2d(dim + 1, dim, 1), dim),
            *conv_norm_gelu(nn.Conv2d(dim, dim, 3, padding=1), dim),
        )
        self.aspp1 = DeformableBranch(dim, 3)
        self.aspp2 = DeformableBranch(dim, 7)
        self.conv_out = conv_norm_gelu(nn.Conv2d(3 * dim, dim, 1, bias=False), dim)

    def forward(self, feature: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        x = self.mask_embedding(torch.cat([feature, logits], dim=1))
        return self.conv_out(torch.cat([x, self.aspp1(x), self.aspp2(x)], dim=1))


def rgb_embedding() -> nn.Sequential:
    """(B, 3, 1024, 1024) normalised padded image -> (B, 8, 1024, 1024); no activation, as trained."""
    return nn.Sequential(nn.Conv2d(3, 8, kernel_size=1), nn.Conv2d(8, 8, kernel_size=3, padding=1))


@dataclass(frozen=True)
class HRState:
    """What a Pi prediction keeps so that clicks can correct it without decoding again.

    object_embedding: (B, 32, 256, 256); hyper: (B, 1, 32) HQ hypernetwork token;
    rgb: (B_img, 8, 1024, 1024) RGB embedding; low_res: (B, 1, 256, 256) stage-1 logits;
    scores: (B, 1).
    """

    object_embedding: torch.Tensor
    hyper: torch.Tensor
    rgb: torch.Tensor
    low_res: torch.Tensor
    scores: torch.Tensor


class HRMaskDecoder(HQMaskDecoder):
    """Pi-SAM's decoder (official ``MaskDecoderAE``). Reuses the HQ decoder's token, fusion and
    SAM parts; adds ``embedding_act``, ``mask_aspp`` (Object Embedder), ``output_upscaling_2``,
    ``out_act`` (HR head), ``interact_2`` (:class:`PreciseInteractor`) and ``rgb_embed``.

    ``forward`` returns the 1024x1024 logits (B, 1, 1024, 1024) and the SAM IoU prediction
    of the single-mask token (B, 1) as score.
    """

    high_resolution = True
    needs_image = True

    def __init__(self, *, vit_dim: int, rgb_embed: nn.Module | None = None, interactor: PreciseInteractor | None = None) -> None:
        super().__init__(vit_dim=vit_dim)
        dim = OBJECT_DIM
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
        self.interact_2 = interactor if interactor is not None else PreciseInteractor(dim)
        self.rgb_embed = rgb_embed if rgb_embed is not None else rgb_embedding()

    def decode_state(
        self, features: ImageFeatures, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> HRState:
        """Stage 1 (256x256 logits) and the Object Embedder, for B prompts."""
        if features.image is None:
            raise ValueError("Pi-SAM needs the preprocessed image in ImageFeatures.image (use Sam.encode_image)")
        hs, src = self.run_transformer(features.embedding, image_pe, sparse, dense, self.hf_token.weight)
        prompts = hs.shape[0]
        fused = self.embedding_maskfeature(self.output_upscaling(src)) + broadcast_to_prompts(self.hq_features(features), prompts)
        feature = self.embedding_act(fused)
        hyper = self.hf_mlp(hs[:, 1 + self.num_mask_tokens]).unsqueeze(1)
        low_res = hypernetwork_product(hyper, feature)
        scores = self.iou_prediction_head(hs[:, 0])[:, :1]
        rgb = features.derive_once(self, "rgb", lambda: self.rgb_embed(features.image.to(feature.dtype)))
        return HRState(self.mask_aspp(feature, low_res), hyper, rgb, low_res, scores)

    def high_res_logits(self, object_embedding: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 32, 256, 256) object embedding + (1 or B, 8, 1024, 1024) RGB -> (B, 1, 1024, 1024) logits."""
        upscaled = self.output_upscaling_2(object_embedding)
        return self.out_act(upscaled + broadcast_to_prompts(rgb, upscaled.shape[0]))

    def correct(
        self, state: HRState, points: torch.Tensor, flags: torch.Tensor, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the Precise Interactor to a state: (B, N, 2) normalised (x, y) clicks, (B, N)
        flags -> corrected (B, 1, 1024, 1024) logits."""
        corrected = self.interact_2(state.object_embedding, state.hyper, points, flags, padding)
        return self.high_res_logits(corrected, state.rgb)

    def forward(
        self,
        features: ImageFeatures,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mode: OutputMode = OutputMode(),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mode.hq is not None:
            raise ValueError(f"hq_output={mode.hq!r} applies to HQ-SAM models; Pi-SAM returns its high-resolution mask")
        state = self.decode_state(features, image_pe, sparse, dense)
        return self.high_res_logits(state.object_embedding, state.rgb), state.scores
