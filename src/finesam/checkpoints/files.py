"""Reading, checking, key-mapping and writing state dicts (official ``.pth``/``.pt`` and ``.safetensors``);
written through :func:`finesam.outputs.write_atomically`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..errors import FinesamError
from ..outputs import write_atomically


class CheckpointError(FinesamError, ValueError):
    """A checkpoint file that cannot be used for the requested model."""


class CheckpointNotFoundError(FinesamError, FileNotFoundError):
    """No checkpoint file is available locally and it could not be downloaded."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt`` (safely, ``weights_only=True``) or ``.safetensors`` state dict.

    A ``{'model_state_dict': ...}`` wrapper (Pi-SAM's format) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for damaged files
        raise CheckpointError(
            f"could not read checkpoint {str(path)!r} ({type(error).__name__}: {error}). The file is "
            "damaged or truncated (an interrupted download?) or not a PyTorch/safetensors state dict: "
            "delete it and fetch it again."
        ) from error
    if isinstance(state, dict) and "model_state_dict" in state and isinstance(state["model_state_dict"], dict):
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a flat state dict of tensors")
    return state


def write_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a flat state dict atomically (temporary file + rename): ``.safetensors`` or a
    ``torch.save`` file (``.pth``/``.pt``) that ``torch.load(weights_only=True)`` reads."""
    path = Path(path)
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise ValueError(f"checkpoint path {str(path)!r} must end in .pth, .pt or .safetensors")
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return write_atomically(path, lambda temporary: save_file(tensors, temporary))
    return write_atomically(path, lambda temporary: torch.save(tensors, temporary))


def save_atomically(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` atomically (:func:`finesam.outputs.write_atomically`)."""
    return write_atomically(Path(path), lambda temporary: torch.save(obj, temporary))


def _rename(state: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for source, target in pairs:
            if key.startswith(source):
                key = target + key[len(source):]
                break
        renamed[key] = value
    return renamed


def from_official_keys(state: Mapping[str, torch.Tensor], prefixes: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Official key names -> a model's ``state_dict`` names, by (official, model) prefix pairs.
    Keys already in the model's names pass unchanged."""
    return _rename(state, prefixes)


def to_official_keys(state: Mapping[str, torch.Tensor], prefixes: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """A model's ``state_dict`` names -> the official key names (inverse of :func:`from_official_keys`)."""
    return _rename(state, [(ours, official) for official, ours in prefixes])


def merge_decoder_file(
    sam_state: Mapping[str, torch.Tensor], decoder_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One state dict from an official SAM file (its encoder and prompt encoder) and a
    decoder-only file (keys without prefix, or with ``mask_decoder.``): HQ-SAM's ``epoch_N.pth``
    or Pi-SAM's decoder file. Done in the official key space: every ``mask_decoder.*`` key of
    the SAM file is replaced by the decoder file's (SAM's decoder parts included)."""
    merged = {k: v for k, v in sam_state.items() if k.startswith(("image_encoder.", "prompt_encoder."))}
    for key, value in decoder_state.items():
        merged[key if key.startswith("mask_decoder.") else f"mask_decoder.{key}"] = value
    return merged


def check_decoder_file(
    expected: Mapping[str, torch.Tensor],
    decoder_state: Mapping[str, torch.Tensor],
    model_name: str,
    source: str,
    kept_from_build: tuple[str, ...] = (),
    describe: Callable[[Mapping[str, torch.Tensor]], str] | None = None,
) -> None:
    """Raise :class:`CheckpointError` unless a decoder-only file (official names, keys with or
    without ``mask_decoder.``) holds exactly the ``mask_decoder.*`` keys and shapes of ``expected``
    (official names), apart from the ``kept_from_build`` prefixes, which no official file stores.

    Checked before the merge, so that the message names the decoder file, not the pair.
    """
    if any(key.startswith(("image_encoder.", "prompt_encoder.")) for key in decoder_state):
        raise CheckpointError(
            f"decoder file {source} is a whole-model file (it holds image_encoder.* keys), not a decoder-only file: "
            "pass it as the checkpoint, without a decoder file"
        )
    keys = {key if key.startswith("mask_decoder.") else f"mask_decoder.{key}": value for key, value in decoder_state.items()}
    wanted = {key: value for key, value in expected.items() if key.startswith("mask_decoder.") and not key.startswith(kept_from_build)}
    missing = [key for key in wanted if key not in keys]
    unexpected = [key for key in keys if key not in wanted]
    mismatched = [f"{key}: file {tuple(keys[key].shape)} vs model {tuple(wanted[key].shape)}"
                  for key in wanted if key in keys and keys[key].shape != wanted[key].shape]
    if missing or unexpected or mismatched:
        looks_like = f" (it looks like {describe(decoder_state)})" if describe is not None else ""
        problems = "; ".join(
            f"{title}: " + ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")
            for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if items
        )
        raise CheckpointError(
            f"decoder file {source} does not fit the decoder of {model_name}{looks_like}: {problems}. "
            f"Pass the decoder trained for this model's backbone (and the SAM file of that backbone as the checkpoint)."
        )


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    model_name: str,
    source: str,
    allow_missing: tuple[str, ...] = (),
    describe: Callable[[Mapping[str, torch.Tensor]], str] | None = None,
) -> list[str]:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the keys and shapes of
    ``expected`` (both in the same, official, key names).

    Keys under a prefix in ``allow_missing`` may be absent; returns those missing keys.
    ``describe`` names the model a refused file looks like.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    allowed = [k for k in missing if k.startswith(allow_missing)] if allow_missing else []
    hard_missing = [k for k in missing if k not in allowed]
    if hard_missing or unexpected or mismatched:
        looks_like = f": it looks like {describe(state)}" if describe is not None else ""
        lines = [f"checkpoint {source} does not fit model {model_name}{looks_like}."]
        for title, items in (("missing keys", hard_missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"{title}: {shown}")
        lines.append("Pass the file that belongs to this model, or load it with the model name it was saved from.")
        raise CheckpointError("\n".join(lines))
    return allowed
