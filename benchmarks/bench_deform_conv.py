"""deform_conv2d speed and memory: finesam (pure PyTorch) vs torchvision.ops.deform_conv2d.

    python benchmarks/bench_deform_conv.py [--sizes 3,7] [--repeats 5] [--threads N] [--module]

The Pi-SAM Object Embedder case: a (1, 32, 256, 256) feature map, 32 -> 32 channels, kernel
3x3 (padding 1) or 7x7 (padding 3), random offsets ~N(0, 2) and masks in [0, 2), forward only
under ``torch.no_grad()`` on CPU. Every (implementation, kernel) runs in a fresh process, so
that its peak memory (max RSS growth during the first call, inputs excluded) is its own.
Prints the median and best time, the ratio (torchvision / ours: > 1 means we are faster) and
the max difference between the two outputs. ``--module`` adds the whole DeformableConv2d
layer (its offset and modulator convs included), which is what a click pays.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time


def _inputs(k: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 32, 256, 256, generator=gen)
    offset = torch.randn(1, 2 * k * k, 256, 256, generator=gen) * 2
    mask = torch.rand(1, k * k, 256, 256, generator=gen) * 2
    weight = torch.randn(32, 32, k, k, generator=gen) / (32 * k * k) ** 0.5
    bias = torch.randn(32, generator=gen)
    return x, offset, weight, bias, mask


def _worker(impl: str, k: int, repeats: int, threads: int | None, queue) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    if impl == "torchvision":
        from torchvision.ops import deform_conv2d
    else:
        from finesam.ops.deform_conv import deform_conv2d
    x, offset, weight, bias, mask = _inputs(k)

    def call():
        return deform_conv2d(x, offset, weight, bias, padding=k // 2, mask=mask)

    if impl == "module":  # whole layer; its predictor convs get random weights
        from finesam.ops.deform_conv import DeformableConv2d

        layer = DeformableConv2d(32, 32, kernel_size=k, padding=k // 2).eval()
        with torch.no_grad():
            for p in (layer.offset_conv.weight, layer.modulator_conv.weight):
                p.normal_(0, 0.02)

        def call():  # noqa: F811
            return layer(x)

    with torch.no_grad():
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = call()
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB on Linux
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1000)
    queue.put((times, peak_mib, out.numpy()))  # numpy: plain pickling across processes


def _run(impl: str, k: int, repeats: int, threads: int | None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(impl, k, repeats, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,7", help="kernel sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--module", action="store_true", help="also time the whole DeformableConv2d")
    args = parser.parse_args()

    import torch

    threads = args.threads or torch.get_num_threads()
    print(f"CPU, {threads} torch thread(s), input (1, 32, 256, 256), 32 -> 32 channels, no grad")
    print(f"{'kernel':>6} {'impl':>11} {'median ms':>10} {'best ms':>8} {'peak MiB':>9}  notes")
    for k in (int(s) for s in args.sizes.split(",")):
        results = {}
        for impl in ("finesam", "torchvision") + (("module",) if args.module else ()):
            times, peak, out = _run(impl, k, args.repeats, args.threads)
            results[impl] = (statistics.median(times), out)
            note = ""
            if impl == "torchvision":
                ratio = results["torchvision"][0] / results["finesam"][0]
                diff = float(abs(results["finesam"][1] - out).max())
                note = f"torchvision / finesam = {ratio:.1f}x, max |diff| = {diff:.1e}"
            elif impl == "module":
                note = "whole DeformableConv2d layer (offset + modulator convs + deform conv)"
            median = statistics.median(times)
            print(f"{f'{k}x{k}':>6} {impl:>11} {median:10.1f} {min(times):8.1f} {peak:9.0f}  {note}")


if __name__ == "__main__":
    main()
