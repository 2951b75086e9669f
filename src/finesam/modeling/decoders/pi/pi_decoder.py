"""Pi-SAM's decoder (official ``MaskDecoderAE``): SAM's decoder, the HQ part, the
high-resolution head and the Precise Interactor, composed."""

from __future__ import annotations

from typing import ClassVar

import torch

from ...contracts.decoder_api import CorrectionState, DecoderCapabilities, DecoderOutput, OutputMode
from ...contracts.features import ImageFeatures
from ..hq.hq_token import HQ_MODULES, HQTokenFusion
from ..sam.mask_decoder import SAM_MODULES, ComposedDecoder, MaskDecoder, prefixes
from .high_res_head import HIGH_RES_MODULES, HighResHead
from .object_embedder import OBJECT_DIM
from .pi_interactor import PreciseInteractor


class PiMaskDecoder(ComposedDecoder):
    """Box prompt -> 1024x1024 logits (B, 1, 1024, 1024) and the SAM IoU prediction of the
    single-mask token (B, 1) as score; clicks on wrongly predicted areas correct the object
    embedding through :meth:`correct`.

    Parts: ``sam`` (SAM's decoder), ``hq`` (HQ token and fusion), ``high_res``
    (:class:`HighResHead`), ``interactor`` (:class:`PreciseInteractor`); the official keys
    map onto them (``interact_2`` is the interactor). ``state_dict()`` and the attributes speak
    the official ``MaskDecoderAE`` names (:class:`~finesam.modeling.decoders.sam.mask_decoder.ComposedDecoder`).
    """

    capabilities: ClassVar[DecoderCapabilities] = DecoderCapabilities(
        prompts=frozenset({"boxes"}),
        multimask=False,
        output_size=1024,
        corrects_clicks=True,
        encoder_features=frozenset({"early", "image"}),
    )
    official_prefixes: ClassVar[tuple[tuple[str, str], ...]] = (
        prefixes(SAM_MODULES, "sam") + prefixes(HQ_MODULES, "hq") + prefixes(HIGH_RES_MODULES, "high_res")
        + (("interact_2.", "interactor."),)
    )
    new_parts: ClassVar[tuple[str, ...]] = ("hq", "high_res", "interactor")

    def __init__(
        self,
        *,
        vit_dim: int,
        sam: MaskDecoder | None = None,
        hq: HQTokenFusion | None = None,
        high_res: HighResHead | None = None,
        interactor: PreciseInteractor | None = None,
    ) -> None:
        super().__init__()
        self.sam = sam if sam is not None else MaskDecoder()
        self.hq = hq if hq is not None else HQTokenFusion(vit_dim, self.sam.transformer_dim)
        self.high_res = high_res if high_res is not None else HighResHead(OBJECT_DIM)
        self.interactor = interactor if interactor is not None else PreciseInteractor(OBJECT_DIM)

    def forward(
        self,
        features: ImageFeatures,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mode: OutputMode = OutputMode(),
    ) -> DecoderOutput:
        """B box prompts -> logits (B, 1, 1024, 1024), scores (B, 1), stage-1 logits
        (B, 1, 256, 256) as ``low_res``, and the state :meth:`correct` refines."""
        self.capabilities.check_mode(mode)
        stage = self.hq.run_with(self.sam, features.embedding, image_pe, sparse, dense)
        fused = self.hq.fused_feature(stage.upscaled, features)
        low_res, object_embedding = self.high_res.object_embedding(fused, stage.hyper)
        scores = stage.iou[:, :1]
        state = CorrectionState(object_embedding, stage.hyper, self.high_res.rgb(features), low_res, scores)
        logits = self.high_res.logits(object_embedding, state.rgb)
        return DecoderOutput(logits, scores, low_res, stage.sam_masks, stage.iou, hq_logits=low_res, state=state)

    def correct(
        self, state: CorrectionState, points: torch.Tensor, flags: torch.Tensor, padding: torch.Tensor | None = None
    ) -> DecoderOutput:
        """Apply the Precise Interactor to an earlier prediction's state.

        points: (B, N, 2) clicks, (x, y) normalised to [0, 1] over the padded 1024 frame;
        flags: (B, N) 1 foreground / 0 background; padding: (B, N) True for unused slots.
        Returns corrected logits (B, 1, 1024, 1024); scores and ``low_res`` are the state's
        (the interactor acts after stage 1).
        """
        corrected = self.interactor(state.object_embedding, state.hyper, points, flags, padding)
        logits = self.high_res.logits(corrected, state.rgb)
        return DecoderOutput(logits, state.scores, state.low_res, state=state)
