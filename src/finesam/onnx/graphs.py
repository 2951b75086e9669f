"""The torch modules that are exported as ONNX graphs: the image encoder, the prompt decoder
with SAM's ONNX conventions, and (for decoders that correct clicks) the click interactor.

Each wraps a :class:`~finesam.modeling.sam.Sam` without changing its numbers: the graphs run
the model's own modules, and ask ``model.capabilities`` which encoder extras exist and
which prompt kinds the decoder takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.decoder_api import CorrectionState, OutputMode
from ..modeling.features import ImageFeatures
from ..modeling.prompt_encoder import PAD_LABEL
from ..modeling.sam import Sam

# Names of the graphs' inputs and outputs (SAM's ONNX names where SAM has the tensor).
EMBEDDING = "image_embeddings"
EXTRA_NAMES = {"early": "early_features", "image": "preprocessed_image"}
ENCODER_INPUT = "image"
POINT_INPUTS = ("point_coords", "point_labels")
MASK_INPUTS = ("mask_input", "has_mask_input")
SIZE_INPUT = "orig_im_size"
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# A correcting decoder's state (:class:`~finesam.modeling.decoder_api.CorrectionState`).
STATE_OUTPUTS = ("object_embedding", "hq_token", "rgb_embedding")
CLICK_INPUTS = ("click_coords", "click_labels")
# Point labels of SAM's ONNX decoder: box corners after the point labels 0 / 1 (and -1 padding).
BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 2, 3


def extras_of(model: Sam) -> tuple[str, ...]:
    """The encoder extras the decoder reads, in a fixed order ("early", then "image")."""
    return tuple(extra for extra in EXTRA_NAMES if extra in model.capabilities.encoder_features)


def takes_masks(model: Sam) -> bool:
    return "masks" in model.capabilities.prompts


def postprocess(logits: torch.Tensor, orig_im_size: torch.Tensor, image_size: int) -> torch.Tensor:
    """(1, K, S, S) logits -> (1, K, H, W) for ``orig_im_size`` = (H, W) as a float tensor: as
    :meth:`Sam.postprocess_masks` with the input size of
    :func:`~finesam.predict.transforms.preprocess_shape`, computed in float64 as Python does."""
    if logits.shape[-1] != image_size:
        logits = F.interpolate(logits, (image_size, image_size), mode="bilinear", align_corners=False)
    size = orig_im_size.to(torch.float64)
    scale = image_size / torch.max(size)
    input_size = torch.floor(size * scale + 0.5).clamp(min=1).to(torch.int64)
    logits = logits[..., : input_size[0], : input_size[1]]
    original = orig_im_size.to(torch.int64)
    return F.interpolate(logits, size=(original[0], original[1]), mode="bilinear", align_corners=False)


class EncoderGraph(nn.Module):
    """(1, 3, 1024, 1024) preprocessed image (normalised, zero-padded) -> the embedding
    (1, 256, 64, 64), then the extras the decoder declares: the early feature (1, 64, 64, C)
    and/or the preprocessed image itself (for Pi-SAM's RGB embedding)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.model = model
        self.extras = extras_of(model)

    @property
    def output_names(self) -> list[str]:
        return [EMBEDDING] + [EXTRA_NAMES[extra] for extra in self.extras]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.encode_preprocessed(image, frozenset(self.extras))
        outputs = [features.embedding]
        if "early" in self.extras:
            outputs.append(features.early)
        if "image" in self.extras:
            outputs.append(features.image.clone())  # an output cannot be the graph's input itself
        return tuple(outputs)


class PromptEmbedding(nn.Module):
    """SAM's ONNX prompt convention on top of the model's prompt encoder.

    point_coords (1, N, 2) (x, y) in the 1024 frame; point_labels (1, N) float: 1 positive,
    0 negative, 2 / 3 box top-left / bottom-right corners, -1 padding (add one padding point
    when there is no box, as SAM's predictor does). Gives the same sparse tokens as
    :class:`~finesam.modeling.prompt_encoder.PromptEncoder` for the same prompts.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.image_size = model.image_size

    def sparse(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        embedding = encoder.pe_layer.encode((point_coords + 0.5) / self.image_size)
        labels = point_labels[..., None]
        embedding = torch.where(labels == PAD_LABEL, encoder.not_a_point_embed.weight, embedding)
        for label, point_embedding in enumerate(encoder.point_embeddings):
            embedding = embedding + (labels == label) * point_embedding.weight
        return embedding

    def dense(self, mask_input: torch.Tensor | None, has_mask_input: torch.Tensor | None) -> torch.Tensor:
        encoder = self.prompt_encoder
        height, width = encoder.image_embedding_size
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, height, width)
        if mask_input is None:
            return no_mask
        has_mask = has_mask_input.reshape(1, 1, 1, 1)
        return has_mask * encoder.mask_downscaling(mask_input) + (1 - has_mask) * no_mask


class DecoderGraph(nn.Module):
    """One prompt set -> masks (1, K, H, W) logits at the original size, iou_predictions
    (1, K), low_res_masks (1, K, 256, 256), in SAM's ONNX conventions.

    Inputs: image_embeddings, the extras the decoder reads, point_coords, point_labels, then
    mask_input (1, 1, 256, 256) and has_mask_input (1,) when the decoder takes mask prompts,
    and orig_im_size (2,) float (H, W). The output mode (multimask, HQ output) is fixed.
    Decoders that correct clicks also return their correction state: object_embedding
    (1, 32, 256, 256), hq_token (1, 1, 32) and rgb_embedding (1, 8, 1024, 1024), the inputs
    of :class:`InteractorGraph`.
    """

    def __init__(self, model: Sam, mode: OutputMode) -> None:
        super().__init__()
        model.capabilities.check_mode(mode)
        self.model = model
        self.mode = mode
        self.extras = extras_of(model)
        self.prompts = PromptEmbedding(model)
        self.with_masks = takes_masks(model)
        self.with_state = model.capabilities.corrects_clicks

    @property
    def input_names(self) -> list[str]:
        names = [EMBEDDING] + [EXTRA_NAMES[extra] for extra in self.extras] + list(POINT_INPUTS)
        return names + (list(MASK_INPUTS) if self.with_masks else []) + [SIZE_INPUT]

    @property
    def output_names(self) -> list[str]:
        return list(DECODER_OUTPUTS) + (list(STATE_OUTPUTS) if self.with_state else [])

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs))
        extras = {extra: named[EXTRA_NAMES[extra]] for extra in self.extras}
        features = ImageFeatures(named[EMBEDDING], **extras)
        sparse = self.prompts.sparse(named["point_coords"], named["point_labels"])
        dense = self.prompts.dense(named.get("mask_input"), named.get("has_mask_input"))
        output = self.model.mask_decoder(features, self.model.prompt_encoder.get_dense_pe(), sparse, dense, self.mode)
        masks = postprocess(output.logits, named[SIZE_INPUT], self.model.image_size)
        outputs = (masks, output.scores, output.low_res)
        if self.with_state:
            outputs += (output.state.object_embedding, output.state.hyper, output.state.rgb)
        return outputs


class InteractorGraph(nn.Module):
    """Click correction of a decoder's state (decoders declaring ``corrects_clicks``).

    Inputs: the state :class:`DecoderGraph` returns (object_embedding, hq_token,
    rgb_embedding), click_coords (1, N, 2) (x, y) in the 1024 frame, click_labels (1, N)
    float (1 foreground, 0 background, -1 padding), orig_im_size (2,). Output: masks
    (1, 1, H, W) logits.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.model = model

    @property
    def input_names(self) -> list[str]:
        return list(STATE_OUTPUTS) + list(CLICK_INPUTS) + [SIZE_INPUT]

    @property
    def output_names(self) -> list[str]:
        return [DECODER_OUTPUTS[0]]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        labels = named["click_labels"]
        padding = labels == PAD_LABEL
        flags = torch.where(padding, torch.zeros_like(labels), labels).to(torch.int64)
        # The interactor takes clicks as x / 1024 over the padded frame (no half-pixel shift).
        points = named["click_coords"] / self.model.image_size
        state = CorrectionState(named["object_embedding"], named["hq_token"], named["rgb_embedding"], None, None)
        logits = self.model.mask_decoder.correct(state, points, flags, padding).logits
        return postprocess(logits, named[SIZE_INPUT], self.model.image_size)
