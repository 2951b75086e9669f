"""Simulated correction clicks (Pi-SAM stage 2): location in (x, y), erosion, counts, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finesam.errors import InvalidInputError
from finesam.modeling.contracts.prompt_checks import check_click_points
from finesam.predict.transforms import ResizeLongestSide
from finesam.train.clicks import simulate_correction_clicks

# A wide photograph: in the 1024 frame its content is 1024 x 720, i.e. rows 0..179 of the 256 grid.
ORIGINAL = (1265, 1800)  # (H, W)
CONTENT = ResizeLongestSide(1024).get_preprocess_shape(*ORIGINAL)
# The missed part of the object: grid rows 120..139, columns 30..59 (asymmetric: x != y).
BLOB_ROWS, BLOB_COLS = (120, 140), (30, 60)


def wide_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) on the 256 grid: the object fills rows 40..179 x cols 20..199 of the
    content; the prediction is right except for the missed blob."""
    assert CONTENT == (720, 1024)
    label = torch.zeros(1, 1, 256, 256)
    label[0, 0, 40:180, 20:200] = 1.0
    label[0, 0, 39, 20:200] = 0.5  # a soft rim from the bilinear resize: never an error
    predicted = label.clone()
    predicted[0, 0, 39] = 0.0
    predicted[0, 0, BLOB_ROWS[0] : BLOB_ROWS[1], BLOB_COLS[0] : BLOB_COLS[1]] = 0.0
    logits = torch.where(predicted > 0.5, 5.0, -5.0)
    return logits, label


def to_original_pixels(points: torch.Tensor) -> np.ndarray:
    """Inverse of the inference convention (SamPredictor.correct): original (x, y) -> frame / 1024."""
    frame = points.double().numpy() * 1024
    height, width = CONTENT
    return frame * np.array([ORIGINAL[1] / width, ORIGINAL[0] / height])


def test_clicks_land_in_the_error_region_in_xy_on_a_wide_image():
    logits, label = wide_scene()
    for seed in range(5):
        points, flags, padding, valid = simulate_correction_clicks(logits, label, [np.random.default_rng(seed)])
        assert valid.tolist() == [1.0]
        used = ~padding[0]
        assert used.sum() == 1  # a single error component
        assert flags[0, used].tolist() == [1]  # missed object: a foreground click
        x, y = to_original_pixels(points[0, used])[0]
        # the blob in original pixels: grid cell * 4 in the frame, / (1024 / 1800) in the image
        scale = CONTENT[1] / ORIGINAL[1]
        assert BLOB_COLS[0] * 4 / scale <= x < BLOB_COLS[1] * 4 / scale, (x, y)
        assert BLOB_ROWS[0] * 4 / scale <= y < BLOB_ROWS[1] * 4 / scale, (x, y)
        # and inference maps that pixel back to exactly the training click
        back = ResizeLongestSide(1024).apply_coords(np.array([[x, y]]), ORIGINAL) / 1024
        np.testing.assert_allclose(back[0], points[0, used][0].numpy(), atol=1e-6)
        # inside the eroded blob (1-px erosion drops its outline)
        col, row = points[0, used][0].numpy() * 256
        assert BLOB_COLS[0] + 1 <= round(col) < BLOB_COLS[1] - 1 and BLOB_ROWS[0] + 1 <= round(row) < BLOB_ROWS[1] - 1
    check_click_points(points, flags)  # the form Sam.correct takes


def test_background_errors_get_background_clicks_and_errors_in_padding_can_be_ignored():
    logits, label = wide_scene()
    logits[0, 0, 200:230, 100:140] = 5.0  # false positive in the padding (rows >= 180)
    logits[0, 0, 5:15, 220:240] = 5.0  # false positive in the image, top right
    # the official behaviour: the whole grid counts, so the largest error (in the padding) comes first
    points, flags, padding, _ = simulate_correction_clicks(logits, label, [np.random.default_rng(0)], training=False)
    col, row = (points[0, 0] * 256).tolist()
    assert flags[0, 0] == 0 and 200 <= row < 230 and 100 <= col < 140
    points, flags, padding, valid = simulate_correction_clicks(
        logits, label, [np.random.default_rng(0)], max_points=10, training=True, content_sizes=torch.tensor([CONTENT])
    )
    used = ~padding[0]
    rows = points[0, used, 1] * 256
    assert (rows < 180).all(), "no click in the padding when content_sizes is given"
    background = points[0, used & (flags[0] == 0)] * 256
    for col, row in background.tolist():
        assert 220 <= col < 240 and 5 <= row < 15


def test_no_error_gives_no_click():
    label = torch.zeros(2, 1, 256, 256)
    label[:, :, 50:100, 60:120] = 1.0
    logits = torch.where(label > 0.5, 3.0, -3.0)
    points, flags, padding, valid = simulate_correction_clicks(logits, label, [np.random.default_rng(i) for i in range(2)])
    assert valid.tolist() == [0.0, 0.0]
    assert padding.all() and (points == 0).all() and (flags == 0).all()


def test_thin_and_tiny_errors_are_dropped():
    label = torch.zeros(1, 1, 256, 256)
    logits = torch.full((1, 1, 256, 256), -3.0)
    logits[0, 0, 100, 10:200] = 3.0  # a 1-px line: erosion removes it
    logits[0, 0, 150:152, 10:200] = 3.0  # 2 px thick: erosion removes it too
    logits[0, 0, 0:40, 0:40] = 3.0  # touches the grid edge: outside counts as 0, shrinks to 38 x 38
    _, _, padding, valid = simulate_correction_clicks(logits, label, [np.random.default_rng(0)], training=False)
    assert valid.item() == 1.0 and (~padding).sum() == 1
    points, *_ = simulate_correction_clicks(logits, label, [np.random.default_rng(0)], training=False)
    col, row = (points[0, 0] * 256).tolist()
    assert 1 <= col <= 38 and 1 <= row <= 38
    logits[0, 0, 0:40, 0:40] = -3.0
    logits[0, 0, 200:203, 50:53] = 3.0  # 3 x 3 -> 1 pixel after erosion < min_area 2
    _, _, padding, valid = simulate_correction_clicks(logits, label, [np.random.default_rng(0)])
    assert valid.item() == 0.0 and padding.all()


def many_blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """14 separate error blobs of different sizes (7 missed, 7 false positives)."""
    label = torch.zeros(1, 1, 256, 256)
    logits = torch.full((1, 1, 256, 256), -3.0)
    for i in range(7):
        size = 4 + i
        label[0, 0, 10 + 30 * i : 10 + 30 * i + size, 10 : 10 + size] = 1.0  # missed: fg errors
        logits[0, 0, 10 + 30 * i : 10 + 30 * i + size, 150 : 150 + size + 1] = 3.0  # false positives
    return logits, label


def test_at_most_max_points_largest_components_and_deterministic():
    logits, label = many_blobs()
    counts = set()
    for seed in range(12):
        points, flags, padding, valid = simulate_correction_clicks(logits, label, [np.random.default_rng(seed)])
        used = int((~padding[0]).sum())
        counts.add(used)
        assert 1 <= used <= 10
        assert not padding[0, :used].any() and padding[0, used:].all()  # used slots first
        cols = (points[0, :used, 0] * 256).tolist()
        # the largest component (the 10 x 11 false positive, rows 190..199) always comes first
        assert flags[0, 0] == 0 and 150 <= cols[0] < 161 and 190 <= points[0, 0, 1] * 256 < 200
        again = simulate_correction_clicks(logits, label, [np.random.default_rng(seed)])
        assert all(torch.equal(a, b) for a, b in zip((points, flags, padding, valid), again))
    assert len(counts) > 3 and max(counts) <= 10  # n ~ randint(1, min(10, 14))
    points, flags, padding, _ = simulate_correction_clicks(logits, label, [np.random.default_rng(0)], max_points=4)
    assert padding.shape == (1, 4)
    points, flags, padding, _ = simulate_correction_clicks(logits, label, [np.random.default_rng(0)], training=False)
    assert (~padding).sum() == 1


def test_a_sample_s_clicks_do_not_depend_on_its_batch():
    logits, label = many_blobs()
    wide_logits, wide_label = wide_scene()
    batch = simulate_correction_clicks(torch.cat([wide_logits, logits]), torch.cat([wide_label, label]),
                                       [np.random.default_rng(1), np.random.default_rng(2)])
    alone = simulate_correction_clicks(logits, label, [np.random.default_rng(2)])
    assert all(torch.equal(a[1:], b) for a, b in zip(batch, alone))


def test_bad_inputs_are_refused():
    logits, label = wide_scene()
    with pytest.raises(InvalidInputError, match="divide 0..255"):
        simulate_correction_clicks(logits, label * 255, [np.random.default_rng(0)])
    with pytest.raises(InvalidInputError, match="one numpy Generator per sample"):
        simulate_correction_clicks(logits, label, [])
    with pytest.raises(InvalidInputError, match=r"\(B, 1, 256, 256\)"):
        simulate_correction_clicks(logits[:, :, :128], label, [np.random.default_rng(0)])
