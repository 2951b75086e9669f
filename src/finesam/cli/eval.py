"""``finesam eval``: evaluate a model with a protocol on data sets; CSV, JSON, Markdown, PNG out.

    finesam eval --model hq_vit_b --checkpoint sam_hq_vit_b.pth \\
        --data DIS-VD=/data/DIS5K/DIS-VD COIFT=/data/thin_object_detection/COIFT \\
        --protocol box --out runs/hq_b_box [--limit N] [--no-hce]

Rerunning the same command after an interruption resumes: images already in
``OUT/per_image.csv`` are skipped and the summary is recomputed from the stored rows.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from ..data import DatasetError, open_dataset
from ..devices import DEVICE_CHOICES, resolve_device
from ..errors import InvalidInputError
from ..evaluation.protocols import PROTOCOLS, make_protocol
from ..evaluation.runner import evaluate
from ..loading import load
from ..modeling.decoder_api import HQ_OUTPUTS
from ..optional import require
from ..outputs import check_output_dir
from ..predict.predictor import SamPredictor
from ..registry import get_spec, model_names

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: these numbers are meaningless (pipeline check only)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to an ``argparse`` sub-parsers object."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a model on data sets with a paper protocol",
        description="Evaluate a model with one protocol on image/mask data sets. Writes per_image.csv, curves.npz, "
                    "summary.json, table.md and PNG plots into --out; rerun the same command to resume.",
    )
    parser.add_argument("--model", required=True, metavar="NAME", help=f"model name: {', '.join(model_names())}, or one added with finesam.register_model")
    parser.add_argument("--checkpoint", help="weights file (default: $FINESAM_CHECKPOINTS or ~/.cache/finesam, else download)")
    parser.add_argument("--decoder-checkpoint", help="decoder weights file (Pi-SAM models)")
    parser.add_argument("--random-weights", action="store_true", help="seeded random weights: checks the pipeline only")
    parser.add_argument("--data", required=True, nargs="+", action="extend", metavar="NAME=PATH",
                        help="data set(s): NAME picks the layout when known (DIS-VD, COIFT, HRSOD-TE, ThinObject5K-TE, "
                             "UHRSD-TE, ECSSD, DUTS-TE, BIG-val, GrabCut, ...), else it is detected from the folder")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS, help="evaluation protocol")
    parser.add_argument("--out", required=True, help="output folder (resumed when it holds a run with the same settings)")
    parser.add_argument("--limit", type=int, help="first N images (by name) of each data set")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default auto: CUDA, then MPS, then the CPU)")
    parser.add_argument("--no-hce", action="store_true", help="skip the human correction effort (slow on large masks)")
    parser.add_argument("--hq-output", default="hq_only", choices=HQ_OUTPUTS,
                        help="HQ models: which logits (default hq_only, as HQ-SAM's evaluation)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts (noisy-box, points, pi-clicks)")
    parser.add_argument("--max-clicks", type=int, default=20, help="clicks protocol: clicks per image (default 20)")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _load_model(args: argparse.Namespace):
    options = {"device": args.device}
    if args.decoder_checkpoint:  # Pi-SAM's second file; passed only when given
        options["decoder_checkpoint"] = args.decoder_checkpoint
    if args.random_weights:
        if args.checkpoint:
            raise InvalidInputError("--random-weights and --checkpoint exclude each other")
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
    return load(args.model, args.checkpoint, random_weights=args.random_weights, **options)


def _protocol_options(args: argparse.Namespace) -> dict:
    options = {"hq_output": args.hq_output, "seed": args.seed}
    if args.protocol == "clicks":
        options["max_clicks"] = args.max_clicks
    return options


def _open_datasets(specs) -> list:
    datasets = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for spec in specs:
            datasets.append(open_dataset(spec))
    for warning in caught:
        print(f"finesam eval: warning: {warning.message}", file=sys.stderr)
    names = [d.name for d in datasets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"data set name(s) {', '.join(duplicates)} given twice; give each --data a distinct NAME=")
    return datasets


def run(args: argparse.Namespace) -> int:
    """Run ``finesam eval``; returns the exit code (0 ok, 2 bad input, 130 interrupted). Settings,
    the output folder, the data sets and the model are checked before anything is written."""
    started = time.perf_counter()
    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
    check_output_dir(args.out)
    resolve_device(args.device)
    get_spec(args.model)
    if not args.no_hce:
        require("skimage.morphology", "finesam eval's human correction effort (HCE; skip it with --no-hce)")
    protocol = make_protocol(args.protocol, **_protocol_options(args))
    datasets = _open_datasets(args.data)
    model = _load_model(args)
    predictor = SamPredictor(model)
    protocol.check(predictor)
    run_info = {"model": args.model, "checkpoint": args.checkpoint, "decoder_checkpoint": args.decoder_checkpoint,
                "random_weights": bool(args.random_weights)}
    try:
        summary = evaluate(predictor, datasets, protocol, args.out, limit=args.limit, hce=not args.no_hce,
                           run_info=run_info, overwrite=args.overwrite, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\nfinesam eval: interrupted; rerun the same command to resume from {args.out}/per_image.csv",
              file=sys.stderr)
        return 130
    with open(f"{args.out}/table.md", encoding="utf-8") as table:
        print(table.read())
    images = sum(d["images"] for d in summary["datasets"].values())
    print(f"wrote {args.out}/: per_image.csv, summary.json, table.md and plots ({images} images, "
          f"{len(summary['skipped'])} skipped, {time.perf_counter() - started:.1f} s)")
    if args.random_weights:
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}")
    return 0
