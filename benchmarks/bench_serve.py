"""Load test of ``finesam serve`` on loopback: N concurrent browser sessions, each opening an image
and making K clicks (mobile_sam, random weights by default).

    .venv/bin/python benchmarks/bench_serve.py                       # 50 clients x 10 clicks
    .venv/bin/python benchmarks/bench_serve.py --clients 10 --clicks 5 --images 2

The server runs as a separate process (``finesam serve``), so its peak memory (VmHWM) is its own.
Prints the click latency p50/p95 (round trip, and the model's own time), the open-image time,
errors (any answer other than 200 counts), the server's peak memory and its feature cache.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ECSSD = REPO.parent / "shared" / "data" / "ecssd" / "im"


def image_files(count: int) -> list[tuple[str, bytes]]:
    """``count`` ECSSD images (or seeded random 400x300 PNGs where the data is absent)."""
    if ECSSD.is_dir():
        paths = sorted(ECSSD.iterdir())[:count]
        return [(path.name, path.read_bytes()) for path in paths]
    rng = np.random.default_rng(0)
    files = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(buffer, format="PNG")
        files.append((f"random{index}.png", buffer.getvalue()))
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_memory_mb(pid: int) -> float:
    """Peak resident memory of a process (Linux VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def one_client(url: str, name: str, content: bytes, clicks: int, seed: int, results: dict) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:  # its own cookie: its own session
        start = time.perf_counter()
        answer = await client.post(f"/api/images?name={name}", content=content)
        results["open_s"].append(time.perf_counter() - start)
        if answer.status_code != 200:
            results["errors"].append(f"open {answer.status_code}: {answer.text[:200]}")
            return
        opened = answer.json()
        for index in range(clicks):
            body = {"x": rng.randrange(opened["width"]), "y": rng.randrange(opened["height"]), "positive": index == 0 or rng.random() < 0.7}
            start = time.perf_counter()
            answer = await client.post(f"/api/images/{opened['id']}/click", json=body)
            results["round_trip_ms"].append((time.perf_counter() - start) * 1000)
            if answer.status_code != 200:
                results["errors"].append(f"click {answer.status_code}: {answer.text[:200]}")
                continue
            results["model_ms"].append(answer.json()["latency_ms"])
            results["queue_ms"].append(answer.json()["queue_ms"])
            results["re_encoded"] += bool(answer.json().get("encode_ms"))


async def run_clients(url: str, files: list[tuple[str, bytes]], clients: int, clicks: int) -> dict:
    results = {"open_s": [], "round_trip_ms": [], "model_ms": [], "queue_ms": [], "errors": [], "re_encoded": 0}
    tasks = [one_client(url, *files[index % len(files)], clicks, index, results) for index in range(clients)]
    await asyncio.gather(*tasks)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--images", type=int, default=5, help="distinct images among the clients (default 5)")
    parser.add_argument("--model", default="mobile_sam")
    parser.add_argument("--checkpoint", help="weights file (default: random weights)")
    parser.add_argument("--cache-mb", type=float, default=1024)
    args = parser.parse_args()

    port = free_port()
    weights = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--random-weights"]
    command = [sys.executable, "-m", "finesam.cli", "serve", "--model", args.model, *weights, "--port", str(port),
               "--cache-mb", str(args.cache_mb), "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                info = httpx.get(f"{url}/api/info", timeout=2)
                if info.status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None:
                    print(server.stdout.read(), file=sys.stderr)
                    return 1
                time.sleep(0.5)
        baseline_mb = peak_memory_mb(server.pid)
        files = image_files(args.images)
        start = time.perf_counter()
        results = asyncio.run(run_clients(url, files, args.clients, args.clicks))
        elapsed = time.perf_counter() - start
        peak_mb = peak_memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    round_trip, model_ms = results["round_trip_ms"], results["model_ms"]
    print(f"finesam serve load test: {args.model}, {args.clients} clients x {args.clicks} clicks, "
          f"{len(files)} distinct images, {os.cpu_count()} CPUs, torch threads default")
    print(f"  finished in {elapsed:.1f} s; errors: {len(results['errors'])}; clicks that had to re-encode: {results['re_encoded']}")
    for error in results["errors"][:5]:
        print(f"    {error}")
    print(f"  open image (upload + encode or cache hit), s: p50 {percentile(results['open_s'], 50):.2f}  "
          f"p95 {percentile(results['open_s'], 95):.2f}")
    print(f"  click round trip, ms:   p50 {percentile(round_trip, 50):.0f}  p95 {percentile(round_trip, 95):.0f}  "
          f"(n={len(round_trip)}; the sessions queue for one model)")
    print(f"  click model time, ms:   p50 {percentile(model_ms, 50):.0f}  p95 {percentile(model_ms, 95):.0f}  "
          f"mean {statistics.fmean(model_ms) if model_ms else float('nan'):.0f}")
    print(f"  click queue wait, ms:   p50 {percentile(results['queue_ms'], 50):.0f}  p95 {percentile(results['queue_ms'], 95):.0f}")
    print(f"  server peak memory: {peak_mb:.0f} MB (after loading the model: {baseline_mb:.0f} MB)")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
