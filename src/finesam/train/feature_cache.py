"""Frozen-encoder outputs computed once per image and augmented view, reused every epoch.

The frozen image encoder dominates a training step (a ViT-B forward is ~1 TFLOP per image). With
``--cache-features DIR`` each image is augmented ``--cached-views K`` times (view v is the data
set's augmentation of epoch v), encoded once, and stored: the embedding (256, 64, 64), the early
feature (64, 64, C) when the decoder reads it, the normalised image when it reads that (Pi-SAM's
RGB embedding), all in float16 or bfloat16, and the augmented label in float16 (exact for 0/255
labels). Epoch e then reads view e mod K, so K = 1 trains on one fixed augmentation per image:
the price of the speed. The storage error is measured on the first cached item and recorded in
``manifest.json`` (and printed).

A cache folder is keyed by everything that changes its content (model, weights file, data, seed,
augmentation, K, dtype); a run with other settings uses another sub-folder, never stale files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..checkpoints.files import save_atomically
from ..distributed import DistributedContext, barrier, shard
from ..errors import InvalidInputError
from ..modeling.contracts.features import ImageFeatures
from ..modeling.sam import Sam
from ..outputs import write_text_atomically

MANIFEST = "manifest.json"


def _file_identity(path: Any) -> Any:
    if path is None:
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


class EncodedViewCache:
    """The frozen encoder's outputs per image and augmented view of one run's data set, on disk
    (see the module docstring); the web tool's in-memory cache of images' features is
    :class:`finesam.server.cache.FeatureCache`."""

    def __init__(self, folder: Path, dataset: Any, views: int, extras: frozenset[str]) -> None:
        self.folder, self.dataset, self.views, self.extras = folder, dataset, views, extras

    def item_path(self, index: int, view: int) -> Path:
        return self.folder / f"{index:07d}_v{view}.pt"

    @classmethod
    def prepare(cls, root: Path, model: Sam, dataset: Any, config: Any, settings: dict, context: DistributedContext,
                dtype: torch.dtype, progress: bool = True, identity: dict | None = None,
                extras: frozenset[str] | None = None) -> "EncodedViewCache":
        """Compute what is missing (each rank its share), then return the cache every rank reads.

        ``identity`` replaces the model part of the cache key (distillation keys by the teacher);
        ``extras``: encoder extras to store (default: those ``model``'s decoder reads).
        """
        extras = model.capabilities.encoder_features if extras is None else extras
        if identity is None:
            identity = {"model": config.model, "init": _file_identity(config.init), "init_decoder": _file_identity(config.init_decoder),
                        "random_weights_seed": config.seed if config.random_weights else None}
        key = {
            **identity, "data": settings["data"],
            "items": dataset.names() if hasattr(dataset, "names") else len(dataset),
            "augmentation": repr(dataset.augment), "seed": config.seed, "views": config.cached_views,
            "dtype": str(dtype), "extras": sorted(extras),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        folder = Path(root) / digest
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InvalidInputError(f"`cache_features` {str(root)!r} cannot be created: {error.strerror or error}",
                                    parameters=("cache_features",)) from None
        cache = cls(folder, dataset, config.cached_views, extras)
        work = [(index, view) for view in range(cache.views) for index in range(len(dataset))]
        missing = [item for item in shard(work, context) if not cache.item_path(*item).is_file()]
        error_report = cache._compute(model, missing, dtype, progress and context.is_main)
        barrier(context)
        if context.is_main:
            manifest = {"key": key, "storage_error": error_report} if error_report else {"key": key}
            if not (folder / MANIFEST).exists() or error_report:
                write_text_atomically(folder / MANIFEST, json.dumps(manifest, indent=2, default=str))
        return cache

    @torch.no_grad()
    def _compute(self, model: Sam, items: list[tuple[int, int]], dtype: torch.dtype, progress: bool) -> dict | None:
        from tqdm import tqdm

        report = None
        current_view = None
        for index, view in tqdm(items, desc="caching features", unit="view", disable=not progress):
            if view != current_view:
                self.dataset.set_epoch(view)
                current_view = view
            sample = self.dataset[index]
            features = model.encode_image(sample["image"][None].to(model.device), self.extras)
            stored = {"embedding": features.embedding[0]}
            if "label" in sample:  # distillation data have none
                stored["label"] = sample["label"]
            if features.early is not None:
                stored["early"] = features.early[0]
            if features.image is not None:
                stored["image"] = features.image[0]
            record = {name: value.detach().cpu().to(torch.float16 if name == "label" else dtype).contiguous()
                      for name, value in stored.items()}
            record["index"] = torch.tensor(index)
            if report is None:
                report = {name: _relative_error(stored[name].cpu(), record[name]) for name in stored}
                print("feature cache: storage error (max |stored - float32| / max |float32|): "
                      + ", ".join(f"{name} {value:.2e}" for name, value in report.items()))
            save_atomically(record, self.item_path(index, view))
        return report

    def epoch_view(self, epoch: int) -> Dataset:
        """A data set of epoch ``epoch``'s cached items (view ``epoch mod K``)."""
        return _CachedView(self, epoch % self.views)

    def features(self, batch: dict, device: torch.device) -> ImageFeatures:
        """:class:`ImageFeatures` (float32 on ``device``) of a collated batch of cached items."""
        def take(name: str) -> torch.Tensor | None:
            return batch[name].to(device=device, dtype=torch.float32) if name in batch else None

        return ImageFeatures(take("embedding"), take("early"), take("image"))


class _CachedView(Dataset):
    def __init__(self, cache: EncodedViewCache, view: int) -> None:
        self.cache, self.view = cache, view

    def __len__(self) -> int:
        return len(self.cache.dataset)

    def __getitem__(self, index: int) -> dict:
        path = self.cache.item_path(index, self.view)
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as error:
            raise InvalidInputError(f"cached features {str(path)!r} are unreadable ({error}); delete the folder and rerun") from None
        if "label" in record:
            record["label"] = record["label"].float()
        record["index"] = int(record["index"])
        return record


def collate_cached(records: list[dict]) -> dict:
    """Stack cached items: every tensor (B, ...), ``index`` a list of ints."""
    batch = {key: torch.stack([record[key] for record in records]) for key in records[0] if key != "index"}
    batch["index"] = [record["index"] for record in records]
    return batch


def _relative_error(reference: torch.Tensor, stored: torch.Tensor) -> float:
    scale = reference.abs().max().clamp(min=1e-12)
    return float((stored.float() - reference.float()).abs().max() / scale)

