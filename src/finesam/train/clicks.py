"""Simulated correction clicks for Pi-SAM's second training stage (the Precise Interactor).

From the stage-1 prediction and the label, both on the 256 x 256 grid of the padded 1024
frame (anchors 3.5, the official ``get_points_coor``, one round):

1. ``pred = logits > 0`` (sigmoid > 0.5). Foreground errors: ``label == 1 and not pred``;
   background errors: ``label == 0 and pred``. Only exact 0 / 1 label values count: the soft
   (bilinearly resized) boundary of the label never yields a click.
2. Each error map is eroded by one pixel (3 x 3, outside the grid counts as 0), which drops
   1-px-thin errors.
3. 8-connected components of each eroded map (``cv2.connectedComponentsWithStats``);
   components of fewer than ``min_area`` pixels are dropped.
4. Training: ``n = rng.integers(1, min(max_points, #components) + 1)``; evaluation: ``n = 1``.
   The n largest components by area are kept (ties: foreground first, then by component
   label, i.e. raster order of their first pixel).
5. One uniformly random pixel per component (``rng.integers(area)`` over its pixels in raster
   order); the official code calls this ``get_center`` but picks no centre.
6. The click of pixel (row, col) is ``(x, y) = (col / 256, row / 256)``, normalised to the
   padded 1024 frame as :meth:`finesam.modeling.sam.Sam.correct` takes it. This is the
   convention :meth:`finesam.SamPredictor.correct` uses at inference (frame pixel / 1024, no
   half-pixel shift), so a click at original-image pixel ``(x, y)`` and a training click at
   grid cell ``(floor(x' / 4), floor(y' / 4))`` (``x'``: ``x`` in the 1024 frame) agree. The
   official code put (y, x) here while inference used (x, y): fixed.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from ..errors import InvalidInputError

GRID = 256
MAX_POINTS = 10
MIN_AREA = 2


def _error_components(error: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray]]:
    """(area, pixel indices (K, 2) row, col in raster order) of each 8-connected component of
    the 1-px eroded ``error`` map with at least ``min_area`` pixels, in label order."""
    eroded = cv2.erode(error.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(eroded, connectivity=8)
    components = []
    for label in range(1, count):
        area = int(stats[label, cv2.CC_STAT_AREA])
        if area >= min_area:
            left, top, width, height = (int(stats[label, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
            pixels = np.argwhere(labels[top : top + height, left : left + width] == label)  # raster order
            components.append((area, pixels + (top, left)))
    return components


def _check(stage1_logits, labels_256, rng_per_sample, max_points, min_area, content_sizes) -> None:
    for name, value in (("stage1_logits", stage1_logits), ("labels_256", labels_256)):
        if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[1] != 1 or value.shape[-2:] != (GRID, GRID):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidInputError(f"{name} must be a (B, 1, {GRID}, {GRID}) tensor, got {shape}")
    batch = stage1_logits.shape[0]
    if labels_256.shape[0] != batch:
        raise InvalidInputError(f"stage1_logits and labels_256 hold {batch} and {labels_256.shape[0]} samples; they must match")
    if len(rng_per_sample) != batch:
        raise InvalidInputError(f"rng_per_sample must hold one numpy Generator per sample ({batch}), got {len(rng_per_sample)}")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise InvalidInputError(f"max_points must be a positive integer, got {max_points!r}")
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise InvalidInputError(f"min_area must be a positive integer, got {min_area!r}")
    if labels_256.numel() and (float(labels_256.min()) < 0 or float(labels_256.max()) > 1):
        raise InvalidInputError("labels_256 must lie in [0, 1]: divide 0..255 labels by 255")
    if content_sizes is not None and (not isinstance(content_sizes, torch.Tensor) or content_sizes.shape != (batch, 2)):
        raise InvalidInputError(f"content_sizes must be a ({batch}, 2) tensor of (h, w) in the 1024 frame")


def simulate_correction_clicks(
    stage1_logits: torch.Tensor,
    labels_256: torch.Tensor,
    rng_per_sample: Sequence[np.random.Generator],
    max_points: int = MAX_POINTS,
    min_area: int = MIN_AREA,
    training: bool = True,
    *,
    content_sizes: torch.Tensor | None = None,
    frame_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clicks on the stage-1 errors (module docstring), in the form ``Sam.correct`` takes.

    Args:
        stage1_logits: (B, 1, 256, 256) stage-1 low-res logits (the padded 1024 frame).
        labels_256: (B, 1, 256, 256) labels in [0, 1] on the same grid (bilinear resize / 255).
        rng_per_sample: one numpy ``Generator`` per sample (e.g. ``sample_rng(seed, epoch,
            index, "clicks")``): the clicks of a sample do not depend on its batch.
        max_points, min_area: the official 10 and 2.
        training: draw the number of clicks (True) or take 1 (False, the official eval mode).
        content_sizes: optional (B, 2) (h, w) of the image content in the ``frame_size``
            frame; errors in the padding (where no click can be made at inference) are then
            ignored. ``None`` (the official behaviour) uses the whole grid.

    Returns:
        points (B, max_points, 2) float32 (x, y) in [0, 1) over the padded frame; flags
        (B, max_points) int64, 1 foreground / 0 background click; padding (B, max_points)
        bool, True for unused slots (their point and flag are 0); valid (B,) float32, 1 when
        the sample has at least one error component (0: mask it out of the loss).
        All on ``stage1_logits.device``.
    """
    _check(stage1_logits, labels_256, rng_per_sample, max_points, min_area, content_sizes)
    batch = stage1_logits.shape[0]
    predicted = (stage1_logits.detach()[:, 0] > 0).cpu().numpy()
    labels = labels_256.detach()[:, 0].float().cpu().numpy()
    points = np.zeros((batch, max_points, 2), np.float32)
    flags = np.zeros((batch, max_points), np.int64)
    padding = np.ones((batch, max_points), bool)
    valid = np.zeros(batch, np.float32)
    for b in range(batch):
        inside = np.ones((GRID, GRID), bool)
        if content_sizes is not None:
            cells = np.ceil(content_sizes[b].cpu().double().numpy() * GRID / frame_size).astype(int)
            inside[:] = False
            inside[: cells[0], : cells[1]] = True
        candidates = []  # (area, flag, pixels)
        for flag, error in ((1, (labels[b] == 1) & ~predicted[b]), (0, (labels[b] == 0) & predicted[b])):
            candidates += [(area, flag, pixels) for area, pixels in _error_components(error & inside, min_area)]
        if not candidates:
            continue
        rng = rng_per_sample[b]
        count = int(rng.integers(1, min(max_points, len(candidates)) + 1)) if training else 1
        # a stable sort keeps foreground before background and label order among equal areas
        order = sorted(range(len(candidates)), key=lambda i: -candidates[i][0])[:count]
        for slot, which in enumerate(order):
            area, flag, pixels = candidates[which]
            row, col = pixels[int(rng.integers(area))]
            points[b, slot] = (col / GRID, row / GRID)
            flags[b, slot] = flag
            padding[b, slot] = False
        valid[b] = 1.0
    device = stage1_logits.device
    return (torch.from_numpy(points).to(device), torch.from_numpy(flags).to(device),
            torch.from_numpy(padding).to(device), torch.from_numpy(valid).to(device))
