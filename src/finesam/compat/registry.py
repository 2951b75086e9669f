"""Official-package registries (``sam_model_registry``) built from :mod:`finesam.registry`."""

from __future__ import annotations

import os
from typing import Callable

from ..loading import load
from ..modeling.sam import Sam
from ..registry import REGISTRY


def _builder(name: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None, **kwargs) -> Sam:
        """``checkpoint=None`` gives seeded random weights, as the official builders give random ones."""
        if checkpoint is None:
            return load(name, random_weights=True, **kwargs)
        return load(name, checkpoint, **kwargs)

    build.__name__ = f"build_{name}"
    return build


def official_registry(package: str) -> dict[str, Callable[..., Sam]]:
    """{official registry key: builder} for the models registered under ``package`` (e.g.
    ``"segment_anything"``, ``"segment_anything_hq"``, ``"segment_anything_hq.baseline"``).
    Builders take ``checkpoint`` (the official file) and :func:`finesam.load`'s options."""
    return {key: _builder(spec.name) for spec in REGISTRY.values() for pkg, key in spec.official_names if pkg == package}
