"""The papers' training recipes: which parameters learn, from which prompts, against which outputs,
with the official optimiser and schedule defaults (anchors 2.6 and 3.6). Every default can be
overridden on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError
from ..modeling.decoder_api import DecoderCapabilities


@dataclass(frozen=True)
class Recipe:
    """One training recipe.

    Attributes:
        name: ``hq``, ``pi-stage1``, ``pi-stage2`` or ``distill``.
        parts: the decoder parts that learn, among those the decoder declares in ``new_parts``.
        stage: what is supervised: ``hq`` (the HQ-only 256x256 logits), ``high_res`` (the stage-1
            256x256 and 1024x1024 logits), ``interactor`` (the 1024x1024 logits after simulated
            correction clicks), ``distill`` (the image embedding, against a teacher's: see
            :mod:`finesam.train.distill`).
        prompt_kinds: prompt kinds drawn per sample (one each).
        scale_range: large-scale-jitter range; ``truncate_to_uint8``: the HQ pipeline's uint8 cast.
        lr, epochs, batch_size: official defaults (batch per process).
        schedule: ``step`` (x ``lr_gamma`` every ``lr_drop_epochs``) or ``cosine`` (over ``epochs``).
        encoder_prefixes: ``state_dict`` prefixes that learn instead of decoder parts (distillation).
    """

    name: str
    parts: tuple[str, ...]
    stage: str
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

    def check_model(self, model_name: str, capabilities: DecoderCapabilities, new_parts: tuple[str, ...]) -> None:
        """Refuse a model whose decoder lacks what this recipe trains (asked of its declaration)."""
        missing = sorted(set(self.parts) - set(new_parts))
        if missing:
            raise InvalidInputError(
                f"--recipe {self.name} trains the decoder part(s) {', '.join(missing)}, which {model_name} does not have; "
                f"use {'an hq_* model' if self.name == 'hq' else 'a pi_* model'} (see `finesam train --help`)"
            )
        if self.stage == "interactor" and not capabilities.corrects_clicks:
            raise InvalidInputError(f"--recipe {self.name} trains click correction, which {model_name} does not do")

    @property
    def distills(self) -> bool:
        """Encoder distillation from a teacher (:mod:`finesam.train.distill`), not decoder training."""
        return self.stage == "distill"

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
            "hq", ("hq",), "hq", ("box", "point", "noise_mask"), (0.1, 2.0), True,
            lr=1e-3, epochs=12, batch_size=4, schedule="step", lr_drop_epochs=10,
            description="HQ-SAM: the HQ token, its MLP and the global-local fusion on a frozen SAM",
        ),
        Recipe(
            "pi-stage1", ("hq", "high_res"), "high_res", ("box",), (0.8, 1.6), False,
            lr=1e-3, epochs=100, batch_size=4, schedule="cosine",
            description="Pi-SAM stage 1: HQ-like modules, Object Embedder and the 1024x1024 head",
        ),
        Recipe(
            "pi-stage2", ("interactor",), "interactor", ("box",), (0.8, 1.6), False,
            lr=1e-3, epochs=100, batch_size=4, schedule="cosine",
            description="Pi-SAM stage 2: the Precise Interactor on the stage-1 model, from simulated clicks",
        ),
        Recipe(
            "distill", (), "distill", (), (1.0, 1.0), True,
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
