"""Generated evaluation folders through ``finesam eval``: exit 0 with a summary that lists every
image it could not evaluate, or exit 2 with one line; never a traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fuzz_checks import cached_models, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from finesam import cli
from finesam.cli import model_options

# A few fixed pictures, so that the (cached) encoder runs a handful of times in all.
RNG = np.random.default_rng(9)
PICTURES = [RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8), RNG.integers(0, 255, (24, 24, 3), dtype=np.uint8)]


def write_image(path, kind: str, picture: np.ndarray) -> None:
    if kind == "rgb":
        Image.fromarray(picture).save(path.with_suffix(".png"))
    elif kind == "jpeg":
        Image.fromarray(picture).save(path.with_suffix(".jpg"), quality=95)
    elif kind == "strip":
        Image.fromarray(picture[:1]).save(path.with_suffix(".png"))
    elif kind == "pixel":
        Image.fromarray(picture[:1, :1]).save(path.with_suffix(".png"))
    elif kind == "grey16":
        Image.fromarray(picture[..., 0].astype(np.uint16) * 257).save(path.with_suffix(".png"))
    elif kind == "rgba":
        Image.fromarray(np.dstack([picture, picture[..., :1]])).save(path.with_suffix(".png"))
    elif kind == "corrupt":
        path.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))
    elif kind == "empty":
        path.with_suffix(".jpg").write_bytes(b"")


def write_mask(path, kind: str, shape: tuple[int, int]) -> None:
    height, width = shape
    mask = np.zeros(shape, np.uint8)
    mask[height // 4 : max(height // 4 + 1, 3 * height // 4), width // 4 : max(width // 4 + 1, 3 * width // 4)] = 255
    if kind == "good":
        Image.fromarray(mask).save(path)
    elif kind == "empty-gt":
        Image.fromarray(np.zeros(shape, np.uint8)).save(path)
    elif kind == "zero-one":
        Image.fromarray(mask // 255).save(path)
    elif kind == "mask16":
        Image.fromarray(mask.astype(np.uint16) * 257).save(path)
    elif kind == "other-size":
        Image.fromarray(np.zeros((height + 3, width + 1), np.uint8)).save(path)
    elif kind == "corrupt":
        path.write_bytes(b"not a png")
    # "missing": no file


IMAGE_SHAPES = {"rgb": None, "jpeg": None, "strip": (1, None), "pixel": (1, 1), "grey16": None, "rgba": None,
                "corrupt": None, "empty": None}


@pytest.fixture(scope="module")
def fast_model():
    with cached_models(model_options):
        yield


PAIRS = st.lists(
    st.tuples(st.sampled_from(sorted(IMAGE_SHAPES)), st.sampled_from(["good", "good", "empty-gt", "zero-one", "mask16",
                                                                      "other-size", "corrupt", "missing"]),
              st.integers(0, len(PICTURES) - 1)),
    min_size=1, max_size=3,
)


@settings(max_examples=examples(40), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    pairs=PAIRS,
    protocol=st.sampled_from(["box", "box-aspect", "noisy-box", "points", "clicks", "pi-clicks"]),
    options=st.lists(st.sampled_from([("--seed", "3"), ("--seed", "-1"), ("--limit", "1"), ("--limit", "0"),
                                      ("--max-clicks", "2"), ("--max-clicks", "0")]), max_size=2),
)
def test_eval_folders(tmp_path_factory, fast_model, capsys, count_case, pairs, protocol, options):
    count_case("eval folders")
    root = tmp_path_factory.mktemp("eval_fuzz")
    (root / "data" / "im").mkdir(parents=True)
    (root / "data" / "gt").mkdir()
    for index, (image_kind, mask_kind, picture) in enumerate(pairs):
        stem = f"img{index}"
        picture = PICTURES[picture]
        write_image(root / "data" / "im" / stem, image_kind, picture)
        shape = {"strip": (1, picture.shape[1]), "pixel": (1, 1)}.get(image_kind, picture.shape[:2])
        write_mask(root / "data" / "gt" / f"{stem}.png", mask_kind, shape)
    args = ["eval", "--model", "mobile_sam", "--random-weights", "--data", f"fuzz={root / 'data'}",
            "--protocol", protocol, "--out", str(root / "run"), "--no-hce", "--quiet", "--max-clicks", "3"]
    for flag, value in options:
        args += [flag, value]
    try:
        code = cli.main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 0:
        count_case("eval folders, completed")
        summary = json.loads((root / "run" / "summary.json").read_text())
        scored = sum(dataset["images"] for dataset in summary["datasets"].values())
        assert scored + len(summary["skipped"]) <= len(pairs)
        assert all(entry["reason"].strip() for entry in summary["skipped"])
    else:
        assert code == 2, captured.err
        lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("WARNING: RANDOM")]
        assert len(lines) == 1, captured.err
    shutil.rmtree(root)
