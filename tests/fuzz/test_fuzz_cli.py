"""Generated ``finesam segment`` command lines: exit 0 with masks of the image's size (one mask
file, or a folder of them), exit 1 (a folder run whose image failed: reported in a summary), or
exit 2 with one line on stderr, nothing written and no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fuzz_checks import cached_models, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from finesam import cli
from finesam.cli import model_options

IMAGE_SIZE = (70, 50)  # width, height



@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_fuzz")
    pixels = np.random.default_rng(5).integers(0, 255, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "photo.png")
    Image.fromarray(pixels).save(root / "photo.jpg")
    (root / "notes.png").write_text("not an image")
    (root / "empty.jpg").write_bytes(b"")
    (root / "folder").mkdir()
    return root


@pytest.fixture(scope="module")
def fast_models():
    with cached_models(model_options):
        yield


NUMBER_TOKENS = st.sampled_from(["10", "5.5", "0", "-3", "69", "49", "1e38", "-1e300", "nan", "inf", "x", "", "1e5", "35"])
COORDS = st.lists(NUMBER_TOKENS, min_size=2, max_size=2)
BOX_TOKENS = st.one_of(
    st.tuples(st.sampled_from(["0", "5", "10"]), st.sampled_from(["0", "5", "8"]), st.sampled_from(["40", "60", "69"]),
              st.sampled_from(["30", "45", "49"])).map(list),  # well-formed boxes
    st.lists(NUMBER_TOKENS, min_size=3, max_size=5),
)


GOOD_BOX = st.tuples(st.sampled_from(["0", "5", "10"]), st.sampled_from(["0", "5", "8"]),
                    st.sampled_from(["40", "60", "69"]), st.sampled_from(["30", "45", "49"])).map(list)
GOOD_POINT = st.tuples(st.sampled_from(["20", "35", "3.5"]), st.sampled_from(["10", "25"])).map(list)


@st.composite
def plausible_command_line(draw, root):
    """A command a user would type, with one thing at a time possibly wrong."""
    parts = {
        "image": [str(root / draw(st.sampled_from(["photo.png", "photo.jpg"])))],
        "model": ["--model", draw(st.sampled_from(["mobile_sam", "hq_vit_tiny"])), "--random-weights"],
        "prompt": ["--box", *draw(GOOD_BOX)] if draw(st.booleans()) else ["--point", *draw(GOOD_POINT)],
        "out": ["--out", str(root / "out" / draw(st.sampled_from(["m.png", "m.bmp", "new/m.png"])))],
        "options": [],
    }
    if draw(st.booleans()):
        parts["options"] += ["--overlay", str(root / "out" / draw(st.sampled_from(["o.png", "o.jpg"])))]
    if draw(st.booleans()):
        parts["options"] += ["--device", draw(st.sampled_from(["cpu", "auto"]))]
    if draw(st.integers(0, 2)) == 0:
        wrong = draw(st.sampled_from(sorted(parts)))
        parts[wrong] = {
            "image": [str(root / draw(st.sampled_from(["missing.png", "notes.png", "empty.jpg", "folder"])))],
            "model": ["--model", draw(st.sampled_from(["sam_vit_x", "mobile_sam"]))],  # unknown, or no weights
            "prompt": ["--box", *draw(st.lists(NUMBER_TOKENS, min_size=4, max_size=4))],
            "out": ["--out", str(root / draw(st.sampled_from(["out/m.jpg", "out/m.gif", "notes.png/m.png", "notes.png/m"])))],
            "options": ["--device", draw(st.sampled_from(["tpu9", "cuda:3", "meta"]))],
        }[wrong]
    return ["segment", *parts["image"], *parts["model"], *parts["prompt"], *parts["out"], *parts["options"]]


@st.composite
def any_command_line(draw, root):
    image = draw(st.sampled_from(["photo.png", "photo.png", "photo.jpg", "missing.png", "notes.png", "empty.jpg", "folder"]))
    args = ["segment", str(root / image)]
    model = draw(st.sampled_from(["mobile_sam", "mobile_sam", "hq_vit_tiny", "sam_vit_x", ""]))
    args += ["--model", model]
    if draw(st.integers(0, 5)):
        args.append("--random-weights")
    for _ in range(draw(st.integers(0, 2))):
        args += ["--box", *draw(BOX_TOKENS)]
    for flag in ("--point", "--negative"):
        for _ in range(draw(st.integers(0, 1))):
            args += [flag, *draw(COORDS)]
    out = draw(st.sampled_from(["m.png", "m.png", "m.bmp", "m.jpg", "m", "folder", "notes.png/m.png", "new/sub/m.png"]))
    args += ["--out", str(root / "out" / out) if out != "folder" and not out.startswith("notes") else str(root / out)]
    if draw(st.integers(0, 3)) == 0:
        args += ["--overlay", str(root / "out" / draw(st.sampled_from(["o.png", "o.jpg", "o.gif", "o"])))]
    if draw(st.integers(0, 2)) == 0:
        args += ["--device", draw(st.sampled_from(["cpu", "auto", "tpu9", "cuda:3", "meta"]))]
    if draw(st.integers(0, 3)) == 0:
        args += ["--hq-output", draw(st.sampled_from(["sum", "hq_only", "candidates", "bogus"]))]
    if draw(st.booleans()):
        args.append("--multimask")
    return args


def command_lines(root):
    return st.one_of(plausible_command_line(root), plausible_command_line(root), any_command_line(root))


@settings(max_examples=examples(120), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_segment_command_lines(files, fast_models, capsys, count_case, data):
    count_case("cli")
    shutil.rmtree(files / "out", ignore_errors=True)
    shutil.rmtree(files / "folder", ignore_errors=True)  # also an output folder: no state between examples
    (files / "folder").mkdir()
    args = data.draw(command_lines(files), "argv")
    try:
        code = cli.main(args)
    except SystemExit as exit_info:  # argparse refusals
        code = exit_info.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    out = Path(args[args.index("--out") + 1])
    if code == 0:
        count_case("cli, accepted")
        masks = sorted((out / "masks").rglob("*.png")) if out.is_dir() else [out]
        assert masks, (args, captured.err)
        for path in masks:
            with Image.open(path) as mask:
                assert mask.size == IMAGE_SIZE
                assert set(np.unique(np.asarray(mask))) <= {0, 255}
    elif code == 1:  # a folder run: the image was reported and skipped, a summary says so
        count_case("cli, reported failures")
        assert out.is_dir() and "failed" in captured.err, (args, captured.err)
        assert json.loads((out / "summary.json").read_text())["exit_code"] == 1
    else:
        assert code == 2, (args, captured.err)
        lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("WARNING: RANDOM WEIGHTS")]
        assert len(lines) == 1, (args, captured.err)
        written = [path for path in (files / "out").rglob("*") if path.is_file()] if (files / "out").exists() else []
        assert not written, (args, written)  # a refusal writes nothing
