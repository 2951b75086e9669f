"""Official-package registries (``sam_model_registry``) built from :mod:`finesam.registry`."""

from __future__ import annotations

import os
from typing import Callable

from ..loading import load
from ..modeling.sam import Sam
from ..registry import REGISTRY


def freeze_all_but_new_parts(model: Sam) -> Sam:
    """``requires_grad=False`` on every parameter outside the decoder parts the model adds over
    SAM (``mask_decoder.new_parts``), as ``segment_anything_hq``'s builders freeze all but the
    HQ modules (25 parameter tensors stay trainable). Returns ``model``."""
    trainable = tuple(f"mask_decoder.{part}." for part in model.mask_decoder.new_parts)
    for name, parameter in model.named_parameters():
        if not name.startswith(trainable):
            parameter.requires_grad_(False)
    return model


def _builder(name: str, freeze: bool) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None, **kwargs) -> Sam:
        """``checkpoint=None`` gives seeded random weights, as the official builders give random ones."""
        if checkpoint is None:
            model = load(name, random_weights=True, **kwargs)
        else:
            model = load(name, checkpoint, **kwargs)
        return freeze_all_but_new_parts(model) if freeze else model

    build.__name__ = f"build_{name}"
    return build


def official_registry(package: str, freeze: bool = False) -> dict[str, Callable[..., Sam]]:
    """{official registry key: builder} for the models registered under ``package`` (e.g.
    ``"segment_anything"``, ``"segment_anything_hq"``, ``"segment_anything_hq.baseline"``).
    Builders take ``checkpoint`` (the official file) and :func:`finesam.load`'s options;
    ``freeze``: the builders leave only the parts the model adds over SAM trainable
    (``segment_anything_hq``'s builders)."""
    return {key: _builder(spec.name, freeze) for spec in REGISTRY.values() for pkg, key in spec.official_names if pkg == package}
