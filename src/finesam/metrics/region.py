"""Region and boundary measures of a binary mask: IoU, boundary IoU (HQ-SAM), mBA (CascadePSP).

All functions take ``pred`` and ``gt`` as 2-D arrays of one shape ``(H, W)`` (see
:mod:`finesam.metrics` for the accepted dtypes) and an optional ``ignore`` bool mask; they
binarise ``pred`` (bool as is, ``uint8 > 128``, ``float > 0.5``) and ``gt`` (``> 128``).

Ignored pixels (``ignore``): the prediction takes the GT value there (nothing there is an
error), and they are left out of every pixel count: of both masks for IoU, of both boundary
bands for boundary IoU (the bands themselves are computed on the full GT and on the filled
prediction, so that a predicted edge inside an ignored band matches the GT's edge), and of
the evaluation band for mBA. For IoU and mBA the filling changes nothing.

Degenerate inputs (1-pixel, 1 x N or N x 1 images, empty or full masks) all have defined
values in [0, 1]: see each function. ``dilation_ratio`` must be in (0, 1] (a ratio of 1
already makes the band the whole mask); anything else raises ``InvalidInputError``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ._inputs import binarize_pred, check_mask, check_pair, check_param


def _count(mask: np.ndarray, valid: np.ndarray | None) -> int:
    return int(np.count_nonzero(mask if valid is None else mask & valid))


def _fill(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    return pred if ignore is None else np.where(ignore, gt, pred)


def _iou_binary(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None) -> float:
    union = _count(pred | gt, valid)
    if union == 0:
        return 1.0  # both masks empty (on the scored pixels): a perfect prediction
    return _count(pred & gt, valid) / union


def iou(pred, gt, ignore=None) -> float:
    """Intersection over union ``|P & G| / |P | G|`` of the binarised masks, in [0, 1].

    As in HQ-SAM's evaluation (``mask_iou``: ``pred logits > 0`` vs ``gt > 128``).
    Convention: both masks empty -> 1.0 (HQ-SAM's code gives 0/0 = NaN there); ``gt`` empty
    and ``pred`` not -> 0.0. ``ignore`` (bool ``(H, W)``): pixels left out of both sets.
    """
    p, g, ign = check_pair(pred, gt, ignore)
    return _iou_binary(binarize_pred(p), g, None if ign is None else ~ign)


def _boundary_width(height: int, width: int, dilation_ratio: float) -> int:
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def boundary_width(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Boundary width ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))`` in pixels.

    ``round`` is Python's (half to even), as in the reference definition. ``height`` and
    ``width``: integers in [1, 2^31 - 1]; ``dilation_ratio``: in (0, 1].
    """
    return _boundary_width(
        check_param("height", height), check_param("width", width), check_param("dilation_ratio", dilation_ratio)
    )


def _mask_boundary(mask: np.ndarray, dilation_ratio: float) -> np.ndarray:
    h, w = mask.shape
    # a band wider than the image changes nothing: every pixel is then within d of the padding
    d = min(_boundary_width(h, w, dilation_ratio), max(h, w))
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    # the (2d+1) square erosion is separable: rows, then columns (the same minimum, exactly)
    eroded = cv2.erode(padded, np.ones((1, 2 * d + 1), np.uint8))
    eroded = cv2.erode(eroded, np.ones((2 * d + 1, 1), np.uint8))[1 : h + 1, 1 : w + 1]
    return mask & (eroded == 0)


def mask_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Inner boundary band of a bool mask ``(H, W)``, as in Boundary IoU (Cheng et al. 2021).

    ``mask - erode(pad(mask))``: the mask is zero-padded by one pixel (so that a mask cut
    by the image border has a boundary there), eroded with a 3x3 square ``d`` times
    (``d`` from :func:`boundary_width`) and un-padded. Eroding ``d`` times with a 3x3
    square equals one erosion with a ``(2d+1)`` square, which is what is done here.
    Returns bool ``(H, W)``: the mask pixels within Chebyshev distance ``d`` of the
    background or of the image border (all of a mask no wider than ``2d`` pixels, e.g.
    any mask of a 1 x N image). ``mask``: a non-empty 2-D ``bool`` array.
    """
    ratio = check_param("dilation_ratio", dilation_ratio)
    return _mask_boundary(check_mask(mask), ratio)


def _boundary_iou_binary(pred, gt, valid, dilation_ratio: float) -> float:
    bp = _mask_boundary(pred, dilation_ratio)
    bg = _mask_boundary(gt, dilation_ratio)
    # a non-empty mask always has a non-empty boundary, so union == 0 iff both are empty
    return _iou_binary(bp, bg, valid)


def boundary_iou(pred, gt, dilation_ratio: float = 0.02, ignore=None) -> float:
    """Boundary IoU as evaluated by HQ-SAM: IoU of the inner boundary bands, in [0, 1].

    ``B(M)`` = :func:`mask_boundary` (width ``d = max(1, round(0.02 * diagonal))``);
    ``BIoU = |B(P) & B(G)| / |B(P) | B(G)|``. Convention: both masks empty -> 1.0 (NaN
    in HQ-SAM's code). ``ignore``: the prediction takes the GT value on ignored pixels, the
    bands are computed on the full masks, and ignored pixels are left out of both bands.
    ``dilation_ratio``: a finite number in (0, 1] (``InvalidInputError`` otherwise).
    On images no wider than ``2d`` pixels (e.g. 1 x N) the bands are the masks themselves,
    so boundary IoU equals IoU there.
    """
    dilation_ratio = check_param("dilation_ratio", dilation_ratio)
    p, g, ign = check_pair(pred, gt, ignore)
    pred_bin = _fill(binarize_pred(p), g, ign)
    return _boundary_iou_binary(pred_bin, g, None if ign is None else ~ign, dilation_ratio)


def _mba_radii(height: int, width: int) -> list[int]:
    max_radius = (width + height) / 300
    return [1 + int((max_radius - 1) / 5 * i) for i in range(5)]


def mba_radii(height: int, width: int) -> list[int]:
    """The five band radii of mBA: ``r_i = 1 + int((R - 1) / 5 * i)``, ``R = (H + W) / 300``.

    ``int`` truncates toward zero, so every radius is >= 1 (all 1 for images with
    ``H + W < 600``). ``height``, ``width``: integers in [1, 2^31 - 1].
    """
    return _mba_radii(check_param("height", height), check_param("width", width))


def _mba_binary(pred, gt, valid) -> float:
    gt8 = gt.astype(np.uint8)
    correct = pred == gt
    all_correct = bool(correct.all() if valid is None else correct[valid].all())
    accs = []
    for r in _mba_radii(*gt.shape):
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        # morphological gradient > 0  <=>  dilation != erosion
        band = cv2.dilate(gt8, disk) != cv2.erode(gt8, disk)
        if valid is not None:
            band &= valid
        n = np.count_nonzero(band)
        if n == 0:
            # no GT boundary to score (GT empty or full): all-or-nothing, like IoU's 1.0/0.0
            accs.append(1.0 if all_correct else 0.0)
        else:
            accs.append(np.count_nonzero(correct & band) / n)
    return float(sum(accs) / len(accs))


def mean_boundary_accuracy(pred, gt, ignore=None) -> float:
    """mBA, the mean boundary accuracy of CascadePSP (Cheng et al. 2020), in [0, 1].

    For each of the five radii ``r`` of :func:`mba_radii`, the band is the morphological
    gradient (dilation minus erosion) of the GT mask with a ``(2r+1) x (2r+1)`` elliptic
    kernel (``cv2.MORPH_ELLIPSE``; the image border adds no band); the accuracy is the
    fraction of band pixels where the binarised prediction equals the GT. mBA is the mean
    of the five accuracies. ``ignore``: ignored pixels are left out of the band.
    Convention: a radius whose band is empty (GT empty or full, or band fully ignored)
    scores 1.0 if the prediction equals the GT on every scored pixel, else 0.0
    (CascadePSP's code divides 0 by 0 there); this covers 1-pixel images and a GT that is
    all foreground or all background.
    """
    p, g, ign = check_pair(pred, gt, ignore)
    return _mba_binary(binarize_pred(p), g, None if ign is None else ~ign)
