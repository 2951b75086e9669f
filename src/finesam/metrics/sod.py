"""Salient-object / DIS measures, defined as in PySODMetrics 1.6.2 (``py_sod_metrics``).

Every measure works on the normalised prediction ``p`` (float64 in [0, 1], see
:func:`finesam.metrics._inputs.normalize_pred`: ``uint8 / 255`` then min-max stretched
unless constant) and the GT foreground ``g = gt > 128``.

Thresholded curves are indexed by the threshold ``t = 0..255`` on ``q = uint8(p * 255)``
(truncation): ``curve[t]`` scores the binary map ``q >= t``. (PySODMetrics stores the same
256 values in the reverse order; max and mean do not depend on the order.)

Ignored pixels (``ignore`` bool ``(H, W)``; the prediction takes the GT value on them):

- counting measures (F-measure curve and adaptive F, MAE, E-measure curve and adaptive E)
  drop them: every count, mean, min-max range and the image size ``N`` are taken over the
  scored pixels only, which equals scoring the image with those pixels cropped away;
- structural measures (S-measure, weighted F-measure, HCE) need the full pixel grid, so the
  prediction is set to the GT (1.0 on foreground, 0.0 on background) on ignored pixels:
  errors there cost nothing while the layout of the image is kept.

Degenerate images (1 pixel, 1 x N, N x 1, GT all foreground or all background) follow the
reference wherever it is defined; the one place it is not is the E-measure's ``N - 1``
denominator at ``N = 1`` scored pixel, defined here as the pixel's own alignment (see
:func:`emeasure_curve`). Every measure returns finite values in its documented range.
Parameters (``beta2`` > 0, ``alpha`` in [0, 1]) are validated before any work; values
outside their domain, NaN, inf, bools and non-numbers raise ``InvalidInputError``.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve, distance_transform_edt

from ._inputs import Prepared, check_param, prepare

# MATLAB's eps, as used by PySODMetrics
EPS = float(np.spacing(1))
N_THRESHOLDS = 256


def _scored(prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """(p, g) restricted to the scored pixels (2-D when nothing is ignored, else 1-D)."""
    if prep.valid is None:
        return prep.p, prep.gt
    return prep.p[prep.valid], prep.gt[prep.valid]


def _adaptive_threshold(p: np.ndarray) -> float:
    return min(2 * p.mean(), 1)


def _counts_per_threshold(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tp[t]``, ``fp[t]``: GT-foreground / GT-background pixels with ``q >= t``, t=0..255."""
    q = (p * 255).astype(np.uint8)
    fg_hist = np.bincount(q[g], minlength=N_THRESHOLDS)
    bg_hist = np.bincount(q[~g], minlength=N_THRESHOLDS)
    tp = np.cumsum(fg_hist[::-1])[::-1]
    fp = np.cumsum(bg_hist[::-1])[::-1]
    return tp, fp


def _safe_div(num, den) -> np.ndarray:
    """num / den, 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _f_from_counts(tp, fp, n_fg: int, beta2: float):
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, n_fg)
    return _safe_div((1 + beta2) * precision * recall, beta2 * precision + recall)


# ----------------------------------------------------------------------------- F-measure
def _fmeasure_curve(prep: Prepared, beta2: float) -> np.ndarray:
    p, g = _scored(prep)
    tp, fp = _counts_per_threshold(p, g)
    return _f_from_counts(tp, fp, int(np.count_nonzero(g)), beta2)


def _adaptive_fmeasure(prep: Prepared, beta2: float) -> float:
    p, g = _scored(prep)
    binary = p >= _adaptive_threshold(p)
    tp = int(np.count_nonzero(binary & g))
    fp = int(np.count_nonzero(binary & ~g))
    return float(_f_from_counts(tp, fp, int(np.count_nonzero(g)), beta2))


def fmeasure_curve(pred, gt, beta2: float = 0.3, ignore=None) -> np.ndarray:
    """F-measure of ``q >= t`` for ``t = 0..255``; float64 ``(256,)``.

    ``F = (1 + beta2) P R / (beta2 P + R)`` with precision ``P = TP / (TP + FP)`` and
    recall ``R = TP / |G|``; each ratio is 0 when its denominator is 0 (so GT empty -> 0).
    A dataset's max-F / mean-F are the max / mean of the *mean curve over images*.
    Values in [0, 1]; ``beta2``: a finite number > 0.
    """
    beta2 = check_param("beta2", beta2)
    return _fmeasure_curve(prepare(pred, gt, ignore), beta2)


def adaptive_fmeasure(pred, gt, beta2: float = 0.3, ignore=None) -> float:
    """F-measure of ``p >= min(2 * mean(p), 1)`` (adaptive threshold), in [0, 1].

    0 when ``TP == 0`` (so GT empty -> 0); ``beta2``: a finite number > 0.
    """
    beta2 = check_param("beta2", beta2)
    return _adaptive_fmeasure(prepare(pred, gt, ignore), beta2)


# ----------------------------------------------------------------------------- MAE
def _mae(prep: Prepared) -> float:
    p, g = _scored(prep)
    return float(np.mean(np.abs(p - g)))


def mae(pred, gt, ignore=None) -> float:
    """Mean absolute error ``mean(|p - g|)`` of the normalised map, in [0, 1]."""
    return _mae(prepare(pred, gt, ignore))


# ----------------------------------------------------------------------------- S-measure
def _s_object(x: np.ndarray) -> float:
    mean = np.mean(x)
    std = np.std(x, ddof=1) if x.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(p: np.ndarray, g: np.ndarray) -> float:
    n = p.size
    if n == 0:
        return 0.0  # empty quadrant (weight 0); PySODMetrics returns NaN here
    x = np.mean(p)
    y = np.mean(g)
    # the N - 1 + EPS denominators follow the reference (defined for N = 1)
    sigma_x = np.sum((p - x) ** 2) / (n - 1 + EPS)
    sigma_y = np.sum((g - y) ** 2) / (n - 1 + EPS)
    sigma_xy = np.sum((p - x) * (g - y)) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _s_measure(prep: Prepared, alpha: float) -> float:
    p, g = prep.p_filled, prep.gt
    y = np.mean(g)
    if y == 0:
        return float(1 - np.mean(p))
    if y == 1:
        return float(np.mean(p))
    # object-aware part: foreground and background similarity, weighted by GT area
    object_score = _s_object(p[g]) * y + _s_object((1 - p)[~g]) * (1 - y)
    # region-aware part: SSIM of the four quadrants split at the GT centroid
    h, w = g.shape
    area = h * w
    rows, cols = np.nonzero(g)
    # np.round is half-to-even; the +1 mirrors MATLAB's 1-based inclusive split
    cy = int(np.round(rows.mean())) + 1
    cx = int(np.round(cols.mean())) + 1
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    region_score = (
        _ssim(p[:cy, :cx], g[:cy, :cx]) * w_lt
        + _ssim(p[:cy, cx:], g[:cy, cx:]) * w_rt
        + _ssim(p[cy:, :cx], g[cy:, :cx]) * w_lb
        + _ssim(p[cy:, cx:], g[cy:, cx:]) * w_rb
    )
    return float(max(0.0, object_score * alpha + region_score * (1 - alpha)))


def s_measure(pred, gt, alpha: float = 0.5, ignore=None) -> float:
    """Structure measure (Fan et al. 2017), in [0, 1].

    ``S = max(0, alpha * S_object + (1 - alpha) * S_region)``; GT empty -> ``1 - mean(p)``,
    GT full -> ``mean(p)``. ``S_object`` scores ``2 m / (m^2 + 1 + s + eps)`` (``m``, ``s``:
    mean and sample std) of ``p`` on the GT foreground and of ``1 - p`` on the background,
    weighted by the GT area; ``S_region`` is the area-weighted SSIM of the four quadrants
    split at the (rounded, half-to-even) GT centroid. ``alpha``: a number in [0, 1].

    Degenerate cases: an empty quadrant (1 x N or N x 1 images) has weight 0 and scores 0
    (NaN in the reference); a quadrant where ``p`` and the GT are both constant (e.g. one
    pixel) scores 1 and one where the SSIM numerator alone is 0 scores 0, as in the
    reference; a 1-pixel image has an empty or full GT, so S is ``1 - p`` or ``p`` there.
    """
    alpha = check_param("alpha", alpha)
    return _s_measure(prepare(pred, gt, ignore), alpha)


# ----------------------------------------------------------------------------- E-measure
def _enhanced_sum(fg_fg, fg_bg, n_fg: int, n: int):
    """Sum of the enhanced-alignment matrix for binary predictions given by their counts.

    ``fg_fg``/``fg_bg``: predicted-foreground pixels on GT foreground / background (scalars
    or arrays over thresholds); ``n_fg``: GT foreground size; ``n``: image size.
    """
    pred_fg = fg_fg + fg_bg
    pred_bg = n - pred_fg
    if n_fg == 0:
        return pred_bg
    if n_fg == n:
        return pred_fg
    bg_fg = n_fg - fg_fg
    bg_bg = pred_bg - bg_fg
    mean_pred = pred_fg / n
    mean_gt = n_fg / n
    # (demeaned pred value, demeaned gt value, pixel count) of the four pixel classes
    parts = (
        (1 - mean_pred, 1 - mean_gt, fg_fg),
        (1 - mean_pred, 0 - mean_gt, fg_bg),
        (0 - mean_pred, 1 - mean_gt, bg_fg),
        (0 - mean_pred, 0 - mean_gt, bg_bg),
    )
    total = 0
    for a, b, count in parts:
        align = 2 * (a * b) / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    return total


def _e_denominator(n: int) -> float:
    """The reference's ``N - 1 + eps``; 1 when ``N = 1`` (where ``N - 1 + eps`` is eps and the
    sum, 0 or 1, would become 0 or 4.5e15)."""
    return n - 1 + EPS if n > 1 else 1.0


def _emeasure_curve(prep: Prepared) -> np.ndarray:
    p, g = _scored(prep)
    n, n_fg = g.size, int(np.count_nonzero(g))
    tp, fp = _counts_per_threshold(p, g)
    total = _enhanced_sum(tp, fp, n_fg, n)
    return np.asarray(total / _e_denominator(n), dtype=np.float64)


def _adaptive_emeasure(prep: Prepared) -> float:
    p, g = _scored(prep)
    n, n_fg = g.size, int(np.count_nonzero(g))
    binary = p >= _adaptive_threshold(p)
    total = _enhanced_sum(int(np.count_nonzero(binary & g)), int(np.count_nonzero(binary & ~g)), n_fg, n)
    return float(total / _e_denominator(n))


def emeasure_curve(pred, gt, ignore=None) -> np.ndarray:
    """Enhanced-alignment measure (Fan et al. 2018) of ``q >= t``, ``t = 0..255``; ``(256,)``.

    For a binary map ``B``: ``E = sum((1 + xi)^2 / 4) / (N - 1 + eps)`` with
    ``xi = 2 a b / (a^2 + b^2 + eps)``, ``a = B - mean(B)``, ``b = G - mean(G)`` per pixel
    (``N``: scored pixels). GT empty -> ``E = |~B| / (N - 1 + eps)``; GT full ->
    ``|B| / (N - 1 + eps)``.

    Range: each pixel's term is in [0, 1], so ``E`` is in ``[0, N / (N - 1)]``; as in
    PySODMetrics a perfect map scores ``N / (N - 1)``, slightly above 1 (at most 2, at
    ``N = 2``). Degenerate case ``N = 1`` (a 1-pixel image, or one pixel left by
    ``ignore``): ``N - 1 = 0``, where the reference gives ``sum / eps`` (about 4.5e15);
    here ``E`` is the sum itself, i.e. the one pixel's alignment: 1.0 where ``B`` equals the
    GT there, else 0.0.
    """
    return _emeasure_curve(prepare(pred, gt, ignore))


def adaptive_emeasure(pred, gt, ignore=None) -> float:
    """E-measure of ``p >= min(2 * mean(p), 1)``; range and ``N = 1`` as :func:`emeasure_curve`."""
    return _adaptive_emeasure(prepare(pred, gt, ignore))


# ----------------------------------------------------------------------------- weighted F
def _matlab_gaussian(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``."""
    m = (size - 1) / 2
    y, x = np.ogrid[-m : m + 1, -m : m + 1]
    k = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0
    return k / k.sum()


_WFM_KERNEL = _matlab_gaussian(7, 5.0)


def _weighted_fmeasure(prep: Prepared, beta2: float) -> float:
    p, g = prep.p_filled, prep.gt
    if not g.any():
        return 0.0  # PySODMetrics' convention for an empty GT
    bg = ~g
    # distance of each background pixel to the GT foreground, and that nearest pixel
    dist, (iy, ix) = distance_transform_edt(bg, return_indices=True)
    err = np.abs(p - g)
    # pixel dependency: a background pixel takes the error of its nearest foreground pixel
    err_t = err.copy()
    err_t[bg] = err[iy[bg], ix[bg]]
    err_a = convolve(err_t, weights=_WFM_KERNEL, mode="constant", cval=0)
    min_e = np.where(g & (err_a < err), err_a, err)
    # pixel importance: background errors weigh more the farther from the foreground
    importance = np.where(bg, 2 - np.exp(np.log(0.5) / 5 * dist), 1.0)
    ew = min_e * importance
    tp_w = np.sum(g) - np.sum(ew[g])
    fp_w = np.sum(ew[bg])
    recall = 1 - np.mean(ew[g])
    precision = tp_w / (tp_w + fp_w + EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + EPS))


def weighted_fmeasure(pred, gt, beta2: float = 1.0, ignore=None) -> float:
    """Weighted F-measure (Margolin et al. 2014), in [0, 1]; GT empty -> 0.

    Errors ``E = |p - g|``; on the background each pixel takes the error of its nearest
    GT-foreground pixel, is smoothed by a 7x7 Gaussian (sigma 5, zero border) and, on the
    foreground, the smaller of ``E`` and the smoothed error is kept; background errors are
    weighted by ``2 - exp(ln(0.5) / 5 * dist)``. With weighted ``TP = |G| - sum(Ew[G])``,
    ``FP = sum(Ew[~G])``: ``R = 1 - mean(Ew[G])``, ``P = TP / (TP + FP + eps)``,
    ``F = (1 + beta2) R P / (R + beta2 P + eps)``. ``beta2``: a finite number > 0.
    A GT with no background (all foreground, e.g. a 1-pixel foreground image): ``FP = 0``,
    so ``P`` is 1 (0 when ``TP = 0``) and ``F`` depends on the recall only.
    """
    beta2 = check_param("beta2", beta2)
    return _weighted_fmeasure(prepare(pred, gt, ignore), beta2)
