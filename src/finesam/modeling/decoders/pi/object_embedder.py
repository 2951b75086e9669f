"""Pi-SAM's Object Embedder: a mask-conditioned embedding with deformable 3x3 and 7x7 branches."""

from __future__ import annotations

import torch
from torch import nn

from ....ops.deform_conv import DeformableConv2d
from ...common import LayerNorm2d

OBJECT_DIM = 32


def conv_norm_gelu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, LayerNorm2d(channels), nn.GELU())


class DeformableBranch(nn.Module):
    """Modulated deformable conv -> LayerNorm2d -> GELU (``atrous_conv`` in the official keys)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.atrous_conv = conv_norm_gelu(
            DeformableConv2d(channels, channels, kernel_size=kernel_size, padding=kernel_size // 2), channels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.atrous_conv(x)


class ObjectEmbedder(nn.Module):
    """(B, 32, 256, 256) feature + (B, 1, 256, 256) stage-1 logits -> (B, 32, 256, 256) object embedding.

    The 33-channel input is embedded to 32 channels, then a skip path and deformable 3x3 and
    7x7 branches are concatenated (96 channels) and projected back to 32.
    """

    def __init__(self, dim: int = OBJECT_DIM) -> None:
        super().__init__()
        self.mask_embedding = nn.Sequential(
            *conv_norm_gelu(nn.Conv2d(dim + 1, dim, 1), dim),
            *conv_norm_gelu(nn.Conv2d(dim, dim, 3, padding=1), dim),
        )
        self.aspp1 = DeformableBranch(dim, 3)
        self.aspp2 = DeformableBranch(dim, 7)
        self.conv_out = conv_norm_gelu(nn.Conv2d(3 * dim, dim, 1, bias=False), dim)

    def forward(self, feature: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        x = self.mask_embedding(torch.cat([feature, logits], dim=1))
        return self.conv_out(torch.cat([x, self.aspp1(x), self.aspp2(x)], dim=1))
