"""``segment_anything.utils.onnx``: :class:`SamOnnxModel`, the module the official ONNX export
notebook and ``scripts/export_onnx_model.py`` pass to ``torch.onnx.export``.

Built on the finesam model's parts (its prompt encoder's weights, its decoder's forward), with
the official inputs, outputs and mask selection, so that the exported graph gives the official
export's outputs. (``finesam export onnx`` writes finesam's own graphs, with the encoder.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ....modeling import DecoderOutput, ImageFeatures, OutputMode, Sam

STABILITY_SCORE_OFFSET = 1.0


def stability_score(masks: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU of (..., H, W) logits thresholded at ``mask_threshold +- offset`` -> (...); traceable."""
    high = (masks > (mask_threshold + offset)).sum((-1, -2), dtype=torch.int32)
    low = (masks > (mask_threshold - offset)).sum((-1, -2), dtype=torch.int32)
    return high / low


class SamOnnxModel(nn.Module):
    """The official ONNX wrapper: prompt encoding, mask decoding and mask postprocessing as one
    traceable module (the image embedding is an input).

    forward(image_embeddings (1, 256, 64, 64), point_coords (1, N, 2) in the 1024 frame,
    point_labels (1, N) (-1 padding, 0 background, 1 foreground, 2/3 box corners),
    mask_input (1, 1, 256, 256), has_mask_input (1,), orig_im_size (2,) as (H, W)) returns
    masks (1, K, H, W) logits, scores (1, K) and low-res logits (1, K, 256, 256); K = 4, or 1
    with ``return_single_mask`` (the single-mask token when there are more than 2 points,
    padding and box corners counted, else the best of the multimask tokens). With
    ``return_extra_metrics`` also stability scores and areas, before the low-res logits.
    """

    def __init__(
        self,
        model: Sam,
        return_single_mask: bool,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
    ) -> None:
        super().__init__()
        self.mask_decoder = model.mask_decoder
        self.model = model
        self.img_size = model.image_size
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score
        self.stability_score_offset = STABILITY_SCORE_OFFSET
        self.return_extra_metrics = return_extra_metrics

    @staticmethod
    def resize_longest_image_size(input_image_size: torch.Tensor, longest_side: int) -> torch.Tensor:
        """(H, W) -> the (h, w) the image is resized to, as int64 (traceable)."""
        input_image_size = input_image_size.to(torch.float32)
        scale = longest_side / torch.max(input_image_size)
        return torch.floor(scale * input_image_size + 0.5).to(torch.int64)

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """Labels as arithmetic masks (no control flow): -1 takes the not-a-point embedding, 0..3
        add the point / box-corner embeddings."""
        prompt_encoder = self.model.prompt_encoder
        embedding = prompt_encoder.pe_layer.encode((point_coords + 0.5) / self.img_size)
        labels = point_labels.unsqueeze(-1).expand_as(embedding)
        embedding = embedding * (labels != -1) + prompt_encoder.not_a_point_embed.weight * (labels == -1)
        for index, point_embedding in enumerate(prompt_encoder.point_embeddings):
            embedding = embedding + point_embedding.weight * (labels == index)
        return embedding

    def _embed_masks(self, input_mask: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        prompt_encoder = self.model.prompt_encoder
        no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * prompt_encoder.mask_downscaling(input_mask) + (1 - has_mask_input) * no_mask

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """(1, K, 256, 256) -> (1, K, H, W): to 1024, crop the padding, resize to the image."""
        masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        prepadded_size = self.resize_longest_image_size(orig_im_size, self.img_size)
        masks = masks[..., : int(prepadded_size[0]), : int(prepadded_size[1])]
        orig_im_size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(orig_im_size[0], orig_im_size[1]), mode="bilinear", align_corners=False)

    def select_masks(self, masks: torch.Tensor, iou_preds: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The official rule without control flow: token 0 gets +1000 per point over 2.5."""
        score_reweight = torch.tensor([[1000] + [0] * (iou_preds.shape[1] - 1)]).to(iou_preds.device)
        score = iou_preds + (num_points - 2.5) * score_reweight
        best_idx = torch.argmax(score, dim=1)
        masks = masks[torch.arange(masks.shape[0]), best_idx, :, :].unsqueeze(1)
        iou_preds = iou_preds[torch.arange(masks.shape[0]), best_idx].unsqueeze(1)
        return masks, iou_preds

    def decode(self, features: ImageFeatures, sparse: torch.Tensor, dense: torch.Tensor) -> DecoderOutput:
        """The model's decoder on prompt embeddings; every token's output is in the result."""
        return self.model.mask_decoder(features, self.model.prompt_encoder.get_dense_pe(), sparse, dense, OutputMode(multimask=True))

    def finish(self, masks: torch.Tensor, scores: torch.Tensor, orig_im_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Upscaled masks, scores (and extra metrics) and the low-res ``masks``."""
        upscaled_masks = self.mask_postprocessing(masks, orig_im_size)
        if self.return_extra_metrics:
            threshold = self.model.mask_threshold
            stability_scores = stability_score(upscaled_masks, threshold, self.stability_score_offset)
            areas = (upscaled_masks > threshold).sum(-1).sum(-1)
            return upscaled_masks, scores, stability_scores, areas, masks
        return upscaled_masks, scores, masks

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        output = self.decode(ImageFeatures(image_embeddings), sparse, dense)
        masks, scores = output.sam_logits, output.sam_scores
        if self.use_stability_score:
            scores = stability_score(masks, self.model.mask_threshold, self.stability_score_offset)
        if self.return_single_mask:
            masks, scores = self.select_masks(masks, scores, point_coords.shape[1])
        return self.finish(masks, scores, orig_im_size)
