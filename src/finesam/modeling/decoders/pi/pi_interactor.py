"""Pi-SAM's Precise Interactor: corrects the HR decoder's object embedding from clicks.

Clicks become tokens (the feature sampled at the click, a foreground/background flag and a
random-Fourier position); the 65,536 image positions of the (B, 32, 256, 256) object
embedding attend to [HQ hypernetwork token, click tokens] through a two-way transformer with
image queries and a convolutional MLP; the result goes through a zero-initialised 3x3 conv and
is added as a residual, so an untrained interactor is an exact identity.

Click coordinates entering this module are (x, y) normalised to [0, 1] over the model's padded
1024x1024 input frame as x / 1024 (no half-pixel shift): the official weights were trained with
clicks at (grid index / 256) and used with x / W. The same convention serves inference and
training (the official training code passed (row, col) instead; we never do).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...common import MLP, LayerNorm2d
from ...prompt_encoder import PositionEmbeddingRandom
from ..sam.transformer import Attention

BACKGROUND_FLAG = 0
FOREGROUND_FLAG = 1


class InteractorBlock(nn.Module):
    """Image queries attend to tokens, conv MLP on the map, tokens attend to the image."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.cross_attn_image_to_token = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, mlp_dim, 3, padding=1), LayerNorm2d(mlp_dim), nn.ReLU(), nn.Conv2d(mlp_dim, dim, 3, padding=1)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        image: torch.Tensor,
        tokens: torch.Tensor,
        image_pe: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image: (B, H*W, C) queries; tokens: (B, T, C); image_pe: (B, H*W, C)."""
        q = image + image_pe
        image = self.norm1(image + self.cross_attn_image_to_token(q, tokens, tokens, key_padding_mask))
        batch, _, channels = image.shape
        grid = image.view(batch, *size, channels).permute(0, 3, 1, 2)  # channels-last, no copy
        grid = grid + self.mlp(grid)
        image = self.norm2(grid.flatten(2).transpose(1, 2))
        q = image + image_pe
        # Values carry the positional encoding too, as in the trained model.
        tokens = self.norm3(tokens + self.cross_attn_token_to_image(tokens, q, q))
        return image, tokens


class InteractorTransformer(nn.Module):
    """Two :class:`InteractorBlock` s and a final image->token attention; returns image tokens."""

    def __init__(self, depth: int = 2, dim: int = 32, num_heads: int = 1, mlp_dim: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList(InteractorBlock(dim, num_heads, mlp_dim) for _ in range(depth))
        self.final_attn_image_to_token = Attention(dim, num_heads)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """image, image_pe: (B, C, H, W); tokens: (B, T, C) -> updated image tokens (B, H*W, C)."""
        size = tuple(image.shape[-2:])
        queries = image.flatten(2).transpose(1, 2)
        pe = image_pe.flatten(2).transpose(1, 2)
        for layer in self.layers:
            queries, tokens = layer(queries, tokens, pe, key_padding_mask, size)
        # The final attention ignores the padding mask, as the trained model did.
        return self.norm_final_attn(queries + self.final_attn_image_to_token(queries + pe, tokens, tokens))


class BoundaryEroder(nn.Module):
    """1-pixel erosion of binary maps with a 3x3 Laplacian (kept as a frozen parameter because
    the official checkpoints store it)."""

    def __init__(self) -> None:
        super().__init__()
        kernel = -torch.ones(1, 1, 3, 3)
        kernel[0, 0, 1, 1] = 8.0
        self.laplacian_kernel = nn.Parameter(kernel, requires_grad=False)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: (B, 1, H, W) {0, 1} -> bool (B, 1, H, W) without its 1-pixel border."""
        mask = mask.float()
        response = F.conv2d(F.pad(mask, (1, 1, 1, 1)), self.laplacian_kernel.to(mask.dtype))
        boundary = (response.clamp(min=0) / 9.0) > 0.1
        return (mask - boundary.float()) > 0


class PreciseInteractor(nn.Module):
    """Corrects a (B, 32, 256, 256) object embedding from clicks; official key names."""

    def __init__(self, dim: int = 32, grid_size: int = 256) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.points_flag = nn.Embedding(2, dim)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.token_embed = nn.Sequential(nn.LayerNorm(3 * dim), MLP(3 * dim, 8 * dim, dim, 3), nn.LayerNorm(dim))
        self.transformer = InteractorTransformer(depth=2, dim=dim, num_heads=1, mlp_dim=dim)
        self.out_cov = nn.Conv2d(dim, dim, 3, padding=1)
        nn.init.zeros_(self.out_cov.weight)
        nn.init.zeros_(self.out_cov.bias)
        # Persistent: the official checkpoints carry it.
        self.register_buffer("img_pe", self.pe_layer((grid_size, grid_size)))
        self.bnd_op = BoundaryEroder()

    def click_tokens(self, feature: torch.Tensor, points: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """feature (B, C, H, W), points (B, N, 2) normalised (x, y), flags (B, N) -> tokens (B, N, C)."""
        sampled = F.grid_sample(feature, 2 * points[:, :, None, :].to(feature.dtype) - 1, align_corners=False)
        sampled = sampled.squeeze(-1).transpose(1, 2)
        return self.token_embed(torch.cat([sampled, self.points_flag(flags), self.pe_layer.encode(points)], dim=-1))

    def forward(
        self,
        feature: torch.Tensor,
        hyper: torch.Tensor,
        points: torch.Tensor,
        flags: torch.Tensor,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Correct the object embedding.

        feature: (B, 32, 256, 256) object embedding; hyper: (B, 1, 32) HQ hypernetwork token;
        points: (B, N, 2) clicks, (x, y) normalised to [0, 1] over the padded input frame;
        flags: (B, N) 1 foreground / 0 background; padding: (B, N) True for unused click slots.
        Returns the corrected embedding (B, 32, 256, 256).
        """
        tokens = torch.cat([hyper, self.click_tokens(feature, points, flags)], dim=1)
        key_padding = None
        if padding is not None:
            key_padding = torch.cat([padding.new_zeros(padding.shape[0], 1), padding], dim=1)
        image_pe = self.img_pe.unsqueeze(0).expand(feature.shape[0], -1, -1, -1)
        updated = self.transformer(feature, image_pe, tokens, key_padding)
        batch, channels, height, width = feature.shape
        updated = updated.view(batch, height, width, channels).permute(0, 3, 1, 2)  # channels-last, no copy
        return self.out_cov(updated) + feature
