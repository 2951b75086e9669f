"""The typed result every image encoder returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    """

    embedding: torch.Tensor
    interm: tuple[torch.Tensor, ...]
    image: torch.Tensor | None = None

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
