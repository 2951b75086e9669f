"""Peak memory (max RSS, model and imports included) of read_image + set_image + predict on an
8000x6000 photograph, finesam vs the official code.

    python benchmarks/bench_memory.py [--models mobile_sam,sam_vit_b] [--size 8000x6000] [--source PHOTO]
                                      [--python OTHER_VENV/bin/python ...]

``--python`` adds rows measured with another interpreter (finesam installed there), e.g. a venv
with a CPU-only torch build: importing the CUDA build of torch alone takes ~510 MB of RSS, the
CPU build ~220 MB, and that floor is part of every process's peak. The official code is measured
where its package imports (it needs torchvision through timm).

The photo (default: the DIS5K pavilion, 2748x2658) is resized with PIL to ``--size`` and saved
as a JPEG (quality 90) in a temporary folder. Every case runs in a fresh Python process, so its
max RSS (``VmHWM``) is its own: import torch, build the model (seeded random weights), read the
JPEG (finesam: ``read_image``; official: the usual ``np.array(Image.open(path).convert("RGB"))``),
``set_image``, one box ``predict`` (single mask; ``multi``: three masks). Prints the RSS after
``import torch`` (the floor no code can go below), after the model, and the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common import DEFAULT_IMAGE, memory_mb, official_predictor, run_memory_case  # benchmarks/ is on sys.path as a script


def child(model_name: str, impl: str, path: str, multimask: bool) -> None:
    """One case in this (fresh) process; prints one JSON line."""
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    result = {"import_mb": memory_mb("VmRSS"), "torch": torch.__version__}
    if impl == "official":
        predictor, extra = official_predictor(model_name)
    else:
        import finesam

        predictor, extra = finesam.SamPredictor(finesam.load(model_name, random_weights=True)), {}
    result["model_mb"] = memory_mb("VmRSS")
    start = time.perf_counter()
    if impl == "official":
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        image = np.array(Image.open(path).convert("RGB"))
    else:
        from finesam.data.images import read_image

        image = read_image(path)
    result["read_peak_mb"] = memory_mb("VmHWM")
    predictor.set_image(image)
    result["set_image_peak_mb"] = memory_mb("VmHWM")
    height, width = image.shape[:2]
    box = np.array([0.2 * width, 0.2 * height, 0.8 * width, 0.8 * height])
    masks, _, _ = predictor.predict(box=box, multimask_output=multimask, **extra)
    result.update(seconds=time.perf_counter() - start, peak_mb=memory_mb("VmHWM"), masks=list(masks.shape),
                  mask_dtype=str(masks.dtype))
    print(json.dumps(result))


def official_importable(python: str) -> bool:
    done = subprocess.run([python, "-c", "import segment_anything_hq"], capture_output=True)
    return done.returncode == 0


def make_photo(source: Path, size: tuple[int, int], folder: Path) -> Path:
    from PIL import Image

    path = folder / f"photo_{size[0]}x{size[1]}.jpg"
    with Image.open(source) as photo:
        photo.convert("RGB").resize(size, Image.BICUBIC).save(path, quality=90)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobile_sam,sam_vit_b")
    parser.add_argument("--size", default="8000x6000", help="WIDTHxHEIGHT of the photograph")
    parser.add_argument("--source", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--python", action="append", default=[], metavar="INTERPRETER",
                        help="also measure with this Python (repeatable), e.g. a venv with a CPU-only torch")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "IMPL", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--multimask", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, multimask=args.multimask)
        return
    if not args.source.is_file():
        raise SystemExit(f"{args.source} not found: pass --source PHOTO")
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(f"{os.cpu_count()} CPU threads; {args.source.name} resized to {width}x{height}; max RSS per fresh process")
    header = f"{'torch':<12} {'model':<11} {'impl':<9} {'masks':<6} {'import MB':>9} {'+model MB':>9} {'read peak':>9} {'set_image peak':>14} {'peak MB':>8} {'s':>6}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        path = make_photo(args.source, (width, height), Path(folder))
        for python in [sys.executable] + args.python:
            with_official = official_importable(python)
            for model_name in args.models.split(","):
                cases = ([("official", False)] if with_official else []) + [("ours", False)]
                cases += [("ours", True)] if model_name == "mobile_sam" else []
                for impl, multimask in cases:
                    r = run_memory_case(model_name, impl, path, multimask, python)
                    print(f"{r['torch']:<12} {model_name:<11} {impl:<9} {3 if multimask else 1:<6} {r['import_mb']:>9.0f} {r['model_mb']:>9.0f} "
                          f"{r['read_peak_mb']:>9.0f} {r['set_image_peak_mb']:>14.0f} {r['peak_mb']:>8.0f} {r['seconds']:>6.1f}",
                          flush=True)


if __name__ == "__main__":
    main()
