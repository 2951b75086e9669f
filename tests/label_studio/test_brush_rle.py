"""finesam.formats.brush against Label Studio's own brush RLE (label_studio_sdk.converter.brush,
from the Label Studio venv): each side decodes what the other encodes, on real ground-truth masks,
noisy masks, runs longer than one record and arbitrary bytes (literal records)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from conftest import data_path
from ls_helpers import run_in_ls_venv

from finesam.formats.brush import (
    BrushRLEError,
    brush_rle_to_mask,
    decode_brush_bytes,
    encode_brush_bytes,
    mask_to_brush_rle,
)

SDK_SCRIPT = """
import base64, json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle
cases = json.load(sys.stdin)
def array(item):
    return np.frombuffer(base64.b64decode(item["b64"]), dtype=np.uint8).reshape(item["shape"])
print(json.dumps({
    "masks": [mask2rle(array(item)) for item in cases["masks"]],
    "bytes": [encode_rle(array(item)) for item in cases["bytes"]],
    "decoded": [base64.b64encode(decode_rle(rle).tobytes()).decode() for rle in cases["rles"]],
}))
"""


def _packed(array: np.ndarray) -> dict:
    return {"b64": base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode(), "shape": list(array.shape)}


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    real = [np.asarray(Image.open(data_path("ecssd", "gt", f"{stem}.png")).convert("L")) > 127 for stem in ("0001", "0002")]
    noisy = rng.random((37, 53)) > 0.5  # many one-pixel runs
    blobs = np.kron(rng.random((9, 7)) > 0.4, np.ones((13, 11), dtype=bool))
    empty = np.zeros((300, 300), dtype=bool)  # one run of 360,000 bytes: several 65,536-byte records
    return [*real, noisy, blobs, empty, ~empty, np.ones((1, 1), dtype=bool), np.zeros((1, 3), dtype=bool)]


def _byte_arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    lengths = rng.choice([1, 1, 2, 3, 8, 9, 16, 17, 256, 257, 300], size=400)
    mixed = np.repeat(rng.integers(0, 256, size=lengths.size), lengths).astype(np.uint8)
    exact = [np.full(n, 200, dtype=np.uint8) for n in (65_536, 65_537, 131_072)]
    return [mixed, rng.integers(0, 256, size=999).astype(np.uint8), *exact, np.array([0, 255, 0], dtype=np.uint8)]


@pytest.fixture(scope="module")
def sdk():
    masks, byte_arrays = _masks(), _byte_arrays()
    ours_masks = [mask_to_brush_rle(mask) for mask in masks]
    ours_bytes = [encode_brush_bytes(values) for values in byte_arrays]
    answer = run_in_ls_venv(SDK_SCRIPT, {
        "masks": [_packed(np.where(mask, 255, 0)) for mask in masks],
        "bytes": [_packed(values) for values in byte_arrays],
        "rles": ours_masks + ours_bytes,
    })
    decoded = [np.frombuffer(base64.b64decode(b64), dtype=np.uint8) for b64 in answer["decoded"]]
    return {"masks": masks, "bytes": byte_arrays, "ours_masks": ours_masks, "ours_bytes": ours_bytes,
            "sdk_masks": answer["masks"], "sdk_bytes": answer["bytes"],
            "sdk_decoded_masks": decoded[:len(masks)], "sdk_decoded_bytes": decoded[len(masks):]}


def test_label_studio_decodes_our_masks(sdk):
    for mask, decoded in zip(sdk["masks"], sdk["sdk_decoded_masks"]):
        rgba = decoded.reshape(*mask.shape, 4)
        assert (rgba[:, :, 3] == np.where(mask, 255, 0)).all()
        assert (rgba == rgba[:, :, 3:]).all()  # every channel as Label Studio's own masks


def test_we_decode_label_studio_masks(sdk):
    for mask, rle in zip(sdk["masks"], sdk["sdk_masks"]):
        assert (brush_rle_to_mask(rle, *mask.shape) == mask).all()


def test_our_mask_stream_is_label_studios(sdk):
    # The same records; the SDK pads a stream that ends on a byte boundary with one more zero byte.
    for ours, theirs in zip(sdk["ours_masks"], sdk["sdk_masks"]):
        assert theirs[:len(ours)] == ours and theirs[len(ours):] in ([], [0])


def test_arbitrary_bytes_both_ways(sdk):
    for values, ours_decoded_by_sdk, sdk_stream in zip(sdk["bytes"], sdk["sdk_decoded_bytes"], sdk["sdk_bytes"]):
        assert (ours_decoded_by_sdk == values).all()
        assert (decode_brush_bytes(sdk_stream) == values).all()  # the SDK writes literal records for single values


def test_round_trip_and_empty():
    assert decode_brush_bytes(encode_brush_bytes(np.array([], dtype=np.uint8))).size == 0
    mask = np.eye(5, 7, dtype=bool)
    assert (brush_rle_to_mask(mask_to_brush_rle(mask), 5, 7) == mask).all()


def _stream(bits: str) -> list[int]:
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def test_malformed_streams_are_refused_with_a_reason():
    rle = mask_to_brush_rle(np.eye(20, dtype=bool))
    with pytest.raises(BrushRLEError, match="truncated"):
        decode_brush_bytes(rle[:len(rle) // 2])
    with pytest.raises(BrushRLEError, match="holds 1600 bytes, expected 1680"):
        brush_rle_to_mask(rle, 20, 21)
    with pytest.raises(BrushRLEError, match="0..255"):
        decode_brush_bytes([*rle[:-1], 256])
    with pytest.raises(BrushRLEError, match="list of byte values"):
        decode_brush_bytes("1,2,3")
    header = f"{4:032b}" + f"{7:05b}" + "0010" "0011" "0111" "1111"  # 4 bytes, 8-bit words, widths 3, 4, 8, 16
    with pytest.raises(BrushRLEError, match="16-bit words"):
        decode_brush_bytes(_stream(header[:32] + f"{15:05b}" + header[37:] + "1" "00" "011" + "0" * 16))
    with pytest.raises(BrushRLEError, match="goes past"):  # a run of 8 in a stream of 4 bytes
        decode_brush_bytes(_stream(header + "1" "00" "111" f"{9:08b}"))
    assert decode_brush_bytes(_stream(header + "1" "00" "011" f"{9:08b}")).tolist() == [9, 9, 9, 9]
    with pytest.raises(ValueError, match="positive integer"):
        brush_rle_to_mask(rle, 0, 20)
