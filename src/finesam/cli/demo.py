"""`make demo`: segment bundled photographs (scikit-image) and ../shared/data/demo when present.

    python -m finesam.cli.demo [--model hq_vit_tiny] [--checkpoint F | --random-weights] [--out demo-output]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ..data.images import read_image
from ..errors import FinesamError
from ..optional import require
from ..predict.predictor import SamPredictor
from . import EXIT_USAGE
from .model_options import RANDOM_WEIGHTS_WARNING, add_model_options, load_model
from .segment import Prompts, segment, write_outputs

# Prompts chosen for scikit-image's bundled photographs (pixels of the original image).
SKIMAGE_JOBS = [
    ("astronaut_objects", "astronaut", Prompts(boxes=[[352, 0, 465, 282], [276, 342, 511, 511]])),
    ("astronaut_face", "astronaut", Prompts(points=[[225, 120]], labels=[1])),
    ("coffee_cup", "coffee", Prompts(boxes=[[172, 18, 410, 300]])),
    ("coffee_spoon", "coffee", Prompts(points=[[366, 285], [395, 100]], labels=[1, 1])),
    ("chelsea_cat", "chelsea", Prompts(points=[[260, 240], [440, 200]], labels=[1, 0])),
]

# The public HQ-SAM demo prompts for ../shared/data/demo (see its README).
SHARED_DEMO_JOBS = [
    ("example0", Prompts(boxes=[[4, 13, 1007, 1023]])),
    ("example1", Prompts(boxes=[[306, 132, 925, 893]])),
    ("example4", Prompts(boxes=[[64, 76, 940, 919]])),
    ("example6", Prompts(boxes=[[181, 196, 757, 495]])),
    ("example7", Prompts(boxes=[[45, 260, 515, 470], [310, 228, 424, 296]])),
    ("example2", Prompts(points=[[495, 518], [217, 140]], labels=[1, 1])),
    ("example3", Prompts(points=[[221, 482], [498, 633], [750, 379]], labels=[1, 1, 1])),
    ("example5", Prompts(points=[[373, 363], [452, 575]], labels=[1, 1])),
]

# The project's shared data sits beside the checkout; `make demo` runs from the repository root.
SHARED_DEMO_DIR = Path("..") / "shared" / "data" / "demo"


def demo_jobs(shared_dir: Path = SHARED_DEMO_DIR) -> Iterator[tuple[str, np.ndarray, Prompts]]:
    """(name, image, prompts) for every demo input available on this machine."""
    skimage_data = require("skimage.data", "the demo's bundled photographs", extra="demo")
    for name, image_name, prompts in SKIMAGE_JOBS:
        yield name, getattr(skimage_data, image_name)(), prompts
    if shared_dir.is_dir():
        for stem, prompts in SHARED_DEMO_JOBS:
            yield stem, read_image(shared_dir / f"{stem}.png"), prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finesam-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, decoder=False, device=False)
    parser.add_argument("--out", default="demo-output")
    parser.add_argument("--shared-demo", type=Path, default=SHARED_DEMO_DIR, help="extra demo images (used when present)")
    args = parser.parse_args(argv)
    try:
        require("skimage.data", "the demo's bundled photographs", extra="demo")
        model = load_model(args)
    except (FinesamError, ValueError) as error:  # a missing or damaged checkpoint, the extra, an unknown model
        print(f"finesam demo: {error}", file=sys.stderr)
        print("finesam demo: to check the pipeline without weights, run `make demo DEMO_ARGS=--random-weights`", file=sys.stderr)
        return EXIT_USAGE
    banner = RANDOM_WEIGHTS_WARNING if args.random_weights else None
    predictor = SamPredictor(model)
    out = Path(args.out)
    count = 0
    for name, image, prompts in demo_jobs(args.shared_demo):
        start = time.perf_counter()
        predictor.set_image(image)
        masks = segment(predictor, prompts)
        write_outputs(image, masks, prompts, out / f"{name}_mask.png", out / f"{name}_overlay.png", banner)
        count += 1
        print(f"{name}: {image.shape[1]}x{image.shape[0]}, {len(masks)} object(s), {time.perf_counter() - start:.2f} s")
    print(f"wrote {count} masks and overlays under {out}/ with {args.model}")
    if banner:
        print(f"WARNING: {banner}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
