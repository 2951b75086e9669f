"""An LRU cache of image features (the encoder's output), bounded in bytes.

The encoder runs once per image when the image is opened; clicks reuse the cached features.
Two browser sessions that open the same pixels share one entry (the cache belongs to one model). An entry's
size is measured from its tensors: the (1, 256, 64, 64) embedding, plus the early feature and the
input image for decoders that read them (MobileSAM / SAM: 4.2 MB; Pi-SAM ViT-B: 4.2 + 12.6 + 12.6 MB).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..modeling.contracts.features import ImageFeatures


def image_key(image: np.ndarray) -> str:
    """A key for an (H, W, 3) uint8 image: sha256 of its shape and pixels."""
    digest = hashlib.sha256(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def features_nbytes(features: ImageFeatures) -> int:
    """Bytes held by the tensors of ``features`` (each storage counted once)."""
    seen, total = set(), 0
    for tensor in _tensors([features.embedding, features.early, features.image, features.derived]):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


@dataclass
class CacheEntry:
    features: ImageFeatures
    nbytes: int
    encode_ms: float
    created: float = field(default_factory=time.monotonic)


class FeatureCache:
    """Image key -> :class:`ImageFeatures`, least recently used first out, at most ``max_bytes``.

    The most recent entry is always kept, even if it alone exceeds the bound. ``get_or_encode``
    encodes a missing image once, even when several threads ask for it at the same time.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._encoding: dict[str, threading.Lock] = {}
        self.hits = self.misses = self.evictions = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def get_or_encode(self, key: str, encode: Callable[[], ImageFeatures]) -> tuple[CacheEntry, bool]:
        """The entry of ``key``, computing it with ``encode()`` if absent; returns (entry, was_cached)."""
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return entry, True
        with self._lock:
            key_lock = self._encoding.setdefault(key, threading.Lock())
        with key_lock:  # a second request for the same image waits for the first encoding
            entry = self.get(key)
            if entry is not None:
                self.hits += 1
                return entry, True
            self.misses += 1
            start = time.perf_counter()
            try:
                features = encode()
                entry = CacheEntry(features, features_nbytes(features), (time.perf_counter() - start) * 1000)
                with self._lock:
                    self._entries[key] = entry
                    self._evict()
            finally:  # also after a failed encoding: the next request tries afresh
                with self._lock:
                    self._encoding.pop(key, None)
            return entry, False

    def _evict(self) -> None:
        total = sum(entry.nbytes for entry in self._entries.values())
        while total > self.max_bytes and len(self._entries) > 1:
            _, entry = self._entries.popitem(last=False)
            total -= entry.nbytes
            self.evictions += 1
