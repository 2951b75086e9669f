"""Run a protocol over data sets into a run directory (resumable), then write the reports.

Under ``torchrun`` (see :mod:`finesam.distributed`) the images are split by rank: in each round
every rank evaluates one image, the rows (and masks) are gathered to rank 0, which alone writes
``per_image.csv``, the masks, ``summary.json``, ``table.md`` and the plots. Rounds go through the
images in the same order as one process does, so the merged files equal a single-process run.
A rank that fails stops every rank after the round (no rank waits forever in a collective).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from ..data import FolderDataset
from ..data.images import PIXEL_LIMIT_ENV, save_mask
from ..distributed import SINGLE_PROCESS, DistributedContext, broadcast_from_main, gather_to_main, shard
from ..errors import FinesamError, InvalidInputError, one_line
from ..optional import MissingExtraError
from ..outputs import check_output_dir, write_text_atomically
from ..predict.predictor import SamPredictor
from .protocols import Protocol, SkipSample
from .report import markdown, write_plots
from .results import Record, ResultStore, columns_for, json_ready, score, summarize

T = TypeVar("T")

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
MASKS_FOLDER = "masks"


class RunMismatchError(InvalidInputError):
    """The output folder holds results of a run with other settings."""


class RankFailedError(FinesamError):
    """Another process of a ``torchrun`` run failed; this one stopped with it."""


def mask_file(dataset: str, name: str, variant: str, trial: int, trials: int) -> str:
    """Where ``--save-masks`` puts a predicted mask, relative to the run folder:
    ``masks/DATASET/VARIANT/NAME.png`` (``VARIANT_trialK`` when the variant has several trials),
    so each variant's folder mirrors the ground-truth folder (same names)."""
    folder = variant if trials == 1 else f"{variant}_trial{trial}"
    return f"{MASKS_FOLDER}/{dataset}/{folder}/{name}.png"


def _check_mask_folders(out_dir: Path, datasets: Sequence[FolderDataset]) -> None:
    """Before any work: each data set's mask folder can be a folder name and be written."""
    for dataset in datasets:
        name = dataset.name
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\\:*?\"<>|"):
            raise InvalidInputError(f"data set name {name!r} cannot be a folder name under {MASKS_FOLDER}/ (for "
                                    "saved masks); give `datasets` a plain NAME=PATH (letters, digits, - _ .)",
                                    parameters=("datasets",))
        check_output_dir(out_dir / MASKS_FOLDER / name, "masks folder")


def _prepare_run_dir(out_dir: Path, identity: dict, datasets: dict[str, str], overwrite: bool) -> None:
    run_file = out_dir / "run.json"
    if overwrite:
        if run_file.is_file():  # a folder of ours: its masks go too
            shutil.rmtree(out_dir / MASKS_FOLDER, ignore_errors=True)
        for name in (*OUTPUT_FILES, "run.json"):
            (out_dir / name).unlink(missing_ok=True)
    elif run_file.is_file():
        previous = json.loads(run_file.read_text())
        differing = sorted(k for k in set(identity) | set(previous.get("identity", {}))
                           if previous.get("identity", {}).get(k) != identity.get(k))
        if differing:
            shown = ", ".join(f"{k}: {previous['identity'].get(k)!r} -> {identity.get(k)!r}" for k in differing)
            raise RunMismatchError(f"{out_dir} holds results of another run ({shown}); "
                                   "pass another `out_dir`, or `overwrite` to start again", parameters=("out_dir", "overwrite"))
        for name, path in datasets.items():
            old = previous.get("datasets", {}).get(name)
            if old is not None and old != path:
                raise RunMismatchError(f"{out_dir}: data set {name!r} was {old} in the earlier run, now {path}; "
                                       "use another NAME, another `out_dir`, or `overwrite`", parameters=("out_dir", "overwrite"))
        datasets = {**previous.get("datasets", {}), **datasets}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_file, json.dumps({"identity": identity, "datasets": datasets}, indent=2) + "\n")


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


@dataclass
class _ImageResult:
    """What one rank sends to rank 0 for one image: its rows and packed masks, or why it was skipped."""

    dataset: str
    name: str
    records: list[Record] = field(default_factory=list)
    masks: list[tuple[str, tuple[int, int], np.ndarray]] = field(default_factory=list)  # (file, (H, W), packbits)
    skip_reason: str | None = None


@dataclass
class _Failure:
    """An error that stops the run, as every rank learns it (messages only: errors may not pickle)."""

    rank: int
    where: str
    message: str

    def describe(self) -> str:
        return f"process {self.rank} of the torchrun run failed{self.where}: {self.message}"


class _Attempt:
    """Runs steps of one rank; under torchrun an exception becomes a :class:`_Failure` to share
    (kept here to re-raise on this rank), so that every rank reaches the next collective."""

    def __init__(self, context: DistributedContext) -> None:
        self.context = context
        self.error: BaseException | None = None

    def __call__(self, work: Callable[[], T], where: str = "") -> T | _Failure:
        if not self.context.enabled:
            return work()  # one process: errors propagate as they are
        try:
            return work()
        except Exception as error:
            self.error = error
            return _Failure(self.context.rank, where, f"{type(error).__name__}: {one_line(error)}")

    def raise_if(self, failure: _Failure | None) -> None:
        """Stop every rank the same way: this rank's own error where it failed, else RankFailedError."""
        if failure is None:
            return
        if failure.rank == self.context.rank and self.error is not None:
            raise self.error
        raise RankFailedError(failure.describe())


def _on_main(attempt: _Attempt, work: Callable[[], T]) -> T:
    """``work()`` on rank 0, its result on every rank; its failure raised on every rank."""
    outcome = attempt(work) if attempt.context.is_main else None
    outcome = broadcast_from_main(outcome, attempt.context)
    attempt.raise_if(outcome if isinstance(outcome, _Failure) else None)
    return outcome


def _evaluate_pair(predictor: SamPredictor, dataset: FolderDataset, pair, protocol: Protocol, hce: bool,
                   trials: Counter | None) -> _ImageResult:
    """Score one image; a problem of this image (not of the setup) makes it a skip with a reason."""
    try:
        sample = dataset.load(pair)
        outcomes = protocol.run(predictor, sample)
        records = [score(outcome, sample, dataset.name, hce) for outcome in outcomes]
    except MissingExtraError:  # the setup, not this image: stop the run
        raise
    except (SkipSample, FinesamError) as reason:  # DatasetError, ImageReadError, bad input
        return _ImageResult(dataset.name, pair.name, skip_reason=_skip_reason(reason))
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        return _ImageResult(dataset.name, pair.name, skip_reason=_skip_reason(error))
    masks = []
    if trials is not None:
        masks = [(mask_file(dataset.name, pair.name, o.variant, o.trial, trials[o.variant]), o.mask.shape,
                  np.packbits(o.mask)) for o in outcomes]
    return _ImageResult(dataset.name, pair.name, records, masks)


def _keep(results: Sequence[_ImageResult | None], store: ResultStore, skipped: list[dict], out_dir: Path) -> None:
    """Rank 0: write the masks, then the rows (an image is done once its rows are in the CSV)."""
    for result in results:
        if result is None:
            continue
        if result.skip_reason is not None:
            skipped.append({"dataset": result.dataset, "name": result.name, "reason": result.skip_reason})
            continue
        for relative, shape, bits in result.masks:
            save_mask(np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape), out_dir / relative)
        store.add(result.records)


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
    save_masks: bool = False,
    context: DistributedContext = SINGLE_PROCESS,
) -> dict:
    """Evaluate ``protocol`` on the first ``limit`` images of each data set; write the run files.

    Images already in ``out_dir/per_image.csv`` (from an interrupted run with the same
    settings) are skipped. An image that cannot be evaluated (unreadable, empty, over the
    pixel limit, a mask of another size, an empty ground truth, out of memory) is not scored:
    it is listed with the reason in the summary's ``skipped`` and the run goes on.
    Writes per_image.csv, curves.npz, summary.json, table.md and a PNG plot; returns the
    summary dict (also in summary.json).
    run_info: what identifies the model (name, checkpoint, ...), stored and checked on resume.
    save_masks: also write each predicted mask (a click run: the mask after the last click) as a
        0/255 PNG, see :func:`mask_file`.
    context: from :func:`finesam.distributed.init_distributed` under ``torchrun``: each rank
        evaluates its share of the images, rank 0 alone writes; every rank returns the summary.
    """
    started = time.perf_counter()
    protocol.check(predictor)
    out_dir = Path(out_dir)
    identity = {**(run_info or {}), **protocol.config(predictor), "hce": hce}
    roots = {d.name: str(Path(d.root).resolve()) for d in datasets}
    if save_masks:
        _check_mask_folders(out_dir, datasets)
    trials = Counter(variant for variant, _ in protocol.variants()) if save_masks else None
    attempt = _Attempt(context)
    store = ResultStore(out_dir, columns_for(protocol), len(protocol.variants()), with_curves=True)

    def plan() -> list[tuple[list, int]]:
        """Rank 0: open (or resume) the run folder; per data set, the pairs still to do and the count."""
        _prepare_run_dir(out_dir, identity, roots, overwrite)
        done = store.open()
        todo = []
        without_masks = 0
        for dataset in datasets:
            pairs = dataset.limit(limit).pairs
            todo.append(([p for p in pairs if (dataset.name, p.name) not in done], len(pairs)))
            if save_masks:
                without_masks += sum(
                    1 for p in pairs if (dataset.name, p.name) in done
                    and not all((out_dir / mask_file(dataset.name, p.name, v, t, trials[v])).is_file()
                                for v, t in protocol.variants()))
        if without_masks:
            warnings.warn(f"{without_masks} image(s) resumed from the earlier run in {out_dir} have no saved masks "
                          "(that run had no --save-masks); pass --overwrite to evaluate and save them all", stacklevel=3)
        return todo

    try:
        todo = _on_main(attempt, plan)
        skipped: list[dict] = []
        for dataset, (pairs, total) in zip(datasets, todo):
            bar = tqdm(total=total, initial=total - len(pairs), desc=f"{dataset.name} [{protocol.name}]", unit="img",
                       disable=not progress or not context.is_main, file=sys.stderr, dynamic_ncols=True)
            mine = shard(pairs, context)
            for round_index in range(math.ceil(len(pairs) / context.world_size)):
                result = None
                if round_index < len(mine):
                    pair = mine[round_index]
                    result = attempt(lambda: _evaluate_pair(predictor, dataset, pair, protocol, hce, trials),
                                     f" on {dataset.name}/{pair.name}")
                gathered = gather_to_main(result, context)
                stop = None
                if context.is_main:
                    stop = next((r for r in gathered if isinstance(r, _Failure)), None)
                    if stop is None:
                        kept = attempt(lambda: _keep(gathered, store, skipped, out_dir), " writing results")
                        stop = kept if isinstance(kept, _Failure) else None
                    bar.update(sum(r is not None for r in gathered))
                if context.enabled:
                    attempt.raise_if(broadcast_from_main(stop, context))
            bar.close()
    finally:
        store.close()
    resumed = sum(total - len(pairs) for pairs, total in todo)

    def report() -> dict:
        """Rank 0: the summary from the stored rows, and the report files."""
        selection = {d.name: d.limit(limit).names for d in datasets}
        summary = json_ready({
            "run": {**identity, "datasets": roots, "limit": limit},
            "description": DESCRIPTIONS.get(protocol.name, ""),
            "datasets": summarize(store.rows, store.curves, protocol, selection),
            "skipped": skipped,
            "masks": f"{MASKS_FOLDER}/" if save_masks else None,
            "timing": {"seconds": round(time.perf_counter() - started, 2), "resumed_images": resumed,
                       "processes": context.world_size},
        })
        write_text_atomically(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomically(out_dir / "table.md", markdown(summary))
        write_plots(summary, out_dir)
        return summary

    return _on_main(attempt, report)
