"""The options of every command that loads a model, and the loading itself, in one place:
``--model``, ``--checkpoint``, ``--decoder-checkpoint``, ``--random-weights`` and ``--device``
(:func:`add_model_options`), refused together where they exclude each other and loaded by
:func:`load_model`. ``finesam train`` starts from ``--init`` instead and takes only
:func:`add_device_option` from here."""

from __future__ import annotations

import argparse
import sys

from ..devices import DEVICE_CHOICES
from ..errors import InvalidInputError
from ..loading import load
from ..registry import model_names

#: The model of the commands that have a default one.
DEFAULT_MODEL = "hq_vit_tiny"
#: Printed (stderr) when random weights are loaded, and drawn on the outputs of segment and the demo.
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: these masks are meaningless (pipeline check only)"


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default auto)."""
    parser.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default auto: CUDA, then MPS, then the CPU)")


def add_model_options(parser: argparse.ArgumentParser, *, default_model: str | None = DEFAULT_MODEL,
                      random_weights_check: str = "checks the pipeline", decoder: bool = True, device: bool = True) -> None:
    """``--model`` (required when ``default_model`` is None), ``--checkpoint``,
    ``--decoder-checkpoint`` (unless ``decoder`` is False), ``--random-weights`` (its help ends
    with what random weights are for: ``random_weights_check``) and ``--device`` (unless
    ``device`` is False)."""
    names = f"{', '.join(model_names())}, or one added with finesam.register_model"
    if default_model is None:
        parser.add_argument("--model", required=True, metavar="NAME", help=f"model name: {names}")
    else:
        parser.add_argument("--model", default=default_model, metavar="NAME", help=f"model name (default {default_model}): {names}")
    parser.add_argument("--checkpoint", help="weights file (default: $FINESAM_CHECKPOINTS or ~/.cache/finesam, else download)")
    if decoder:
        parser.add_argument("--decoder-checkpoint", metavar="FILE",
                            help="Pi-SAM models: the official decoder file (beside --checkpoint)")
    parser.add_argument("--random-weights", action="store_true",
                        help=f"seeded random weights, as finesam.load(NAME, random_weights=True): {random_weights_check}, "
                             "masks are meaningless")
    if device:
        add_device_option(parser)


def check_model_options(args: argparse.Namespace) -> None:
    """Refuse ``--random-weights`` with a weights file (before any work; :func:`load_model` checks it too)."""
    if args.random_weights and (args.checkpoint or vars(args).get("decoder_checkpoint")):
        raise InvalidInputError("--random-weights and --checkpoint / --decoder-checkpoint exclude each other")


def load_model(args: argparse.Namespace, device: str = "cpu", *, warn: bool = True):
    """The model of the options of :func:`add_model_options`, on ``device``. Random weights are
    those of ``finesam.load(name, random_weights=True)`` (seed :data:`finesam.RANDOM_WEIGHTS_SEED`),
    so runs are repeatable; with ``warn`` (default) they are announced on stderr."""
    check_model_options(args)
    if args.random_weights and warn:
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
    options = {"decoder_checkpoint": args.decoder_checkpoint} if vars(args).get("decoder_checkpoint") else {}
    return load(args.model, args.checkpoint, random_weights=args.random_weights, device=device, **options)
