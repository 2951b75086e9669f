"""finesam.ops.nms (pure torch) against torchvision.ops.nms / batched_nms."""

from __future__ import annotations

import pytest
import torch

from finesam.ops.nms import batched_nms, nms

ops = pytest.importorskip("torchvision.ops")

THRESHOLDS = (0.0, 0.3, 1 / 3, 0.5, 0.7, 0.95, 1.0)


def random_case(seed: int, count: int, dtype=torch.float32):
    """Integer-ish boxes with duplicated boxes, tied scores and a few degenerate boxes."""
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=generator) * 100
    wh = torch.rand(count, 2, generator=generator) * 60
    boxes = torch.cat([xy, xy + wh], dim=1).round().to(dtype)
    scores = ((torch.rand(count, generator=generator) * 8).round() / 8).to(dtype)  # many ties
    if count >= 8:
        boxes[count // 2 : count // 2 + 4] = boxes[:4].clone()  # exact duplicates
        scores[count // 2] = scores[0]
        boxes[-1, 2:] = boxes[-1, :2]  # zero-area box
    idxs = torch.randint(0, 3, (count,), generator=generator)
    return boxes, scores, idxs


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_torchvision(seed):
    for count in (0, 1, 2, 7, 40, 300):
        boxes, scores, idxs = random_case(seed * 1000 + count, count)
        for threshold in THRESHOLDS:
            assert torch.equal(nms(boxes, scores, threshold), ops.nms(boxes, scores, threshold)), (count, threshold)
            assert torch.equal(
                batched_nms(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs, threshold)
            ), (count, threshold)


def test_many_boxes_per_category_path():
    """Over 1000 boxes torchvision switches to per-category NMS (and an unstable final sort)."""
    boxes, scores, idxs = random_case(7, 1500)
    for threshold in (0.3, 0.7):
        assert torch.equal(batched_nms(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs, threshold))
    # Every score equal: the order among ties must still agree.
    flat = torch.full((1500,), 0.5)
    assert torch.equal(batched_nms(boxes, flat, idxs, 0.5), ops.batched_nms(boxes, flat, idxs, 0.5))


def test_float64_and_large_coordinates():
    boxes, scores, idxs = random_case(11, 200, dtype=torch.float64)
    boxes = boxes * 37.3 + 1e4
    for threshold in (0.2, 0.7):
        assert torch.equal(nms(boxes, scores, threshold), ops.nms(boxes, scores, threshold))
        assert torch.equal(batched_nms(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs, threshold))


def test_known_cases():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.9])
    # Box 1 overlaps box 0 with IoU 81/119 = 0.68; box 3 duplicates box 0 with the same score.
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 1.0).tolist() == [0, 3, 1, 2]  # ties keep their input order
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 1]), 0.5).tolist() == [0, 3, 2]
    # IoU exactly 1/3 (float32 rounds it up): torchvision compares in double and suppresses.
    pair = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float32)
    two = torch.tensor([1.0, 0.5])
    assert nms(pair, two, 1 / 3).tolist() == ops.nms(pair, two, 1 / 3).tolist() == [0]
    assert nms(pair, two, 0.34).tolist() == [0, 1]
    # IoU exactly 0.5 is not above a 0.5 threshold.
    half = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float32)
    assert nms(half, two, 0.5).tolist() == [0, 1] and nms(half, two, 0.49).tolist() == [0]
    # Empty input, and boxes of zero area (NaN IoU never suppresses).
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).dtype == torch.int64
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).numel() == 0
    zero = torch.zeros(2, 4)
    assert nms(zero, two, 0.5).tolist() == ops.nms(zero, two, 0.5).tolist() == [0, 1]


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
