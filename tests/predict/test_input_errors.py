"""Bad prompts and arguments get a clear finesam error, never a NaN, a raw traceback or a
changed session history (regressions of the hardening issue)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import finesam
from finesam.errors import InvalidInputError
from finesam.registry import REGISTRY

IMAGE = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
BOX = np.array([20, 10, 140, 100])


@pytest.fixture(scope="module")
def sam():
    predictor = finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))
    predictor.set_image(IMAGE)
    return predictor


@pytest.fixture(scope="module")
def pi():
    model = finesam.load(REGISTRY["pi_vit_b"].with_encoder(depth=1, global_attn_indexes=(0,)), random_weights=True)
    predictor = finesam.SamPredictor(model)
    predictor.set_image(IMAGE)
    return predictor


@pytest.mark.parametrize("kwargs", [
    dict(point_coords=np.array([[1e38, 5.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[5.0, -1e300]]), point_labels=np.array([1])),
    dict(box=np.array([0, 0, 1e300, 1e300])),
    dict(box=np.array([-5e5, 0, 50, 50])),
])
def test_coordinates_that_overflow_in_the_model_frame_are_refused(sam, kwargs):
    with pytest.raises(InvalidInputError, match="far outside the 160x120 image"):
        sam.predict(**kwargs)


def test_pi_predict_and_correct_refuse_overflowing_prompts(pi):
    with pytest.raises(InvalidInputError, match="box coordinates hold 1e\\+39, far outside"):
        pi.predict(box=np.array([0, 0, 1e39, 50]))
    pi.predict(box=BOX)
    with pytest.raises(InvalidInputError, match="fg_points hold 1e\\+38, far outside"):
        pi.correct(fg_points=np.array([[1e38, 5]]))
    masks, scores, _ = pi.correct(fg_points=np.array([[60, 50]]))
    assert masks.shape == (1, 120, 160) and np.isfinite(scores).all()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e30])
def test_mask_input_values_are_checked(sam, value):
    mask = np.zeros((1, 256, 256), np.float32)
    mask[0, 10, 10] = value
    with pytest.raises(InvalidInputError, match="mask_input"):
        sam.predict(box=BOX, mask_input=mask, multimask_output=False)


@pytest.mark.parametrize("mask_input", ["abc", np.zeros((1, 256, 256), np.complex64), np.array([None] * 3)])
def test_mask_input_types_are_named(sam, mask_input):
    with pytest.raises(InvalidInputError, match="mask_input"):
        sam.predict(box=BOX, mask_input=mask_input)


def test_refused_session_steps_leave_the_history_unchanged(sam):
    session = finesam.InteractiveSession(sam)
    first = session.set_box(BOX).copy()
    for bad in (lambda: session.add_click("x", 5), lambda: session.add_click(1e38, 5),
                lambda: session.add_click(5, float("nan")), lambda: session.set_box([1, 2, 3]),
                lambda: session.add_click(5, 5, positive="no")):
        with pytest.raises(InvalidInputError):
            bad()
        assert len(session._history) == 1 and not session.clicks
        np.testing.assert_array_equal(session.mask, first)
    session.add_click(80, 60)
    np.testing.assert_array_equal(session.undo(), first)  # one undo goes back over the one real step


def test_raw_messages_are_replaced(sam):
    sam_pi_like = finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))
    with pytest.raises(InvalidInputError, match="read_image"):
        sam_pi_like.set_image("photo.jpg")
    with pytest.raises(InvalidInputError, match="point_labels were given without point_coords"):
        sam.predict(point_labels=np.array([1]), box=BOX)
    with pytest.raises(InvalidInputError, match="HQ-SAM models"):
        sam.predict(box=BOX, hq_token_only=True)
    with pytest.raises(InvalidInputError, match="point_coords"):
        sam.predict(point_coords=np.array([["a", "b"]]), point_labels=np.array([1]))
    with pytest.raises(InvalidInputError, match="empty image"):
        sam_pi_like.set_image(np.zeros((0, 5, 3), np.uint8))


def test_correct_names_its_arguments(pi):
    pi.predict(box=BOX)
    with pytest.raises(InvalidInputError, match="fg_points"):
        pi.correct(fg_points=5)
    with pytest.raises(InvalidInputError, match="bg_points"):
        pi.correct(bg_points=np.array([1.0, 2.0, 3.0]))


def test_sam_forward_checks_prompts_in_the_model_frame():
    model = finesam.load("mobile_sam", random_weights=True)
    record = {"image": torch.zeros(3, 768, 1024), "original_size": (600, 800)}
    with pytest.raises(InvalidInputError, match="box coordinates"):
        model([{**record, "boxes": torch.tensor([[0.0, 0.0, 3e38, 10.0]])}], multimask_output=False)
    with pytest.raises(InvalidInputError, match="point labels"):
        model([{**record, "point_coords": torch.zeros(1, 1, 2), "point_labels": torch.tensor([[7]])}], multimask_output=False)
