"""Hardening of image input and output: degenerate sizes, decompression bombs and the pixel
limit, high bit depth, atomic and checked writes, and ``finesam eval`` skipping what it cannot
evaluate. Each test failed on the code before the fix."""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import finesam
from finesam.data import (
    DatasetError,
    images,  # names added by the fix are used as images.NAME
    open_dataset,
    read_mask,
)
from finesam.data.images import ImageReadError, read_image, save_mask
from finesam.errors import FinesamError, InvalidInputError
from finesam.evaluation.protocols import make_protocol
from finesam.evaluation.runner import evaluate
from finesam.predict.transforms import ResizeLongestSide


# --- files written without PIL (PIL cannot write them, or would need the memory) -------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, rows: list[bytes] | None = None, *, width: int, height: int, bit_depth: int = 8,
              colour_type: int = 0) -> Path:
    """A PNG written chunk by chunk. ``rows``: the raw scanlines (filter byte 0 is added); without
    them, ``height`` all-zero rows are compressed as a stream, so a 20000 x 20000 1-bit image
    costs ~50 MB of zlib input but a few tens of KB on disk and no image memory."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    compressor = zlib.compressobj(9)
    parts = []
    if rows is None:
        zero_row = bytes(row_bytes + 1)
        parts = [compressor.compress(zero_row) for _ in range(height)]
    else:
        parts = [compressor.compress(b"\0" + row) for row in rows]
    data = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


def bomb(path: Path, side: int) -> Path:
    """A side x side 1-bit black PNG: tiny on disk, side**2 pixels once decoded."""
    return write_png(path, width=side, height=side, bit_depth=1)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- 1. degenerate sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 7, 3), (7, 0, 3)])
def test_the_transform_refuses_an_empty_image(shape):
    # before: ZeroDivisionError (0 x 0) or PIL's "height and width must be > 0"
    with pytest.raises(InvalidInputError, match=r"image is empty \(\d+x\d+ pixels"):
        ResizeLongestSide(1024).apply_image(np.zeros(shape, np.uint8))


def test_thin_strips_keep_one_pixel_and_normal_sizes_keep_the_official_numbers():
    from segment_anything.utils.transforms import ResizeLongestSide as Official

    transform = ResizeLongestSide(1024)
    assert transform.get_preprocess_shape(1, 5000) == (1, 1024)  # before: (0, 1024)
    assert transform.get_preprocess_shape(9000, 2) == (1024, 1)
    strip = transform.apply_image(np.full((1, 5000, 3), 200, np.uint8))
    assert strip.shape == (1, 1024, 3) and (strip == 200).all()
    rng = np.random.default_rng(0)
    for height, width in rng.integers(1, 6000, (2000, 2)):
        official = Official.get_preprocess_shape(int(height), int(width), 1024)
        if min(official) >= 1:
            assert transform.get_preprocess_shape(int(height), int(width)) == official


@pytest.fixture(scope="module")
def predictor():
    return finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))


def test_thin_strips_segment_end_to_end_and_empty_images_are_refused(predictor):
    for shape in [(1, 3000), (2500, 1)]:  # before: PIL's "height and width must be > 0"
        image = np.random.default_rng(1).integers(0, 255, (*shape, 3), dtype=np.uint8)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(box=np.array([0, 0, shape[1] - 1, shape[0] - 1]), multimask_output=False)
        assert masks.shape == (1, *shape) and np.isfinite(scores).all()
    with pytest.raises(InvalidInputError, match="empty"):
        predictor.set_image(np.zeros((0, 9, 3), np.uint8))


def test_read_image_refuses_an_empty_image(tmp_path, monkeypatch):
    # Pillow refuses 0-size headers of the usual formats; a plugin that does not is simulated.
    path = tmp_path / "empty.png"
    Image.new("RGB", (4, 4)).save(path)
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: Image.new("RGB", (0, 5)))
    with pytest.raises(ImageReadError, match=r"empty.png' is empty \(0x5 pixels"):  # before: a (5, 0, 3) array
        read_image(path)


# --- 2. decompression bombs and the pixel limit ------------------------------------------------------
@pytest.mark.parametrize("side", [20000, 12000])
def test_huge_images_are_refused_from_the_header_with_finesam_s_message(tmp_path, side, no_warnings):
    # before: 20000^2 raised PIL's raw DecompressionBombError; 12000^2 warned and decoded (GBs)
    path = bomb(tmp_path / "bomb.png", side)
    assert path.stat().st_size < 300_000
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert f"{side}x{side} pixels" in message and f"{images.MAX_IMAGE_PIXELS:,}" in message
    assert "FINESAM_MAX_PIXELS" in message and "max_pixels=" in message
    with pytest.raises(DatasetError, match="over finesam's limit"):
        read_mask(path)
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's setting is left as it was


def test_the_limit_is_set_by_argument_or_environment(tmp_path, monkeypatch, no_warnings):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((100, 100, 3), 9, np.uint8)).save(path)
    with pytest.raises(ImageReadError, match="100x100 pixels .*, 10,000 pixels .*limit of 9,999 pixels"):
        read_image(path, max_pixels=9999)
    assert read_image(path, max_pixels=10000).shape == (100, 100, 3)
    monkeypatch.setenv("FINESAM_MAX_PIXELS", "5000")
    with pytest.raises(ImageReadError, match="limit of 5,000 pixels"):
        read_image(path)
    with pytest.raises(DatasetError, match="limit of 5,000 pixels"):
        read_mask(path)
    assert read_image(path, max_pixels=20000).shape == (100, 100, 3)  # the argument wins
    monkeypatch.setenv("FINESAM_MAX_PIXELS", "lots")
    with pytest.raises(InvalidInputError, match="FINESAM_MAX_PIXELS='lots' is not a whole number"):
        read_image(path)
    with pytest.raises(InvalidInputError, match="max_pixels must be at least 1"):
        read_image(path, max_pixels=0)


def test_finesam_s_limit_applies_not_pil_s(tmp_path, monkeypatch, no_warnings):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((60, 80, 3), 50, np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone: 4800 px > 2 x 1000 -> bomb error
    assert read_image(path).shape == (60, 80, 3)
    assert read_mask(path).shape == (60, 80)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_check_pixel_count_for_arrays():
    assert images.check_pixel_count(3000, 4000) == 12_000_000
    with pytest.raises(InvalidInputError, match="12000x12000 pixels"):
        images.check_pixel_count(12000, 12000)
    with pytest.raises(InvalidInputError, match="empty"):
        images.check_pixel_count(0, 10)
    assert images.check_pixel_count(12000, 12000, max_pixels=12000**2) == 12000**2


# --- 3. high bit depth ---------------------------------------------------------------------------------
def test_16_bit_greyscale_png_is_scaled_not_saturated(tmp_path):
    values = np.array([[0, 257, 32896, 65535, 1000, 33024]], dtype=">u2")
    path = write_png(tmp_path / "grey16.png", [values.tobytes()], width=6, height=1, bit_depth=16)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
    image = read_image(path)  # before: 0 / 255 only (convert("RGB") clips)
    assert image.dtype == np.uint8 and image.shape == (1, 6, 3)
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255, 4, 128])
    assert (image == image[..., :1]).all()


def test_32_bit_integer_and_float_tiffs(tmp_path):
    ints = np.array([[0, 257, 65535], [514, 65278, 128]], np.int32)
    Image.fromarray(ints).save(tmp_path / "int.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "int.tif")[..., 1], [[0, 1, 255], [2, 254, 0]])
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match=r"values in \[0, 70000\], outside the 16-bit range"):
        read_image(tmp_path / "wide.tif")

    floats = np.array([[0.0, 0.5, 1.0], [0.25, 0.001, 0.999]], np.float32)
    Image.fromarray(floats).save(tmp_path / "float.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "float.tif")[..., 2], [[0, 128, 255], [64, 0, 255]])
    Image.fromarray(np.array([[0.0, 200.0]], np.float32)).save(tmp_path / "float255.tif")
    with pytest.raises(ImageReadError, match=r"values in \[0, 200\]; finesam reads float images as intensities in \[0, 1\]"):
        read_image(tmp_path / "float255.tif")
    Image.fromarray(np.array([[0.0, np.nan]], np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(tmp_path / "nan.tif")


def test_16_bit_rgb_png_still_reads_as_its_high_bytes(tmp_path):
    pixels = np.array([[[65535, 0, 32768], [256, 512, 1024]]], dtype=">u2")
    path = write_png(tmp_path / "rgb16.png", [pixels.tobytes()], width=2, height=1, bit_depth=16, colour_type=2)
    np.testing.assert_array_equal(read_image(path), pixels.astype(np.uint16) >> 8)


def test_masks_share_the_depth_rules(tmp_path):
    wide = np.array([[0, 65535, 33153]], dtype=">u2")
    write_png(tmp_path / "m16.png", [wide.tobytes()], width=3, height=1, bit_depth=16)
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), [[0, 255, 129]])
    small = np.array([[0, 255, 128]], dtype=">u2")  # a 16-bit file holding 8-bit values: kept
    write_png(tmp_path / "m8in16.png", [small.tobytes()], width=3, height=1, bit_depth=16)
    np.testing.assert_array_equal(read_mask(tmp_path / "m8in16.png"), [[0, 255, 128]])
    Image.fromarray(np.array([[0.0, 1.0]], np.float32)).save(tmp_path / "mf.tif")
    np.testing.assert_array_equal(read_mask(tmp_path / "mf.tif"), [[0, 255]])  # before: refused
    Image.fromarray(np.array([[0.0, 255.0]], np.float32)).save(tmp_path / "mf255.tif")
    with pytest.raises(DatasetError, match=r"mask .*mf255.tif.* values in \[0, 255\]"):
        read_mask(tmp_path / "mf255.tif")


def test_a_rotated_uncompressed_tiff_is_rotated_not_scrambled(tmp_path):
    # found by the fuzz suite: Pillow 13 memory-maps such a file at its displayed size
    stored = np.arange(7 * 13, dtype=np.uint8).reshape(7, 13)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    Image.fromarray(stored).save(tmp_path / "rotated.tif", exif=exif.tobytes())
    displayed = np.rot90(stored, -1)
    np.testing.assert_array_equal(read_image(tmp_path / "rotated.tif")[..., 0], displayed)
    np.testing.assert_array_equal(read_mask(tmp_path / "rotated.tif"), displayed)


# --- 4. writes ---------------------------------------------------------------------------------------
def test_mask_paths_are_checked_before_any_work(tmp_path):
    mask = np.ones((4, 5), bool)
    (tmp_path / "a_file").write_text("x")
    cases = {
        tmp_path / "mask.jpg": "lossy format",
        tmp_path / "mask.JPEG": "lossy format",
        tmp_path / "mask": "no extension",
        tmp_path / "mask.xyz": "unknown extension '.xyz'",
        tmp_path: "it is a folder",
        tmp_path / "a_file" / "mask.png": "is a file, not a folder",
    }
    for path, problem in cases.items():
        with pytest.raises(InvalidInputError, match=problem):  # before: a JPEG mask, or OSError / ValueError
            save_mask(mask, path)
        with pytest.raises(images.ImageWriteError, match=problem):
            images.check_mask_path(path)
    assert images.check_mask_path(tmp_path / "new" / "mask.png") == tmp_path / "new" / "mask.png"
    assert not (tmp_path / "new").exists()  # checking writes nothing
    assert images.check_image_path(tmp_path / "overlay.jpg") == tmp_path / "overlay.jpg"  # overlays may be JPEG
    with pytest.raises(images.ImageWriteError, match="unknown extension"):
        images.check_image_path(tmp_path / "overlay.gif")


def test_an_unwritable_folder_is_reported(tmp_path, monkeypatch):
    # root may write anywhere, so the permission answer is simulated
    monkeypatch.setattr(images.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(InvalidInputError, match=f"the folder '{tmp_path}' is not writable"):
        save_mask(np.ones((2, 2), bool), tmp_path / "sub" / "mask.png")
    with pytest.raises(images.ImageWriteError, match="is not writable"):
        images.check_mask_path(tmp_path / "sub" / "mask.png")
    assert not (tmp_path / "sub").exists()


def test_writes_are_atomic_and_take_the_format_from_the_suffix(tmp_path, monkeypatch):
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:6] = True
    save_mask(mask, tmp_path / "m.TIF")
    with Image.open(tmp_path / "m.TIF") as written:
        assert written.format == "TIFF" and set(np.unique(np.array(written))) == {0, 255}
    target = tmp_path / "m.png"
    save_mask(mask, target)
    before = target.read_bytes()

    def broken_save(self, fp, format=None, **params):  # the disk fills up in the middle of the file
        if isinstance(fp, (str, os.PathLike)):
            with open(fp, "wb") as handle:  # as PIL does with a path: the target is truncated first
                handle.write(b"\x89PNG half a file")
        else:
            fp.write(b"\x89PNG half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(Exception) as caught:
        save_mask(~mask, target)
    assert target.read_bytes() == before  # before: a truncated m.png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.TIF", "m.png"]  # no temporary file left
    assert isinstance(caught.value, images.ImageWriteError) and "No space left on device" in str(caught.value)
    with pytest.raises(images.ImageWriteError, match="No space left"):
        images.save_overlay(np.zeros((6, 8, 3), np.uint8), tmp_path / "o.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.TIF", "m.png"]
    monkeypatch.undo()
    images.save_overlay(np.zeros((6, 8, 3), np.uint8), tmp_path / "o.jpg")
    with Image.open(tmp_path / "o.jpg") as written:
        assert written.format == "JPEG"


# --- finesam eval: what cannot be evaluated is skipped and reported ----------------------------------------
def test_eval_skips_unreadable_huge_and_mismatched_images(tmp_path, predictor):
    root = tmp_path / "set"
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    rng = np.random.default_rng(0)
    strip = np.zeros((1, 3000), np.uint8)
    strip[:, 1000:2000] = 255
    Image.fromarray(rng.integers(0, 255, (1, 3000, 3), dtype=np.uint8)).save(root / "im" / "strip.png")
    Image.fromarray(strip).save(root / "gt" / "strip.png")
    bomb(root / "im" / "bomb.png", 20000)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "gt" / "bomb.png")
    (root / "im" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "gt" / "broken.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(root / "im" / "other.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "gt" / "other.png")
    summary = evaluate(predictor, [open_dataset(f"odd={root}")], make_protocol("box-aspect"), tmp_path / "out",
                       run_info={"model": "mobile_sam"}, progress=False, hce=False)
    skipped = {entry["name"]: entry["reason"] for entry in summary["skipped"]}
    assert sorted(skipped) == ["bomb", "broken", "other"]
    assert "20000x20000 pixels" in skipped["bomb"] and "FINESAM_MAX_PIXELS" in skipped["bomb"]
    assert "broken.png" in skipped["broken"] and "mask other.png is 8x8 but image other.png is 9x8" in skipped["other"]
    assert summary["datasets"]["odd"]["images"] == 1  # the 1 x 3000 strip was evaluated
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"] == summary["skipped"]


def test_errors_are_finesam_errors():
    assert issubclass(ImageReadError, FinesamError) and issubclass(images.ImageWriteError, InvalidInputError)
