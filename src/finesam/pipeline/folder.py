"""Segmenting many images into an output folder: ``finesam segment ... --out DIR``.

Per image: read it, validate its prompts against its size (bad prompts are reported and skipped
before the encoder runs), encode it once, decode all its prompts, write the outputs asked for,
and last, atomically, ``records/<stem>.json``: the marker that the image is done (a rerun skips
it unless ``overwrite``) and its COCO results entries, from which ``coco_results.json`` is
merged at the end. An image that cannot be read is reported and skipped. Under ``torchrun``
the images are split by rank and rank 0 merges; the merged files equal a one-process run's.

Output folder::

    DIR/masks/<stem>/<k>.png     one 0/255 PNG per object k (format "png")
    DIR/instances/<stem>.png     instance ids: 0 background, k + 1 object k (16-bit above 255 objects)
    DIR/polygons/<stem>.json     COCO polygon lists per object; DIR/polygons/<stem>.geojson (format "polygons")
    DIR/overlays/<stem>.png      the image with the masks and prompts drawn (format "overlay")
    DIR/coco_results.json        every object as a COCO results entry (format "coco")
    DIR/records/<stem>.json      per-image record (done marker); DIR/run.json, DIR/summary.json

An image's outputs are replaced as a whole: after its new files and its record are written, the
files of earlier runs that this run did not write (masks of objects it no longer has, formats it
no longer writes) are removed. No output lands on an input (:func:`check_outputs_spare_inputs`),
and damaged ``run.json`` or records are refused (:func:`check_resumable`), both before any work.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import re
import sys
from collections import defaultdict
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ..data.folders import IMAGE_EXTENSIONS
from ..data.images import overlay, read_image, save_mask, save_overlay
from ..data.prompt_files import DEFAULT_CATEGORY
from ..distributed import SINGLE_PROCESS, DistributedContext, barrier, broadcast_from_main, gather_to_main, shard
from ..errors import FinesamError, InvalidInputError, one_line
from ..formats.coco import RESULT_FIELDS, results_entry, write_coco_results
from ..formats.instances import instance_png
from ..formats.polygons import mask_to_geojson, mask_to_polygons
from ..outputs import write_bytes_atomically, write_text_atomically
from ..predict.predictor import SamPredictor

OUTPUT_FORMATS = ("png", "instances", "coco", "polygons", "overlay")
EXIT_OK = 0
EXIT_SOME_FAILED = 1
#: Prompts decoded in one pass (bounds the memory of full-resolution masks).
PROMPTS_PER_PASS = 16
_GLOB_CHARACTERS = set("*?[")
_MASK_NAME = re.compile(r"[0-9]+\.png")
#: Files of the whole run in the output folder.
RUN_FILES = ("run.json", "summary.json", "coco_results.json")


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompts of one object, in pixels of the displayed image: an (x0, y0, x1, y1) box and/or
    clicks (labels 1 foreground, 0 background), with what the results keep about it."""

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    prompt_id: int | str = 0
    category_id: int | str = DEFAULT_CATEGORY
    detector_score: float | None = None


@dataclass(frozen=True)
class ImageJob:
    """One input image: ``key`` (its file stem) names its outputs; ``image_id`` goes to the results."""

    key: str
    path: Path
    image_id: int | str
    prompts: tuple[ObjectPrompt, ...]

    def fingerprint(self, settings: dict) -> str:
        """What a record must match to count as done: this image's file, prompts and the run settings."""
        text = json.dumps([str(self.path), repr(self.image_id), [asdict(p) for p in self.prompts], settings],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Segmented:
    """One predicted object: (H, W) bool mask and the model's predicted IoU."""

    mask: np.ndarray
    score: float
    prompt: ObjectPrompt


@dataclass
class BatchSettings:
    """How to segment and what to write; ``describe`` is recorded in ``run.json`` and must match
    on resume."""

    formats: tuple[str, ...] = ("png", "coco")
    multimask: bool = False
    hq_output: str | None = None
    fix_points: tuple[tuple[float, float], ...] = ()
    fix_negatives: tuple[tuple[float, float], ...] = ()
    auto: bool = False
    points_per_side: int = 32
    banner: str | None = None
    run_info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"formats": sorted(self.formats), "multimask": self.multimask, "hq_output": self.hq_output,
                "fix_points": [list(p) for p in self.fix_points], "fix_negatives": [list(p) for p in self.fix_negatives],
                "auto": self.auto, "points_per_side": self.points_per_side if self.auto else None, **self.run_info}


def parse_formats(text: str) -> tuple[str, ...]:
    """``"png,coco"`` -> ("png", "coco"), refusing unknown names."""
    names = [name.strip().lower() for name in str(text).split(",") if name.strip()]
    unknown = [name for name in names if name not in OUTPUT_FORMATS]
    if unknown or not names:
        raise InvalidInputError(f"`formats` {text!r}: unknown or empty; choose any of {','.join(OUTPUT_FORMATS)}, "
                                "comma-separated (e.g. `formats` png,coco)", parameters=("formats",))
    return tuple(dict.fromkeys(names))


# --- inputs ---------------------------------------------------------------------------------------
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def output_key(path: Path) -> str:
    """The name of an image's outputs (``masks/<key>/``, ``instances/<key>.png``, ...): its file
    stem, except that a stem of dots only (``..png`` -> ``.``) is percent-encoded (``%2E``), as
    ``.`` and ``..`` are no folder names of their own."""
    stem = path.stem
    return "%2E" * len(stem) if stem and set(stem) == {"."} else stem


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Image files from files, folders (their images, not recursive) and glob patterns (``**``
    recursive), in order, without duplicates. A path that does not exist, a folder without images
    or a pattern that matches none is refused; two images of the same output name
    (:func:`output_key`, the file stem) too."""
    found: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = _image_files(path)
            if not files:
                raise InvalidInputError(f"the folder {text!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif path.exists():
            files = [path]
        elif _GLOB_CHARACTERS & set(text):
            files = sorted(Path(p) for p in glob.glob(text, recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise InvalidInputError(f"the pattern {text!r} matches no image files")
        else:
            raise InvalidInputError(f"cannot read image {text!r}: no such file or folder")
        found += files
    unique = list(dict.fromkeys(p.resolve() for p in found))
    by_key: dict[str, Path] = {}
    for path in unique:
        key = output_key(path)
        if key in by_key:
            raise InvalidInputError(f"two input images share the name {key!r} ({by_key[key]} and {path}); "
                                    "outputs are named after the file stem: rename one or run them separately")
        by_key[key] = path
    return unique


# --- predicting -----------------------------------------------------------------------------------
def _arrays(prompt: ObjectPrompt) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    points = np.array(prompt.points, dtype=float) if prompt.points else None
    labels = np.array(prompt.labels) if prompt.points else None
    box = np.array(prompt.box, dtype=float) if prompt.box is not None else None
    return points, labels, box


def check_object_prompt(predictor: SamPredictor, size: tuple[int, int], prompt: ObjectPrompt) -> None:
    """Raise :class:`~finesam.errors.FinesamError` unless ``prompt`` is valid for an image of
    ``size`` (H, W) (``predictor.check_prompts``, without encoding the image)."""
    predictor.check_prompts(size, *_arrays(prompt))


def check_image_prompts(predictor: SamPredictor, size: tuple[int, int], prompts: Sequence[ObjectPrompt]
                        ) -> tuple[list[ObjectPrompt], list[str]]:
    """Split prompts into those valid for an image of ``size`` (H, W) (:func:`check_object_prompt`)
    and messages for the others."""
    valid, problems = [], []
    for prompt in prompts:
        try:
            check_object_prompt(predictor, size, prompt)
            valid.append(prompt)
        except FinesamError as error:
            problems.append(f"prompt {prompt.prompt_id}: {one_line(error)}")
    return valid, problems


def predict_objects(predictor: SamPredictor, prompts: Sequence[ObjectPrompt], settings: BatchSettings) -> list[Segmented]:
    """One mask per prompt on the predictor's current image (encoded once for all of them).

    Box-only prompts are decoded together, :data:`PROMPTS_PER_PASS` at a time; with correction
    clicks (``settings.fix_points`` / ``fix_negatives``) each object is predicted and then
    corrected with ``predictor.correct`` (decoders that declare ``corrects_clicks``).
    """
    fixing = bool(settings.fix_points or settings.fix_negatives)
    results: list[Segmented] = []
    boxes_only = not fixing and all(p.box is not None and not p.points for p in prompts)
    if boxes_only:
        for start in range(0, len(prompts), PROMPTS_PER_PASS):
            chunk = prompts[start:start + PROMPTS_PER_PASS]
            masks, scores, _ = predictor.predict_batch(boxes=np.array([p.box for p in chunk], dtype=float),
                                                       multimask_output=settings.multimask, hq_output=settings.hq_output)
            for prompt, candidates, candidate_scores in zip(chunk, masks, scores):
                best = int(np.argmax(candidate_scores))
                results.append(Segmented(candidates[best], float(candidate_scores[best]), prompt))
        return results
    for prompt in prompts:
        masks, scores, _ = predictor.predict(*_arrays(prompt), multimask_output=settings.multimask and not fixing,
                                             hq_output=settings.hq_output)
        best = int(np.argmax(scores))
        mask, score = masks[best], float(scores[best])
        if fixing:
            fixed, fixed_scores, _ = predictor.correct(
                np.array(settings.fix_points, dtype=float) if settings.fix_points else None,
                np.array(settings.fix_negatives, dtype=float) if settings.fix_negatives else None)
            mask, score = fixed[0], float(fixed_scores[0])
        results.append(Segmented(mask, score, prompt))
    return results


def automatic_objects(generator, image: np.ndarray) -> list[Segmented]:
    """Every mask the automatic mask generator finds, as objects (prompt id = index, score = predicted IoU)."""
    records = generator.generate(image)
    return [Segmented(record["segmentation"], float(record["predicted_iou"]),
                      ObjectPrompt(points=tuple(tuple(p) for p in record["point_coords"]), labels=(1,), prompt_id=index))
            for index, record in enumerate(records)]


# --- writing --------------------------------------------------------------------------------------
def _write_json(value: Any, path: Path, readable: bool = True) -> None:
    """Atomically; ``readable=False`` for large files (indenting makes json use its slow encoder)."""
    write_text_atomically(path, json.dumps(value, indent=1 if readable else None, separators=None if readable else (",", ":")))


def instance_file(objects: Sequence[Segmented], size: tuple[int, int]) -> bytes:
    """The instance PNG of an image (:func:`finesam.formats.instance_png`): 0 background, k + 1
    where object k is; larger objects are painted first, so a small object on a large one stays
    visible. 8-bit, or 16-bit above 255 objects."""
    order = sorted(range(len(objects)), key=lambda k: -int(objects[k].mask.sum()))
    return instance_png([objects[k].mask for k in order], [k + 1 for k in order], size)


def write_image_outputs(out: Path, job: ImageJob, image: np.ndarray, objects: Sequence[Segmented],
                        settings: BatchSettings) -> list[dict]:
    """Write the outputs of ``settings.formats`` for one image; return its COCO results entries."""
    entries = [results_entry(o.mask, job.image_id, o.prompt.category_id, o.score, o.prompt.prompt_id,
                             o.prompt.detector_score) for o in objects]
    formats = settings.formats
    if "png" in formats:
        for index, obj in enumerate(objects):
            save_mask(obj.mask, out / "masks" / job.key / f"{index}.png")
    if "instances" in formats:
        write_bytes_atomically(out / "instances" / f"{job.key}.png", instance_file(objects, image.shape[:2]))
    if "polygons" in formats:
        polygons = [{"prompt_id": o.prompt.prompt_id, "category_id": o.prompt.category_id, "score": o.score,
                     "segmentation": mask_to_polygons(o.mask)} for o in objects]
        _write_json({"image_id": job.image_id, "size": list(image.shape[:2]), "objects": polygons},
                    out / "polygons" / f"{job.key}.json", readable=False)
        features = [mask_to_geojson(o.mask, {"object": k, "prompt_id": o.prompt.prompt_id,
                                             "category_id": o.prompt.category_id, "score": o.score})
                    for k, o in enumerate(objects)]
        _write_json({"type": "FeatureCollection", "features": features}, out / "polygons" / f"{job.key}.geojson",
                    readable=False)
    if "overlay" in formats:
        boxes = [o.prompt.box for o in objects if o.prompt.box is not None]
        points = [p for o in objects for p in o.prompt.points] + list(settings.fix_points) + list(settings.fix_negatives)
        labels = [v for o in objects for v in o.prompt.labels] + [1] * len(settings.fix_points) + [0] * len(settings.fix_negatives)
        save_overlay(overlay(image, [o.mask for o in objects], boxes, points, labels, settings.banner),
                     out / "overlays" / f"{job.key}.png")
    return entries


def image_output_files(out: Path, key: str, formats: Sequence[str], count: int) -> list[Path]:
    """The files :func:`write_image_outputs` writes for an image of ``count`` objects."""
    files = [out / "masks" / key / f"{index}.png" for index in range(count)] if "png" in formats else []
    if "instances" in formats:
        files.append(out / "instances" / f"{key}.png")
    if "polygons" in formats:
        files += [out / "polygons" / f"{key}.json", out / "polygons" / f"{key}.geojson"]
    if "overlay" in formats:
        files.append(out / "overlays" / f"{key}.png")
    return files


def _single_outputs(out: Path, key: str) -> list[Path]:
    """Where an image's outputs of every format go, but its numbered masks."""
    return [out / "instances" / f"{key}.png", out / "polygons" / f"{key}.json", out / "polygons" / f"{key}.geojson",
            out / "overlays" / f"{key}.png", out / "records" / f"{key}.json"]


def remove_stale_outputs(out: Path, key: str, keep: Iterable[Path]) -> None:
    """Remove the image's output files that are not in ``keep`` (left by an earlier run with more
    objects or other formats), so that its outputs are those of one run. Run after the new files
    and the record are written, and again whenever a rerun finds the image done, so a crash in
    between leaves nothing stale for good."""
    keep = set(keep)
    masks = out / "masks" / key
    found = [p for p in masks.iterdir() if _MASK_NAME.fullmatch(p.name)] if masks.is_dir() else []
    found += [p for p in _single_outputs(out, key)[:-1] if p.is_file() or p.is_symlink()]
    for path in found:
        if path not in keep:
            path.unlink(missing_ok=True)
    if masks.is_dir() and not any(masks.iterdir()):
        with suppress(OSError):
            masks.rmdir()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def check_outputs_spare_inputs(out: Path, jobs: Sequence[ImageJob], other_inputs: Sequence[Path] = ()) -> None:
    """Refuse a run whose outputs (written or removed as stale) would land on one of its input
    images or ``other_inputs`` (a prompt file): paths compared resolved (symlinks, ``..``, other
    spellings) and, for files that exist, by identity (hard links)."""
    inputs = [job.path for job in jobs] + [Path(p) for p in other_inputs]
    resolved = {path.resolve(): path for path in inputs}
    identities = {identity: path for path in inputs if (identity := _identity(path)) is not None}
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for path in resolved:
        if _MASK_NAME.fullmatch(path.name):
            by_folder[path.parent].append(path)

    def refuse_if_input(target: Path) -> None:
        hit = resolved.get(target.resolve())
        if hit is None and (target.exists() or target.is_symlink()):
            hit = identities.get(_identity(target))
        if hit is not None:
            raise InvalidInputError(f"the output {str(target)!r} is the input {str(hit)!r}: writing the results "
                                    "into the output folder would replace it; choose another output folder")

    for name in RUN_FILES:
        refuse_if_input(out / name)
    for job in jobs:
        for target in _single_outputs(out, job.key):
            refuse_if_input(target)
        masks = out / "masks" / job.key
        for path in by_folder.get(masks.resolve(), []):
            refuse_if_input(masks / path.name)
        if masks.is_dir():
            for existing in masks.iterdir():
                if _MASK_NAME.fullmatch(existing.name):
                    refuse_if_input(existing)


# --- the run --------------------------------------------------------------------------------------
@dataclass
class BatchReport:
    """What a run did: images done now / skipped (done before) / failed, objects written,
    problems (``"stem: message"``), and the exit code (0, or 1 when anything failed)."""

    images: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    bad_prompts: list[str] = field(default_factory=list)
    objects: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed or self.bad_prompts else EXIT_OK

    def as_dict(self) -> dict:
        return {"images": self.images, "done_now": self.done, "skipped_done_before": self.skipped,
                "failed_images": self.failed, "bad_prompts": self.bad_prompts, "objects": self.objects,
                "exit_code": self.exit_code}


def record_path(out: Path, job: ImageJob) -> Path:
    return out / "records" / f"{job.key}.json"


def _state_error(path: Path, problem: str) -> InvalidInputError:
    return InvalidInputError(f"cannot resume from {str(path)!r}: {problem}; move it away, or pass `overwrite` "
                             "to redo every image", parameters=("overwrite",))


_MISSING = object()


def _read_state(path: Path) -> Any:
    """The JSON of a run state file (``run.json``, a record); ``_MISSING`` when there is none."""
    if not path.exists() and not path.is_symlink():
        return _MISSING
    if not path.is_file():
        raise _state_error(path, "it is not a file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _state_error(path, "not a UTF-8 text file") from None
    except OSError as error:
        raise _state_error(path, f"it cannot be read ({error.strerror or error})") from None
    except (ValueError, RecursionError):
        raise _state_error(path, "not valid JSON (a file finesam writes is never half written: edited by hand?)") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_name(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with a COCO results entry of a record, or None."""
    if not isinstance(entry, dict):
        return f"an object is {type(entry).__name__}, not a COCO results entry"
    missing = [name for name in RESULT_FIELDS if name not in entry]
    if missing:
        return f"an object lacks {', '.join(missing)}"
    segmentation = entry["segmentation"]
    size = segmentation.get("size") if isinstance(segmentation, dict) else None
    checks = {
        "image_id": _is_name(entry["image_id"]), "category_id": _is_name(entry["category_id"]),
        "prompt_id": _is_name(entry.get("prompt_id", 0)), "score": _is_number(entry["score"]),
        "detector_score": _is_number(entry.get("detector_score", 0)),
        "area": isinstance(entry["area"], int) and not isinstance(entry["area"], bool) and entry["area"] >= 0,
        "bbox": isinstance(entry["bbox"], list) and len(entry["bbox"]) == 4 and all(map(_is_number, entry["bbox"])),
        "segmentation": isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)
                        and isinstance(segmentation.get("counts"), str),
    }
    wrong = [name for name, right in checks.items() if not right]
    return f"an object's {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not of the COCO results form" if wrong else None


def _record_problem(record: Any) -> str | None:
    """What is wrong with a record (``records/<key>.json``), or None."""
    if not isinstance(record, dict):
        return f"a record is a JSON object, not {'null' if record is None else type(record).__name__}"
    if not isinstance(record.get("fingerprint"), str):
        return "its 'fingerprint' is missing or not a text"
    if not isinstance(record.get("objects"), list):
        return "its 'objects' list is missing or not a list"
    bad_prompts = record.get("bad_prompts", [])
    if not isinstance(bad_prompts, list) or not all(isinstance(line, str) for line in bad_prompts):
        return "its 'bad_prompts' is not a list of texts"
    for entry in record["objects"]:
        problem = _entry_problem(entry)
        if problem:
            return problem
    return None


def read_record(out: Path, job: ImageJob) -> dict | None:
    """The record of ``job``'s image (None when there is none); a damaged one, or one whose
    objects are of another image, is refused, naming the file."""
    path = record_path(out, job)
    record = _read_state(path)
    if record is _MISSING:
        return None
    problem = _record_problem(record)
    if problem is None and any(entry["image_id"] != job.image_id for entry in record["objects"]):
        problem = f"its objects are not of image_id {job.image_id!r}"
    if problem:
        raise _state_error(path, problem)
    return record


def check_resumable(out: Path, settings: BatchSettings, overwrite: bool, jobs: Sequence[ImageJob] = ()) -> None:
    """Refuse to add to a folder that holds a run with other settings, or whose ``run.json`` or
    records of ``jobs`` are damaged (unless ``overwrite``: then every image is redone)."""
    records = out / "records"
    if (records.exists() or records.is_symlink()) and not records.is_dir():
        raise InvalidInputError(f"cannot write records into {str(records)!r}: it is a file, not a folder; move it away")
    if overwrite:
        return
    previous = _read_state(out / "run.json")
    if previous is not _MISSING and not isinstance(previous, dict):
        kind = "null" if previous is None else f"a {type(previous).__name__}"
        raise _state_error(out / "run.json", f"it holds {kind}, not the settings of a run")
    for job in jobs:
        read_record(out, job)
    if previous is _MISSING:
        return
    current = json.loads(json.dumps(settings.describe(), default=str))
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if changed:
        raise InvalidInputError(
            f"{out} holds results of a run with other settings ({', '.join(changed)}); finishing it would mix "
            "them: pass `overwrite` to redo every image, or choose another `out` folder", parameters=("overwrite", "out")
        )


def run_batch(
    jobs: Sequence[ImageJob],
    out: Path,
    settings: BatchSettings,
    segment: Callable[[np.ndarray, ImageJob], tuple[list[Segmented], list[str]]],
    overwrite: bool = False,
    context: DistributedContext = SINGLE_PROCESS,
    progress: bool | None = None,
) -> BatchReport:
    """Segment ``jobs`` into ``out`` (this rank's share under torchrun) and, on rank 0, merge the
    records of all jobs into ``coco_results.json`` and ``summary.json``.

    ``segment(image, job)`` returns (objects, problems with single prompts); it validates the
    job's prompts before encoding the image. Returns the merged report on every rank.
    """
    describe = json.loads(json.dumps(settings.describe(), default=str))
    if context.is_main:
        _write_json(describe, out / "run.json")
    mine = shard(list(jobs), context)
    failed: list[str] = []
    failed_keys: list[str] = []
    done = skipped = 0
    bar = tqdm(mine, desc="images" if not context.enabled else f"images (rank {context.rank})", unit="image",
               disable=None if progress is None else not progress, file=sys.stderr, dynamic_ncols=True)
    for job in bar:
        fingerprint = job.fingerprint(describe)
        record_file = record_path(out, job)
        if not overwrite:
            record = read_record(out, job)
            if record is not None and record["fingerprint"] == fingerprint:
                remove_stale_outputs(out, job.key, image_output_files(out, job.key, settings.formats, len(record["objects"])))
                skipped += 1
                continue
        try:
            image = read_image(job.path)
            objects, prompt_problems = segment(image, job)
            entries = write_image_outputs(out, job, image, objects, settings)
        except FinesamError as error:
            failed.append(f"{job.key}: {one_line(error)}")
            failed_keys.append(job.key)
            tqdm.write(f"finesam segment: skipped {job.path}: {one_line(error)}", file=sys.stderr)
            record_file.unlink(missing_ok=True)  # not done: its earlier outputs are of other settings or prompts
            remove_stale_outputs(out, job.key, ())
            continue
        for problem in prompt_problems:
            tqdm.write(f"finesam segment: {job.path}: skipped {problem}", file=sys.stderr)
        _write_json({"image": str(job.path), "key": job.key, "image_id": job.image_id, "size": list(image.shape[:2]),
                     "fingerprint": fingerprint, "objects": entries, "bad_prompts": prompt_problems}, record_file)
        remove_stale_outputs(out, job.key, image_output_files(out, job.key, settings.formats, len(objects)))
        done += 1
    bar.close()
    barrier(context)
    gathered = gather_to_main({"failed": failed, "failed_keys": failed_keys, "done": done, "skipped": skipped}, context)
    report = BatchReport(images=len(jobs))
    if context.is_main:
        report = merge_records(out, jobs, settings, gathered)
    return broadcast_from_main(report, context)


def merge_records(out: Path, jobs: Sequence[ImageJob], settings: BatchSettings, gathered: Iterable[dict]) -> BatchReport:
    """Rank 0: the report over every rank, ``coco_results.json`` (jobs in input order) and ``summary.json``."""
    report = BatchReport(images=len(jobs))
    failed_keys = set()
    for part in gathered:
        report.failed += part["failed"]
        report.done += part["done"]
        report.skipped += part["skipped"]
        failed_keys |= set(part["failed_keys"])
    entries: list[dict] = []
    for job in jobs:
        if job.key in failed_keys:
            continue
        record = read_record(out, job)
        if record is None:
            report.failed.append(f"{job.key}: no record written (a rank stopped early?)")
            continue
        entries += record["objects"]
        report.bad_prompts += [f"{job.key}: {problem}" for problem in record.get("bad_prompts", [])]
    order = {job.key: index for index, job in enumerate(jobs)}
    report.failed.sort(key=lambda line: order.get(line.split(":", 1)[0], len(order)))
    report.objects = len(entries)
    if "coco" in settings.formats:
        write_coco_results(entries, out / "coco_results.json")
    _write_json(report.as_dict(), out / "summary.json")
    return report
