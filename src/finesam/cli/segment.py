"""``finesam segment IMAGE --model NAME (--box ... | --point ...) --out mask.png``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.images import check_image_path, check_mask_path, overlay, read_image, save_mask, save_overlay
from ..devices import DEVICE_CHOICES, resolve_device
from ..errors import InvalidInputError
from ..loading import load
from ..modeling.decoder_api import HQ_OUTPUTS
from ..predict.predictor import SamPredictor
from ..registry import get_spec, model_names

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: these masks are meaningless (pipeline check only)"


@dataclass
class Prompts:
    """Prompts in original-image pixels: boxes (x0, y0, x1, y1) and labelled points."""

    boxes: list[list[float]] = field(default_factory=list)
    points: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def segment(predictor: SamPredictor, prompts: Prompts, multimask: bool = False, hq_output: str | None = None) -> list[np.ndarray]:
    """One (H, W) bool mask per object: per box (points apply to a single box), or one from the points.

    With ``multimask`` the candidate with the best predicted score is kept.
    """
    points = np.array(prompts.points, dtype=float) if prompts.points else None
    labels = np.array(prompts.labels) if prompts.labels else None
    if len(prompts.boxes) > 1:
        if points is not None:
            raise InvalidInputError("points can be combined with a single box only")
        masks, scores, _ = predictor.predict_batch(boxes=np.array(prompts.boxes), multimask_output=multimask, hq_output=hq_output)
        return [m[int(np.argmax(s))] for m, s in zip(masks, scores)]
    box = np.array(prompts.boxes[0]) if prompts.boxes else None
    masks, scores, _ = predictor.predict(points, labels, box, multimask_output=multimask, hq_output=hq_output)
    return [masks[int(np.argmax(scores))]]


def write_outputs(
    image: np.ndarray, masks: list[np.ndarray], prompts: Prompts, mask_path: Path, overlay_path: Path | None, banner: str | None
) -> None:
    """Union of the masks as a 0/255 PNG; an overlay with one colour per object if asked."""
    save_mask(np.logical_or.reduce(masks), mask_path)
    if overlay_path is not None:
        save_overlay(overlay(image, masks, prompts.boxes, prompts.points, prompts.labels, banner), overlay_path)


def load_model(name: str, checkpoint: str | None, random_weights: bool, device: str = "cpu", **options):
    """Load a model for the command line; random weights are those of ``finesam.load(name,
    random_weights=True)`` (seed :data:`finesam.RANDOM_WEIGHTS_SEED`), so runs are repeatable."""
    if random_weights:
        if checkpoint:
            raise InvalidInputError("--random-weights and --checkpoint exclude each other")
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
    return load(name, checkpoint, random_weights=random_weights, device=device, **options)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``segment`` sub-command to an ``argparse`` sub-parsers object."""
    seg = subparsers.add_parser("segment", help="segment an object in an image from a box and/or clicks")
    seg.add_argument("image", help="input image (PNG, JPEG, BMP, ...), read as displayed (EXIF orientation applied)")
    seg.add_argument("--model", default="hq_vit_tiny", metavar="NAME",
                     help=f"model name (default hq_vit_tiny): {', '.join(model_names())}, or one added with finesam.register_model")
    seg.add_argument("--checkpoint", help="weights file (default: $FINESAM_CHECKPOINTS or ~/.cache/finesam, else download)")
    seg.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                     help="object box in pixels of the displayed image; repeat for several objects")
    seg.add_argument("--point", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"), help="foreground click")
    seg.add_argument("--negative", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"), help="background click")
    seg.add_argument("--multimask", action="store_true", help="predict 3 candidates and keep the best scored")
    seg.add_argument("--hq-output", choices=HQ_OUTPUTS, help="HQ models: which logits to use (default sum)")
    seg.add_argument("--out", required=True, help="output mask PNG (0/255)")
    seg.add_argument("--overlay", help="output overlay PNG")
    seg.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default auto: CUDA, then MPS, then the CPU)")
    seg.add_argument("--random-weights", action="store_true",
                     help="seeded random weights, as finesam.load(NAME, random_weights=True): checks the pipeline, masks are meaningless")
    return seg


def run(args: argparse.Namespace) -> int:
    """Run ``finesam segment``; returns the exit code. Refusals raise
    :class:`~finesam.errors.FinesamError` (one line and exit code 2 from :func:`finesam.cli.main`),
    all of them before the model is loaded or a file is written, except what only the model can tell."""
    if not args.box and not args.point:
        raise InvalidInputError("give at least one --box X0 Y0 X1 Y1 or one --point X Y")
    mask_path = check_mask_path(args.out)
    overlay_path = check_image_path(args.overlay) if args.overlay else None
    device = resolve_device(args.device)
    with torch.device("meta"):  # the model's declaration and frame, without weights or time
        declared = SamPredictor(get_spec(args.model).build(), keep_early_feature=False)
    prompts = Prompts(
        boxes=args.box or [],
        points=args.point + args.negative,
        labels=[1] * len(args.point) + [0] * len(args.negative),
    )
    if len(prompts.boxes) > 1 and prompts.points:
        raise InvalidInputError("points can be combined with a single --box only")
    image = read_image(args.image)
    for box in prompts.boxes or [None]:  # every prompt, before the model loads
        declared.check_prompts(image.shape[:2], np.array(prompts.points) if prompts.points else None,
                               np.array(prompts.labels) if prompts.labels else None, box)
    predictor = SamPredictor(load_model(args.model, args.checkpoint, args.random_weights, device))
    predictor.set_image(image)
    masks = segment(predictor, prompts, args.multimask, args.hq_output)
    banner = RANDOM_WEIGHTS_WARNING if args.random_weights else None
    write_outputs(image, masks, prompts, mask_path, overlay_path, banner)
    print(f"wrote {args.out}" + (f" and {args.overlay}" if args.overlay else "") + f" ({int(np.logical_or.reduce(masks).sum())} mask pixels)")
    if banner:
        print(f"WARNING: {banner}")
    return 0
