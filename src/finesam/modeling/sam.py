"""`Sam`: an image encoder, a prompt encoder and a mask decoder composed by injection."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.files import to_official_keys
from ..errors import InvalidInputError
from ..ops.inference import eager_inference
from ..ops.upsample import upsample_to_masks
from .contracts.decoder_api import CorrectionState, DecoderCapabilities, DecoderOutput, OutputMode
from .contracts.features import ImageFeatures
from .contracts.prompt_checks import check_click_points, check_model_prompts
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Promptable segmentation model. Module names (``image_encoder``, ``prompt_encoder``,
    ``mask_decoder``) are the official checkpoint prefixes.

    The decoder is any module with the decoder interface: ``capabilities``
    (:class:`DecoderCapabilities`), ``forward(features, image_pe, sparse, dense, mode) ->
    DecoderOutput``, ``official_prefixes`` and ``new_parts`` (and ``correct`` when it declares
    ``corrects_clicks``). The encoder maps a (B, 3, 1024, 1024) normalised image and
    ``keep_early`` to :class:`ImageFeatures`.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: nn.Module,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        if hasattr(image_encoder, "returns_interm"):
            # Called the official way, the encoder returns what the official package of this
            # model returns: (embedding, interm_embeddings) where the decoder reads the early
            # feature (segment_anything_hq), else the embedding alone (segment_anything).
            image_encoder.returns_interm = "early" in mask_decoder.capabilities.encoder_features
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        return self.prompt_encoder.input_image_size[0]

    @property
    def capabilities(self) -> DecoderCapabilities:
        """What the decoder accepts and returns (see :class:`DecoderCapabilities`)."""
        return self.mask_decoder.capabilities

    @property
    def official_key_prefixes(self) -> tuple[tuple[str, str], ...]:
        """(official checkpoint key prefix, ``state_dict`` key prefix) pairs where they differ."""
        return tuple((f"mask_decoder.{official}", f"mask_decoder.{ours}") for official, ours in self.mask_decoder.official_prefixes)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` with the official checkpoint key names (what :func:`finesam.save` writes)."""
        return to_official_keys(self.state_dict(), self.official_key_prefixes)

    # --- image -----------------------------------------------------------------------------------
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) RGB in 0..255 with max(h, w) = 1024 -> normalised, zero-padded (B, 3, 1024, 1024)."""
        x = (x - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        return F.pad(x, (0, self.image_size - width, 0, self.image_size - height))

    def encode_image(self, x: torch.Tensor, extras: frozenset[str] | None = None) -> ImageFeatures:
        """(B, 3, h, w) resized RGB in 0..255 -> :class:`ImageFeatures` with what the decoder needs
        (``extras``: the encoder extras to keep, by default those the decoder declares)."""
        if not eager_inference():
            return self.encode_preprocessed(self.preprocess(x.float()), extras)
        # Inference: the same values normalised in place in one float copy, and padded into one
        # more (preprocess makes four maps of the image).
        pixels = x.to(torch.float32, copy=True).sub_(self.pixel_mean).div_(self.pixel_std)
        height, width = pixels.shape[-2:]
        image = pixels.new_zeros((*pixels.shape[:-2], self.image_size, self.image_size))
        image[..., :height, :width] = pixels
        del pixels
        return self.encode_preprocessed(image, extras)

    def encode_preprocessed(self, image: torch.Tensor, extras: frozenset[str] | None = None) -> ImageFeatures:
        """(B, 3, 1024, 1024) normalised padded image -> :class:`ImageFeatures`.

        The encoder runs in its own dtype; its outputs come back as float32.
        """
        needs = self.capabilities.encoder_features if extras is None else extras
        encoder_dtype = next(self.image_encoder.parameters()).dtype
        features = self.image_encoder(image.to(encoder_dtype), keep_early="early" in needs)
        if encoder_dtype != torch.float32:
            features = features.to(dtype=torch.float32)
        if "image" in needs:
            features = dataclasses.replace(features, image=image)
        return features

    # --- prompts -> masks ------------------------------------------------------------------------
    def decode(
        self,
        features: ImageFeatures,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        mode: OutputMode = OutputMode(),
    ) -> DecoderOutput:
        """Prompts in the 1024 frame -> :class:`DecoderOutput` for B prompts.

        points: ((B, N, 2) xy, (B, N) labels); boxes: (B, 4) xyxy; mask_input: (B, 1, 256, 256)
        logits. No prompt at all gives one prediction from the output tokens alone (B = 1), as
        the official models do, for decoders trained on points. Prompt kinds the decoder does
        not declare, and values that cannot give a finite mask (see
        :func:`~finesam.modeling.contracts.prompt_checks.check_model_prompts`), are refused.
        """
        self.capabilities.check_prompt_kinds(points is not None, boxes is not None, mask_input is not None, allow_none=True)
        check_model_prompts(points, boxes, mask_input, self.image_size)
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(features, self.prompt_encoder.get_dense_pe(), sparse, dense, mode)

    def correct(
        self, state: CorrectionState, points: torch.Tensor, flags: torch.Tensor, padding: torch.Tensor | None = None
    ) -> DecoderOutput:
        """Correct an earlier prediction's ``state`` from clicks (decoders declaring ``corrects_clicks``).

        points: (B, N, 2) (x, y) normalised to [0, 1] over the padded 1024 frame (x / 1024);
        flags: (B, N) 1 foreground / 0 background; padding: (B, N) True for unused slots.
        """
        if not self.capabilities.corrects_clicks:
            raise InvalidInputError(
                "this model's decoder does not correct clicks (a Pi-SAM model does); refine SAM/HQ masks "
                "with the clicks and the previous low-res logits as mask_input"
            )
        check_click_points(points, flags)
        return self.mask_decoder.correct(state, points, flags, padding)

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """(B, K, 256 or 1024, same) logits -> (B, K, H, W): upscale to 1024, crop the padding, resize."""
        if masks.shape[-2:] != (self.image_size, self.image_size):
            masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(int(v) for v in original_size), mode="bilinear", align_corners=False)

    def postprocess_to_binary(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """(B, K, 256 or 1024, same) logits -> (B, K, H, W) bool masks, equal to
        ``postprocess_masks(...) > mask_threshold`` without holding the full-resolution float
        masks (:func:`finesam.ops.upsample.upsample_to_masks`)."""
        if masks.shape[-2:] != (self.image_size, self.image_size):
            masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return upsample_to_masks(masks, tuple(int(v) for v in original_size), self.mask_threshold)

    # --- the official batched interface ----------------------------------------------------------
    def forward(
        self,
        batched_input: Sequence[dict[str, Any]],
        multimask_output: bool,
        hq_token_only: bool | None = None,
        hq_output: str | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The official ``Sam.forward``: images encoded as one batch, each with its own prompts.

        Each record: ``image`` (3, h, w) RGB 0..255, resized so that max(h, w) = 1024;
        ``original_size`` (H, W); optional ``point_coords`` (B, N, 2) with ``point_labels``
        (B, N), ``boxes`` (B, 4), ``mask_inputs`` (B, 1, 256, 256), all in the 1024 frame.
        Returns per record ``masks`` (B, K, H, W) bool, ``iou_predictions`` (B, K) and
        ``low_res_logits`` (B, K, 256, 256). ``hq_token_only`` / ``hq_output``: HQ models, as in
        :meth:`finesam.SamPredictor.predict`.

        Autograd follows the mode: in eval mode (what ``finesam.load`` and the builders return)
        it runs without autograd, as the official ``Sam.forward`` (``@torch.no_grad``), so the
        outputs convert to numpy and memory stays at inference size; in train mode
        (``model.train()``) gradients flow, so the model can be trained and wrapped by DDP.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.training):
            return self._forward(batched_input, multimask_output, hq_token_only, hq_output)

    def _forward(
        self,
        batched_input: Sequence[dict[str, Any]],
        multimask_output: bool,
        hq_token_only: bool | None,
        hq_output: str | None,
    ) -> list[dict[str, torch.Tensor]]:
        mode = OutputMode.from_flags(multimask_output, hq_token_only, hq_output)
        self.capabilities.check_mode(mode)
        if not batched_input:
            raise InvalidInputError("batched_input is empty: pass a list of dicts, one per image")
        images = []
        for index, record in enumerate(batched_input):
            image = record.get("image") if isinstance(record, dict) else None
            if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 or max(image.shape[1:]) != self.image_size:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise InvalidInputError(
                    f"batched_input[{index}]['image'] must be a (3, h, w) tensor with max(h, w) == {self.image_size} "
                    f"(resize with ResizeLongestSide first), got {shape}"
                )
            if "original_size" not in record:
                raise InvalidInputError(f"batched_input[{index}] needs 'original_size' (H, W) of the image before resizing")
            images.append(self.preprocess(image.to(self.device).float()))
        features = self.encode_preprocessed(torch.stack(images))
        outputs = []
        for index, record in enumerate(batched_input):
            coords = record.get("point_coords")
            points = (coords, record.get("point_labels")) if coords is not None else None
            output = self.decode(features.select(index), points, record.get("boxes"), record.get("mask_inputs"), mode)
            masks = self.postprocess_to_binary(output.logits, record["image"].shape[-2:], record["original_size"])
            outputs.append({
                "masks": masks,
                "iou_predictions": output.scores,
                "low_res_logits": output.low_res,
            })
        return outputs
