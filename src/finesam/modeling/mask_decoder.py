"""SAM's mask decoder, split into steps that the HQ and Pi decoders reuse."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .features import ImageFeatures
from .transformer import TwoWayTransformer

HQ_OUTPUTS = ("sum", "hq_only", "sam_only", "candidates")


@dataclass(frozen=True)
class OutputMode:
    """Which logits a decoder returns for each prompt.

    multimask: SAM's ``multimask_output``. For SAM models, True gives the 3 multimask outputs
        and False the single-mask output. For HQ models in "sum"/"hq_only" mode it keeps the
        official HQ-SAM meaning: True selects the best of SAM's 3 outputs by predicted IoU and
        still returns one mask.
    hq: HQ models only; None means the model's default ("sum"). "sum": SAM logits + HQ logits
        (official ``hq_token_only=False``); "hq_only": HQ logits (``hq_token_only=True``);
        "sam_only": what the SAM tokens give inside the HQ model, with SAM's multimask meaning;
        "candidates": SAM's 3 multimask logits each plus the HQ logits (K = 3).
    """

    multimask: bool = True
    hq: str | None = None

    def __post_init__(self) -> None:
        if self.hq is not None and self.hq not in HQ_OUTPUTS:
            raise ValueError(f"hq_output must be one of {HQ_OUTPUTS}, got {self.hq!r}")


def broadcast_to_prompts(image_tensor: torch.Tensor, prompts: int) -> torch.Tensor:
    """Map per-image tensors (B_img, ...) onto B prompts: one image for all, or one per prompt."""
    if image_tensor.shape[0] == prompts:
        return image_tensor
    if image_tensor.shape[0] == 1:
        return image_tensor.expand(prompts, *image_tensor.shape[1:])
    raise ValueError(
        f"{image_tensor.shape[0]} images for {prompts} prompts: pass one image, or one image per prompt"
    )


def select_by_iou(masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per prompt, the multimask output (tokens 1..3) with the highest predicted IoU.

    masks: (B, 4, H, W), iou: (B, 4) -> (B, 1, H, W), (B, 1).
    """
    best_iou, best = iou[:, 1:4].max(dim=1)
    chosen = masks[:, 1:4][torch.arange(masks.shape[0], device=masks.device), best]
    return chosen.unsqueeze(1), best_iou.unsqueeze(1)


class MaskDecoder(nn.Module):
    """SAM's decoder: image embedding + prompt embeddings -> (B, K, 256, 256) logits, (B, K) IoU."""

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
        return hs, src.transpose(1, 2).reshape(batch, channels, height, width)

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

    # -------------------------------------------------------------------------------------------
    def forward(
        self,
        features: ImageFeatures,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mode: OutputMode = OutputMode(),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits (B, K, 256, 256) and predicted IoU (B, K); K = 3 if multimask else 1."""
        if mode.hq is not None:
            raise ValueError(
                f"hq_output={mode.hq!r} / hq_token_only apply to HQ-SAM models; this model has no HQ token. "
                "Load an hq_* model or leave the option out."
            )
        hs, src = self.run_transformer(features.embedding, image_pe, sparse, dense)
        masks, iou, _ = self.sam_masks(hs, src)
        if mode.multimask:
            return masks[:, 1:], iou[:, 1:]
        return masks[:, :1], iou[:, :1]


def hypernetwork_product(hyper_in: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Per-token dot products: hyper_in (B, K, C) x feature (B, C, H, W) -> (B, K, H, W)."""
    batch, channels, height, width = feature.shape
    return (hyper_in @ feature.reshape(batch, channels, height * width)).reshape(batch, -1, height, width)
