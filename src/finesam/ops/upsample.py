"""Bilinear upsampling of mask logits straight to boolean masks, in row chunks.

``F.interpolate(logits, size, mode="bilinear", align_corners=False) > 0`` holds a float32 copy
of every full-resolution mask (192 MB per mask on an 8000x6000 photo) and reads it back to
threshold it. :func:`upsample_to_masks` gives the same booleans, bit for bit, while holding
only a narrow float strip: the width pass is ``F.interpolate`` itself (on ``h`` rows, not
``H``), and each strip of output rows mixes two of those rows with the kernel's own height
weights. PyTorch's CPU kernel rounds ``fma(top, w_top, fl(bottom * w_bottom))``; the strip
computes ``top * w_top + fl(bottom * w_bottom)`` with ``addcmul`` (fused or not), whose sign is
the exact sum's wherever it is not zero (rounding is monotonic), and it settles the zeros in
float64, where ``top * w_top`` is exact. So every mask pixel equals the reference's, save
where the reference itself depends on the thread count: its scalar remainder loop rounds
``fl(top * w_top) + fl(bottom * w_bottom)``, which can give an exact 0 (False) where the exact
sum is positive; only exactly cancelling products do that (never seen with real logits).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Elements per float strip (all masks together): 4 MB, near the cache's size; larger strips
#: mean fewer (threaded) passes.
STRIP_ELEMENTS = 1 << 20
#: From this many output elements (all masks together: 64 MB of float32) the strips pay off in
#: memory; below, the reference (one threaded kernel and one threshold) is as fast or faster.
FAST_PATH_ELEMENTS = 1 << 24


def height_weights(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's bilinear (``align_corners=False``) source rows and weights for each output row.

    Returns ``top`` and ``bottom`` row indices (int64, (out_size,)) and their float32 weights,
    computed as ATen's CPU kernel does: a float32 scale ``in / out``, the source position
    ``scale * (i + 0.5) - 0.5`` in float64 clamped at 0 and rounded to float32, then
    ``lambda = position - floor(position)`` in float32.
    """
    scale = float(np.float32(in_size) / np.float32(out_size))
    position = (scale * (torch.arange(out_size, dtype=torch.float64) + 0.5) - 0.5).clamp(min=0).to(torch.float32)
    top = position.floor().to(torch.int64).clamp(max=in_size - 1)
    lam = (position - top.to(torch.float32)).clamp(0, 1)
    bottom = torch.where(top < in_size - 1, top + 1, top)
    return top, bottom, 1 - lam, lam


def use_fast_path(logits: torch.Tensor, size: tuple[int, int], threshold: float) -> bool:
    """Whether :func:`upsample_to_masks` takes the strip path (else it runs the reference)."""
    height, width = size
    return (
        logits.device.type == "cpu"
        and logits.dtype == torch.float32
        and logits.ndim == 4
        and threshold == 0.0
        and height >= 64
        and width >= 64
        and logits.shape[0] * logits.shape[1] * height * width >= FAST_PATH_ELEMENTS
        and not logits.requires_grad
    )


def upsample_to_masks(logits: torch.Tensor, size: tuple[int, int], threshold: float = 0.0) -> torch.Tensor:
    """(B, K, h, w) float logits -> (B, K, H, W) bool, equal to
    ``F.interpolate(logits, size, mode="bilinear", align_corners=False) > threshold``.

    On the CPU in float32 with threshold 0 (SAM's) it never holds the full-resolution float
    masks; elsewhere (CUDA, other dtypes or thresholds, small outputs) it runs the reference.
    """
    size = (int(size[0]), int(size[1]))
    if not use_fast_path(logits, size, threshold):
        return F.interpolate(logits, size, mode="bilinear", align_corners=False) > threshold
    height, width = size
    batch, channels, in_height, _ = logits.shape
    top, bottom, top_weight, bottom_weight = height_weights(in_height, height)
    masks = torch.empty((batch, channels, height, width), dtype=torch.bool)
    step = max(1, STRIP_ELEMENTS // (batch * channels * width))
    for start in range(0, height, step):
        rows = slice(start, min(start + step, height))
        # Width pass with the kernel itself, on the source rows this strip reads: with the
        # height unchanged its weights are (1, 0), so each value is exactly the kernel's own
        # horizontal mix of that source row (and the full-width map is never whole).
        first, last = int(top[rows][0]), int(bottom[rows][-1]) + 1
        source = logits[:, :, first:last]
        rows_mixed = F.interpolate(source, (last - first, width), mode="bilinear", align_corners=False)
        upper = rows_mixed.index_select(2, top[rows] - first)
        lower = rows_mixed.index_select(2, bottom[rows] - first).mul_(bottom_weight[rows, None])
        del rows_mixed
        mixed = torch.addcmul(lower, upper, top_weight[rows, None])
        torch.gt(mixed, 0.0, out=masks[:, :, rows])
        if torch.count_nonzero(mixed) < mixed.numel():  # a zero may hide the exact sum's sign: decide in float64
            exact = upper.double().mul_(top_weight[rows, None].double()).add_(lower.double()) > 0
            masks[:, :, rows] = torch.where(mixed == 0, exact, masks[:, :, rows])
    return masks
