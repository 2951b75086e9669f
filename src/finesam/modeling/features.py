"""The typed result every image encoder returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ImageFeatures:
    """What an image encoder computes once per image and the decoders read per prompt.

    Attributes:
        embedding: (B, 256, 64, 64) final image embedding (the neck output).
        interm: channels-last intermediate features, each (B, 64, 64, C). For a ViT these are
            the outputs of the global-attention blocks in order; for TinyViT the stage-2 output
            (C = 160). HQ-SAM and Pi-SAM fuse ``interm[0]``.
        image: (B, 3, 1024, 1024) normalised, zero-padded input, kept only for decoders that
            read the image itself (Pi-SAM's RGB embedding); None otherwise.
        derived: prompt-independent tensors decoders computed from these features (see
            :meth:`derive_once`); private to this object, never copied by ``to``/``select``.
    """

    embedding: torch.Tensor
    interm: tuple[torch.Tensor, ...]
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

    @property
    def early(self) -> torch.Tensor:
        """(B, 64, 64, C) early feature fused by the HQ and Pi decoders."""
        return self.interm[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ImageFeatures":
        return ImageFeatures(
            self.embedding.to(device=device, dtype=dtype),
            tuple(t.to(device=device, dtype=dtype) for t in self.interm),
            None if self.image is None else self.image.to(device=device, dtype=dtype),
        )

    def select(self, index: torch.Tensor | slice | int) -> "ImageFeatures":
        """Features of a subset of the batch (keeps the batch dimension for an int)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        image = None if self.image is None else self.image[index]
        return ImageFeatures(self.embedding[index], tuple(t[index] for t in self.interm), image)
