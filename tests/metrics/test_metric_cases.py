"""Hand-made cases with known answers, degenerate-case conventions, ignore masks, bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import metrics_recipe as recipe
from finesam.metrics import (
    METRIC_KEYS,
    MaskMetrics,
    adaptive_emeasure,
    adaptive_fmeasure,
    boundary_iou,
    boundary_width,
    emeasure_curve,
    fmeasure_curve,
    human_correction_effort,
    iou,
    mae,
    mask_boundary,
    mba_radii,
    mean_boundary_accuracy,
    s_measure,
    weighted_fmeasure,
)

H, W = 64, 80
N = H * W


def square(y0=20, x0=30, side=20, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[y0 : y0 + side, x0 : x0 + side] = 255
    return m


EMPTY = np.zeros((H, W), np.uint8)
FULL = np.full((H, W), 255, np.uint8)


# ------------------------------------------------------------------ geometry helpers
def test_boundary_width_and_mba_radii():
    assert boundary_width(400, 267) == 10  # round(0.02 * 480.9)
    assert boundary_width(10, 10) == 1  # never below 1
    assert mba_radii(1080, 1920) == [1, 2, 4, 6, 8]  # R = 10: 1 + int(9 / 5 * i)
    assert mba_radii(64, 80) == [1, 1, 1, 1, 1]  # R < 1: int() truncates toward zero


def test_mask_boundary_of_a_square_and_at_the_image_border():
    d = boundary_width(H, W)  # round(0.02 * 102.4) = 2
    assert d == 2
    b = mask_boundary(square() > 0)
    inner = np.zeros((H, W), bool)
    inner[20 + d : 40 - d, 30 + d : 50 - d] = True
    np.testing.assert_array_equal(b, (square() > 0) & ~inner)
    # a full mask has its boundary along the image border (zero padding)
    bf = mask_boundary(np.ones((H, W), bool))
    assert bf.sum() == N - (H - 2 * d) * (W - 2 * d)


# ------------------------------------------------------------------ known answers
def test_perfect_prediction():
    gt = square()
    m = MaskMetrics()
    v = m.update(gt, gt)
    assert v["iou"] == v["biou"] == v["mba"] == 1.0
    assert v["max_f"] == v["adp_f"] == v["weighted_f"] == 1.0
    assert v["mae"] == 0.0 and v["hce"] == 0.0
    assert v["s_measure"] == pytest.approx(1.0, abs=1e-12)
    # PySODMetrics divides the E-measure sum by N - 1 + eps: a perfect map scores N / (N - 1)
    assert v["max_e"] == pytest.approx(N / (N - 1)) and v["adp_e"] == pytest.approx(N / (N - 1))
    # at threshold 0 every pixel is foreground: precision = |G| / N
    f = fmeasure_curve(gt, gt)
    p0 = 400 / N
    assert f[0] == pytest.approx(1.3 * p0 / (0.3 * p0 + 1))
    assert (f[1:] == 1.0).all()


def test_known_iou_and_mba_values():
    gt = square()  # 20x20 = 400 px
    pred = square(y0=20, x0=40)  # shifted right by 10: overlap 200
    assert iou(pred, gt) == pytest.approx(200 / 600)
    # mBA, radius 1 (3x3 cross): band = 76 inner-ring + 80 outer-ring pixels
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    assert disk.sum() == 5  # a cross
    assert mean_boundary_accuracy(EMPTY, gt) == pytest.approx(80 / 156)
    assert mean_boundary_accuracy(FULL, gt) == pytest.approx(76 / 156)


def test_empty_prediction_on_object():
    gt = square()
    assert iou(EMPTY, gt) == 0.0
    assert boundary_iou(EMPTY, gt) == 0.0
    # PySODMetrics quirk kept: the adaptive threshold of an all-zero map is 0, so every
    # pixel counts as foreground (precision |G| / N, recall 1), like threshold 0 of the curve
    p0 = 400 / N
    assert adaptive_fmeasure(EMPTY, gt) == pytest.approx(1.3 * p0 / (0.3 * p0 + 1))
    f = fmeasure_curve(EMPTY, gt)
    assert f[0] == adaptive_fmeasure(EMPTY, gt) and f[1:].max() == 0.0
    assert mae(EMPTY, gt) == pytest.approx(400 / N)
    assert weighted_fmeasure(EMPTY, gt) == 0.0
    # object part: foreground s_object(0) = 0, background s_object(1) = 2 / (2 + eps)
    assert 0 < s_measure(EMPTY, gt) < 0.5
    assert human_correction_effort(EMPTY, gt) > 0


def test_empty_ground_truth_conventions():
    # both empty: a perfect answer
    v = MaskMetrics().update(EMPTY, EMPTY)
    assert v["iou"] == v["biou"] == v["mba"] == 1.0  # our convention (0/0 in the references)
    assert v["max_f"] == v["adp_f"] == 0.0  # PySODMetrics: recall has |G| = 0 -> F = 0
    assert v["weighted_f"] == 0.0  # PySODMetrics: empty GT -> 0
    assert v["mae"] == 0.0 and v["s_measure"] == 1.0 and v["hce"] == 0.0
    assert v["max_e"] == pytest.approx(N / (N - 1))  # E counts predicted-background pixels
    # object predicted on an empty GT
    v = MaskMetrics().update(square(), EMPTY)
    assert v["iou"] == v["biou"] == v["mba"] == 0.0
    assert v["mae"] == pytest.approx(400 / N) and v["s_measure"] == pytest.approx(1 - 400 / N)
    assert v["hce"] == 1.0  # one independent FP region, not attached to anything
    v = MaskMetrics().update(FULL, EMPTY)
    assert v["mae"] == 1.0 and v["s_measure"] == 0.0 and v["iou"] == 0.0


def test_full_ground_truth_conventions():
    v = MaskMetrics().update(FULL, FULL)
    assert v["iou"] == v["biou"] == v["mba"] == 1.0
    assert v["s_measure"] == 1.0 and v["mae"] == 0.0 and v["hce"] == 0.0
    v = MaskMetrics().update(EMPTY, FULL)
    assert v["iou"] == 0.0 and v["mba"] == 0.0 and v["s_measure"] == 0.0 and v["mae"] == 1.0


def test_constant_prediction_is_not_stretched():
    gt = square()
    half = np.full((H, W), 100, np.uint8)
    assert mae(half, gt) == pytest.approx(np.mean(np.abs(100 / 255 - (gt > 128))))
    # a non-constant map is min-max stretched: 60/140 behaves like 0/255
    low = np.where(gt > 128, 140, 60).astype(np.uint8)
    assert mae(low, gt) == 0.0 and s_measure(low, gt) == s_measure(gt, gt)


def test_hce_counts_independent_regions_and_relaxes_thin_errors():
    gt = square(y0=10, x0=10, side=40, shape=(100, 100))
    blob = gt.copy()
    blob[70:85, 70:85] = 255  # a detached false-positive blob: 1 click
    assert human_correction_effort(blob, gt) == 1
    small = gt.copy()
    small[70:75, 70:77] = 255  # thinner than 2 * relax + 1: eroded away, forgiven
    assert human_correction_effort(small, gt) == 0
    thin = gt.copy()
    thin[10:50, 50] = 255  # a 1-pixel-thick error along the true boundary: relaxed away
    assert human_correction_effort(thin, gt) == 0
    hole = gt.copy()
    hole[20:35, 20:35] = 0  # a false-negative hole inside the object: 1 click
    assert human_correction_effort(hole, gt) == 1


# ------------------------------------------------------------------ aggregation
def test_max_f_is_max_of_mean_curve_not_mean_of_maxima():
    gt = square()
    a = cv2.GaussianBlur(gt, (0, 0), 3)
    b = np.roll(cv2.GaussianBlur(gt, (0, 0), 6), 5, axis=1)
    m = MaskMetrics()
    m.update(a, gt)
    m.update(b, gt)
    mean_curve = (fmeasure_curve(a, gt) + fmeasure_curve(b, gt)) / 2
    mean_of_maxima = (fmeasure_curve(a, gt).max() + fmeasure_curve(b, gt).max()) / 2
    result = m.compute()
    assert result["max_f"] == pytest.approx(mean_curve.max(), abs=1e-15)
    assert result["max_f"] < mean_of_maxima
    assert result["mean_f"] == pytest.approx(mean_curve.mean(), abs=1e-15)
    e_curve = (emeasure_curve(a, gt) + emeasure_curve(b, gt)) / 2
    assert result["max_e"] == pytest.approx(e_curve.max(), abs=1e-15)
    assert result["iou"] == pytest.approx((iou(a, gt) + iou(b, gt)) / 2)
    assert tuple(result) == METRIC_KEYS and len(m) == 2
    m.reset()
    assert len(m) == 0


# ------------------------------------------------------------------ ignore masks
def _blurred_pair():
    gt = square(y0=10, x0=12, side=36)
    pred = np.roll(cv2.GaussianBlur(gt, (0, 0), 3), (3, -4), axis=(0, 1))
    return pred, gt


def test_ignore_nothing_equals_no_ignore():
    pred, gt = _blurred_pair()
    assert MaskMetrics().update(pred, gt, np.zeros((H, W), bool)) == MaskMetrics().update(pred, gt)


def test_ignore_equals_cropping_for_counting_measures():
    pred, gt = _blurred_pair()
    ignore = np.zeros((H, W), bool)
    ignore[44:] = True  # bottom rows, partly on the object
    ignore[:, :5] = True
    crop = (slice(0, 44), slice(5, W))
    pc, gc = pred[crop], gt[crop]
    np.testing.assert_allclose(fmeasure_curve(pred, gt, ignore=ignore), fmeasure_curve(pc, gc), atol=1e-12)
    np.testing.assert_allclose(emeasure_curve(pred, gt, ignore=ignore), emeasure_curve(pc, gc), atol=1e-12)
    assert adaptive_fmeasure(pred, gt, ignore=ignore) == pytest.approx(adaptive_fmeasure(pc, gc), abs=1e-12)
    assert adaptive_emeasure(pred, gt, ignore=ignore) == pytest.approx(adaptive_emeasure(pc, gc), abs=1e-12)
    assert mae(pred, gt, ignore=ignore) == pytest.approx(mae(pc, gc), abs=1e-12)
    assert iou(pred, gt, ignore=ignore) == pytest.approx(iou(pc, gc), abs=1e-12)


def test_ignore_fills_prediction_for_structural_measures():
    gt = square(y0=10, x0=12, side=36)
    pred = np.roll(gt, (2, 5), axis=(0, 1))  # binary: min-max range is the same with or without ignore
    ignore = np.zeros((H, W), bool)
    ignore[:, 40:] = True
    filled = np.where(ignore, gt, pred)
    assert s_measure(pred, gt, ignore=ignore) == s_measure(filled, gt)
    assert weighted_fmeasure(pred, gt, ignore=ignore) == weighted_fmeasure(filled, gt)
    assert human_correction_effort(pred, gt, ignore=ignore) == human_correction_effort(filled, gt)


def test_ignoring_every_error_gives_perfect_scores():
    gt = square()
    pred = cv2.dilate(gt, np.ones((5, 5), np.uint8))
    ignore = (pred > 128) != (gt > 128)
    v = MaskMetrics().update(pred, gt, ignore)
    assert v["iou"] == v["biou"] == v["mba"] == 1.0
    assert v["mae"] == 0.0 and v["hce"] == 0.0 and v["weighted_f"] == 1.0


def test_boundary_iou_fills_prediction_and_drops_ignored_pixels():
    gt = square()
    pred = square(y0=22, x0=31)
    ignore = np.zeros((H, W), bool)
    ignore[:, :40] = True
    filled = np.where(ignore, gt, pred) > 128  # no error on ignored pixels
    bp, bg = mask_boundary(filled), mask_boundary(gt > 128)
    keep = ~ignore
    expected = (bp & bg & keep).sum() / ((bp | bg) & keep).sum()
    assert boundary_iou(pred, gt, ignore=ignore) == pytest.approx(expected)


@pytest.mark.skipif(not (recipe.DATA_ROOT / "grabcut").is_dir(), reason="GrabCut data not found")
def test_grabcut_band_as_ignore():
    gts = (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((recipe.DATA_ROOT / "grabcut" / "gt").glob("*.bmp")))
    gt = next(m for m in gts if (m == 128).any())
    ignore = gt == 128
    # any answer inside the unknown band is right: foreground plus half of the band
    rng = np.random.default_rng(0)
    pred = np.where((gt > 128) | (ignore & (rng.random(gt.shape) < 0.5)), 255, 0).astype(np.uint8)
    v = MaskMetrics().update(pred, gt, ignore)
    assert v["iou"] == 1.0 and v["biou"] == 1.0 and v["mae"] == 0.0 and v["hce"] == 0.0
    assert MaskMetrics().update(pred, gt)["iou"] < 1.0


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "pred, gt, ignore, match",
    [
        (np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8), None, "shape"),
        (np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.uint8), None, "2-D"),
        (np.zeros((0, 5), np.uint8), np.zeros((0, 5), np.uint8), None, "empty"),
        (np.zeros((4, 5), np.int64), np.zeros((4, 5), np.uint8), None, "dtype int64"),
        (np.full((4, 5), 1.5), np.zeros((4, 5), np.uint8), None, r"\[0, 1\]"),
        (np.full((4, 5), np.nan), np.zeros((4, 5), np.uint8), None, "NaN"),
        (np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.float32), None, "gt has dtype float32"),
        (np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), "bool mask"),
        (np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), np.zeros((5, 4), bool), "ignore has shape"),
        (np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), np.ones((4, 5), bool), "every pixel"),
        (None, np.zeros((4, 5), np.uint8), None, "None"),
        (np.zeros((4, 5), np.uint8), np.eye(4, 5, dtype=np.uint8), None, "gt is uint8 with values 0/1"),
        (np.eye(4, 5, dtype=np.uint8), np.zeros((4, 5), np.uint8), None, "pred is uint8 with values 0/1"),
    ],
)
def test_bad_input_raises_value_error(pred, gt, ignore, match):
    with pytest.raises(ValueError, match=match):
        MaskMetrics().update(pred, gt, ignore)
    for fn in (iou, mean_boundary_accuracy, mae, human_correction_effort):
        with pytest.raises(ValueError):
            fn(pred, gt, ignore=ignore)


def test_failed_update_records_nothing_and_empty_compute_raises():
    m = MaskMetrics()
    with pytest.raises(ValueError, match="no images"):
        m.compute()
    with pytest.raises(ValueError):
        m.update(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))
    assert len(m) == 0
