"""Polygons re-rasterised by independent code (pycocotools for COCO polygons, OpenCV's
fillPoly for GeoJSON rings) give the masks back, holes included, on real masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import data_path
from PIL import Image

from finesam.formats import mask_to_geojson, mask_to_polygons

mask_utils = pytest.importorskip("pycocotools.mask")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _from_coco_polygons(polygons, height, width) -> np.ndarray:
    if not polygons:
        return np.zeros((height, width), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)


def _from_geojson(feature, height, width) -> np.ndarray:
    """Each polygon filled with its holes cut out (OpenCV fills a set of rings even-odd)."""
    out = np.zeros((height, width), np.uint8)
    for rings in feature["geometry"]["coordinates"]:
        layer = np.zeros_like(out)
        fixed = [np.round((np.asarray(ring) - 0.5) * 256).astype(np.int32) for ring in rings]  # pixel centres at integers
        cv2.fillPoly(layer, fixed, 1, shift=8)
        out |= layer
    return out.astype(bool)


def _real_masks():
    paths = sorted(data_path("dis5k_samples", "gt").glob("*.png")) + sorted(data_path("ecssd", "gt").glob("*.png"))[:4]
    return [(p.name, np.asarray(Image.open(p).convert("L")) > 128) for p in paths]


def test_polygons_rasterise_back_to_real_masks():
    for name, mask in _real_masks():
        height, width = mask.shape
        polygons = mask_to_polygons(mask)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        coco_iou = _iou(_from_coco_polygons(polygons, height, width), mask)
        geo_iou = _iou(_from_geojson(mask_to_geojson(mask), height, width), mask)
        assert coco_iou >= 0.98 and geo_iou >= 0.98, (name, coco_iou, geo_iou)


def test_holes_stay_holes_and_small_parts_survive():
    mask = np.zeros((40, 50), bool)
    mask[5:35, 5:45] = True
    mask[12:20, 10:18] = False      # two holes
    mask[22:30, 30:40] = False
    mask[25, 20] = False            # a one-pixel hole
    mask[2, 48] = True              # a one-pixel object
    mask[38, 0:3] = True            # a one-row object
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 3       # one ring per connected part, holes joined into it
    np.testing.assert_array_equal(_from_coco_polygons(polygons, 40, 50), mask)
    feature = mask_to_geojson(mask, {"score": 0.5})
    assert feature["properties"] == {"score": 0.5}
    assert sorted(len(rings) for rings in feature["geometry"]["coordinates"]) == [1, 1, 4]  # outer + 3 holes
    assert all(ring[0] == ring[-1] for rings in feature["geometry"]["coordinates"] for ring in rings)
    np.testing.assert_array_equal(_from_geojson(feature, 40, 50), mask)


def test_empty_mask_has_no_polygons():
    assert mask_to_polygons(np.zeros((8, 9), bool)) == []
    assert mask_to_geojson(np.zeros((8, 9), bool))["geometry"]["coordinates"] == []
