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

from ..errors import InvalidInputError
from ..modeling.contracts.decoder_api import CorrectionState, OutputMode
from ..modeling.contracts.features import ImageFeatures
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
# A correcting decoder's state (:class:`~finesam.modeling.contracts.decoder_api.CorrectionState`).
STATE_OUTPUTS = ("object_embedding", "hq_token", "rgb_embedding")
CLICK_INPUTS = ("click_coords", "click_labels")
INTERM_EMBEDDINGS = "interm_embeddings"  # X-AnyLabeling's sam_hq name for the stacked early features
# Point labels of SAM's ONNX decoder: box corners after the point labels 0 / 1 (and -1 padding).
BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 2, 3
# What the decoder graph of a SAM decoder (3 candidates + the single-mask token, no HQ token)
# returns, as the official export's return_single_mask: "all" 4 tokens (token 0 the single-mask
# output, 1-3 the multimask ones; the official default), or "single", the one the official picks.
SAM_TOKENS = ("all", "single")
# The official single-mask choice takes token 0 when the prompt has more than this many points
# (padding and box corners counted): with one click or a box alone, SAM's single-mask output is ambiguous.
SINGLE_MASK_MIN_POINTS = 2


def returns_sam_tokens(model: Sam) -> bool:
    """Whether the decoder gives SAM's 4 token outputs as its whole result (SAM and MobileSAM;
    not HQ-SAM, whose graphs keep the official HQ export's one-mask modes, nor Pi-SAM)."""
    capabilities = model.capabilities
    return capabilities.multimask and not capabilities.output_modes and capabilities.output_size == 256


def select_single_mask(logits: torch.Tensor, scores: torch.Tensor, point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask the official ``return_single_mask=True`` export returns, of SAM's 4 tokens.

    logits (1, 4, S, S), scores (1, 4), point_labels (1, N) -> (1, 1, S, S), (1, 1): token 0
    when N > 2, else the multimask token (1..3) with the highest predicted IoU.
    """
    count = torch.ones_like(point_labels).sum(dim=1)  # N as a tensor: the graph keeps it dynamic
    best_candidate = scores[:, 1:].argmax(dim=1) + 1
    index = torch.where(count > SINGLE_MASK_MIN_POINTS, torch.zeros_like(best_candidate), best_candidate)
    return logits.index_select(1, index), scores.index_select(1, index)


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


class CanvasEncoderGraph(nn.Module):
    """The encoder as (X-)AnyLabeling feeds it: (H, W, 3) float32 RGB in 0..255, H, W at most
    the model's image size (AnyLabeling: 684 x 1024, its canvas after the affine warp that
    fits the photo in), normalised, made channels-first and zero-padded to the square inside
    the graph, then :class:`EncoderGraph`'s outputs. The canvas is already at SAM's scale (its
    long side 1024), so no resizing happens here."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.encoder = EncoderGraph(model)
        self.model = model

    @property
    def output_names(self) -> list[str]:
        return self.encoder.output_names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.encoder(self.model.preprocess(image.to(torch.float32).permute(2, 0, 1).unsqueeze(0)))


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
    and orig_im_size (2,) float (H, W). The output is fixed: for SAM decoders ``tokens``
    (:data:`SAM_TOKENS`: K = 4 or the official single-mask choice, K = 1), for the others the
    output ``mode`` (multimask, HQ output).
    Decoders that correct clicks also return their correction state: object_embedding
    (1, 32, 256, 256), hq_token (1, 1, 32) and rgb_embedding (1, 8, 1024, 1024), the inputs
    of :class:`InteractorGraph`.
    """

    def __init__(self, model: Sam, mode: OutputMode, tokens: str | None = None) -> None:
        super().__init__()
        model.capabilities.check_mode(mode)
        if (tokens is not None) != returns_sam_tokens(model) or tokens not in (None, *SAM_TOKENS):
            raise InvalidInputError(f"tokens={tokens!r} for a decoder that {'gives' if returns_sam_tokens(model) else 'lacks'} SAM's 4 tokens")
        self.model = model
        self.mode = mode
        self.tokens = tokens
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
        logits, scores = output.logits, output.scores
        if self.tokens is not None:
            logits, scores = output.sam_logits, output.sam_scores
            if self.tokens == "single":
                logits, scores = select_single_mask(logits, scores, named["point_labels"])
        masks = postprocess(logits, named[SIZE_INPUT], self.model.image_size)
        outputs = (masks, scores, output.low_res if self.tokens is None else logits)
        if self.with_state:
            outputs += (output.state.object_embedding, output.state.hyper, output.state.rgb)
        return outputs


class StackedEarlyDecoderGraph(nn.Module):
    """X-AnyLabeling's ``sam_hq`` decoder contract on :class:`DecoderGraph` (HQ decoders):
    the early feature comes as ``interm_embeddings`` (N, 1, 64, 64, C), the encoder's outputs
    after the embedding stacked as X-AnyLabeling stacks them; the first is the one HQ-SAM fuses
    (the official HQ export reads ``interm_embeddings[0]`` too)."""

    def __init__(self, decoder: DecoderGraph) -> None:
        super().__init__()
        if decoder.extras != ("early",) or decoder.with_state:
            raise InvalidInputError("the sam_hq contract is for decoders that read one early feature (HQ-SAM models)")
        self.decoder = decoder

    @property
    def input_names(self) -> list[str]:
        return [name if name != EXTRA_NAMES["early"] else INTERM_EMBEDDINGS for name in self.decoder.input_names]

    @property
    def output_names(self) -> list[str]:
        return self.decoder.output_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs))
        named[EXTRA_NAMES["early"]] = named.pop(INTERM_EMBEDDINGS)[0]
        return self.decoder(*(named[name] for name in self.decoder.input_names))


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
