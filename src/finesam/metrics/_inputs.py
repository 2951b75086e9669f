"""Input validation and the shared pre-processing of (prediction, ground truth, ignore).

Accepted inputs, all 2-D arrays of one shape ``(H, W)``:

- ``pred``: ``bool``; ``uint8`` probability map 0..255; or ``float16/32/64`` probability in [0, 1].
- ``gt``: ``bool``; or ``uint8`` 0..255 where foreground is ``gt > 128``.
- A ``uint8`` array whose maximum is 1 is rejected: it is almost surely a 0/1 mask, which
  would silently score as empty.
- ``ignore``: ``None`` or a ``bool`` mask, ``True`` on pixels excluded from scoring.

Two views of the prediction are derived:

- the *binary* prediction used by IoU, boundary IoU, mBA: ``bool`` as is, ``uint8 > 128``
  (the same rule as the ground truth, as in CascadePSP's evaluation), ``float > 0.5``
  (HQ-SAM's ``logits > 0``);
- the *normalised* map used by the SOD/DIS measures, defined as in PySODMetrics'
  ``prepare_data`` (MATLAB ``mapminmax(im2double(pred))``): ``uint8 / 255`` (``bool`` is read
  as ``uint8`` 0/255, a float map as is), then min-max stretched to [0, 1] unless constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _as_2d_array(x, name: str) -> np.ndarray:
    if x is None:
        raise InvalidInputError(f"{name} is None: pass a 2-D numpy array of shape (H, W)")
    try:
        arr = np.asarray(x)
    except (TypeError, RuntimeError) as e:  # e.g. a CUDA tensor
        raise InvalidInputError(f"{name} cannot be read as a numpy array ({e}): pass a CPU numpy array") from e
    if arr.ndim != 2:
        raise InvalidInputError(
            f"{name} must be 2-D (H, W), got shape {arr.shape}: "
            "pass one single-channel mask (e.g. arr[..., 0] or arr.squeeze())"
        )
    if arr.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {arr.shape}): pass a non-empty (H, W) mask")
    return arr


def _reject_01_uint8(arr: np.ndarray, name: str) -> None:
    # a 0/1 uint8 mask would silently score as empty (foreground is > 128)
    if arr.max() == 1:
        raise InvalidInputError(
            f"{name} is uint8 with values 0/1 only, but uint8 masks are read as 0..255 "
            f"(foreground > 128): pass {name}.astype(bool) or {name} * 255"
        )


def check_pred(pred) -> np.ndarray:
    """Validate a prediction; return it as a numpy array (no copy when possible)."""
    arr = _as_2d_array(pred, "pred")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype == np.uint8:
        _reject_01_uint8(arr, "pred")
        return arr
    if arr.dtype in _FLOAT_DTYPES:
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError("pred contains NaN or inf: pass probabilities in [0, 1]")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidInputError(
                f"float pred must hold probabilities in [0, 1], got range [{lo:g}, {hi:g}]: "
                "apply a sigmoid to logits, or pass a uint8 map 0..255"
            )
        return arr
    raise InvalidInputError(
        f"pred has dtype {arr.dtype}; expected bool, uint8 (0..255) or float in [0, 1]: "
        "convert it, e.g. pred.astype(np.uint8) after checking its range is 0..255"
    )


def check_gt(gt) -> np.ndarray:
    """Validate a ground truth; return it as a ``bool`` foreground mask (``uint8 > 128``)."""
    arr = _as_2d_array(gt, "gt")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype == np.uint8:
        _reject_01_uint8(arr, "gt")
        return arr > 128
    raise InvalidInputError(
        f"gt has dtype {arr.dtype}; expected bool or uint8 0..255 (foreground where > 128): "
        "convert it, e.g. gt.astype(np.uint8) for a 0..255 image or gt > 0 for a label map"
    )


def check_ignore(ignore, shape: tuple[int, int]) -> np.ndarray | None:
    """Validate an ignore mask; return ``None`` when it ignores nothing."""
    if ignore is None:
        return None
    arr = np.asarray(ignore)
    if arr.dtype != np.bool_:
        raise InvalidInputError(
            f"ignore has dtype {arr.dtype}; expected a bool mask (True = not scored): "
            "build it with a comparison, e.g. ignore = (gt == 128)"
        )
    if arr.shape != tuple(shape):
        raise InvalidInputError(
            f"ignore has shape {arr.shape} but gt has shape {tuple(shape)}: they must match"
        )
    if arr.all():
        raise InvalidInputError("ignore is True on every pixel: nothing is left to score")
    if not arr.any():
        return None
    return arr


def check_pair(pred, gt, ignore=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate ``(pred, gt, ignore)``; return ``(pred array, gt bool, ignore bool or None)``."""
    p = check_pred(pred)
    g = check_gt(gt)
    if p.shape != g.shape:
        raise InvalidInputError(
            f"pred has shape {p.shape} but gt has shape {g.shape}: resize the prediction "
            "to the ground-truth size (e.g. cv2.resize(pred, (W, H))) before scoring"
        )
    return p, g, check_ignore(ignore, g.shape)


def binarize_pred(pred: np.ndarray) -> np.ndarray:
    """Binary prediction of a validated ``pred``: bool as is, ``uint8 > 128``, ``float > 0.5``."""
    if pred.dtype == np.bool_:
        return pred
    if pred.dtype == np.uint8:
        return pred > 128
    return pred > 0.5


def normalize_pred(pred: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """PySODMetrics' ``prepare_data`` for a validated ``pred``; returns float64 ``(H, W)``.

    ``uint8 / 255`` (``bool`` as 0/255, float as is), then ``(p - min) / (max - min)`` unless
    ``max == min``. With ``valid``, min and max are taken over the valid pixels only, so
    that ignoring pixels is the same as cropping them away; ignored pixels may then fall
    outside [0, 1] and must not be read by the caller.
    """
    if pred.dtype == np.uint8:
        p = pred / 255  # same float ops as PySODMetrics, for bit-identical thresholds
    else:
        p = pred.astype(np.float64)
    v = p if valid is None else p[valid]
    lo, hi = v.min(), v.max()
    if hi != lo:
        p = (p - lo) / (hi - lo)
    return p


@dataclass
class Prepared:
    """One validated sample, shared by all measures.

    ``gt``: ``bool (H, W)``; ``valid``: ``bool (H, W)`` or ``None`` (all valid);
    ``pred_bin``: binary prediction ``bool (H, W)``, equal to ``gt`` on ignored pixels;
    ``p``: normalised float64 map ``(H, W)`` (only valid pixels meaningful);
    ``p_filled``: ``p`` with the ground truth (0/1) written on ignored pixels, for the
    structural measures (S-measure, weighted F, HCE) that need the full grid.
    """

    gt: np.ndarray
    pred_bin: np.ndarray
    valid: np.ndarray | None
    p: np.ndarray
    p_filled: np.ndarray


def prepare(pred, gt, ignore=None) -> Prepared:
    """Validate one sample and derive every view of it (raises ``ValueError`` on bad input)."""
    p_arr, g, ign = check_pair(pred, gt, ignore)
    pred_bin = binarize_pred(p_arr)
    if ign is None:
        p = normalize_pred(p_arr)
        return Prepared(gt=g, pred_bin=pred_bin, valid=None, p=p, p_filled=p)
    valid = ~ign
    p = normalize_pred(p_arr, valid)
    return Prepared(
        gt=g,
        pred_bin=np.where(ign, g, pred_bin),
        valid=valid,
        p=p,
        p_filled=np.where(ign, g.astype(np.float64), p),
    )
