"""``MaskMetrics``: accumulate every mask measure over a data set."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ._inputs import check_param, prepare
from .hce import _hce
from .region import _boundary_iou_binary, _iou_binary, _mba_binary
from .sod import (
    _adaptive_emeasure,
    _adaptive_fmeasure,
    _emeasure_curve,
    _fmeasure_curve,
    _mae,
    _s_measure,
    _weighted_fmeasure,
)

#: keys of :meth:`MaskMetrics.compute`, in order
METRIC_KEYS = (
    "iou", "biou", "mba",
    "max_f", "mean_f", "adp_f", "weighted_f", "mae", "s_measure",
    "max_e", "mean_e", "adp_e", "hce",
)  # fmt: skip

# per-image scalars that are averaged over images
_PER_IMAGE = ("iou", "biou", "mba", "adp_f", "weighted_f", "mae", "s_measure", "adp_e", "hce")


class _Setting:
    """A ``MaskMetrics`` setting, validated by :func:`check_param` whenever it is assigned."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        return self if obj is None else obj.__dict__[self.name]

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.name] = check_param(self.name, value)


class MaskMetrics:
    """Accumulates mask-quality measures over images; :meth:`compute` gives data-set scores.

    ``update(pred, gt, ignore=None)`` per image, then ``compute()``:

    - ``iou``, ``biou``, ``mba``: mean over images of the per-image IoU, boundary IoU
      (``dilation_ratio``) and mBA (see :mod:`finesam.metrics.region`), as HQ-SAM reports
      mIoU / mBIoU and CascadePSP reports mBA;
    - ``max_f``, ``mean_f``: max and mean over the 256 thresholds of the F-measure curve
      (``beta2``) averaged over images (the max of the mean curve, not the mean of the
      per-image maxima), as PySODMetrics; ``max_e``, ``mean_e`` likewise for the E-measure;
    - ``adp_f``, ``adp_e``, ``weighted_f``, ``mae``, ``s_measure`` (``alpha``), ``hce``
      (``relax``, ``epsilon``): mean over images of the per-image values.

    ``hce=False`` skips the relaxed HCE (seconds per image on multi-megapixel masks): its
    per-image and data-set values are then NaN.

    Inputs: ``pred`` bool, uint8 0..255 or float in [0, 1]; ``gt`` bool or uint8 (foreground
    ``> 128``); ``ignore`` optional bool mask of pixels not scored; all 2-D of one shape.
    How each measure treats ignored pixels is documented in :mod:`finesam.metrics`.

    Settings (validated when the object is made and whenever one is assigned; anything
    else raises ``InvalidInputError``): ``dilation_ratio`` in (0, 1]; ``beta2`` and
    ``weighted_beta2`` finite and > 0; ``alpha`` in [0, 1]; ``relax`` an integer >= 0;
    ``epsilon`` finite and >= 0; ``hce`` a bool.

    Ranges: every value is finite; ``iou``, ``biou``, ``mba``, the F-measures, ``mae`` and
    ``s_measure`` are in [0, 1]; the E-measures in [0, 2] (per image at most ``N / (N - 1)``
    for ``N`` >= 2 scored pixels, at most 1 for ``N = 1``, see
    :func:`~finesam.metrics.emeasure_curve`); ``hce`` is an integer >= 0 (NaN when
    ``hce=False``). Degenerate images (1 pixel, 1 x N, empty or full masks) count like any
    other image with the values documented for each measure.
    """

    dilation_ratio = _Setting()
    beta2 = _Setting()
    weighted_beta2 = _Setting()
    alpha = _Setting()
    relax = _Setting()
    epsilon = _Setting()
    hce = _Setting()

    def __init__(
        self,
        *,
        dilation_ratio: float = 0.02,
        beta2: float = 0.3,
        weighted_beta2: float = 1.0,
        alpha: float = 0.5,
        relax: int = 5,
        epsilon: float = 2.0,
        hce: bool = True,
    ):
        self.dilation_ratio = dilation_ratio
        self.beta2 = beta2
        self.weighted_beta2 = weighted_beta2
        self.alpha = alpha
        self.relax = relax
        self.epsilon = epsilon
        self.hce = hce
        self.reset()

    def reset(self) -> None:
        """Forget every image."""
        self._values: dict[str, list[float]] = {k: [] for k in _PER_IMAGE}
        self._f_curves: list[np.ndarray] = []
        self._e_curves: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._f_curves)

    def update(self, pred, gt, ignore=None) -> dict[str, float]:
        """Score one image; returns its per-image values.

        The returned dict has the keys of :meth:`compute`, where ``max_f``/``mean_f``/
        ``max_e``/``mean_e`` are the max/mean of this image's own curves.
        Raises ``InvalidInputError`` (a ``ValueError``) on bad input (shape, dtype, range,
        nothing left to score after ``ignore``), recording nothing.
        """
        prep = prepare(pred, gt, ignore)
        f_curve = _fmeasure_curve(prep, self.beta2)
        e_curve = _emeasure_curve(prep)
        values = {
            "iou": _iou_binary(prep.pred_bin, prep.gt, prep.valid),
            "biou": _boundary_iou_binary(prep.pred_bin, prep.gt, prep.valid, self.dilation_ratio),
            "mba": _mba_binary(prep.pred_bin, prep.gt, prep.valid),
            "adp_f": _adaptive_fmeasure(prep, self.beta2),
            "weighted_f": _weighted_fmeasure(prep, self.weighted_beta2),
            "mae": _mae(prep),
            "s_measure": _s_measure(prep, self.alpha),
            "adp_e": _adaptive_emeasure(prep),
            "hce": float(_hce(prep, self.relax, self.epsilon)) if self.hce else float("nan"),
        }
        for k in _PER_IMAGE:
            self._values[k].append(values[k])
        self._f_curves.append(f_curve)
        self._e_curves.append(e_curve)
        return {
            **values,
            "max_f": float(f_curve.max()),
            "mean_f": float(f_curve.mean()),
            "max_e": float(e_curve.max()),
            "mean_e": float(e_curve.mean()),
        }

    def curves(self) -> dict[str, np.ndarray]:
        """Mean F- and E-measure curves over images, float64 ``(256,)`` indexed by threshold."""
        if not self._f_curves:
            raise InvalidInputError("MaskMetrics has no images: call update(pred, gt) first")
        return {
            "f": np.mean(np.array(self._f_curves, dtype=np.float64), axis=0),
            "e": np.mean(np.array(self._e_curves, dtype=np.float64), axis=0),
        }

    def compute(self) -> dict[str, float]:
        """Data-set scores (dict with the keys of ``METRIC_KEYS``, Python floats)."""
        curves = self.curves()
        means = {k: float(np.mean(np.array(v, dtype=np.float64))) for k, v in self._values.items()}
        out = {
            **means,
            "max_f": float(curves["f"].max()),
            "mean_f": float(curves["f"].mean()),
            "max_e": float(curves["e"].max()),
            "mean_e": float(curves["e"].mean()),
        }
        return {k: out[k] for k in METRIC_KEYS}
