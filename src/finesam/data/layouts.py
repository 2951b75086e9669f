"""Folder layouts of the data sets used by SAM / HQ-SAM / Pi-SAM papers, and ``open_dataset``.

``open_dataset("NAME=PATH")`` picks the layout from NAME when it is a known data set name
(``DIS-VD``, ``ThinObject5K-TE``, ``COIFT``, ``HRSOD-TE``, ``UHRSD-TE``, ``DUTS-TE``, ``ECSSD``,
``MSRA10K``, ``FSS``, ``BIG-val``, ``GrabCut``, ...), else from the folder's name, else by
looking at the folder. The split (train / val / test) comes from NAME (``-TR``, ``-VD``,
``-TE``, ``_train``, ``_test``, ...) and defaults to test.

=================  =====================================================================  ==========
layout             structure under PATH                                                   data sets
=================  =====================================================================  ==========
``im-gt``          ``im/`` + ``gt/`` (also ``PATH/DIS-VD/...`` from a DIS5K root)          DIS5K, DUTS-TE, generic
``grabcut``        ``im/`` + ``gt/``, or ``data_GT/`` + ``boundary_GT/``; gt 128 = ignore  GrabCut
``thinobject5k``   ``images_test/`` + ``masks_test/`` (``_train``), or under ``ThinObject5K/``  ThinObject-5K
``coift``          ``images/`` + ``masks/``                                                COIFT
``hrsod``          ``images/`` + ``masks_max255/``, or ``HRSOD_test/`` + ``HRSOD_test_mask/``  HRSOD
                   (``_train``), also under ``HRSOD_release/``
``uhrsd``          ``image/`` + ``mask/``, or ``UHRSD_TE_2K/{image,mask}`` (``UHRSD_TR_2K``)   UHRSD
``big``            ``img/`` + ``gt/``, or ``X_im.jpg`` + ``X_gt.png`` files; also under       BIG
                   ``test/`` / ``val/``
``cascade-psp``    ``X.jpg`` + ``X.png`` in one folder                                     DUTS, ECSSD, MSRA-10K
``fss``            one folder per class, each with ``X.jpg`` + ``X.png``                   FSS-1000
=================  =====================================================================  ==========
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .folders import (
    IMAGE_EXTENSIONS,
    DatasetError,
    FolderDataset,
    Pair,
    PairingReport,
    check_report,
    pair_flat,
    pair_per_class,
    pair_suffixed,
    pair_two_folders,
)

SPLITS = ("test", "val", "train")
_SPLIT_PATTERNS = {
    "train": r"tr|train|training",
    "val": r"vd|val|valid|validation",
    "test": r"te\d*|test|testing",
}


@dataclass(frozen=True)
class Source:
    """Where one split's pairs are and how they pair: ``folders`` (image dir, gt dir),
    ``flat`` (one dir), ``suffixed`` (one dir of ``X_im`` / ``X_gt``), ``per_class``."""

    kind: str
    paths: tuple[Path, ...]

    def pair(self) -> tuple[list[Pair], PairingReport]:
        if self.kind == "folders":
            return pair_two_folders(*self.paths)
        if self.kind == "flat":
            return pair_flat(self.paths[0])
        if self.kind == "suffixed":
            return pair_suffixed(self.paths[0])
        return pair_per_class(self.paths[0])

    def describe(self) -> str:
        return " + ".join(f"{p}/" for p in self.paths)


@dataclass(frozen=True)
class Layout:
    """A folder layout: how to find a split's pairs under a root, and which names select it."""

    name: str
    structure: str
    name_pattern: str  # regex matched against the lower-case alphanumeric data set name
    find: Callable[[Path, str | None], Source | None]
    ignore_value: int | None = None


def split_from_name(name: str) -> str | None:
    """``"train"``, ``"val"``, ``"test"`` from a name such as ``DIS-VD``, ``HRSOD_test``, ``UHRSD_TR_2K``."""
    lower = name.lower()
    for split, pattern in _SPLIT_PATTERNS.items():
        if re.search(rf"(?:^|[^a-z])(?:{pattern})(?:$|[^a-z])", lower):
            return split
    return None


def _splits(split: str | None) -> tuple[str, ...]:
    return SPLITS if split is None else (split,)


def _folders(root: Path, image_dir: str, gt_dir: str) -> Source | None:
    if (root / image_dir).is_dir() and (root / gt_dir).is_dir():
        return Source("folders", (root / image_dir, root / gt_dir))
    return None


def _image_stems(folder: Path) -> tuple[set[str], set[str]]:
    """Stems of the non-PNG images and of the PNG files directly in ``folder``."""
    images, pngs = set(), set()
    for path in folder.iterdir():
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            (pngs if path.suffix.lower() == ".png" else images).add(path.stem)
    return images, pngs


def _has_flat_pairs(folder: Path) -> bool:
    images, pngs = _image_stems(folder)
    return bool(images & pngs)


def _find_im_gt(root: Path, split: str | None) -> Source | None:
    return _folders(root, "im", "gt")


def _find_grabcut(root: Path, split: str | None) -> Source | None:
    return _folders(root, "im", "gt") or _folders(root, "data_GT", "boundary_GT")


def _find_thinobject(root: Path, split: str | None) -> Source | None:
    for base in (root, root / "ThinObject5K"):
        for s in _splits(split):
            if s != "val" and (found := _folders(base, f"images_{s}", f"masks_{s}")):
                return found
    return None


def _find_coift(root: Path, split: str | None) -> Source | None:
    return _folders(root, "images", "masks")


def _find_hrsod(root: Path, split: str | None) -> Source | None:
    if found := _folders(root, "images", "masks_max255"):
        return found
    for base in (root, root / "HRSOD_release"):
        for s in _splits(split):
            if s != "val" and (found := _folders(base, f"HRSOD_{s}", f"HRSOD_{s}_mask")):
                return found
    return None


def _find_uhrsd(root: Path, split: str | None) -> Source | None:
    if found := _folders(root, "image", "mask"):
        return found
    tags = {"test": "TE", "train": "TR"}
    for s in _splits(split):
        if s in tags and (found := _folders(root / f"UHRSD_{tags[s]}_2K", "image", "mask")):
            return found
    return None


def _find_big_split(folder: Path) -> Source | None:
    if found := _folders(folder, "img", "gt"):
        return found
    if folder.is_dir() and any(p.stem.endswith("_gt") for p in folder.iterdir() if p.suffix.lower() == ".png"):
        return Source("suffixed", (folder,))
    return None


def _find_big(root: Path, split: str | None) -> Source | None:
    if found := _find_big_split(root):
        return found
    for s in _splits(split):
        if s != "train" and (found := _find_big_split(root / s)):
            return found
    return None


def _find_flat(root: Path, split: str | None) -> Source | None:
    return Source("flat", (root,)) if _has_flat_pairs(root) else None


def _find_fss(root: Path, split: str | None) -> Source | None:
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders and all(_has_flat_pairs(p) for p in subfolders[:5]):
        return Source("per_class", (root,))
    return None


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in [
        Layout("hrsod", "images/ + masks_max255/, or HRSOD_test/ + HRSOD_test_mask/ (also under HRSOD_release/)",
               r"hrsod", _find_hrsod),
        Layout("uhrsd", "image/ + mask/, or UHRSD_TE_2K/{image,mask} and UHRSD_TR_2K/{image,mask}", r"uhrsd", _find_uhrsd),
        Layout("thinobject5k", "images_test/ + masks_test/ (or _train; also under ThinObject5K/)",
               r"thin", _find_thinobject),
        Layout("im-gt", "im/ + gt/ (DIS5K's DIS-*/, DUTS-TE/, any generic set)", r"dis(5k)?(tr|vd|te\d?)?$", _find_im_gt),
        Layout("grabcut", "im/ + gt/ or data_GT/ + boundary_GT/, gt value 128 ignored", r"grabcut", _find_grabcut,
               ignore_value=128),
        Layout("coift", "images/ + masks/", r"coift", _find_coift),
        Layout("big", "img/ + gt/, or X_im.jpg + X_gt.png files (also under test/ or val/)", r"big", _find_big),
        Layout("fss", "one folder per class with X.jpg + X.png (FSS-1000)", r"fss", _find_fss),
        Layout("cascade-psp", "X.jpg + X.png in one folder (DUTS-TR, ECSSD, MSRA_10K)", r"duts|ecssd|msra", _find_flat),
    ]
}
# other forms the same data sets come in (FSS flattened, DUTS-TE / ECSSD as im/ + gt/)
_ALSO = {"fss": ("cascade-psp", "im-gt"), "cascade-psp": ("im-gt",)}


def layouts_for_name(name: str) -> list[Layout]:
    """Layouts that a data set name selects, most likely first (empty for an unknown name)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    found = [layout for layout in LAYOUTS.values() if re.match(layout.name_pattern, key)]
    for layout in list(found):
        found += [LAYOUTS[n] for n in _ALSO.get(layout.name, ()) if LAYOUTS[n] not in found]
    return found


def parse_spec(spec: str | os.PathLike) -> tuple[str, Path]:
    """``"NAME=PATH"`` -> (NAME, PATH); a bare ``PATH`` is named after its folder."""
    text = os.fspath(spec)
    name, sep, path = text.partition("=")
    if sep and name and os.sep not in name and "/" not in name:
        return name, Path(path).expanduser()
    return Path(text).name, Path(text).expanduser()


def _child_for_name(root: Path, name: str) -> Path | None:
    """A sub-folder of ``root`` named like the data set (``DIS5K/DIS-VD`` for ``DIS-VD`` or ``DIS5K-VD``)."""
    wanted = {name.lower(), re.sub(r"^dis5k", "dis", name.lower())}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.name.lower() in wanted:
            return child
    return None


def _no_layout_error(name: str, root: Path, tried: list[Layout]) -> DatasetError:
    subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
    images = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    found = f"sub-folders {', '.join(subfolders[:10]) or 'none'}" + (", ..." if len(subfolders) > 10 else "")
    found += f"; {len(images)} image files"
    expected = "\n".join(f"  {layout.name:13s} {layout.structure}" for layout in tried)
    return DatasetError(
        f"data set {name!r}: {root} is in no known layout ({found}). Expected one of:\n{expected}\n"
        "Point PATH at the folder that holds these sub-folders (e.g. --data DIS-VD=/data/DIS5K/DIS-VD), "
        "or pass layout=... to open_dataset."
    )


def open_dataset(
    spec: str | os.PathLike,
    *,
    layout: str | None = None,
    split: str | None = None,
    on_missing: str = "warn",
) -> FolderDataset:
    """Open ``"NAME=PATH"`` (or ``PATH``) as a :class:`FolderDataset`.

    Args:
        spec: ``NAME=PATH``; NAME labels the results and, when it is a known data set name,
            picks the layout and the split.
        layout: force a layout (a key of :data:`LAYOUTS`) instead of detecting it.
        split: ``"test"``, ``"val"`` or ``"train"`` for roots that hold several splits
            (default: from NAME, else the first present of test, val, train).
        on_missing: images without mask or masks without image: ``"warn"`` (default),
            ``"error"`` or ``"ignore"``. A folder with no pair at all is always an error.
    Raises:
        DatasetError: missing folder, no known layout, ambiguous or no pairs.
    """
    name, root = parse_spec(spec)
    if not root.is_dir():
        raise DatasetError(f"data set {name!r}: folder {root} does not exist; pass --data NAME=PATH with an existing folder")
    if layout is not None and layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    if split is not None and split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    split = split or split_from_name(name)
    if layout is not None:
        candidates = [LAYOUTS[layout]]
    else:
        candidates = layouts_for_name(name) or layouts_for_name(root.name)
        candidates += [c for c in LAYOUTS.values() if c not in candidates]
    for base in (root, _child_for_name(root, name)):
        if base is None:
            continue
        for candidate in candidates:
            source = candidate.find(base, split)
            if source is not None:
                pairs, report = source.pair()
                check_report(name, base, pairs, report, on_missing)
                return FolderDataset(name, pairs, layout=candidate.name, root=base,
                                     ignore_value=candidate.ignore_value, report=report)
    raise _no_layout_error(name, root, candidates)
