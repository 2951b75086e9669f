"""Regression tests of the "Hardening" issue: parameter domains, degenerate images, bad inputs.

One test group per defect:

1. numeric parameters out of their domain (or of the wrong type) are refused up front;
2. degenerate metric definitions (a 1-pixel E-measure of 4.5e15) have defined, finite values;
3. bad ``pred`` / ``gt`` / ``ignore`` give ``InvalidInputError`` (never a raw numpy error).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from finesam.errors import InvalidInputError
from finesam.metrics import (
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

rng = np.random.default_rng(7)
GT = np.zeros((12, 15), np.uint8)
GT[3:9, 4:11] = 255
PRED = np.clip(GT.astype(float) / 255 + rng.normal(0, 0.2, GT.shape), 0, 1)


# ------------------------------------------------------------------ 1. parameter domains
BAD_VALUES = {
    # dilation_ratio: a finite number in (0, 1]
    "dilation_ratio": [math.inf, -math.inf, math.nan, -0.02, 0.0, 1.5, True, "0.02", None, np.ones(2)],
    # beta2 / weighted_beta2: finite, > 0
    "beta2": [0.0, -1.0, math.inf, math.nan, False, "0.3", None],
    "weighted_beta2": [-1.0, 0.0, math.inf, math.nan, True, "1"],
    # alpha: in [0, 1]
    "alpha": [math.nan, -0.1, 1.1, math.inf, True, "0.5", None],
    # relax: an integer >= 0
    "relax": [1.5, 5.0, -1, True, "5", None, math.nan, np.float64(2)],
    # epsilon: finite, >= 0
    "epsilon": [-1.0, math.inf, math.nan, True, "2", None],
    "hce": ["yes", 1, None],
}

PUBLIC_WITH = {  # public functions taking each parameter (under the keyword named), on a normal sample
    "dilation_ratio": [lambda v: boundary_iou(PRED, GT, dilation_ratio=v), lambda v: mask_boundary(GT > 128, v)],
    "beta2": [lambda v: fmeasure_curve(PRED, GT, beta2=v), lambda v: adaptive_fmeasure(PRED, GT, beta2=v)],
    "weighted_beta2": [lambda v: weighted_fmeasure(PRED, GT, beta2=v)],
    "alpha": [lambda v: s_measure(PRED, GT, alpha=v)],
    "relax": [lambda v: human_correction_effort(PRED, GT, relax=v)],
    "epsilon": [lambda v: human_correction_effort(PRED, GT, epsilon=v)],
}


@pytest.mark.parametrize(
    "name, value", [(name, value) for name, values in BAD_VALUES.items() for value in values], ids=repr
)
def test_defect1_parameters_out_of_domain_are_refused(name, value):
    with pytest.raises(InvalidInputError, match=name) as info:
        MaskMetrics(**{name: value})
    assert "must be" in str(info.value)  # says what is allowed
    for call in PUBLIC_WITH.get(name, []):
        with pytest.raises(InvalidInputError, match="beta2" if name == "weighted_beta2" else name):
            call(value)
    # assigning a setting later is validated too
    metrics = MaskMetrics()
    with pytest.raises(InvalidInputError, match=name):
        setattr(metrics, name, value)


def test_defect1_issue_examples_and_geometry_helpers():
    with pytest.raises(InvalidInputError, match=r"dilation_ratio must be a finite number in \(0, 1\], got inf"):
        boundary_iou(PRED, GT, dilation_ratio=math.inf)
    with pytest.raises(InvalidInputError, match="dilation_ratio"):
        boundary_iou(PRED, GT, dilation_ratio=-0.02)  # used to give a different number silently
    with pytest.raises(InvalidInputError, match=r"relax must be an integer >= 0, got float 1.5"):
        MaskMetrics(relax=1.5)  # used to die inside OpenCV at the first update
    with pytest.raises(InvalidInputError, match="alpha"):
        MaskMetrics(alpha=math.nan)  # used to give S = 0 silently
    with pytest.raises(InvalidInputError, match="weighted_beta2"):
        MaskMetrics(weighted_beta2=-1)
    for call in (
        lambda: boundary_width(0, 10),
        lambda: boundary_width(10, 10.0),
        lambda: boundary_width(10, 10, 2.0),
        lambda: boundary_width(True, 10),
        lambda: mba_radii(-3, 10),
        lambda: mba_radii(10, "10"),
        lambda: mask_boundary(GT > 128, dilation_ratio=math.nan),
    ):
        with pytest.raises(InvalidInputError, match="must be"):
            call()


def test_defect1_values_at_the_edge_of_the_domains_work():
    # numpy scalars are numbers; the closed ends of the domains are allowed
    m = MaskMetrics(dilation_ratio=1.0, beta2=np.float32(1e-9), weighted_beta2=1e300, alpha=0, relax=np.int64(0), epsilon=0)
    v = m.update(PRED, GT)
    assert all(math.isfinite(x) for x in v.values())
    assert m.relax == 0 and type(m.relax) is int and m.alpha == 0.0
    assert boundary_iou(PRED, GT, dilation_ratio=1.0) == iou(PRED, GT)  # the band is the whole mask
    assert s_measure(PRED, GT, alpha=1.0) >= 0
    # very large but finite settings act like the largest meaningful ones (OpenCV used to fail)
    assert human_correction_effort(PRED, GT, epsilon=1e100) == human_correction_effort(PRED, GT, epsilon=27.0)
    assert human_correction_effort(PRED, GT, relax=10**12) == human_correction_effort(PRED, GT, relax=27)
    assert boundary_width(10, 10, 1.0) == 14


# ------------------------------------------------------------------ 2. degenerate definitions
def test_defect2_emeasure_of_one_pixel_is_its_alignment():
    one_fg, one_bg = np.ones((1, 1), bool), np.zeros((1, 1), bool)
    # the reference divides by N - 1 + eps = eps: about 4.5e15; here it is the pixel's alignment
    assert adaptive_emeasure(one_fg, one_fg) == 1.0
    assert adaptive_emeasure(one_fg, one_bg) == 0.0
    assert np.all(emeasure_curve(one_fg, one_fg) == 1.0)
    # q = 0: only threshold 0 marks the pixel as foreground
    np.testing.assert_array_equal(emeasure_curve(one_bg, one_fg), [1.0] + [0.0] * 255)
    # q = uint8(0.3 * 255) = 76: foreground (wrong) up to t = 76, background (right) above
    np.testing.assert_array_equal(emeasure_curve(np.full((1, 1), 0.3), one_bg), [0.0] * 77 + [1.0] * 179)
    # one pixel left after the ignore mask is the same degenerate case
    ignore = np.ones((4, 4), bool)
    ignore[2, 1] = False
    assert adaptive_emeasure(np.ones((4, 4), bool), np.ones((4, 4), bool), ignore=ignore) == 1.0
    # a data set's mean E-measure stays in range with a 1-pixel image in it
    metrics = MaskMetrics()
    metrics.update(PRED, GT)
    metrics.update(one_fg, one_fg)
    result = metrics.compute()
    assert 0.0 <= result["mean_e"] <= result["max_e"] <= 2.0
    assert 0.0 <= result["adp_e"] <= 2.0


def test_defect2_normal_images_keep_the_reference_value():
    n = GT.size
    assert adaptive_emeasure(GT, GT) == pytest.approx(n / (n - 1))  # PySODMetrics' N - 1 + eps
    two = np.array([[True, False]])
    assert adaptive_emeasure(two, two) == pytest.approx(2.0)  # N = 2: still the reference formula


TINY_SHAPES = [(1, 1), (1, 2), (2, 1), (1, 9), (9, 1), (2, 2), (3, 5)]


def _tiny_cases() -> list:
    cases = []
    for shape in TINY_SHAPES:
        mixed = np.zeros(shape, bool)
        mixed.flat[0] = True
        gts = {"bg": np.zeros(shape, bool), "fg": np.ones(shape, bool), "mixed": mixed}
        preds = {
            "bg": np.zeros(shape, bool),
            "fg": np.full(shape, 255, np.uint8),
            "soft": np.linspace(0, 1, mixed.size).reshape(shape),
        }
        for gname, gt in gts.items():
            for pname, pred in preds.items():
                cases.append(pytest.param(pred, gt, id=f"{shape[0]}x{shape[1]}-gt_{gname}-pred_{pname}"))
    return cases


def _check_unit(x):
    assert isinstance(x, float) and math.isfinite(x) and 0.0 <= x <= 1.0, x


@pytest.mark.parametrize("pred, gt", _tiny_cases())
def test_defect2_tiny_images_give_finite_values_in_range(pred, gt):
    n = gt.size
    e_max = 1.0 if n == 1 else n / (n - 1)
    for fn in (iou, boundary_iou, mean_boundary_accuracy, adaptive_fmeasure, weighted_fmeasure, mae, s_measure):
        _check_unit(fn(pred, gt))
    f = fmeasure_curve(pred, gt)
    assert f.shape == (256,) and np.isfinite(f).all() and f.min() >= 0 and f.max() <= 1
    e = emeasure_curve(pred, gt)
    assert e.shape == (256,) and np.isfinite(e).all() and e.min() >= 0 and e.max() <= e_max * (1 + 1e-12)
    ae = adaptive_emeasure(pred, gt)
    assert math.isfinite(ae) and 0 <= ae <= e_max * (1 + 1e-12)
    h = human_correction_effort(pred, gt)
    assert isinstance(h, int) and h >= 0
    values = MaskMetrics().update(pred, gt)
    assert all(math.isfinite(v) for v in values.values())
    assert values["max_e"] <= e_max * (1 + 1e-12)


def test_defect2_nothing_left_to_score_is_refused():
    with pytest.raises(InvalidInputError, match="nothing is left to score"):
        MaskMetrics().update(PRED, GT, np.ones(GT.shape, bool))


# ------------------------------------------------------------------ 3. bad inputs
OK = np.zeros((4, 5), np.uint8)
BAD_INPUTS = {
    "ragged list pred": ([[0.1, 0.2], [0.3]], OK[:2, :2], None, "pred cannot be read"),
    "ragged list ignore": (OK, OK, [[True], [False, True]], "ignore cannot be read"),
    "complex pred": (np.zeros((4, 5), complex), OK, None, "complex128"),
    "object pred": (np.zeros((4, 5), object), OK, None, "object"),
    "string pred": ("mask.png", OK, None, "2-D"),
    "string array gt": (OK, np.full((4, 5), "a"), None, "gt has dtype"),
    "inf pred": (np.full((4, 5), np.inf), OK, None, "NaN or inf"),
    "3-D gt": (OK, np.zeros((4, 5, 1), np.uint8), None, "2-D"),
    "shape mismatch": (OK, np.zeros((5, 4), np.uint8), None, "shape"),
    "0 x N": (np.zeros((0, 5)), np.zeros((0, 5), bool), None, "empty"),
    "3-D ignore": (OK, OK, np.zeros((4, 5, 1), bool), "ignore must be 2-D"),
    "empty ignore": (OK, OK, np.zeros((0, 5), bool), "ignore is empty"),
}


@pytest.mark.parametrize("pred, gt, ignore, match", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_defect3_bad_inputs_raise_invalid_input_error(pred, gt, ignore, match):
    with pytest.raises(InvalidInputError, match=match):
        MaskMetrics().update(pred, gt, ignore)
    for fn in (iou, boundary_iou, mean_boundary_accuracy, fmeasure_curve, emeasure_curve, mae, s_measure,
               weighted_fmeasure, human_correction_effort):
        with pytest.raises(InvalidInputError, match=match):
            fn(pred, gt, ignore=ignore)


@pytest.mark.parametrize("mask", [np.ones((4, 5), np.uint8) * 255, np.ones((4, 5)), [[1, 0]], np.ones((2, 2, 2), bool)])
def test_defect3_mask_boundary_wants_a_bool_mask(mask):
    with pytest.raises(InvalidInputError, match="mask"):
        mask_boundary(mask)


def test_defect3_odd_but_valid_layouts_score_like_plain_arrays():
    plain = MaskMetrics().update(PRED, GT)
    big_endian = PRED.astype(">f8")  # e.g. read from a file written on another machine
    assert MaskMetrics().update(big_endian, GT) == plain
    fortran = MaskMetrics().update(np.asfortranarray(PRED), np.asfortranarray(GT))
    assert fortran == pytest.approx(plain, rel=1e-12)  # summation order may differ by an ulp
    flipped = MaskMetrics().update(PRED[::-1, ::-1], GT[::-1, ::-1])
    assert all(math.isfinite(v) for v in flipped.values())
