"""The strip upsampler gives the reference's masks (``F.interpolate(...) > 0``), pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import finesam
from finesam.modeling.contracts.features import ImageFeatures
from finesam.ops import upsample
from finesam.ops.upsample import height_weights, upsample_to_masks


@pytest.fixture
def always_fast(monkeypatch):
    """Take the strip path even for small outputs, with narrow strips (several per call)."""
    monkeypatch.setattr(upsample, "FAST_PATH_ELEMENTS", 1)
    monkeypatch.setattr(upsample, "STRIP_ELEMENTS", 1 << 14)


def reference(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size, mode="bilinear", align_corners=False) > 0


@pytest.mark.parametrize(
    "in_size, out_size, masks",
    [
        ((330, 512), (886, 916), 1),  # the 2.7K photo's crop proportions, upsampled
        ((64, 48), (700, 530), 3),  # large factor, three masks
        ((256, 200), (181, 97), 2),  # downsampling
        ((37, 131), (300, 1031), 1),  # odd widths (vector tails)
    ],
)
def test_strips_equal_reference(always_fast, in_size, out_size, masks):
    generator = torch.Generator().manual_seed(sum(in_size) + sum(out_size))
    full = torch.randn(1, masks, 1024, 1024, generator=generator) * 4
    logits = full[..., : in_size[0], : in_size[1]]  # a crop view, as after the padding is removed
    fast = upsample_to_masks(logits, out_size)
    assert fast.dtype == torch.bool and fast.shape == (1, masks, *out_size)
    assert torch.equal(fast, reference(logits, out_size))


def test_height_weights_are_the_kernels():
    """Upsampling one column through the kernel with weights read back from 0/1 rows."""
    in_size, out_size = 990, 2658
    top, bottom, top_weight, bottom_weight = height_weights(in_size, out_size)
    values = torch.randn(1, 1, in_size, 1, generator=torch.Generator().manual_seed(1))
    kernel = F.interpolate(values, (out_size, 1), mode="bilinear", align_corners=False).view(-1)
    column = values.view(-1)
    upper, lower = column[top], column[bottom]
    mixed = (upper.double() * top_weight.double() + (lower * bottom_weight).double()).float()
    assert torch.equal(mixed, kernel)


def test_exact_zero_sums_stay_false(always_fast):
    """At exactly 2x and 4x the weights are quarters and eighths, so on odd whole-number logits
    every product is exact and many sums are exactly 0 (e.g. -3/4 + 3/4): those pixels must be
    False, the others carry the sign of the exact value, as in the reference."""
    generator = torch.Generator().manual_seed(2)
    logits = (2 * torch.randint(-2, 2, (1, 2, 40, 50), generator=generator) + 1).float()  # -3, -1, 1, 3
    for factor in (2, 4):
        size = (40 * factor, 50 * factor)
        exact = F.interpolate(logits.double(), size, mode="bilinear", align_corners=False)
        fast = upsample_to_masks(logits, size)
        assert int((exact == 0).sum()) > 100
        assert torch.equal(fast, exact > 0)
        assert torch.equal(fast, reference(logits, size))


def test_other_thresholds_and_dtypes_use_the_reference():
    logits = torch.randn(1, 1, 30, 30, generator=torch.Generator().manual_seed(3))
    for threshold in (0.5, -1.0):
        expected = F.interpolate(logits, (100, 90), mode="bilinear", align_corners=False) > threshold
        assert torch.equal(upsample_to_masks(logits, (100, 90), threshold), expected)
    half = logits.double()
    assert torch.equal(upsample_to_masks(half, (100, 90)), reference(half, (100, 90)))


def test_predictor_masks_equal_thresholded_logits(always_fast):
    """predict's bool masks (strip path) equal its logits (return_logits) thresholded at 0."""
    predictor = finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(4))
    predictor.set_features(ImageFeatures(embedding=embedding), (333, 517))  # no encoder run: a fast test
    box = np.array([40, 30, 400, 300])
    masks, _, _ = predictor.predict(box=box, multimask_output=True)
    logits, _, _ = predictor.predict(box=box, multimask_output=True, return_logits=True)
    assert masks.dtype == np.bool_ and masks.shape == (3, 333, 517)
    assert np.array_equal(masks, logits > predictor.model.mask_threshold)
