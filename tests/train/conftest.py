"""Small models and a few real images for the training tests.

The models are HQ-SAM and Pi-SAM with a one-block, 64-wide ViT encoder (the decoders are the real
ones; only the frozen encoder is shrunk so that a step costs well under a second here).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import finesam
from finesam.registry import REGISTRY

from conftest import DATA

SMALL_ENCODER = dict(depth=1, embed_dim=64, num_heads=2, global_attn_indexes=(0,))
SMALL_MODELS = {"train_test_hq": "hq_vit_b", "train_test_pi": "pi_vit_b"}
REPO = Path(__file__).resolve().parents[2]
ECSSD = DATA / "ecssd"

# Registers the small models, then runs the command line: for subprocesses (torchrun, kill tests).
RUNNER = f"""
import sys
import finesam
from finesam.registry import REGISTRY
for name, base in {SMALL_MODELS!r}.items():
    finesam.register_model(name, REGISTRY[base].with_encoder(**{SMALL_ENCODER!r}))
from finesam.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="session")
def small_models():
    """Register the small models for this test session (and remove them afterwards)."""
    for name, base in SMALL_MODELS.items():
        finesam.register_model(name, REGISTRY[base].with_encoder(**SMALL_ENCODER))
    yield tuple(SMALL_MODELS)
    for name in SMALL_MODELS:
        finesam.unregister_model(name)


@pytest.fixture(scope="session")
def few_images(tmp_path_factory) -> Path:
    """An im/ + gt/ folder with 4 real ECSSD pairs (skips without ../shared/data)."""
    if not ECSSD.is_dir():
        pytest.skip(f"real images not found at {ECSSD}")
    root = tmp_path_factory.mktemp("few_images")
    for sub in ("im", "gt"):
        (root / sub).mkdir()
    for stem in ("0001", "0002", "0005", "0010"):
        shutil.copy(ECSSD / "im" / f"{stem}.jpg", root / "im")
        shutil.copy(ECSSD / "gt" / f"{stem}.png", root / "gt")
    return root


@pytest.fixture(scope="session")
def runner_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runner") / "train_runner.py"
    path.write_text(RUNNER)
    return path


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return env


PYTHON = sys.executable


@pytest.fixture(scope="session")
def official_sam_file(tmp_path_factory) -> Path:
    """A seeded SAM file in the official layout (``segment_anything``'s own state dict) with the
    small models' encoder: the real ``--init`` of the HQ and Pi recipes, whose new parts it lacks."""
    import torch

    pytest.importorskip("segment_anything")
    from segment_anything.build_sam import _build_sam

    path = tmp_path_factory.mktemp("official_sam") / "sam_small.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2024)
        sam = _build_sam(SMALL_ENCODER["embed_dim"], SMALL_ENCODER["depth"], SMALL_ENCODER["num_heads"],
                         list(SMALL_ENCODER["global_attn_indexes"]))
    torch.save(sam.state_dict(), path)
    return path
