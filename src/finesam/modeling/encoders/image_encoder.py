"""ViT-B/L/H image encoder of SAM (ViTDet style: windowed + global attention, decomposed
relative positions, convolutional neck). Module names follow the official checkpoints."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.attention import attention_by_query_rows
from ...ops.inference import eager_inference
from ..common import LayerNorm2d, MLPBlock
from ..contracts.features import ImageFeatures


class PatchEmbed(nn.Module):
    """(B, 3, H, W) image -> (B, H/16, W/16, C) channels-last patch tokens."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def relative_position_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """Look up a (2*size-1, hd) table at every (query, key) offset: returns (size, size, hd)."""
    if table.shape[0] != 2 * size - 1:
        raise ValueError(
            f"relative-position table has {table.shape[0]} rows, expected {2 * size - 1} for a "
            f"{size}-token axis; the encoder only supports 1024x1024 inputs"
        )
    coords = torch.arange(size, device=table.device)
    return table[coords[:, None] - coords[None, :] + (size - 1)]


class Attention(nn.Module):
    """Multi-head attention with decomposed relative positions (MViTv2), via SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        # qkv layout is (..., 3, heads, head_dim): Q, K and V are contiguous blocks.
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        bias_h, bias_w = self._relative_position_terms(q, height, width)
        if not eager_inference():
            bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.reshape(batch, self.num_heads, -1, height * width))
        else:
            # Inference: a few query rows at a time; the whole (B, heads, N, N) bias is never made.
            out = attention_by_query_rows(q, k, v, bias_h, bias_w)
        out = out.transpose(1, 2).reshape(batch, height, width, channels)
        return self.proj(out)

    def _relative_position_terms(self, q: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The decomposed bias from the unscaled queries, as the official code adds it:
        (B*heads, H, W, H) over key rows and (B*heads, H, W, W) over key columns; the bias of
        query (h, w) and key (kh, kw) is ``bias_h[h, w, kh] + bias_w[h, w, kw]``."""
        batch, heads, _, head_dim = q.shape
        rel_h = relative_position_table(self.rel_pos_h, height)  # (H, H, hd)
        rel_w = relative_position_table(self.rel_pos_w, width)  # (W, W, hd)
        r_q = q.reshape(batch * heads, height, width, head_dim)
        bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h.to(q.dtype))
        bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w.to(q.dtype))
        return bias_h, bias_w


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWin, window, window, C), zero-padding bottom/right; returns padded size."""
    batch, height, width, channels = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels), (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_size: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding: -> (B, H, W, C)."""
    padded_h, padded_w = padded_size
    channels = windows.shape[-1]
    batch = windows.shape[0] // ((padded_h // window) * (padded_w // window))
    x = windows.view(batch, padded_h // window, padded_w // window, window, window, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, channels)
    return x[:, : size[0], : size[1], :]


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size == 0`` means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        window_size: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(dim, num_heads, qkv_bias, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, size)
        else:
            x = self.attn(x)
        if not eager_inference():
            x = shortcut + x
            return x + self.mlp(self.norm2(x))
        # Inference: residuals added into the fresh outputs (two full-size allocations less).
        x = x.add_(shortcut)
        return self.mlp(self.norm2(x)).add_(x)


class ImageEncoderViT(nn.Module):
    """SAM's ViT: (B, 3, 1024, 1024) normalised image -> :class:`ImageFeatures`.

    With ``keep_early`` the output of the first global-attention block, (B, 64, 64, embed_dim),
    is kept as ``ImageFeatures.early`` (HQ-SAM's and Pi-SAM's early feature); no other block
    output is kept.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.returns_interm = False  # what the official call returns: see forward
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                window_size=0 if index in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for index in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def early_feature_dim(self) -> int:
        return self.pos_embed.shape[-1]

    def forward(
        self, x: torch.Tensor, keep_early: bool | None = None
    ) -> ImageFeatures | torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, 3, 1024, 1024) normalised image.

        finesam's call (``keep_early`` given) returns :class:`ImageFeatures`. The official call
        ``encoder(x)`` returns what the official encoder does: the (B, 256, 64, 64) embedding,
        or with ``returns_interm`` (set by :class:`~finesam.modeling.sam.Sam` for decoders that
        read the early feature, as in ``segment_anything_hq``) the tuple (embedding, the outputs
        of every global-attention block, each (B, 64, 64, C)).
        """
        official = keep_early is None
        x = self.patch_embed(x) + self.pos_embed
        early = None
        interm = []
        for block in self.blocks:
            x = block(x)
            if keep_early and early is None and block.window_size == 0:
                early = x
            if official and self.returns_interm and block.window_size == 0:
                interm.append(x)
        embedding = self.neck(x.permute(0, 3, 1, 2))
        if official:
            return (embedding, interm) if self.returns_interm else embedding
        return ImageFeatures(embedding, early)
