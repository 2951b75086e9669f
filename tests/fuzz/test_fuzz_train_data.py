"""Generated training folders through the training-data check (no model, no steps): a folder that
the real readers load in full passes; any pair they refuse (a mask of another size, a corrupt,
truncated or empty file) ends the check with a one-line error that names the file's path, before
a model would load. Odd file names (spaces, unicode, a leading dash, dots) are data like any other."""

from __future__ import annotations

import tempfile
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fuzz_checks import clear_error_or_result, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from finesam.data.folders import DatasetError
from finesam.train.data import Augmentation, TrainingSet, check_training_data

RNG = np.random.default_rng(22)
PICTURE = RNG.integers(0, 255, (20, 28, 3), dtype=np.uint8)
# good kinds repeated, so that about half of the folders are readable
IMAGE_KINDS = ("png",) * 4 + ("jpeg",) * 4 + ("grey16", "rgba", "truncated-jpeg", "truncated-png", "corrupt", "empty", "not-an-image")
MASK_KINDS = ("good",) * 8 + ("zero-one", "rgb", "other-size", "transposed", "truncated", "corrupt", "empty")
STEMS = st.sampled_from(["0001", "a b", "-dash", "..dots", "²", "é-photo", "x" * 60, "UPPER", "1.2.3"])


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(folder: Path, stem: str, kind: str) -> Path:
    path = folder / f"{stem}{'.jpg' if 'jpeg' in kind or kind in ('empty', 'not-an-image') else '.png'}"
    if kind in ("png", "truncated-png"):
        data = _png_bytes(PICTURE)
        path.write_bytes(data if kind == "png" else data[: len(data) * 2 // 3])
    elif kind in ("jpeg", "truncated-jpeg"):
        buffer = BytesIO()
        Image.fromarray(PICTURE).save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        path.write_bytes(data if kind == "jpeg" else data[: len(data) // 2])
    elif kind == "grey16":
        path.write_bytes(_png_bytes(PICTURE[..., 0].astype(np.uint16) * 257))
    elif kind == "rgba":
        path.write_bytes(_png_bytes(np.dstack([PICTURE, PICTURE[..., :1]])))
    elif kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(60)))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"hello, not an image")
    return path


def write_mask(folder: Path, stem: str, kind: str) -> Path:
    path = folder / f"{stem}.png"
    height, width = PICTURE.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    mask[5:15, 6:20] = 255
    if kind == "good":
        path.write_bytes(_png_bytes(mask))
    elif kind == "zero-one":
        path.write_bytes(_png_bytes(mask // 255))
    elif kind == "other-size":
        path.write_bytes(_png_bytes(np.zeros((height + 2, width), np.uint8)))
    elif kind == "transposed":
        path.write_bytes(_png_bytes(np.ascontiguousarray(mask.T)))
    elif kind == "truncated":
        data = _png_bytes(mask)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path.write_bytes(b"not a png at all")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(_png_bytes(np.dstack([mask, mask, mask])))
    return path


def readers_accept(dataset) -> list[Path]:
    """The oracle: the files of pairs the full readers refuse (decoding every pixel)."""
    refused = []
    for pair in dataset.pairs:
        try:
            dataset.load(pair)
        except DatasetError:
            refused += [pair.image, pair.gt]
    return refused


PAIRS = st.lists(st.tuples(STEMS, st.sampled_from(IMAGE_KINDS), st.sampled_from(MASK_KINDS)), min_size=1, max_size=3,
                 unique_by=lambda pair: pair[0])


@settings(max_examples=examples(240), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pairs=PAIRS)
def test_generated_training_folders_are_checked_before_any_work(pairs, count_case):
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        (root / "im").mkdir()
        (root / "gt").mkdir()
        for stem, image_kind, mask_kind in pairs:
            write_image(root / "im", stem, image_kind)
            write_mask(root / "gt", stem, mask_kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            training_set, error = clear_error_or_result(lambda: TrainingSet([("fuzz", root)], Augmentation.hq(), seed=0))
        if error is not None:  # e.g. no pair at all: refused when the folder is opened
            count_case("training data, refused when opened")
            assert "fuzz" in str(error) or str(root) in str(error), str(error)
            return
        refused = readers_accept(training_set.datasets[0])
        checked, error = clear_error_or_result(lambda: check_training_data(training_set))
        count_case("training data")
        if refused:
            assert error is not None, f"the check passed a folder the readers refuse: {refused}"
            message = str(error)
            assert "\n" not in message, message
            assert any(str(path) in message for path in refused), (message, refused)
            count_case("training data, refused")
        else:
            assert error is None, f"the check refused a folder the readers load: {error}"
            assert checked == len(training_set)  # (names starting with "." are hidden files, not data)
