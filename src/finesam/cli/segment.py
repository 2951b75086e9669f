"""``finesam segment INPUT... --model NAME (--box ... | --point ... | --prompts FILE | --auto) --out DIR|mask.png``.

``--out`` ending in .png/.bmp/.tif/.tiff: one image, the union of its masks in one file (and
``--overlay``). Any other ``--out`` is a folder: many images, one encoding each, the outputs of
``--format`` (see :mod:`finesam.pipeline.folder`), resumable, split over ``torchrun`` processes.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import MASK_FORMATS, check_image_path, check_mask_path, overlay, read_image, save_mask, save_overlay
from ..data.prompt_files import FORMATS_HELP, group_by_image, read_prompt_file
from ..devices import resolve_device
from ..distributed import init_distributed, process_device, shutdown
from ..errors import InvalidInputError
from ..modeling.contracts.decoder_api import HQ_OUTPUTS
from ..outputs import LOSSY_SUFFIXES, check_output_dir
from ..pipeline.folder import (
    OUTPUT_FORMATS,
    BatchReport,
    BatchSettings,
    ImageJob,
    ObjectPrompt,
    automatic_objects,
    check_image_prompts,
    check_object_prompt,
    check_outputs_spare_inputs,
    check_resumable,
    collect_images,
    output_key,
    parse_formats,
    predict_objects,
    run_batch,
)
from ..predict.predictor import SamPredictor, check_near_image, validate_boxes, validate_points
from ..registry import get_spec
from .model_options import RANDOM_WEIGHTS_WARNING, add_model_options, load_model

DEFAULT_FORMATS = "png,coco"

EPILOG = f"""\
examples:
  finesam segment photo.jpg --box 30 40 380 290 --out mask.png --overlay overlay.png
  finesam segment photos/ --box 30 40 380 290 --out results/ --format png,coco,overlay
  finesam segment 'photos/**/*.jpg' --prompts detections.json --out results/ --format coco,polygons
  finesam segment photos/ --auto --out results/ --format instances,overlay
  finesam segment photo.jpg --model pi_vit_b --checkpoint sam_vit_b_01ec64.pth --decoder-checkpoint pi_sam_b.pth \\
      --box 30 40 380 290 --fix-point 200 150 --fix-negative 40 60 --out results/
  torchrun --nproc-per-node 4 -m finesam.cli segment photos/ --prompts boxes.csv --out results/

{FORMATS_HELP}

--out DIR writes (--format, any of {','.join(OUTPUT_FORMATS)}; default {DEFAULT_FORMATS}):
  masks/<stem>/<k>.png (png), instances/<stem>.png (instances), coco_results.json (coco),
  polygons/<stem>.json + .geojson (polygons), overlays/<stem>.png (overlay); records/<stem>.json
  marks an image done (a rerun skips it unless --overwrite), summary.json lists what failed.
exit codes: 0 all done; 1 some images or prompts failed (reported, the rest written); 2 refused before any work.
"""


@dataclass
class Prompts:
    """Prompts in original-image pixels: boxes (x0, y0, x1, y1) and labelled points."""

    boxes: list[list[float]] = field(default_factory=list)
    points: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def object_prompts(prompts: Prompts) -> tuple[ObjectPrompt, ...]:
    """One object per box (the clicks go with it: a single box only), or one object from the clicks."""
    if len(prompts.boxes) > 1 and prompts.points:
        raise InvalidInputError("points can be combined with a single box only")
    return tuple(ObjectPrompt(box=tuple(box) if box is not None else None, points=tuple(map(tuple, prompts.points)),
                              labels=tuple(prompts.labels), prompt_id=index)
                 for index, box in enumerate(prompts.boxes or [None]))


def segment(predictor: SamPredictor, prompts: Prompts, multimask: bool = False, hq_output: str | None = None) -> list[np.ndarray]:
    """One (H, W) bool mask per object: per box (points apply to a single box), or one from the
    points; the objects go through the folder pipeline's :func:`predict_objects`.

    With ``multimask`` the candidate with the best predicted score is kept.
    """
    settings = BatchSettings(multimask=multimask, hq_output=hq_output)
    return [obj.mask for obj in predict_objects(predictor, object_prompts(prompts), settings)]


def write_outputs(
    image: np.ndarray, masks: list[np.ndarray], prompts: Prompts, mask_path: Path, overlay_path: Path | None, banner: str | None
) -> None:
    """Union of the masks as a 0/255 PNG; an overlay with one colour per object if asked."""
    save_mask(np.logical_or.reduce(masks), mask_path)
    if overlay_path is not None:
        save_overlay(overlay(image, masks, prompts.boxes, prompts.points, prompts.labels, banner), overlay_path)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``segment`` sub-command to an ``argparse`` sub-parsers object."""
    seg = subparsers.add_parser(
        "segment", help="segment objects in images from boxes, clicks, a prompt file, or automatically",
        description="Segment objects in one or many images. Prompts: --box/--point/--negative (the same for every "
                    "image), --prompts FILE (boxes per image), or --auto (every object).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seg.add_argument("inputs", nargs="+", metavar="INPUT",
                     help="image files, folders (their images) or glob patterns ('photos/**/*.jpg'); images are read as "
                          "displayed (EXIF orientation applied)")
    add_model_options(seg)
    seg.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                     help="object box in pixels of the displayed image, for every image; repeat for several objects")
    seg.add_argument("--point", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"), help="foreground click")
    seg.add_argument("--negative", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"), help="background click")
    seg.add_argument("--prompts", metavar="FILE", help="boxes per image from a COCO JSON, detector results, CSV or JSON lines file (below)")
    seg.add_argument("--min-detector-score", type=float, metavar="S",
                     help="with --prompts: skip boxes whose detector score is below S")
    seg.add_argument("--auto", action="store_true", help="every object: the automatic mask generator (point grid)")
    seg.add_argument("--points-per-side", type=int, default=32, metavar="N", help="--auto: grid of N x N points (default 32)")
    seg.add_argument("--fix-point", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"),
                     help="correction click on an area that should be object (models that correct clicks: Pi-SAM)")
    seg.add_argument("--fix-negative", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"),
                     help="correction click on an area that should be background (Pi-SAM)")
    seg.add_argument("--multimask", action="store_true", help="predict 3 candidates and keep the best scored")
    seg.add_argument("--hq-output", choices=HQ_OUTPUTS, help="HQ models: which logits to use (default sum)")
    seg.add_argument("--out", required=True,
                     help="a folder (many images, --format outputs), or a mask file .png/.bmp/.tif (one image: union of its masks)")
    seg.add_argument("--format", default=DEFAULT_FORMATS, metavar="LIST",
                     help=f"--out DIR: any of {','.join(OUTPUT_FORMATS)}, comma-separated (default {DEFAULT_FORMATS})")
    seg.add_argument("--overwrite", action="store_true", help="--out DIR: redo images already done (default: skip them)")
    seg.add_argument("--overlay", help="with a mask file --out: output overlay PNG/JPEG")
    return seg


def same_file(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one file: the same resolved path (symlinks, ``..``, other
    spellings), or, when both exist, the same file (hard links)."""
    first, second = Path(first), Path(second)
    if first.resolve() == second.resolve():
        return True
    try:
        return first.exists() and second.exists() and os.path.samefile(first, second)
    except OSError:
        return False


def check_not_input(output: Path, flag: str, image: str) -> None:
    """Refuse an output file that is the input image (writing it would replace the photograph)."""
    if same_file(output, image):
        raise InvalidInputError(f"{flag} {str(output)!r} is the input image {image!r}: writing it would replace the "
                                "photograph; choose another output path (e.g. mask.png)")


def _out_is_file(out: str) -> bool:
    """A mask file (lossless image suffix; a lossy or other image suffix is refused by the mask
    path check), else a folder."""
    suffix = Path(out).suffix.lower()
    return suffix in MASK_FORMATS or suffix in LOSSY_SUFFIXES or suffix in Image.registered_extensions()


def _flag_prompts(args: argparse.Namespace) -> Prompts:
    return Prompts(boxes=args.box or [], points=args.point + args.negative,
                   labels=[1] * len(args.point) + [0] * len(args.negative))


def _check_sources(args: argparse.Namespace) -> None:
    flags = bool(args.box or args.point or args.negative)
    sources = [name for name, given in (("--box/--point", flags), ("--prompts", args.prompts), ("--auto", args.auto)) if given]
    if not sources:
        raise InvalidInputError("give at least one --box X0 Y0 X1 Y1 or one --point X Y (or --prompts FILE, or --auto)")
    if len(sources) > 1:
        raise InvalidInputError(f"{' and '.join(sources)} exclude each other: choose one source of prompts")
    if args.box and len(args.box) > 1 and (args.point or args.negative):
        raise InvalidInputError("points can be combined with a single --box only")
    if args.negative and not args.point and not args.box:
        raise InvalidInputError("--negative clicks need a --point or a --box too")
    if (args.fix_point or args.fix_negative) and args.auto:
        raise InvalidInputError("--fix-point / --fix-negative correct a prompted object; they do not apply to --auto")
    if args.min_detector_score is not None and not args.prompts:
        raise InvalidInputError("--min-detector-score filters the boxes of --prompts FILE")
    if args.min_detector_score is not None and not np.isfinite(args.min_detector_score):
        raise InvalidInputError(f"--min-detector-score must be a finite number, got {args.min_detector_score}")
    if args.points_per_side < 1:
        raise InvalidInputError(f"--points-per-side must be at least 1, got {args.points_per_side}")


def _declared_predictor(model_name: str) -> SamPredictor:
    with torch.device("meta"):  # the model's declaration and frame, without weights or time
        return SamPredictor(get_spec(model_name).build(), keep_early_feature=False)


def _check_fix_clicks(args: argparse.Namespace, declared: SamPredictor) -> None:
    if not (args.fix_point or args.fix_negative):
        return
    if not declared.capabilities.corrects_clicks:
        raise InvalidInputError(f"--fix-point / --fix-negative need a model whose decoder corrects clicks (Pi-SAM: pi_vit_*); "
                                f"{args.model} does not. Add the clicks as --point / --negative instead")
    validate_points(np.array(args.fix_point + args.fix_negative), np.ones(len(args.fix_point + args.fix_negative)),
                    batched=False, name="--fix-point/--fix-negative")


def run(args: argparse.Namespace) -> int:
    """Run ``finesam segment``; returns the exit code. Refusals raise
    :class:`~finesam.errors.FinesamError` (one line and exit code 2 from :func:`finesam.cli.main`),
    all of them before the model is loaded or a file is written, except what only the model can
    tell; with ``--out DIR`` a bad image or prompt is reported and skipped (exit code 1)."""
    _check_sources(args)
    if _out_is_file(args.out):
        return _run_single(args)
    return _run_folder(args)


def _run_single(args: argparse.Namespace) -> int:
    """One image, the union of its masks in one file (and an overlay)."""
    mask_path = check_mask_path(args.out)
    if args.prompts or args.auto:
        raise InvalidInputError(f"{'--prompts' if args.prompts else '--auto'} gives one mask per object: "
                                f"give a folder as --out (e.g. --out results/) instead of the file {args.out!r}")
    if len(args.inputs) > 1:
        raise InvalidInputError(f"{len(args.inputs)} inputs but --out {args.out!r} is one mask file: give a folder as --out")
    overlay_path = check_image_path(args.overlay) if args.overlay else None
    device = resolve_device(args.device)
    declared = _declared_predictor(args.model)
    _check_fix_clicks(args, declared)
    prompts = _flag_prompts(args)
    if Path(args.inputs[0]).is_dir():
        raise InvalidInputError(f"{args.inputs[0]!r} is a folder: give a folder as --out to segment its images")
    check_not_input(mask_path, "--out", args.inputs[0])
    if overlay_path is not None:
        check_not_input(overlay_path, "--overlay", args.inputs[0])
        if same_file(overlay_path, mask_path):
            raise InvalidInputError(f"--out and --overlay name the same file {args.out!r}: give two paths")
    image = read_image(args.inputs[0])
    objects = object_prompts(prompts)
    for prompt in objects:  # every prompt, before the model loads (as a folder run checks them)
        check_object_prompt(declared, image.shape[:2], prompt)
    for point in args.fix_point + args.fix_negative:
        check_near_image("--fix-point/--fix-negative", np.array(point, dtype=float), image.shape[:2])
    predictor = SamPredictor(load_model(args, device))
    predictor.set_image(image)
    settings = BatchSettings(multimask=args.multimask, hq_output=args.hq_output,
                             fix_points=tuple(map(tuple, args.fix_point)), fix_negatives=tuple(map(tuple, args.fix_negative)))
    masks = [obj.mask for obj in predict_objects(predictor, objects, settings)]  # as in folder runs
    prompts.points += args.fix_point + args.fix_negative  # drawn on the overlay
    prompts.labels += [1] * len(args.fix_point) + [0] * len(args.fix_negative)
    banner = RANDOM_WEIGHTS_WARNING if args.random_weights else None
    write_outputs(image, masks, prompts, mask_path, overlay_path, banner)
    print(f"wrote {args.out}" + (f" and {args.overlay}" if args.overlay else "") + f" ({int(np.logical_or.reduce(masks).sum())} mask pixels)")
    if banner:
        print(f"WARNING: {banner}")
    return 0


def _jobs(args: argparse.Namespace, images: list[Path]) -> list[ImageJob]:
    """One job per image with its prompts: the flag prompts for every image, or the file's boxes."""
    if args.auto:
        return [ImageJob(output_key(path), path, path.name, ()) for path in images]
    if not args.prompts:
        prompts = object_prompts(_flag_prompts(args))
        return [ImageJob(output_key(path), path, path.name, prompts) for path in images]
    file_prompts = read_prompt_file(args.prompts)
    if args.min_detector_score is not None:
        file_prompts = [p for p in file_prompts if p.detector_score is None or p.detector_score >= args.min_detector_score]
    grouped, unmatched = group_by_image(file_prompts, [path.stem for path in images])
    jobs = [ImageJob(output_key(path), path, grouped[path.stem][0].image_id,
                     tuple(ObjectPrompt(box=p.box, prompt_id=p.prompt_id, category_id=p.category_id,
                                        detector_score=p.detector_score) for p in grouped[path.stem]))
            for path in images if grouped[path.stem]]
    if not jobs:
        named = ", ".join(unmatched[:5]) or "none"
        raise InvalidInputError(f"no input image has prompts in {args.prompts} (it names {named}"
                                f"{', ...' if len(unmatched) > 5 else ''}); images are matched by file stem")
    without = len(images) - len(jobs)
    if without:
        print(f"note: {without} input image(s) have no prompts in {args.prompts} and are skipped", file=sys.stderr)
    if unmatched:
        print(f"note: prompts for {len(unmatched)} image(s) not among the inputs are ignored "
              f"({', '.join(unmatched[:5])}{', ...' if len(unmatched) > 5 else ''})", file=sys.stderr)
    return jobs


def _run_folder(args: argparse.Namespace) -> int:
    """Many images into a folder: see :mod:`finesam.pipeline.folder`."""
    out = check_output_dir(args.out)
    if args.overlay:
        raise InvalidInputError("--overlay FILE goes with a mask file --out; with --out DIR add 'overlay' to --format")
    formats = parse_formats(args.format)
    device = resolve_device(args.device)
    declared = _declared_predictor(args.model)
    _check_fix_clicks(args, declared)
    if args.box:
        validate_boxes(np.array(args.box, dtype=float), batched=True)
    if args.point or args.negative:
        validate_points(np.array(args.point + args.negative, dtype=float),
                        np.array([1] * len(args.point) + [0] * len(args.negative)), batched=False)
    images = collect_images(args.inputs)
    jobs = _jobs(args, images)
    banner = RANDOM_WEIGHTS_WARNING if args.random_weights else None
    settings = BatchSettings(
        formats=formats, multimask=args.multimask, hq_output=args.hq_output,
        fix_points=tuple(map(tuple, args.fix_point)), fix_negatives=tuple(map(tuple, args.fix_negative)),
        auto=args.auto, points_per_side=args.points_per_side, banner=banner,
        run_info={"model": args.model, "checkpoint": args.checkpoint, "decoder_checkpoint": args.decoder_checkpoint,
                  "random_weights": args.random_weights, "prompts": args.prompts,
                  "min_detector_score": args.min_detector_score},
    )
    check_outputs_spare_inputs(out, jobs, [Path(args.prompts)] if args.prompts else [])
    check_resumable(out, settings, args.overwrite, jobs)
    context = init_distributed(device)
    try:
        model = load_model(args, process_device(device, context))
        report = run_batch(jobs, out, settings, _segmenter(model, settings), args.overwrite, context)
    finally:
        shutdown(context)
    if context.is_main:
        _print_summary(report, out, banner)
    return report.exit_code


def _segmenter(model, settings: BatchSettings):
    """``segment(image, job) -> (objects, prompt problems)`` for :func:`run_batch`."""
    if settings.auto:
        from ..predict.automatic_mask_generator import AutomaticMaskGenerator

        generator = AutomaticMaskGenerator(model, points_per_side=settings.points_per_side, hq_output=settings.hq_output)
        return lambda image, job: (automatic_objects(generator, image), [])
    predictor = SamPredictor(model, keep_early_feature=False)
    clicks = np.array(settings.fix_points + settings.fix_negatives, dtype=float).reshape(-1, 2)

    def segment_one(image: np.ndarray, job: ImageJob):
        check_near_image("--fix-point/--fix-negative", clicks, image.shape[:2])
        valid, problems = check_image_prompts(predictor, image.shape[:2], job.prompts)  # before encoding
        if not valid:
            return [], problems
        predictor.set_image(image)
        return predict_objects(predictor, valid, settings), problems

    return segment_one


def _print_summary(report: BatchReport, out: Path, banner: str | None) -> None:
    print(f"segmented {report.done} image(s) into {out} ({report.objects} objects in all)"
          + (f"; {report.skipped} done before, skipped (--overwrite redoes them)" if report.skipped else ""))
    if report.failed or report.bad_prompts:
        print(f"finesam segment: {len(report.failed)} image(s) and {len(report.bad_prompts)} prompt(s) failed "
              f"(listed in {out / 'summary.json'}):", file=sys.stderr)
        for line in (report.failed + report.bad_prompts)[:20]:
            print(f"  {line}", file=sys.stderr)
    if banner:
        print(f"WARNING: {banner}")
