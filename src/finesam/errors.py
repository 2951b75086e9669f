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


class UnknownModelError(FinesamError, KeyError):
    """A model name that is not registered (a ``KeyError``); the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def one_line(error: BaseException) -> str:
    """An error's message on one line (the command line prints errors as one line)."""
    return "; ".join(part.strip() for part in str(error).splitlines() if part.strip())


def describe_error(error: BaseException) -> str:
    """``TypeName: message`` (just the type name when the message is empty), for messages that
    wrap a library's error (PIL's, the operating system's)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
