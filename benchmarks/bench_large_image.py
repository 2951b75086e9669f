"""The largest image finesam accepts by default: time and peak memory, finesam vs the official code.

    python benchmarks/bench_large_image.py [--source PHOTO] [--max-pixels N] [--repeats 1]

A real photo (the first of ../shared/data/dis5k_samples/im/, else a synthetic one) is upscaled
with PIL to the largest size of its aspect ratio within the pixel limit (default
``finesam.data.images.MAX_IMAGE_PIXELS``), saved as a JPEG (quality 90) and as a raw ``.npy``.
Each measurement runs in a fresh process, so that its peak memory (max RSS) is its own:

- ``segment``: ``set_image`` + one box ``predict`` (single mask) of MobileSAM with random
  weights, finesam (``finesam.load("mobile_sam", random_weights=True)``) and the official
  baseline predictor of ``segment_anything_hq`` (``sam_model_registry_baseline["vit_tiny"]``),
  on the same array (loaded from the ``.npy``); both predictors are warmed up on a small image;
- ``read``: reading the JPEG, finesam's ``read_image`` vs the plain PIL recipe
  (``np.array(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))``, PIL's bomb check off).

Prints seconds, the peak RSS of the process and the peak growth of the RSS during the measured
step (over the RSS before it: model, image array, imports), and the ratios official / finesam
(> 1: finesam is faster or smaller).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from queue import Empty

import numpy as np

from common import memory_mb  # benchmarks/ is on sys.path when run as a script

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dis5k_samples" / "im"


def reset_peak() -> None:
    """Start a new peak-RSS measurement at the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def largest_size(width: int, height: int, limit: int) -> tuple[int, int]:
    """The largest (width, height) of this aspect ratio with width * height <= limit."""
    scale = math.sqrt(limit / (width * height))
    new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
    while new_w * new_h > limit:
        new_w -= 1
    return new_w, new_h


def make_inputs(source: Path | None, limit: int, folder: Path) -> tuple[Path, Path, tuple[int, int], str]:
    from PIL import Image

    if source is not None and source.is_file():
        photo = Image.open(source).convert("RGB")
        name = source.name
    else:
        photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8))
        name = "synthetic noise"
    size = largest_size(*photo.size, limit)
    big = photo.resize(size, Image.BICUBIC)
    jpeg, raw = folder / "large.jpg", folder / "large.npy"
    big.save(jpeg, quality=90)
    np.save(raw, np.asarray(big))
    del big
    return jpeg, raw, size, f"{name} {photo.size[0]}x{photo.size[1]}"


def box_for(height: int, width: int) -> np.ndarray:
    return np.array([width * 0.2, height * 0.2, width * 0.8, height * 0.8])


def measure(kind: str, impl: str, path: str, repeats: int, queue) -> None:
    """Runs in a child process; puts the timings and memory on ``queue``."""
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    result: dict = {}
    if kind == "read":
        from PIL import Image, ImageOps

        from finesam.data.images import read_image

        setup_peak, before = memory_mb("VmHWM"), memory_mb("VmRSS")
        reset_peak()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            if impl == "ours":
                image = read_image(path)
            else:
                Image.MAX_IMAGE_PIXELS = None  # the plain recipe would warn at this size
                with Image.open(path) as stored:
                    image = np.array(ImageOps.exif_transpose(stored).convert("RGB"))
            times.append(time.perf_counter() - start)
            result["shape"] = image.shape
            del image
    else:
        image = np.load(path)
        height, width = image.shape[:2]
        if impl == "official":
            import segment_anything_hq
            from segment_anything_hq.build_sam_baseline import (
                sam_model_registry_baseline,
            )

            torch.manual_seed(0)
            predictor = segment_anything_hq.SamPredictor(sam_model_registry_baseline["vit_tiny"]().eval())
            extra = {"hq_token_only": False}
        else:
            import finesam

            predictor = finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))
            extra = {}
        small = np.ascontiguousarray(image[:480, :640])  # warm-up: one-time costs are not measured
        predictor.set_image(small)
        predictor.predict(box=box_for(*small.shape[:2]), multimask_output=False, **extra)
        setup_peak, before = memory_mb("VmHWM"), memory_mb("VmRSS")
        reset_peak()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.set_image(image)
            masks, _, _ = predictor.predict(box=box_for(height, width), multimask_output=False, **extra)
            times.append(time.perf_counter() - start)
            result["shape"] = masks.shape
            del masks
    step_peak = memory_mb("VmHWM")
    result.update({"seconds": statistics.median(times), "peak_mb": max(setup_peak, step_peak),
                   "step_mb": step_peak - before})
    queue.put(result)


def run(kind: str, impl: str, path: Path, repeats: int) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(kind, impl, str(path), repeats, queue))
    process.start()
    while True:  # a child that died (e.g. killed for memory) must not hang the benchmark
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                raise SystemExit(f"{kind} {impl}: the benchmark process failed (exit code {process.exitcode})")
    process.join()
    return result


def main() -> None:
    from finesam.data.images import MAX_IMAGE_PIXELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_source = next(iter(sorted(SHARED.glob("*.jpg"))), None) if SHARED.is_dir() else None
    parser.add_argument("--source", type=Path, default=default_source, help="photo to upscale")
    parser.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS, help="pixel limit (default finesam's)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads, {sys.platform}")
    with tempfile.TemporaryDirectory() as tmp:
        jpeg, raw, (width, height), origin = make_inputs(args.source, args.max_pixels, Path(tmp))
        print(f"image: {origin} upscaled to {width}x{height} = {width * height:,} pixels "
              f"(limit {args.max_pixels:,}); JPEG {jpeg.stat().st_size / 1e6:.0f} MB, RGB array {width * height * 3 / 1e6:.0f} MB")
        results = {
            ("segment", "official"): run("segment", "official", raw, args.repeats),
            ("segment", "ours"): run("segment", "ours", raw, args.repeats),
            ("read", "official"): run("read", "official", jpeg, args.repeats),
            ("read", "ours"): run("read", "ours", jpeg, args.repeats),
        }
    header = f"{'step':<32} {'impl':<9} {'seconds':>8} {'peak RSS MB':>12} {'step +MB':>9}  output"
    print(header)
    print("-" * len(header))
    labels = {"segment": "set_image + 1 box predict", "read": "read the JPEG"}
    for (kind, impl), r in results.items():
        name = {"official": "official" if kind == "segment" else "plain PIL", "ours": "finesam"}[impl]
        print(f"{labels[kind]:<32} {name:<9} {r['seconds']:>8.2f} {r['peak_mb']:>12.0f} {r['step_mb']:>9.0f}  {r['shape']}")
    for kind in ("segment", "read"):
        theirs, ours = results[(kind, "official")], results[(kind, "ours")]
        print(f"ratio official / finesam, {labels[kind]}: time {theirs['seconds'] / ours['seconds']:.2f}, "
              f"peak RSS {theirs['peak_mb'] / ours['peak_mb']:.2f}, step memory {theirs['step_mb'] / max(ours['step_mb'], 1):.2f}")


if __name__ == "__main__":
    main()
