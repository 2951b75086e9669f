"""Small building blocks shared by the encoders and decoders."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.hooks import has_forward_hooks


#: Output rows per band in banded convolutions at 256x256 (TinyViT stage 0, HQ's mask feature):
#: a band's widest map (256 channels x 34 rows x 256 columns, 8.9 MB) stays near the cache,
#: where the whole one is 64 MB.
BAND_ROWS = 32


def row_bands(height: int, rows: int = BAND_ROWS) -> Iterator[tuple[int, int]]:
    """[start, stop) output rows of consecutive bands covering ``height`` rows."""
    for start in range(0, height, rows):
        yield start, min(height, start + rows)


def input_rows(conv: nn.Conv2d, start: int, stop: int) -> tuple[int, int]:
    """[first, last) input rows that output rows [start, stop) of ``conv`` read, counting its
    zero padding (first < 0 or last > the input's height there)."""
    first = start * conv.stride[0] - conv.padding[0]
    return first, (stop - 1) * conv.stride[0] - conv.padding[0] + conv.kernel_size[0]


def with_zero_rows(band: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """(B, C, h, W) band with ``top`` and ``bottom`` zero rows added (a convolution's padding)."""
    if top == 0 and bottom == 0:
        return band
    return F.pad(band, (0, 0, top, bottom)).contiguous(memory_format=torch.channels_last)


def rows_of(x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """Rows [first, last) of a (B, C, H, W) map, zero outside [0, H)."""
    height = x.shape[2]
    return with_zero_rows(x[:, :, max(0, first):min(height, last)], max(0, -first), max(0, last - height))


def output_rows(conv: nn.Conv2d, in_rows: int) -> int:
    """Output rows of ``conv`` for ``in_rows`` input rows."""
    return (in_rows + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


def conv_pair_by_bands(
    x: torch.Tensor,
    first: nn.Conv2d,
    second: nn.Conv2d,
    run_first: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
    run_second: Callable[[torch.Tensor, tuple[int, int], int, int], torch.Tensor],
    rows: int = BAND_ROWS,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two stacked convolutions by bands of output rows, so that the map between them is never
    whole (and each band's maps stay near the cache).

    ``first`` and ``second`` give the geometry (kernel, stride, padding); ``run_first(rows,
    padding)`` applies the first convolution with that padding override, plus what follows it
    pixel by pixel, to input rows; ``run_second(mid, padding, start, stop)`` does the same for
    the second and returns output rows [start, stop). The rows' zero padding is added here.
    x: (B, C, H, W) -> (B, C_out, H_out, W_out) channels-last (written into ``out`` if given).
    """
    mid_height = output_rows(first, x.shape[2])
    out_height = output_rows(second, mid_height)
    for start, stop in row_bands(out_height, rows):
        mid_first, mid_last = input_rows(second, start, stop)
        low, high = max(0, mid_first), min(mid_height, mid_last)
        mid = run_first(rows_of(x, *input_rows(first, low, high)), (0, first.padding[1]))
        mid = with_zero_rows(mid, low - mid_first, mid_last - high)
        band = run_second(mid, (0, second.padding[1]), start, stop)
        if out is None:
            out = torch.empty((band.shape[0], band.shape[1], out_height, band.shape[3]), dtype=band.dtype,
                              device=band.device, memory_format=torch.channels_last)
        out[:, :, start:stop] = band
    return out


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a (B, C, H, W) map (biased variance, as SAM)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused kernel on a channels-last view: 2-4x faster than the official chain of
        # mean/sub/pow/div ops on large maps, same formula (differences ~1e-6). The parameter's
        # shape (not x's) keeps the normalised shape a constant for the ONNX exporter.
        normed = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)


def eager_inference(*observed: nn.Module) -> bool:
    """True in plain eager inference (no gradient recorded, not tracing or compiling): where
    in-place, chunked and fused forms of the same computation apply; autograd and exporters see
    the plain graph. False also while one of ``observed`` (or a submodule of it) has forward
    hooks: a form that bypasses or splits those modules' calls would skip or repeat the hooks.
    """
    if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not any(has_forward_hooks(module) for module in observed)


def transposed_conv_2x2(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """A kernel-2, stride-2 transposed convolution on channels-last maps, as one matrix product.

    x: (B, H, W, C_in) contiguous -> (B, 2H, 2W, C_out) contiguous. Its outputs never overlap,
    so each input pixel's (C_in) vector times the (C_in, 2*2*C_out) weight gives its 2x2 block.
    For wide inputs this beats oneDNN's transposed convolution (HQ's 768-channel early feature:
    1.6x); for narrow ones oneDNN's channels-last kernel is faster. Same sums, ~1e-7 relative.
    """
    batch, height, width, _ = x.shape
    out_channels = conv.out_channels
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, 4 * out_channels)  # (C_in, [di, dj, o])
    blocks = x.reshape(-1, conv.in_channels) @ weight
    if conv.bias is not None:
        blocks += conv.bias.repeat(4)
    blocks = blocks.view(batch, height, width, 2, 2, out_channels).transpose(2, 3)  # (B, H, di, W, dj, C_out)
    return blocks.reshape(batch, 2 * height, 2 * width, out_channels)


def channels_last_upscaling(upscaling: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A 4x upscaling ``ConvT(2x2) -> LayerNorm2d -> act -> ConvT(2x2) [-> act]`` (the layout of
    SAM's decoder upscaling and HQ's fusion branches) in eager inference, with the transposed
    convolutions as matrix products on channels-last maps (for wide inputs, see
    :func:`transposed_conv_2x2`).

    x: (B, C, H, W) -> (B, C_out, 4H, 4W) as a channels-last view (memory (B, 4H, 4W, C_out)).
    """
    first, norm, first_act, second, *last_act = upscaling
    y = transposed_conv_2x2(x.permute(0, 2, 3, 1).contiguous(), first)
    y = F.layer_norm(y, norm.weight.shape, norm.weight, norm.bias, norm.eps)
    y = transposed_conv_2x2(activate_in_place(first_act, y), second)
    for act in last_act:
        y = activate_in_place(act, y)
    return y.permute(0, 3, 1, 2)


def activate_in_place(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for an exact GELU (eager inference only: autograd needs x)."""
    if type(act) is nn.GELU and act.approximate == "none":
        return torch.ops.aten.gelu_(x)
    return act(x)


class MLPBlock(nn.Module):
    """Transformer feed-forward block: Linear(dim, hidden) -> act -> Linear(hidden, dim)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.lin1(x)
        if type(self.act) is nn.GELU and self.act.approximate == "none" and eager_inference():
            return self.lin2(torch.ops.aten.gelu_(hidden))  # in place: no second 4x-wide map
        return self.lin2(self.act(hidden))


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (the decoder's hypernetwork and IoU heads)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x
