"""Model registry, checkpoint formats, type detection and strict loading.

One registry maps a model name to its encoder configuration, decoder class, and the official
checkpoint file (name, URL, size, sha256). Nothing else in the package branches on model names.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .modeling.hq_decoder import HQ_MODULES, HQMaskDecoder
from .modeling.hr_decoder import HRMaskDecoder, rgb_embedding
from .modeling.image_encoder import ImageEncoderViT
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.sam import Sam
from .modeling.tiny_vit import TinyViT


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used for the requested model."""


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint file is available locally and it could not be downloaded."""


@dataclass(frozen=True)
class CheckpointFile:
    """An official weights file: where it comes from and how to recognise it."""

    filename: str
    url: str
    size: int
    sha256: str  # full digest, or the published prefix where only that is known

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.sha256)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one named model and load its official file."""

    name: str
    description: str
    encoder: str  # "vit" or "tiny_vit"
    encoder_config: Mapping[str, Any]
    decoder: str  # "sam", "hq" or "pi"
    file: CheckpointFile
    official_keys: tuple[str, ...] = ()  # registry keys of the official packages
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_encoder(self, **overrides: Any) -> "ModelSpec":
        """A variant with other encoder settings (e.g. ``depth`` and ``global_attn_indexes``)."""
        return replace(self, encoder_config={**self.encoder_config, **overrides})

    @property
    def early_dim(self) -> int:
        if self.encoder == "vit":
            return self.encoder_config["embed_dim"]
        return self.encoder_config.get("embed_dims", (64, 128, 160, 320))[2]

    def _build_encoders(self) -> tuple[nn.Module, PromptEncoder]:
        if self.encoder == "vit":
            return ImageEncoderViT(**self.encoder_config), PromptEncoder()
        return TinyViT(**self.encoder_config), PromptEncoder()

    def build(self) -> Sam:
        """A model with freshly initialised (random) weights, in eval mode.

        Pi-SAM: the official ``rgb_embed`` is never trained nor saved; the official test run
        draws it right after building the ViT and the prompt encoder under
        ``torch.manual_seed(42)``. We build in that order under that seed (without touching the
        caller's random state), so an official decoder file gets exactly those values.
        """
        if self.decoder == "pi":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(PI_RGB_SEED)
                image_encoder, prompt_encoder = self._build_encoders()
                rgb_embed = rgb_embedding()
            decoder: MaskDecoder = HRMaskDecoder(vit_dim=self.early_dim, rgb_embed=rgb_embed)
        else:
            image_encoder, prompt_encoder = self._build_encoders()
            decoder = HQMaskDecoder(vit_dim=self.early_dim) if self.decoder == "hq" else MaskDecoder()
        return Sam(image_encoder, prompt_encoder, decoder).eval()


_VIT = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
PI_RGB_SEED = 42
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_HQ_URL = "https://huggingface.co/lkeab/hq-sam/resolve/main/"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("sam_vit_b", "SAM ViT-B", "vit", _VIT["vit_b"], "sam",
                  CheckpointFile("sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth", 375_042_383,
                                 "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"), ("vit_b",)),
        ModelSpec("sam_vit_l", "SAM ViT-L", "vit", _VIT["vit_l"], "sam",
                  CheckpointFile("sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth", 1_249_524_607,
                                 "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"), ("vit_l",)),
        ModelSpec("sam_vit_h", "SAM ViT-H", "vit", _VIT["vit_h"], "sam",
                  CheckpointFile("sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth", 2_564_550_879,
                                 "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"), ("vit_h", "default")),
        ModelSpec("mobile_sam", "MobileSAM (TinyViT-5M)", "tiny_vit", {}, "sam",
                  CheckpointFile("mobile_sam.pt",
                                 "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                                 40_728_226, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"),
                  ("vit_t",)),
        ModelSpec("hq_vit_b", "HQ-SAM ViT-B", "vit", _VIT["vit_b"], "hq",
                  CheckpointFile("sam_hq_vit_b.pth", _HQ_URL + "sam_hq_vit_b.pth", 379_335_069, "14a9d662")),
        ModelSpec("hq_vit_l", "HQ-SAM ViT-L", "vit", _VIT["vit_l"], "hq",
                  CheckpointFile("sam_hq_vit_l.pth", _HQ_URL + "sam_hq_vit_l.pth", 1_254_865_805, "e1a6c385")),
        ModelSpec("hq_vit_h", "HQ-SAM ViT-H", "vit", _VIT["vit_h"], "hq",
                  CheckpointFile("sam_hq_vit_h.pth", _HQ_URL + "sam_hq_vit_h.pth", 2_570_940_653,
                                 "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35")),
        ModelSpec("hq_vit_tiny", "Light HQ-SAM (TinyViT-5M)", "tiny_vit", {}, "hq",
                  CheckpointFile("sam_hq_vit_tiny.pth", _HQ_URL + "sam_hq_vit_tiny.pth", 42_526_881,
                                 "0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196")),
    ]
}
# Pi-SAM: the encoder weights are the official SAM file's; the decoder comes in its own file
# (released on Google Drive only, so it has no URL here: pass decoder_checkpoint=).
REGISTRY.update({
    f"pi_{size}": replace(REGISTRY[f"sam_{size}"], name=f"pi_{size}", description=f"Pi-SAM {size[-1].upper()}",
                          decoder="pi", official_keys=())
    for size in ("vit_b", "vit_l", "vit_h")
})


def get_spec(name: str | ModelSpec) -> ModelSpec:
    if isinstance(name, ModelSpec):
        return name
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
    return REGISTRY[name]


# --- reading files --------------------------------------------------------------------------
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


def describe_checkpoint(state: Mapping[str, torch.Tensor]) -> str:
    """Human description of which model a state dict looks like (used in error messages)."""
    keys = set(state)
    has_hq = any(k.startswith("mask_decoder.hf_token") for k in keys)
    if "transformer.layers.0.self_attn.q_proj.weight" in keys:
        if any(k.startswith("interact_2.") for k in keys):
            return "a Pi-SAM decoder file (no SAM encoder weights)"
        return "a mask-decoder-only file (keys without the 'mask_decoder.' prefix)"
    if "image_encoder.patch_embed.seq.0.c.weight" in keys:
        return "Light HQ-SAM (hq_vit_tiny)" if has_hq else "MobileSAM (mobile_sam)"
    if "image_encoder.pos_embed" in keys:
        width = state["image_encoder.pos_embed"].shape[-1]
        depth = len({m.group(1) for k in keys if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
        for spec in REGISTRY.values():
            if spec.encoder == "vit" and spec.decoder != "pi" and spec.encoder_config["embed_dim"] == width \
                    and spec.encoder_config["depth"] == depth and (spec.decoder == "hq") == has_hq:
                return f"{spec.description} ({spec.name})"
        if any(k.startswith("mask_decoder.interact_2.") for k in keys):
            return f"a finesam Pi-SAM checkpoint (ViT width {width}, {depth} blocks)"
        family = "HQ-SAM" if has_hq else "SAM"
        return f"a {family} ViT of width {width} with {depth} blocks"
    return "no known SAM-family model"


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], model_name: str, source: str, allow_missing: tuple[str, ...] = ()
) -> list[str]:
    """Raise :class:`CheckpointError` unless ``state`` fits ``model`` exactly.

    Keys under a prefix in ``allow_missing`` may be absent; returns the missing keys.
    """
    expected = model.state_dict()
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
        lines = [f"checkpoint {source} does not fit model {model_name}: it looks like {describe_checkpoint(state)}."]
        for title, items in (("missing keys", hard_missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"{title}: {shown}")
        lines.append("Pass the file that belongs to this model, or load it with the model name it was saved from.")
        raise CheckpointError("\n".join(lines))
    return allowed


# --- finding and downloading files ----------------------------------------------------------
def checkpoint_dirs() -> list[Path]:
    """Where checkpoints are looked for: ``$FINESAM_CHECKPOINTS`` (if set), then ``~/.cache/finesam``."""
    dirs = []
    if os.environ.get("FINESAM_CHECKPOINTS"):
        dirs.append(Path(os.environ["FINESAM_CHECKPOINTS"]).expanduser())
    dirs.append(Path("~/.cache/finesam").expanduser())
    return dirs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(file: CheckpointFile, target: Path) -> None:
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    with urllib.request.urlopen(file.url, timeout=30) as response, open(partial, "wb") as out, tqdm(
        total=file.size, unit="B", unit_scale=True, desc=file.filename
    ) as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            bar.update(len(chunk))
    digest = sha256_of(partial)
    if not file.matches(digest):
        partial.unlink()
        raise CheckpointError(f"downloaded {file.filename} has sha256 {digest}, expected {file.sha256}: not kept")
    partial.rename(target)


def find_checkpoint(spec: ModelSpec, download: bool = True) -> Path:
    """Local path of the official file of ``spec``, downloading it into the cache if allowed."""
    for directory in checkpoint_dirs():
        candidate = directory / spec.file.filename
        if candidate.is_file():
            return candidate
    target = checkpoint_dirs()[-1] / spec.file.filename
    reason = "downloading is disabled (download=False or FINESAM_OFFLINE=1)"
    if download and os.environ.get("FINESAM_OFFLINE", "") in ("", "0"):
        try:
            _download(spec.file, target)
            return target
        except Exception as error:  # no network, HTTP error, bad digest
            reason = f"the download failed ({type(error).__name__}: {error})"
    searched = ", ".join(str(d) for d in checkpoint_dirs())
    raise CheckpointNotFoundError(
        f"no checkpoint for {spec.name}: {spec.file.filename} is not in {searched}, and {reason}.\n"
        f"Fetch {spec.file.url} ({spec.file.size:,} bytes, sha256 {spec.file.sha256}...) and put it at "
        f"{target} (or in $FINESAM_CHECKPOINTS), or pass checkpoint=PATH "
        f"(--checkpoint PATH on the command line)."
    )


# --- the public loader ----------------------------------------------------------------------
def merge_pi_files(
    sam_state: Mapping[str, torch.Tensor], decoder_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One state dict from the official SAM file (encoder and prompt encoder) and an official
    Pi-SAM decoder file (keys without prefix, or with ``mask_decoder.``)."""
    merged = {k: v for k, v in sam_state.items() if k.startswith(("image_encoder.", "prompt_encoder."))}
    for key, value in decoder_state.items():
        merged[key if key.startswith("mask_decoder.") else f"mask_decoder.{key}"] = value
    return merged


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


def load(
    name: str | ModelSpec,
    checkpoint: str | os.PathLike | None = None,
    *,
    decoder_checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
    init_missing: str | None = None,
    download: bool = True,
) -> Sam:
    """Build model ``name`` and load its weights strictly.

    Args:
        name: a registry name (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``, ``mobile_sam``,
            ``hq_vit_b``, ``hq_vit_l``, ``hq_vit_h``, ``hq_vit_tiny``, ``pi_vit_b``,
            ``pi_vit_l``, ``pi_vit_h``) or a :class:`ModelSpec`.
        checkpoint: an official ``.pth``/``.pt`` file or a ``.safetensors`` file. ``None`` looks
            in ``$FINESAM_CHECKPOINTS`` and ``~/.cache/finesam`` and downloads the official file
            (for Pi-SAM: the SAM file of the same backbone).
        decoder_checkpoint: Pi-SAM only: the official decoder file (``{'model_state_dict': ...}``
            with 270 keys). Its ``rgb_embed`` is not in that file; see :meth:`ModelSpec.build`.
            A finesam Pi checkpoint (all keys, ``rgb_embed`` included) loads with ``checkpoint``
            alone.
        dtype: dtype of the image encoder (``torch.bfloat16`` is faster on GPUs and on CPUs
            with native bfloat16, AVX512-BF16 or AMX; elsewhere it is emulated and much slower,
            and a warning says so); the prompt encoder and decoders stay float32.
        random_weights: with no checkpoint, skip loading and keep random weights.
        init_missing: ``"hq"`` lets an HQ model load a plain SAM file, keeping the HQ layers
            freshly initialised (to train them); a warning lists what was initialised.
    Returns:
        the model in eval mode on ``device``.
    """
    spec = get_spec(name)
    _warn_if_slow_dtype(dtype, device)
    if decoder_checkpoint is not None and spec.decoder != "pi":
        raise ValueError(f"decoder_checkpoint is for Pi-SAM models (pi_vit_b/l/h), not {spec.name}")
    if init_missing is not None and (init_missing != "hq" or spec.decoder != "hq"):
        raise ValueError(f"init_missing={init_missing!r} is only valid as 'hq' for HQ models")
    model = spec.build()
    if checkpoint is None and decoder_checkpoint is None and random_weights:
        model.image_encoder.to(dtype=dtype)
        return model.to(device).eval()
    if random_weights:
        raise ValueError("random_weights=True and a checkpoint exclude each other")
    if checkpoint is None:
        checkpoint = find_checkpoint(spec, download=download)
    state = read_state_dict(checkpoint)
    source = repr(str(checkpoint))
    allow: tuple[str, ...] = ()
    if decoder_checkpoint is not None:
        state = merge_pi_files(state, read_state_dict(decoder_checkpoint))
        source = f"{source} + decoder {str(decoder_checkpoint)!r}"
        allow = ("mask_decoder.rgb_embed.",)  # never in official files: keep the seed-42 values
    elif spec.decoder == "pi" and not any(k.startswith("mask_decoder.interact_2.") for k in state):
        raise CheckpointError(
            f"{spec.name} needs the Pi-SAM decoder: pass decoder_checkpoint=PATH (the official Pi-SAM "
            f"decoder file) beside the SAM checkpoint {source} (--decoder-checkpoint on the command line)"
        )
    if init_missing == "hq":
        allow = tuple(f"mask_decoder.{module}." for module in HQ_MODULES)
    initialised = check_state_dict(model, state, spec.name, source, allow)
    if initialised:
        state = {**model.state_dict(), **state}
        if init_missing:
            warnings.warn(
                f"{spec.name}: {len(initialised)} HQ keys were not in {source} and keep their "
                f"fresh initialisation: {', '.join(initialised)}",
                stacklevel=2,
            )
    model.load_state_dict(state, strict=True)
    model.image_encoder.to(dtype=dtype)
    return model.to(device).eval()
