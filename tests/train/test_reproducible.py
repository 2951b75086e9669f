"""Every run is a function of its command (issue 22.1): with ``--init`` a real SAM file, whose HQ /
Pi parts are drawn fresh, the same command gives the same model and losses; the caller's random
state is neither used nor changed."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from finesam.checkpoints.files import read_state_dict
from finesam.train.engine import METRICS, RUN_INFO, TrainConfig, train
from finesam.train.final_checkpoint import FINAL

from .conftest import PYTHON, subprocess_env

RECIPE_MODELS = {"hq": "train_test_hq", "pi-stage1": "train_test_pi", "pi-stage2": "train_test_pi"}


def _command(runner_script, recipe: str, init, data, out) -> list[str]:
    return [PYTHON, str(runner_script), "train", "--recipe", recipe, "--model", RECIPE_MODELS[recipe], "--init", str(init),
            "--data", f"few={data}", "--out", str(out), "--max-steps", "2", "--batch-size", "1", "--workers", "0",
            "--quiet", "--seed", "3"]


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / METRICS).read_text().splitlines()]


# hq: tests/train/test_engine.py runs its same command twice (with resume and torchrun beside)
@pytest.mark.parametrize("recipe", ["pi-stage1", "pi-stage2"])
def test_same_command_twice_gives_the_same_model(tmp_path, recipe, small_models, few_images, official_sam_file, runner_script):
    runs = [subprocess.Popen(_command(runner_script, recipe, official_sam_file, few_images, tmp_path / name), env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for name in ("first", "second")]
    for process in runs:
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors[-3000:]
    first, second = read_state_dict(tmp_path / "first" / FINAL), read_state_dict(tmp_path / "second" / FINAL)
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert _losses(tmp_path / "first") == _losses(tmp_path / "second")
    assert json.loads((tmp_path / "first" / RUN_INFO).read_text())["settings"]["seed"] == 3


def test_training_neither_uses_nor_changes_the_global_random_state(tmp_path, small_models, few_images, official_sam_file):
    """In-process: two runs after different global seeds agree, and the caller's state is as it was."""
    losses, weights = [], []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        with pytest.warns(UserWarning, match="keep their fresh initialisation"):
            result = train(TrainConfig(recipe="hq", model="train_test_hq", out=tmp_path / f"run{global_seed}", data=[("few", few_images)],
                                       init=official_sam_file, max_steps=1, batch_size=1, workers=0, progress=False, seed=5))
        assert torch.equal(before, torch.get_rng_state())
        losses.append(result.first_loss)
        weights.append(read_state_dict(tmp_path / f"run{global_seed}" / FINAL))
    assert losses[0] == losses[1]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
