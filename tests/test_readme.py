"""Every Python example in the README runs (checkpoints replaced by random weights, shallow ViTs)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import finesam
import finesam.compat.registry
import finesam.loading
from finesam.registry import get_spec

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
REAL_LOAD = finesam.loading.load


def offline_load(name, checkpoint=None, **kwargs):
    """The README names official files that tests cannot have: load random weights instead."""
    spec = get_spec(name)
    if getattr(spec.build, "encoder", None) == "vit":
        spec = spec.with_encoder(depth=2, global_attn_indexes=(1,))
    kwargs.pop("init_missing", None)
    kwargs.pop("random_weights", None)
    kwargs.pop("decoder_checkpoint", None)
    kwargs["device"] = "cpu"
    return REAL_LOAD(spec, random_weights=True, **kwargs)


def test_readme_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save("photo.jpg")
    monkeypatch.setattr(finesam, "load", offline_load)
    monkeypatch.setattr(finesam.compat.registry, "load", offline_load)
    exec(compile(BLOCKS[index], f"README block {index}", "exec"), {"__name__": "__readme__"})
