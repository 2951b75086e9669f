"""``segment_anything_hq.utils.transforms``: :class:`ResizeLongestSide`."""

from ....predict.transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide"]
