"""HQ-SAM's decoder: SAM's decoder plus the HQ output token and the global-local fusion."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .features import ImageFeatures
from .mask_decoder import MaskDecoder, OutputMode, broadcast_to_prompts, hypernetwork_product, select_by_iou

# Key prefixes (under the decoder) that HQ-SAM adds to a SAM checkpoint.
HQ_MODULES = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")


def upsample_x4(in_chans: int, mid_chans: int, out_chans: int) -> nn.Sequential:
    """Two stride-2 transposed convs with LayerNorm2d + GELU between: (B, C, h, w) -> (B, C', 4h, 4w)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_chans, mid_chans, kernel_size=2, stride=2),
        LayerNorm2d(mid_chans),
        nn.GELU(),
        nn.ConvTranspose2d(mid_chans, out_chans, kernel_size=2, stride=2),
    )


class HQMaskDecoder(MaskDecoder):
    """Adds the HQ token and fuses the early ViT feature, the final embedding and SAM's upscaled
    decoder feature; the HQ mask is the HQ token's hypernetwork product with the fused feature.

    ``vit_dim``: channels of the early feature (768/1024/1280 for ViT-B/L/H, 160 for TinyViT).
    """

    def __init__(self, *, vit_dim: int, transformer_dim: int = 256, **kwargs) -> None:
        super().__init__(transformer_dim=transformer_dim, **kwargs)
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

    def hq_features(self, features: ImageFeatures) -> torch.Tensor:
        """Global-local fusion of the image: (B_img, 32, 256, 256), computed once per image."""

        def fuse() -> torch.Tensor:
            early = features.early.permute(0, 3, 1, 2)
            return self.embedding_encoder(features.embedding) + self.compress_vit_feat(early)

        return features.derive_once(self, "hq_features", fuse)

    def decode_all(
        self, features: ImageFeatures, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM logits (B, 4, 256, 256), their IoU (B, 4) and HQ logits (B, 1, 256, 256)."""
        hs, src = self.run_transformer(features.embedding, image_pe, sparse, dense, self.hf_token.weight)
        sam_masks, iou, upscaled = self.sam_masks(hs, src)
        fused = self.embedding_maskfeature(upscaled) + broadcast_to_prompts(self.hq_features(features), hs.shape[0])
        hq_hyper = self.hf_mlp(hs[:, 1 + self.num_mask_tokens]).unsqueeze(1)
        return sam_masks, iou, hypernetwork_product(hq_hyper, fused)

    def forward(
        self,
        features: ImageFeatures,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mode: OutputMode = OutputMode(),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits (B, K, 256, 256) and SAM's predicted IoU (B, K); see :class:`OutputMode`."""
        sam_masks, iou, hq_mask = self.decode_all(features, image_pe, sparse, dense)
        hq = mode.hq or "sum"
        if hq == "candidates":
            return sam_masks[:, 1:] + hq_mask, iou[:, 1:]
        if hq == "sam_only":
            return (sam_masks[:, 1:], iou[:, 1:]) if mode.multimask else (sam_masks[:, :1], iou[:, :1])
        if mode.multimask:
            sam_mask, score = select_by_iou(sam_masks, iou)
        else:
            sam_mask, score = sam_masks[:, :1], iou[:, :1]
        if hq == "hq_only":
            return hq_mask, score
        return sam_mask + hq_mask, score
