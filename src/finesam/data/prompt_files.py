"""Box prompts from files: COCO JSON, detector results, CSV and JSON lines.

Formats (chosen by the file's suffix, and for ``.json`` by its content):

- **COCO JSON** (``.json``, an object): ``images`` (``id``, ``file_name``) and ``annotations``
  (``id``, ``image_id``, ``bbox`` = [x, y, width, height], ``category_id``, optional ``score``);
- **detector results** (``.json``, a list): ``[{"image_id", "bbox": [x, y, w, h], "score",
  "category_id"}, ...]``, as detectors write for the COCO evaluation; ``image_id`` names the
  image file whose stem is that number (``397133`` or ``000000397133.jpg``) or that text;
- **CSV** (``.csv``): rows ``image, x0, y0, x1, y1[, label]`` (corners in pixels), an optional
  header row naming these columns (then ``score`` and ``id`` columns may be added too);
- **JSON lines** (``.jsonl``, ``.ndjson``): one object per line, ``{"image", "x0", "y0", "x1",
  "y1"}`` or ``{"image", "box": [x0, y0, x1, y1]}``, optional ``label``, ``score``, ``id``.

Images are matched to the input files by file stem (``photos/cat.jpg`` matches ``cat.png``).
Every problem is an :class:`~finesam.errors.InvalidInputError` naming the file and the line (or
entry) and what is expected, raised while reading, before any model work.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import InvalidInputError, one_line

#: ``category_id`` of prompts that carry no category (class-agnostic boxes).
DEFAULT_CATEGORY = 1
FORMATS_HELP = """\
prompt files (--prompts FILE), boxes in pixels of the displayed image:
  COCO JSON (.json)        {"images": [{"id": 1, "file_name": "cat.jpg"}, ...],
                            "annotations": [{"id": 7, "image_id": 1, "bbox": [x, y, w, h], "category_id": 3}, ...]}
  detector results (.json) [{"image_id": 397133, "bbox": [x, y, w, h], "score": 0.93, "category_id": 1}, ...]
                           (image_id matches the image whose file stem is that number, e.g. 000000397133.jpg)
  CSV (.csv)               image,x0,y0,x1,y1[,label]     e.g.  cat.jpg,10,20,200,180,cat   (header row optional)
  JSON lines (.jsonl)      {"image": "cat.jpg", "x0": 10, "y0": 20, "x1": 200, "y1": 180, "label": "cat"}
images are matched to the inputs by file stem; coco_results.json keeps the file's image_id,
category_id (CSV/JSON lines: the label), the detector score and the prompt's id (else its index)."""


@dataclass(frozen=True)
class BoxPrompt:
    """One box prompt read from a file.

    image: the stem of the image it belongs to (matched against the input files);
    image_id: the id written to the results (COCO / detector: the file's id; CSV / JSON lines:
    the image name as written); box: (x0, y0, x1, y1) pixels; prompt_id: the annotation's ``id``,
    else its index in the file; where: file and line / entry, for messages.
    """

    image: str
    image_id: int | str
    box: tuple[float, float, float, float]
    prompt_id: int | str
    category_id: int | str = DEFAULT_CATEGORY
    detector_score: float | None = None
    where: str = ""


class PromptFileError(InvalidInputError):
    """A prompt file that cannot be read (format, missing field, bad box), naming file and line."""


#: An integer written in ASCII digits ("²" and "--5" are names: str.isdigit accepts the first,
#: ``lstrip("-")`` the second, and ``int`` refuses both).
_INTEGER = re.compile(r"-?[0-9]+")


def _as_integer(text: str) -> int | None:
    """``text`` as an int when it is one (at most 4000 digits, within Python's conversion limit)."""
    return int(text) if len(text) <= 4000 and _INTEGER.fullmatch(text) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or value is None:
        raise PromptFileError(f"{where}: {what} must be a number, got {_short(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
        raise PromptFileError(f"{where}: {what} must be a number, got {_short(value)}") from None
    if not math.isfinite(number):
        raise PromptFileError(f"{where}: {what} is {value!r}; boxes need finite pixel coordinates")
    return number


def _corners(values: Sequence[Any], where: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (_number(v, name, where) for v, name in zip(values, ("x0", "y0", "x1", "y1")))
    if x1 < x0 or y1 < y0:
        raise PromptFileError(f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has x1 < x0 or y1 < y0; "
                              "corners are x0, y0 (top left) then x1, y1 (bottom right)")
    return x0, y0, x1, y1


def _xywh(bbox: Any, where: str) -> tuple[float, float, float, float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise PromptFileError(f"{where}: bbox must be [x, y, width, height] (COCO XYWH), got {_short(bbox)}")
    x, y, w, h = (_number(v, name, where) for v, name in zip(bbox, ("bbox x", "bbox y", "bbox width", "bbox height")))
    if w < 0 or h < 0:
        raise PromptFileError(f"{where}: bbox {_short(bbox)} has a negative width or height; COCO boxes are [x, y, width, height]")
    return x, y, x + w, y + h


def _label(value: Any, where: str) -> int | str:
    """A category: an integer (also written as text, "-5") or a name; no category -> the default."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_CATEGORY
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else str(value)
    if not isinstance(value, str):
        raise PromptFileError(f"{where}: the label / category_id must be an integer or a name, got {_short(value)}")
    text = value.strip()
    number = _as_integer(text)
    return text if number is None else number


def _identifier(value: Any, what: str, where: str) -> int | str:
    """An ``id`` / ``image_id`` as written: an integer or a non-empty name (integral floats -> int)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        raise PromptFileError(f"{where}: {what} must be an integer or a name, got {_short(value)}")
    return value


def _optional_score(value: Any, where: str) -> float | None:
    return None if value is None or value == "" else _number(value, "score", where)


def _stem_of(name: Any, where: str) -> str:
    if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name).strip() == "":
        raise PromptFileError(f"{where}: the image must be named (a file name), got {_short(name)}")
    return Path(str(name).strip().replace("\\", "/")).stem


def _id_stem(image_id: Any, where: str) -> str:
    return str(_identifier(image_id, "image_id", where)).strip()


def _parse_json(text: str, where: str, name_line: bool = True) -> Any:
    """``json.loads`` with its every refusal as a :class:`PromptFileError` (``where``: the file, or
    the file and line with ``name_line=False``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        at = f": line {error.lineno}" if name_line else ""
        raise PromptFileError(f"{where}{at}: not valid JSON ({error.msg})") from None
    except ValueError as error:  # an integer of more than 4300 digits
        raise PromptFileError(f"{where}: not readable JSON ({one_line(error)})") from None
    except RecursionError:
        raise PromptFileError(f"{where}: JSON nested too deeply to read") from None


def _read_text(path: Path, what: str) -> str:
    """The file's text (UTF-8; a byte order mark, as some editors write, is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PromptFileError(f"{path}: not a UTF-8 text file; {what}") from None


def _load_json(path: Path) -> Any:
    return _parse_json(_read_text(path, "prompt files are JSON, CSV or JSON lines"), str(path))


def _from_coco(path: Path, data: dict) -> list[BoxPrompt]:
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise PromptFileError(f"{path}: a COCO JSON file needs an '{key}' list (got keys {sorted(data)[:6]}); "
                                  "or give a detector results list [{image_id, bbox, score, category_id}, ...]")
    names: dict[Any, str] = {}
    for index, image in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise PromptFileError(f"{where}: each image needs 'id' and 'file_name'")
        names[_identifier(image["id"], "id", where)] = _stem_of(image["file_name"], where)
    prompts = []
    for index, annotation in enumerate(data["annotations"]):
        where = f"{path}: annotations[{index}]"
        if not isinstance(annotation, dict) or "bbox" not in annotation or "image_id" not in annotation:
            raise PromptFileError(f"{where}: each annotation needs 'image_id' and 'bbox' [x, y, width, height]")
        image_id = _identifier(annotation["image_id"], "image_id", where)
        if image_id not in names:
            raise PromptFileError(f"{where}: image_id {_short(image_id)} is not in the file's 'images' list")
        prompts.append(BoxPrompt(
            image=names[image_id], image_id=image_id, box=_xywh(annotation["bbox"], where),
            prompt_id=_identifier(annotation.get("id", index), "id", where),
            category_id=_label(annotation.get("category_id"), where),
            detector_score=_optional_score(annotation.get("score"), where), where=where,
        ))
    return prompts


def _from_detections(path: Path, data: list) -> list[BoxPrompt]:
    prompts = []
    for index, detection in enumerate(data):
        where = f"{path}: entry {index}"
        if not isinstance(detection, dict) or "bbox" not in detection or "image_id" not in detection:
            raise PromptFileError(f"{where}: a detector results list holds objects with 'image_id' and "
                                  "'bbox' [x, y, width, height] (and 'score', 'category_id')")
        prompts.append(BoxPrompt(
            image=_id_stem(detection["image_id"], where), image_id=_identifier(detection["image_id"], "image_id", where),
            box=_xywh(detection["bbox"], where), prompt_id=_identifier(detection.get("id", index), "id", where),
            category_id=_label(detection.get("category_id"), where),
            detector_score=_optional_score(detection.get("score"), where), where=where,
        ))
    return prompts


def _row_prompt(path: Path, line: int, index: int, fields: dict[str, Any]) -> BoxPrompt:
    where = f"{path}: line {line}"
    if "box" in fields and not all(k in fields for k in ("x0", "y0", "x1", "y1")):
        box = fields["box"]
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise PromptFileError(f"{where}: 'box' must be [x0, y0, x1, y1], got {_short(box)}")
        corners = _corners(box, where)
    else:
        missing = [k for k in ("image", "x0", "y0", "x1", "y1") if k not in fields]
        if missing:
            raise PromptFileError(f"{where}: missing {', '.join(missing)}; each prompt is image, x0, y0, x1, y1[, label]")
        corners = _corners([fields[k] for k in ("x0", "y0", "x1", "y1")], where)
    if "image" not in fields:
        raise PromptFileError(f"{where}: missing 'image' (the image file name)")
    image = fields["image"]
    stem = _stem_of(image, where)
    prompt_id = fields.get("id")
    if prompt_id is None or prompt_id == "":
        prompt_id = index
    else:
        prompt_id = _identifier(prompt_id, "id", where)
        if isinstance(prompt_id, str) and _as_integer(prompt_id.strip()) is not None:
            prompt_id = _as_integer(prompt_id.strip())
    return BoxPrompt(image=stem, image_id=str(image).strip(), box=corners, prompt_id=prompt_id,
                     category_id=_label(fields.get("label", fields.get("category_id")), where),
                     detector_score=_optional_score(fields.get("score"), where), where=where)


CSV_COLUMNS = ("image", "x0", "y0", "x1", "y1", "label")


def _from_csv(path: Path) -> list[BoxPrompt]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1)
                    if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")]
    except UnicodeDecodeError:
        raise PromptFileError(f"{path}: not a UTF-8 text file; a CSV prompt file holds rows image,x0,y0,x1,y1[,label]") from None
    except csv.Error as error:
        raise PromptFileError(f"{path}: not a readable CSV file ({error})") from None
    columns: Sequence[str] = CSV_COLUMNS
    if rows and {cell.strip().lower() for cell in rows[0][1]} >= {"image", "x0", "y0", "x1", "y1"}:
        columns = [cell.strip().lower() for cell in rows[0][1]]
        rows = rows[1:]
    prompts = []
    for index, (line, row) in enumerate(rows):
        cells = [cell.strip() for cell in row]
        if columns is CSV_COLUMNS and len(cells) not in (5, 6):
            raise PromptFileError(f"{path}: line {line}: {len(cells)} columns; expected image,x0,y0,x1,y1[,label] "
                                  "(or a header row naming the columns)")
        if columns is not CSV_COLUMNS and len(cells) != len(columns):
            raise PromptFileError(f"{path}: line {line}: {len(cells)} columns, but the header names {len(columns)}")
        prompts.append(_row_prompt(path, line, index, dict(zip(columns, cells))))
    return prompts


def _from_json_lines(path: Path) -> list[BoxPrompt]:
    # Lines end at "\n" only: str.splitlines would also split at U+2028 and other characters
    # that JSON strings may hold as they are.
    lines = _read_text(path, "JSON lines hold one JSON object per line").split("\n")
    prompts = []
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        fields = _parse_json(text, f"{path}: line {line}", name_line=False)
        if not isinstance(fields, dict):
            raise PromptFileError(f"{path}: line {line}: expected an object like "
                                  '{"image": "cat.jpg", "x0": 10, "y0": 20, "x1": 200, "y1": 180}')
        prompts.append(_row_prompt(path, line, len(prompts), fields))
    return prompts


def read_prompt_file(path: str | os.PathLike) -> list[BoxPrompt]:
    """All box prompts of a prompt file (format from the suffix and content; see the module doc).

    Raises :class:`PromptFileError` naming the file and line (or entry) of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {str(path)!r}: " + ("it is a folder" if path.is_dir() else "no such file"))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        prompts = _from_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        prompts = _from_json_lines(path)
    elif suffix == ".json":
        data = _load_json(path)
        if isinstance(data, dict):
            prompts = _from_coco(path, data)
        elif isinstance(data, list):
            prompts = _from_detections(path, data)
        else:
            raise PromptFileError(f"{path}: expected a COCO JSON object or a detector results list, got {type(data).__name__}")
    else:
        raise PromptFileError(f"prompt file {str(path)!r}: unknown format {path.suffix or '(no suffix)'!r}; "
                              "use .json (COCO or detector results), .csv or .jsonl")
    if not prompts:
        raise PromptFileError(f"{path}: holds no prompts")
    return prompts


def group_by_image(prompts: Iterable[BoxPrompt], image_stems: Iterable[str]) -> tuple[dict[str, list[BoxPrompt]], list[str]]:
    """Prompts per input image stem (file order kept), and the names of the images the file
    mentions that are not among ``image_stems``. A numeric name also matches a zero-padded stem
    (``397133`` matches ``000000397133``)."""
    stems = list(image_stems)
    by_number = {_unpadded(stem): stem for stem in stems if _is_number(stem)}
    known = set(stems)
    grouped: dict[str, list[BoxPrompt]] = {stem: [] for stem in stems}
    unmatched: dict[str, None] = {}
    for prompt in prompts:
        stem = prompt.image if prompt.image in known else by_number.get(_unpadded(prompt.image)) if _is_number(prompt.image) else None
        if stem is None:
            unmatched[prompt.image] = None
        else:
            grouped[stem].append(prompt)
    return grouped, list(unmatched)


def _is_number(name: str) -> bool:
    """ASCII digits only (``"²".isdigit()`` is true, yet it is no number to match)."""
    return bool(re.fullmatch(r"[0-9]+", name))


def _unpadded(digits: str) -> str:
    """``"000000397133"`` -> ``"397133"``: numbers compared as text (no int conversion limit)."""
    return digits.lstrip("0") or "0"
