"""Seeded official-format checkpoint files, written by the official builders, and the builders
that read them in each package (the official one and finesam's compat one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import finesam
from finesam.registry import REGISTRY

from conftest import randomize_, save_state

# Depth-reduced ViT-B (2 blocks, the second global): what the official _build_sam allows; the
# code paths under test do not depend on depth.
VIT_B_ARGS = (768, 2, 12, [1])
VIT_B_OVERRIDES = dict(depth=2, global_attn_indexes=(1,))


@dataclass
class OfficialFile:
    """A checkpoint in the official format and the two ways to build a model from it."""

    path: Path
    official: Callable[[str], torch.nn.Module]
    ours: Callable[[str], torch.nn.Module]


def write_file(builder: Callable[[], torch.nn.Module], seed: int, path: Path) -> Path:
    torch.manual_seed(seed)
    return save_state(randomize_(builder(), seed), path)


def sam_vit_b_file(folder: Path) -> OfficialFile:
    """segment_anything's (depth-reduced) ViT-B; the finesam side is its registered spec."""
    from segment_anything.build_sam import _build_sam

    path = write_file(lambda: _build_sam(*VIT_B_ARGS), 11, folder / "sam_vit_b.pth")
    spec = REGISTRY["sam_vit_b"].with_encoder(**VIT_B_OVERRIDES)
    return OfficialFile(path, lambda p: _build_sam(*VIT_B_ARGS, checkpoint=p), lambda p: finesam.load(spec, p))


def small_sam_file(folder: Path) -> OfficialFile:
    """segment_anything's ViT at width 64 (2 blocks): the notebooks' code paths, fast on a CPU."""
    from segment_anything.build_sam import _build_sam

    args, overrides = (64, 2, 2, [1]), dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,))
    path = write_file(lambda: _build_sam(*args), 5, folder / "sam_small.pth")  # tests/predict/test_amg's weights
    spec = REGISTRY["sam_vit_b"].with_encoder(**overrides)
    return OfficialFile(path, lambda p: _build_sam(*args, checkpoint=p), lambda p: finesam.load(spec, p))


def hq_vit_b_file(folder: Path) -> OfficialFile:
    """segment_anything_hq's (depth-reduced) HQ ViT-B."""
    from segment_anything_hq.build_sam import _build_sam

    path = write_file(lambda: _build_sam(*VIT_B_ARGS), 12, folder / "sam_hq_vit_b.pth")
    spec = REGISTRY["hq_vit_b"].with_encoder(**VIT_B_OVERRIDES)
    return OfficialFile(path, lambda p: _build_sam(*VIT_B_ARGS, checkpoint=p), lambda p: finesam.load(spec, p))


def hq_vit_tiny_file(folder: Path) -> OfficialFile:
    """Light HQ-SAM, through each package's own registry (the true one-import change)."""
    from segment_anything_hq.build_sam import build_sam_vit_t, sam_model_registry

    from finesam.compat import segment_anything_hq as compat

    path = write_file(build_sam_vit_t, 13, folder / "sam_hq_vit_tiny.pth")
    return OfficialFile(path, sam_model_registry["vit_tiny"], compat.sam_model_registry["vit_tiny"])


def mobile_sam_file(folder: Path) -> OfficialFile:
    """MobileSAM, as segment_anything_hq's baseline registry builds it."""
    from segment_anything_hq.build_sam_baseline import build_sam_vit_t, sam_model_registry_baseline

    from finesam.compat import segment_anything_hq as compat

    path = write_file(build_sam_vit_t, 14, folder / "mobile_sam.pt")
    return OfficialFile(path, sam_model_registry_baseline["vit_tiny"], compat.sam_model_registry_baseline["vit_tiny"])


def official_packages() -> None:
    pytest.importorskip("segment_anything")
    pytest.importorskip("segment_anything_hq")
