"""Prompt simulation on hand-made masks with known answers (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from finesam.evaluation import (
    Click,
    dn_box_noise,
    error_component_clicks,
    interior_point,
    mask_box,
    next_click,
    random_points,
    seeded_rng,
    squash_image,
    squash_mask,
)
from finesam.evaluation.protocols import PiClicksProtocol


def rect(shape, y0, y1, x0, x1) -> np.ndarray:
    """Bool mask with rows y0..y1-1 and columns x0..x1-1 set."""
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_mask_box_is_inclusive_pixel_extent():
    assert mask_box(rect((20, 30), 2, 9, 3, 14)).tolist() == [3, 2, 13, 8]
    assert mask_box(np.zeros((4, 4), bool)) is None


def test_squash_is_bilinear_on_floats_then_truncated():
    row = np.array([[[0, 0, 0], [99, 99, 99]]], np.uint8)  # (1, 2, 3)
    # align_corners=False x2: sources -0.25, 0.25, 0.75, 1.25 -> 0, 24.75, 74.25, 99 -> truncated
    assert squash_image(row, size=4)[:, :, 0].tolist() == [[0, 24, 74, 99]] * 4
    assert squash_mask(np.array([[0, 99]], np.uint8), size=4)[0].tolist() == [0.0, 24.75, 74.25, 99.0]
    assert squash_image(np.zeros((300, 400, 3), np.uint8)).shape == (1024, 1024, 3)


def test_interior_point_is_the_distance_transform_maximum():
    assert interior_point(rect((20, 30), 2, 9, 3, 10)) == (6, 5)  # centre of a 7 x 7 square
    # a 7 x 11 rectangle has a plateau of maxima on its middle row: the first one (row-major), as RITM
    assert interior_point(rect((20, 30), 2, 9, 3, 14)) == (6, 5)
    assert interior_point(np.ones((5, 5), bool)) == (2, 2)  # the image border counts as background
    two = rect((40, 60), 2, 8, 2, 8) | rect((40, 60), 10, 35, 20, 55)  # small square, big rectangle
    x, y = interior_point(two)
    assert 20 <= x < 55 and y == 22
    ring = rect((31, 31), 0, 31, 0, 31) & ~rect((31, 31), 5, 26, 5, 26)  # a ring: the point stays inside it
    x, y = interior_point(ring)
    assert ring[y, x]
    assert interior_point(np.zeros((5, 5), bool)) is None


def test_next_click_fixes_the_widest_error_region():
    gt = rect((60, 80), 10, 50, 10, 70)
    empty = np.zeros_like(gt)
    assert next_click(empty, gt) == Click(*interior_point(gt), True)  # first click: the GT centre
    missed_block = gt & ~rect(gt.shape, 12, 32, 12, 32)  # a 20x20 hole (FN) ...
    with_fp = missed_block | rect(gt.shape, 52, 58, 2, 8)  # ... and a 6x6 false positive
    click = next_click(with_fp, gt)
    assert click.positive and rect(gt.shape, 12, 32, 12, 32)[click.y, click.x]
    big_fp = gt | rect(gt.shape, 0, 60, 72, 80) | rect(gt.shape, 0, 8, 0, 80)  # wide false positive bands
    small_fn = big_fp & ~rect(gt.shape, 30, 34, 30, 34)
    click = next_click(small_fn, gt)
    assert not click.positive and not gt[click.y, click.x]
    assert next_click(gt, gt) is None  # nothing left to correct


def test_next_click_never_repeats_a_pixel():
    gt = rect((21, 21), 0, 21, 0, 21)
    first = next_click(np.zeros_like(gt), gt)
    not_clicked = np.ones_like(gt)
    not_clicked[first.y, first.x] = False
    second = next_click(np.zeros_like(gt), gt, not_clicked=not_clicked)
    assert (second.x, second.y) != (first.x, first.y) and second.positive


def test_ignore_band_gives_no_click():
    """GrabCut: gt 128 marks an unknown band; errors there are not errors."""
    gt_values = np.zeros((40, 40), np.uint8)
    gt_values[8:32, 8:32] = 128
    gt_values[12:28, 12:28] = 255
    gt, valid = gt_values > 128, gt_values != 128
    first = next_click(np.zeros_like(gt), gt, valid)
    assert first.positive and gt[first.y, first.x]
    pred_covering_band = gt_values > 0  # right on every scored pixel, "wrong" only in the band
    assert next_click(pred_covering_band, gt, valid) is None
    assert error_component_clicks(pred_covering_band, gt, valid, 5, "all", seeded_rng(0, "x")) == []
    band_fn = np.zeros_like(gt)  # missing the object: the click avoids the band
    for _ in range(3):
        click = next_click(band_fn, gt, valid)
        assert valid[click.y, click.x]
        band_fn |= rect(gt.shape, click.y - 2, click.y + 3, click.x - 2, click.x + 3) & gt


def test_random_points_sample_the_mask_without_replacement():
    mask = rect((30, 30), 5, 10, 5, 10)
    points = random_points(mask, 10, seeded_rng(0, "img"))
    assert points.shape == (10, 2) and len({tuple(p) for p in points}) == 10
    assert mask[points[:, 1].astype(int), points[:, 0].astype(int)].all()
    assert random_points(rect((5, 5), 0, 1, 0, 3), 10, seeded_rng(0, "img")).shape == (3, 2)
    np.testing.assert_array_equal(points, random_points(mask, 10, seeded_rng(0, "img")))


@pytest.mark.parametrize("scale", [0.2, 0.4])
def test_dn_box_noise_statistics_within_dn_detr_bounds(scale):
    box = np.array([400.0, 300.0, 600.0, 500.0])  # 200 x 200, far from the border: no clipping
    rng = seeded_rng(0, "noise", 1)
    noisy = np.array([dn_box_noise(box, scale, rng, (2000, 2000)) for _ in range(4000)])
    shift = (noisy[:, :2] + noisy[:, 2:]) / 2 - 500.0 * np.array([1, 0.8])
    ratio = (noisy[:, 2:] - noisy[:, :2]) / 200.0
    half_side = scale * 100.0
    assert np.abs(shift).max() <= half_side + 1e-9 and np.abs(shift).max() > 0.97 * half_side
    assert np.abs(shift.mean(axis=0)).max() < 0.05 * half_side
    np.testing.assert_allclose(shift.std(axis=0), half_side / np.sqrt(3), rtol=0.05)  # U(-a, a): a / sqrt(3)
    assert ratio.min() >= 1 - scale - 1e-9 and ratio.max() <= 1 + scale + 1e-9
    np.testing.assert_allclose(ratio.mean(axis=0), 1.0, atol=0.01)
    np.testing.assert_allclose(ratio.std(axis=0), scale / np.sqrt(3), rtol=0.05)
    again = dn_box_noise(box, scale, seeded_rng(0, "noise", 1), (2000, 2000))
    np.testing.assert_array_equal(again, noisy[0])  # seeded: repeatable


def test_dn_box_noise_is_clipped_to_the_image():
    boxes = [dn_box_noise(np.array([0.0, 0.0, 1024.0, 1024.0]), 0.4, seeded_rng(s, "c"), (1024, 1024)) for s in range(50)]
    boxes = np.array(boxes)
    assert boxes.min() >= 0 and boxes.max() <= 1024
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_error_component_clicks_take_the_largest_eroded_components():
    gt = rect((80, 80), 10, 50, 10, 50)
    pred = gt & ~rect(gt.shape, 20, 26, 20, 26)  # FN 6x6 -> eroded 4x4 = 16 px
    pred |= rect(gt.shape, 60, 70, 60, 70)  # FP 10x10 -> 64 px
    pred |= rect(gt.shape, 60, 64, 5, 9)  # FP 4x4 -> 4 px
    pred |= rect(gt.shape, 0, 1, 0, 80)  # FP 1-px line -> eroded away
    pred |= rect(gt.shape, 70, 73, 20, 23)  # FP 3x3 -> 1 px < 2 px: dropped
    pred |= rect(gt.shape, 75, 78, 40, 44)  # FP 3x4 -> 1x2 = 2 px: kept
    fn_core, big_fp_core = rect(gt.shape, 21, 25, 21, 25), rect(gt.shape, 61, 69, 61, 69)
    rng = lambda: seeded_rng(0, "img", 0)  # noqa: E731

    (fg,) = error_component_clicks(pred, gt, None, 5, "fg", rng())
    assert fg.positive and fn_core[fg.y, fg.x]
    bg = error_component_clicks(pred, gt, None, 5, "bg", rng())
    assert [c.positive for c in bg] == [False] * 3
    assert big_fp_core[bg[0].y, bg[0].x] and rect(gt.shape, 61, 63, 6, 8)[bg[1].y, bg[1].x]
    assert rect(gt.shape, 76, 77, 41, 43)[bg[2].y, bg[2].x]
    both = error_component_clicks(pred, gt, None, 2, "all", rng())
    assert big_fp_core[both[0].y, both[0].x] and not both[0].positive
    assert fn_core[both[1].y, both[1].x] and both[1].positive
    # nested: more clicks extend the same list; the seed makes it repeatable
    assert error_component_clicks(pred, gt, None, 5, "all", rng())[:2] == both
    picks = {error_component_clicks(pred, gt, None, 1, "bg", seeded_rng(s, "img"))[0] for s in range(20)}
    assert len(picks) > 10  # one uniformly random pixel of the component, not its centre


def test_pi_click_coordinates_map_pixel_centres_to_the_squashed_frame():
    coords = PiClicksProtocol.to_squashed([Click(0, 0, True), Click(511, 255, False)], (256, 512))
    np.testing.assert_allclose(coords, [[0.5, 1.5], [1022.5, 1021.5]])
