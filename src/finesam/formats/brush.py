"""Label Studio's brush RLE: the ``value.rle`` of a ``brushlabels`` region (``value.format == "rle"``).

A brush mask travels as an RGBA image: the (H, W) mask as 0/255 bytes, each byte repeated four
times (Label Studio reads the alpha channel), flattened row by row: ``H * W * 4`` bytes. Those
bytes are run-length coded into a bit stream, most significant bit first:

- a header: the byte count (32 bits), the word size minus one (5 bits; 8-bit words), and four
  run-length widths minus one (4 bits each; Label Studio uses 3, 4, 8 and 16 bits);
- then records until the count is reached: a flag bit (1: one word repeated, 0: literal words),
  2 bits choosing one of the four widths, the run length minus one in that many bits, then the
  repeated word, or the run's words one after the other;
- zero bits up to a whole byte. The stream is sent as a list of byte values (ints 0..255).

:func:`mask_to_brush_rle` and :func:`brush_rle_to_mask` convert masks; :func:`encode_brush_bytes`
and :func:`decode_brush_bytes` the byte sequence itself. The tests check both directions against
``label_studio_sdk.converter.brush`` (``tests/label_studio/test_brush_rle.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError

WORD_BITS = 8
RUN_WIDTHS = (3, 4, 8, 16)  # the widths Label Studio writes; a decoder reads them from the header
_MAX_RUN = 1 << RUN_WIDTHS[-1]
_MAX_COUNT = (1 << 32) - 1
_RECORDS_PER_CHUNK = 1 << 16  # records turned into bits at a time (bounds the encoder's memory)


class BrushRLEError(InvalidInputError):
    """A brush RLE that is not a valid stream (truncated, bad header, wrong size)."""


def _bits_of(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The bits (uint8 0/1, most significant first) of ``values`` written in ``widths`` bits each."""
    total = int(widths.sum())
    field = np.repeat(np.arange(values.size), widths)
    ends = np.cumsum(widths)  # the bit just after each field
    shift = (ends[field] - 1 - np.arange(total)).astype(np.uint64)
    return ((values[field] >> shift) & np.uint64(1)).astype(np.uint8)


def encode_brush_bytes(data: Any) -> list[int]:
    """Label Studio's brush RLE of a 1-D sequence of bytes (uint8 values); returns the stream as a
    list of ints 0..255. Runs are written as repeat records (the shortest width that holds them;
    runs longer than 65,536 split), which every decoder of the format reads."""
    flat = np.asarray(data)
    if flat.ndim != 1:
        raise InvalidInputError(f"encode_brush_bytes takes a 1-D sequence of bytes, got shape {flat.shape}")
    if flat.size and (flat.dtype.kind not in "biu" or flat.min() < 0 or flat.max() > 255):
        raise InvalidInputError("encode_brush_bytes takes byte values: integers 0..255")
    if flat.size > _MAX_COUNT:
        raise InvalidInputError(f"a brush RLE holds at most {_MAX_COUNT} bytes, got {flat.size}")
    flat = flat.astype(np.uint8)
    header_values = np.array([flat.size, WORD_BITS - 1, *(w - 1 for w in RUN_WIDTHS)], dtype=np.uint64)
    header_widths = np.array([32, 5, 4, 4, 4, 4])
    pieces = [_bits_of(header_values, header_widths)]
    if flat.size:
        starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
        lengths = np.diff(np.append(starts, flat.size))
        values = flat[starts]
        pieces_per_run = (lengths + _MAX_RUN - 1) // _MAX_RUN  # long runs split into full pieces + a rest
        run_of_piece = np.repeat(np.arange(lengths.size), pieces_per_run)
        first_piece = np.cumsum(pieces_per_run) - pieces_per_run
        index_in_run = np.arange(run_of_piece.size) - first_piece[run_of_piece]
        piece_lengths = np.minimum(lengths[run_of_piece] - index_in_run * _MAX_RUN, _MAX_RUN)
        piece_values = values[run_of_piece]
        choice = np.searchsorted(1 << np.array(RUN_WIDTHS), piece_lengths)  # smallest width with 2**w >= length
        length_widths = np.array(RUN_WIDTHS)[choice]
        for start in range(0, piece_lengths.size, _RECORDS_PER_CHUNK):
            part = slice(start, start + _RECORDS_PER_CHUNK)
            count = piece_lengths[part].size
            # each record: flag 1 (repeat), the width's index, length - 1, the word
            fields = np.stack([np.ones(count, dtype=np.uint64), choice[part].astype(np.uint64),
                               (piece_lengths[part] - 1).astype(np.uint64), piece_values[part].astype(np.uint64)], axis=1)
            widths = np.stack([np.ones(count, dtype=np.int64), np.full(count, 2), length_widths[part],
                               np.full(count, WORD_BITS)], axis=1)
            pieces.append(_bits_of(fields.reshape(-1), widths.reshape(-1)))
    return np.packbits(np.concatenate(pieces)).tolist()


class _BitReader:
    """Reads unsigned fields, most significant bit first, from a byte stream."""

    def __init__(self, stream: np.ndarray) -> None:
        self.bits = (np.unpackbits(stream) + ord("0")).tobytes().decode("ascii")
        self.position = 0

    def read(self, width: int, what: str) -> int:
        end = self.position + width
        if end > len(self.bits):
            raise BrushRLEError(f"the brush RLE ends in the middle of {what} (bit {self.position} of {len(self.bits)}): "
                                "the stream is truncated")
        value = int(self.bits[self.position:end], 2)
        self.position = end
        return value


def _as_stream(rle: Any) -> np.ndarray:
    if isinstance(rle, (str, bytes, dict)) or not isinstance(rle, (Sequence, np.ndarray)):
        raise BrushRLEError(f"a brush RLE is a list of byte values (ints 0..255), got {type(rle).__name__}")
    stream = np.asarray(rle)
    if stream.ndim != 1 or (stream.size and stream.dtype.kind not in "iu"):
        raise BrushRLEError("a brush RLE is a flat list of byte values (ints 0..255)")
    if stream.size and (stream.min() < 0 or stream.max() > 255):
        raise BrushRLEError("a brush RLE holds byte values: every entry must be 0..255")
    return stream.astype(np.uint8)


def decode_brush_bytes(rle: Any, expected_count: int | None = None) -> np.ndarray:
    """The bytes a brush RLE encodes: a 1-D uint8 array of the header's count. ``expected_count``
    (e.g. ``H * W * 4``) is checked against the header before anything is decoded."""
    reader = _BitReader(_as_stream(rle))
    count = reader.read(32, "the header")
    word_bits = reader.read(5, "the header") + 1
    widths = [reader.read(4, "the header") + 1 for _ in range(4)]
    if expected_count is not None and count != expected_count:
        raise BrushRLEError(f"the brush RLE holds {count} bytes, expected {expected_count} "
                            "(an RGBA image of the given height and width: H * W * 4)")
    if word_bits > 8:
        raise BrushRLEError(f"the brush RLE has {word_bits}-bit words; brush masks use 8-bit words")
    out = np.empty(count, dtype=np.uint8)
    filled = 0
    while filled < count:
        repeat = reader.read(1, "a record")
        width = widths[reader.read(2, "a record")]
        length = reader.read(width, "a record") + 1
        if filled + length > count:
            raise BrushRLEError(f"a run of the brush RLE goes past its {count} bytes")
        if repeat:
            out[filled:filled + length] = reader.read(word_bits, "a record")
        else:
            out[filled:filled + length] = [reader.read(word_bits, "a record") for _ in range(length)]
        filled += length
    return out


def mask_to_brush_rle(mask: Any) -> list[int]:
    """The brush RLE of an (H, W) mask (non-zero = object): what a ``brushlabels`` region's
    ``value.rle`` holds for it."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise InvalidInputError(f"a brush RLE encodes one (H, W) mask, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"a brush RLE encodes a bool or numeric mask, got dtype {array.dtype}")
    alpha = np.where(array != 0, np.uint8(255), np.uint8(0))
    return encode_brush_bytes(np.repeat(alpha.reshape(-1), 4))


def brush_rle_to_mask(rle: Any, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of a brush RLE of an image ``height`` x ``width`` (the region's
    ``original_height`` / ``original_width``): its alpha channel, non-zero = object."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    rgba = decode_brush_bytes(rle, expected_count=int(height) * int(width) * 4)
    return rgba.reshape(int(height), int(width), 4)[:, :, 3] != 0
