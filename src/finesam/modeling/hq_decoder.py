"""HQ-SAM's decoder: SAM's decoder composed with the HQ token and global-local fusion."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .decoder_api import (
    HQ_OUTPUTS,
    DecoderCapabilities,
    DecoderOutput,
    OutputMode,
    hypernetwork_product,
    select_by_iou,
)
from .features import ImageFeatures
from .hq_token import HQ_MODULES, HQTokenFusion
from .mask_decoder import SAM_MODULES, MaskDecoder, prefixes


class HQMaskDecoder(nn.Module):
    """SAM's decoder (``sam``) plus the HQ part (``hq``): the HQ mask is the HQ token's
    hypernetwork product with the fused feature; see :class:`OutputMode` for what is returned.

    ``vit_dim``: channels of the early feature (768/1024/1280 for ViT-B/L/H, 160 for TinyViT).
    """

    capabilities: ClassVar[DecoderCapabilities] = DecoderCapabilities(
        output_modes=HQ_OUTPUTS, encoder_features=frozenset({"early"})
    )
    official_prefixes: ClassVar[tuple[tuple[str, str], ...]] = prefixes(SAM_MODULES, "sam") + prefixes(HQ_MODULES, "hq")
    new_parts: ClassVar[tuple[str, ...]] = ("hq",)

    def __init__(self, *, vit_dim: int, sam: MaskDecoder | None = None, hq: HQTokenFusion | None = None) -> None:
        super().__init__()
        self.sam = sam if sam is not None else MaskDecoder()
        self.hq = hq if hq is not None else HQTokenFusion(vit_dim, self.sam.transformer_dim)

    def decode_all(
        self, features: ImageFeatures, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM logits (B, 4, 256, 256), their IoU (B, 4) and HQ logits (B, 1, 256, 256)."""
        hs, src = self.sam.run_transformer(features.embedding, image_pe, sparse, dense, self.hq.token)
        sam_masks, iou, upscaled = self.sam.sam_masks(hs, src)
        hyper = self.hq.hypernetwork(hs[:, 1 + self.sam.num_mask_tokens])
        return sam_masks, iou, hypernetwork_product(hyper, self.hq.fused_feature(upscaled, features))

    def forward(
        self,
        features: ImageFeatures,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mode: OutputMode = OutputMode(),
    ) -> DecoderOutput:
        """Logits (B, K, 256, 256) and SAM's predicted IoU (B, K); shapes as :meth:`MaskDecoder.forward`."""
        self.capabilities.check_mode(mode)
        sam_masks, iou, hq_mask = self.decode_all(features, image_pe, sparse, dense)
        hq = mode.hq or self.capabilities.output_modes[0]
        if hq == "candidates":
            logits, scores = sam_masks[:, 1:] + hq_mask, iou[:, 1:]
        elif hq == "sam_only":
            chosen = slice(1, None) if mode.multimask else slice(0, 1)
            logits, scores = sam_masks[:, chosen], iou[:, chosen]
        else:
            sam_mask, scores = select_by_iou(sam_masks, iou) if mode.multimask else (sam_masks[:, :1], iou[:, :1])
            logits = hq_mask if hq == "hq_only" else sam_mask + hq_mask
        return DecoderOutput(logits, scores, logits, sam_masks, iou, hq_logits=hq_mask)
