"""The one device resolver: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked against
what this machine has before any work."""

from __future__ import annotations

import re

import torch

from .errors import InvalidInputError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``device``: ``auto`` (or None) picks CUDA, then MPS, then the CPU.

    Raises :class:`~finesam.errors.InvalidInputError` for an unknown name or a device this
    machine does not have (e.g. ``cuda`` without a GPU, ``cuda:3`` with two GPUs).
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    text = str(device).strip().lower() if isinstance(device, (str, torch.device)) else None
    if text is None or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        raise InvalidInputError(f"unknown device {device!r}: use {DEVICE_CHOICES}")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInputError(f"device {text!r} asked for, but this machine has no CUDA GPU: use `device` cpu or auto",
                                    parameters=("device",))
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise InvalidInputError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if text == "mps" and not _mps_available():
        raise InvalidInputError("device 'mps' asked for, but Apple's MPS is not available here: use `device` cpu or auto",
                                parameters=("device",))
    return torch.device(text)
