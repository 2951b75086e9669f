"""Training prompts drawn from a ground-truth label, as in the official HQ-SAM recipe.

One prompt per sample, of a kind drawn uniformly among ``kinds``:

- ``"box"``: the tight (x0, y0, x1, y1) box of the label's pixels > 128 (pixel indices, the
  max included, as the official ``masks_to_boxes``), no noise (the official code never adds
  box noise);
- ``"point"``: ``num_points`` positive points drawn uniformly without replacement among the
  pixels > 128, (x, y) pixel indices, all labelled 1;
- ``"noise_mask"``: the label resized to 256 x 256 (bilinear) / 255, Gaussian noise N(0, 1)
  added only on its *incoherent* region (where it differs by >= 0.01 from itself down-sampled
  8x and up-sampled back, both bilinear), thresholded at > 0.5 and multiplied by 255. As in
  the official code this 0 / 255 mask is fed as ``mask_inputs`` as it is (not as logits).

The prompt dict carries the keys :meth:`finesam.modeling.sam.Sam.forward` takes, in the
1024 x 1024 model frame of the augmented sample. All randomness comes from the numpy
``Generator`` passed in (see :func:`finesam.train.data.sample_rng`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

PROMPT_KINDS = ("box", "point", "noise_mask")
#: the foreground threshold on 0..255 labels (the metrics' and the official code's)
FOREGROUND_ABOVE = 128
MASK_INPUT_SIZE = 256
INCOHERENT_FACTOR = 8
INCOHERENT_THRESHOLD = 0.01


def _check_label(label: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(label, torch.Tensor) or label.ndim != 3 or label.shape[0] != 1:
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise InvalidInputError(f"{name}: label must be a (1, H, W) tensor of 0..255 values, got {shape}")
    return label[0].float()


def tight_box(label: torch.Tensor, name: str = "sample") -> torch.Tensor:
    """(1, 4) float (x0, y0, x1, y1) pixel indices of the pixels > 128 of ``label`` (1, H, W)."""
    foreground = _check_label(label, name) > FOREGROUND_ABOVE
    rows = torch.nonzero(foreground.any(1)).flatten()
    cols = torch.nonzero(foreground.any(0)).flatten()
    if rows.numel() == 0:
        raise _empty(name)
    return torch.stack([cols[0], rows[0], cols[-1], rows[-1]]).float()[None]


def positive_points(label: torch.Tensor, rng: np.random.Generator, num_points: int = 10, name: str = "sample") -> torch.Tensor:
    """(1, num_points, 2) float (x, y) pixel indices drawn uniformly without replacement among
    the pixels > 128 (one ``rng.choice(count, num_points, replace=False)`` over them in row-major order)."""
    rows, cols = torch.nonzero(_check_label(label, name) > FOREGROUND_ABOVE, as_tuple=True)
    if rows.numel() < num_points:
        raise InvalidInputError(
            f"{name}: the label has {rows.numel()} foreground pixels (> 128), fewer than the {num_points} points to draw"
        )
    chosen = torch.from_numpy(rng.choice(rows.numel(), size=num_points, replace=False)).to(rows.device)
    return torch.stack([cols[chosen], rows[chosen]], dim=1).float()[None]


def incoherent_region(mask: torch.Tensor, factor: int = INCOHERENT_FACTOR) -> torch.Tensor:
    """(N, 1, h, w) bool: where ``mask`` (N, 1, h, w) in [0, 1] differs by >= 0.01 from its
    ``factor`` x bilinear down-sample bilinearly up-sampled back (boundaries and thin parts)."""
    height, width = mask.shape[-2:]
    small = F.interpolate(mask, (height // factor, width // factor), mode="bilinear", align_corners=False)
    recovered = F.interpolate(small, (height, width), mode="bilinear", align_corners=False)
    return (mask - recovered).abs() >= INCOHERENT_THRESHOLD


def noisy_mask_input(label: torch.Tensor, rng: np.random.Generator, name: str = "sample") -> torch.Tensor:
    """(1, 1, 256, 256) float 0 / 255: the label with Gaussian noise on its incoherent region.

    The noise is one ``rng.standard_normal((256, 256))`` (float32), added only where
    :func:`incoherent_region` holds.
    """
    values = _check_label(label, name)[None, None] / 255.0
    small = F.interpolate(values, (MASK_INPUT_SIZE, MASK_INPUT_SIZE), mode="bilinear", align_corners=False)
    noise = torch.from_numpy(rng.standard_normal((MASK_INPUT_SIZE, MASK_INPUT_SIZE), dtype=np.float32)).to(small.device)
    noisy = small + noise * incoherent_region(small).float()
    return (noisy > 0.5).float() * 255.0


def _empty(name: str) -> InvalidInputError:
    return InvalidInputError(
        f"{name}: the label has no foreground pixel (> 128), so no box or point prompt can be drawn; remove this "
        "image from the training set or give it a non-empty mask"
    )


def choose_kind(
    rng: np.random.Generator, kinds: Sequence[str], foreground_count: int, num_points: int = 10, name: str = "sample"
) -> str:
    """The prompt kind of :func:`draw_prompt` for a label with ``foreground_count`` pixels > 128."""
    unknown = [kind for kind in kinds if kind not in PROMPT_KINDS]
    if not kinds or unknown:
        raise InvalidInputError(f"prompt kinds must be a non-empty subset of {PROMPT_KINDS}, got {tuple(kinds)}")
    candidates = list(dict.fromkeys(kinds))
    if foreground_count == 0:
        if "noise_mask" not in candidates:
            raise _empty(name)
        candidates = ["noise_mask"]
    kind = candidates[int(rng.integers(len(candidates)))]
    if kind == "point" and foreground_count < num_points:
        candidates.remove("point")
        if not candidates:
            raise InvalidInputError(
                f"{name}: the label has {foreground_count} foreground pixels (> 128), fewer than the {num_points} "
                "points to draw, and 'point' is the only prompt kind allowed"
            )
        kind = candidates[int(rng.integers(len(candidates)))]
    return kind


def draw_prompt(
    label: torch.Tensor,
    rng: np.random.Generator,
    kinds: Sequence[str] = PROMPT_KINDS,
    num_points: int = 10,
    name: str = "sample",
) -> dict[str, torch.Tensor | str]:
    """One training prompt for ``label`` (1, 1024, 1024) float 0..255 (the augmented sample).

    The kind is ``kinds[rng.integers(len(kinds))]``. If it is ``"point"`` and the label has
    fewer than ``num_points`` foreground pixels, the kind is drawn again (same rng) among the
    other kinds (the official code dropped 'point' for the whole batch instead).

    Returns ``{"kind": kind, ...}`` with ``"boxes"`` (1, 4), or ``"point_coords"``
    (1, num_points, 2) + ``"point_labels"`` (1, num_points), or ``"mask_inputs"``
    (1, 1, 256, 256) float 0 / 255, in the model frame: the keys ``Sam.forward`` takes; float32
    tensors on the label's device.

    Raises:
        InvalidInputError: unknown kind, bad label shape, or a label without any foreground
            pixel (> 128) when the only kinds are box / point; with ``"noise_mask"`` among the
            kinds an empty label gets the noise-mask prompt (an all-zero mask input).
    """
    foreground_count = int((_check_label(label, name) > FOREGROUND_ABOVE).sum())
    kind = choose_kind(rng, kinds, foreground_count, num_points, name)
    if kind == "box":
        return {"kind": kind, "boxes": tight_box(label, name)}
    if kind == "point":
        coords = positive_points(label, rng, num_points, name)
        return {"kind": kind, "point_coords": coords, "point_labels": torch.ones(1, num_points, device=label.device)}
    return {"kind": kind, "mask_inputs": noisy_mask_input(label, rng, name)}
