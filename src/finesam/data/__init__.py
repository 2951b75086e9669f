"""Data set readers: image / ground-truth folders in the layouts the papers use.

>>> from finesam.data import open_dataset
>>> dataset = open_dataset("GrabCut=../shared/data/grabcut")   # doctest: +SKIP
>>> name, image, gt, ignore = dataset[0]                        # doctest: +SKIP

``image`` is (H, W, 3) uint8 RGB, ``gt`` (H, W) uint8 (foreground > 128), ``ignore`` (H, W)
bool or None (GrabCut: the 128 band). See :mod:`finesam.data.layouts` for the layouts.
"""

from .folders import (
    IMAGE_EXTENSIONS,
    DatasetError,
    FolderDataset,
    Pair,
    PairingReport,
    Sample,
    read_mask,
)
from .layouts import LAYOUTS, Layout, layouts_for_name, open_dataset, parse_spec, split_from_name

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "DatasetError",
    "FolderDataset",
    "Layout",
    "Pair",
    "PairingReport",
    "Sample",
    "layouts_for_name",
    "open_dataset",
    "parse_spec",
    "read_mask",
    "split_from_name",
]
