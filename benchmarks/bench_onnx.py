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
AMX): the CPU's flags are printed. onnxruntime picks its kernels from CPUID at run time; to
measure its AVX2 kernels on a newer CPU, run the benchmark under ``tools/avx2_only.py``
(CPUID faulting hides AVX-512, VNNI and AMX):

    python tools/avx2_only.py .venv/bin/python benchmarks/bench_onnx.py

There the int8 graphs run with ``session.x64quantprecision`` on, as ``OnnxPredictor`` sets it on
an AVX2-only CPU (it reads /proc/cpuinfo, which the emulation does not change).

Then, per model, onnxruntime's own profile of three encoder runs of each graph, by operator: the
time that int8 does not touch, and the speed-up bound it sets (int8 MatMuls that took no time).
"""

from __future__ import annotations

import argparse
import collections
import json
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
from finesam.onnx.predictor import PRECISE_INT8_OPTION, int8_saturates

RUNTIMES = ("torch", "onnxruntime", "int8")
EMULATED_CPU_VARIABLE = "FINESAM_EMULATED_CPU"  # set by tools/avx2_only.py
# Operators of the int8 graphs that multiply integers (dynamic quantization's own).
INTEGER_OPERATORS = {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
                     "ConvInteger", "DynamicQuantizeLSTM"}


def cpu_flags() -> str:
    """The CPU model and its vector / matrix extensions that int8 kernels use."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    described = f"{model}; " + " ".join(flag for flag in wanted if flag in flags)
    if os.environ.get(EMULATED_CPU_VARIABLE) == "avx2":
        from numpy._core._multiarray_umath import __cpu_features__ as seen  # CPUID, as the libraries read it

        if seen.get("AVX512F") or not seen.get("AVX2"):
            raise SystemExit("tools/avx2_only.py did not take effect: CPUID still shows AVX-512 (or no AVX2)")
        described += " -- emulated AVX2-only (tools/avx2_only.py): CPUID shows AVX2 but no AVX-512, VNNI or AMX"
    return described


def int8_session_options(threads: int):
    """Session options of the int8 graphs: ``threads`` threads, the exact int8 products where
    OnnxPredictor would set them on the CPU that onnxruntime sees (an emulated AVX2-only one
    included)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    exact = int8_saturates() or os.environ.get(EMULATED_CPU_VARIABLE) == "avx2"
    options.add_session_config_entry(PRECISE_INT8_OPTION, "1" if exact else "0")
    return options


def node_times(encoder: Path, options, runs: int = 3) -> dict[tuple[str, str], float]:
    """Seconds per run of each node, keyed (operator type, node name), from onnxruntime's profile
    of ``runs`` runs (after one warm-up) of the graph ``encoder`` on a random image of its
    input's shape."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = onnxruntime.InferenceSession(str(encoder), options, providers=["CPUExecutionProvider"])
        options.enable_profiling = False
        (graph_input,) = session.get_inputs()
        shape = [size if isinstance(size, int) else 1024 for size in graph_input.shape]
        pixels = np.random.default_rng(0).uniform(0, 255, shape)
        feeds = {graph_input.name: pixels.astype(np.uint8 if "uint8" in graph_input.type else np.float32)}
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    warm_up = min((event for event in events if event["name"] == "model_run"), key=lambda event: event["ts"])
    times: collections.Counter = collections.Counter()
    for event in events:
        if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                and event["ts"] >= warm_up["ts"] + warm_up["dur"]):
            times[(event["args"]["op_name"], event["name"].removesuffix("_kernel_time"))] += event["dur"] / 1e6 / runs
    return dict(times)


def matmul_layer(node_name: str) -> str:
    """The layer a MatMul node computes, the same in both graphs: ".../mlp/lin1" for float32's
    ".../mlp/lin1/MatMul/MatMulAddFusion" and int8's ".../mlp/lin1/MatMul_quant"."""
    return node_name.split("/MatMul")[0]


def print_breakdown(float32: dict[tuple[str, str], float], int8: dict[tuple[str, str], float]) -> None:
    """Encoder time by operator type in both graphs; the float32 time of the layers int8
    quantizes against their integer time; the speed-up bound the rest of the encoder sets."""
    by_type = {graph: collections.Counter() for graph in ("float32", "int8")}
    for graph, times in (("float32", float32), ("int8", int8)):
        for (op, _), seconds in times.items():
            by_type[graph][op] += seconds
    total_float, total_int8 = sum(float32.values()), sum(int8.values())
    print(f"  encoder by operator (onnxruntime profile, mean of 3 runs each): float32 {total_float:.2f} s, int8 {total_int8:.2f} s")
    for op in sorted(set(by_type["float32"]) | set(by_type["int8"]),
                     key=lambda op: -max(by_type["float32"][op], by_type["int8"][op]))[:10]:
        print(f"    {op:24} {by_type['float32'][op] * 1000:9.1f} ms {by_type['int8'][op] * 1000:9.1f} ms")
    layers = {matmul_layer(name) for op, name in int8 if op in INTEGER_OPERATORS}
    replaced = sum(seconds for (op, name), seconds in float32.items()
                   if op in ("MatMul", "Gemm", "FusedMatMul") and matmul_layer(name) in layers)
    integer = sum(seconds for (op, _), seconds in int8.items() if op in INTEGER_OPERATORS)
    print(f"  the {len(layers)} quantized MatMul layers: float32 {replaced:.2f} s, int8 {integer:.2f} s "
          f"({replaced / integer:.2f}x); the rest of float32's encoder {total_float - replaced:.2f} s: int8 MatMuls "
          f"that took no time would make it at most {total_float / (total_float - replaced):.2f}x faster")


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
                      "int8": OnnxPredictor(Path(folder) / "int8", session_options=int8_session_options(threads))}
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
        del predictors  # the profiled sessions below need their memory (ViT-B)
        float_options = onnxruntime.SessionOptions()
        float_options.intra_op_num_threads = threads
        breakdown = (node_times(Path(folder) / "float32" / "encoder.onnx", float_options),
                     node_times(Path(folder) / "int8" / "encoder.onnx", int8_session_options(threads)))
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
    print_breakdown(*breakdown)


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
