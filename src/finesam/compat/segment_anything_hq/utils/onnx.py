"""``segment_anything_hq.utils.onnx``: the HQ-SAM ONNX wrapper, on the finesam model's parts."""

from __future__ import annotations

import torch

from ....modeling import ImageFeatures, Sam
from ...segment_anything.utils.onnx import SamOnnxModel as _SamOnnxModel
from ...segment_anything.utils.onnx import stability_score


class SamOnnxModel(_SamOnnxModel):
    """``segment_anything_hq``'s ONNX wrapper: as ``segment_anything``'s, with
    ``interm_embeddings`` (the encoder's list, stacked: (L, 1, 64, 64, C); the first is read)
    after the image embeddings, and one mask out: SAM's (best of the multimask tokens with
    ``multimask_output``, else token 0) plus the HQ mask, or the HQ mask with ``hq_token_only``.
    """

    def __init__(
        self,
        model: Sam,
        hq_token_only: bool = False,
        multimask_output: bool = False,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
    ) -> None:
        super().__init__(model, False, use_stability_score, return_extra_metrics)
        self.hq_token_only = hq_token_only
        self.multimask_output = multimask_output

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        interm_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        output = self.decode(ImageFeatures(image_embeddings, interm_embeddings[0]), sparse, dense)
        masks = torch.cat([output.sam_logits, output.hq_logits], dim=1)  # (1, 5, 256, 256), HQ last
        scores = output.sam_scores
        if self.use_stability_score:
            scores = stability_score(masks, self.model.mask_threshold, self.stability_score_offset)
        if self.multimask_output:  # the best of SAM's multimask tokens 1..3 by score
            scores, best = torch.max(scores[:, 1:4], dim=1)
            scores = scores.unsqueeze(1)
            sam_mask = masks[:, 1:4][torch.arange(masks.shape[0]), best].unsqueeze(1)
        else:
            scores, sam_mask = scores[:, 0:1], masks[:, 0:1]
        hq_mask = masks[:, 4:5]
        masks = hq_mask if self.hq_token_only else sam_mask + hq_mask
        return self.finish(masks, scores, orig_im_size)
