"""Greedy box non-maximum suppression in pure torch (no torchvision at run time).

Results equal ``torchvision.ops.nms`` / ``batched_nms``: the same stable descending score
order, the same float arithmetic for IoU (in the boxes' dtype), the same ``IoU > threshold``
test (made in double, as torchvision's C++ kernel compares against a double), and the same
dispatch in ``batched_nms`` (one offset NMS for few boxes, per-category NMS for many).
"""

from __future__ import annotations

import numpy as np
import torch

# Elements of one block of the pairwise suppression matrix; bounds memory for many boxes.
_BLOCK_ELEMENTS = 1 << 22


def _cpp_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(a < b, b, a)  # std::max(a, b), NaN handling included


def _cpp_min(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b < a, b, a)  # std::min(a, b)


def _exceeds(threshold: float, dtype: torch.dtype):
    """``iou > threshold`` with the threshold as a double, without casting the IoU matrix.

    For a float32 value v and a double t, with t32 = t rounded to float32: v > t is v >= t32
    when t32 > t, and v > t32 otherwise."""
    threshold = float(threshold)
    if dtype == torch.float64:
        return lambda iou: iou > threshold
    t32 = torch.tensor(threshold, dtype=torch.float32).item()
    if t32 > threshold:
        return lambda iou: iou >= t32
    return lambda iou: iou > t32


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS.

    boxes: (N, 4) XYXY; scores: (N,). Drops every box whose IoU with a higher-scoring kept box
    is > ``iou_threshold`` (equal scores: the earlier box ranks first).
    Returns int64 indices (K,) of the kept boxes, by decreasing score, on the boxes' device.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms expects boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    device = boxes.device
    count = boxes.shape[0]
    if count == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    order = torch.sort(scores, dim=0, descending=True, stable=True)[1]
    x1, y1, x2, y2 = boxes[order].unbind(dim=1)
    areas = (x2 - x1) * (y2 - y1)
    zero = boxes.new_zeros(())
    # Without NaNs the faster torch.maximum/minimum give the same values as std::max/min.
    finite = not bool(torch.isnan(boxes).any())
    vmax, vmin = (torch.maximum, torch.minimum) if finite else (_cpp_max, _cpp_min)
    exceeds = _exceeds(iou_threshold, boxes.dtype)
    suppressed = np.zeros(count, dtype=bool)
    keep: list[int] = []
    block = max(1, min(count, _BLOCK_ELEMENTS // count))
    for start in range(0, count, block):
        stop = min(start + block, count)
        rows, cols = slice(start, stop), slice(start, count)
        width = vmin(x2[rows, None], x2[None, cols]) - vmax(x1[rows, None], x1[None, cols])
        height = vmin(y2[rows, None], y2[None, cols]) - vmax(y1[rows, None], y1[None, cols])
        inter = _cpp_max(zero, width) * _cpp_max(zero, height)
        iou = inter / (areas[rows, None] + areas[None, cols] - inter)
        over = exceeds(iou).cpu().numpy()  # (rows, count - start)
        overlaps_any = over.any(axis=1)
        for i in range(start, stop):
            if suppressed[i]:
                continue
            keep.append(i)
            if overlaps_any[i - start]:
                suppressed[i + 1 :] |= over[i - start, i + 1 - start :]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category ``idxs`` (N,) independently; boxes (N, 4), scores (N,).

    Returns int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000):
        return _batched_nms_per_category(boxes, scores, idxs, iou_threshold)
    return _batched_nms_offset(boxes, scores, idxs, iou_threshold)


def _batched_nms_offset(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Shift each category's boxes so far apart that they cannot overlap, then one NMS."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _batched_nms_per_category(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for category in torch.unique(idxs):
        members = torch.where(idxs == category)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep_mask)[0]
    # The same (unstable) sort call as torchvision, so that equal scores come out alike.
    return kept[scores[kept].sort(descending=True)[1]]
