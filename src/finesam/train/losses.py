"""The mask loss of the official HQ-SAM / Pi-SAM training: point-sampled BCE + Dice.

PointRend / Mask2Former style: instead of comparing whole masks, the loss compares the
prediction and the (soft) target at 112 x 112 = 12,544 points per mask, three quarters of them
where the prediction is least certain. :func:`point_sampled_mask_loss` draws its random
points in the same order and shapes as the official ``train/utils/loss_mask.py`` does, so that
under the same ``torch.manual_seed`` it returns the official numbers.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

#: the official defaults (``loss_masks`` in HQ-SAM's ``train/utils/loss_mask.py``)
NUM_POINTS = 112 * 112
OVERSAMPLE_RATIO = 3.0
IMPORTANCE_SAMPLE_RATIO = 0.75


def sample_at_points(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``maps`` (B, C, H, W) at ``points`` (B, P, 2) -> (B, C, P).

    Points are (x, y) in [0, 1] over the whole map (0 = left/top edge, 1 = right/bottom edge),
    read with ``grid_sample(..., align_corners=False)`` at ``2 * p - 1``; outside: zeros.
    """
    grid = (2.0 * points - 1.0).unsqueeze(2)  # (B, P, 1, 2)
    return F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor, num_masks, weights) -> None:
    for name, value in (("logits", logits), ("targets", targets)):
        if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[1] != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidInputError(f"{name} must be a (B, 1, H, W) tensor, got {shape}")
    if logits.shape[0] != targets.shape[0] or logits.shape[0] == 0:
        raise InvalidInputError(
            f"logits and targets must hold the same number B >= 1 of masks, got {logits.shape[0]} and {targets.shape[0]}"
        )
    if not targets.is_floating_point():
        raise InvalidInputError(f"targets must be a float tensor in [0, 1], got dtype {targets.dtype}")
    low, high = float(targets.min()), float(targets.max())
    if not (0.0 <= low and high <= 1.0):
        raise InvalidInputError(
            f"targets must lie in [0, 1] (soft masks), got values in [{low:g}, {high:g}]; divide 0..255 labels by 255"
        )
    if isinstance(num_masks, torch.Tensor):
        num_masks = float(num_masks)
    if not isinstance(num_masks, (int, float)) or not num_masks > 0:
        raise InvalidInputError(f"num_masks must be a positive number (the loss normaliser), got {num_masks!r}")
    if weights is not None and (not isinstance(weights, torch.Tensor) or weights.shape != (logits.shape[0],)):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise InvalidInputError(f"weights must be a ({logits.shape[0]},) tensor, one weight per mask, got {shape}")


def _draw(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, device=device)
    # a generator draws on its own device (a CPU generator gives the same points for CPU and GPU runs)
    return torch.rand(shape, device=generator.device, generator=generator).to(device)


@torch.no_grad()
def uncertain_points(
    logits: torch.Tensor,
    num_points: int = NUM_POINTS,
    oversample_ratio: float = OVERSAMPLE_RATIO,
    importance_sample_ratio: float = IMPORTANCE_SAMPLE_RATIO,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """The points where the loss is evaluated: (B, num_points, 2) (x, y) in [0, 1].

    Order of the random draws (the official one):

    1. ONE ``torch.rand(B, int(num_points * oversample_ratio), 2)``: candidate points;
    2. uncertainty = ``-|logit|`` bilinearly sampled at each candidate; the
       ``k = int(importance_sample_ratio * num_points)`` most uncertain candidates are kept
       (``torch.topk``, in topk's order);
    3. ONE ``torch.rand(B, num_points - k, 2)``: uniform points appended after them (no call
       when ``k == num_points``).

    ``generators``: one ``torch.Generator`` per mask instead of the global generator; mask b
    then draws its candidates ``(n, 2)`` and then its remainder ``(num_points - k, 2)`` from
    ``generators[b]``, so that a mask's points do not depend on the other masks in the batch
    (what data-parallel training needs to match single-process training).
    """
    batch = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_uniform = num_points - num_uncertain
    device = logits.device
    if generators is not None and len(generators) != batch:
        raise InvalidInputError(f"generators must hold one torch.Generator per mask ({batch}), got {len(generators)}")
    if generators is None:
        candidates = _draw((batch, num_candidates, 2), device, None)
    else:
        candidates = torch.stack([_draw((num_candidates, 2), device, g) for g in generators])
    uncertainty = -sample_at_points(logits.float(), candidates).abs()[:, 0]  # (B, n)
    chosen = torch.topk(uncertainty, k=num_uncertain, dim=1).indices
    points = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, 2))
    if num_uniform > 0:
        if generators is None:
            uniform = _draw((batch, num_uniform, 2), device, None)
        else:
            uniform = torch.stack([_draw((num_uniform, 2), device, g) for g in generators])
        points = torch.cat([points, uniform], dim=1)
    return points


def point_sampled_mask_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    num_points: int = NUM_POINTS,
    oversample_ratio: float = OVERSAMPLE_RATIO,
    importance_sample_ratio: float = IMPORTANCE_SAMPLE_RATIO,
    *,
    weights: torch.Tensor | None = None,
    generators: Sequence[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-sampled sigmoid BCE and Dice losses of the official HQ-SAM / Pi-SAM training.

    Args:
        logits: (B, 1, h, w) predicted mask logits (e.g. 256 x 256 low-res, or 1024 x 1024).
        targets: (B, 1, H, W) targets in [0, 1], soft (bilinearly resized labels / 255 are not
            binarised); any size, both maps are read at the same normalised points.
        num_masks: the normaliser, B in the official code. For per-sample ``weights`` (Pi-SAM
            stage 2: 1 for samples with an error component, 0 otherwise) pass
            ``max(weights.sum(), 1)``.
        num_points, oversample_ratio, importance_sample_ratio: official defaults 12,544, 3, 0.75.
        weights: optional (B,) per-mask weights multiplying each mask's BCE and Dice.
        generators: optional per-mask ``torch.Generator`` s; see :func:`uncertain_points`.

    The points come from :func:`uncertain_points` (draw order documented there) without
    gradient; logits and targets are then read there with ``grid_sample`` (bilinear,
    ``align_corners=False``, coordinates ``2 p - 1``) and

    - ``bce  = sum_b w_b * mean_points(BCEWithLogits(l, t)) / num_masks``;
    - ``dice = sum_b w_b * (1 - (2 * sum(sigmoid(l) * t) + 1) / (sum(sigmoid(l)) + sum(t) + 1)) / num_masks``.

    Returns (bce, dice), scalar tensors (the official total is their sum). Computed in float32.
    """
    _check_inputs(logits, targets, num_masks, weights)
    points = uncertain_points(logits.float(), num_points, oversample_ratio, importance_sample_ratio, generators)
    return losses_at_points(logits, targets, points, num_masks, weights=weights)


def losses_at_points(
    logits: torch.Tensor,
    targets: torch.Tensor,
    points: torch.Tensor,
    num_masks: float,
    *,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bce, dice) of :func:`point_sampled_mask_loss` at given ``points`` (B, P, 2) (x, y) in [0, 1].

    A point at a pixel centre, ``((col + 0.5) / w, (row + 0.5) / h)``, reads that pixel exactly.
    """
    _check_inputs(logits, targets, num_masks, weights)
    if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[0] != logits.shape[0] or points.shape[2] != 2:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise InvalidInputError(f"points must be a ({logits.shape[0]}, P, 2) tensor of (x, y) in [0, 1], got {shape}")
    logits = logits.float()
    with torch.no_grad():
        point_targets = sample_at_points(targets.float(), points)[:, 0]  # (B, P)
    point_logits = sample_at_points(logits, points)[:, 0]  # (B, P)
    bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="none").mean(1)
    probabilities = point_logits.sigmoid()
    numerator = 2 * (probabilities * point_targets).sum(1)
    denominator = probabilities.sum(1) + point_targets.sum(1)
    dice = 1 - (numerator + 1) / (denominator + 1)
    if weights is not None:
        weights = weights.to(bce)
        bce, dice = bce * weights, dice * weights
    return bce.sum() / num_masks, dice.sum() / num_masks


def weighted_num_masks(weights: torch.Tensor) -> torch.Tensor:
    """The Pi-SAM stage-2 normaliser for per-sample ``weights`` (B,): ``sum(weights)``, or 1 if that is 0."""
    total = weights.float().sum()
    return torch.where(total > 0, total, torch.ones_like(total))
