"""Predictor behaviour: prompt validation, batched prompts, HQ options on SAM models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import finesam


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    model = finesam.load("mobile_sam", random_weights=True)
    predictor = finesam.SamPredictor(model)
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8))
    return predictor


@pytest.fixture(scope="module")
def hq_predictor():
    torch.manual_seed(0)
    predictor = finesam.SamPredictor(finesam.load("hq_vit_tiny", random_weights=True))
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (300, 420, 3), dtype=np.uint8))
    return predictor


def test_requires_image():
    predictor = finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(box=np.array([0, 0, 10, 10]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(box=np.array([50, 10, 20, 100])), "x1 < x0"),
        (dict(box=np.array([10, 100, 50, 20])), "y1 < y0"),
        (dict(box=np.array([10, np.nan, 50, 20])), "NaN"),
        (dict(box=np.array([10, 10, 50])), "4 values"),
        (dict(point_coords=np.array([[np.nan, 3.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([[10.0, 3.0]]), point_labels=np.array([2])), "labels must be"),
        (dict(point_coords=np.array([[10.0, 3.0]])), "point_labels is required"),
        (dict(point_coords=np.array([[10.0, 3.0]]), point_labels=np.array([1, 1])), "does not match"),
        (dict(box=np.array([0, 0, 10, 10]), mask_input=np.zeros((1, 64, 64))), "mask_input must be"),
    ],
)
def test_predict_refuses_bad_prompts(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(boxes=np.array([[0, 0, 10, 10], [30, 5, 20, 40]])), r"box index 1"),
        (dict(boxes=np.array([0, 0, 10, 10])), r"\(P, 4\)"),
        (dict(points=np.zeros((2, 1, 2)), point_labels=np.array([[1], [3]])), "labels must be"),
        (dict(points=np.full((2, 1, 2), np.nan), point_labels=np.ones((2, 1))), "NaN"),
        (dict(boxes=np.zeros((2, 4)), points=np.zeros((3, 1, 2)), point_labels=np.ones((3, 1))), "P must agree"),
        (dict(), "needs boxes"),
    ],
)
def test_predict_batch_refuses_bad_prompts(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict_batch(**kwargs)


def test_set_image_refuses_wrong_arrays(predictor):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor.set_image(np.zeros((20, 30), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor.set_image(np.zeros((20, 30, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(np.zeros((20, 30, 3), dtype=np.uint8), image_format="RGBA")


def test_predict_batch_shapes_and_equivalence(predictor):
    boxes = np.array([[10, 20, 200, 250], [50, 40, 400, 290], [150, 100, 300, 200]], dtype=float)
    masks, scores, low = predictor.predict_batch(boxes=boxes, return_logits=True)
    assert masks.shape == (3, 1, 300, 420) and scores.shape == (3, 1) and low.shape == (3, 1, 256, 256)
    for index, box in enumerate(boxes):
        single, single_scores, single_low = predictor.predict(box=box, multimask_output=False, return_logits=True)
        assert np.allclose(single, masks[index], atol=1e-5) and np.allclose(single_scores, scores[index], atol=1e-6)
    # One prompt stays batched; multimask gives K = 3.
    masks, scores, low = predictor.predict_batch(boxes=boxes[:1], multimask_output=True)
    assert masks.shape == (1, 3, 300, 420) and masks.dtype == bool and low.shape == (1, 3, 256, 256)
    points = np.array([[[100, 100], [20, 30]], [[300, 200], [10, 10]]], dtype=float)
    labels = np.array([[1, 0], [1, 0]])
    masks, scores, _ = predictor.predict_batch(points=points, point_labels=labels, boxes=boxes[:2])
    for index in range(2):
        single, single_scores, _ = predictor.predict(points[index], labels[index], boxes[index], multimask_output=False)
        assert np.array_equal(single, masks[index])


def test_bgr_input_is_flipped(predictor):
    image = np.random.default_rng(3).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    predictor.set_image(image)
    rgb = predictor.get_image_embedding().clone()
    predictor.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert torch.equal(rgb, predictor.get_image_embedding())
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8))


def test_hq_options_refused_on_sam_model(predictor):
    with pytest.raises(ValueError, match="HQ-SAM models"):
        predictor.predict(box=np.array([0, 0, 50, 50]), hq_token_only=True)
    with pytest.raises(ValueError, match="HQ-SAM models"):
        predictor.predict(box=np.array([0, 0, 50, 50]), hq_output="candidates")


def test_hq_output_modes_shapes(hq_predictor):
    box = np.array([20, 30, 200, 250])
    for mode, multimask, count in [("sum", True, 1), ("hq_only", True, 1), ("sam_only", True, 3), ("sam_only", False, 1), ("candidates", False, 3)]:
        masks, scores, low = hq_predictor.predict(box=box, multimask_output=multimask, hq_output=mode)
        assert masks.shape == (count, 300, 420) and scores.shape == (count,) and low.shape == (count, 256, 256), mode
    with pytest.raises(ValueError, match="contradicts"):
        hq_predictor.predict(box=box, hq_token_only=True, hq_output="sum")
    with pytest.raises(ValueError, match="hq_output must be one of"):
        hq_predictor.predict(box=box, hq_output="best")
