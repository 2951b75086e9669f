"""point_sampled_mask_loss: hand-computed values, the official order of random draws, gradients, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finesam.errors import InvalidInputError
from finesam.train.losses import (
    losses_at_points,
    point_sampled_mask_loss,
    uncertain_points,
    weighted_num_masks,
)

POINTS = 112 * 112


def pixel_centres(height: int, width: int) -> torch.Tensor:
    """(1, h*w, 2) (x, y) normalised centres of every pixel, raster order."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([(cols.flatten() + 0.5) / width, (rows.flatten() + 0.5) / height], dim=1)[None].float()


def test_losses_at_pixel_centres_match_hand_computation():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    targets = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]]])
    bce, dice = losses_at_points(logits, targets, pixel_centres(2, 2), num_masks=1)
    # BCE(l, t) = log(1 + e^l) - l t, mean over the 4 pixels
    by_hand = [math.log(2) - 0.0, math.log1p(math.exp(2)) - 2.0, math.log1p(math.exp(-1)), math.log1p(math.exp(3)) - 0.75]
    assert bce.item() == pytest.approx(sum(by_hand) / 4, abs=1e-6)
    sig = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-3))]
    inter = 0.5 * 0.5 + sig[1] * 1.0 + 0 + sig[3] * 0.25
    assert dice.item() == pytest.approx(1 - (2 * inter + 1) / (sum(sig) + 1.75 + 1), abs=1e-6)


def test_all_correct_prediction_costs_nothing():
    torch.manual_seed(0)
    targets = torch.zeros(2, 1, 64, 64)  # background everywhere (zero padding reads 0 as well)
    bce, dice = point_sampled_mask_loss(torch.full((2, 1, 16, 16), -200.0), targets, num_masks=2)
    assert bce.item() < 1e-6 and dice.item() < 1e-6


def test_all_wrong_prediction_costs_the_most():
    torch.manual_seed(0)
    targets = torch.zeros(3, 1, 64, 64)
    logits = torch.full((3, 1, 16, 16), 200.0)
    bce, dice = point_sampled_mask_loss(logits, targets, num_masks=3)
    # every sampled logit is >= 200 / 4 (a corner point reads a quarter of a pixel) and <= 200
    assert 50.0 <= bce.item() <= 200.0
    assert dice.item() == pytest.approx(1 - 1 / (POINTS + 1), abs=1e-6)  # sum(p)=P, sum(t)=0


def test_soft_targets_with_zero_logits():
    """Logit 0 everywhere: BCE = log 2 for any target; Dice with p = 1/2 and t = 0 is 1 - 1/(P/2 + 1)."""
    torch.manual_seed(1)
    soft = torch.rand(2, 1, 32, 32)
    bce, _ = point_sampled_mask_loss(torch.zeros(2, 1, 8, 8), soft, num_masks=2)
    assert bce.item() == pytest.approx(math.log(2), abs=1e-6)
    bce, dice = point_sampled_mask_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 32, 32), num_masks=1)
    assert bce.item() == pytest.approx(2 * math.log(2), abs=1e-5)  # summed over 2 masks / num_masks 1
    assert dice.item() == pytest.approx(2 * (1 - 1 / (POINTS / 2 + 1)), abs=1e-6)


def reference_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> tuple[float, float]:
    """Independent re-derivation of the official loss (draws in the documented order, numpy maths)."""
    batch = logits.shape[0]
    candidates = torch.rand(batch, 3 * POINTS, 2)  # draw 1: oversampled candidates
    uncertainty = -F.grid_sample(logits, 2 * candidates[:, :, None] - 1, align_corners=False)[:, 0, :, 0].abs().numpy()
    kept = []
    for b in range(batch):
        order = np.argsort(-uncertainty[b], kind="stable")[: int(0.75 * POINTS)]
        kept.append(candidates[b, torch.from_numpy(order)])
    uniform = torch.rand(batch, POINTS - int(0.75 * POINTS), 2)  # draw 2: the uniform remainder
    points = torch.cat([torch.stack(kept), uniform], dim=1)
    grid = 2 * points[:, :, None] - 1
    l = F.grid_sample(logits, grid, align_corners=False)[:, 0, :, 0].double().numpy()
    t = F.grid_sample(targets, grid, align_corners=False)[:, 0, :, 0].double().numpy()
    bce = (np.logaddexp(0, l) - l * t).mean(1).sum() / num_masks
    p = 1 / (1 + np.exp(-l))
    dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).sum() / num_masks
    return bce, dice


def test_random_points_follow_the_documented_official_order():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 1, 64, 64, generator=generator) * 4
    targets = (torch.rand(2, 1, 256, 256, generator=generator) > 0.5).float() * 0.8
    torch.manual_seed(123)
    bce, dice = point_sampled_mask_loss(logits, targets, num_masks=2)
    after_ours = torch.rand(1)
    torch.manual_seed(123)
    expected_bce, expected_dice = reference_loss(logits, targets, 2)
    after_reference = torch.rand(1)
    assert bce.item() == pytest.approx(expected_bce, rel=1e-5)
    assert dice.item() == pytest.approx(expected_dice, rel=1e-5)
    assert torch.equal(after_ours, after_reference)  # exactly two draws of the same sizes were consumed


def test_per_sample_generators_make_a_mask_independent_of_its_batch():
    logits = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    together = uncertain_points(logits, 400, generators=[torch.Generator().manual_seed(s) for s in (7, 8)])
    alone = uncertain_points(logits[1:], 400, generators=[torch.Generator().manual_seed(8)])
    assert together.shape == (2, 400, 2)
    assert torch.equal(together[1], alone[0])
    assert 0 <= together.min() and together.max() < 1


def test_gradients_reach_the_logits_and_not_the_point_choice():
    logits = torch.randn(2, 1, 32, 32, requires_grad=True)
    targets = torch.rand(2, 1, 128, 128)
    bce, dice = point_sampled_mask_loss(logits, targets, num_masks=2, num_points=500)
    (bce + dice).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_weights_mask_samples_out_and_normalise_by_valid_count():
    logits = torch.randn(3, 1, 8, 8)
    targets = torch.rand(3, 1, 8, 8)
    centres = pixel_centres(8, 8).expand(3, -1, -1)
    weights = torch.tensor([1.0, 0.0, 1.0])
    bce, dice = losses_at_points(logits, targets, centres, weighted_num_masks(weights), weights=weights)
    kept = [0, 2]
    ref_bce, ref_dice = losses_at_points(logits[kept], targets[kept], centres[kept], 2)
    assert bce.item() == pytest.approx(ref_bce.item(), rel=1e-6)
    assert dice.item() == pytest.approx(ref_dice.item(), rel=1e-6)
    assert weighted_num_masks(torch.zeros(3)).item() == 1.0
    bce, dice = losses_at_points(logits, targets, centres, weighted_num_masks(torch.zeros(3)), weights=torch.zeros(3))
    assert bce.item() == 0.0 and dice.item() == 0.0


@pytest.mark.parametrize(
    "logits, targets, num_masks, match",
    [
        (torch.zeros(2, 256, 256), torch.zeros(2, 1, 256, 256), 2, "logits must be a"),
        (torch.zeros(2, 1, 8, 8), torch.zeros(3, 1, 8, 8), 2, "same number"),
        (torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 255.0), 1, "divide 0..255"),
        (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), 0, "num_masks"),
    ],
)
def test_bad_inputs_are_refused(logits, targets, num_masks, match):
    with pytest.raises(InvalidInputError, match=match):
        point_sampled_mask_loss(logits, targets, num_masks)
