"""Pi-SAM cost per click on a large photograph: one `predict` and one `correct` with a cached
embedding for pi_vit_b, beside one `predict` of sam_vit_b and hq_vit_b, interleaved in the same
run; the whole pipeline (set_image + the first predict, medians of interleaved rounds) of Pi
and HQ vs SAM; the share of the Object Embedder's deformable branches (3x3 and 7x7) in a Pi
predict.

    python benchmarks/bench_pi.py [--image PHOTO] [--repeats 5] [--whole-repeats 3]

Default image: the DIS5K pavilion (2748x2658) from ../shared/data. Random weights (timings do
not depend on the values); the interactor's output conv is made non-zero so that a correction
does its full work. Calls are interleaved (sam, hq, pi, pi correct, sam, ...) so that a machine
whose load changes during the run treats them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import finesam
from finesam.data.images import read_image
from common import DEFAULT_IMAGE, box_for, interleaved  # benchmarks/ is on sys.path when run as a script

def branch_share(predictor, box: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds spent in each deformable branch during one Pi predict (forward hooks)."""
    embedder = predictor.model.mask_decoder.high_res.mask_aspp
    spent = {"aspp1 (3x3)": [], "aspp2 (7x7)": [], "object embedder": []}
    starts = {}

    def timer(name):
        def pre(module, args):
            starts[name] = time.perf_counter()

        def post(module, args, output):
            spent[name].append(time.perf_counter() - starts[name])

        return pre, post

    handles = []
    for name, module in (("aspp1 (3x3)", embedder.aspp1), ("aspp2 (7x7)", embedder.aspp2), ("object embedder", embedder)):
        pre, post = timer(name)
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    for _ in range(repeats):
        predictor.predict(box=box, multimask_output=False)
    for handle in handles:
        handle.remove()
    return {name: statistics.median(values) for name, values in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--whole-repeats", type=int, default=3, help="rounds of set_image + first predict")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    if not args.image.is_file():
        raise SystemExit(f"{args.image} not found: pass --image PHOTO (the default lives in ../shared/data)")
    image = read_image(args.image)
    height, width = image.shape[:2]
    box = box_for(image)
    clicks = dict(fg_points=np.array([[0.5 * width, 0.5 * height], [0.4 * width, 0.6 * height]]),
                  bg_points=np.array([[0.25 * width, 0.25 * height]]))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads; image {args.image.name} {width}x{height}; "
          f"medians of {args.repeats} interleaved runs")
    predictors = {}
    for name in ("sam_vit_b", "hq_vit_b", "pi_vit_b"):
        torch.manual_seed(0)
        predictors[name] = finesam.SamPredictor(finesam.load(name, random_weights=True))
    with torch.no_grad():
        predictors["pi_vit_b"].model.mask_decoder.interactor.out_cov.weight.normal_(0, 0.05)
    # The whole pipeline: set_image and the first predict (which for Pi also embeds the image's
    # RGB at 1024x1024, once per image), after one warm-up round.
    whole = interleaved({name: (lambda p=p: (p.set_image(image), p.predict(box=box, multimask_output=False)))
                         for name, p in predictors.items()}, args.whole_repeats)
    pi = predictors["pi_vit_b"]

    def pi_correct():
        pi.predict(box=box, multimask_output=False)  # untimed: correct() refines the last prediction
        start = time.perf_counter()
        pi.correct(**clicks)
        return time.perf_counter() - start

    calls = {name: (lambda p=p: p.predict(box=box, multimask_output=False)) for name, p in predictors.items()}
    times = interleaved(calls, args.repeats)
    correct_times = [pi_correct() for _ in range(args.repeats)]
    times["pi_vit_b correct"] = statistics.median(correct_times)
    base = times["sam_vit_b"]
    print(f"| {'what':<44} | {'ms':>8} | {'x SAM ViT-B predict':>19} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 21}|")
    for what, key in (("SAM ViT-B predict", "sam_vit_b"), ("HQ ViT-B predict", "hq_vit_b"), ("Pi-SAM predict", "pi_vit_b"),
                      ("Pi-SAM correct (3 clicks)", "pi_vit_b correct")):
        print(f"| {what:<44} | {1000 * times[key]:>8.1f} | {times[key] / base:>18.2f}x |")
    for name in ("hq_vit_b", "pi_vit_b"):
        ratio = whole[name] / whole["sam_vit_b"]
        print(f"| {name} whole pipeline / SAM ViT-B ({whole[name]:.2f} / {whole['sam_vit_b']:.2f} s) | {'':>8} | {ratio:>18.2f}x |")
    shares = branch_share(pi, box, args.repeats)
    print("Pi predict breakdown (forward hooks):")
    for name, seconds in shares.items():
        print(f"  {name:<16} {1000 * seconds:>8.1f} ms  {100 * seconds / times['pi_vit_b']:>5.1f}% of a Pi predict")


if __name__ == "__main__":
    main()
