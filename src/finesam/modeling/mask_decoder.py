"""SAM's mask decoder, split into steps that the HQ and Pi decoders (which compose it) reuse."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .decoder_api import DecoderCapabilities, DecoderOutput, OutputMode, broadcast_to_prompts, hypernetwork_product
from .features import ImageFeatures
from .transformer import TwoWayTransformer

# SAM's decoder modules; HQ and Pi decoders hold them under ``sam.``.
SAM_MODULES = ("iou_token", "mask_tokens", "transformer", "output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head")


def prefixes(modules: tuple[str, ...], part: str) -> tuple[tuple[str, str], ...]:
    """(official prefix, module prefix) pairs for ``modules`` held by a part named ``part``."""
    return tuple((f"{module}.", f"{part}.{module}.") for module in modules)


class MaskDecoder(nn.Module):
    """SAM's decoder: image embedding + prompt embeddings -> (B, K, 256, 256) logits, (B, K) IoU.

    Module names are the official checkpoint keys (under ``mask_decoder.``).
    """

    capabilities: ClassVar[DecoderCapabilities] = DecoderCapabilities()
    # (official key prefix, module key prefix) pairs under ``mask_decoder.``; SAM's keys are its own.
    official_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Submodules added over SAM's decoder: what training on a frozen SAM learns.
    new_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        transformer: nn.Module | None = None,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer(embedding_dim=transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    # Steps shared with the HQ and Pi decoders -------------------------------------------------
    def run_transformer(
        self,
        embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        extra_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way transformer on [iou, mask tokens, extra tokens, prompts].

        embedding: (1 or B, 256, 64, 64); image_pe: (1, 256, 64, 64); sparse: (B, N, 256);
        dense: (B, 256, 64, 64); extra_tokens: (T, 256) appended after the mask tokens.
        Returns token outputs (B, 1 + 4 + T + N, 256) and the updated image (B, 256, 64, 64).
        """
        prompts = sparse.shape[0]
        output_tokens = [self.iou_token.weight, self.mask_tokens.weight]
        if extra_tokens is not None:
            output_tokens.append(extra_tokens)
        tokens = torch.cat(output_tokens, dim=0).unsqueeze(0).expand(prompts, -1, -1)
        tokens = torch.cat([tokens, sparse], dim=1)
        src = broadcast_to_prompts(embedding, prompts) + dense
        pos = image_pe.expand(prompts, -1, -1, -1)
        batch, channels, height, width = src.shape
        hs, src = self.transformer(src, pos, tokens)
        # The image tokens viewed as a channels-last map (no copy). A reshape of their transpose
        # gives the same view with a batch stride of C when B = 1, which oneDNN does not take
        # for channels-last: it then copies the map to NCHW (5x slower upscaling).
        return hs, src.view(batch, height, width, channels).permute(0, 3, 1, 2)

    def sam_masks(self, hs: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of the 4 SAM mask tokens.

        hs: (B, T, 256) token outputs; src: (B, 256, 64, 64) updated image.
        Returns masks (B, 4, 256, 256), IoU predictions (B, 4), upscaled feature (B, 32, 256, 256).
        """
        upscaled = self.output_upscaling(src)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, index]) for index, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = hypernetwork_product(hyper_in, upscaled)
        return masks, self.iou_prediction_head(hs[:, 0]), upscaled

    def forward(
        self,
        features: ImageFeatures,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mode: OutputMode = OutputMode(),
    ) -> DecoderOutput:
        """Logits (B, K, 256, 256) and predicted IoU (B, K); K = 3 if ``mode.multimask`` else 1.

        features: embedding (1 or B, 256, 64, 64); image_pe: (1, 256, 64, 64); sparse:
        (B, N, 256) and dense: (B, 256, 64, 64) prompt embeddings.
        """
        self.capabilities.check_mode(mode)
        hs, src = self.run_transformer(features.embedding, image_pe, sparse, dense)
        masks, iou, _ = self.sam_masks(hs, src)
        chosen = slice(1, None) if mode.multimask else slice(0, 1)
        logits = masks[:, chosen]
        return DecoderOutput(logits, iou[:, chosen], logits, masks, iou)
