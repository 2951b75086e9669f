"""Validation during training: the recipe's output on unaugmented images, scored at the original
resolution with :func:`finesam.metrics.iou` and :func:`finesam.metrics.boundary_iou` (HQ-SAM's
mIoU and mBIoU).

Each image gets the tight box of its mask (pixels > 128). The ``hq`` recipe is scored on the HQ
logits it trains (``hq_output="hq_only"``); Pi stage 1 on the 1024x1024 output; Pi stage 2 after
one correction click simulated from the stage-1 errors as in training's evaluation mode (the
largest error component, one pixel of it). Processes split the images and rank 0 averages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.layouts import open_dataset, split_from_name
from ..evaluation.prompts import mask_box
from ..distributed import DistributedContext, broadcast_from_main, gather_to_main, shard
from ..metrics import boundary_iou, iou
from ..predict.predictor import SamPredictor
from .clicks import GRID, simulate_correction_clicks
from .prompts import FOREGROUND_ABOVE
from .recipes import Recipe


def open_validation_sets(sources: Sequence[tuple[str, Path]]) -> list:
    """The ``--val NAME=PATH`` data sets (validation split unless NAME says otherwise)."""
    return [open_dataset(f"{name}={os.fspath(path)}", split=split_from_name(name) or "val") for name, path in sources]


def validate(step_module: torch.nn.Module, sources: Sequence[tuple[str, Path]], recipe: Recipe, *,
             limit: int | None, context: DistributedContext) -> dict[str, float]:
    """``{"miou": ..., "mbiou": ..., "images": n}`` over the validation images (first ``limit`` of each set)."""
    model = step_module.model
    items = []
    for dataset in open_validation_sets(sources):
        pairs = dataset.pairs[:limit] if limit else dataset.pairs
        items += [(dataset, pair) for pair in pairs]
    scores = []
    predictor = SamPredictor(model)
    for dataset, pair in shard(items, context):
        _, image, gt, _ = dataset.load(pair)
        foreground = gt > FOREGROUND_ABOVE
        if not foreground.any():
            continue
        mask = predict_validation_mask(predictor, image, foreground, recipe)
        scores.append((iou(mask, gt), boundary_iou(mask, gt)))
    gathered = gather_to_main(scores, context)
    result: dict[str, float] = {}
    if context.is_main:
        every = [score for part in gathered for score in part]
        result = {"miou": float(np.mean([s[0] for s in every])) if every else float("nan"),
                  "mbiou": float(np.mean([s[1] for s in every])) if every else float("nan"),
                  "images": len(every)}
    return broadcast_from_main(result, context)


@torch.no_grad()
def predict_validation_mask(predictor: SamPredictor, image: np.ndarray, foreground: np.ndarray, recipe: Recipe) -> np.ndarray:
    """(H, W) bool mask of the recipe's output for the tight box of ``foreground`` (H, W) bool."""
    box = mask_box(foreground)
    predictor.set_image(image)
    masks, _, low_res = predictor.predict(box=box, multimask_output=False, hq_output=recipe.hq_output)
    if not recipe.corrects_clicks:
        return masks[0]
    # the stage-1 errors on the 256 grid of the padded 1024 frame, as training sees them
    height, width = foreground.shape
    scale = predictor.model.image_size / max(height, width)
    resized = predictor.transform.get_preprocess_shape(height, width)
    label = torch.zeros(1, 1, predictor.model.image_size, predictor.model.image_size)
    label[..., : resized[0], : resized[1]] = F.interpolate(
        torch.from_numpy(foreground.astype(np.float32))[None, None], resized, mode="bilinear", align_corners=False
    )
    label_256 = F.interpolate(label, (GRID, GRID), mode="bilinear", align_corners=False)
    points, flags, padding, valid = simulate_correction_clicks(
        torch.from_numpy(low_res[None]).float(), label_256, [np.random.default_rng(0)], training=False
    )
    if not float(valid[0]):
        return masks[0]
    used = ~padding[0]
    pixels = points[0][used].numpy() * predictor.model.image_size / scale  # normalised 1024 frame -> original pixels
    pixels = np.clip(pixels, 0, [width - 1, height - 1])
    chosen = flags[0][used].numpy()
    corrected, _, _ = predictor.correct(fg_points=pixels[chosen == 1] if (chosen == 1).any() else None,
                                        bg_points=pixels[chosen == 0] if (chosen == 0).any() else None)
    return corrected[0]
