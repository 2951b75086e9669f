"""Validated mask-quality metrics (numpy + OpenCV + SciPy; scikit-image for the HCE skeleton).

Per-image functions take ``pred`` and ``gt`` of one shape ``(H, W)``:

- ``pred``: ``bool``, ``uint8`` probability map 0..255, or ``float`` probability in [0, 1];
- ``gt``: ``bool`` or ``uint8`` 0..255, foreground where ``gt > 128``;
- ``ignore`` (optional): ``bool (H, W)``, ``True`` on pixels not scored (e.g. GrabCut's
  128 band: ``ignore = gt == 128``).

Anything else (other dtypes, shapes, empty or ragged arrays, out-of-range floats, NaN/inf,
a ``uint8`` 0/1 mask that would silently read as empty, an ``ignore`` that leaves nothing
to score) raises :class:`finesam.errors.InvalidInputError` (a ``ValueError``) saying what
to pass instead. So do parameters outside their domain, checked before any work:
``dilation_ratio`` in (0, 1], ``beta2`` / ``weighted_beta2`` > 0, ``alpha`` in [0, 1],
``relax`` an integer >= 0, ``epsilon`` >= 0, all finite, bools and strings refused
(see ``PARAMETERS`` in :mod:`._inputs`).

Region measures (:mod:`.region`) binarise the prediction (``bool`` as is, ``uint8 > 128``,
``float > 0.5``): :func:`iou` and :func:`boundary_iou` as in HQ-SAM's evaluation,
:func:`mean_boundary_accuracy` (mBA) as in CascadePSP.

SOD/DIS measures (:mod:`.sod`, :mod:`.hce`) are those of PySODMetrics 1.6.2: the prediction
is read as ``uint8 / 255`` (``bool`` as 0/255) and min-max stretched to [0, 1] unless
constant; F-measure (``beta^2 = 0.3``) and E-measure curves over 256 thresholds plus their
adaptive versions (threshold ``2 * mean``), weighted F-measure (``beta^2 = 1``), MAE,
S-measure (``alpha = 0.5``) and relaxed HCE (``relax = 5``, ``epsilon = 2.0``).

Degenerate cases: IoU / boundary IoU of two empty masks = 1.0; an mBA radius with an empty
band scores 1.0 if the prediction is right everywhere, else 0.0; the SOD measures follow
PySODMetrics (GT empty: F = 0, weighted F = 0, S = 1 - mean(p); E counts agreement),
except where its formula is undefined: the E-measure divides by ``N - 1`` (``N`` scored
pixels), so with ``N = 1`` it is the one pixel's alignment (1.0 if the binary map agrees
with the GT there, else 0.0) instead of ``sum / eps`` (about 4.5e15). Ranges: every measure
is finite; IoU, boundary IoU, mBA, the F-measures, MAE and S in [0, 1]; E in
``[0, N / (N - 1)]`` (a perfect map scores ``N / (N - 1)`` as in PySODMetrics; at most 2),
[0, 1] for ``N = 1``; HCE an integer >= 0. 1-pixel, 1 x N and N x 1 images are scored
like any other.

Ignored pixels: the prediction takes the GT value on them (nothing there is an error),
and the measures that count or average pixels leave them out:

- IoU: left out of both masks. Boundary IoU: bands computed on the full GT and the filled
  prediction, ignored pixels then left out of both bands. mBA: left out of the GT band.
- F-measure, MAE, E-measure: left out of every count and mean, of the min-max range and of
  the image size, i.e. the same as cropping them away.
- S-measure, weighted F-measure, HCE (measures of the spatial layout): computed on the
  full grid with the filled prediction.

:class:`MaskMetrics` accumulates all of them over a data set.
"""

from .accumulator import METRIC_KEYS, MaskMetrics
from .hce import human_correction_effort
from .region import (
    boundary_iou,
    boundary_width,
    iou,
    mask_boundary,
    mba_radii,
    mean_boundary_accuracy,
)
from .sod import (
    adaptive_emeasure,
    adaptive_fmeasure,
    emeasure_curve,
    fmeasure_curve,
    mae,
    s_measure,
    weighted_fmeasure,
)

__all__ = [
    "METRIC_KEYS",
    "MaskMetrics",
    "adaptive_emeasure",
    "adaptive_fmeasure",
    "boundary_iou",
    "boundary_width",
    "emeasure_curve",
    "fmeasure_curve",
    "human_correction_effort",
    "iou",
    "mae",
    "mask_boundary",
    "mba_radii",
    "mean_boundary_accuracy",
    "s_measure",
    "weighted_fmeasure",
]
