"""The papers' training recipes: which parameters learn, from which prompts, against which outputs,
with the official optimiser and schedule defaults (anchors 2.6 and 3.6). Every default can be
overridden on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError
from ..modeling.contracts.decoder_api import DecoderCapabilities


#: outputs a recipe can supervise (attributes of :class:`DecoderOutput`, or the image embedding)
SUPERVISABLE_OUTPUTS = ("hq_logits", "low_res", "logits", "embedding")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """One training recipe, built with keywords.

    Attributes:
        name: ``hq``, ``pi-stage1``, ``pi-stage2`` or ``distill``.
        parts: the decoder parts that learn, among those the decoder declares in ``new_parts``.
        supervised: the :class:`~finesam.modeling.contracts.decoder_api.DecoderOutput` fields the loss
            reads, each against the 1024x1024 target: ``hq_logits`` (HQ's 256x256 HQ-only
            logits), ``low_res`` (256x256) and/or ``logits`` (1024x1024); or ``embedding``, the
            image encoder's (B, 256, 64, 64) output against a teacher's (distillation, see
            :mod:`finesam.train.distill`).
        hq_output: the decoder's HQ output mode (``"hq_only"`` for HQ-SAM's HQ-token logits;
            ``None``: the decoder's default), in training and validation alike.
        corrects_clicks: the supervised output comes after simulated correction clicks on the
            first prediction's errors (Pi-SAM stage 2); the loss is then normalised by the
            number of samples with an error to click on, else by the batch size.
        prompt_kinds: prompt kinds drawn per sample (one each).
        scale_range: large-scale-jitter range; ``truncate_to_uint8``: the HQ pipeline's uint8 cast.
        lr, epochs, batch_size: official defaults (batch per process).
        schedule: ``step`` (x ``lr_gamma`` every ``lr_drop_epochs``) or ``cosine`` (over ``epochs``).
        encoder_prefixes: ``state_dict`` prefixes that learn instead of decoder parts (distillation).
    """

    name: str
    parts: tuple[str, ...]
    supervised: tuple[str, ...]
    hq_output: str | None = None
    corrects_clicks: bool = False
    prompt_kinds: tuple[str, ...]
    scale_range: tuple[float, float]
    truncate_to_uint8: bool
    lr: float
    epochs: int
    batch_size: int
    schedule: str
    lr_drop_epochs: int = 10
    lr_gamma: float = 0.1
    description: str = ""
    encoder_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [output for output in self.supervised if output not in SUPERVISABLE_OUTPUTS]
        if not self.supervised or unknown:
            raise InvalidInputError(f"recipe {self.name!r}: supervised must name outputs among {SUPERVISABLE_OUTPUTS}, got {self.supervised}")

    def check_model(self, model_name: str, capabilities: DecoderCapabilities, new_parts: tuple[str, ...]) -> None:
        """Refuse a model whose decoder lacks what this recipe trains (asked of its declaration)."""
        missing = sorted(set(self.parts) - set(new_parts))
        if missing:
            raise InvalidInputError(
                f"`recipe` {self.name} trains the decoder part(s) {', '.join(missing)}, which {model_name} does not have; "
                f"use {'an hq_* model' if self.name == 'hq' else 'a pi_* model'} (see `finesam train --help`)",
                parameters=("recipe",))
        if self.corrects_clicks and not capabilities.corrects_clicks:
            raise InvalidInputError(f"`recipe` {self.name} trains click correction, which {model_name} does not do",
                                    parameters=("recipe",))

    @property
    def distills(self) -> bool:
        """Encoder distillation from a teacher (:mod:`finesam.train.distill`), not decoder training."""
        return self.supervised == ("embedding",)

    @property
    def trainable(self) -> tuple[str, ...]:
        """``state_dict`` key prefixes of the parameters that learn."""
        if self.encoder_prefixes:
            return self.encoder_prefixes
        return tuple(f"mask_decoder.{part}." for part in self.parts)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="hq", parts=("hq",), supervised=("hq_logits",), hq_output="hq_only",
            prompt_kinds=("box", "point", "noise_mask"), scale_range=(0.1, 2.0), truncate_to_uint8=True,
            lr=1e-3, epochs=12, batch_size=4, schedule="step", lr_drop_epochs=10,
            description="HQ-SAM: the HQ token, its MLP and the global-local fusion on a frozen SAM",
        ),
        Recipe(
            name="pi-stage1", parts=("hq", "high_res"), supervised=("low_res", "logits"),
            prompt_kinds=("box",), scale_range=(0.8, 1.6), truncate_to_uint8=False,
            lr=1e-3, epochs=100, batch_size=4, schedule="cosine",
            description="Pi-SAM stage 1: HQ-like modules, Object Embedder and the 1024x1024 head",
        ),
        Recipe(
            name="pi-stage2", parts=("interactor",), supervised=("logits",), corrects_clicks=True,
            prompt_kinds=("box",), scale_range=(0.8, 1.6), truncate_to_uint8=False,
            lr=1e-3, epochs=100, batch_size=4, schedule="cosine",
            description="Pi-SAM stage 2: the Precise Interactor on the stage-1 model, from simulated clicks",
        ),
        Recipe(
            name="distill", parts=(), supervised=("embedding",),
            prompt_kinds=(), scale_range=(1.0, 1.0), truncate_to_uint8=True,
            lr=1e-3, epochs=8, batch_size=4, schedule="cosine",
            description="MobileSAM: a TinyViT image encoder learns a SAM teacher's embeddings (MSE); decoder copied from the teacher",
            # TinyViT's ImageNet classifier (norm_head, head) is outside the graph
            encoder_prefixes=("image_encoder.patch_embed.", "image_encoder.layers.", "image_encoder.neck."),
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise InvalidInputError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None
