"""Pi-SAM cost per click: one `predict` and one `correct` with a cached embedding for pi_vit_b,
beside one `predict` of sam_vit_b and hq_vit_b, in the same run, and the share of the Object
Embedder's deformable branches (3x3 and 7x7) in a Pi predict.

    python benchmarks/bench_pi.py [--repeats 5]

Random weights (timings do not depend on the values); the interactor's output conv is made
non-zero so that a correction does its full work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch

import finesam

BOX = np.array([60, 50, 320, 260])


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def branch_share(predictor, repeats: int) -> dict[str, float]:
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
        predictor.predict(box=BOX)
    for handle in handles:
        handle.remove()
    return {name: statistics.median(values) for name, values in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads; image 400x300; median of {args.repeats}")
    rows = []
    for name in ("sam_vit_b", "hq_vit_b", "pi_vit_b"):
        torch.manual_seed(0)
        predictor = finesam.SamPredictor(finesam.load(name, random_weights=True))
        predictor.set_image(image)
        rows.append((name, "predict", median_time(lambda: predictor.predict(box=BOX, multimask_output=False), args.repeats)))
        if predictor.capabilities.corrects_clicks:
            with torch.no_grad():
                predictor.model.mask_decoder.interactor.out_cov.weight.normal_(0, 0.05)
            predictor.predict(box=BOX)
            clicks = dict(fg_points=np.array([[150, 120], [200, 100]]), bg_points=np.array([[70, 60]]))
            rows.append((name, "correct (3 clicks)", median_time(lambda: predictor.correct(**clicks), args.repeats)))
            shares = branch_share(predictor, args.repeats)
    base = rows[0][2]
    print(f"{'model':<10} {'call':<20} {'ms':>8} {'x sam_vit_b predict':>20}")
    for name, call, seconds in rows:
        print(f"{name:<10} {call:<20} {1000 * seconds:>8.1f} {seconds / base:>20.2f}")
    pi_predict = next(s for n, c, s in rows if n == "pi_vit_b" and c == "predict")
    print("Pi predict breakdown (forward hooks):")
    for name, seconds in shares.items():
        print(f"  {name:<16} {1000 * seconds:>8.1f} ms  {100 * seconds / pi_predict:>5.1f}% of a Pi predict")


if __name__ == "__main__":
    main()
