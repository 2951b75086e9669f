"""Optional dependencies: imported where a feature uses them, with a message naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import FinesamError

# module -> (pip package, finesam extra)
EXTRAS = {
    "skimage": ("scikit-image", "eval"),
}


class MissingExtraError(FinesamError, ImportError):
    """An optional package a feature needs is not installed."""


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError` saying what to
    install (the finesam ``extra`` that has it; by default the one :data:`EXTRAS` names)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package, default_extra = EXTRAS.get(module.split(".")[0], (module.split(".")[0], None))
        extra = extra or default_extra
        install = f"pip install 'finesam[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        raise MissingExtraError(f"{feature} needs the optional package {package!r}, which is not installed: {install}") from error
