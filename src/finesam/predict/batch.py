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
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..checkpoints.files import write_atomically, write_text_atomically
from ..data.folders import IMAGE_EXTENSIONS
from ..data.images import overlay, read_image, save_mask, save_overlay
from ..data.prompt_files import DEFAULT_CATEGORY
from ..distributed import SINGLE_PROCESS, DistributedContext, barrier, broadcast_from_main, gather_to_main, shard
from ..errors import FinesamError, InvalidInputError, one_line
from ..formats.coco import results_entry, write_coco_results
from ..formats.polygons import mask_to_geojson, mask_to_polygons
from .predictor import SamPredictor

OUTPUT_FORMATS = ("png", "instances", "coco", "polygons", "overlay")
EXIT_OK = 0
EXIT_SOME_FAILED = 1
#: Prompts decoded in one pass (bounds the memory of full-resolution masks).
PROMPTS_PER_PASS = 16
_GLOB_CHARACTERS = set("*?[")


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
        raise InvalidInputError(f"--format {text!r}: unknown or empty; choose any of {','.join(OUTPUT_FORMATS)}, "
                                "comma-separated (e.g. --format png,coco)")
    return tuple(dict.fromkeys(names))


# --- inputs ---------------------------------------------------------------------------------------
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Image files from files, folders (their images, not recursive) and glob patterns (``**``
    recursive), in order, without duplicates. A path that does not exist, a folder without images
    or a pattern that matches none is refused; two images of the same file stem too (outputs are
    named after it)."""
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
    by_stem: dict[str, Path] = {}
    for path in unique:
        if path.stem in by_stem:
            raise InvalidInputError(f"two input images share the name {path.stem!r} ({by_stem[path.stem]} and {path}); "
                                    "outputs are named after the file stem: rename one or run them separately")
        by_stem[path.stem] = path
    return unique


# --- predicting -----------------------------------------------------------------------------------
def _arrays(prompt: ObjectPrompt) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    points = np.array(prompt.points, dtype=float) if prompt.points else None
    labels = np.array(prompt.labels) if prompt.points else None
    box = np.array(prompt.box, dtype=float) if prompt.box is not None else None
    return points, labels, box


def check_image_prompts(predictor: SamPredictor, size: tuple[int, int], prompts: Sequence[ObjectPrompt]
                        ) -> tuple[list[ObjectPrompt], list[str]]:
    """Split prompts into those valid for an image of ``size`` (H, W) and messages for the others
    (checked with ``predictor.check_prompts``, without encoding the image)."""
    valid, problems = [], []
    for prompt in prompts:
        try:
            predictor.check_prompts(size, *_arrays(prompt))
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


def instance_image(objects: Sequence[Segmented], size: tuple[int, int]) -> np.ndarray:
    """(H, W) instance ids: 0 background, k + 1 where object k is; larger objects are painted
    first, so a small object on a large one stays visible. uint8, or uint16 above 255 objects."""
    ids = np.zeros(size, dtype=np.uint8 if len(objects) <= 255 else np.uint16)
    for index in sorted(range(len(objects)), key=lambda k: -int(objects[k].mask.sum())):
        ids[objects[index].mask] = index + 1
    return ids


def _save_png(pixels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(pixels)  # uint16 -> mode "I;16", written as a 16-bit PNG
    write_atomically(path, lambda temporary: image.save(temporary, format="PNG"))


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
        _save_png(instance_image(objects, image.shape[:2]), out / "instances" / f"{job.key}.png")
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


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # none, or unreadable: the image is done again


def check_resumable(out: Path, settings: BatchSettings, overwrite: bool) -> None:
    """Refuse to add to a folder that holds a run with other settings (unless ``overwrite``)."""
    previous = _read_record(out / "run.json")
    if previous is None or overwrite:
        return
    current = json.loads(json.dumps(settings.describe(), default=str))
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if changed:
        raise InvalidInputError(
            f"{out} holds results of a run with other settings ({', '.join(changed)}); finishing it would mix "
            "them: pass --overwrite to redo every image, or choose another --out folder"
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
            record = _read_record(record_file)
            if record is not None and record.get("fingerprint") == fingerprint:
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
            continue
        for problem in prompt_problems:
            tqdm.write(f"finesam segment: {job.path}: skipped {problem}", file=sys.stderr)
        _write_json({"image": str(job.path), "key": job.key, "image_id": job.image_id, "size": list(image.shape[:2]),
                     "fingerprint": fingerprint, "objects": entries, "bad_prompts": prompt_problems}, record_file)
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
        record = _read_record(record_path(out, job))
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
