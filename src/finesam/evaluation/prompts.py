"""Prompt simulation for evaluation: boxes, box noise, interior points, error clicks.

All coordinates are (x, y) pixels of the image the prompt is for; masks are (H, W) bool.

Sources (read, re-expressed here):

- :func:`mask_box`: HQ-SAM ``utils/misc.py: masks_to_boxes`` (min / max pixel index of
  ``gt > 128``, max inclusive).
- :func:`squash_image` / :func:`squash_mask`: HQ-SAM's evaluation ``Resize([1024, 1024])``:
  ``F.interpolate(bilinear, align_corners=False)`` on the float image, then ``astype(uint8)``.
- :func:`dn_box_noise`: DN-DETR ``prepare_for_dn`` (and HQ-SAM's ``misc.box_noise``, used for
  its Table 13): on (cx, cy, w, h), ``diff = (w/2, h/2, w, h)``, each coordinate moves by
  ``U(-1, 1) * diff * scale``; HQ-SAM then clamps the xyxy box to the image.
- :func:`next_click`: RITM ``isegm/inference/clicker.py: Clicker._get_next_click``: distance
  transforms (``cv2.DIST_L2``, exact mask) of the zero-padded false-negative and false-positive
  maps, already-clicked pixels zeroed; the larger maximum wins (FN -> positive click,
  FP -> negative), the click is the first pixel (row-major) at that maximum.
- :func:`error_component_clicks`: Pi-SAM ``get_points_coor`` (see anchors 3.5): errors eroded
  by 1 px, 8-connected components, components under 2 px dropped, the largest ones taken,
  one uniformly random pixel each.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

SQUASH_SIZE = 1024


class Click(NamedTuple):
    """A simulated click at pixel (x, y); ``positive``: foreground (label 1) or background (0)."""

    x: int
    y: int
    positive: bool


def seeded_rng(seed: int, name: str, *extra: int) -> np.random.Generator:
    """A generator that depends only on the seed, the item name and ``extra`` (not on run order)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8")), *extra])


# --- boxes -----------------------------------------------------------------------------------
def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight (4,) float box x0, y0, x1, y1 (inclusive pixel indices) of a bool mask; None if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def squash_image(image: np.ndarray, size: int = SQUASH_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: bilinear squash of the float image, truncated."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    squashed = F.interpolate(tensor, (size, size), mode="bilinear", align_corners=False)
    return squashed[0].permute(1, 2, 0).numpy().astype(np.uint8)


def squash_mask(gt: np.ndarray, size: int = SQUASH_SIZE) -> np.ndarray:
    """(H, W) uint8 mask -> (size, size) float32 0..255, bilinear (HQ-SAM resizes the label so)."""
    tensor = torch.from_numpy(np.ascontiguousarray(gt)).float()[None, None]
    return F.interpolate(tensor, (size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def resize_logits(logits, size: tuple[int, int]) -> np.ndarray:
    """(h, w) logits (numpy or torch) -> (H, W) float32, bilinear with align_corners=False."""
    tensor = torch.as_tensor(np.asarray(logits, dtype=np.float32))[None, None]
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor[0, 0].numpy()
    return F.interpolate(tensor, tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def squashed_to_original(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, 2) (x, y) pixels of the ``SQUASH_SIZE`` square -> the original image of ``size`` = (H, W).

    Pixel centres stay aligned (the inverse of :func:`original_to_squashed`), so a box of
    inclusive pixel indices maps to the pixels it covers in the original image.
    """
    height, width = size
    xy = np.array(xy, dtype=np.float64).reshape(-1, 2)
    xy[:, 0] = (xy[:, 0] + 0.5) * width / SQUASH_SIZE - 0.5
    xy[:, 1] = (xy[:, 1] + 0.5) * height / SQUASH_SIZE - 0.5
    return xy


def original_to_squashed(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, 2) (x, y) pixels of the original image of ``size`` = (H, W) -> the ``SQUASH_SIZE`` square."""
    height, width = size
    xy = np.array(xy, dtype=np.float64).reshape(-1, 2)
    xy[:, 0] = (xy[:, 0] + 0.5) * SQUASH_SIZE / width - 0.5
    xy[:, 1] = (xy[:, 1] + 0.5) * SQUASH_SIZE / height - 0.5
    return xy


def dn_box_noise(box: np.ndarray, scale: float, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """DN-DETR box noise on an xyxy pixel box, clipped to the image of ``size`` = (H, W).

    With (cx, cy, w, h) the box centre and size and u ~ U(-1, 1)^4 (one draw per coordinate):
    cx += u0 * scale * w / 2, cy += u1 * scale * h / 2, w += u2 * scale * w, h += u3 * scale * h.
    So the centre moves by at most ``scale`` times half the side and each side is scaled by a
    factor in [1 - scale, 1 + scale]. The result is clipped to [0, W] x [0, H] as HQ-SAM's
    ``box_noise`` clamps to [0, 1024].
    """
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    u = rng.uniform(-1.0, 1.0, size=4)
    cx, cy = cx + u[0] * scale * w / 2, cy + u[1] * scale * h / 2
    w, h = w + u[2] * scale * w, h + u[3] * scale * h
    noisy = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    height, width = size
    return np.clip(noisy, 0, [width, height, width, height])


# --- points ----------------------------------------------------------------------------------
def _padded_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel to the nearest non-mask pixel or image border."""
    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def interior_point(mask: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the maximum of the interior distance transform (first in row-major order).

    The "center" click of SAM / HQ-SAM / RITM; None for an empty mask.
    """
    if not mask.any():
        return None
    distance = _padded_distance(mask)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def next_click(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, not_clicked: np.ndarray | None = None
) -> Click | None:
    """RITM's robot user: the click that corrects the largest error region.

    pred, gt: (H, W) bool; valid: (H, W) bool, False on ignored pixels (never an error);
    not_clicked: (H, W) bool, False on pixels clicked before (never clicked again).
    The false-negative map (gt and not pred) and the false-positive map are compared by the
    maximum of their distance transforms (so the widest error region wins: FN -> positive
    click at its interior maximum, FP -> negative click). None when nothing is left to fix.
    With an empty prediction this is the GT's interior point.
    """
    fn = gt & ~pred
    fp = pred & ~gt
    if valid is not None:
        fn, fp = fn & valid, fp & valid
    fn_distance = _padded_distance(fn)
    fp_distance = _padded_distance(fp)
    if not_clicked is not None:
        fn_distance *= not_clicked
        fp_distance *= not_clicked
    fn_max, fp_max = float(fn_distance.max()), float(fp_distance.max())
    if max(fn_max, fp_max) == 0:
        return None
    positive = fn_max > fp_max
    distance = fn_distance if positive else fp_distance
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(int(x), int(y), positive)


def random_points(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(k, 2) (x, y) pixels drawn uniformly without replacement from ``mask``; k = min(count, |mask|)."""
    ys, xs = np.nonzero(mask)
    chosen = rng.choice(xs.size, size=min(count, xs.size), replace=False)
    return np.stack([xs[chosen], ys[chosen]], axis=1).astype(np.float64)


# --- Pi-SAM error clicks ---------------------------------------------------------------------
ERROR_KINDS = ("fg", "bg", "all")
MIN_COMPONENT_AREA = 2


def error_component_clicks(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None,
    count: int,
    kind: str,
    rng: np.random.Generator,
) -> list[Click]:
    """Pi-SAM's simulated corrections: one random pixel in each of the ``count`` largest errors.

    pred, gt, valid: (H, W) bool. Errors: missed foreground (gt & ~pred, "fg", positive
    clicks) and false foreground (pred & ~gt, "bg", negative clicks), outside ignored pixels.
    Each error map is eroded by one pixel (3x3, zero border: Pi-SAM's Laplacian test), split
    into 8-connected components, components of fewer than 2 pixels are dropped; ``kind``
    "fg" / "bg" / "all" chooses which maps compete. The largest ``count`` components (ties:
    positive first, then label order) get one uniformly random pixel each, in that order.
    Returns up to ``count`` clicks (fewer when there are fewer components); calling with the
    same ``rng`` state and a larger ``count`` extends the same list.
    """
    if kind not in ERROR_KINDS:
        raise InvalidInputError(f"kind must be one of {ERROR_KINDS}, got {kind!r}")
    maps = []
    if kind in ("fg", "all"):
        maps.append((gt & ~pred, True))
    if kind in ("bg", "all"):
        maps.append((pred & ~gt, False))
    components = []  # (-area, 0 for positive, label, labels image)
    for error, positive in maps:
        if valid is not None:
            error = error & valid
        eroded = cv2.erode(error.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(eroded, connectivity=8)
        for label in range(1, n):
            area = int(stats[label, cv2.CC_STAT_AREA])
            if area >= MIN_COMPONENT_AREA:
                components.append((-area, 0 if positive else 1, label, labels, positive))
    components.sort(key=lambda c: c[:3])
    clicks = []
    for _, _, label, labels, positive in components[:count]:
        ys, xs = np.nonzero(labels == label)
        pick = int(rng.integers(xs.size))
        clicks.append(Click(int(xs[pick]), int(ys[pick]), positive))
    return clicks
