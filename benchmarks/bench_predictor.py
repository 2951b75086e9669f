"""Predictor speed on a large photograph: finesam vs the official packages, interleaved in one run.

    python benchmarks/bench_predictor.py [--image PHOTO] [--repeats 3] [--no-amg] [--no-memory]

Default image: the DIS5K pavilion (2748x2658) from ../shared/data. Both implementations use
the same seeded random weights (the official model's, saved in the official format and loaded
by ``finesam.load``). Calls are interleaved (official, ours, official, ours, ...) so that a
machine whose load changes during the run treats both alike; the ratio column is official
time / ours (> 1: finesam is faster). Rows (the performance issue's table):

- ``set_image`` of ViT-B in float32 and (ours) bfloat16, with the bfloat16 masks' agreement
  with float32; TinyViT (MobileSAM) ``set_image``;
- one ``predict`` with a cached embedding (box prompt, single mask) for MobileSAM and HQ-tiny
  (and the ViT-B models);
- HQ over SAM (ours, ViT-B): per prompt and whole pipeline (``set_image`` + ``predict``);
- automatic masks, HQ-tiny, ``points_per_side=16``, the photo resized to 1800x1200, IoU and
  stability thresholds 0 (random weights leave masks to post-process), one run each;
- peak memory (max RSS) of ``set_image`` + ``predict`` on the photo, each in a fresh process
  (``common.run_memory_case``).

Pi-SAM's rows are in ``bench_pi.py``; the 8000x6000 memory benchmark is ``bench_memory.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import (  # benchmarks/ is on sys.path when run as a script
    DEFAULT_IMAGE,
    box_for,
    interleaved,
    load_photo,
    official_model,
    official_predictor,
    run_memory_case,
)


def build_group(names: list[str], bf16: str | None, folder: str) -> dict:
    """{(name, impl): (predictor, predict kwargs)} with shared weights per name."""
    import torch

    import finesam

    group = {}
    for name in names:
        official, extra = official_predictor(name)
        path = os.path.join(folder, f"{name}.pth")
        torch.save(official.model.state_dict(), path)
        group[(name, "official")] = (official, extra)
        group[(name, "ours")] = (finesam.SamPredictor(finesam.load(name, path)), {})
        if name == bf16:
            group[(name, "ours-bf16")] = (finesam.SamPredictor(finesam.load(name, path, dtype=torch.bfloat16)), {})
        os.remove(path)
    return group


def time_group(group: dict, image: np.ndarray, repeats: int) -> dict:
    box = box_for(image)
    set_times = interleaved({key: (lambda p=p: p.set_image(image)) for key, (p, _) in group.items()}, repeats)
    predict_times = interleaved(
        {key: (lambda p=p, e=e: p.predict(box=box, multimask_output=False, **e)) for key, (p, e) in group.items()},
        5 * repeats,
    )
    masks = {key: p.predict(box=box, multimask_output=False, **e)[0] for key, (p, e) in group.items()}
    return {key: {"set_image": set_times[key], "predict": predict_times[key], "masks": masks[key]} for key in group}


def amg_row(image: np.ndarray) -> dict[str, float]:
    """Seconds of one automatic-mask run, official then ours, HQ-tiny, points_per_side=16."""
    import torch

    import finesam
    from segment_anything_hq import SamAutomaticMaskGenerator

    settings = dict(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    with tempfile.TemporaryDirectory() as folder:
        official = official_model("hq_vit_tiny")
        path = os.path.join(folder, "hq_vit_tiny.pth")
        torch.save(official.state_dict(), path)
        ours = finesam.AutomaticMaskGenerator(finesam.load("hq_vit_tiny", path), hq_token_only=False, **settings)
    theirs = SamAutomaticMaskGenerator(official, **settings)
    result = {}
    for impl, generator in (("official", theirs), ("ours", ours)):
        start = time.perf_counter()
        with torch.no_grad():
            found = generator.generate(image)
        result[impl] = time.perf_counter() - start
        result[impl + "_masks"] = len(found)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-amg", action="store_true", help="skip the automatic-mask row (the slowest)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--groups", default="vit_b,tiny", help="vit_b (SAM, HQ, bf16) and/or tiny (MobileSAM, HQ-tiny)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if not args.image.is_file():
        raise SystemExit(f"{args.image} not found: pass --image PHOTO (the default lives in ../shared/data)")
    image = load_photo(args.image)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no bf16 instructions"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads ({isa}); image {args.image.name} "
          f"{image.shape[1]}x{image.shape[0]}; medians of {args.repeats} interleaved runs (predict: {5 * args.repeats})")
    groups = {"vit_b": (["sam_vit_b", "hq_vit_b"], "sam_vit_b"), "tiny": (["mobile_sam", "hq_vit_tiny"], None)}
    results = {}
    for group_name in filter(None, args.groups.split(",")):
        names, bf16 = groups[group_name]
        with tempfile.TemporaryDirectory() as folder:
            group = build_group(names, bf16, folder)
        timed = time_group(group, image, args.repeats)
        del group
        for (name, impl), r in timed.items():  # raw numbers as they come (a long run may be cut short)
            print(f"  {name:<12} {impl:<9} set_image {r['set_image']:7.2f} s  predict {1000 * r['predict']:7.1f} ms", flush=True)
        results.update(timed)

    rows = []  # (what, official, ours, ratio official / ours, note)

    def add(what, key, field, scale, unit):
        official = results.get((key[0], "official"))
        ours = results.get(key)
        if official and ours:
            rows.append((what, f"{official[field] * scale:.3g} {unit}", f"{ours[field] * scale:.3g} {unit}",
                         f"{official[field] / ours[field]:.2f}x"))

    add("ViT-B set_image, float32", ("sam_vit_b", "ours"), "set_image", 1, "s")
    if ("sam_vit_b", "ours-bf16") in results:
        add("ViT-B set_image, bfloat16 (ours) vs float32 (official)", ("sam_vit_b", "ours-bf16"), "set_image", 1, "s")
        agree = (results[("sam_vit_b", "ours-bf16")]["masks"] == results[("sam_vit_b", "ours")]["masks"]).mean()
        rows.append(("  bfloat16 masks equal to float32", "", f"{100 * agree:.2f}% of pixels", ""))
    add("TinyViT set_image (MobileSAM)", ("mobile_sam", "ours"), "set_image", 1, "s")
    add("TinyViT set_image (HQ-tiny)", ("hq_vit_tiny", "ours"), "set_image", 1, "s")
    add("MobileSAM predict, cached embedding", ("mobile_sam", "ours"), "predict", 1000, "ms")
    add("HQ-tiny predict, cached embedding", ("hq_vit_tiny", "ours"), "predict", 1000, "ms")
    add("SAM ViT-B predict, cached embedding", ("sam_vit_b", "ours"), "predict", 1000, "ms")
    add("HQ ViT-B predict, cached embedding", ("hq_vit_b", "ours"), "predict", 1000, "ms")
    add("HQ ViT-B set_image", ("hq_vit_b", "ours"), "set_image", 1, "s")
    for hq, sam in (("hq_vit_b", "sam_vit_b"), ("hq_vit_tiny", "mobile_sam")):
        if (hq, "ours") in results and (sam, "ours") in results:
            per = {impl: results[(hq, impl)]["predict"] / results[(sam, impl)]["predict"] for impl in ("official", "ours")}
            whole = {impl: (results[(hq, impl)]["set_image"] + results[(hq, impl)]["predict"])
                     / (results[(sam, impl)]["set_image"] + results[(sam, impl)]["predict"]) for impl in ("official", "ours")}
            rows.append((f"HQ over SAM ({hq} / {sam}): per prompt", f"{per['official']:.2f}x", f"{per['ours']:.2f}x", ""))
            rows.append((f"HQ over SAM ({hq} / {sam}): set_image + predict", f"{whole['official']:.2f}x", f"{whole['ours']:.2f}x", ""))
    if not args.no_amg:
        amg = amg_row(load_photo(args.image, (1800, 1200)))
        rows.append(("automatic masks, HQ-tiny, 16x16 points, 1800x1200", f"{amg['official']:.1f} s ({amg['official_masks']} masks)",
                     f"{amg['ours']:.1f} s ({amg['ours_masks']} masks)", f"{amg['official'] / amg['ours']:.2f}x"))
    if not args.no_memory:
        for name in ("sam_vit_b", "mobile_sam", "hq_vit_b", "hq_vit_tiny"):
            if (name, "ours") in results:
                official, ours = run_memory_case(name, "official", args.image), run_memory_case(name, "ours", args.image)
                rows.append((f"peak memory, read + set_image + predict, {name}", f"{official['peak_mb']:.0f} MB",
                             f"{ours['peak_mb']:.0f} MB", f"{official['peak_mb'] / ours['peak_mb']:.2f}x"))

    width = max(len(r[0]) for r in rows)
    print(f"| {'what':<{width}} | official | finesam | ratio (official / finesam) |")
    print(f"|{'-' * (width + 2)}|---|---|---|")
    for what, official, ours, ratio in rows:
        print(f"| {what:<{width}} | {official} | {ours} | {ratio} |")


if __name__ == "__main__":
    main()
