"""The errors finesam raises on purpose. Each message names the argument (or file) and what is
allowed; the command line prints it as one line and exits with code 2."""

from __future__ import annotations


class FinesamError(Exception):
    """Base of every error finesam raises on purpose."""


class InvalidInputError(FinesamError, ValueError):
    """An argument, prompt, image, path or setting that finesam refuses (a ``ValueError``)."""


class CallOrderError(FinesamError, RuntimeError):
    """A call that needs an earlier one (``predict`` before ``set_image``, ``correct`` before ``predict``)."""


class NothingToUndoError(FinesamError, IndexError):
    """``undo`` with no step left."""
