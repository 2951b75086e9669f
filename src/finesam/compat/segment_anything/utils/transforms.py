"""``segment_anything.utils.transforms``: :class:`ResizeLongestSide` (finesam's, the same sizes and
coordinates as the official one)."""

from ....predict.transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide"]
