"""`Sam`: an image encoder, a prompt encoder and a mask decoder composed by injection."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .features import ImageFeatures
from .hr_decoder import HRState
from .mask_decoder import MaskDecoder, OutputMode
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Promptable segmentation model. Module names (``image_encoder``, ``prompt_encoder``,
    ``mask_decoder``) are the official checkpoint prefixes."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        return self.prompt_encoder.input_image_size[0]

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) RGB in 0..255 with max(h, w) = 1024 -> normalised, zero-padded (B, 3, 1024, 1024)."""
        x = (x - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        return F.pad(x, (0, self.image_size - width, 0, self.image_size - height))

    def encode_image(self, x: torch.Tensor) -> ImageFeatures:
        """(B, 3, h, w) resized RGB in 0..255 -> :class:`ImageFeatures`."""
        encoder_dtype = next(self.image_encoder.parameters()).dtype
        image = self.preprocess(x.float())
        features = self.image_encoder(image.to(encoder_dtype))
        if encoder_dtype != torch.float32:
            features = features.to(dtype=torch.float32)
        if getattr(self.mask_decoder, "needs_image", False):
            features = dataclasses.replace(features, image=image)
        return features

    def decode(
        self,
        features: ImageFeatures,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        mode: OutputMode = OutputMode(),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the 1024 frame -> low-res logits (B, K, 256, 256) and scores (B, K).

        points: ((B, N, 2) xy, (B, N) labels); boxes: (B, 4) xyxy; mask_input: (B, 1, 256, 256).
        """
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(features, self.prompt_encoder.get_dense_pe(), sparse, dense, mode)

    def decode_high_res(self, features: ImageFeatures, boxes: torch.Tensor) -> HRState:
        """Pi-SAM: boxes (B, 4) in the 1024 frame -> the decoder state (stage-1 logits, object
        embedding, RGB embedding, scores) that :meth:`HRMaskDecoder.high_res_logits` and
        :meth:`HRMaskDecoder.correct` turn into 1024x1024 logits."""
        sparse, dense = self.prompt_encoder(None, boxes, None)
        return self.mask_decoder.decode_state(features, self.prompt_encoder.get_dense_pe(), sparse, dense)

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """(B, K, 256 or 1024, same) logits -> (B, K, H, W): upscale to 1024, crop the padding, resize."""
        if masks.shape[-2:] != (self.image_size, self.image_size):
            masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
