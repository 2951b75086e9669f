"""Generated prompts and arguments through ``predict``, ``predict_batch``, ``correct`` and
``InteractiveSession``: a clear finesam error, or finite results of the documented shape; a
refused session step never changes the session."""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_checks import assert_finite, clear_error_or_result, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import finesam
from finesam.registry import REGISTRY

HEIGHT, WIDTH = 90, 120
IMAGE = np.random.default_rng(3).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)



def fuzz_settings(default: int):
    return settings(max_examples=examples(default), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- values ------------------------------------------------------------------------------------
NUMBERS = st.one_of(
    st.floats(-200, 300),                                     # ordinary pixels, some outside the image
    st.floats(allow_nan=True, allow_infinity=True),           # anything a float can be
    st.sampled_from([0.0, -1.0, 1e38, -1e38, 1e300, 5e5, float("nan"), float("inf")]),
    st.integers(-(10**6), 10**6),
)
ODD_SCALARS = st.one_of(st.text(max_size=3), st.none(), st.booleans(), st.complex_numbers(max_magnitude=10))


def arrays(shapes, values=NUMBERS):
    """Nested lists of a shape drawn from ``shapes``, filled with ``values``."""

    def build(shape):
        if not shape:
            return values
        return st.lists(build(shape[1:]), min_size=shape[0], max_size=shape[0])

    return st.sampled_from(shapes).flatmap(build)


POINTS = st.one_of(arrays([(1, 2), (2, 2), (3, 2), (0, 2), (2,), (1, 3), (2, 2, 2)]), ODD_SCALARS)
LABELS = st.one_of(arrays([(1,), (2,), (3,), (0,), (1, 1)], st.sampled_from([1, 0, -1, 2, 0.5, -7])), ODD_SCALARS)
BOXES = st.one_of(arrays([(4,), (1, 4), (3,), (2, 4), (0,)]), ODD_SCALARS)
MASK_SHAPES = [(1, 256, 256), (256, 256), (2, 1, 256, 256), (1, 64, 64)]
MASKS = st.one_of(
    st.tuples(st.sampled_from(MASK_SHAPES), st.sampled_from([0.0, 3.0, -20.0, np.nan, np.inf, 1e30, 1e5])),
    ODD_SCALARS,
)
HQ_FLAGS = st.tuples(st.sampled_from([None, True, False]), st.sampled_from([None, "sum", "hq_only", "candidates", "sam_only", "bogus"]))


def mask_value(drawn):
    if isinstance(drawn, tuple):
        shape, fill = drawn
        return np.full(shape, fill, dtype=np.float32)
    return drawn


PIXELS = st.floats(-40, 160)
EXTREMES = st.sampled_from([1e38, -1e38, 1e300, 5e5, -5e5, float("nan"), float("inf"), -0.0, 1e-30])


def plausible_kwargs(data) -> dict:
    """Well-formed prompts with ordinary pixels, sometimes one extreme value slipped in."""
    kwargs = {}
    count = data.draw(st.integers(0, 3), "points")
    if count:
        coords = np.array(data.draw(st.lists(st.tuples(PIXELS, PIXELS), min_size=count, max_size=count), "coords"))
        kwargs["point_coords"] = coords
        kwargs["point_labels"] = np.array(data.draw(st.lists(st.sampled_from([1, 0, -1]), min_size=count, max_size=count), "labels"))
    if data.draw(st.booleans(), "box?") or not count:
        x0, x1 = sorted(data.draw(st.tuples(PIXELS, PIXELS), "xs"))
        y0, y1 = sorted(data.draw(st.tuples(PIXELS, PIXELS), "ys"))
        kwargs["box"] = np.array([x0, y0, x1, y1])
    if data.draw(st.integers(0, 4), "mask?") == 0:
        kwargs["mask_input"] = np.full((1, 256, 256), data.draw(st.floats(-30, 30), "logit"), np.float32)
    if data.draw(st.integers(0, 3), "extreme?") == 0:
        key = data.draw(st.sampled_from(sorted(kwargs)), "corrupted")
        array = np.array(kwargs[key], dtype=np.float64)
        array.flat[data.draw(st.integers(0, array.size - 1), "where")] = data.draw(EXTREMES, "extreme")
        kwargs[key] = array
    return kwargs


def predict_kwargs(data) -> dict:
    """Half plausible prompts, half anything (wrong types, shapes, values)."""
    if data.draw(st.booleans(), "plausible?"):
        kwargs = plausible_kwargs(data)
    else:
        kwargs = {}
        if data.draw(st.booleans(), "points"):
            kwargs["point_coords"] = data.draw(POINTS, "point_coords")
            if data.draw(st.integers(0, 4), "labels?"):
                kwargs["point_labels"] = data.draw(LABELS, "point_labels")
        elif data.draw(st.integers(0, 5), "labels alone?") == 0:
            kwargs["point_labels"] = data.draw(LABELS, "point_labels")
        if data.draw(st.booleans(), "box?"):
            kwargs["box"] = data.draw(BOXES, "box")
        if data.draw(st.integers(0, 3), "mask?") == 0:
            kwargs["mask_input"] = mask_value(data.draw(MASKS, "mask_input"))
    kwargs["multimask_output"] = data.draw(st.booleans(), "multimask")
    kwargs["hq_token_only"], kwargs["hq_output"] = data.draw(
        st.one_of(st.just((None, None)), st.just((None, None)), st.just((None, None)), HQ_FLAGS), "hq")
    return kwargs


def check_prediction(result, batched: bool = False) -> None:
    masks, scores, low_res = result
    if batched:
        assert masks.ndim == 4 and masks.shape[2:] == (HEIGHT, WIDTH) and scores.shape == masks.shape[:2]
    else:
        assert masks.ndim == 3 and masks.shape[1:] == (HEIGHT, WIDTH) and scores.shape == masks.shape[:1]
    assert masks.dtype == bool and low_res.shape[-2:] == (256, 256) and low_res.shape[:-2] == masks.shape[:-2]
    assert_finite(scores, low_res)


# --- models (loaded once) ----------------------------------------------------------------------
def _predictor(spec):
    predictor = finesam.SamPredictor(finesam.load(spec, random_weights=True))
    predictor.set_image(IMAGE)
    return predictor


@pytest.fixture(scope="module")
def sam():
    return _predictor("mobile_sam")


@pytest.fixture(scope="module")
def hq():
    return _predictor("hq_vit_tiny")


@pytest.fixture(scope="module")
def pi():
    return _predictor(REGISTRY["pi_vit_b"].with_encoder(depth=1, global_attn_indexes=(0,)))


# --- the fuzz tests ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sam", "hq"])
@fuzz_settings(150)
@given(data=st.data())
def test_predict(name, request, count_case, data):
    predictor = request.getfixturevalue(name)
    count_case("prompts")
    result, _ = clear_error_or_result(lambda: predictor.predict(**predict_kwargs(data)))
    if result is not None:
        count_case("prompts, accepted")
        check_prediction(result)


@fuzz_settings(80)
@given(
    boxes=st.one_of(st.none(), arrays([(1, 4), (3, 4), (0, 4), (2, 3), (4,)]), ODD_SCALARS),
    points=st.one_of(st.none(), arrays([(1, 1, 2), (3, 2, 2), (2, 2), (3, 1, 3)]), ODD_SCALARS),
    labels=st.one_of(st.none(), arrays([(1, 1), (3, 2), (3, 1), (2,)], st.sampled_from([1, 0, -1, 3]))),
    mask=st.one_of(st.none(), MASKS),
    multimask=st.booleans(),
)
def test_predict_batch(sam, count_case, boxes, points, labels, mask, multimask):
    count_case("prompts")
    call = lambda: sam.predict_batch(boxes=boxes, points=points, point_labels=labels,  # noqa: E731
                                     mask_input=mask_value(mask), multimask_output=multimask)
    result, _ = clear_error_or_result(call)
    if result is not None:
        count_case("prompts, accepted")
        check_prediction(result, batched=True)


@fuzz_settings(30)
@given(data=st.data())
def test_pi_predict_and_correct(pi, count_case, data):
    count_case("prompts")
    result, _ = clear_error_or_result(lambda: pi.predict(**predict_kwargs(data)))
    if result is not None:
        count_case("prompts, accepted")
        check_prediction(result)
        assert result[0].shape[0] == 1
    fg = data.draw(st.one_of(st.none(), POINTS), "fg_points")
    bg = data.draw(st.one_of(st.none(), POINTS), "bg_points")
    corrected, _ = clear_error_or_result(lambda: pi.correct(fg_points=fg, bg_points=bg))
    if corrected is not None:
        check_prediction(corrected)


SESSION_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("set_box"), st.one_of(BOXES, st.tuples(st.floats(0, 50), st.floats(0, 40), st.floats(60, 120), st.floats(50, 90)))),
        st.tuples(st.just("add_click"), st.one_of(
            st.tuples(PIXELS, PIXELS, st.booleans()),
            st.tuples(st.one_of(NUMBERS, ODD_SCALARS), NUMBERS, st.one_of(st.booleans(), st.sampled_from([0, 1, 2, "no"]))),
        )),
        st.tuples(st.just("undo"), st.none()),
        st.tuples(st.just("reset"), st.none()),
    ),
    min_size=1, max_size=6,
)


def snapshot(session) -> tuple:
    mask = None if session.mask is None else session.mask.copy()
    return session.box, list(session.clicks), len(session._history), mask


def assert_same(before: tuple, after: tuple) -> None:
    assert before[:3] == after[:3]
    assert (before[3] is None and after[3] is None) or np.array_equal(before[3], after[3])


@pytest.mark.parametrize("name", ["sam", "pi"])
@fuzz_settings(50)
@given(steps=SESSION_STEPS)
def test_sessions_survive_any_sequence(name, request, count_case, steps):
    predictor = request.getfixturevalue(name)
    count_case("sessions")
    session = finesam.InteractiveSession(predictor)
    masks = []  # the mask after each step still on the history, to check undo
    for action, argument in steps:
        before = snapshot(session)
        if action == "set_box":
            result, error = clear_error_or_result(lambda: session.set_box(argument))
        elif action == "add_click":
            result, error = clear_error_or_result(lambda: session.add_click(*argument))
        elif action == "undo":
            result, error = clear_error_or_result(session.undo)
        else:
            session.reset()
            masks, result, error = [], None, None
            continue
        if error is not None:
            assert_same(before, snapshot(session))  # a refused step changes nothing
            continue
        if action == "undo":
            masks.pop()
            expected = masks[-1] if masks else None
            assert (result is None and expected is None) or np.array_equal(result, expected)
        else:
            count_case("sessions, accepted steps")
            assert result.shape == (HEIGHT, WIDTH) and result.dtype == bool
            assert np.isfinite(session.result.score)
            masks.append(result.copy())
