"""TinyViT-5M image encoder (MobileSAM, Light HQ-SAM). Module names follow the official
checkpoints (``mobile_sam.pt``, ``sam_hq_vit_tiny.pth``).

Unlike the official code, attention biases are gathered at forward time, so results never
depend on when ``.eval()`` was called (the official eval-mode cache is stale after loading).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.activations import gelu_
from ...ops.bands import BAND_ROWS, conv_pair_by_bands
from ...ops.inference import eager_inference
from ..common import LayerNorm2d
from ..contracts.features import ImageFeatures


class Conv2dBN(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d; children named ``c`` and ``bn``."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not folded_inference(self):
            return self.bn(self.c(x))
        return self.folded(x, *self.folded_weights())

    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution's weight and bias with the batch norm folded in (inference only:
        one pass over the map instead of two; differences ~1e-7 relative, from the rounding)."""
        conv, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
        bias = (bn.bias - bn.running_mean * scale).to(conv.weight.dtype)
        return weight, bias

    def folded(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               padding: tuple[int, int] | None = None) -> torch.Tensor:
        """The folded convolution of x; ``padding`` (rows, cols) overrides the module's."""
        conv = self.c
        return F.conv2d(x, weight, bias, conv.stride, conv.padding if padding is None else padding,
                        conv.dilation, conv.groups)


def folded_inference(module: nn.Module) -> bool:
    """Eager inference in eval mode without hooks on ``module``: where batch norm may be folded
    into the convolutions and maps split in bands (in training mode batch norm normalises by
    the batch's statistics)."""
    return not module.training and eager_inference(module)


class PatchEmbed(nn.Module):
    """(B, 3, 1024, 1024) -> (B, C, 256, 256) with two stride-2 3x3 convolutions."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last from here to the first patch merge: oneDNN's 1x1 and depthwise
        # convolutions of stage 0 run 3-4x faster on NHWC maps than on NCHW ones.
        first, _, second = self.seq
        x = x.contiguous(memory_format=torch.channels_last)
        if not folded_inference(self):
            return second(F.gelu(first(x)))
        # By bands of output rows: the 512x512 intermediate (32 MB at 1024) is never whole.
        first_weights, second_weights = first.folded_weights(), second.folded_weights()
        return conv_pair_by_bands(
            x, first.c, second.c,
            lambda rows, padding: gelu_(first.folded(rows, *first_weights, padding=padding)),
            lambda mid, padding, start, stop: second.folded(mid, *second_weights, padding=padding),
            BAND_ROWS // 2,
        )


class MBConv(nn.Module):
    """Inverted residual block on a (B, C, H, W) map."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, chans, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not folded_inference(self):
            y = F.gelu(self.conv1(x))
            y = F.gelu(self.conv2(y))
            return F.gelu(self.conv3(y) + x)
        # Inference by bands of rows: the hidden maps are 4x wider than x (64 MB each at 1024);
        # a band's stay near the cache, twice as fast, and the whole ones never exist.
        conv1_weights, conv2_weights, conv3_weights = (conv.folded_weights() for conv in (self.conv1, self.conv2, self.conv3))
        return conv_pair_by_bands(
            x, self.conv1.c, self.conv2.c,
            lambda rows, padding: gelu_(self.conv1.folded(rows, *conv1_weights, padding=padding)),
            lambda hidden, padding, start, stop: gelu_(self.conv3.folded(
                gelu_(self.conv2.folded(hidden, *conv2_weights, padding=padding)), *conv3_weights
            ).add_(x[:, :, start:stop])),
        )


class PatchMerging(nn.Module):
    """(B, C, H, W) map or (B, H*W, C) tokens -> (B, H'*W', C_out) tokens.

    ``stride`` is 2 except for the last merge of TinyViT-5M (160 -> 320 channels), which keeps
    the 64x64 grid.
    """

    def __init__(self, input_resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            size = self.input_resolution
            x = x.view(x.shape[0], size, size, -1).permute(0, 3, 1, 2)  # channels-last, no copy
        if not folded_inference(self):
            x = F.gelu(self.conv2(F.gelu(self.conv1(x))))
            return self.conv3(x).flatten(2).transpose(1, 2)
        # Inference by bands (stage 0's 128-channel 256x256 map, 32 MB, is never whole).
        conv1_weights, conv2_weights, conv3_weights = (conv.folded_weights() for conv in (self.conv1, self.conv2, self.conv3))
        out = conv_pair_by_bands(
            x, self.conv1.c, self.conv2.c,
            lambda rows, padding: gelu_(self.conv1.folded(rows, *conv1_weights, padding=padding)),
            lambda mid, padding, start, stop: self.conv3.folded(
                gelu_(self.conv2.folded(mid, *conv2_weights, padding=padding)), *conv3_weights
            ),
        )
        return out.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on the 256x256 map, then a patch merge to tokens."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class Mlp(nn.Module):
    """Pre-norm feed-forward on (B, N, C) tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Pre-norm window attention with a learned bias per (|dy|, |dx|) offset and head.

    qkv is interleaved per head: the projection is viewed as (heads, [q | k | v]).
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * key_dim * num_heads)
        self.proj = nn.Linear(key_dim * num_heads, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # Offset (dy, dx) has index |dy| * window + |dx|: the official first-seen order.
        rows = torch.arange(window).repeat_interleave(window)
        cols = torch.arange(window).repeat(window)
        idxs = (rows[:, None] - rows[None, :]).abs() * window + (cols[:, None] - cols[None, :]).abs()
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) window tokens -> (B, N, C)."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        if not eager_inference():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            # Inference: the plain product is faster than SDPA with a float mask on the CPU (which
            # scans the mask for -inf rows on every call).
            scores = torch.matmul(q, k.transpose(-2, -1)).mul_(self.key_dim ** -0.5).add_(bias)
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv and MLP on (B, H*W, C) tokens."""

    def __init__(self, dim: int, input_resolution: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, window_size)
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C) tokens -> (B, H*W, C)."""
        if eager_inference(self):
            return self._forward_by_chunks(x)
        batch, length, channels = x.shape
        size, window = self.input_resolution, self.window_size
        if size == window:
            attended = self.attn(x)
        else:
            # Zero padding goes in before the attention's own LayerNorm, as in the official code.
            pad = (window - size % window) % window
            grid = F.pad(x.view(batch, size, size, channels), (0, 0, 0, pad, 0, pad))
            padded = size + pad
            count = padded // window
            windows = grid.view(batch, count, window, count, window, channels).transpose(2, 3)
            windows = self.attn(windows.reshape(-1, window * window, channels))
            grid = windows.view(batch, count, count, window, window, channels).transpose(2, 3)
            attended = grid.reshape(batch, padded, padded, channels)[:, :size, :size].reshape(batch, length, channels)
        x = x + attended
        # The tokens viewed as a channels-last map: no transposed copy in or out of the conv.
        x = self.local_conv(x.view(batch, size, size, channels).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).reshape(batch, length, channels)
        return x + self.mlp(x)

    def _forward_by_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """The same block in eager inference, by rows of windows and chunks of tokens: the
        (windows, heads, 49, 49) scores, q/k/v and the 4x-wide MLP map exist for one chunk at
        a time (stage 1's are 14-34 MB whole), and stay near the cache."""
        batch, length, channels = x.shape
        size, window = self.input_resolution, self.window_size
        count = -(-size // window)
        padded = count * window
        grid = x.view(batch, size, size, channels)
        out = x.clone()
        out_grid = out.view(batch, size, size, channels)
        window_rows = max(1, CHUNK_ELEMENTS // (padded * window * self.attn.qkv.out_features))
        for first in range(0, count, window_rows):
            top, bottom = first * window, min(padded, (first + window_rows) * window)
            rows = grid[:, top:min(bottom, size)]
            # Zero padding goes in before the attention's own LayerNorm, as in the official code.
            rows = F.pad(rows, (0, 0, 0, padded - size, 0, bottom - top - rows.shape[1]))
            band_count = (bottom - top) // window
            windows = rows.view(batch, band_count, window, count, window, channels).transpose(2, 3)
            windows = self.attn(windows.reshape(-1, window * window, channels))
            rows = windows.view(batch, band_count, count, window, window, channels).transpose(2, 3)
            rows = rows.reshape(batch, bottom - top, padded, channels)
            out_grid[:, top:min(bottom, size)] += rows[:, : min(bottom, size) - top, :size]
        # The tokens viewed as a channels-last map: no transposed copy in or out of the conv.
        out = self.local_conv(out_grid.permute(0, 3, 1, 2))
        out = out.permute(0, 2, 3, 1).reshape(batch, length, channels)
        tokens = max(1, CHUNK_ELEMENTS // self.mlp.fc1.out_features)
        for start in range(0, length, tokens):
            chunk = out[:, start:start + tokens]
            chunk += self.mlp(chunk)
        return out


#: Elements of the widest map of one chunk in TinyViT blocks' eager inference (the MLP's hidden
#: map, the attention's q/k/v): 4 MB of float32, near the cache's size.
CHUNK_ELEMENTS = 1 << 20


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then an optional patch merge."""

    def __init__(self, blocks: Sequence[TinyViTBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT for SAM: (B, 3, 1024, 1024) -> :class:`ImageFeatures`.

    With ``keep_early``, ``ImageFeatures.early`` is the stage-2 output after its patch merge,
    (B, 64, 64, 160) for TinyViT-5M (Light HQ-SAM's early feature). ``norm_head``/``head`` are the unused
    ImageNet classifier, kept so that the official files load strictly.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.returns_interm = False  # what the official call returns: see forward
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        resolution = img_size // 4
        # Each merge halves the grid except the last one (stage 2 -> 3), which keeps 64x64.
        resolutions = [resolution, resolution // 2, resolution // 4, resolution // 4]
        self.layers = nn.ModuleList()
        for stage, dim in enumerate(embed_dims):
            last = stage == len(embed_dims) - 1
            downsample = None
            if not last:
                stride = resolutions[stage] // resolutions[stage + 1]
                downsample = PatchMerging(resolutions[stage], dim, embed_dims[stage + 1], stride)
            if stage == 0:
                self.layers.append(ConvLayer(dim, depths[0], mbconv_expand_ratio, downsample))
            else:
                blocks = [
                    TinyViTBlock(dim, resolutions[stage], num_heads[stage], window_sizes[stage], mlp_ratio)
                    for _ in range(depths[stage])
                ]
                self.layers.append(BasicLayer(blocks, downsample))
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.grid = resolutions[-1]
        self.early_stage = 1
        self.early_feature_dim = embed_dims[self.early_stage + 1]

    def forward(
        self, x: torch.Tensor, keep_early: bool | None = None
    ) -> ImageFeatures | torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, 3, 1024, 1024) normalised image.

        finesam's call (``keep_early`` given) returns :class:`ImageFeatures`. The official call
        ``encoder(x)`` returns the (B, 256, 64, 64) embedding (MobileSAM), or with
        ``returns_interm`` (Light HQ-SAM) the tuple (embedding, [early feature (B, 64, 64, 160)]).
        """
        official = keep_early is None
        keep_early = bool(keep_early) or (official and self.returns_interm)
        x = self.patch_embed(x)
        early = None
        for stage, layer in enumerate(self.layers):
            x = layer(x)
            if keep_early and stage == self.early_stage:
                early = x.view(x.shape[0], self.grid, self.grid, -1)
        batch = x.shape[0]
        embedding = self.neck(x.view(batch, self.grid, self.grid, -1).permute(0, 3, 1, 2))
        if official:
            return (embedding, [early]) if self.returns_interm else embedding
        return ImageFeatures(embedding, early)
