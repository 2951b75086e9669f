"""Generated image files and arrays through the one image reader, the mask reader and writer, the
resize transform and ``SamPredictor.set_image`` + ``predict``: a clear finesam error, or an
(H, W, 3) uint8 image of the displayed size (masks: (H, W) uint8), finite predictions of the
image's shape.

Files: modes 1, L, P, LA, RGB, RGBA, I;16, I, F, CMYK and 16-bit RGB; sizes from 1x1 to thin
strips and a few tens of megapixels; EXIF orientations; PNG/TIFF/BMP/JPEG/WEBP/GIF under right
and wrong suffixes; truncated, flipped, prefixed and empty files; pixel limits just above and
just below the image's size.
"""

from __future__ import annotations

import io
import itertools
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_checks import assert_finite, clear_error_or_result, examples
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import finesam
from finesam.data import read_mask
from finesam.data.images import (
    check_pixel_count,
    depth_to_uint8,
    read_image,
    save_mask,
)
from finesam.errors import InvalidInputError
from finesam.predict.transforms import ResizeLongestSide


def fuzz_settings(default: int):
    return settings(max_examples=examples(default), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


_NAMES = itertools.count()


def fresh_dir(tmp_path: Path) -> Path:
    """One folder per generated case (hypothesis reuses ``tmp_path`` across examples)."""
    return Path(tempfile.mkdtemp(dir=tmp_path, prefix=f"case{next(_NAMES)}-"))


# --- building files ---------------------------------------------------------------------------------
def raw_png(width: int, height: int, rows: bytes, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG from raw scanlines (PIL writes no 16-bit RGB, and refuses 0-size images)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def rgb16_png(pixels: np.ndarray) -> bytes:
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    return raw_png(width, height, rows, bit_depth=16, colour_type=2)


def make_image(mode: str, width: int, height: int, rng: np.random.Generator, value_kind: str) -> Image.Image:
    """A PIL image of ``mode``; ``value_kind`` picks in-range or out-of-range values for I and F."""
    shape = (height, width)
    if mode == "1":
        return Image.fromarray(rng.random(shape) > 0.5)
    if mode in ("L", "P"):
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        if mode == "P":
            image = image.convert("P")
            image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        return image
    if mode in ("LA", "RGB", "RGBA"):
        channels = {"LA": 2, "RGB": 3, "RGBA": 4}[mode]
        return Image.fromarray(rng.integers(0, 256, (*shape, channels), dtype=np.uint8))
    if mode == "CMYK":
        return Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).convert("CMYK")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, shape, dtype=np.uint16))
    if mode == "I":
        low, high = {"ok": (0, 65536), "small": (0, 256), "wide": (-5, 1 << 20)}[value_kind]
        return Image.fromarray(rng.integers(low, high, shape, dtype=np.int32))
    if mode == "F":
        values = rng.random(shape, dtype=np.float32)
        if value_kind == "wide":
            values = values * 300 - 20
        elif value_kind == "small" and values.size:
            values.flat[rng.integers(values.size)] = np.nan
        return Image.fromarray(values)
    raise AssertionError(mode)


FORMATS = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif"}
MODES = ["1", "L", "P", "LA", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "RGB16"]
SIZES = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),        # small (width, height)
    st.tuples(st.integers(1, 3), st.integers(1, 3000)),       # thin columns
    st.tuples(st.integers(1, 3000), st.integers(1, 3)),       # thin rows
    st.tuples(st.integers(100, 500), st.integers(100, 500)),  # ordinary
)
CORRUPTIONS = ["none", "none", "none", "truncate", "flip", "prefix", "empty", "zero-size"]
SUFFIXES = [None, None, ".png", ".jpg", ".tif", ".txt", "", ".JPEG"]  # None: the format's own suffix


def encode(image: Image.Image | bytes, fmt: str, orientation: int) -> tuple[bytes, str]:
    """The file bytes in ``fmt`` with an EXIF orientation when the format keeps one; TIFF when
    PIL cannot write the mode in ``fmt``. Returns (bytes, format written)."""
    if isinstance(image, bytes):
        return image, "PNG"
    for attempt in (fmt, "TIFF"):
        buffer = io.BytesIO()
        params = {}
        if orientation > 1 and attempt in ("PNG", "JPEG", "WEBP", "TIFF"):
            exif = Image.Exif()
            exif[0x0112] = orientation
            params["exif"] = exif.tobytes()
        try:
            image.save(buffer, attempt, **params)
            return buffer.getvalue(), attempt
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise AssertionError(f"PIL cannot write mode {image.mode}")


def corrupt(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    if kind == "truncate":
        return data[: int(rng.integers(0, max(1, len(data) - 1)))]
    if kind == "flip":
        array = bytearray(data)
        for position in rng.integers(0, len(array), size=int(rng.integers(1, 8))):
            array[position] ^= int(rng.integers(1, 256))
        return bytes(array)
    if kind == "prefix":
        return rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes() + data
    if kind == "empty":
        return b""
    if kind == "zero-size":
        return raw_png(0, int(rng.integers(0, 9)), b"")
    return data


def displayed_size(path: Path, width: int, height: int) -> tuple[int, int]:
    """(height, width) as viewers show the file written from a width x height image: swapped
    when the file kept a quarter-turn EXIF orientation (5 to 8). Read before decoding, and not
    from PIL's size, which for TIFF is already the displayed one."""
    with Image.open(path) as stored:
        orientation = stored.getexif().get(0x0112, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def expected_pixels(source: Image.Image, orientation: int) -> np.ndarray | None:
    """The displayed RGB pixels of a losslessly written quarter-turn (6: rotate 90 clockwise)."""
    if orientation != 6:
        return None
    turned = source.transpose(Image.Transpose.ROTATE_270)
    if source.mode == "I;16":
        grey = (np.asarray(turned, dtype=np.int64) + 128) // 257
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(turned.convert("RGB"))


def check_file(folder: Path, mode, size, fmt, orientation, corruption, suffix, value_kind, limit, seed) -> str:
    """Write one generated file, read it as an image and as a mask, check the property; returns
    what happened (a hypothesis event: see ``--hypothesis-show-statistics``)."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "RGB16":
        source = rgb16_png(rng.integers(0, 65536, (height, width, 3)))
    else:
        source = make_image(mode, width, height, rng, value_kind)
    data, written = encode(source, fmt, orientation)
    data = corrupt(data, corruption, rng)
    path = folder / f"img{FORMATS[written] if suffix is None else suffix}"
    path.write_bytes(data)
    max_pixels = {"default": None, "exact": width * height, "one-less": max(1, width * height - 1)}[limit]
    over_limit = limit == "one-less" and width * height > 1

    image, error = clear_error_or_result(lambda: read_image(path, max_pixels=max_pixels))
    mask, mask_error = clear_error_or_result(lambda: read_mask(path, max_pixels=max_pixels))
    what = f"{mode} as {written}, {corruption}: {'refused' if error else 'read'}"
    if error is None:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.flags.writeable
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
    if corruption != "none":
        return what
    expected = displayed_size(path, width, height)
    if over_limit:
        assert error is not None and "limit" in str(error) and "FINESAM_MAX_PIXELS" in str(error)
        assert mask_error is not None and "limit" in str(mask_error)
        return what
    value_refusal = mode in ("I", "F") and value_kind in ("wide", "small") and written != "GIF"
    if error is not None:  # only a value range the rules refuse
        assert value_refusal and ("values in" in str(error) or "NaN" in str(error)), str(error)
        return what
    assert image.shape[:2] == expected
    if orientation in (5, 6, 7, 8) and written in ("PNG", "JPEG", "WEBP") and mode != "RGB16":
        assert expected == (width, height)  # these formats keep the EXIF orientation
    if written in ("PNG", "TIFF", "BMP") and mode in ("1", "L", "I;16", "I", "F"):
        assert (image == image[..., :1]).all()  # one band: grey
    if mode == "I;16" and written == "PNG" and orientation == 1:
        wide = np.asarray(source, dtype=np.int64)
        np.testing.assert_array_equal(image[..., 0], (wide + 128) // 257)
    with Image.open(path) as stored:
        same_mode = not isinstance(source, bytes) and stored.mode == source.mode
    if same_mode and written in ("PNG", "TIFF") and mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16"):
        expected_image = expected_pixels(source, orientation)
        if expected_image is not None:
            np.testing.assert_array_equal(image, expected_image)
    return what


@fuzz_settings(120)
@given(
    mode=st.sampled_from(MODES),
    size=SIZES,
    fmt=st.sampled_from(list(FORMATS)),
    orientation=st.integers(1, 8),
    corruption=st.sampled_from(CORRUPTIONS),
    suffix=st.sampled_from(SUFFIXES),
    value_kind=st.sampled_from(["ok", "ok", "small", "wide"]),
    limit=st.sampled_from(["default", "default", "exact", "one-less"]),
    seed=st.integers(0, 2**16),
)
@example(mode="I;16", size=(1, 2500), fmt="PNG", orientation=6, corruption="none", suffix=None, value_kind="ok",
         limit="exact", seed=1)
@example(mode="RGB16", size=(7, 5), fmt="PNG", orientation=1, corruption="none", suffix=".jpg", value_kind="ok",
         limit="default", seed=2)
@example(mode="F", size=(9, 4), fmt="TIFF", orientation=8, corruption="none", suffix=".tif", value_kind="wide",
         limit="default", seed=3)
def test_generated_image_files(tmp_path, count_case, mode, size, fmt, orientation, corruption, suffix, value_kind,
                               limit, seed):
    count_case("images")
    event(check_file(fresh_dir(tmp_path), mode, size, fmt, orientation, corruption, suffix, value_kind, limit, seed))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_in_every_format_rotated(tmp_path, count_case, mode, fmt):
    count_case("images")
    check_file(tmp_path, mode, (13, 7), fmt, 6, "none", None, "ok", "default", 0)


@pytest.mark.parametrize("size", [(8000, 6000), (6000, 1), (1, 9000)])
def test_large_and_long_images_within_the_limit(tmp_path, count_case, size):
    count_case("images")
    width, height = size
    row = b"\0" + b"\xaa" * ((width + 7) // 8)  # 1-bit: white, black, white, ...
    path = tmp_path / "large.png"
    path.write_bytes(raw_png(width, height, row * height, bit_depth=1))
    image = read_image(path)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert (image[:, 0] == 255).all() and (image[:, 1::2] == 0).all()
    with pytest.raises(InvalidInputError, match="limit"):
        read_image(path, max_pixels=width * height - 1)


# --- arrays --------------------------------------------------------------------------------------------
DTYPES = [np.uint8, np.uint8, bool, np.int16, np.uint16, np.int32, np.int64, np.float32, np.float64]
ARRAY_SHAPES = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.integers(0, 2), st.integers(0, 20000)),
    st.tuples(st.integers(0, 20000), st.integers(0, 2)),
)


def fill(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    if dtype == bool:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.floating):
        values = rng.random(shape).astype(dtype)
        if values.size and rng.random() < 0.3:
            values.flat[0] = rng.choice([np.nan, np.inf, -3.0, 2.5])
        return values
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -70000), min(info.max, 70000), shape, endpoint=True).astype(dtype)


@fuzz_settings(80)
@given(shape=ARRAY_SHAPES, channels=st.sampled_from([None, 3, 3, 1, 4]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_arrays_through_the_transform_and_the_depth_rules(count_case, shape, channels, dtype, seed):
    count_case("images")
    rng = np.random.default_rng(seed)
    full_shape = shape if channels is None else (*shape, channels)
    array = fill(rng, full_shape, dtype)
    height, width = shape

    pixels, error = clear_error_or_result(lambda: check_pixel_count(height, width))
    assert (error is None) == (height >= 1 and width >= 1)
    if error is None:
        assert pixels == height * width

    converted, error = clear_error_or_result(lambda: depth_to_uint8(array, "the array"))
    if error is None:
        assert converted.dtype == np.uint8 and converted.shape == array.shape
    else:
        assert "the array" in str(error)

    if dtype == np.uint8 and channels == 3:
        transform = ResizeLongestSide(1024)
        resized, error = clear_error_or_result(lambda: transform.apply_image(array))
        if height == 0 or width == 0:
            assert isinstance(error, InvalidInputError) and "empty" in str(error)
        else:
            assert error is None
            assert max(resized.shape[:2]) == 1024 and min(resized.shape[:2]) >= 1 and resized.shape[2] == 3
            assert resized.shape[:2] == transform.get_preprocess_shape(height, width)
            coords = transform.apply_coords(np.array([[width, height]]), (height, width))
            np.testing.assert_allclose(coords[0], resized.shape[1::-1])


MASK_SUFFIXES = [".png", ".PNG", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", "", ".txt", "/"]


@fuzz_settings(45)
@given(shape=st.one_of(st.tuples(st.integers(0, 30), st.integers(0, 30)), st.tuples(st.integers(1, 2), st.integers(1, 900))),
       dtype=st.sampled_from([bool, np.uint8, np.float32, np.int64]), extra_axis=st.booleans(),
       suffix=st.sampled_from(MASK_SUFFIXES), nested=st.booleans(), seed=st.integers(0, 2**16))
def test_masks_written_and_read_back_or_refused_clearly(tmp_path, count_case, shape, dtype, extra_axis, suffix, nested,
                                                        seed):
    count_case("images")
    rng = np.random.default_rng(seed)
    mask = fill(rng, shape, dtype)
    mask = mask[None] if extra_axis else mask
    folder = fresh_dir(tmp_path)
    path = Path(str(folder / ("sub" if nested else "") / "mask") + suffix)
    _, error = clear_error_or_result(lambda: save_mask(mask, path))
    valid = suffix.lower() in (".png", ".bmp", ".tif", ".tiff") and not extra_axis and 0 not in shape
    assert (error is None) == valid, error
    if error is not None:
        assert isinstance(error, InvalidInputError)
        assert not path.is_file() and [p.name for p in folder.rglob("*") if p.is_file()] == []
        return
    back = read_mask(path)
    np.testing.assert_array_equal(back, np.where(mask, 255, 0))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


# --- the predictor ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))


@pytest.fixture(scope="module")
def one_embedding(predictor):
    """The encoder output of one real image: the fuzzed sizes differ only in the resize, the
    padding and the mask post-processing, so most cases reuse it instead of re-encoding."""
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return predictor.image_features


def segment(predictor, image: np.ndarray, box) -> None:
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(box=np.array(box), multimask_output=False)
    assert masks.shape == (1, *image.shape[:2]) and masks.dtype == bool
    assert scores.shape == (1,) and low_res.shape == (1, 256, 256)
    assert_finite(scores, low_res)


@pytest.mark.parametrize("case", ["strip-file", "column", "photo-file"])
def test_real_encoder_on_odd_images(tmp_path, count_case, predictor, case):
    count_case("images")
    rng = np.random.default_rng(5)
    if case == "strip-file":  # a 16-bit 1 x 2500 strip file, read and segmented
        Image.fromarray(rng.integers(0, 65536, (1, 2500), dtype=np.uint16)).save(tmp_path / "strip.png")
        image = read_image(tmp_path / "strip.png")
    elif case == "column":
        image = rng.integers(0, 255, (1800, 2, 3), dtype=np.uint8)
    else:  # a rotated phone-style photo with alpha
        photo = Image.fromarray(rng.integers(0, 255, (37, 1031, 4), dtype=np.uint8))
        exif = photo.getexif()
        exif[0x0112] = 6
        photo.save(tmp_path / "photo.png", exif=exif.tobytes())
        image = read_image(tmp_path / "photo.png")
        assert image.shape == (1031, 37, 3)
    height, width = image.shape[:2]
    segment(predictor, image, [0, 0, width - 1, height - 1])


@fuzz_settings(20)
@given(shape=st.one_of(st.tuples(st.integers(1, 60), st.integers(1, 60)),
                       st.tuples(st.integers(1, 2), st.integers(1, 5000)),
                       st.tuples(st.integers(1, 5000), st.integers(1, 2)),
                       st.tuples(st.integers(0, 3), st.integers(0, 3))),
       box=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
       seed=st.integers(0, 2**16))
def test_set_image_and_predict_on_generated_sizes(count_case, predictor, one_embedding, shape, box, seed):
    count_case("images")
    image = np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
    height, width = shape
    x0, x1 = sorted((box[0] * width, box[2] * width))
    y0, y1 = sorted((box[1] * height, box[3] * height))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predictor.model, "encode_image", lambda tensor, extras=None: one_embedding)
        _, error = clear_error_or_result(lambda: segment(predictor, image, [x0, y0, x1, y1]))
    if 0 in shape:
        assert isinstance(error, InvalidInputError) and "empty" in str(error)
    else:
        assert error is None, error
