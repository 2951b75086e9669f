"""``finesam eval``: evaluate a model with a protocol on data sets; CSV, JSON, Markdown, PNG out.

    finesam eval --model hq_vit_b --checkpoint sam_hq_vit_b.pth \\
        --data DIS-VD=/data/DIS5K/DIS-VD COIFT=/data/thin_object_detection/COIFT \\
        --protocol box --out runs/hq_b_box [--limit N] [--no-hce] [--save-masks]

Rerunning the same command after an interruption resumes: images already in
``OUT/per_image.csv`` are skipped and the summary is recomputed from the stored rows.
Under ``torchrun --nproc-per-node N -m finesam eval ...`` the images are split over the N
processes and rank 0 writes the merged outputs (equal to a one-process run). Every setting is
checked on every rank before the processes connect, so a refusal stops them all alike.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from ..data import DatasetError, open_dataset
from ..devices import resolve_device
from ..distributed import init_distributed, launched_by_torchrun, process_device, shutdown
from ..errors import FinesamError, InvalidInputError
from ..evaluation.protocols import PROTOCOLS, has_output_modes, make_protocol
from ..evaluation.report import RANDOM_WEIGHTS_WARNING
from ..evaluation.runner import MASKS_FOLDER, evaluate
from ..modeling.contracts.decoder_api import HQ_OUTPUTS
from ..optional import require
from ..outputs import check_output_dir
from ..predict.predictor import SamPredictor
from ..registry import get_spec
from .model_options import add_model_options, load_model


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to an ``argparse`` sub-parsers object."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a model on data sets with a paper protocol",
        description="Evaluate a model with one protocol on image/mask data sets. Writes per_image.csv (prompts in "
                    "original-image pixels, boxes x0,y0,x1,y1), curves.npz, summary.json, table.md and PNG plots into "
                    "--out; rerun the same command to resume. Under torchrun --nproc-per-node N the images are split "
                    "over the processes and rank 0 writes the merged outputs.",
    )
    add_model_options(parser, default_model=None)
    parser.add_argument("--data", required=True, nargs="+", action="extend", metavar="NAME=PATH",
                        help="data set(s): NAME picks the layout when known (DIS-VD, COIFT, HRSOD-TE, ThinObject5K-TE, "
                             "UHRSD-TE, ECSSD, DUTS-TE, BIG-val, GrabCut, ...), else it is detected from the folder")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS, help="evaluation protocol")
    parser.add_argument("--out", required=True, help="output folder (resumed when it holds a run with the same settings)")
    parser.add_argument("--limit", type=int, help="first N images (by name) of each data set")
    parser.add_argument("--no-hce", action="store_true", help="skip the human correction effort (slow on large masks)")
    parser.add_argument("--hq-output", choices=HQ_OUTPUTS,
                        help="HQ models only: which logits (default hq_only, as HQ-SAM's evaluation)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts (noisy-box, points, pi-clicks)")
    parser.add_argument("--max-clicks", type=int, default=20, help="clicks protocol: clicks per image (default 20)")
    parser.add_argument("--save-masks", action="store_true",
                        help=f"also write each predicted mask (clicks: after the last click) as a lossless 0/255 PNG: "
                             f"OUT/{MASKS_FOLDER}/DATASET/VARIANT/IMAGE.png")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _protocol_options(args: argparse.Namespace) -> dict:
    options = {"hq_output": args.hq_output or "hq_only", "seed": args.seed}
    if args.protocol == "clicks":
        options["max_clicks"] = args.max_clicks
    return options


def _open_datasets(specs) -> tuple[list, list[str]]:
    """The data sets, and the warnings about them (printed by rank 0 only)."""
    datasets = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for spec in specs:
            datasets.append(open_dataset(spec))
    names = [d.name for d in datasets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"data set name(s) {', '.join(duplicates)} given twice; give each --data a distinct NAME=")
    return datasets, [str(w.message) for w in caught]


def _print_warnings(messages) -> None:
    for message in messages:
        print(f"finesam eval: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run ``finesam eval``; returns the exit code (0 ok, 2 bad input, 130 interrupted).

    Settings, the output folder, the data sets and the model are checked before anything is
    written, and before the processes of a torchrun run connect (every rank checks the same)."""
    started = time.perf_counter()
    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
    check_output_dir(args.out)
    device = resolve_device(args.device)
    get_spec(args.model)
    if not args.no_hce:
        require("skimage.morphology", "finesam eval's human correction effort (HCE; skip it with --no-hce)")
    protocol = make_protocol(args.protocol, **_protocol_options(args))
    datasets, dataset_warnings = _open_datasets(args.data)
    # under torchrun each rank moves the model to its own device once the process group exists
    model = load_model(args, "cpu" if launched_by_torchrun() else device, warn=False)  # rank 0 warns below
    predictor = SamPredictor(model)
    protocol.check(predictor)
    if args.hq_output is not None and not has_output_modes(predictor):
        raise InvalidInputError(f"--hq-output applies to HQ-SAM models; {args.model} has no HQ output: drop the option")
    run_info = {"model": args.model, "checkpoint": args.checkpoint, "decoder_checkpoint": args.decoder_checkpoint,
                "random_weights": bool(args.random_weights)}
    context = init_distributed(device)
    try:
        model.to(process_device(device, context))
        if context.is_main:
            _print_warnings(dataset_warnings)
            if args.random_weights:
                print(f"WARNING: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = evaluate(predictor, datasets, protocol, args.out, limit=args.limit, hce=not args.no_hce,
                               run_info=run_info, overwrite=args.overwrite, progress=not args.quiet,
                               save_masks=args.save_masks, context=context)
        if context.is_main:
            _print_warnings(w.message for w in caught)
    except KeyboardInterrupt:
        if context.is_main:
            print(f"\nfinesam eval: interrupted; rerun the same command to resume from {args.out}/per_image.csv",
                  file=sys.stderr)
        return 130
    except FinesamError:
        if context.is_main:
            raise
        return 2  # rank 0 prints the one line
    finally:
        shutdown(context)
    if not context.is_main:
        return 0
    with open(f"{args.out}/table.md", encoding="utf-8") as table:
        print(table.read())
    images = sum(d["images"] for d in summary["datasets"].values())
    masks = f", {MASKS_FOLDER}/" if args.save_masks else ""
    processes = f", {context.world_size} processes" if context.enabled else ""
    print(f"wrote {args.out}/: per_image.csv, summary.json, table.md, plots{masks} ({images} images, "
          f"{len(summary['skipped'])} skipped{processes}, {time.perf_counter() - started:.1f} s)")
    if args.random_weights:
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}")
    return 0
