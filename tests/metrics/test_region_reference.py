"""IoU / boundary IoU vs HQ-SAM's evaluation code, mBA vs CascadePSP's, on real masks.

The reference functions below transcribe the published definitions operation by
operation (HQ-SAM ``train/utils/misc.py``: ``mask_iou``, ``mask_to_boundary``,
``boundary_iou``, the latter from Bowen Cheng's Boundary IoU gist; CascadePSP
``util/compute_boundary_acc.py`` with the ``> 128`` binarisation of ``eval_post.py``),
working on numpy instead of torch tensors.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import metrics_recipe as recipe
from finesam.metrics import MaskMetrics, boundary_iou, boundary_width, iou, mba_radii, mean_boundary_accuracy

pytestmark = pytest.mark.skipif(
    not recipe.DATA_ROOT.is_dir(), reason=f"shared test data not found at {recipe.DATA_ROOT}"
)


# --- HQ-SAM (pred: logits > 0, i.e. probability > 0.5; gt: uint8 > 128) ---------------------
def hqsam_mask_iou(pred_bin, gt_u8):
    pred_label = pred_bin.astype(np.int32)
    label = (gt_u8 > 128).astype(np.int32)
    intersection = ((label * pred_label) > 0).sum()
    union = ((label + pred_label) > 0).sum()
    return intersection / union


def hqsam_mask_to_boundary(mask, dilation_ratio=0.02):
    h, w = mask.shape
    img_diag = np.sqrt(h**2 + w**2)
    dilation = int(round(dilation_ratio * img_diag))
    if dilation < 1:
        dilation = 1
    new_mask = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    kernel = np.ones((3, 3), dtype=np.uint8)
    new_mask_erode = cv2.erode(new_mask, kernel, iterations=dilation)
    mask_erode = new_mask_erode[1 : h + 1, 1 : w + 1]
    return mask - mask_erode


def hqsam_boundary_iou(gt_u8, pred_bin, dilation_ratio=0.02):
    dt = pred_bin.astype(np.uint8)
    gt = (gt_u8 > 128).astype(np.uint8)
    gt_boundary = hqsam_mask_to_boundary(gt, dilation_ratio)
    dt_boundary = hqsam_mask_to_boundary(dt, dilation_ratio)
    intersection = ((gt_boundary * dt_boundary) > 0).sum()
    union = ((gt_boundary + dt_boundary) > 0).sum()
    return intersection / union


# --- CascadePSP (gt, seg: uint8 images binarised with > 128) ------------------------------
def cascadepsp_boundary_acc(gt_u8, seg_u8):
    gt = (gt_u8 > 128).astype(np.uint8)
    seg = (seg_u8 > 128).astype(np.uint8)
    h, w = gt.shape
    min_radius = 1
    max_radius = (w + h) / 300
    num_steps = 5
    seg_acc = [None] * num_steps
    for i in range(num_steps):
        curr_radius = min_radius + int((max_radius - min_radius) / num_steps * i)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (curr_radius * 2 + 1, curr_radius * 2 + 1))
        boundary_region = cv2.morphologyEx(gt, cv2.MORPH_GRADIENT, kernel) > 0
        gt_in_bound = gt[boundary_region]
        seg_in_bound = seg[boundary_region]
        num_edge_pixels = boundary_region.sum()
        num_seg_gd_pix = (gt_in_bound * seg_in_bound + (1 - gt_in_bound) * (1 - seg_in_bound)).sum()
        seg_acc[i] = num_seg_gd_pix / num_edge_pixels
    return sum(seg_acc) / num_steps


def _natural_cases():
    """(id, pred uint8, gt uint8) of the recipe cases whose GT is a real mask."""
    for case in recipe.cases():
        if not case["gt"].startswith(("zeros:", "full:")):
            pred, gt = recipe.make_case(case)
            yield case["id"], pred, gt


def test_iou_biou_mba_match_official_definitions():
    worst = {"iou": 0.0, "biou": 0.0, "mba": 0.0}
    n = 0
    for case_id, pred, gt in _natural_cases():
        pred_bin = pred > 128
        ours = {"iou": iou(pred, gt), "biou": boundary_iou(pred, gt), "mba": mean_boundary_accuracy(pred, gt)}
        ref = {
            "iou": float(hqsam_mask_iou(pred_bin, gt)),
            "biou": float(hqsam_boundary_iou(gt, pred_bin)),
            "mba": float(cascadepsp_boundary_acc(gt, pred)),
        }
        for k in ours:
            worst[k] = max(worst[k], abs(ours[k] - ref[k]))
            assert ours[k] == pytest.approx(ref[k], abs=1e-12), (case_id, k)
        n += 1
    assert n == 66
    assert max(worst.values()) < 1e-12, worst


def test_accumulator_means_match_official_definitions():
    metrics = MaskMetrics()
    ref = {"iou": [], "biou": [], "mba": []}
    for _, pred, gt in list(_natural_cases())[:11]:
        metrics.update(pred, gt)
        ref["iou"].append(hqsam_mask_iou(pred > 128, gt))
        ref["biou"].append(hqsam_boundary_iou(gt, pred > 128))
        ref["mba"].append(cascadepsp_boundary_acc(gt, pred))
    result = metrics.compute()
    for k, v in ref.items():
        assert result[k] == pytest.approx(float(np.mean(v)), abs=1e-12), k


def test_full_resolution_dis_mask():
    """A 2658x2748 DIS mask: boundary width d = 76, mBA radii 1..14."""
    gt = cv2.imread(str(recipe.DATA_ROOT / "dis5k_samples" / "gt" / f"{recipe.DIS_STEM}.png"), 0)
    pred = recipe.make_pred(gt, {"kind": "blur_shift", "sigma": 6.0, "seed": 3, "max_shift": 30})
    assert boundary_width(*gt.shape) == 76 and mba_radii(*gt.shape) == [1, 4, 7, 11, 14]
    assert boundary_iou(pred, gt) == pytest.approx(hqsam_boundary_iou(gt, pred > 128), abs=1e-12)
    assert mean_boundary_accuracy(pred, gt) == pytest.approx(cascadepsp_boundary_acc(gt, pred), abs=1e-12)
    assert iou(pred, gt) == pytest.approx(hqsam_mask_iou(pred > 128, gt), abs=1e-12)


def test_float_prediction_uses_half_threshold():
    _, pred, gt = next(iter(_natural_cases()))
    prob = cv2.GaussianBlur(gt, (0, 0), 4) / 255.0
    assert iou(prob, gt) == pytest.approx(float(hqsam_mask_iou(prob > 0.5, gt)), abs=1e-12)
    assert boundary_iou(prob, gt) == pytest.approx(float(hqsam_boundary_iou(gt, prob > 0.5)), abs=1e-12)
