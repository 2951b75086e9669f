"""COCO run-length encoding (RLE) of binary masks, without pycocotools.

A COCO RLE is ``{"size": [H, W], "counts": ...}``: the mask read column by column (Fortran
order), as alternating run lengths starting with a run of zeros (possibly of length 0).
``counts`` is either a list of ints (uncompressed) or a string (compressed): each run length,
for the 4th run on as the difference to the run two before, written as 5-bit groups, least
significant first, each group plus a continuation bit (0x20) offset by 48 into printable ASCII,
the last group's sign bit (0x10) carrying the sign. The tests check every function here against
pycocotools (``tests/formats/test_rle.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError

_OFFSET = 48  # '0': the first printable character of the encoding
_MORE = 0x20  # another 5-bit group follows
_SIGN = 0x10  # the last group's top bit: the value is negative


def _check_mask(mask: Any) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise InvalidInputError(f"an RLE encodes one (H, W) mask, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"an RLE encodes a bool or numeric mask, got dtype {array.dtype}")
    return array != 0


def run_lengths(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts of an (H, W) mask (non-zero = object): alternating run lengths in
    column-major order, starting with zeros."""
    flat = _check_mask(mask).ravel(order="F")
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def compress_counts(counts: list[int]) -> str:
    """The COCO string of uncompressed counts."""
    characters = []
    for index, count in enumerate(counts):
        value = int(count) - (int(counts[index - 2]) if index > 2 else 0)
        while True:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: negative values end at -1
            more = value != -1 if group & _SIGN else value != 0
            characters.append(chr(group + (_MORE if more else 0) + _OFFSET))
            if not more:
                break
    return "".join(characters)


def decompress_counts(text: str) -> list[int]:
    """Uncompressed counts of a COCO counts string (inverse of :func:`compress_counts`)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift = 0, 0
        while True:
            if position >= len(text):
                raise InvalidInputError("RLE counts string ends inside a number; the segmentation is damaged")
            group = ord(text[position]) - _OFFSET
            if not 0 <= group < 64:
                raise InvalidInputError(f"RLE counts string holds {text[position]!r}, not a COCO RLE character")
            position += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & _MORE:
                if group & _SIGN:
                    value -= 1 << shift  # sign-extend
                break
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of an (H, W) mask (non-zero = object): ``{"size": [H, W], "counts": str}``,
    the same string pycocotools' ``mask.encode`` gives (decoded to ``str``), ready for JSON."""
    array = _check_mask(mask)
    return {"size": [int(array.shape[0]), int(array.shape[1])], "counts": compress_counts(run_lengths(array))}


def _counts_and_size(rle: Any) -> tuple[list[int], int, int]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InvalidInputError(f"a COCO RLE is a dict with 'size' [H, W] and 'counts', got {str(rle)[:80]!r}")
    size = rle["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in size
    ):
        raise InvalidInputError(f"RLE 'size' must be [H, W] of whole numbers >= 0, got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = decompress_counts(counts)
    elif isinstance(counts, (list, tuple)):
        counts = [int(c) for c in counts]
    else:
        raise InvalidInputError(f"RLE 'counts' must be a string or a list of ints, got {type(counts).__name__}")
    height, width = int(size[0]), int(size[1])
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise InvalidInputError(
            f"RLE counts cover {sum(counts)} pixels (or hold negative runs), but size {height}x{width} has "
            f"{height * width}; the segmentation is damaged or belongs to another image"
        )
    return counts, height, width


def decode_rle(rle: dict) -> np.ndarray:
    """The (H, W) bool mask of a COCO RLE (compressed string or uncompressed list counts)."""
    counts, height, width = _counts_and_size(rle)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T.copy()


def rle_area(rle: dict) -> int:
    """Object pixels of a COCO RLE (without decoding it)."""
    counts, _, _ = _counts_and_size(rle)
    return int(sum(counts[1::2]))


def rle_bbox(rle: dict) -> list[float]:
    """COCO box ``[x, y, width, height]`` of a COCO RLE's object (pixel edges: a 1-pixel object at
    (x, y) has ``[x, y, 1, 1]``); ``[0, 0, 0, 0]`` for an empty mask, as pycocotools."""
    return mask_bbox(decode_rle(rle))


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO box ``[x, y, width, height]`` of an (H, W) mask's non-zero pixels; ``[0, 0, 0, 0]`` if empty."""
    array = _check_mask(mask)
    rows = np.flatnonzero(array.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    columns = np.flatnonzero(array.any(axis=0))
    x0, y0 = int(columns[0]), int(rows[0])
    return [float(x0), float(y0), float(columns[-1] + 1 - x0), float(rows[-1] + 1 - y0)]
