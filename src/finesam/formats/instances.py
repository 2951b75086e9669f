"""Instance-id PNGs: one image whose pixels hold the id of the object there (0: background),
8-bit while every id is below 256, else 16-bit. ``finesam segment --format instances`` and the
web tool's export write them with :func:`instance_png`."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import InvalidInputError

#: The largest id a (16-bit) instance PNG holds.
MAX_INSTANCE_ID = 65535


def instance_ids(masks: Sequence[np.ndarray], ids: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """(H, W) ids of the (H, W) bool ``masks``, painted in the given order (a later mask on top);
    0 where none is. uint8 when every id is below 256, else uint16; an id above
    :data:`MAX_INSTANCE_ID` is refused."""
    largest = max(ids, default=0)
    if largest > MAX_INSTANCE_ID:
        raise InvalidInputError(f"an instance PNG holds ids up to {MAX_INSTANCE_ID}, this image has object id {largest}")
    pixels = np.zeros(size, np.uint8 if largest < 256 else np.uint16)
    for mask, object_id in zip(masks, ids):
        pixels[mask] = object_id
    return pixels


def png_bytes(pixels: np.ndarray) -> bytes:
    """An (H, W) uint8 or uint16 array as a greyscale PNG file's bytes (uint16: PIL mode "I;16",
    a 16-bit PNG)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def instance_png(masks: Sequence[np.ndarray], ids: Sequence[int], size: tuple[int, int]) -> bytes:
    """The instance PNG (bytes) of :func:`instance_ids`."""
    return png_bytes(instance_ids(masks, ids, size))
