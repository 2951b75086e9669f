"""``finesam serve --model NAME [--images DIR]``: the local browser tool for interactive segmentation.

Starts the app of :mod:`finesam.server.app` under uvicorn (the ``serve`` extra) and prints its URL.
"""

from __future__ import annotations

import argparse
import sys

from ..devices import resolve_device
from ..modeling.contracts.decoder_api import HQ_OUTPUTS
from ..optional import require
from ..registry import get_spec
from .http_options import add_http_options, check_http_options, shown_address
from .model_options import add_model_options, check_model_options, load_model


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to an ``argparse`` sub-parsers object."""
    parser = subparsers.add_parser("serve", help="a local web page to segment objects with a box and clicks")
    add_model_options(parser, random_weights_check="checks the tool")
    parser.add_argument("--images", metavar="DIR",
                        help="a folder of images to annotate; annotations are written to DIR/finesam-annotations/ (resumable)")
    add_http_options(parser, default_port=8000)
    parser.add_argument("--max-upload-mb", type=float, default=50, help="largest upload accepted (default 50 MB)")
    parser.add_argument("--hq-output", choices=HQ_OUTPUTS, help="HQ models: the initial output mode (changeable in the page)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``finesam serve`` until interrupted; returns the exit code."""
    check_http_options(args, size_limit_option="--max-upload-mb", size_limit=args.max_upload_mb)
    check_model_options(args)
    require("fastapi", "finesam serve", "serve")  # both refused before the model loads
    uvicorn = require("uvicorn", "finesam serve", "serve")
    from ..server.app import create_app, is_loopback
    from ..server.annotations import ImageFolder

    if args.images is not None:
        ImageFolder(args.images)  # refuse a missing folder before loading the model
    get_spec(args.model).capabilities.check_output_mode(args.hq_output, "--hq-output", args.model)
    device = resolve_device(args.device)
    model = load_model(args, device)
    # On loopback, only loopback host names: a web page that rebinds its own name to 127.0.0.1 is refused.
    # (IPv6 literals are left out: Starlette's check cuts the Host header at the first colon.)
    hosts = ["127.0.0.1", "localhost", args.host] if is_loopback(args.host) and ":" not in args.host else None
    app = create_app(model, model_name=args.model, images_dir=args.images, cache_mb=args.cache_mb,
                     max_upload_mb=args.max_upload_mb, hq_output=args.hq_output, random_weights=args.random_weights,
                     allowed_hosts=hosts)
    if not is_loopback(args.host):
        print(f"WARNING: bound to {args.host}: anyone who can reach this address can use the model and "
              "read and write the images folder; there is no login. Use --host 127.0.0.1 unless you mean it.",
              file=sys.stderr)
    print(f"finesam serve: {args.model} on http://{shown_address(args.host, args.port)}/ (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
