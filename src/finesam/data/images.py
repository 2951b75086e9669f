"""Reading images and writing masks and overlays (numpy at the edges)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from ..errors import InvalidInputError

PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209]], dtype=np.float32
)


class ImageReadError(InvalidInputError):
    """An image file that cannot be read."""


def as_displayed(image: Image.Image) -> Image.Image:
    """The image as viewers show it: its EXIF orientation (rotation / mirror) applied."""
    return ImageOps.exif_transpose(image)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any PIL-readable image as displayed, (H, W, 3) uint8 RGB: the EXIF orientation is
    applied (a phone photo stored 4000x3000 with "rotate 90" comes back 3000x4000, so masks
    and prompts are in the pixels the user sees); greyscale/RGBA/palette are converted."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"cannot read image {str(path)!r}: no such file")
    try:
        with Image.open(path) as image:
            return np.array(as_displayed(image).convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ImageReadError(f"cannot read image {str(path)!r}: {error}. Pass a PNG/JPEG/BMP/TIFF file.") from error


def save_mask(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write an (H, W) bool mask as a 0/255 greyscale PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] = (),
    labels: Sequence[int] = (),
    banner: str | None = None,
) -> Image.Image:
    """The image with each (H, W) mask tinted in its own colour, prompts drawn, an optional banner."""
    canvas = image.astype(np.float32)
    for index, mask in enumerate(masks):
        colour = PALETTE[index % len(PALETTE)]
        canvas[mask] = 0.45 * canvas[mask] + 0.55 * colour
    result = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    width = max(2, round(max(image.shape[:2]) / 300))
    for box in boxes:
        draw.rectangle([float(v) for v in box], outline=(0, 255, 0), width=width)
    radius = 2 * width + 2
    for (x, y), label in zip(points, labels):
        fill = (0, 220, 0) if label == 1 else (230, 0, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    if banner:
        box = draw.textbbox((0, 0), banner)
        draw.rectangle([0, 0, box[2] + 8, box[3] + 8], fill=(200, 0, 0))
        draw.text((4, 4), banner, fill=(255, 255, 255))
    return result
