"""Tensor/numpy helpers for automatic mask generation.

Point grids, crop boxes, stability scores, boxes from masks, uncropping, run-length encoding
and small-region removal, with the semantics of ``segment_anything.utils.amg``.

RLEs are the uncompressed COCO form: ``{"size": [H, W], "counts": [n0, n1, ...]}`` where the
counts alternate between runs of 0 and runs of 1 over the mask read column by column
(Fortran order), starting with a (possibly empty) run of 0.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ..formats.rle import compress_counts

Rle = dict  # {"size": [H, W], "counts": list[int]}


class MaskData:
    """Per-mask columns (tensors, arrays or lists of equal length) filtered and concatenated together."""

    def __init__(self, **columns: Any) -> None:
        self._columns: dict[str, Any] = {}
        for key, value in columns.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(value, (list, np.ndarray, torch.Tensor)):
            raise TypeError(f"MaskData column {key!r} must be a list, numpy array or tensor, got {type(value).__name__}")
        self._columns[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._columns[key]

    def __delitem__(self, key: str) -> None:
        del self._columns[key]

    def __contains__(self, key: str) -> bool:
        return key in self._columns

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def keys(self):
        return self._columns.keys()

    def items(self):
        return self._columns.items()

    def filter(self, keep: torch.Tensor | np.ndarray) -> None:
        """Keep rows by a boolean mask or by indices (indices also reorder)."""
        keep_np = keep.detach().cpu().numpy() if isinstance(keep, torch.Tensor) else np.asarray(keep)
        if keep_np.dtype != bool:
            keep_np = keep_np.astype(np.int64, copy=False)
        for key, value in self._columns.items():
            if isinstance(value, torch.Tensor):
                self._columns[key] = value[torch.as_tensor(keep_np, device=value.device)]
            elif isinstance(value, np.ndarray):
                self._columns[key] = value[keep_np]
            elif keep_np.dtype == bool:
                self._columns[key] = [item for item, flag in zip(value, keep_np) if flag]
            else:
                self._columns[key] = [value[i] for i in keep_np]

    def cat(self, other: "MaskData") -> None:
        """Append the rows of ``other`` (columns missing here are taken as they are)."""
        for key, value in other.items():
            if key not in self._columns:
                self._columns[key] = value
            elif isinstance(value, torch.Tensor):
                self._columns[key] = torch.cat([self._columns[key], value.to(self._columns[key].device)], dim=0)
            elif isinstance(value, np.ndarray):
                self._columns[key] = np.concatenate([self._columns[key], value], axis=0)
            else:
                self._columns[key] = self._columns[key] + list(value)

    def to_numpy(self) -> None:
        for key, value in self._columns.items():
            if isinstance(value, torch.Tensor):
                self._columns[key] = value.detach().cpu().numpy()


# --- prompts and crops ---------------------------------------------------------------------
def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n^2, 2) (x, y) points at the centres of an n x n grid of [0, 1]^2, row by row."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)  # xs varies along a row, as the official grid
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer 0..n_layers; layer i has int(n_per_side / scale_per_layer**i) per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes [x0, y0, x1, y1] and their layer indices: the whole image (layer 0), then
    (2^i)^2 overlapping crops for layer i = 1..n_layers."""
    height, width = im_size
    boxes, layers = [[0, 0, width, height]], [0]
    short_side = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        x_starts = [int((crop_w - overlap) * i) for i in range(per_side)]
        y_starts = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(x_starts, y_starts):  # column by column, as the official order
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer)
    return boxes, layers


def batch_iterator(batch_size: int, *arrays: Sequence) -> Iterator[list]:
    """Slices of ``batch_size`` rows of each (equally long) array."""
    if not arrays or any(len(a) != len(arrays[0]) for a in arrays):
        raise InvalidInputError("batch_iterator needs arrays of one common length")
    for start in range(0, len(arrays[0]), batch_size):
        yield [a[start : start + batch_size] for a in arrays]


# --- scores and boxes ----------------------------------------------------------------------
def calculate_stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at ``mask_threshold +- offset``: (..., H, W) -> (...) float.

    The high-threshold mask lies inside the low one, so IoU = area(high) / area(low)."""
    high = count_true(logits > (mask_threshold + offset))
    low = count_true(logits > (mask_threshold - offset))
    return high / low


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """True pixels of each mask: bool (..., H, W) -> int64 (...).

    On the CPU numpy counts each mask's bytes in place; torch's ``sum`` and ``count_nonzero``
    first widen every pixel to int64 (20x slower on 1800x1200 masks)."""
    if masks.device.type != "cpu" or masks.numel() == 0:
        return torch.count_nonzero(masks, dim=(-1, -2))
    flat = masks.reshape(-1, *masks.shape[-2:]).numpy()
    counts = [np.count_nonzero(mask) for mask in flat]
    return torch.tensor(counts, dtype=torch.int64).reshape(masks.shape[:-2])


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Inclusive XYXY pixel boxes around boolean masks: (..., H, W) -> (..., 4) int64;
    [0, 0, 0, 0] for an empty mask."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    height, width = masks.shape[-2:]
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)

    def first_last(flags: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(size, device=flags.device)
        last = torch.where(flags, index, -1).amax(dim=-1)
        first = torch.where(flags, index, size).amin(dim=-1)
        return first, last

    top, bottom = first_last(rows, height)
    left, right = first_last(cols, width)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(dim=-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def mask_to_box_np(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (4,) int64 inclusive XYXY box, as :func:`batched_mask_to_box`."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, dtype=np.int64)
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.int64)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> torch.Tensor:
    """(N, 4) boxes in crop coordinates -> (N,) bool: within ``atol`` of a crop edge that is
    not also an edge of the original image (such masks are likely cut by the crop)."""
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float32, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop[None], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(box: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(..., 4) XYXY -> XYWH (a copy)."""
    out = box.clone() if isinstance(box, torch.Tensor) else np.array(box, copy=True)
    out[..., 2] = out[..., 2] - out[..., 0]
    out[..., 3] = out[..., 3] - out[..., 1]
    return out


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) XYXY -> (N,) area, in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# --- crop -> image frame -------------------------------------------------------------------
def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """(..., 4) XYXY boxes in a crop -> the image frame."""
    x0, y0 = crop_box[:2]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """(..., 2) (x, y) points in a crop -> the image frame."""
    x0, y0 = crop_box[:2]
    return points + torch.tensor([x0, y0], device=points.device)


def uncrop_masks(masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """(..., h, w) masks of a crop -> (..., orig_h, orig_w), zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)
    return torch.nn.functional.pad(masks, pad, value=0)


# --- run-length encoding -------------------------------------------------------------------
def mask_to_rle(masks: torch.Tensor) -> list[Rle]:
    """(B, H, W) bool masks -> B uncompressed RLEs (COCO column-major convention)."""
    batch, height, width = masks.shape
    total = height * width
    if batch == 0:
        return []
    flat = masks.transpose(1, 2).reshape(batch, total)
    changes = (flat[:, 1:] != flat[:, :-1]).nonzero().cpu().numpy()  # row-major: sorted by mask
    first = flat[:, 0].cpu().numpy()
    split_at = np.searchsorted(changes[:, 0], np.arange(1, batch))
    out = []
    for index, starts in enumerate(np.split(changes[:, 1] + 1, split_at)):
        bounds = np.concatenate([[0], starts, [total]])
        counts = np.diff(bounds).tolist()
        if first[index]:
            counts.insert(0, 0)  # RLEs start with a run of 0
        out.append({"size": [height, width], "counts": counts})
    return out


def rle_to_mask(rle: Rle) -> np.ndarray:
    """Uncompressed RLE -> (H, W) bool array (C order)."""
    height, width = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise InvalidInputError(f"RLE counts sum to {int(counts.sum())}, expected H*W = {height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.ascontiguousarray(np.repeat(values, counts).reshape(width, height).T)


def area_from_rle(rle: Rle) -> int:
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: Rle) -> dict:
    """Uncompressed RLE -> compressed COCO RLE, ``counts`` as a str (JSON-friendly): the string
    pycocotools gives (see :mod:`finesam.formats.rle`)."""
    height, width = rle["size"]
    return {"size": [height, width], "counts": compress_counts(rle["counts"])}


# --- post-processing -----------------------------------------------------------------------
def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``
    pixels (8-connectivity). (H, W) bool -> (mask, changed). Islands mode keeps the largest
    island when every island is small."""
    import cv2

    if mode not in ("holes", "islands"):
        raise InvalidInputError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = (mask ^ holes).astype(np.uint8)  # holes are the regions of the inverted mask
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the background of ``working``
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    selected = np.zeros(n_labels, dtype=bool)
    if holes:
        selected[0] = True  # the mask itself
        selected[small] = True  # plus the small holes
    else:
        selected[1:] = True
        selected[small] = False
        if not selected.any():
            selected[int(np.argmax(sizes)) + 1] = True
    return selected[regions], True
