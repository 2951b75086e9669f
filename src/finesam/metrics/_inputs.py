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

Numeric parameters of the measures (``dilation_ratio``, ``beta2``, ``alpha``, ``relax``,
``epsilon``, ...) are checked by :func:`check_param` against their domains in
:data:`PARAMETERS`. Everything refused raises :class:`~finesam.errors.InvalidInputError`
(a ``ValueError``) naming the argument, the value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Domain:
    """The allowed values of one parameter.

    ``kind``: ``"real"`` (a finite int or float, bools refused), ``"int"`` (an integer,
    bools and floats refused) or ``"flag"`` (``True`` / ``False``); ``low`` / ``high``:
    bounds (``None``: unbounded), excluded when ``low_open`` / ``high_open``.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        if self.kind == "flag":
            return "True or False"
        noun = "an integer" if self.kind == "int" else "a finite number"
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {left}{low}, {high}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {high}"
        return noun

    def contains(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            return False
        return True


#: the domain of every parameter of the public measures and of ``MaskMetrics``
PARAMETERS: dict[str, Domain] = {
    # boundary width as a fraction of the image diagonal; 1 already makes the band the whole mask
    "dilation_ratio": Domain("real", 0, 1, low_open=True),
    # F-measure weights of precision vs recall: beta^2 > 0 (0 would make F the precision alone)
    "beta2": Domain("real", 0, low_open=True),
    "weighted_beta2": Domain("real", 0, low_open=True),
    # S-measure balance of its object and region parts
    "alpha": Domain("real", 0, 1),
    # HCE: relaxation width in pixels and Douglas-Peucker tolerance in pixels
    "relax": Domain("int", 0),
    "epsilon": Domain("real", 0),
    # image sizes of the geometry helpers (OpenCV's limit)
    "height": Domain("int", 1, 2**31 - 1),
    "width": Domain("int", 1, 2**31 - 1),
    "hce": Domain("flag"),
}


def _number(x) -> str:
    return "" if x is None else str(x) if isinstance(x, int) else f"{x:g}"


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_param(name: str, value):
    """Validate the parameter ``name`` against ``PARAMETERS[name]``.

    Returns it as a Python ``float`` (real), ``int`` (integer) or ``bool`` (flag); raises
    :class:`InvalidInputError` naming the parameter, the value and its domain otherwise.
    """
    domain = PARAMETERS[name]
    allowed = domain.describe()
    is_bool = isinstance(value, (bool, np.bool_))
    if domain.kind == "flag":
        if not is_bool:
            raise InvalidInputError(f"{name} must be {allowed}, got {type(value).__name__} {_show(value)}")
        return bool(value)
    if is_bool:
        raise InvalidInputError(f"{name} must be {allowed}, got the bool {value!r}: pass a number, not a flag")
    if domain.kind == "int":
        if not isinstance(value, numbers.Integral):
            hint = ""
            if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
                hint = f": pass int({_show(value)})"
            raise InvalidInputError(f"{name} must be {allowed}, got {type(value).__name__} {_show(value)}{hint}")
        x = int(value)
        if not domain.contains(x):
            raise InvalidInputError(f"{name} must be {allowed}, got {x}")
        return x
    if not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be {allowed}, got {type(value).__name__} {_show(value)}")
    try:
        x = float(value)
    except OverflowError:  # an int too large for a float
        x = math.inf
    if not domain.contains(x):
        raise InvalidInputError(f"{name} must be {allowed}, got {_show(value)}")
    return x


# ----------------------------------------------------------------------------- arrays
def _as_2d_array(x, name: str) -> np.ndarray:
    if x is None:
        raise InvalidInputError(f"{name} is None: pass a 2-D numpy array of shape (H, W)")
    try:
        arr = np.asarray(x)
    except Exception as e:  # e.g. a CUDA tensor (TypeError), a ragged nested list (ValueError)
        raise InvalidInputError(
            f"{name} cannot be read as a numpy array ({type(e).__name__}: {e}): "
            "pass a 2-D CPU numpy array of shape (H, W)"
        ) from e
    if arr.ndim != 2:
        raise InvalidInputError(
            f"{name} must be 2-D (H, W), got shape {arr.shape}: "
            "pass one single-channel mask (e.g. arr[..., 0] or arr.squeeze())"
        )
    if arr.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {arr.shape}): pass a non-empty (H, W) mask")
    if not arr.dtype.isnative:  # e.g. big-endian floats read from a file
        arr = arr.astype(arr.dtype.newbyteorder("="))
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


def check_mask(mask, name: str = "mask") -> np.ndarray:
    """Validate a binary mask: a non-empty 2-D ``bool`` array."""
    arr = _as_2d_array(mask, name)
    if arr.dtype != np.bool_:
        raise InvalidInputError(
            f"{name} has dtype {arr.dtype}; expected a bool (H, W) mask: "
            f"pass e.g. {name} > 128 for a 0..255 image or {name} > 0 for a label map"
        )
    return arr


def check_ignore(ignore, shape: tuple[int, int]) -> np.ndarray | None:
    """Validate an ignore mask; return ``None`` when it ignores nothing."""
    if ignore is None:
        return None
    arr = _as_2d_array(ignore, "ignore")
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
