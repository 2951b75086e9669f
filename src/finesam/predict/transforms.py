"""Resizing of images and prompts to the model's 1024 frame (the official ResizeLongestSide)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidInputError


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size after scaling the longest side to ``long_side`` (rounded as the official code).

    Every side keeps at least 1 pixel: a 1 x 5000 strip becomes 1 x 1024 (the official
    rounding gives 0, which PIL refuses). Sizes the official code handles are unchanged.
    Raises :class:`~finesam.errors.InvalidInputError` for an empty (0-pixel) size.
    """
    if height < 1 or width < 1:
        raise InvalidInputError(
            f"the image is empty ({height}x{width} pixels, height x width); an image needs at least 1x1 pixel"
        )
    scale = long_side / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


#: Images up to this many pixels are resized in one PIL call; larger ones by strips (same result).
_WHOLE_IMAGE_PIXELS = 1 << 22
#: Pixels per strip (PIL copies each at 4 bytes per pixel: 4 MB).
_STRIP_PIXELS = 1 << 20


class ResizeLongestSide:
    """Scales images, coordinates and boxes so that the longest side is ``target_length``.

    Images are resized with PIL (bilinear with antialiasing), as the official predictor does,
    so that the numbers match.
    """

    def __init__(self, target_length: int = 1024) -> None:
        self.target_length = target_length

    def get_preprocess_shape(self, height: int, width: int, long_side: int | None = None) -> tuple[int, int]:
        return preprocess_shape(height, width, long_side or self.target_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8; an empty image raises InvalidInputError.

        Bit-identical to ``Image.fromarray(image).resize((w, h), BILINEAR)``, in PIL's own two
        passes run separately: the horizontal pass on strips of rows, then the vertical pass on
        strips of columns of the narrow intermediate (each strip gets the whole image's
        coefficients: PIL filters rows and columns independently and skips a pass when its
        side is kept). PIL stores RGB at 4 bytes per pixel, so one ``fromarray`` of a
        48-megapixel photo would copy 192 MB; strips keep each copy to 4 MB.
        """
        height, width = self.get_preprocess_shape(*image.shape[:2])
        image = np.ascontiguousarray(image)
        full_height, full_width = image.shape[:2]
        if full_height * full_width <= _WHOLE_IMAGE_PIXELS:
            return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        narrow = np.empty((full_height, width, image.shape[2]), np.uint8)
        rows = max(1, _STRIP_PIXELS // full_width)
        for top in range(0, full_height, rows):
            strip = image[top:top + rows]
            narrow[top:top + len(strip)] = np.asarray(
                Image.fromarray(strip).resize((width, len(strip)), Image.BILINEAR, box=(0, 0, full_width, len(strip)))
            )
        out = np.empty((height, width, image.shape[2]), np.uint8)
        columns = max(1, _STRIP_PIXELS // full_height)
        for left in range(0, width, columns):
            strip = np.ascontiguousarray(narrow[:, left:left + columns])
            out[:, left:left + strip.shape[1]] = np.asarray(
                Image.fromarray(strip).resize((strip.shape[1], height), Image.BILINEAR,
                                              box=(0, 0, strip.shape[1], full_height))
            )
        return out

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) (x, y) pixels of the original image -> the resized frame (float)."""
        height, width = self.get_preprocess_shape(*original_size)
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] *= width / original_size[1]
        coords[..., 1] *= height / original_size[0]
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 4) xyxy boxes -> the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float -> resized with antialiased bilinear interpolation (not PIL-exact)."""
        height, width = self.get_preprocess_shape(*image.shape[-2:])
        return F.interpolate(image, (height, width), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        height, width = self.get_preprocess_shape(*original_size)
        scale = coords.new_tensor([width / original_size[1], height / original_size[0]], dtype=torch.float32)
        return coords.to(torch.float32) * scale

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
