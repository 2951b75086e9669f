"""SAM's prompt encoder: points, boxes and low-res masks -> sparse and dense embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

# Point labels as the model sees them (the official magic integers, named).
PAD_LABEL = -1
NEGATIVE_LABEL = 0
POSITIVE_LABEL = 1


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) in [0, 1]^2: 2 * num_pos_feats channels."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords: (..., 2) normalised (x, y) in [0, 1] -> (..., 2 * num_pos_feats)."""
        gaussian = self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * ((2 * coords.to(gaussian.dtype) - 1) @ gaussian)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an (H, W) grid: (2 * num_pos_feats, H, W)."""
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1)
        return self.encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """coords: (B, N, 2) (x, y) pixels in an image of size (H, W) -> (B, N, 2 * num_pos_feats)."""
        scale = coords.new_tensor([image_size[1], image_size[0]])
        return self.encode(coords / scale)


class PromptEncoder(nn.Module):
    """Embeds prompts given in the model's 1024x1024 input frame.

    Sparse output: (B, N, 256) tokens (points, plus a padding point when no box is given, then
    two box corners). Dense output: (B, 256, 64, 64) from a (B, 1, 256, 256) mask of logits,
    or the learned no-mask embedding.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, 256, 64, 64) positional encoding of the image embedding grid.

        Computed once per value of the Gaussian matrix (its sin/cos cost a few ms per
        prompt), and recomputed while tracing or compiling so that exported graphs hold it as
        a computation; callers must not modify the returned tensor in place.
        """
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)
        gaussian = self.pe_layer.positional_encoding_gaussian_matrix
        key = (gaussian.data_ptr(), gaussian._version, gaussian.device, gaussian.dtype, tuple(self.image_embedding_size))
        cached = self.__dict__.get("_dense_pe_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.pe_layer(self.image_embedding_size).unsqueeze(0))
            self.__dict__["_dense_pe_cache"] = cached  # not a buffer: stays out of state_dict
        return cached[1]

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PAD_LABEL)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == PAD_LABEL, self.not_a_point_embed.weight, embedding)
        embedding = embedding + (labels == NEGATIVE_LABEL) * self.point_embeddings[0].weight
        embedding = embedding + (labels == POSITIVE_LABEL) * self.point_embeddings[1].weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return embedding + corner_embed

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points: ((B, N, 2) xy, (B, N) labels); boxes: (B, 4) xyxy; masks: (B, 1, 256, 256).

        Returns sparse (B, N', 256) and dense (B, 256, 64, 64) embeddings.
        """
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty(batch, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            height, width = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
        return torch.cat(sparse, dim=1), dense
