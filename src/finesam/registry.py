"""The model registry: a name maps to a :class:`ModelSpec` that builds the model and knows its
checkpoint files. ``register_model`` adds models without editing the library.

Nothing else in the package branches on model names or decoder classes.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .checkpoints import CheckpointFile, from_official_keys
from .errors import InvalidInputError, UnknownModelError
from .modeling.contracts.decoder_api import DecoderCapabilities
from .modeling.decoders.hq.hq_decoder import HQMaskDecoder
from .modeling.decoders.pi.high_res_head import HighResHead, rgb_embedding
from .modeling.decoders.pi.pi_decoder import PiMaskDecoder
from .modeling.decoders.sam.mask_decoder import MaskDecoder
from .modeling.encoders.image_encoder import ImageEncoderViT
from .modeling.encoders.tiny_vit import TinyViT
from .modeling.prompt_encoder import PromptEncoder
from .modeling.sam import Sam

PI_RGB_SEED = 42


@dataclass(frozen=True)
class DecoderFactory:
    """How one decoder family is built beside its image encoder.

    build: ``build(image_encoder, **drawn)`` returns the decoder module (it may read the
        encoder's ``early_feature_dim``).
    seed, drawn: parts whose official values come from a fixed seed: ``drawn()`` runs right after
        the image and prompt encoders are built, all three under ``torch.manual_seed(seed)``
        (the caller's random state is kept), and returns keyword arguments for ``build``.
    """

    build: Callable[..., nn.Module]
    seed: int | None = None
    drawn: Callable[[], Mapping[str, nn.Module]] | None = None


# Module-level functions, not lambdas: specs stay picklable (spawned worker processes).
def _sam_decoder(image_encoder: nn.Module) -> nn.Module:
    return MaskDecoder()


def _hq_decoder(image_encoder: nn.Module) -> nn.Module:
    return HQMaskDecoder(vit_dim=image_encoder.early_feature_dim)


def _pi_decoder(image_encoder: nn.Module, rgb_embed: nn.Module) -> nn.Module:
    return PiMaskDecoder(vit_dim=image_encoder.early_feature_dim, high_res=HighResHead(rgb_embed=rgb_embed))


def _pi_seeded_parts() -> dict[str, nn.Module]:
    return {"rgb_embed": rgb_embedding()}


SAM_DECODER = DecoderFactory(_sam_decoder)
HQ_DECODER = DecoderFactory(_hq_decoder)
# Pi-SAM: the official ``rgb_embed`` is never trained nor saved; the official test run draws it
# right after building the ViT and the prompt encoder under ``torch.manual_seed(42)``. Building in
# that order under that seed gives an official decoder file exactly those values.
PI_DECODER = DecoderFactory(_pi_decoder, seed=PI_RGB_SEED, drawn=_pi_seeded_parts)


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Random draws inside come from ``seed`` (nothing changes for None); the caller's state is kept."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class SamArchitecture:
    """Builds a model from an image encoder class with its settings (``ImageEncoderViT``,
    ``TinyViT``, ...) and a :class:`DecoderFactory` (:data:`SAM_DECODER`, :data:`HQ_DECODER`,
    :data:`PI_DECODER`, or one of your own). Calling it returns a fresh model in eval mode.
    A factory's seeded parts (Pi-SAM's ``rgb_embed``, which no file holds) are drawn right after
    the encoders under its seed: see :class:`DecoderFactory`.
    """

    encoder: Callable[..., nn.Module]
    encoder_config: Mapping[str, Any] = field(default_factory=dict)
    decoder: DecoderFactory = SAM_DECODER

    def with_encoder(self, **overrides: Any) -> "SamArchitecture":
        """A variant with other encoder settings (e.g. ``depth`` and ``global_attn_indexes``)."""
        return replace(self, encoder_config={**self.encoder_config, **overrides})

    def __call__(self) -> Sam:
        with _seeded(self.decoder.seed):
            image_encoder, prompt_encoder = self.encoder(**self.encoder_config), PromptEncoder()
            drawn = self.decoder.drawn() if self.decoder.drawn is not None else {}
        return Sam(image_encoder, prompt_encoder, self.decoder.build(image_encoder, **drawn)).eval()


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one named model and load its checkpoint files.

    build: returns a fresh model (random weights) in eval mode; any callable.
    description: human name, used in messages ("SAM ViT-B").
    file: the official weights file (to find in the cache or download), if there is one.
    official_names: (package, registry key) pairs under which the official packages know this
        model, e.g. ``("segment_anything", "vit_b")``; they build the compatibility registries.
    decoder_file: the weights come as a SAM file plus a separate decoder file (Pi-SAM).
    kept_from_build: official key prefixes never stored in official files; they keep the
        values ``build`` gives them (Pi-SAM's ``mask_decoder.rgb_embed.``).
    name: set by :func:`register_model`.
    """

    build: Callable[[], Sam]
    description: str = ""
    file: CheckpointFile | None = None
    official_names: tuple[tuple[str, str], ...] = ()
    decoder_file: bool = False
    kept_from_build: tuple[str, ...] = ()
    name: str = ""

    def with_encoder(self, **overrides: Any) -> "ModelSpec":
        """A variant with other encoder settings, for built-in architectures (tests, benchmarks)."""
        if not hasattr(self.build, "with_encoder"):
            raise TypeError(f"{self.name or 'this spec'}: its build function has no encoder settings to override")
        return replace(self, build=self.build.with_encoder(**overrides))

    def state_shapes(self) -> tuple[dict[str, torch.Size], dict[str, torch.Size]]:
        """Key names and shapes of this model's state dict, in the official names and in the
        model's own (built once on the meta device, so without memory or time)."""
        declaration = self._declaration()
        return declaration.official_shapes, declaration.shapes

    @property
    def capabilities(self) -> DecoderCapabilities:
        """What this model's decoder accepts and returns, without building the model's weights."""
        return self._declaration().capabilities

    @property
    def new_parts(self) -> tuple[str, ...]:
        """The decoder parts this model adds over SAM (its decoder's ``new_parts``), without weights."""
        return self._declaration().new_parts

    def _declaration(self) -> "_Declaration":
        """What a weightless build declares, built once on the meta device and kept per spec."""
        cached = _DECLARATIONS.get(id(self))
        if cached is None or cached[0] is not self:
            with torch.device("meta"):
                model = self.build()
            official = {k: v.shape for k, v in model.official_state_dict().items()}
            declaration = _Declaration(
                official_shapes=official,
                # files in the composition's own names (state_dict() speaks the official ones)
                shapes=from_official_keys(official, model.official_key_prefixes),
                capabilities=model.capabilities,
                new_parts=tuple(model.mask_decoder.new_parts),
            )
            cached = _DECLARATIONS[id(self)] = (self, declaration)
        return cached[1]


@dataclass(frozen=True)
class _Declaration:
    """What :meth:`ModelSpec._declaration` reads off a meta-device build."""

    official_shapes: dict[str, torch.Size]
    shapes: dict[str, torch.Size]
    capabilities: DecoderCapabilities
    new_parts: tuple[str, ...]


_DECLARATIONS: dict[int, tuple[ModelSpec, _Declaration]] = {}
REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec, *, replace_existing: bool = False) -> ModelSpec:
    """Make ``name`` loadable by :func:`finesam.load`, the predictor and the command line.

    Returns the registered spec (with its ``name`` set). A name already registered is refused
    unless ``replace_existing``.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise InvalidInputError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
    if not isinstance(spec, ModelSpec) or not callable(spec.build):
        raise TypeError("register_model needs a ModelSpec whose build() returns a finesam.Sam")
    if name in REGISTRY and not replace_existing:
        raise InvalidInputError(f"model {name!r} is already registered; pass replace_existing=True to replace it")
    registered = replace(spec, name=name, description=spec.description or name)
    REGISTRY[name] = registered
    return registered


def unregister_model(name: str) -> None:
    """Remove a model added with :func:`register_model`."""
    REGISTRY.pop(name, None)


PLUGIN_GROUP = "finesam.models"
_plugins_loaded = False


def load_plugins() -> None:
    """Register the models of installed packages that declare entry points in the group
    ``finesam.models``: an entry point names a :class:`ModelSpec` (registered under the entry
    point's name) or a function that calls :func:`register_model` itself. Runs once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=PLUGIN_GROUP):
        try:
            target = entry_point.load()
            if isinstance(target, ModelSpec):
                register_model(entry_point.name, target, replace_existing=True)
            else:
                target()
        except Exception as error:  # a broken plugin must not break the built-in models
            warnings.warn(f"finesam: model plugin {entry_point.name!r} ({entry_point.value}) failed: {error}", stacklevel=2)


def model_names() -> list[str]:
    """Every registered model name, plugins included."""
    load_plugins()
    return list(REGISTRY)


def get_spec(name: str | ModelSpec) -> ModelSpec:
    if isinstance(name, ModelSpec):
        return name
    if name not in REGISTRY:
        load_plugins()
    if name not in REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def describe_checkpoint(state: Mapping[str, torch.Tensor]) -> str:
    """Which model a state dict looks like, for error messages: the registered model whose keys
    (official or finesam names) and shapes it matches exactly, else a description."""
    shapes = {key: value.shape for key, value in state.items()}
    for spec in REGISTRY.values():
        if shapes in spec.state_shapes():
            return f"{spec.description} ({spec.name})"
    keys = set(state)
    has_hq = any(k.startswith("mask_decoder.hf_token") for k in keys)
    if "transformer.layers.0.self_attn.q_proj.weight" in keys:
        if any(k.startswith("interact_2.") for k in keys):
            return "a Pi-SAM decoder file (no SAM encoder weights)"
        return "a mask-decoder-only file (keys without the 'mask_decoder.' prefix)"
    if "image_encoder.patch_embed.seq.0.c.weight" in keys:
        return "a TinyViT model with " + ("an HQ decoder" if has_hq else "a SAM decoder")
    if "image_encoder.pos_embed" in keys:
        width = state["image_encoder.pos_embed"].shape[-1]
        depth = len({m.group(1) for k in keys if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
        if any(k.startswith("mask_decoder.interact_2.") for k in keys):
            return f"a Pi-SAM checkpoint (ViT width {width}, {depth} blocks)"
        family = "HQ-SAM" if has_hq else "SAM"
        return f"a {family} ViT of width {width} with {depth} blocks"
    return "no known SAM-family model"


# --- the built-in models ---------------------------------------------------------------------
_VIT = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_HQ_URL = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_SAM_FILES = {
    "vit_b": CheckpointFile("sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth", 375_042_383,
                            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": CheckpointFile("sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth", 1_249_524_607,
                            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": CheckpointFile("sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth", 2_564_550_879,
                            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}
_HQ_FILES = {
    "vit_b": CheckpointFile("sam_hq_vit_b.pth", _HQ_URL + "sam_hq_vit_b.pth", 379_335_069, "14a9d662"),
    "vit_l": CheckpointFile("sam_hq_vit_l.pth", _HQ_URL + "sam_hq_vit_l.pth", 1_254_865_805, "e1a6c385"),
    "vit_h": CheckpointFile("sam_hq_vit_h.pth", _HQ_URL + "sam_hq_vit_h.pth", 2_570_940_653,
                            "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35"),
}
SAM_PACKAGE, HQ_PACKAGE, HQ_BASELINE = "segment_anything", "segment_anything_hq", "segment_anything_hq.baseline"


# (name prefix, description prefix, decoder, official files, official names of that family)
_VIT_FAMILIES = (
    ("sam", "SAM", SAM_DECODER, _SAM_FILES, (SAM_PACKAGE, HQ_BASELINE)),
    ("hq", "HQ-SAM", HQ_DECODER, _HQ_FILES, (HQ_PACKAGE,)),
)


def _register_builtins() -> None:
    for size, letter in (("vit_b", "B"), ("vit_l", "L"), ("vit_h", "H")):
        for prefix, family, decoder, files, packages in _VIT_FAMILIES:
            names = tuple((package, size) for package in packages)
            if size == "vit_h":  # the official packages' "default"
                names += tuple((package, "default") for package in packages)
            register_model(f"{prefix}_{size}", ModelSpec(SamArchitecture(ImageEncoderViT, _VIT[size], decoder),
                                                         f"{family} ViT-{letter}", files[size], names))
    register_model("mobile_sam", ModelSpec(
        SamArchitecture(TinyViT), "MobileSAM",
        CheckpointFile("mobile_sam.pt", "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                       40_728_226, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"),
        ((SAM_PACKAGE, "vit_t"), (HQ_BASELINE, "vit_tiny")),
    ))
    register_model("hq_vit_tiny", ModelSpec(
        SamArchitecture(TinyViT, {}, HQ_DECODER), "Light HQ-SAM",
        CheckpointFile("sam_hq_vit_tiny.pth", _HQ_URL + "sam_hq_vit_tiny.pth", 42_526_881,
                       "0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196"),
        ((HQ_PACKAGE, "vit_tiny"),),
    ))
    # Pi-SAM: the encoder weights are the official SAM file's; the decoder comes in its own file
    # (released on Google Drive only, so it has no URL here: pass decoder_checkpoint=).
    for size in ("vit_b", "vit_l", "vit_h"):
        register_model(f"pi_{size}", ModelSpec(
            SamArchitecture(ImageEncoderViT, _VIT[size], PI_DECODER), f"Pi-SAM {size[-1].upper()}", _SAM_FILES[size],
            decoder_file=True, kept_from_build=("mask_decoder.rgb_embed.",),
        ))


_register_builtins()
