"""COCO results files: a JSON list with one entry per predicted object, as detectors and the COCO
evaluation (pycocotools' ``COCO.loadRes``) use them, with the segmentation as a compressed RLE."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import InvalidInputError
from ..outputs import write_atomically
from .rle import decode_rle, encode_rle, mask_bbox

RESULT_FIELDS = ("image_id", "category_id", "bbox", "area", "score", "segmentation")


def results_entry(
    mask: np.ndarray,
    image_id: int | str,
    category_id: int | str,
    score: float,
    prompt_id: int | str,
    detector_score: float | None = None,
) -> dict[str, Any]:
    """One COCO results entry for an (H, W) mask: ``image_id``, ``category_id``, ``bbox`` (XYWH of
    the mask), ``area`` (pixels), ``score`` (the model's predicted IoU), ``detector_score`` (when
    the prompt came with one), ``prompt_id`` and ``segmentation`` (compressed RLE, ``counts`` a str)."""
    segmentation = encode_rle(mask)
    entry = {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": mask_bbox(mask),
        "area": int(np.count_nonzero(mask)),
        "score": float(score),
        "prompt_id": prompt_id,
        "segmentation": segmentation,
    }
    if detector_score is not None:
        entry["detector_score"] = float(detector_score)
    return entry


def write_coco_results(entries: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write a COCO results list as JSON, atomically (a crash leaves the old file or none)."""
    entries = list(entries)
    text = json.dumps(entries, separators=(",", ":"))

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write_atomically(Path(path), write)


def read_coco_results(path: str | os.PathLike, decode: bool = False) -> list[dict[str, Any]]:
    """Read a COCO results list; with ``decode`` each entry gains ``mask``, its (H, W) bool array."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"no COCO results file at {str(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{str(path)!r} is not valid JSON ({error})") from error
    if not isinstance(entries, list):
        raise InvalidInputError(f"{str(path)!r} is not a COCO results list (a JSON list of objects)")
    for number, entry in enumerate(entries):
        missing = [name for name in RESULT_FIELDS if not isinstance(entry, dict) or name not in entry]
        if missing:
            raise InvalidInputError(f"{str(path)!r}: entry {number} lacks {', '.join(missing)}")
        if decode:
            entry["mask"] = decode_rle(entry["segmentation"])
    return entries
