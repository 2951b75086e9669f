"""Masks as polygons: COCO polygon lists and GeoJSON, from OpenCV contours.

Coordinates are pixels of the image (x right, y down; a pixel (x, y) covers [x, x+1) x [y, y+1)).
Outlines are traced on the mask upsampled 2x, so they run a quarter pixel inside the mask's pixel
edges: every mask pixel's centre is inside, every other pixel's centre outside, and
rasterising the polygons by pixel centres (pycocotools, OpenCV) gives the mask back up to the
corners of diagonal steps.

Holes: COCO polygon lists cannot hold holes (tools merge a list by union), so each hole is
joined to its outer outline by a zero-width cut (one ring: out along the cut, around the hole,
back); both the even-odd and the non-zero fill rules then leave the hole empty. GeoJSON keeps
holes as interior rings of each polygon.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import cKDTree

from .rle import _check_mask

_SCALE = 2  # upsampling before tracing: outlines a quarter pixel inside the pixel edges


def _outlines(mask: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(outer ring, [hole rings]) per connected part of an (H, W) mask; rings (N, 2) float (x, y)."""
    array = _check_mask(mask)
    if not array.any():
        return []
    big = np.repeat(np.repeat(array.astype(np.uint8), _SCALE, axis=0), _SCALE, axis=1)
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = [(c.reshape(-1, 2).astype(np.float64) + 0.5) / _SCALE for c in contours]
    parts: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
    for index, (_, _, _, parent) in enumerate(hierarchy[0]):
        if parent < 0:
            parts[index] = (rings[index], [])
    for index, (_, _, _, parent) in enumerate(hierarchy[0]):
        if parent >= 0:
            parts[parent][1].append(rings[index])
    return list(parts.values())


def _bridged(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring: ``outer`` with each hole joined to it by a zero-width cut from the hole's point
    nearest to ``outer`` (cuts that cross another hole cancel out under both fill rules)."""
    if not holes:
        return outer
    points = np.concatenate(holes)
    distances, nearest = cKDTree(outer).query(points)
    starts = np.cumsum([0] + [len(hole) for hole in holes[:-1]])
    inserts: dict[int, list[np.ndarray]] = {}
    for hole, start in zip(holes, starts):
        j = int(np.argmin(distances[start:start + len(hole)]))
        i = int(nearest[start + j])
        inserts.setdefault(i, []).append(np.concatenate([hole[j:], hole[: j + 1]]))
    pieces, previous = [], 0
    for i in sorted(inserts):
        pieces.append(outer[previous : i + 1])
        for loop in inserts[i]:
            pieces += [loop, outer[i : i + 1]]
        previous = i + 1
    pieces.append(outer[previous:])
    return np.concatenate(pieces)


def mask_to_polygons(mask: np.ndarray, decimals: int = 2) -> list[list[float]]:
    """COCO polygons of an (H, W) mask: one flat ``[x0, y0, x1, y1, ...]`` list per connected part
    (at least 3 points each), holes joined in by zero-width cuts; ``[]`` for an empty mask."""
    polygons = []
    for outer, holes in _outlines(mask):
        polygons.append(np.round(_bridged(outer, holes), decimals).ravel().tolist())
    return polygons


def _closed(ring: np.ndarray, decimals: int) -> list[list[float]]:
    points = np.round(ring, decimals).tolist()
    return points + [points[0]]


def mask_to_geojson(mask: np.ndarray, properties: dict | None = None, decimals: int = 2) -> dict:
    """A GeoJSON ``Feature`` of an (H, W) mask: a ``MultiPolygon`` in pixel coordinates (one polygon
    per connected part: outer ring, then its holes; rings closed), with ``properties``."""
    coordinates = [[_closed(outer, decimals), *(_closed(hole, decimals) for hole in holes)]
                   for outer, holes in _outlines(mask)]
    return {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": coordinates},
            "properties": dict(properties or {})}
