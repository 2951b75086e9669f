"""Comparison of our predictor with an official one on the same image and prompts."""

from __future__ import annotations

import numpy as np

LOGIT_TOL = 2e-3
SCORE_TOL = 1e-4
MASK_AGREEMENT = 0.9999


def prompt_cases(image: np.ndarray) -> list[tuple[str, dict]]:
    """A box, one point (multimask), points plus box, and a point with a previous mask."""
    height, width = image.shape[:2]
    box = np.array([0.2 * width, 0.25 * height, 0.75 * width, 0.8 * height])
    fg = [0.5 * width, 0.5 * height]
    bg = [0.1 * width, 0.15 * height]
    return [
        ("box", dict(box=box, multimask_output=False)),
        ("point", dict(point_coords=np.array([fg]), point_labels=np.array([1]), multimask_output=True)),
        ("points+box", dict(point_coords=np.array([fg, bg]), point_labels=np.array([1, 0]), box=box, multimask_output=False)),
        ("point+mask", dict(point_coords=np.array([fg]), point_labels=np.array([1]), multimask_output=True, use_previous_mask=True)),
    ]


def assert_outputs_close(name: str, ours: tuple, official: tuple) -> dict:
    """ours/official: (logits (K, H, W), scores (K,), low-res (K, 256, 256)) from return_logits=True."""
    logits, scores, low_res = ours
    ref_logits, ref_scores, ref_low = official
    assert logits.shape == ref_logits.shape, f"{name}: shape {logits.shape} vs official {ref_logits.shape}"
    assert scores.shape == ref_scores.shape and low_res.shape == ref_low.shape, name
    stats = {
        "logits": float(np.abs(logits - ref_logits).max()),
        "low_res": float(np.abs(low_res - ref_low).max()),
        "scores": float(np.abs(scores - ref_scores).max()),
        "mask_agreement": float(((logits > 0) == (ref_logits > 0)).mean()),
    }
    assert stats["logits"] <= LOGIT_TOL and stats["low_res"] <= LOGIT_TOL, f"{name}: {stats}"
    assert stats["scores"] <= SCORE_TOL, f"{name}: {stats}"
    assert stats["mask_agreement"] >= MASK_AGREEMENT, f"{name}: {stats}"
    return stats


def compare_predictors(ours, official, image: np.ndarray, multimask_output: bool | None = None, **extra) -> dict:
    """Run every prompt case on both predictors (image already set) and compare.

    ``multimask_output`` overrides each case's own setting; ``extra`` goes to both predictors.
    """
    results = {}
    previous = {}
    for name, case in prompt_cases(image):
        kwargs = dict(case)
        if multimask_output is not None:
            kwargs["multimask_output"] = multimask_output
        if kwargs.pop("use_previous_mask", False):
            kwargs["mask_input"] = previous["official"]
        out = ours.predict(**kwargs, return_logits=True, **extra)
        ref = official.predict(**kwargs, return_logits=True, **extra)
        results[name] = assert_outputs_close(name, out, ref)
        # Binary masks without return_logits agree too.
        masks, _, _ = ours.predict(**kwargs, **extra)
        assert masks.dtype == bool and masks.shape == out[0].shape
        best = int(np.argmax(ref[1]))
        previous["official"] = ref[2][best : best + 1]
    return results
