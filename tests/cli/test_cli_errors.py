"""Every refusal of the command line is one line on stderr with exit code 2, and comes before
the model is loaded or any file is written (regressions of the hardening issue)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from finesam import cli
from finesam.cli import model_options

BOX = ["--box", "10", "10", "60", "50"]


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model were loaded: the refusal must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad argument was refused")

    monkeypatch.setattr(model_options, "load", refuse)


def run_segment(args, capsys):
    try:
        code = cli.main(["segment", *map(str, args)])
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_refusal(code, err, fragment):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING: RANDOM WEIGHTS")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("out, fragment", [  # a mask file, or (no image suffix) a folder
    ("mask.gif", "unknown extension"),
    ("mask.jpg", "lossy"),
    ("{tmp}/m.webp", "lossy"),
    ("{tmp}/in.png/mask.png", "is a file"),
    ("{tmp}/in.png/results", "is a file"),
])
def test_bad_out_paths_are_refused_before_the_model_loads(image_file, tmp_path, capsys, no_model_load, out, fragment):
    out = out.format(tmp=tmp_path)
    code, err = run_segment([image_file, "--model", "mobile_sam", "--random-weights", *BOX, "--out", out], capsys)
    assert_one_line_refusal(code, err, fragment)


def test_unwritable_folder_is_refused(image_file, tmp_path, capsys, no_model_load, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # root may write anywhere: answer as for an ordinary user
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    code, err = run_segment([image_file, "--model", "mobile_sam", "--random-weights", *BOX, "--out", locked / "m.png"], capsys)
    assert_one_line_refusal(code, err, "not writable")


def test_a_full_disk_is_one_line(image_file, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "m.png"
    code, err = run_segment([image_file, "--model", "mobile_sam", "--random-weights", *BOX, "--out", out], capsys)
    assert_one_line_refusal(code, err, "No space left on device")
    assert not out.exists() and not list(tmp_path.glob(".m.png*"))  # no half-written file left


@pytest.mark.parametrize("device, fragment", [
    ("tpu9", "unknown device"),
    ("meta", "unknown device"),
    ("cuda", "no CUDA GPU"),
    ("cuda:7", "CUDA"),
])
def test_devices_are_checked_before_the_model_loads(image_file, tmp_path, capsys, no_model_load, device, fragment):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = run_segment([image_file, "--model", "mobile_sam", "--random-weights", *BOX,
                             "--out", tmp_path / "m.png", "--device", device], capsys)
    assert_one_line_refusal(code, err, fragment)


def test_device_auto_runs(image_file, tmp_path, capsys):
    code, err = run_segment([image_file, "--model", "mobile_sam", "--random-weights", *BOX,
                             "--out", tmp_path / "m.png", "--device", "auto"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "m.png").size == (80, 60)


@pytest.mark.parametrize("args, fragment", [
    (["--box", "0", "0", "1e38", "5"], "far outside the 80x60 image"),
    (["--box", "0", "0", "nan", "5"], "NaN"),
    (["--point", "1e39", "5"], "point_coords hold 1e+39"),
    (["--box", "50", "50", "10", "10"], "x1 < x0"),
    (["--box", "0", "0", "5"], "expected 4 arguments"),
    (["--box", "0", "0", "x", "5"], "invalid float value"),
])
def test_bad_prompts_are_refused_before_the_model_loads(image_file, tmp_path, capsys, no_model_load, args, fragment):
    code, err = run_segment([image_file, "--model", "mobile_sam", "--random-weights", *args, "--out", tmp_path / "m.png"], capsys)
    assert_one_line_refusal(code, err, fragment)
    assert not (tmp_path / "m.png").exists()


def test_unknown_model_is_one_line(image_file, tmp_path, capsys, no_model_load):
    code, err = run_segment([image_file, "--model", "sam_vit_x", *BOX, "--out", tmp_path / "m.png"], capsys)
    assert_one_line_refusal(code, err, "unknown model 'sam_vit_x'")


def test_eval_refuses_bad_settings_before_writing(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "im").mkdir(parents=True)
    (data / "gt").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(data / "im" / "a.jpg")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(data / "gt" / "a.png")
    base = ["eval", "--model", "mobile_sam", "--random-weights", "--data", f"x={data}", "--protocol", "box", "--no-hce"]
    for extra, out, fragment in (
        (["--seed", "-1"], tmp_path / "run1", "seed must be an integer >= 0"),
        (["--device", "tpu9"], tmp_path / "run2", "unknown device"),
        ([], data / "im" / "a.jpg", "is a file"),
    ):
        code = cli.main([*base, *extra, "--out", str(out)])
        err = capsys.readouterr().err
        assert_one_line_refusal(code, err, fragment)
        assert not (out / "run.json").exists()
