"""What every mask decoder declares and returns.

Generic code (predictor, automatic masks, sessions, evaluation, CLI, export) asks a decoder's
:class:`DecoderCapabilities`, never its class, and reads one typed :class:`DecoderOutput`.
:class:`MaskDecoderInterface` writes down what a decoder module offers :class:`~finesam.modeling.sam.Sam`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import torch

from ...errors import InvalidInputError
from .features import ImageFeatures

PROMPT_KINDS = ("points", "boxes", "masks")
HQ_OUTPUTS = ("sum", "hq_only", "sam_only", "candidates")
ENCODER_EXTRAS = ("early", "image")


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
            raise InvalidInputError(f"hq_output must be one of {HQ_OUTPUTS}, got {self.hq!r}")

    @classmethod
    def from_flags(cls, multimask_output: bool, hq_token_only: bool | None = None, hq_output: str | None = None) -> "OutputMode":
        """Translate the official ``hq_token_only`` flag and our ``hq_output`` into one value."""
        if hq_output is not None and hq_token_only is not None:
            expected = "hq_only" if hq_token_only else "sum"
            if hq_output != expected:
                raise InvalidInputError(f"hq_token_only={hq_token_only} contradicts hq_output={hq_output!r}; pass only one")
        if hq_output is None and hq_token_only:
            hq_output = "hq_only"
        return cls(multimask=bool(multimask_output), hq=hq_output)


@dataclass(frozen=True)
class DecoderCapabilities:
    """A decoder's declaration of what it accepts and returns.

    prompts: the prompt kinds it was trained on, among "points", "boxes", "masks".
    multimask: whether ``OutputMode(multimask=True)`` gives 3 candidate masks per prompt.
    output_modes: the ``OutputMode.hq`` values it accepts, its default first (empty: it has no
        HQ token).
    output_size: side of the logits it returns (256, or 1024 for a high-resolution head).
    corrects_clicks: whether it has ``correct(state, points, flags)`` (clicks on wrong areas
        of an earlier prediction, without decoding again).
    encoder_features: extras it reads from :class:`~finesam.modeling.contracts.features.ImageFeatures`
        besides the embedding: "early" (the early encoder feature), "image" (the normalised
        padded input). The encoder keeps only these.
    """

    prompts: frozenset[str] = frozenset(PROMPT_KINDS)
    multimask: bool = True
    output_modes: tuple[str, ...] = ()
    output_size: int = 256
    corrects_clicks: bool = False
    encoder_features: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = (set(self.prompts) - set(PROMPT_KINDS)) | (set(self.encoder_features) - set(ENCODER_EXTRAS))
        unknown |= set(self.output_modes) - set(HQ_OUTPUTS)
        if unknown:
            raise InvalidInputError(f"unknown capability values {sorted(unknown)}")

    @property
    def prompt_names(self) -> str:
        """The accepted prompt kinds in words, e.g. 'box' or 'point/box/mask'."""
        names = {"points": "point", "boxes": "box", "masks": "mask"}
        return "/".join(names[kind] for kind in PROMPT_KINDS if kind in self.prompts)

    def check_prompt_kinds(self, points: bool, boxes: bool, masks: bool, allow_none: bool = False) -> None:
        """Raise ``ValueError`` unless this combination of prompt kinds is accepted (the
        prompts' values are checked by ``SamPredictor.check_prompts`` and ``prompt_checks``).

        ``allow_none``: no prompt at all passes for a decoder trained on points (SAM's decoder
        then reads its output tokens alone, as the official models do when given nothing).
        """
        given = {kind for kind, present in zip(PROMPT_KINDS, (points, boxes, masks)) if present}
        refused = given - set(self.prompts)
        if not given and allow_none and "points" in self.prompts:
            return
        if refused or not given & set(self.prompts):
            hint = " Refine with clicks through correct(...)." if self.corrects_clicks else ""
            raise InvalidInputError(
                f"this model takes {'a ' if len(self.prompts) == 1 else ''}{self.prompt_names} prompt"
                f"{'' if len(self.prompts) == 1 else 's'} only (its decoder was trained on them); got "
                f"{', '.join(sorted(given)) or 'no prompt'}.{hint}"
            )


    @property
    def default_output_mode(self) -> str | None:
        """The HQ output mode used when none is asked for (None: the decoder has no HQ token)."""
        return self.output_modes[0] if self.output_modes else None

    @property
    def takes_multimask(self) -> bool:
        """Whether ``OutputMode.multimask`` means anything to this decoder: SAM's 3 candidates or
        HQ's best-of-3 SAM choice (False for a decoder that returns one mask whatever the flag,
        as Pi-SAM's); the default of ``multimask_output`` where the caller gives none."""
        return self.multimask or bool(self.output_modes)

    def multimask_matters(self, hq: str | None = None) -> bool:
        """Whether ``OutputMode.multimask`` changes the result in HQ mode ``hq`` (None: the
        default mode): as :attr:`takes_multimask`, except in "candidates" (always K = 3)."""
        return self.takes_multimask and (hq or self.default_output_mode) != "candidates"

    def check_output_mode(self, hq: str | None, parameter: str = "hq_output", model: str = "this model") -> None:
        """Raise ``ValueError`` unless ``hq`` (an ``OutputMode.hq`` name, or None for the default)
        is one of this decoder's output modes; the message names ``parameter`` and ``model`` and
        lists the allowed modes."""
        if hq is not None and hq not in self.output_modes:
            allowed = ", ".join(self.output_modes) or "none (it is not an HQ model)"
            raise InvalidInputError(f"{parameter} {hq!r} is not an output mode of {model}; allowed: {allowed}")

    def to_metadata(self) -> dict[str, Any]:
        """This declaration as plain JSON values (what an ONNX export stores in its metadata)."""
        return {
            "prompts": sorted(self.prompts),
            "multimask": self.multimask,
            "output_modes": list(self.output_modes),
            "output_size": self.output_size,
            "corrects_clicks": self.corrects_clicks,
            "encoder_features": sorted(self.encoder_features),
        }

    @classmethod
    def from_metadata(cls, values: Mapping[str, Any]) -> "DecoderCapabilities":
        """The declaration :meth:`to_metadata` wrote; missing keys are refused."""
        missing = sorted(set(cls().to_metadata()) - set(values))
        if missing:
            raise InvalidInputError(f"the decoder capabilities metadata lacks {missing}: export the model again with this finesam")
        return cls(
            prompts=frozenset(values["prompts"]), multimask=bool(values["multimask"]),
            output_modes=tuple(values["output_modes"]), output_size=int(values["output_size"]),
            corrects_clicks=bool(values["corrects_clicks"]), encoder_features=frozenset(values["encoder_features"]),
        )

    def check_mode(self, mode: OutputMode) -> None:
        """Raise ``ValueError`` for an HQ output mode this decoder does not have."""
        if mode.hq is not None and mode.hq not in self.output_modes:
            raise InvalidInputError(
                f"hq_output={mode.hq!r} / hq_token_only apply to HQ-SAM models; this model has no HQ token"
                + ("" if self.output_size == 256 else " (it returns its high-resolution mask)")
                + ". Load an hq_* model or leave the option out."
            )


@dataclass(frozen=True)
class CorrectionState:
    """What a prediction keeps so that clicks can correct it without decoding again.

    object_embedding: (B, 32, 256, 256); hyper: (B, 1, 32) HQ hypernetwork token;
    rgb: (1 or B, 8, 1024, 1024) RGB embedding of the image; low_res: (B, 1, 256, 256)
    stage-1 logits; scores: (B, 1).
    """

    object_embedding: torch.Tensor
    hyper: torch.Tensor
    rgb: torch.Tensor
    low_res: torch.Tensor
    scores: torch.Tensor


@dataclass(frozen=True)
class DecoderOutput:
    """One decoder pass for B prompts.

    logits: (B, K, S, S) mask logits, S = the decoder's ``output_size``; threshold at 0.
    scores: (B, K) predicted mask quality (SAM's IoU head).
    low_res: (B, K, 256, 256) the 256x256 logits of the same masks as SAM's decoder makes
        them: equal to ``logits`` for 256 decoders; for a high-resolution decoder the stage-1
        logits its 1024 head refines (after a correction too: clicks act after stage 1).
        What ``mask_input`` takes.
    sam_logits, sam_scores: (B, 4, 256, 256) and (B, 4), every SAM token's output (token 0 the
        single-mask one), for training and analysis; None after a correction.
    hq_logits: (B, 1, 256, 256) the HQ token's logits (HQ and Pi decoders), else None.
    state: what ``correct`` needs (decoders that correct clicks), else None.
    """

    logits: torch.Tensor
    scores: torch.Tensor
    low_res: torch.Tensor
    sam_logits: torch.Tensor | None = None
    sam_scores: torch.Tensor | None = None
    hq_logits: torch.Tensor | None = None
    state: CorrectionState | None = None


@runtime_checkable
class MaskDecoderInterface(Protocol):
    """What :class:`~finesam.modeling.sam.Sam` needs of its ``mask_decoder`` (any ``nn.Module``
    with these members; no base class to inherit).

    capabilities: what it accepts and returns; generic code reads only this.
    official_prefixes: (official key prefix, module key prefix) pairs under ``mask_decoder.``
        where its state dict names differ from the official checkpoints'.
    new_parts: its submodules added over SAM's decoder (what training on a frozen SAM learns,
        what ``init_missing`` may leave fresh).
    """

    capabilities: ClassVar[DecoderCapabilities]
    official_prefixes: ClassVar[tuple[tuple[str, str], ...]]
    new_parts: ClassVar[tuple[str, ...]]

    def __call__(self, features: "ImageFeatures", image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                 mode: OutputMode = ...) -> DecoderOutput:
        """B prompts on the image features: features.embedding (B_img, 256, 64, 64), image_pe
        (1, 256, 64, 64), sparse (B, N, 256) and dense (B, 256, 64, 64) prompt embeddings ->
        :class:`DecoderOutput` in ``mode`` (checked with ``capabilities.check_mode``)."""
        ...


@runtime_checkable
class ClickCorrectingDecoder(MaskDecoderInterface, Protocol):
    """A decoder that declares ``corrects_clicks``: it also corrects an earlier prediction."""

    def correct(self, state: CorrectionState, points: torch.Tensor, flags: torch.Tensor,
                padding: torch.Tensor | None = None) -> DecoderOutput:
        """points (B, N, 2) in [0, 1] of the padded frame, flags (B, N) 1 foreground / 0
        background, padding (B, N) True for unused slots -> corrected :class:`DecoderOutput`."""
        ...


def broadcast_to_prompts(image_tensor: torch.Tensor, prompts: int) -> torch.Tensor:
    """Map per-image tensors (B_img, ...) onto B prompts: one image for all, or one per prompt."""
    if image_tensor.shape[0] == prompts:
        return image_tensor
    if image_tensor.shape[0] == 1:
        return image_tensor.expand(prompts, *image_tensor.shape[1:])
    raise InvalidInputError(
        f"{image_tensor.shape[0]} images for {prompts} prompts: pass one image, or one image per prompt"
    )


def hypernetwork_product(hyper_in: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Per-token dot products: hyper_in (B, K, C) x feature (B, C, H, W) -> (B, K, H, W)."""
    batch, channels, height, width = feature.shape
    return (hyper_in @ feature.reshape(batch, channels, height * width)).reshape(batch, -1, height, width)


def select_by_iou(masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per prompt, the multimask output (tokens 1..3) with the highest predicted IoU.

    masks: (B, 4, H, W), iou: (B, 4) -> (B, 1, H, W), (B, 1).
    """
    best_iou, best = iou[:, 1:4].max(dim=1)
    chosen = masks[:, 1:4][torch.arange(masks.shape[0], device=masks.device), best]
    return chosen.unsqueeze(1), best_iou.unsqueeze(1)


def is_official_call(args: tuple, kwargs: dict) -> bool:
    """Whether a decoder was called the official way (image embeddings as a tensor, the
    official keywords) rather than finesam's (an :class:`ImageFeatures` first)."""
    first = args[0] if args else kwargs.get("features")
    return not isinstance(first, ImageFeatures)
