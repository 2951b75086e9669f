"""The typed result every image encoder returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ImageFeatures:
    """What an image encoder computes once per image and the decoders read per prompt.

    Only what the decoder declares in ``capabilities.encoder_features`` is kept.

    Attributes:
        embedding: (B, 256, 64, 64) final image embedding (the neck output).
        early: (B, 64, 64, C) channels-last early feature, fused by HQ-SAM and Pi-SAM: for a ViT
            the output of the first global-attention block (C = 768/1024/1280), for TinyViT the
            stage-2 output (C = 160); None when the decoder does not read it.
        image: (B, 3, 1024, 1024) normalised, zero-padded input, kept only for decoders that
            read the image itself (Pi-SAM's RGB embedding); None otherwise.
        derived: prompt-independent tensors decoders computed from these features (see
            :meth:`derive_once`); private to this object, never copied by ``to``/``select``.
    """

    embedding: torch.Tensor
    early: torch.Tensor | None = None
    image: torch.Tensor | None = None
    derived: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def derive_once(self, module: nn.Module, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` once per (module, weights) at inference; every call while gradients are on.

        Decoders use it for what depends on the image only (HQ fusion, Pi's RGB embedding), so
        that prompts after the first (AMG batches, clicks) skip it. Each entry records its
        module's parameter version counters: weights loaded in place invalidate it.
        """
        if torch.is_grad_enabled():  # training: parameters change between calls
            return compute()
        versions = tuple(p._version for p in module.parameters())
        cached = self.derived.get((module, name))
        if cached is None or cached[0] != versions:  # one entry per (module, name): stale ones are replaced
            cached = self.derived[(module, name)] = (versions, compute())
        return cached[1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ImageFeatures":
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device=device, dtype=dtype)

        return ImageFeatures(move(self.embedding), move(self.early), move(self.image))

    def select(self, index: torch.Tensor | slice | int) -> "ImageFeatures":
        """Features of a subset of the batch (keeps the batch dimension for an int)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[index]

        return ImageFeatures(self.embedding[index], pick(self.early), pick(self.image))
