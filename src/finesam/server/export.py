"""Export of an image's objects, and the ``--images DIR`` folder (listing, confinement, saving, resuming).

Per image: ``instances.png`` (each pixel the id of its object, the last committed on top; 0
background; 8-bit, or 16-bit from id 256 on), ``object_NNN.png`` (one 0/255 mask per object),
``annotations.json`` (COCO: ``images``, ``annotations`` with compressed RLE, bbox, area, score,
and the prompts that made each object, ``categories``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..checkpoints.files import write_atomically
from ..errors import InvalidInputError
from ..formats.rle import decode_rle, encode_rle, mask_bbox
from .sessions import AnnotatedObject, NotFoundError, OpenImage

#: Suffixes listed and opened from ``--images DIR``.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: The folder inside ``--images DIR`` where annotations are written (never listed as images).
OUTPUT_FOLDER = "finesam-annotations"
INSTANCES = "instances.png"
ANNOTATIONS = "annotations.json"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def object_file(object_id: int) -> str:
    return f"object_{object_id:03d}.png"


def instance_map(opened: OpenImage) -> np.ndarray:
    """(H, W) object ids (uint8, or uint16 when an id exceeds 255); later objects on top."""
    largest = max((o.id for o in opened.objects), default=0)
    if largest > 65535:
        raise InvalidInputError(f"an instance PNG holds ids up to 65535, this image has object id {largest}")
    ids = np.zeros((opened.height, opened.width), np.uint8 if largest < 256 else np.uint16)
    for annotated in opened.objects:
        ids[annotated.mask] = annotated.id
    return ids


def coco_document(opened: OpenImage) -> dict:
    """The COCO JSON of one image's objects (``image_id`` 1, one category ``object``)."""
    annotations = []
    for annotated in opened.objects:
        annotations.append({
            "id": annotated.id, "image_id": 1, "category_id": 1, "iscrowd": 0,
            "segmentation": encode_rle(annotated.mask), "bbox": mask_bbox(annotated.mask),
            "area": int(np.count_nonzero(annotated.mask)), "score": float(annotated.score),
            "mask_file": object_file(annotated.id), "box": annotated.box, "clicks": annotated.clicks,
        })
    return {
        "images": [{"id": 1, "file_name": opened.relative_path or opened.name, "width": opened.width, "height": opened.height}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    }


def export_files(opened: OpenImage) -> dict[str, bytes]:
    """File name -> content of the export of one image."""
    files = {INSTANCES: _png(instance_map(opened))}
    for annotated in opened.objects:
        files[object_file(annotated.id)] = _png(np.where(annotated.mask, np.uint8(255), np.uint8(0)))
    files[ANNOTATIONS] = json.dumps(coco_document(opened), indent=1).encode()
    return files


def export_zip(opened: OpenImage) -> bytes:
    """The export of one image as a zip archive (what the page downloads)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in export_files(opened).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def objects_from_coco(document: dict, height: int, width: int) -> list[AnnotatedObject]:
    """The objects of an ``annotations.json`` written by :func:`coco_document` (for resuming)."""
    objects = []
    for entry in document.get("annotations", []):
        mask = decode_rle(entry["segmentation"])
        if mask.shape != (height, width):
            raise InvalidInputError(f"annotation {entry.get('id')} is {mask.shape[1]}x{mask.shape[0]}, "
                                    f"the image {width}x{height}: the annotations belong to another image")
        objects.append(AnnotatedObject(int(entry["id"]), mask, float(entry.get("score", 0.0)),
                                       entry.get("box"), entry.get("clicks", [])))
    return objects


class ImageFolder:
    """``--images DIR``: the images it holds, and their annotations under ``DIR/finesam-annotations/``.

    Every path comes from the browser as a path relative to DIR and is resolved (symlinks
    followed, ``..`` applied) before use: anything that lands outside DIR is refused, so the tool
    never reads or writes outside it.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        if not root.is_dir():
            raise InvalidInputError(f"--images {str(root)!r} is not a folder; give the folder of images to annotate")
        self.root = root.resolve()
        self.output_root = self.root / OUTPUT_FOLDER

    def _inside(self, path: Path) -> bool:
        return path == self.root or path.is_relative_to(self.root)

    def list_images(self) -> list[dict]:
        """Images under DIR (sorted relative paths, without the output folder), each with whether it is annotated."""
        found = []
        for folder, subfolders, files in os.walk(self.root):
            folder_path = Path(folder)
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                                   and not (folder_path == self.root and d == OUTPUT_FOLDER)
                                   and self._inside((folder_path / d).resolve()))
            for name in sorted(files):
                path = folder_path / name
                if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not self._inside(path.resolve()):
                    continue
                relative = path.relative_to(self.root).as_posix()
                try:
                    annotated = (self.annotation_dir(relative) / ANNOTATIONS).is_file()
                except InvalidInputError:  # its annotation folder leads outside: refused when opened
                    annotated = False
                found.append({"path": relative, "annotated": annotated})
        return found

    def resolve(self, relative: str) -> Path:
        """The image file of a browser-given path relative to DIR; refused outside DIR."""
        if not isinstance(relative, str) or not relative or "\x00" in relative or Path(relative).is_absolute():
            raise InvalidInputError(f"image path {relative!r} must be a path relative to the images folder")
        path = (self.root / relative).resolve()
        if not self._inside(path) or path.is_relative_to(self.output_root):
            raise InvalidInputError(f"image path {relative!r} leads outside the images folder; only images under it can be opened")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InvalidInputError(f"image path {relative!r} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        if not path.is_file():
            raise NotFoundError(f"image path {relative!r} does not exist in the images folder")
        return path

    def annotation_dir(self, relative: str) -> Path:
        """Where the annotations of an image (given relative to DIR) are written: DIR/finesam-annotations/<path>/.
        Refused if that folder resolves outside DIR (e.g. a symlinked output folder)."""
        target = self.output_root / relative
        resolved = target.resolve()
        if not resolved.is_relative_to(self.root):
            raise InvalidInputError(f"the annotation folder of {relative!r} resolves to {str(resolved)!r}, outside the "
                                    "images folder; remove the symbolic link")
        return resolved

    def save(self, opened: OpenImage) -> Path:
        """Write the export of an image opened from this folder (atomically, file by file); drop the
        mask files of deleted objects. Returns the annotation folder."""
        if opened.relative_path is None:
            raise InvalidInputError("only images opened from the images folder are saved there; download the export instead")
        folder = self.annotation_dir(opened.relative_path)
        files = export_files(opened)
        for name, content in files.items():
            write_atomically(folder / name, lambda temporary, content=content: Path(temporary).write_bytes(content))
        for stale in folder.glob("object_*.png"):
            if stale.name not in files:
                stale.unlink(missing_ok=True)
        return folder

    def load_objects(self, relative: str, height: int, width: int) -> list[AnnotatedObject]:
        """The objects saved earlier for an image (resuming), or none."""
        path = self.annotation_dir(relative) / ANNOTATIONS
        if not path.is_file():
            return []
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return objects_from_coco(document, height, width)
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidInputError(f"cannot resume from {str(path)!r}: {error}; move the file away to start afresh") from error
