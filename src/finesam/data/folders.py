"""Image / ground-truth pairs in folders: matching by file stem, validation, reading.

A data set is a list of :class:`Pair` (name, image file, mask file). Files are matched by
their stem, whatever their extensions (``.jpg .JPG .png .bmp ...``); what cannot be paired
is reported in a :class:`PairingReport` (images without ground truth, ground truth without
image, with a few names), as a warning or an error.

Items are :class:`Sample` tuples ``(name, image, gt, ignore)``:

- ``image``: ``(H, W, 3)`` uint8 RGB;
- ``gt``: ``(H, W)`` uint8 0..255, foreground where ``gt > 128`` (the metrics' convention);
- ``ignore``: ``(H, W)`` bool, ``True`` on pixels not scored (GrabCut's 128 band), or ``None``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..errors import FinesamError, InvalidInputError
from .images import (
    HIGH_DEPTH_MODES,
    ImageReadError,
    depth_to_uint8,
    opened_image,
    read_image,
)

#: extensions (lower case) of the image and mask files that are considered
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: how many names a report lists per problem
SHOWN_NAMES = 5


class DatasetError(InvalidInputError):
    """A data folder that cannot be read as a data set (layout, pairing, unreadable mask)."""


class Sample(NamedTuple):
    """One evaluation item: image (H, W, 3) uint8 RGB, gt (H, W) uint8, ignore (H, W) bool or None."""

    name: str
    image: np.ndarray
    gt: np.ndarray
    ignore: np.ndarray | None


@dataclass(frozen=True)
class Pair:
    """An image file and its ground-truth mask file; ``name`` is unique within a data set."""

    name: str
    image: Path
    gt: Path


@dataclass
class PairingReport:
    """What could not be paired: names of images without ground truth and vice versa."""

    images_without_gt: list[str] = field(default_factory=list)
    gt_without_images: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.images_without_gt or self.gt_without_images)

    def extend(self, other: "PairingReport") -> None:
        self.images_without_gt += other.images_without_gt
        self.gt_without_images += other.gt_without_images

    def describe(self) -> str:
        """One sentence per problem, each listing up to :data:`SHOWN_NAMES` names."""
        parts = []
        for names, what in ((self.images_without_gt, "image(s) without ground truth"),
                            (self.gt_without_images, "ground-truth mask(s) without image")):
            if names:
                shown = ", ".join(sorted(names)[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")
                parts.append(f"{len(names)} {what} ({shown})")
        return "; ".join(parts)


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Image-like files of ``folder`` (not recursive) keyed by stem.

    Raises :class:`DatasetError` when two files share a stem (``a.jpg`` and ``a.png``): the
    pairing would be ambiguous.
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not _is_candidate(path):
            continue
        if path.stem in found:
            raise DatasetError(
                f"{folder}: {found[path.stem].name} and {path.name} share the stem {path.stem!r}, so the "
                "image/mask pairing is ambiguous; remove or rename one of them"
            )
        found[path.stem] = path
    return found


def match_stems(images: dict[str, Path], gts: dict[str, Path], prefix: str = "") -> tuple[list[Pair], PairingReport]:
    """Pair two stem -> file maps; stems that differ only in case are matched too."""
    pairs = [Pair(prefix + stem, images[stem], gts[stem]) for stem in sorted(images.keys() & gts.keys())]
    lonely_images = {s.lower(): s for s in images.keys() - gts.keys()}
    lonely_gts = {s.lower(): s for s in gts.keys() - images.keys()}
    for key in sorted(lonely_images.keys() & lonely_gts.keys()):
        stem = lonely_images.pop(key)
        pairs.append(Pair(prefix + stem, images[stem], gts[lonely_gts.pop(key)]))
    report = PairingReport(
        images_without_gt=[prefix + s for s in sorted(lonely_images.values())],
        gt_without_images=[prefix + s for s in sorted(lonely_gts.values())],
    )
    return sorted(pairs, key=lambda p: p.name), report


def pair_two_folders(image_dir: Path, gt_dir: Path, prefix: str = "") -> tuple[list[Pair], PairingReport]:
    """Images in ``image_dir``, masks of the same stem in ``gt_dir``."""
    return match_stems(files_by_stem(image_dir), files_by_stem(gt_dir), prefix)


def pair_flat(folder: Path, gt_extension: str = ".png", prefix: str = "") -> tuple[list[Pair], PairingReport]:
    """Image and mask in one folder: ``X.jpg`` (any non-``gt_extension`` image) + ``X.png``.

    The cascade_psp layout of HQ-SAM's training data (DUTS, ECSSD, MSRA-10K) and FSS-1000.
    """
    images: dict[str, Path] = {}
    gts: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not _is_candidate(path):
            continue
        target = gts if path.suffix.lower() == gt_extension else images
        if path.stem in target:
            raise DatasetError(f"{folder}: two files with the stem {path.stem!r} ({target[path.stem].name}, {path.name})")
        target[path.stem] = path
    return match_stems(images, gts, prefix)


def pair_suffixed(folder: Path, image_tag: str = "_im", gt_tag: str = "_gt") -> tuple[list[Pair], PairingReport]:
    """CascadePSP's BIG layout: ``X_im.jpg`` + ``X_gt.png`` (``X_seg.png`` inputs are skipped)."""
    images: dict[str, Path] = {}
    gts: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not _is_candidate(path):
            continue
        for tag, target in ((image_tag, images), (gt_tag, gts)):
            if path.stem.endswith(tag):
                target[path.stem[: -len(tag)]] = path
    return match_stems(images, gts)


def pair_per_class(folder: Path, gt_extension: str = ".png") -> tuple[list[Pair], PairingReport]:
    """FSS-1000: one sub-folder per class, each a flat folder; names are ``class/stem``."""
    pairs: list[Pair] = []
    report = PairingReport()
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sub_pairs, sub_report = pair_flat(sub, gt_extension, prefix=sub.name + "/")
        pairs += sub_pairs
        report.extend(sub_report)
    return pairs, report


def read_mask(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read a ground-truth mask as displayed (EXIF orientation applied, as images are) as
    (H, W) uint8 0..255 (foreground > 128).

    Multi-channel masks keep channel 0 (as HQ-SAM's loader does); 1-bit masks become
    0/255; a 0/1 mask (maximum 1) is scaled to 0/255 so that it does not read as empty.
    16-bit / 32-bit integer masks whose values all fit 0..255 are kept as they are, others
    (up to 65535) are scaled as images are, ``round(v / 257)``; float masks must be in [0, 1]
    (``round(v * 255)``): see :func:`finesam.data.images.depth_to_uint8`.
    The size is checked before decoding, as by :func:`~finesam.data.images.read_image`
    (``max_pixels``, ``$FINESAM_MAX_PIXELS``). Raises :class:`DatasetError`.
    """
    try:
        with opened_image(path, max_pixels, what="mask") as mask:
            label = f"mask {str(Path(path))!r}"
            try:
                array = _mask_values(mask, label)
            except (MemoryError, FinesamError):
                raise
            except Exception as error:  # e.g. a colour mode PIL cannot convert
                raise DatasetError(f"cannot convert {label} (PIL mode {mask.mode}): {type(error).__name__}: {error}. "
                                   "Save masks as 8-bit greyscale PNG (0 background, 255 object)") from error
    except DatasetError:
        raise
    except InvalidInputError as error:  # ImageReadError, or a refused bit depth
        raise DatasetError(str(error)) from error
    if array.size and array.max() == 1:
        array = array * np.uint8(255)
    return np.ascontiguousarray(array, dtype=np.uint8)


def _mask_values(mask: Image.Image, label: str) -> np.ndarray:
    if mask.mode == "1":
        return np.array(mask, dtype=np.uint8) * np.uint8(255)
    if mask.mode == "L":
        return np.array(mask)
    if mask.mode == "P":
        array = np.array(mask)
        if array.max() > 1:  # a coloured palette: read the grey level of its colours
            array = np.array(mask.convert("L"))
        return array
    if mask.mode in HIGH_DEPTH_MODES:
        return depth_to_uint8(np.asarray(mask), label, small_values_are_8bit=True)
    return np.array(mask.convert("RGB"))[..., 0]


class FolderDataset(Sequence[Sample]):
    """Image / mask pairs found on disk; ``dataset[i]`` reads one :class:`Sample`.

    ``ignore_value``: a ground-truth grey value whose pixels are not scored (GrabCut: 128).
    ``layout`` and ``root`` say how and where the pairs were found; ``report`` what was left out.
    """

    def __init__(
        self,
        name: str,
        pairs: Sequence[Pair],
        *,
        layout: str = "custom",
        root: str | os.PathLike | None = None,
        ignore_value: int | None = None,
        report: PairingReport | None = None,
    ) -> None:
        self.name = name
        self.pairs = list(pairs)
        self.layout = layout
        self.root = Path(root) if root is not None else None
        self.ignore_value = ignore_value
        self.report = report or PairingReport()
        names = [pair.name for pair in self.pairs]
        if len(set(names)) != len(names):
            raise DatasetError(f"data set {name!r}: duplicate item names; names must be unique")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.load(self.pairs[index])

    def __iter__(self) -> Iterator[Sample]:
        for pair in self.pairs:
            yield self.load(pair)

    def __repr__(self) -> str:
        return f"FolderDataset({self.name!r}, {len(self)} pairs, layout={self.layout!r}, root={str(self.root)!r})"

    @property
    def names(self) -> list[str]:
        return [pair.name for pair in self.pairs]

    def load(self, pair: Pair) -> Sample:
        """Read one pair; raises :class:`DatasetError` if the image and mask sizes differ."""
        try:
            image = read_image(pair.image)
        except ImageReadError as error:
            raise DatasetError(str(error)) from error
        gt = read_mask(pair.gt)
        if gt.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.name}/{pair.name}: mask {pair.gt.name} is {gt.shape[1]}x{gt.shape[0]} but image "
                f"{pair.image.name} is {image.shape[1]}x{image.shape[0]} (width x height) as displayed; they must match"
                + (" (the image has an EXIF rotation: its mask must be drawn on the displayed, rotated image)"
                   if gt.shape == image.shape[1::-1] else "")
            )
        ignore = None if self.ignore_value is None else gt == self.ignore_value
        return Sample(pair.name, image, gt, ignore)

    def limit(self, count: int | None) -> "FolderDataset":
        """The first ``count`` pairs (by name), or all with ``None``."""
        if count is None:
            return self
        return FolderDataset(self.name, self.pairs[:count], layout=self.layout, root=self.root,
                             ignore_value=self.ignore_value, report=self.report)


def check_report(dataset_name: str, root: Path, pairs: Sequence[Pair], report: PairingReport, on_missing: str) -> None:
    """Apply the ``on_missing`` policy ("warn", "error", "ignore"); no pair at all is always an error."""
    if on_missing not in ("warn", "error", "ignore"):
        raise InvalidInputError(f"on_missing must be 'warn', 'error' or 'ignore', got {on_missing!r}")
    if not pairs:
        detail = f": {report.describe()}" if report else ""
        raise DatasetError(
            f"data set {dataset_name!r} in {root} has no image/mask pair{detail}. Image and mask must share the "
            "file stem (e.g. im/0001.jpg + gt/0001.png)"
        )
    if report and on_missing != "ignore":
        message = (
            f"data set {dataset_name!r} in {root}: {report.describe()}; {len(pairs)} complete pairs are used. "
            "Check that image and mask share the file stem."
        )
        if on_missing == "error":
            raise DatasetError(message)
        warnings.warn(message, stacklevel=3)
