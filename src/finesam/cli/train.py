"""``finesam train``: the HQ-SAM recipe and the two Pi-SAM stages on a frozen SAM, and
MobileSAM-style encoder distillation (``--recipe distill``).

    finesam train --recipe hq --model hq_vit_b --init sam_vit_b_01ec64.pth \\
        --data DIS5K-TR=/data/DIS5K --data ThinObject5K-TR=/data/thin_object_detection/ThinObject5K ... \\
        --out runs/hq_b
    torchrun --nproc-per-node 8 -m finesam train ...     (DDP: NCCL on GPUs, gloo on CPUs)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.layouts import parse_spec
from ..errors import InvalidInputError
from ..registry import model_names
from ..train.engine import LAST, LOSS_PLOT, METRICS, TrainConfig, train
from ..train.final_checkpoint import FINAL, FINAL_DECODER
from ..train.recipes import RECIPES
from .model_options import add_device_option

EPILOG = f"""recipes (official defaults; every one can be overridden):
{chr(10).join(f"  {r.name:10} {r.description}; lr {r.lr:g}, {r.epochs} epochs, batch {r.batch_size}/process, "
              f"{'x0.1 at epoch ' + str(r.lr_drop_epochs) if r.schedule == 'step' else 'cosine schedule'}; "
              + (f"prompts {'/'.join(r.prompt_kinds)}; LSJ {r.scale_range[0]}-{r.scale_range[1]}" if not r.distills
                 else "images only (flip, resized as at inference)") for r in RECIPES.values())}

distill: finesam train --recipe distill --model mobile_sam --teacher sam_vit_h --teacher-checkpoint sam_vit_h_4b8939.pth \
    --data SA1B=DIR --cache-features CACHE --out runs/mobile    (final.pth: a MobileSAM file; metrics.jsonl: loss = embedding
MSE, and with --val val_embedding_mse and val_mask_iou, the student's masks vs the teacher's on ground-truth boxes)

--out DIR receives run.json (the settings, seed included), {METRICS} (one JSON object per step: step, epoch,
loss, bce, dice, lr, and val_* after validations), {LAST} (trainable weights, optimizer, scheduler and sampler
position: --resume continues from it exactly, and refuses other settings or another --init file), {LOSS_PLOT}, and at the end {FINAL} (official layout: an HQ-SAM file that segment_anything_hq
loads strictly; for Pi-SAM the whole model including rgb_embed) and, for Pi-SAM, {FINAL_DECODER} (the official
decoder file format). Pi stage 2 starts from stage 1's {FINAL}: --init runs/stage1/{FINAL}.

multi-process: torchrun --nproc-per-node N -m finesam train ...  (--batch-size is per process; every random
draw derives from (seed, epoch, sample), so N processes x batch B equal one process x batch N*B)."""


def _named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` (a bare PATH is named after its folder)."""
    return parse_spec(text)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parsers object."""
    parser = subparsers.add_parser(
        "train", help="train HQ-SAM or Pi-SAM parts on a frozen SAM, or distil a MobileSAM encoder (one CPU or many GPUs with torchrun)",
        description="Train the new parameters of HQ-SAM (--recipe hq) or Pi-SAM (--recipe pi-stage1, then pi-stage2) "
                    "on a frozen SAM, with the official recipes' data augmentation, prompts, loss and schedules; or distil "
                    "a TinyViT image encoder from a SAM teacher's embeddings (--recipe distill, MobileSAM-style).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", required=True, choices=tuple(RECIPES), help="what to train (see below)")
    parser.add_argument("--model", required=True, metavar="NAME",
                        help=f"model to train: an hq_* model for --recipe hq, a pi_* model for the Pi stages, mobile_sam for distill "
                             f"({', '.join(model_names())})")
    start = parser.add_mutually_exclusive_group()  # one is required except for distill (checked with the other options)
    start.add_argument("--init", type=Path, metavar="FILE",
                       help="weights to start from: a SAM/MobileSAM file (new HQ/Pi layers are initialised), an HQ-SAM file, "
                            "or a finesam file (e.g. stage 1's final.pth for pi-stage2); distill: the student's starting "
                            "weights (default: a TinyViT drawn from --seed)")
    start.add_argument("--random-weights", action="store_true",
                       help="a seeded random frozen base instead of --init (pipeline checks; the frozen SAM is meaningless)")
    parser.add_argument("--init-decoder", "--decoder-checkpoint", dest="init_decoder", type=Path, metavar="FILE",
                        help="a decoder-only file beside a SAM --init, in official names: the official HQ-SAM training "
                             "output (epoch_N.pth) or Pi-SAM's decoder file ({'model_state_dict': ...}); its keys replace "
                             "the SAM file's mask_decoder.* keys")
    parser.add_argument("--teacher", default="sam_vit_h", metavar="NAME",
                        help="distill: the teacher model whose embeddings the student learns (default sam_vit_h)")
    parser.add_argument("--teacher-checkpoint", type=Path, metavar="FILE", help="distill: the teacher's weights (required)")
    parser.add_argument("--data", required=True, action="append", type=_named_path, metavar="NAME=PATH",
                        help="training set, repeatable: DIS5K-TR, ThinObject5K-TR, FSS-1000, DUTS-TR, DUTS-TE, ECSSD, MSRA-10K, "
                             "HRSOD-TR, UHRSD-TR, or any folder with im/ + gt/ (NAME picks the layout and split); distill: "
                             "also a plain folder of images")
    parser.add_argument("--val", action="append", type=_named_path, default=[], metavar="NAME=PATH",
                        help="validation set, repeatable: mIoU and mBIoU of the recipe's output, logged to metrics.jsonl")
    parser.add_argument("--val-every", type=int, default=0, metavar="STEPS", help="validate every N steps (default 0: each epoch's end)")
    parser.add_argument("--val-limit", type=int, metavar="N", help="first N images of each validation set")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (see below)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="epochs (default: the recipe's, 12 for hq, 100 for the Pi stages)")
    length.add_argument("--max-steps", type=int, help="stop after N optimiser steps (the schedule still counts epochs)")
    parser.add_argument("--batch-size", type=int, help="images per process per step (default 4)")
    parser.add_argument("--accumulate", type=int, default=1, metavar="K", help="gradient accumulation: one optimiser step per K batches")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-3, Adam)")
    parser.add_argument("--lr-drop-epoch", type=int, metavar="E",
                        help="hq recipe: multiply the lr by 0.1 every E epochs (default 10); Pi stages use a cosine schedule")
    parser.add_argument("--trainable", nargs="+", default=[], metavar="PREFIX",
                        help="train these state-dict prefixes instead of the recipe's (official or finesam names), "
                             "e.g. 'mask_decoder.' for the whole decoder in domain fine-tuning")
    parser.add_argument("--seed", type=int, default=42, help="seed of every random draw (default 42)")
    parser.add_argument("--save-every", type=int, default=0, metavar="STEPS", help="write last.pt every N steps (default 0: each epoch's end)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt, exactly where it stopped")
    parser.add_argument("--cache-features", type=Path, metavar="DIR",
                        help="compute the frozen encoder's outputs once per image and view, store them in DIR and reuse them")
    parser.add_argument("--cached-views", type=int, default=1, metavar="K", help="augmented views cached per image (default 1)")
    parser.add_argument("--cache-dtype", default="float16", choices=("float16", "bfloat16"), help="storage dtype of cached features")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPUs; CPUs with AMX or AVX512-BF16)")
    add_device_option(parser)
    parser.add_argument("--workers", type=int, help="data-loader processes (default: the official heuristic, bounded by the CPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        recipe=args.recipe, model=args.model, out=args.out, data=args.data, init=args.init, init_decoder=args.init_decoder,
        random_weights=args.random_weights, val=args.val, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, save_every=args.save_every, resume=args.resume,
        cache_features=args.cache_features, cached_views=args.cached_views, cache_dtype=args.cache_dtype, bf16=args.bf16,
        accumulate=args.accumulate, lr_drop_epoch=args.lr_drop_epoch, val_every=args.val_every, val_limit=args.val_limit, trainable=tuple(args.trainable),
        device=args.device, workers=args.workers, progress=not args.quiet,
        teacher=args.teacher, teacher_checkpoint=args.teacher_checkpoint,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``finesam train``; refusals raise :class:`~finesam.errors.FinesamError` before any work."""
    if args.random_weights and args.init_decoder:
        raise InvalidInputError("--init-decoder goes with --init, not with --random-weights")
    result = train(config_from_args(args))
    if result.files and str(result.out):
        validation = ", ".join(f"{name} {value:.4f}" for name, value in result.validation.items() if name != "images")
        print(f"{result.steps} steps; loss {result.first_loss:.4f} -> {result.last_loss:.4f}"
              + (f"; validation {validation}" if validation else ""))
        print("wrote " + ", ".join(str(path) for path in result.files), file=sys.stdout)
    return 0
