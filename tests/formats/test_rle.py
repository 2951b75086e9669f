"""Our COCO RLE encoder/decoder against pycocotools (the reference implementation)."""

from __future__ import annotations

import numpy as np
import pytest

from finesam.errors import InvalidInputError
from finesam.formats import decode_rle, encode_rle, mask_bbox, rle_area, rle_bbox

mask_utils = pytest.importorskip("pycocotools.mask")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def _edge_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    cases = [np.zeros((7, 5), bool), np.ones((7, 5), bool), np.zeros((1, 1), bool), np.ones((1, 1), bool)]
    for y, x in ((0, 0), (6, 4), (3, 2)):  # 1-pixel objects: corners and middle
        one = np.zeros((7, 5), bool)
        one[y, x] = True
        cases.append(one)
    cases += [rng.random((h, w)) < p for h, w in ((1, 40), (40, 1), (13, 29), (64, 3)) for p in (0.02, 0.5, 0.98)]
    long_runs = np.zeros((300, 200), bool)
    long_runs[5:290, 3:150] = True  # runs over 2**10: multi-group numbers and large differences
    long_runs[100:120, 40:60] = False  # a hole
    return cases + [long_runs, ~long_runs]


CASES = _edge_cases()


@pytest.mark.parametrize("mask", CASES, ids=[f"{m.shape[0]}x{m.shape[1]}-{int(m.sum())}" for m in CASES])
def test_encode_matches_pycocotools_and_round_trips(mask):
    ours = encode_rle(mask)
    reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert isinstance(ours["counts"], str)
    assert ours["counts"] == reference["counts"].decode("ascii")
    assert ours["size"] == [int(v) for v in reference["size"]]
    np.testing.assert_array_equal(decode_rle(ours), mask)
    np.testing.assert_array_equal(mask_utils.decode(ours).astype(bool), mask)  # pycocotools reads ours
    assert rle_area(ours) == int(mask_utils.area(reference)) == int(mask.sum())
    assert rle_bbox(ours) == mask_bbox(mask) == [float(v) for v in mask_utils.toBbox(reference)]


def test_decode_reads_pycocotools_strings_and_uncompressed_counts():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) < rng.random()
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        np.testing.assert_array_equal(decode_rle(reference), mask)  # bytes counts, as pycocotools returns them
        uncompressed = mask_utils.frPyObjects({"size": list(mask.shape), "counts": _runs(mask)}, *mask.shape)
        np.testing.assert_array_equal(decode_rle({"size": list(mask.shape), "counts": _runs(mask)}), mask)
        assert uncompressed["counts"] == reference["counts"]


def _runs(mask: np.ndarray) -> list[int]:
    """Independent uncompressed counts: a plain loop over the column-major pixels."""
    counts, current, run = [], False, 0
    for value in mask.ravel(order="F"):
        if bool(value) != current:
            counts.append(run)
            current, run = bool(value), 0
        run += 1
    return counts + [run]


@pytest.mark.parametrize("rle, fragment", [
    ({"size": [2, 2], "counts": [1, 2]}, "cover 3 pixels"),
    ({"size": [2], "counts": "0"}, "[H, W]"),
    ({"counts": "0"}, "'size'"),
    ({"size": [2, 2], "counts": "0\x7f"}, "not a COCO RLE character"),
    ({"size": [2, 2], "counts": 5}, "string or a list"),
])
def test_damaged_rle_is_refused(rle, fragment):
    with pytest.raises(InvalidInputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        decode_rle(rle)


def test_encode_refuses_non_2d():
    with pytest.raises(InvalidInputError, match=r"\(H, W\)"):
        encode_rle(np.zeros((1, 4, 4), bool))
