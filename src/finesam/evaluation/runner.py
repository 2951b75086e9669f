"""Run a protocol over data sets into a run directory (resumable), then write the reports."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from ..data import FolderDataset
from ..data.images import PIXEL_LIMIT_ENV
from ..errors import FinesamError, InvalidInputError
from ..optional import MissingExtraError
from ..predict.predictor import SamPredictor
from .protocols import Protocol, SkipSample
from .report import markdown, write_plots
from .results import ResultStore, columns_for, json_ready, score, summarize

DESCRIPTIONS = {
    "box": "HQ-SAM's official box protocol: image and GT squashed to 1024x1024 (bilinear), box from the squashed "
           "GT, one mask (HQ models: HQ logits only), 256x256 logits (Pi: 1024x1024) resized to the GT size, > 0.",
    "box-aspect": "Box protocol on the original image (aspect ratio kept): box from the original GT, one mask.",
    "noisy-box": "The box protocol with DN-DETR box noise (centre moved by up to scale x half the side, sides scaled "
                 "by 1 +- scale, clipped to the image), one seeded draw per image and scale.",
    "points": "Aspect kept. 1pt: the GT's interior distance-transform maximum, best of 3 masks; Npt: N random "
              "positive GT pixels (+ random background pixels for +neg), one mask, averaged over 3 seeded trials.",
    "clicks": "RITM robot user: each click at the interior maximum of the widest error region (FN: positive, FP: "
              "negative); previous low-res logits fed back; NoC = clicks to reach the IoU (max if never).",
    "pi-clicks": "Pi-SAM correction: box prediction (box protocol), then 1/2/5 clicks, one random pixel in each of the "
                 "largest error components (eroded 1 px, 8-connected, >= 2 px): fg = missed object, bg = false "
                 "object, all = both. Pi: Precise Interactor; SAM/HQ: box + clicks + previous logits.",
}
OUTPUT_FILES = ("per_image.csv", "curves.npz", "summary.json", "table.md", "recall_biou.png", "iou_per_click.png")


class RunMismatchError(InvalidInputError):
    """The output folder holds results of a run with other settings."""


def _prepare_run_dir(out_dir: Path, identity: dict, datasets: dict[str, str], overwrite: bool) -> None:
    run_file = out_dir / "run.json"
    if overwrite:
        for name in (*OUTPUT_FILES, "run.json"):
            (out_dir / name).unlink(missing_ok=True)
    elif run_file.is_file():
        previous = json.loads(run_file.read_text())
        differing = sorted(k for k in set(identity) | set(previous.get("identity", {}))
                           if previous.get("identity", {}).get(k) != identity.get(k))
        if differing:
            shown = ", ".join(f"{k}: {previous['identity'].get(k)!r} -> {identity.get(k)!r}" for k in differing)
            raise RunMismatchError(f"{out_dir} holds results of another run ({shown}); "
                                   "pass another --out, or --overwrite to start again")
        for name, path in datasets.items():
            old = previous.get("datasets", {}).get(name)
            if old is not None and old != path:
                raise RunMismatchError(f"{out_dir}: data set {name!r} was {old} in the earlier run, now {path}; "
                                       "use another NAME, another --out, or --overwrite")
        datasets = {**previous.get("datasets", {}), **datasets}
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"identity": identity, "datasets": datasets}, indent=2) + "\n")


def _out_of_memory(error: BaseException) -> bool:
    """A failed allocation (host or GPU) while evaluating one image."""
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _skip_reason(error: BaseException) -> str:
    """Why a sample is skipped, in one line."""
    if _out_of_memory(error):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return (f"out of memory ({type(error).__name__}: {str(error).strip()[:200]}); segment it on a larger machine, "
                f"or lower the pixel limit ({PIXEL_LIMIT_ENV}) to skip such images when reading them")
    return " ".join(str(error).split()) or type(error).__name__


def evaluate(
    predictor: SamPredictor,
    datasets: Sequence[FolderDataset],
    protocol: Protocol,
    out_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    hce: bool = True,
    run_info: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate ``protocol`` on the first ``limit`` images of each data set; write the run files.

    Images already in ``out_dir/per_image.csv`` (from an interrupted run with the same
    settings) are skipped. An image that cannot be evaluated (unreadable, empty, over the
    pixel limit, a mask of another size, an empty ground truth, out of memory) is not scored:
    it is listed with the reason in the summary's ``skipped`` and the run goes on.
    Writes per_image.csv, curves.npz, summary.json, table.md and a PNG plot; returns the
    summary dict (also in summary.json).
    run_info: what identifies the model (name, checkpoint, ...), stored and checked on resume.
    """
    started = time.perf_counter()
    protocol.check(predictor)
    out_dir = Path(out_dir)
    identity = {**(run_info or {}), **protocol.config(), "hce": hce}
    roots = {d.name: str(Path(d.root).resolve()) for d in datasets}
    _prepare_run_dir(out_dir, identity, roots, overwrite)
    store = ResultStore(out_dir, columns_for(protocol), len(protocol.variants()), with_curves=protocol.kind == "mask")
    done = store.open()
    resumed = 0
    skipped: list[dict] = []
    selection = {d.name: d.limit(limit).names for d in datasets}
    try:
        for dataset in datasets:
            pairs = dataset.limit(limit).pairs
            todo = [p for p in pairs if (dataset.name, p.name) not in done]
            resumed += len(pairs) - len(todo)
            bar = tqdm(todo, total=len(pairs), initial=len(pairs) - len(todo), desc=f"{dataset.name} [{protocol.name}]",
                       unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
            for pair in bar:
                try:
                    sample = dataset.load(pair)
                    scored = [score(outcome, sample, dataset.name, hce) for outcome in protocol.run(predictor, sample)]
                except MissingExtraError:  # the setup, not this image: stop the run
                    raise
                except (SkipSample, FinesamError) as reason:  # DatasetError, ImageReadError, bad input
                    skipped.append({"dataset": dataset.name, "name": pair.name, "reason": _skip_reason(reason)})
                    continue
                except (MemoryError, RuntimeError) as error:
                    if not _out_of_memory(error):
                        raise
                    skipped.append({"dataset": dataset.name, "name": pair.name, "reason": _skip_reason(error)})
                    continue
                store.add(scored)
    finally:
        store.close()
    summary = {
        "run": {**identity, "datasets": roots, "limit": limit},
        "description": DESCRIPTIONS.get(protocol.name, ""),
        "datasets": summarize(store.rows, store.curves, protocol, selection),
        "skipped": skipped,
        "timing": {"seconds": round(time.perf_counter() - started, 2), "resumed_images": resumed},
    }
    summary = json_ready(summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "table.md").write_text(markdown(summary))
    write_plots(summary, out_dir)
    return summary
