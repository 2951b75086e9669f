"""Fuzz the mask metrics: generated predictions, ground truths, ignore masks and parameters.

Every case ends in a clear ``FinesamError`` or in values that are finite and in their
documented range: IoU, boundary IoU, mBA, F-measures, weighted F, MAE and S-measure in
[0, 1]; E-measures in [0, N / (N - 1)] (N scored pixels; [0, 1] for N = 1); HCE an integer
>= 0. Cases built to be invalid must be refused, and valid ones must be scored.
"""

from __future__ import annotations

import math

import numpy as np
from fuzz_checks import assert_finite, clear_error_or_result, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finesam import metrics as M


def fuzz_settings(default: int):
    return settings(
        max_examples=examples(default),
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ------------------------------------------------------------------ generated samples
DEGENERATE_SHAPES = [(1, 1), (1, 2), (2, 1), (1, 40), (40, 1), (2, 2), (3, 1)]
shapes = st.one_of(st.sampled_from(DEGENERATE_SHAPES), st.tuples(st.integers(1, 40), st.integers(1, 40)))

GOOD_PRED = ["bool", "uint8", "uint8_binary", "float64", "float32", "float16", "constant", "zeros", "ones",
             "subnormal", "fortran", "reversed", "big_endian"]  # fmt: skip
BAD_PRED = ["nan", "inf", "above_one", "negative", "int64", "complex", "object", "string", "3d", "empty",
            "mismatched", "uint8_01", "none", "ragged"]  # fmt: skip
GOOD_GT = ["bool", "uint8", "empty", "full", "one_pixel", "blob", "uint8_128"]
BAD_GT = ["float", "int32", "uint8_01", "3d", "mismatched", "none"]
GOOD_IGNORE = [None, "nothing", "random", "all_but_one", "band"]
BAD_IGNORE = ["everything", "uint8", "mismatched", "3d"]


def _blob(rng, shape) -> np.ndarray:
    h, w = shape
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    m = np.zeros(shape, bool)
    m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
    return m


def make_pred(style: str, rng, shape):
    h, w = shape
    r = rng.random(shape)
    arrays = {
        "bool": lambda: r > 0.5,
        "uint8": lambda: (r * 255.999).astype(np.uint8),
        "uint8_binary": lambda: np.where(_blob(rng, shape), 255, 0).astype(np.uint8),
        "float64": lambda: r,
        "float32": lambda: r.astype(np.float32),
        "float16": lambda: r.astype(np.float16),
        "constant": lambda: np.full(shape, rng.choice([0.0, 0.5, 1.0, r.flat[0]])),
        "zeros": lambda: np.zeros(shape, np.uint8),
        "ones": lambda: np.ones(shape, bool),
        "subnormal": lambda: np.where(r > 0.5, 5e-324, 0.0),
        "fortran": lambda: np.asfortranarray(r),
        "reversed": lambda: np.ascontiguousarray(r[::-1, ::-1])[::-1, ::-1],
        "big_endian": lambda: r.astype(">f8"),
        "nan": lambda: np.where(r > 0.9, np.nan, r) * np.where(np.arange(h * w).reshape(shape) == 0, np.nan, 1),
        "inf": lambda: np.full(shape, -np.inf),
        "above_one": lambda: r + 1.5,
        "negative": lambda: r - 1.0,
        "int64": lambda: (r * 255).astype(np.int64),
        "complex": lambda: r.astype(complex),
        "object": lambda: r.astype(object),
        "string": lambda: np.full(shape, "x"),
        "3d": lambda: np.stack([r, r], axis=-1),
        "empty": lambda: np.zeros((0, w)),
        "mismatched": lambda: np.zeros((h + 1, w), bool),
        "uint8_01": lambda: np.eye(h, w, dtype=np.uint8),
        "none": lambda: None,
        "ragged": lambda: [[0.5] * w, [0.5] * (w + 1)],
    }
    return arrays[style]()


def make_gt(style: str, rng, shape):
    h, w = shape
    arrays = {
        "bool": lambda: rng.random(shape) > 0.6,
        "uint8": lambda: np.where(_blob(rng, shape), 255, 0).astype(np.uint8),
        "empty": lambda: np.zeros(shape, bool),
        "full": lambda: np.full(shape, 255, np.uint8),
        "one_pixel": lambda: np.eye(1, h * w, rng.integers(0, h * w), dtype=bool).reshape(shape),
        "blob": lambda: _blob(rng, shape),
        "uint8_128": lambda: np.where(_blob(rng, shape), 255, 128).astype(np.uint8),
        "float": lambda: rng.random(shape),
        "int32": lambda: np.ones(shape, np.int32),
        "uint8_01": lambda: np.ones(shape, np.uint8),
        "3d": lambda: np.zeros((h, w, 3), np.uint8),
        "mismatched": lambda: np.zeros((h, w + 1), bool),
        "none": lambda: None,
    }
    return arrays[style]()


def make_ignore(style, rng, shape):
    h, w = shape
    if style is None:
        return None
    arrays = {
        "nothing": lambda: np.zeros(shape, bool),
        "random": lambda: rng.random(shape) < 0.3,
        "all_but_one": lambda: ~np.eye(1, h * w, rng.integers(0, h * w), dtype=bool).reshape(shape),
        "band": lambda: _blob(rng, shape) & (rng.random(shape) < 0.8),
        "everything": lambda: np.ones(shape, bool),
        "uint8": lambda: np.zeros(shape, np.uint8),
        "mismatched": lambda: np.zeros((w + 1, h), bool),
        "3d": lambda: np.zeros((h, w, 1), bool),
    }
    ignore = arrays[style]()
    if style in GOOD_IGNORE and ignore.all():
        ignore.flat[0] = False  # keep a valid style valid on tiny images
    return ignore


@st.composite
def samples(draw, bad_rate: int = 5):
    """(pred, gt, ignore, valid): ``valid`` is False when the sample was built to be refused."""
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bad = draw(st.integers(0, bad_rate - 1)) == 0  # one sample in bad_rate is invalid
    part = draw(st.sampled_from(["pred", "gt", "ignore"])) if bad else None
    pred_style = draw(st.sampled_from(BAD_PRED if part == "pred" else GOOD_PRED))
    gt_style = draw(st.sampled_from(BAD_GT if part == "gt" else GOOD_GT))
    ignore_style = draw(st.sampled_from(BAD_IGNORE if part == "ignore" else GOOD_IGNORE))
    pred = make_pred(pred_style, rng, shape)
    gt = make_gt(gt_style, rng, shape)
    ignore = make_ignore(ignore_style, rng, shape)
    return pred, gt, ignore, not bad


# ------------------------------------------------------------------ generated parameters
INVALID_ANY = [math.nan, math.inf, -math.inf, None, "0.5", True, False, [0.5], np.ones(1)]
REAL_DOMAINS = {  # valid values (edges included), then values outside the domain
    "dilation_ratio": (st.one_of(st.sampled_from([1e-300, 0.02, 0.5, 1.0]), st.floats(1e-6, 1.0)), [0.0, -0.02, 1.0001, 50.0, 10**400]),
    "beta2": (st.one_of(st.sampled_from([5e-324, 0.3, 1.0, 1e300, 1.7e308]), st.floats(1e-6, 1e6)), [0.0, -0.3, -1e-300, 10**400]),
    "alpha": (st.one_of(st.sampled_from([0.0, 0.5, 1.0, np.float32(0.25)]), st.floats(0.0, 1.0)), [-1e-9, 1.0 + 1e-9, 2.0, 10**400]),
    "relax": (st.one_of(st.sampled_from([0, 1, 5, np.int64(3), 10**12, 10**400]), st.integers(0, 50)), [-1, 1.5, 5.0, np.float64(2.0)]),
    "epsilon": (st.one_of(st.sampled_from([0.0, 2.0, 5e-324, 1e29, 1e300, 3]), st.floats(0.0, 100.0)), [-1.0, -5e-324, 10**400]),
}
REAL_DOMAINS["weighted_beta2"] = REAL_DOMAINS["beta2"]


@st.composite
def param(draw, name: str, bad_rate: int = 8):
    """(value, valid) for the parameter ``name``; one draw in ``bad_rate`` is invalid."""
    valid, invalid = REAL_DOMAINS[name]
    if draw(st.integers(0, bad_rate - 1)) == 0:
        return draw(st.sampled_from(INVALID_ANY + invalid)), False
    return draw(valid), True


# ------------------------------------------------------------------ checks
def e_max(n_scored: int) -> float:
    return 1.0 if n_scored == 1 else n_scored / (n_scored - 1)


def n_scored(gt, ignore) -> int:
    gt = np.asarray(gt)
    return int(gt.size - (0 if ignore is None else np.count_nonzero(ignore)))


def check_unit(x) -> None:
    check_float(x)
    assert_finite(x)
    assert 0.0 <= x <= 1.0, x


def check_e(x, bound: float) -> None:
    assert_finite(x)
    assert np.min(x) >= 0.0 and np.max(x) <= bound * (1 + 1e-12), (np.min(x), np.max(x), bound)


def check_float(x) -> None:
    assert isinstance(x, float), type(x)


def check_curve(curve) -> None:
    assert isinstance(curve, np.ndarray) and curve.shape == (256,) and curve.dtype == np.float64
    assert_finite(curve)


def check_hce(x) -> None:
    assert type(x) is int and x >= 0, x


UNIT_KEYS = ("iou", "biou", "mba", "max_f", "mean_f", "adp_f", "weighted_f", "mae", "s_measure")
E_KEYS = ("max_e", "mean_e", "adp_e")


def check_values(values: dict, bound: float, hce: bool, per_image: bool) -> None:
    """A ``MaskMetrics`` result (per image, or per data set where HCE is a mean)."""
    assert set(values) == set(M.METRIC_KEYS)
    for k in UNIT_KEYS:
        check_unit(values[k])
    for k in E_KEYS:
        check_e(values[k], bound)
    if hce:
        assert_finite(values["hce"])
        assert values["hce"] >= 0 and (float(values["hce"]).is_integer() or not per_image)
    else:
        assert math.isnan(values["hce"])  # documented: skipped


# ------------------------------------------------------------------ the per-image functions
FUNCTIONS = {  # name: (parameters, check of the result given the E-measure bound)
    "iou": ((), lambda r, b: check_unit(r)),
    "boundary_iou": (("dilation_ratio",), lambda r, b: check_unit(r)),
    "mean_boundary_accuracy": ((), lambda r, b: check_unit(r)),
    "fmeasure_curve": (("beta2",), lambda r, b: (check_curve(r), check_e(r, 1.0))),
    "adaptive_fmeasure": (("beta2",), lambda r, b: check_unit(r)),
    "emeasure_curve": ((), lambda r, b: (check_curve(r), check_e(r, b))),
    "adaptive_emeasure": ((), lambda r, b: (check_e(r, b), check_float(r))),
    "weighted_fmeasure": (("weighted_beta2",), lambda r, b: check_unit(r)),
    "mae": ((), lambda r, b: check_unit(r)),
    "s_measure": (("alpha",), lambda r, b: check_unit(r)),
    "human_correction_effort": (("relax", "epsilon"), lambda r, b: check_hce(r)),
}
KEYWORD = {"weighted_beta2": "beta2"}  # weighted_fmeasure calls it beta2


@fuzz_settings(200)
@given(
    name=st.sampled_from(sorted(FUNCTIONS)),
    sample=samples(),
    params=st.fixed_dictionaries({p: param(p) for p in REAL_DOMAINS}),
)
def test_fuzz_metric_functions(count_case, name, sample, params):
    count_case("metrics")
    pred, gt, ignore, valid = sample
    names, check = FUNCTIONS[name]
    kwargs = {KEYWORD.get(p, p): params[p][0] for p in names}
    valid = valid and all(params[p][1] for p in names)
    result, error = clear_error_or_result(lambda: getattr(M, name)(pred, gt, ignore=ignore, **kwargs))
    if not valid:
        assert error is not None, f"{name} accepted an invalid case and returned {result!r}"
        return
    assert error is None, f"{name} refused a valid case: {error}"
    check(result, e_max(n_scored(gt, ignore)))


# ------------------------------------------------------------------ the accumulator
hce_flags = st.one_of(st.booleans().map(lambda b: (b, True)), st.sampled_from([0, 1, "yes", None]).map(lambda v: (v, False)))


@fuzz_settings(70)
@given(
    params=st.fixed_dictionaries({p: param(p, bad_rate=15) for p in REAL_DOMAINS}),
    hce=st.one_of(*[st.booleans().map(lambda b: (b, True))] * 9, hce_flags),
    images=st.lists(samples(bad_rate=4), min_size=1, max_size=3),
)
def test_fuzz_mask_metrics(count_case, params, hce, images):
    count_case("metrics")
    kwargs = {name: value for name, (value, _) in params.items()}
    kwargs["hce"], hce_ok = hce
    settings_ok = hce_ok and all(ok for _, ok in params.values())
    metrics, error = clear_error_or_result(lambda: M.MaskMetrics(**kwargs))
    if not settings_ok:
        assert error is not None, f"MaskMetrics accepted {kwargs}"
        return
    assert error is None, error
    bound, scored = 1.0, 0
    for pred, gt, ignore, valid in images:
        values, error = clear_error_or_result(lambda p=pred, g=gt, i=ignore: metrics.update(p, g, i))
        if not valid:
            assert error is not None, "update accepted an invalid sample"
            continue
        assert error is None, error
        image_bound = e_max(n_scored(gt, ignore))
        check_values(values, image_bound, kwargs["hce"], per_image=True)
        bound, scored = max(bound, image_bound), scored + 1
    assert len(metrics) == scored  # a refused image records nothing
    result, error = clear_error_or_result(metrics.compute)
    if scored == 0:
        assert error is not None and "no images" in str(error)
        return
    assert error is None, error
    check_values(result, bound, kwargs["hce"], per_image=False)
    curves = metrics.curves()
    check_curve(curves["f"])
    check_curve(curves["e"])


# ------------------------------------------------------------------ the geometry helpers
sizes = st.one_of(st.integers(1, 60), st.sampled_from([0, -1, 2**31, True, 3.0, "4", None, math.nan]))


@fuzz_settings(30)
@given(h=sizes, w=sizes, ratio=param("dilation_ratio", bad_rate=4), seed=st.integers(0, 2**32 - 1))
def test_fuzz_geometry_helpers(count_case, h, w, ratio, seed):
    count_case("metrics")
    ratio, ratio_ok = ratio
    sizes_ok = all(type(x) is int and 1 <= x <= 2**31 - 1 for x in (h, w))
    width, error = clear_error_or_result(lambda: M.boundary_width(h, w, ratio))
    assert (error is None) == (sizes_ok and ratio_ok), (h, w, ratio, error)
    if error is None:
        assert type(width) is int and 1 <= width <= math.ceil(math.hypot(h, w))
    radii, error = clear_error_or_result(lambda: M.mba_radii(h, w))
    assert (error is None) == sizes_ok
    if error is None:
        assert len(radii) == 5 and all(type(r) is int and r >= 1 for r in radii)
    if sizes_ok:
        mask = np.random.default_rng(seed).random((min(h, 40), min(w, 40))) > 0.5
        band, error = clear_error_or_result(lambda: M.mask_boundary(mask, ratio))
        assert (error is None) == ratio_ok
        if error is None:
            assert band.dtype == np.bool_ and band.shape == mask.shape and not (band & ~mask).any()
