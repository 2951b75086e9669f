"""`finesam segment` and the demo: outputs, random-weights warning, clear refusals (exit code 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from finesam import cli
from finesam.cli import demo


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


def test_segment_writes_mask_and_overlay(image_file, tmp_path, capsys):
    code = cli.main([
        "segment", str(image_file), "--model", "mobile_sam", "--random-weights",
        "--box", "10", "20", "100", "110", "--point", "50", "60", "--negative", "5", "5",
        "--out", str(tmp_path / "mask.png"), "--overlay", str(tmp_path / "overlay.png"),
    ])
    assert code == 0
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (120, 160) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(tmp_path / "overlay.png").size == (160, 120)
    captured = capsys.readouterr()
    assert "meaningless" in captured.out and "meaningless" in captured.err


def test_segment_several_boxes(image_file, tmp_path):
    code = cli.main([
        "segment", str(image_file), "--model", "hq_vit_tiny", "--random-weights", "--hq-output", "hq_only",
        "--box", "10", "20", "60", "80", "--box", "70", "10", "150", "100", "--out", str(tmp_path / "mask.png"),
    ])
    assert code == 0 and (tmp_path / "mask.png").is_file()


def test_segment_without_checkpoint_exits_2_and_says_what_to_fetch(image_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FINESAM_CHECKPOINTS", raising=False)
    code = cli.main(["segment", str(image_file), "--model", "mobile_sam", "--box", "1", "1", "50", "50", "--out", str(tmp_path / "m.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "mobile_sam.pt" in err and "put it at" in err
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--box", "50", "1", "10", "50"], "x1 < x0"),
        (["--point", "nan", "3"], "NaN"),
        ([], "at least one"),
    ],
)
def test_segment_refuses_bad_prompts(image_file, tmp_path, capsys, args, message):
    code = cli.main(["segment", str(image_file), "--model", "mobile_sam", "--random-weights", *args, "--out", str(tmp_path / "m.png")])
    assert code == 2 and message in capsys.readouterr().err


def test_unreadable_image_names_the_file(tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    code = cli.main(["segment", str(broken), "--model", "mobile_sam", "--random-weights", "--box", "1", "1", "5", "5", "--out", str(tmp_path / "m.png")])
    assert code == 2 and str(broken) in capsys.readouterr().err
    code = cli.main(["segment", str(tmp_path / "missing.png"), "--model", "mobile_sam", "--random-weights", "--box", "1", "1", "5", "5", "--out", str(tmp_path / "m.png")])
    assert code == 2 and "missing.png" in capsys.readouterr().err


def test_console_script_is_installed(image_file, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "finesam.cli", "segment", "--help"], capture_output=True, text=True, check=True
    )
    assert "--box" in result.stdout and "--random-weights" in result.stdout


def test_demo_without_checkpoint_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FINESAM_CHECKPOINTS", raising=False)
    assert demo.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sam_hq_vit_tiny.pth" in err and "--random-weights" in err


def test_demo_with_random_weights_writes_every_output(tmp_path, capsys):
    pytest.importorskip("skimage")
    out = tmp_path / "out"
    assert demo.main(["--model", "mobile_sam", "--random-weights", "--out", str(out), "--shared-demo", str(tmp_path / "none")]) == 0
    names = {p.name for p in out.iterdir()}
    for name, _, _ in demo.SKIMAGE_JOBS:
        assert f"{name}_mask.png" in names and f"{name}_overlay.png" in names
    assert "meaningless" in capsys.readouterr().out


def test_demo_includes_shared_images_when_present():
    from conftest import data_path

    shared = data_path("demo")
    names = [name for name, _, _ in demo.demo_jobs(shared)]
    assert "example7" in names and "coffee_cup" in names


def test_outputs_never_replace_the_input_image(image_file, tmp_path, capsys, monkeypatch):
    """--out / --overlay naming the photograph (also through a symlink, another spelling or a hard
    link) is refused before the model loads, and the photograph is left as it was."""
    from finesam.cli import model_options

    monkeypatch.setattr(model_options, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    original = image_file.read_bytes()
    (tmp_path / "link.png").symlink_to(image_file)
    os.link(image_file, tmp_path / "hard.png")
    (tmp_path / "sub").mkdir()
    for flags in (["--out", str(image_file)], ["--out", str(tmp_path / "link.png")], ["--out", str(tmp_path / "hard.png")],
                  ["--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "sub" / ".." / "photo.png")],
                  ["--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "m.png")]):
        code = cli.main(["segment", str(image_file), "--model", "mobile_sam", "--random-weights", "--box", "1", "1", "50", "50", *flags])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and ("is the input image" in err or "the same file" in err), err
        assert image_file.read_bytes() == original and not (tmp_path / "m.png").exists()
