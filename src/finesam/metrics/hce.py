"""Relaxed Human Correction Effort (HCE) of DIS (Qin et al., ECCV 2022), as in PySODMetrics 1.6.2.

HCE estimates how many mouse clicks a person needs to fix a binary prediction: the
number of polygon control points needed to trace the false-positive and false-negative
regions where they touch the rest of the object, plus one click for each independent
error region. "Relaxed": errors thinner than ``relax`` pixels along the true boundary
are forgiven, but errors on the GT skeleton (thin structures) are always counted.

Parameters: ``relax`` an integer >= 0 (bools and floats refused), ``epsilon`` a finite
number >= 0; anything else raises ``InvalidInputError`` before any work. Degenerate images
(1 pixel, 1 x N, N x 1, empty or full masks) give an integer >= 0 like any other.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..optional import require
from ._inputs import Prepared, check_param, prepare

# 3x3 cross, skimage.morphology.disk(1)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _relax(region: np.ndarray, allowed: np.ndarray, eroded_union: np.ndarray, relax: int) -> np.ndarray:
    """Error pixels of ``region`` reachable within ``relax`` cross-steps of the error region's
    core (``region & eroded_union``) without leaving ``allowed``."""
    grown = region & eroded_union
    for _ in range(relax):
        step = cv2.dilate(grown.astype(np.uint8), _CROSS).astype(bool) & allowed
        if np.array_equal(step, grown):
            break  # nothing left to reach: further steps change nothing (and a huge relax ends)
        grown = step
    return region & grown


def _boundary_segments(mask: np.ndarray, condition: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Contour pieces of ``mask`` that need tracing, and the count of independent regions.

    The contours of ``mask`` (``cv2.findContours``, ``RETR_TREE``, every pixel) are walked
    in order; a contour pixel is kept when ``condition`` dilated by the 3x3 cross is set
    there and no earlier kept point lies on the same pixel. Maximal runs of kept points
    form segments; when a contour yields several segments and its last segment ends
    8-adjacent to the start of its first one, the reversed first segment is appended to
    the last (they are one piece across the contour's starting point). A connected
    (8-connectivity) region of ``mask`` with no kept point is *independent*: it is not
    attached to the object and costs one click of its own.

    Returns ``(segments, n_independent)``; each segment is int32 ``(n, 1, 2)`` ``(x, y)``.
    """
    cond = cv2.dilate(condition.astype(np.uint8), _CROSS) != 0
    mask8 = mask.astype(np.uint8)
    n_labels, labels = cv2.connectedComponents(mask8, connectivity=8)
    contours, _ = cv2.findContours(mask8, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)

    w = mask.shape[1]
    visited = np.zeros(mask.size, dtype=bool)
    attached = np.zeros(n_labels, dtype=bool)
    segments: list[np.ndarray] = []
    for contour in contours:
        xy = contour[:, 0, :]
        flat = xy[:, 1].astype(np.int64) * w + xy[:, 0]
        # a 1-pixel-wide part is walked twice by its contour: keep a pixel's first visit only
        first = np.zeros(len(flat), dtype=bool)
        first[np.unique(flat, return_index=True)[1]] = True
        keep = cond.ravel()[flat] & ~visited[flat] & first
        if not keep.any():
            continue
        visited[flat[keep]] = True
        attached[labels.ravel()[flat[keep]]] = True

        # maximal runs of consecutive kept points
        edges = np.diff(np.concatenate(([0], keep.astype(np.int8), [0])))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        pieces = [xy[a:b] for a, b in zip(starts, stops)]
        if len(pieces) > 1:
            dx, dy = np.abs(pieces[0][0] - pieces[-1][-1])
            if max(dx, dy) == 1:  # 8-adjacent, not the same pixel
                pieces[-1] = np.concatenate([pieces[-1], pieces[0][::-1]])
                del pieces[0]
        segments.extend(piece.astype(np.int32)[:, None, :] for piece in pieces)
    n_independent = int(n_labels - 1 - np.count_nonzero(attached[1:]))
    return segments, n_independent


def _control_points(segments: list[np.ndarray], epsilon: float) -> int:
    """Vertices of the open Douglas-Peucker approximations of the segments."""
    return sum(len(cv2.approxPolyDP(s, epsilon, False)) for s in segments)


def _hce_binary(pred: np.ndarray, gt: np.ndarray, relax: int, epsilon: float) -> int:
    h, w = gt.shape
    # Larger values change nothing, and OpenCV refuses them (iterations beyond a C int,
    # epsilon >= 1e30): H + W erosions by the cross empty every pixel that can be emptied
    # (Manhattan distances in the image are < H + W), and a tolerance of H + W, more than
    # any point-to-chord distance in the image, already keeps only the end points.
    erosions = min(relax, h + w)
    epsilon = min(epsilon, float(h + w))
    gt_skeleton = require("skimage.morphology", "the human correction effort (HCE)").skeletonize(gt)
    tp = gt & pred
    fp = pred & ~gt
    fn = gt & ~pred

    eroded_union = cv2.erode((gt | pred).astype(np.uint8), _CROSS, iterations=erosions).astype(bool)
    # relaxed errors: drop those within `relax` pixels of the union's border
    fp_r = _relax(fp, ~gt, eroded_union, relax)
    fn_r = _relax(fn, ~pred, eroded_union, relax)
    # missed skeleton pixels are structure and always need correction
    fn_r |= gt_skeleton & ~tp

    # FP regions are traced where they touch correct or missing foreground
    seg_fp, ind_fp = _boundary_segments(fp_r, tp | fn_r)
    # FN regions are traced where they touch the background
    seg_fn, ind_fn = _boundary_segments(fn_r, ~(tp | fp_r | fn_r))
    return _control_points(seg_fp, epsilon) + ind_fp + _control_points(seg_fn, epsilon) + ind_fn


def _hce(prep: Prepared, relax: int, epsilon: float) -> int:
    return _hce_binary(prep.p_filled > 0.5, prep.gt, relax, epsilon)


def human_correction_effort(pred, gt, relax: int = 5, epsilon: float = 2.0, ignore=None) -> int:
    """Relaxed HCE (integer >= 0, lower is better; 0 for a perfect prediction).

    The prediction is binarised as ``p > 0.5`` on the normalised map (min-max stretched,
    see :mod:`finesam.metrics.sod`). Definition, with ``U = P | G`` eroded ``relax`` times
    by the 3x3 cross into ``U_r``:

    - relaxed FP: FP pixels reached from ``FP & U_r`` by ``relax`` cross dilations that stay
      off ``G``; relaxed FN: likewise from ``FN & U_r`` staying off ``P``, plus the GT
      skeleton pixels (``skimage.morphology.skeletonize``) that are not TP;
    - HCE = control points (``cv2.approxPolyDP``, tolerance ``epsilon``, open curves) of the
      relaxed-FP contour pieces that touch ``TP | FN_r`` and of the relaxed-FN contour
      pieces that touch the rest of the image (``~(TP | FP_r | FN_r)``), plus the number of
      relaxed error regions touching neither (see :func:`_boundary_segments`).

    ``ignore``: the prediction takes the GT value on ignored pixels (no error there).
    ``relax``: an integer >= 0 (any size: the relaxation stops once it reaches every
    error pixel it can); ``epsilon``: a finite number >= 0 (values above ``H + W`` act as
    ``H + W``, which already exceeds every point-to-chord distance in the image).
    """
    relax = check_param("relax", relax)
    epsilon = check_param("epsilon", epsilon)
    return _hce(prepare(pred, gt, ignore), relax, epsilon)
