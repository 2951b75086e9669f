"""Predictor speed and memory: finesam vs the official packages, in the same run.

    python benchmarks/bench_predictor.py [--models sam_vit_b,mobile_sam,hq_vit_b,hq_vit_tiny] [--repeats 3] [--bf16]

Every (model, implementation) runs in a fresh process, so that peak memory (max RSS) is its own.
Both implementations use the same seeded random weights (saved in the official format and loaded
by ``finesam.load``). Prints the median time of ``set_image`` and of one ``predict`` with a cached
embedding (box prompt, single mask), the first ``predict`` after ``set_image`` (finesam's HQ models
fuse the image features there, once per image), their ratios (official / ours: > 1 means we are faster), and
the HQ overhead over SAM on the same backbone. ``--bf16`` adds our encoder in bfloat16 with its
error against float32.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from queue import Empty

import numpy as np

OFFICIAL = {
    # finesam name: (package, registry, key) for the official model with the same architecture
    "sam_vit_b": ("segment_anything", "sam_model_registry", "vit_b"),
    "sam_vit_h": ("segment_anything", "sam_model_registry", "vit_h"),
    "mobile_sam": ("segment_anything_hq", "sam_model_registry_baseline", "vit_tiny"),
    "hq_vit_b": ("segment_anything_hq", "sam_model_registry", "vit_b"),
    "hq_vit_tiny": ("segment_anything_hq", "sam_model_registry", "vit_tiny"),
}
BOX = np.array([60, 50, 320, 260])


def load_image() -> np.ndarray:
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ecssd" / "im" / "0001.jpg"
    if path.is_file():
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))
    return np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)


def official_model(name: str):
    import importlib

    import torch

    module_name, registry, key = OFFICIAL[name]
    torch.manual_seed(0)
    model = getattr(importlib.import_module(module_name), registry)[key]()
    return model.eval()


def measure(name: str, impl: str, checkpoint: str, repeats: int, queue) -> None:
    """Runs in a child process; puts timings, peak RSS and the box logits on ``queue``."""
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if impl == "official":
        model = official_model(name)
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        model.eval()  # refresh TinyViT's bias cache after loading, as the official README does
        module = __import__(OFFICIAL[name][0])
        predictor = module.SamPredictor(model)
        extra = {"hq_token_only": False} if OFFICIAL[name][0] == "segment_anything_hq" else {}
    else:
        import finesam

        dtype = torch.bfloat16 if impl == "ours-bf16" else torch.float32
        predictor = finesam.SamPredictor(finesam.load(name, checkpoint, dtype=dtype))
        extra = {}
    image = load_image()
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    predictor.set_image(image)  # warm-up
    set_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.set_image(image)
        set_times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    predict_times = []
    for _ in range(3 + 10 * repeats):
        start = time.perf_counter()
        _, _, low = predictor.predict(box=BOX, multimask_output=False, **extra)
        predict_times.append(time.perf_counter() - start)
    queue.put({
        "set_image": statistics.median(set_times),
        "predict": statistics.median(predict_times[3:]),
        "first_predict": predict_times[0],  # pays image-only decoder work (HQ fusion) once
        "model_mb": (loaded_rss - baseline_rss) / 1024,
        "peak_mb": peak_rss / 1024,
        "set_image_mb": (peak_rss - loaded_rss) / 1024,
        "low_res": low,
    })


def run(name: str, impl: str, checkpoint: str, repeats: int) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(name, impl, checkpoint, repeats, queue))
    process.start()
    while True:  # a child that died (e.g. a refused checkpoint) must not hang the benchmark
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                raise SystemExit(f"{impl} {name}: the benchmark process failed (exit code {process.exitcode}), see above")
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sam_vit_b,mobile_sam,hq_vit_b,hq_vit_tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time our encoder in bfloat16")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads, {sys.platform}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            warnings.filterwarnings("ignore")
            checkpoint = os.path.join(tmp, f"{name}.pth")
            torch.save(official_model(name).state_dict(), checkpoint)
            impls = ["official", "ours"] + (["ours-bf16"] if args.bf16 else [])
            results[name] = {impl: run(name, impl, checkpoint, args.repeats) for impl in impls}
            os.remove(checkpoint)

    header = (f"{'model':<12} {'impl':<10} {'set_image s':>11} {'ratio':>6} {'predict ms':>10} {'ratio':>6} "
              f"{'1st pred ms':>11} {'peak MB':>8} {'set_image +MB':>13}")
    print(header)
    print("-" * len(header))
    for name, by_impl in results.items():
        official = by_impl["official"]
        for impl, r in by_impl.items():
            print(
                f"{name:<12} {impl:<10} {r['set_image']:>11.3f} {official['set_image'] / r['set_image']:>6.2f} "
                f"{1000 * r['predict']:>10.1f} {official['predict'] / r['predict']:>6.2f} {1000 * r['first_predict']:>11.1f} {r['peak_mb']:>8.0f} {r['set_image_mb']:>13.0f}"
            )
        if "ours-bf16" in by_impl:
            error = np.abs(by_impl["ours-bf16"]["low_res"] - by_impl["ours"]["low_res"])
            agree = ((by_impl["ours-bf16"]["low_res"] > 0) == (by_impl["ours"]["low_res"] > 0)).mean()
            print(f"{'':<12} bf16 encoder error vs fp32: max |logit diff| {error.max():.4f}, mean {error.mean():.5f}, mask agreement {100 * agree:.3f}%")
    print("ratio = official time / our time (> 1: finesam is faster)")
    for hq, sam in (("hq_vit_b", "sam_vit_b"), ("hq_vit_tiny", "mobile_sam")):
        if hq in results and sam in results:
            for impl in ("official", "ours"):
                a, b = results[hq][impl], results[sam][impl]
                print(f"HQ overhead ({impl}) {hq} vs {sam}: set_image x{a['set_image'] / b['set_image']:.2f}, predict x{a['predict'] / b['predict']:.2f}")


if __name__ == "__main__":
    main()
