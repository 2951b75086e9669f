"""The errors finesam raises on purpose. Each message names the argument (or file) and what is
allowed; the command line prints it as one line and exits with code 2."""

from __future__ import annotations

from typing import Mapping, Sequence


class FinesamError(Exception):
    """Base of every error finesam raises on purpose."""


class InvalidInputError(FinesamError, ValueError):
    """An argument, prompt, image, path or setting that finesam refuses (a ``ValueError``).

    A message about parameters marks each as ```name``` and lists it in ``parameters``: the
    message reads ``name`` (the Python parameter), and the command line shows the option that
    sets it instead (``finesam.cli`` maps parameters to options)::

        InvalidInputError(f"`epochs` must be a positive integer, got {epochs}", parameters=("epochs",))
        # str(): "epochs must be a positive integer, got 0"; finesam train: "--epochs must be ..."
    """

    def __init__(self, message: str = "", *args, parameters: Sequence[str] = ()) -> None:
        self.template = message
        self.parameters = tuple(parameters)
        super().__init__(name_parameters(message, {name: name for name in self.parameters}), *args)


def name_parameters(template: str, names: Mapping[str, str]) -> str:
    """``template`` with each ```parameter``` of ``names`` replaced by its name there."""
    for parameter, name in names.items():
        template = template.replace(f"`{parameter}`", name)
    return template


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
