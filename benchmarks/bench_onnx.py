"""onnxruntime vs torch: the image encoder (``set_image``) and one prompt (``predict`` with a
cached embedding; for Pi-SAM also one ``correct``), on the graphs ``finesam export onnx``
writes, with the largest logit difference seen.

    python benchmarks/bench_onnx.py [--models mobile_sam,hq_vit_tiny] [--repeats 3]
                                    [--image PHOTO] [--threads N]

ViT models (sam_vit_b, hq_vit_b, pi_vit_b: ``--models pi_vit_b``) work too but need much more
memory: a pi_vit_b run (both runtimes' ViT-B encoders side by side) passed 8.7 GB of RSS.

Random weights (timings do not depend on the values). Exports go to a temporary folder.
Calls are interleaved (torch, onnxruntime, torch, ...) so that a machine whose load changes
during the run treats both alike; the median of ``--repeats`` runs after one warm-up is printed.
Both runtimes use ``--threads`` CPU threads (default: all cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import finesam
from finesam.data.images import read_image
from bench_predictor import interleaved  # benchmarks/ is on sys.path when run as a script
from finesam.onnx import OnnxPredictor, export_onnx

DEFAULT_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ecssd" / "im" / "0001.jpg"


def bench(name: str, image: np.ndarray, repeats: int, threads: int) -> None:
    import onnxruntime

    model = finesam.load(name, random_weights=True)
    capabilities = model.capabilities
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_onnx(model, folder, model_name=name, random_weights=True)
        export_seconds = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        predictors = {"torch": finesam.SamPredictor(model), "onnxruntime": OnnxPredictor(folder, session_options=options)}
        height, width = image.shape[:2]
        box = np.array([width * 0.1, height * 0.1, width * 0.9, height * 0.9])
        encode = interleaved({runtime: (lambda p=p: p.set_image(image)) for runtime, p in predictors.items()}, repeats)
        outputs = {runtime: p.predict(box=box, return_logits=True) for runtime, p in predictors.items()}
        predict = interleaved({runtime: (lambda p=p: p.predict(box=box, return_logits=True))
                                  for runtime, p in predictors.items()}, repeats)
        difference = float(np.abs(outputs["torch"][0] - outputs["onnxruntime"][0]).max())
        correct = {}
        if capabilities.corrects_clicks:
            click = np.array([[width * 0.5, height * 0.5]])
            correct = interleaved({runtime: (lambda p=p: p.correct(fg_points=click, return_logits=True))
                                      for runtime, p in predictors.items()}, repeats)
    print(f"\n{name} (export {export_seconds:.1f} s; max |logit difference| {difference:.2e})")
    print(f"  {'':12} {'torch':>10} {'onnxruntime':>12} {'ratio':>7}")
    for label, seconds in (("set_image s", encode), ("predict ms", predict), ("correct ms", correct)):
        if not seconds:
            continue
        scale = 1 if label.endswith(" s") else 1000
        print(f"  {label:12} {seconds['torch'] * scale:10.1f} {seconds['onnxruntime'] * scale:12.1f} "
              f"{seconds['torch'] / seconds['onnxruntime']:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobile_sam,hq_vit_tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    image = read_image(args.image)
    print(f"image {args.image.name} {image.shape[1]}x{image.shape[0]}, {args.threads} threads, torch {torch.__version__}")
    print("ratio = torch time / onnxruntime time")
    for name in args.models.split(","):
        bench(name.strip(), image, args.repeats, args.threads)


if __name__ == "__main__":
    main()
