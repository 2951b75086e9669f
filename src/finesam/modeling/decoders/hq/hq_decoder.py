"""HQ-SAM's decoder: SAM's decoder composed with the HQ token and global-local fusion."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ...contracts.decoder_api import (
    HQ_OUTPUTS,
    DecoderCapabilities,
    DecoderOutput,
    OutputMode,
    broadcast_to_prompts,
    hypernetwork_product,
    is_official_call,
    select_by_iou,
)
from ...contracts.features import ImageFeatures
from ..sam.mask_decoder import SAM_MODULES, ComposedDecoder, MaskDecoder, prefixes
from .hq_token import HQ_MODULES, HQTokenFusion


class HQMaskDecoder(ComposedDecoder):
    """SAM's decoder (``sam``) plus the HQ part (``hq``): the HQ mask is the HQ token's
    hypernetwork product with the fused feature; see :class:`OutputMode` for what is returned.

    ``vit_dim``: channels of the early feature (768/1024/1280 for ViT-B/L/H, 160 for TinyViT).
    Without ``sam``, the official ``MaskDecoderHQ`` keywords (``transformer_dim``,
    ``transformer``, ``num_multimask_outputs``, ``iou_head_depth``, ``iou_head_hidden_dim``)
    build SAM's part. ``state_dict()`` and the attributes speak the official names
    (:class:`~finesam.modeling.decoders.sam.mask_decoder.ComposedDecoder`).
    """

    capabilities: ClassVar[DecoderCapabilities] = DecoderCapabilities(
        output_modes=HQ_OUTPUTS, encoder_features=frozenset({"early"})
    )
    official_prefixes: ClassVar[tuple[tuple[str, str], ...]] = prefixes(SAM_MODULES, "sam") + prefixes(HQ_MODULES, "hq")
    new_parts: ClassVar[tuple[str, ...]] = ("hq",)

    def __init__(
        self,
        *,
        vit_dim: int,
        sam: MaskDecoder | None = None,
        hq: HQTokenFusion | None = None,
        transformer_dim: int = 256,
        transformer: nn.Module | None = None,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        if activation is not nn.GELU:
            raise ValueError("the HQ decoder upscales with GELU, as the official one; other activations are not supported")
        self.sam = sam if sam is not None else MaskDecoder(
            transformer_dim=transformer_dim, transformer=transformer, num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth, iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.hq = hq if hq is not None else HQTokenFusion(vit_dim, self.sam.transformer_dim)

    @property
    def num_mask_tokens(self) -> int:
        """The official count: SAM's 4 mask tokens and the HQ token."""
        return self.sam.num_mask_tokens + 1

    @property
    def transformer_dim(self) -> int:
        return self.sam.transformer_dim

    def forward(self, *args: Any, **kwargs: Any) -> DecoderOutput | tuple[torch.Tensor, torch.Tensor]:
        """finesam's call ``(features, image_pe, sparse, dense, mode)`` -> :class:`DecoderOutput`
        (:meth:`decode`), or the official call (:meth:`official_forward`)."""
        if is_official_call(args, kwargs):
            return self.official_forward(*args, **kwargs)
        return self.decode(*args, **kwargs)

    def decode_all(
        self, features: ImageFeatures, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM logits (B, 4, 256, 256), their IoU (B, 4) and HQ logits (B, 1, 256, 256)."""
        stage = self.hq.run_with(self.sam, features.embedding, image_pe, sparse, dense)
        return stage.sam_masks, stage.iou, hypernetwork_product(stage.hyper, self.hq.fused_feature(stage.upscaled, features))

    def decode(
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
        hq = mode.hq or self.capabilities.default_output_mode
        if hq == "candidates":
            logits, scores = sam_masks[:, 1:] + hq_mask, iou[:, 1:]
        elif hq == "sam_only":
            chosen = slice(1, None) if mode.multimask else slice(0, 1)
            logits, scores = sam_masks[:, chosen], iou[:, chosen]
        else:
            sam_mask, scores = select_by_iou(sam_masks, iou) if mode.multimask else (sam_masks[:, :1], iou[:, :1])
            logits = hq_mask if hq == "hq_only" else sam_mask + hq_mask
        return DecoderOutput(logits, scores, logits, sam_masks, iou, hq_logits=hq_mask)

    # The official interface ----------------------------------------------------------------------
    def official_forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        hq_token_only: bool,
        interm_embeddings: Sequence[torch.Tensor] | torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``segment_anything_hq``'s ``MaskDecoderHQ.forward``: masks (B, 1, 256, 256) and
        IoU predictions (B, 1). interm_embeddings: the encoder's list (or a stacked tensor) whose
        first entry is the early feature (1 or B, 64, 64, C)."""
        features = ImageFeatures(image_embeddings, interm_embeddings[0])
        mode = OutputMode(multimask=bool(multimask_output), hq="hq_only" if hq_token_only else "sum")
        output = self.decode(features, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, mode)
        return output.logits, output.scores

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        hq_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``segment_anything_hq``'s ``MaskDecoderHQ.predict_masks``: SAM's 4 masks and the HQ
        mask (B, 5, 256, 256) and SAM's IoU predictions (B, 4), for the image's fused
        ``hq_features`` (1 or B, 32, 256, 256)."""
        stage = self.hq.run_with(self.sam, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        fused = self.hq.embedding_maskfeature(stage.upscaled) + broadcast_to_prompts(hq_features, stage.upscaled.shape[0])
        return torch.cat([stage.sam_masks, hypernetwork_product(stage.hyper, fused)], dim=1), stage.iou
