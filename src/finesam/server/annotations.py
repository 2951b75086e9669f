"""An image's annotations as files (the download's zip, the saved folder), and the ``--images DIR``
folder (listing, confinement, saving, resuming).

Per image: ``instances.png`` (each pixel the id of its object, the last committed on top; 0
background; 8-bit, or 16-bit from id 256 on), ``object_NNN.png`` (one 0/255 mask per object),
``annotations.json`` (COCO: ``images``, ``annotations`` with compressed RLE, bbox, area, score,
and the prompts that made each object, ``categories``).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ..formats.instances import instance_png, png_bytes
from ..formats.rle import decode_rle, encode_rle, mask_bbox
from ..outputs import write_bytes_atomically
from .sessions import MAX_OBJECT_ID, AnnotatedObject, NotFoundError, NotSavedError, OpenImage

#: Suffixes listed and opened from ``--images DIR``.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: The folder inside ``--images DIR`` where annotations are written (never listed as images).
OUTPUT_FOLDER = "finesam-annotations"
INSTANCES = "instances.png"
ANNOTATIONS = "annotations.json"


def object_file(object_id: int) -> str:
    return f"object_{object_id:03d}.png"


def instance_file(opened: OpenImage) -> bytes:
    """The instance PNG of an image's objects (:func:`finesam.formats.instance_png`): each pixel
    the id of its object, later objects on top (8-bit, or 16-bit when an id exceeds 255)."""
    objects = opened.objects
    return instance_png([o.mask for o in objects], [o.id for o in objects], (opened.height, opened.width))


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
    files = {INSTANCES: instance_file(opened)}
    for annotated in opened.objects:
        files[object_file(annotated.id)] = png_bytes(np.where(annotated.mask, np.uint8(255), np.uint8(0)))
    files[ANNOTATIONS] = json.dumps(coco_document(opened), indent=1).encode()
    return files


def export_zip(opened: OpenImage) -> bytes:
    """The export of one image as a zip archive (what the page downloads)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in export_files(opened).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _resumed_object(entry, height: int, width: int, seen: set[int]) -> AnnotatedObject:
    """One entry of ``annotations`` checked field by field (what the server would have written)."""
    if not isinstance(entry, dict):
        raise InvalidInputError(f"an annotation is a JSON {type(entry).__name__}, not an object")
    object_id = entry.get("id")
    if not isinstance(object_id, int) or isinstance(object_id, bool) or not 1 <= object_id <= MAX_OBJECT_ID:
        raise InvalidInputError(f"annotation id {object_id!r} is not a whole number 1..{MAX_OBJECT_ID} "
                                "(0 is the background of instances.png)")
    if object_id in seen:
        raise InvalidInputError(f"annotation id {object_id} appears twice")
    seen.add(object_id)
    rle = entry.get("segmentation")
    if not isinstance(rle, dict) or rle.get("size") != [height, width]:
        size = rle.get("size") if isinstance(rle, dict) else None
        raise InvalidInputError(f"annotation {object_id}: segmentation is not a COCO RLE of the {width}x{height} image "
                                f"(size {size!r}): the annotations are damaged or belong to another image")
    mask = decode_rle(rle)
    score = entry.get("score", 0.0)
    if not _finite_number(score):
        raise InvalidInputError(f"annotation {object_id}: score {score!r} is not a finite number")
    box = entry.get("box")
    if box is not None and not (isinstance(box, list) and len(box) == 4 and all(_finite_number(v) for v in box)):
        raise InvalidInputError(f"annotation {object_id}: box {box!r} is not 4 finite numbers [x0, y0, x1, y1] or null")
    clicks = entry.get("clicks", [])
    if not isinstance(clicks, list) or not all(
            isinstance(click, list) and len(click) == 3 and _finite_number(click[0]) and _finite_number(click[1])
            and click[2] in (0, 1) and not isinstance(click[2], bool) for click in clicks):
        raise InvalidInputError(f"annotation {object_id}: clicks {str(clicks)[:80]} are not a list of [x, y, 1 or 0] "
                                "with finite x, y")
    return AnnotatedObject(object_id, mask, float(score), [float(v) for v in box] if box is not None else None,
                           [[float(x), float(y), int(label)] for x, y, label in clicks])


def objects_from_coco(document, height: int, width: int) -> list[AnnotatedObject]:
    """The objects of an ``annotations.json`` written by :func:`coco_document` (for resuming),
    each field checked: ids 1..65535 and unique, RLE of the image's size, finite score, box and
    clicks. Raises :class:`InvalidInputError` naming what is wrong."""
    if not isinstance(document, dict):
        raise InvalidInputError(f"it holds a JSON {type(document).__name__}, not a COCO document (an object with "
                                "'images' and 'annotations')")
    entries = document.get("annotations", [])
    if not isinstance(entries, list):
        raise InvalidInputError(f"its 'annotations' is a JSON {type(entries).__name__}, not a list")
    seen: set[int] = set()
    return [_resumed_object(entry, height, width, seen) for entry in entries]


class ImageFolder:
    """``--images DIR``: the images it holds, and their annotations under ``DIR/finesam-annotations/``.

    Every path comes from the browser as a path relative to DIR and is resolved (symlinks
    followed, ``..`` applied) before use: anything that lands outside DIR is refused, so the tool
    never reads or writes outside it.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        if not root.is_dir():
            raise InvalidInputError(f"`images_dir` {str(root)!r} is not a folder; give the folder of images to annotate",
                                    parameters=("images_dir",))
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
        """Write the export of an image opened from this folder (atomically, file by file,
        ``annotations.json`` last); drop the mask files of deleted objects. Returns the annotation
        folder; raises :class:`NotSavedError` saying why when the folder cannot be written
        (read-only, a file in the way, a folder named like one of the files)."""
        if opened.relative_path is None:
            raise InvalidInputError("only images opened from the images folder are saved there; download the export instead")
        target = self.output_root / opened.relative_path
        try:
            folder = self.annotation_dir(opened.relative_path)
            files = export_files(opened)
            for name in files:
                if (folder / name).is_dir():
                    raise IsADirectoryError(21, "a folder is in the way of the file", str(folder / name))
            for name, content in files.items():
                write_bytes_atomically(folder / name, content)
            for stale in folder.glob("object_*.png"):
                if stale.name not in files:
                    stale.unlink(missing_ok=True)
        except OSError as error:
            where = f": {error.filename!r}" if error.filename else ""
            raise NotSavedError(f"cannot write {str(target)!r} ({error.strerror or error}{where})") from error
        except InvalidInputError as error:
            raise NotSavedError(f"cannot write {str(target)!r} ({error})") from error
        return folder

    def load_objects(self, relative: str, height: int, width: int) -> list[AnnotatedObject]:
        """The objects saved earlier for an image (resuming), or none. A file that is not what
        the server writes is refused (400) with ``cannot resume from PATH: why; move the file away``."""
        path = self.annotation_dir(relative) / ANNOTATIONS
        if not path.is_file():
            return []
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return objects_from_coco(document, height, width)
        except RecursionError:
            reason = "its JSON nests too deeply"
        except OSError as error:
            reason = f"it cannot be read ({error.strerror or error})"
        except ValueError as error:  # also InvalidInputError, a UTF-8 or JSON error, a 5000-digit number
            reason = str(error)
        raise InvalidInputError(f"cannot resume from {str(path)!r}: {reason}; move the file away to start afresh")
