"""Two stacked convolutions by bands of output rows: the map between them is never whole, and
each band's maps stay near the cache (TinyViT's stage 0, HQ-SAM's mask feature)."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

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
