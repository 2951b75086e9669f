"""SAM's mask decoder, split into steps that the HQ and Pi decoders (which compose it) reuse."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ...common import MLP, LayerNorm2d
from ...contracts.decoder_api import (
    DecoderCapabilities,
    DecoderOutput,
    OutputMode,
    broadcast_to_prompts,
    hypernetwork_product,
    is_official_call,
)
from ...contracts.features import ImageFeatures
from .transformer import TwoWayTransformer

# SAM's decoder modules; HQ and Pi decoders hold them under ``sam.``.
SAM_MODULES = ("iou_token", "mask_tokens", "transformer", "output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head")


def prefixes(modules: tuple[str, ...], part: str) -> tuple[tuple[str, str], ...]:
    """(official prefix, module prefix) pairs for ``modules`` held by a part named ``part``."""
    return tuple((f"{module}.", f"{part}.{module}.") for module in modules)


def _rename_prefixed(state: dict, prefix: str, pairs: Sequence[tuple[str, str]]) -> None:
    """Rename, in place and keeping the order, the keys ``prefix + source...`` of ``state`` to
    ``prefix + target...`` for each (source, target) pair."""
    pairs = [(prefix + source, prefix + target) for source, target in pairs]

    def renamed(key: str) -> str:
        for source, target in pairs:
            if key.startswith(source):
                return target + key[len(source):]
        return key

    items = [(renamed(key), value) for key, value in state.items()]
    if any(new != old for (new, _), old in zip(items, state)):
        state.clear()
        state.update(items)


def _state_dict_in_official_keys(module: "ComposedDecoder", state: dict, prefix: str, local_metadata: dict) -> None:
    _rename_prefixed(state, prefix, [(ours, official) for official, ours in module.official_prefixes])
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # module versions, under the official module names
        # the parts' own entries (``mask_decoder.sam``) have no official counterpart
        parts = {f"{prefix}{ours.split('.')[0]}" for _, ours in module.official_prefixes if "." in ours[:-1]}
        for key in [key for key in metadata if key in parts]:
            del metadata[key]
        dotted = {f"{key}.": value for key, value in metadata.items()}
        _rename_prefixed(dotted, prefix, [(ours, official) for official, ours in module.official_prefixes])
        metadata.clear()
        metadata.update({key[:-1]: value for key, value in dotted.items()})


def _load_official_keys(module: "ComposedDecoder", state: dict, prefix: str, *_: Any) -> None:
    _rename_prefixed(state, prefix, module.official_prefixes)


class ComposedDecoder(nn.Module):
    """Base of the decoders composed of parts (HQ, Pi): they speak the official names outside.

    ``official_prefixes`` pairs each official module name with its path among the parts
    (``("transformer.", "sam.transformer.")``). From them:

    - ``state_dict()`` returns the official keys (``mask_decoder.hf_token.weight``, not
      ``mask_decoder.hq.hf_token.weight``), so a ``torch.save(model.state_dict())`` file loads
      into the official model with ``strict=True``; ``load_state_dict`` takes the official keys
      and the composition's own.
    - the official attribute names are the very modules of the parts
      (``decoder.hf_token is decoder.hq.hf_token``), for reading and for assignment.

    ``named_parameters()`` keeps the composition's names (``mask_decoder.hq.hf_token.weight``).
    """

    official_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()
    _official_paths: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._official_paths = {official[:-1]: tuple(ours[:-1].split(".")) for official, ours in cls.official_prefixes}

    def __init__(self) -> None:
        super().__init__()
        self.register_state_dict_post_hook(_state_dict_in_official_keys)
        self.register_load_state_dict_pre_hook(_load_official_keys)

    def __getattr__(self, name: str) -> Any:
        path = type(self)._official_paths.get(name)
        if path is None:
            return super().__getattr__(name)
        target: Any = self
        for part in path:
            target = getattr(target, part)
        return target

    def __setattr__(self, name: str, value: Any) -> None:
        path = type(self)._official_paths.get(name)
        if path is None or "_modules" not in self.__dict__:
            super().__setattr__(name, value)
            return
        owner: Any = self
        for part in path[:-1]:
            owner = getattr(owner, part)
        setattr(owner, path[-1], value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(type(self)._official_paths))


class MaskDecoder(nn.Module):
    """SAM's decoder: image embedding + prompt embeddings -> (B, K, 256, 256) logits, (B, K) IoU.

    Module names are the official checkpoint keys (under ``mask_decoder.``).
    """

    capabilities: ClassVar[DecoderCapabilities] = DecoderCapabilities()
    # (official key prefix, module key prefix) pairs under ``mask_decoder.``; SAM's keys are its own.
    official_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Submodules added over SAM's decoder: what training on a frozen SAM learns.
    new_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        transformer: nn.Module | None = None,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer(embedding_dim=transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    # Steps shared with the HQ and Pi decoders -------------------------------------------------
    def run_transformer(
        self,
        embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        extra_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way transformer on [iou, mask tokens, extra tokens, prompts].

        embedding: (1 or B, 256, 64, 64); image_pe: (1, 256, 64, 64); sparse: (B, N, 256);
        dense: (B, 256, 64, 64); extra_tokens: (T, 256) appended after the mask tokens.
        Returns token outputs (B, 1 + 4 + T + N, 256) and the updated image (B, 256, 64, 64).
        """
        prompts = sparse.shape[0]
        output_tokens = [self.iou_token.weight, self.mask_tokens.weight]
        if extra_tokens is not None:
            output_tokens.append(extra_tokens)
        tokens = torch.cat(output_tokens, dim=0).unsqueeze(0).expand(prompts, -1, -1)
        tokens = torch.cat([tokens, sparse], dim=1)
        src = broadcast_to_prompts(embedding, prompts) + dense
        pos = image_pe.expand(prompts, -1, -1, -1)
        batch, channels, height, width = src.shape
        hs, src = self.transformer(src, pos, tokens)
        # The image tokens viewed as a channels-last map (no copy). A reshape of their transpose
        # gives the same view with a batch stride of C when B = 1, which oneDNN does not take
        # for channels-last: it then copies the map to NCHW (5x slower upscaling).
        return hs, src.view(batch, height, width, channels).permute(0, 3, 1, 2)

    def sam_masks(self, hs: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of the 4 SAM mask tokens.

        hs: (B, T, 256) token outputs; src: (B, 256, 64, 64) updated image.
        Returns masks (B, 4, 256, 256), IoU predictions (B, 4), upscaled feature (B, 32, 256, 256).
        """
        upscaled = self.output_upscaling(src)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, index]) for index, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = hypernetwork_product(hyper_in, upscaled)
        return masks, self.iou_prediction_head(hs[:, 0]), upscaled

    def forward(self, *args: Any, **kwargs: Any) -> DecoderOutput | tuple[torch.Tensor, torch.Tensor]:
        """finesam's call ``(features, image_pe, sparse, dense, mode)`` -> :class:`DecoderOutput`
        (:meth:`decode`), or the official call (image embeddings as a tensor, see
        :meth:`official_forward`) -> the official ``(masks, iou_pred)``."""
        if is_official_call(args, kwargs):
            return self.official_forward(*args, **kwargs)
        return self.decode(*args, **kwargs)

    def decode(
        self,
        features: ImageFeatures,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mode: OutputMode = OutputMode(),
    ) -> DecoderOutput:
        """Logits (B, K, 256, 256) and predicted IoU (B, K); K = 3 if ``mode.multimask`` else 1.

        features: embedding (1 or B, 256, 64, 64); image_pe: (1, 256, 64, 64); sparse:
        (B, N, 256) and dense: (B, 256, 64, 64) prompt embeddings.
        """
        self.capabilities.check_mode(mode)
        hs, src = self.run_transformer(features.embedding, image_pe, sparse, dense)
        masks, iou, _ = self.sam_masks(hs, src)
        chosen = slice(1, None) if mode.multimask else slice(0, 1)
        logits = masks[:, chosen]
        return DecoderOutput(logits, iou[:, chosen], logits, masks, iou)

    # The official interface ----------------------------------------------------------------------
    def official_forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``segment_anything``'s ``MaskDecoder.forward``: masks (B, 3 or 1, 256, 256) and IoU
        predictions (B, 3 or 1) for (1 or B, 256, 64, 64) image embeddings."""
        output = self.decode(ImageFeatures(image_embeddings), image_pe, sparse_prompt_embeddings,
                             dense_prompt_embeddings, OutputMode(multimask=bool(multimask_output)))
        return output.logits, output.scores

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``segment_anything``'s ``MaskDecoder.predict_masks``: every token's masks
        (B, 4, 256, 256) and IoU predictions (B, 4)."""
        hs, src = self.run_transformer(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        masks, iou, _ = self.sam_masks(hs, src)
        return masks, iou
