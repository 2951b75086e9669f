"""Helpers of the evaluation tests: seeded models, an image-encoder cache, small real data sets."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import finesam
from conftest import data_path
from finesam.modeling.sam import Sam

_ENCODED: dict = {}


def seeded_model(name: str):
    """``finesam.load(name, random_weights=True)`` after ``torch.manual_seed(0)``, as ``--random-weights``."""
    torch.manual_seed(0)
    return finesam.load(name, random_weights=True)


def _weights_fingerprint(module: torch.nn.Module) -> float:
    """Sum of the weights, computed once per module (the tests never change weights in place)."""
    if not hasattr(module, "_test_fingerprint"):
        module._test_fingerprint = float(sum(p.detach().double().sum() for p in module.parameters()))
    return module._test_fingerprint


@contextmanager
def cached_image_encoder():
    """Reuse image embeddings across tests (the encoder is deterministic): the CPU encoder is
    the slow part of every test here, and several protocols see the same images."""
    original = Sam.encode_image

    def encode_image(self, x: torch.Tensor, extras=None):
        key = (hashlib.sha1(x.detach().float().cpu().numpy().tobytes()).hexdigest(), tuple(x.shape),
               _weights_fingerprint(self.image_encoder), self.capabilities.encoder_features, extras)
        if key not in _ENCODED:
            _ENCODED[key] = original(self, x, extras)
        return _ENCODED[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Sam, "encode_image", encode_image)
        yield


def subset(tmp: Path, source: str, names: list[str], folder: str | None = None) -> Path:
    """A folder with only some pairs of ``../shared/data/<source>`` (links, same im/ + gt/ layout)."""
    root = tmp / (folder or source)
    for sub in ("im", "gt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for path in sorted(data_path(source, sub).iterdir()):
            if path.stem in names:
                (root / sub / path.name).symlink_to(path.resolve())
    return root


def small_dis(tmp: Path, long_side: int = 480) -> Path:
    """The first DIS5K sample downscaled (its thin structures kept by area-averaging the mask)."""
    source = data_path("dis5k_samples")
    root = tmp / "dis_small"
    image_path = sorted((source / "im").iterdir())[0]
    gt_path = source / "gt" / (image_path.stem + ".png")
    image, gt = Image.open(image_path).convert("RGB"), Image.open(gt_path).convert("L")
    scale = long_side / max(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    image.resize(size, Image.BILINEAR).save(root / "im" / "bag.jpg")
    small_gt = np.array(gt.resize(size, Image.BOX))
    Image.fromarray(np.where(small_gt > 128, 255, 0).astype(np.uint8)).save(root / "gt" / "bag.png")
    return root
