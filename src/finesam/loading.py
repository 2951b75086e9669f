"""``finesam.load`` and ``finesam.save``: a registered model with its weights, strictly."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .checkpoints import (
    CheckpointError,
    check_decoder_file,
    check_state_dict,
    find_checkpoint,
    from_official_keys,
    merge_decoder_file,
    read_state_dict,
    to_official_keys,
    write_state_dict,
)
from .devices import resolve_device
from .errors import InvalidInputError
from .modeling.sam import Sam
from .registry import ModelSpec, describe_checkpoint, get_spec

# The seed of random_weights=True (and --random-weights), so that every entry point builds the
# same model unless another seed is asked for.
RANDOM_WEIGHTS_SEED = 0


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matmuls and convolutions natively (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _warn_if_slow_dtype(dtype: torch.dtype, device: str | torch.device) -> None:
    # Without hardware support, oneDNN falls back to reference kernels: measured 10-20x slower.
    if dtype == torch.bfloat16 and torch.device(device).type == "cpu" and not cpu_has_native_bfloat16():
        warnings.warn(
            "dtype=torch.bfloat16 on a CPU without AVX512-BF16 or AMX: the image encoder will run "
            "emulated, many times slower than float32; use dtype=torch.float32 on this machine",
            stacklevel=3,
        )


def build_seeded(spec: ModelSpec, seed: int = RANDOM_WEIGHTS_SEED) -> Sam:
    """``spec.build()`` with every random draw from ``seed``; the caller's random state is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build()


# The early-feature width of an HQ decoder file (compress_vit_feat's first weight) names its backbone.
_HQ_BACKBONE_BY_WIDTH = {160: "TinyViT (hq_vit_tiny)", 768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H"}


def describe_decoder_file(state: dict[str, torch.Tensor]) -> str:
    """Which decoder a decoder-only state dict (official names, any prefix) looks like, for errors."""
    by_key = {key.removeprefix("mask_decoder."): value for key, value in state.items()}
    keys = set(by_key)
    if any(key.startswith("interact_2.") for key in keys):
        return "a Pi-SAM decoder file"
    early = by_key.get("compress_vit_feat.0.weight")
    if early is not None and early.ndim == 4:
        backbone = _HQ_BACKBONE_BY_WIDTH.get(int(early.shape[0]), f"a backbone of width {int(early.shape[0])}")
        return f"an HQ-SAM decoder for {backbone}"
    if "transformer.layers.0.self_attn.q_proj.weight" in keys:
        return "a plain SAM mask decoder (no HQ keys)"
    return "no known SAM-family decoder"


def _part_prefixes(model: Sam, parts: tuple[str, ...]) -> tuple[str, ...]:
    """Official key prefixes of the decoder ``parts`` (submodule names of ``model.mask_decoder``)."""
    ours = tuple(f"mask_decoder.{part}." for part in parts)
    mapped = tuple(official for official, mine in model.official_key_prefixes if mine.startswith(ours))
    return mapped + ours  # a decoder without a key map keeps its own names


def _init_missing_prefixes(model: Sam, spec: ModelSpec, init_missing: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """Official key prefixes of the decoder parts named by ``init_missing``."""
    if init_missing is None:
        return ()
    parts = (init_missing,) if isinstance(init_missing, str) else tuple(init_missing)
    new_parts = model.mask_decoder.new_parts
    if not parts or not set(parts) <= set(new_parts):
        choices = ", ".join(repr(p) for p in new_parts) or "none: its decoder is SAM's"
        raise InvalidInputError(
            f"init_missing={init_missing!r} is only valid for decoder parts that {spec.name} adds over SAM "
            f"({choices})"
        )
    return _part_prefixes(model, parts)


def load(
    name: str | ModelSpec,
    checkpoint: str | os.PathLike | None = None,
    *,
    decoder_checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
    seed: int | None = None,
    init_missing: str | tuple[str, ...] | None = None,
    download: bool = True,
) -> Sam:
    """Build model ``name`` and load its weights strictly.

    Args:
        name: a registered name (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``, ``mobile_sam``,
            ``hq_vit_b``, ``hq_vit_l``, ``hq_vit_h``, ``hq_vit_tiny``, ``pi_vit_b``,
            ``pi_vit_l``, ``pi_vit_h``, or one added with :func:`finesam.register_model`) or
            a :class:`ModelSpec`.
        checkpoint: an official ``.pth``/``.pt`` file, a ``.safetensors`` file, or a file
            written by :func:`save` or ``torch.save(model.state_dict())``. ``None`` looks in
            ``$FINESAM_CHECKPOINTS`` and ``~/.cache/finesam`` and downloads the official file
            (for Pi-SAM: the SAM file of the same backbone).
        decoder_checkpoint: a decoder-only file beside the SAM ``checkpoint``, in official key
            names without the ``mask_decoder.`` prefix: the official HQ-SAM training output
            (``epoch_N.pth``, the state dict of its ``MaskDecoderHQ``) or Pi-SAM's decoder file
            (``{'model_state_dict': ...}`` with 270 keys; its ``rgb_embed`` is not in it, see
            :class:`~finesam.registry.SamArchitecture`). Its keys replace every
            ``mask_decoder.*`` key of ``checkpoint`` (SAM's decoder parts included), as the
            official merge does. A whole finesam or official HQ/Pi file loads with
            ``checkpoint`` alone.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA, then MPS, then the
            CPU); a device this machine lacks is refused before any work.
        dtype: dtype of the image encoder (``torch.bfloat16`` is faster on GPUs and on CPUs
            with native bfloat16, AVX512-BF16 or AMX; elsewhere it is emulated and much slower,
            and a warning says so); the prompt encoder and decoders stay float32.
        random_weights: with no checkpoint, keep freshly initialised weights, drawn from
            ``seed`` (default :data:`RANDOM_WEIGHTS_SEED` = 0, as ``--random-weights``).
        seed: with ``random_weights`` or ``init_missing``, the seed of the fresh weights (the
            model is always built under its own generator: the caller's random state is
            neither used nor changed).
        init_missing: a decoder part (or parts) that the model adds over SAM, e.g. ``"hq"``: a
            plain SAM file may then lack those keys, which keep their fresh initialisation (to
            train them); a warning lists what was initialised.
    Returns:
        the model in eval mode on ``device``.
    """
    spec = get_spec(name)
    device = resolve_device(device)
    _warn_if_slow_dtype(dtype, device)
    if random_weights:
        if checkpoint is not None or decoder_checkpoint is not None:
            raise InvalidInputError("random_weights=True and a checkpoint exclude each other")
        model = build_seeded(spec, RANDOM_WEIGHTS_SEED if seed is None else seed)
        _init_missing_prefixes(model, spec, init_missing)
        model.image_encoder.to(dtype=dtype)
        return model.to(device).eval()
    if seed is not None and init_missing is None:
        raise InvalidInputError("seed applies to random_weights=True or init_missing only (the weights it draws)")
    model = build_seeded(spec, RANDOM_WEIGHTS_SEED if seed is None else seed)
    prefixes = model.official_key_prefixes
    allow = _init_missing_prefixes(model, spec, init_missing)
    if checkpoint is None:
        checkpoint = find_checkpoint(spec.name, spec.file, download=download)
    state = read_state_dict(checkpoint)
    source = repr(str(checkpoint))
    expected = model.official_state_dict()
    if decoder_checkpoint is not None:
        decoder_state = read_state_dict(decoder_checkpoint)
        check_decoder_file(expected, decoder_state, spec.name, repr(str(decoder_checkpoint)), spec.kept_from_build,
                           describe_decoder_file)
        state = merge_decoder_file(state, decoder_state)
        source = f"{source} + decoder {str(decoder_checkpoint)!r}"
        allow += spec.kept_from_build
    state = to_official_keys(from_official_keys(state, prefixes), prefixes)  # files in our own names too
    if spec.decoder_file and decoder_checkpoint is None and init_missing is None:
        added = _part_prefixes(model, model.mask_decoder.new_parts)
        if not any(k.startswith(added) and not k.startswith(spec.kept_from_build) for k in state):
            raise CheckpointError(
                f"{spec.name} needs its decoder file: pass decoder_checkpoint=PATH (the official decoder file) "
                f"beside the SAM checkpoint {source} (--decoder-checkpoint on the command line)"
            )
    initialised = check_state_dict(expected, state, spec.name, source, allow, describe_checkpoint)
    if initialised:
        state = {**expected, **state}
        if init_missing is not None:
            parts = "/".join((init_missing,) if isinstance(init_missing, str) else init_missing).upper()
            warnings.warn(
                f"{spec.name}: {len(initialised)} {parts} keys were not in {source} and keep their "
                f"fresh initialisation: {', '.join(initialised)}",
                stacklevel=2,
            )
    model.load_state_dict(from_official_keys(state, prefixes), strict=True)
    model.image_encoder.to(dtype=dtype)
    return model.to(device).eval()


def save(model: Sam, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights with the official key names (so that the official code and
    :func:`load` both read them), atomically; ``.pth``/``.pt`` or ``.safetensors``."""
    return write_state_dict(model.official_state_dict(), path)
