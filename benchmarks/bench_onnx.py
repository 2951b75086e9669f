"""onnxruntime vs torch: the image encoder (``set_image``) and one prompt (``predict`` with a
cached embedding; for Pi-SAM also one ``correct``), on the graphs ``finesam export onnx``
writes, float32 and ``--quantize int8``, with the largest logit difference (float32 vs
torch) and the int8 masks' agreement with the float32 ones on real photos: the mean IoU (and
the share of equal pixels) of the masks for each photo's ground-truth box.

    python benchmarks/bench_onnx.py [--models mobile_sam,sam_vit_b] [--repeats 3]
                                    [--image PHOTO] [--threads N] [--agreement-images 10]

Other models (hq_vit_tiny, hq_vit_b, pi_vit_b) work too. ViT-B models need much more memory: a
pi_vit_b run (both runtimes' ViT-B encoders side by side) passed 8.7 GB of RSS.

Seeded random weights (timings do not depend on the values; agreement is measured on them,
with every 80th ECSSD photo, as the int8 test does).
Exports go to a temporary folder. Calls are interleaved (torch, onnxruntime, int8, torch, ...)
so that a machine whose load changes during the run treats all alike; the median of
``--repeats`` runs after one warm-up is printed. All runtimes use ``--threads`` CPU threads
(default: all cores). int8 speed depends on the CPU's integer instructions (AVX2, AVX512-VNNI,
AMX): the CPU's flags are printed. onnxruntime picks its kernels from the CPU's flags at run time
and offers no switch to restrict them (to AVX2's on an AVX512-VNNI CPU, say): an AVX2-only
figure needs an AVX2-only CPU.
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
from common import DATA, DEFAULT_IMAGE, interleaved  # benchmarks/ is on sys.path when run as a script
from finesam.onnx import OnnxPredictor, export_onnx

RUNTIMES = ("torch", "onnxruntime", "int8")


def cpu_flags() -> str:
    """The CPU model and its vector / matrix extensions that int8 kernels use."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return f"{model}; " + " ".join(flag for flag in wanted if flag in flags)


def agreement_photos(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, ground-truth box xyxy (4,)) of every 80th ECSSD photo, ``count`` of them."""
    from finesam.data.folders import read_mask
    from finesam.evaluation.prompts import mask_box

    photos = []
    for number in range(1, 801, 80)[:count]:
        gt_path = DATA / "ecssd" / "gt" / f"{number:04d}.png"
        if not gt_path.exists():
            break
        photos.append((read_image(DATA / "ecssd" / "im" / f"{number:04d}.jpg"), mask_box(read_mask(gt_path) > 128)))
    return photos


def mask_agreement(exact, quantized, photos: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[float], list[float]]:
    """(IoU, share of equal pixels) of each int8 mask with the float32 one: each photo's
    ground-truth box, 3 masks per photo."""
    ious, equal = [], []
    for image, box in photos:
        exact.set_image(image)
        quantized.set_image(image)
        for one, other in zip(exact.predict(box=box)[0], quantized.predict(box=box)[0]):
            union = (one | other).sum()
            ious.append(float((one & other).sum() / union) if union else 1.0)
            equal.append(float((one == other).mean()))
    return ious, equal


def bench(name: str, image: np.ndarray, repeats: int, threads: int, photos: list[np.ndarray]) -> None:
    import onnxruntime

    model = finesam.load(name, random_weights=True)
    capabilities = model.capabilities
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_onnx(model, Path(folder) / "float32", model_name=name, random_weights=True)
        export_seconds = time.perf_counter() - start
        export_onnx(model, Path(folder) / "int8", model_name=name, random_weights=True, quantize="int8")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        predictors = {"torch": finesam.SamPredictor(model),
                      "onnxruntime": OnnxPredictor(Path(folder) / "float32", session_options=options),
                      "int8": OnnxPredictor(Path(folder) / "int8", session_options=options)}
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
        ious, equal = mask_agreement(predictors["onnxruntime"], predictors["int8"], photos) if photos else ([], [])
        sizes = [sum(path.stat().st_size for path in (Path(folder) / kind).glob("*.onnx*")) / 2**20
                 for kind in ("float32", "int8")]
    print(f"\n{name} (export {export_seconds:.1f} s; max |logit difference| float32 vs torch {difference:.2e}; "
          f"graphs {sizes[0]:.0f} MB float32, {sizes[1]:.0f} MB int8)")
    print(f"  {'':12} {'torch':>10} {'onnxruntime':>12} {'int8':>10} {'torch/ort':>10} {'ort/int8':>9} {'torch/int8':>10}")
    for label, seconds in (("set_image s", encode), ("predict ms", predict), ("correct ms", correct)):
        if not seconds:
            continue
        scale = 1 if label.endswith(" s") else 1000
        torch_s, ort_s, int8_s = (seconds[runtime] for runtime in RUNTIMES)
        print(f"  {label:12} {torch_s * scale:10.2f} {ort_s * scale:12.2f} {int8_s * scale:10.2f} "
              f"{torch_s / ort_s:10.2f} {ort_s / int8_s:9.2f} {torch_s / int8_s:10.2f}")
    if ious:
        print(f"  int8 vs float32 masks, {len(photos)} ECSSD photos x 3 masks (ground-truth boxes): mean IoU "
              f"{np.mean(ious):.4f} (goal >= 0.98), lowest {min(ious):.4f}; equal pixels {np.mean(equal):.4f}")
    else:
        print(f"  int8 vs float32 mask agreement: not measured ({DATA / 'ecssd'} is missing)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobile_sam,sam_vit_b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--agreement-images", type=int, default=10, help="ECSSD photos for the int8 agreement (at most 10)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    image = read_image(args.image)
    print(f"image {args.image.name} {image.shape[1]}x{image.shape[0]}, {args.threads} threads, torch {torch.__version__}")
    print(f"CPU: {cpu_flags()}")
    print("ratios: time of the first / time of the second (above 1: the second is faster)")
    photos = agreement_photos(args.agreement_images)
    for name in args.models.split(","):
        bench(name.strip(), image, args.repeats, args.threads, photos)


if __name__ == "__main__":
    main()
