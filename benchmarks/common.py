"""Helpers the benchmarks share (each benchmark imports this module, never another benchmark).

The default photograph, the official models with the same architecture as ours (seeded random
weights), interleaved timing, and peak-memory measurement (per fresh process).
"""

from __future__ import annotations

import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
DATA = BENCHMARKS.parents[1] / "shared" / "data"
# The DIS5K pavilion (2748x2658): a large real photograph with a thin-structured object.
DEFAULT_IMAGE = DATA / "dis5k_samples" / "im" / "4#Architecture#10#Pavilion#5795028920_08884db993_o.jpg"
OFFICIAL = {
    # finesam name: (package, registry, key) for the official model with the same architecture
    "sam_vit_b": ("segment_anything", "sam_model_registry", "vit_b"),
    "sam_vit_h": ("segment_anything", "sam_model_registry", "vit_h"),
    "mobile_sam": ("segment_anything_hq", "sam_model_registry_baseline", "vit_tiny"),
    "hq_vit_b": ("segment_anything_hq", "sam_model_registry", "vit_b"),
    "hq_vit_tiny": ("segment_anything_hq", "sam_model_registry", "vit_tiny"),
}


def official_model(name: str):
    """The official model with finesam model ``name``'s architecture, random weights from seed 0."""
    import torch

    module_name, registry, key = OFFICIAL[name]
    torch.manual_seed(0)
    return getattr(importlib.import_module(module_name), registry)[key]().eval()


def official_predictor(name: str):
    """(official predictor with seeded random weights, extra predict kwargs)."""
    module_name = OFFICIAL[name][0]
    predictor = importlib.import_module(module_name).SamPredictor(official_model(name))
    return predictor, ({"hq_token_only": False} if module_name == "segment_anything_hq" else {})


def load_photo(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the photo at ``path``, resized (bicubic) to ``size`` = (W, H) if given."""
    from PIL import Image

    with Image.open(path) as photo:
        photo = photo.convert("RGB")
        return np.asarray(photo.resize(size, Image.BICUBIC) if size else photo)


def box_for(image: np.ndarray) -> np.ndarray:
    """The box prompt every benchmark uses: the middle 60% of the image, xyxy (4,)."""
    height, width = image.shape[:2]
    return np.array([0.2 * width, 0.2 * height, 0.8 * width, 0.8 * height])


def interleaved(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each named call, run round-robin ``repeats`` times after one warm-up."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def memory_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, MB. Read from
    /proc: ``ru_maxrss`` would carry the parent's peak into a spawned child (Linux keeps it
    across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def run_memory_case(model_name: str, impl: str, path: Path, multimask: bool = False, python: str = sys.executable) -> dict:
    """Peak memory of read + ``set_image`` + ``predict`` (``bench_memory.py``'s case, ``impl`` "ours"
    or "official") run in a fresh interpreter, so that its max RSS is its own; its measurements."""
    command = [python, str(BENCHMARKS / "bench_memory.py"), "--child", model_name, impl, str(path)]
    done = subprocess.run(command + (["--multimask"] if multimask else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{impl} {model_name}: the measuring process failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
