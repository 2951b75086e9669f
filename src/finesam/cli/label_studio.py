"""``finesam label-studio --model NAME [--checkpoint FILE] [--port 9090]``: a Label Studio ML backend.

Label Studio (Settings > Model > Connect Model, "Interactive preannotations" on) calls it with the
clicks and boxes of smart KeyPointLabels / RectangleLabels tags and shows the brush mask it returns.
Starts the app of :mod:`finesam.label_studio.app` under uvicorn (the ``serve`` extra).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..devices import resolve_device
from ..errors import InvalidInputError
from ..optional import require
from ..registry import get_spec
from .http_options import add_http_options, check_http_options, shown_address
from .model_options import add_model_options, check_model_options, load_model

EPILOG = """\
examples:
  finesam label-studio --model hq_vit_b --checkpoint sam_hq_vit_b.pth --port 9090
  finesam label-studio --model pi_vit_b --checkpoint sam_vit_b_01ec64.pth --decoder-checkpoint pi_sam_b.pth

environment:
  LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY   where Label Studio runs and a user's legacy API token, to download
                                           task images (default: what Label Studio sends when it connects)
  BASIC_AUTH_USER, BASIC_AUTH_PASS         defaults of --basic-auth-user / --basic-auth-pass
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``label-studio`` sub-command to an ``argparse`` sub-parsers object."""
    parser = subparsers.add_parser(
        "label-studio", help="a Label Studio ML backend: brush masks from clicks and boxes",
        description="Serve a model as a Label Studio ML backend for interactive segmentation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, random_weights_check="checks the connection")
    parser.add_argument("--auto", action="store_true",
                        help="tasks without prompts (Retrieve predictions) get every object from the automatic mask generator")
    parser.add_argument("--points-per-side", type=int, default=32, metavar="N", help="--auto: a grid of N x N points (default 32)")
    parser.add_argument("--root", metavar="DIR", help="read tasks' local file paths, only those under DIR")
    parser.add_argument("--allow-host", action="append", default=[], metavar="HOST[:PORT]",
                        help="also download task images from this host (repeatable); Label Studio's own host is always allowed")
    parser.add_argument("--basic-auth-user", default=os.environ.get("BASIC_AUTH_USER"),
                        help="require HTTP basic auth with this user (default $BASIC_AUTH_USER)")
    parser.add_argument("--basic-auth-pass", default=os.environ.get("BASIC_AUTH_PASS"),
                        help="and this password (default $BASIC_AUTH_PASS)")
    add_http_options(parser, default_port=9090)
    parser.add_argument("--max-image-mb", type=float, default=100, help="largest image download (default 100 MB)")
    return parser


def _label_studio_host():
    """Label Studio's URL and token from the environment, or None."""
    from ..label_studio.images import LabelStudioHost

    url = os.environ.get("LABEL_STUDIO_URL", "").strip()
    token = os.environ.get("LABEL_STUDIO_API_KEY", "").strip() or None
    if not url:
        if token:
            raise InvalidInputError("LABEL_STUDIO_API_KEY is set without LABEL_STUDIO_URL: set both (e.g. "
                                    "LABEL_STUDIO_URL=http://localhost:8080), or neither to use what Label Studio sends")
        return None
    return LabelStudioHost.parse(url, token, source="LABEL_STUDIO_URL")


def run(args: argparse.Namespace) -> int:
    """Run ``finesam label-studio`` until interrupted; returns the exit code."""
    check_http_options(args, size_limit_option="--max-image-mb", size_limit=args.max_image_mb)
    if bool(args.basic_auth_user) != bool(args.basic_auth_pass):
        raise InvalidInputError("give both --basic-auth-user and --basic-auth-pass (or $BASIC_AUTH_USER and $BASIC_AUTH_PASS), or neither")
    if args.points_per_side < 1:
        raise InvalidInputError(f"--points-per-side must be at least 1, got {args.points_per_side}")
    check_model_options(args)
    require("fastapi", "finesam label-studio", "serve")  # both refused before the model loads
    uvicorn = require("uvicorn", "finesam label-studio", "serve")
    from ..label_studio.app import create_app
    from ..label_studio.backend import Backend
    from ..label_studio.images import ImageReader
    from ..predict.automatic_mask_generator import AutomaticMaskGenerator
    from ..server.app import is_loopback
    from ..server.cache import FeatureCache

    host = _label_studio_host()
    reader = ImageReader(args.root, tuple(args.allow_host), max_bytes=int(args.max_image_mb * 1e6))
    if args.auto:
        with torch.device("meta"):  # refuse a model without point prompts (Pi-SAM) before loading it
            AutomaticMaskGenerator(get_spec(args.model).build(), points_per_side=args.points_per_side)
    device = resolve_device(args.device)
    model = load_model(args, device)
    generator = AutomaticMaskGenerator(model, points_per_side=args.points_per_side) if args.auto else None
    backend = Backend(model, args.model, reader, FeatureCache(int(args.cache_mb * 1e6)), host=host,
                      auto_generator=generator, random_weights=args.random_weights)
    basic_auth = (args.basic_auth_user, args.basic_auth_pass) if args.basic_auth_user else None
    app = create_app(backend, basic_auth=basic_auth, bind_host=args.host)
    if not is_loopback(args.host) and basic_auth is None:
        print(f"WARNING: bound to {args.host} without --basic-auth-user/--basic-auth-pass: anyone who can reach this "
              "address can use the model and make it download from Label Studio with its token", file=sys.stderr)
    print(f"finesam label-studio: {args.model} on http://{shown_address(args.host, args.port)} (connect it in Label Studio's project "
          "settings > Model; Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
