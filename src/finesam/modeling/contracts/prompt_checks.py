"""The one check of prompts in the model's frame, before they reach the prompt encoder.

Every entry point (predictor, batched prompts, ``Sam.forward``, automatic masks, corrections)
scales user prompts into the 1024 frame and then passes through here, so a value that would
overflow in float32 or turn the positional encoding into NaN is refused with a clear message.
"""

from __future__ import annotations

import torch

from ...errors import InvalidInputError

# Prompts may lie up to this many frames outside the model's frame (a detector box that
# overshoots the image is fine; a point at 1e38 is not).
FRAME_MARGIN = 1.0
# SAM's low-res logits are within about +-50; far larger values saturate the mask encoder.
MASK_LOGIT_LIMIT = 1e4
VALID_LABELS = (-1, 0, 1)


def _real_floats(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise InvalidInputError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    return tensor.float()


def _check_frame(name: str, coords: torch.Tensor, image_size: int, hint: str) -> None:
    low, high = -FRAME_MARGIN * image_size, (1 + FRAME_MARGIN) * image_size
    if not torch.isfinite(coords).all():
        raise InvalidInputError(f"{name} contain NaN or infinite values{hint}; pass finite pixel coordinates")
    outside = (coords < low) | (coords > high)
    if outside.any():
        value = coords[outside][0].item()
        raise InvalidInputError(
            f"{name} hold {value:.4g}, far outside the image{hint}: prompts must lie within one image size of "
            f"the image (model-frame coordinates {low:.0f}..{high:.0f})"
        )


def check_model_prompts(
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    image_size: int,
    hint: str = "",
) -> None:
    """Refuse prompts in the ``image_size`` frame that cannot give a finite mask.

    points: ((B, N, 2) xy, (B, N) labels in {-1, 0, 1}); boxes: (B, 4) xyxy with x1 >= x0,
    y1 >= y0; mask_input: (B or 1, 1, 256, 256) finite logits with |value| <= 1e4. The
    batch sizes must agree (one mask input may serve every prompt). ``hint`` is added to messages (e.g. the original image size).
    """
    batches = {}
    if points is not None:
        if not isinstance(points, (tuple, list)) or len(points) != 2:
            raise InvalidInputError("points must be a (coords, labels) pair")
        coords, labels = points
        coords = _real_floats("point coordinates", coords)
        if labels is None:
            raise InvalidInputError("point_labels is required with point_coords (1 = foreground, 0 = background)")
        if coords.ndim != 3 or coords.shape[-1] != 2:
            raise InvalidInputError(f"point coordinates must have shape (B, N, 2), got {tuple(coords.shape)}")
        if not isinstance(labels, torch.Tensor) or labels.shape != coords.shape[:2]:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise InvalidInputError(f"point labels must have shape {tuple(coords.shape[:2])} (B, N), got {shape}")
        if labels.is_complex() or labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise InvalidInputError("point labels must be integers 1 (foreground), 0 (background) or -1 (ignore)")
        if not torch.isin(labels.long(), torch.tensor(VALID_LABELS, device=labels.device)).all():
            raise InvalidInputError("point labels must be 1 (foreground), 0 (background) or -1 (ignore)")
        _check_frame("point coordinates", coords, image_size, hint)
        batches["points"] = coords.shape[0]
    if boxes is not None:
        boxes = _real_floats("boxes", boxes)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise InvalidInputError(f"boxes must have shape (B, 4) as x0, y0, x1, y1, got {tuple(boxes.shape)}")
        _check_frame("box coordinates", boxes, image_size, hint)
        if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            raise InvalidInputError("a box has x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1) with the top-left corner first")
        batches["boxes"] = boxes.shape[0]
    if mask_input is not None:
        mask = _real_floats("mask_input", mask_input)
        if mask.ndim != 4 or mask.shape[1:] != (1, 256, 256):
            raise InvalidInputError(f"mask_input must be (B, 1, 256, 256) low-res logits, got {tuple(mask.shape)}")
        if not torch.isfinite(mask).all() or mask.abs().max() > MASK_LOGIT_LIMIT:
            raise InvalidInputError(
                f"mask_input must be finite logits within +-{MASK_LOGIT_LIMIT:g} (NaN, inf or huge values found); "
                "pass the low_res_logits returned by an earlier predict"
            )
        if mask.shape[0] != 1:
            batches["mask_input"] = mask.shape[0]
    if len(set(batches.values())) > 1:
        sizes = ", ".join(f"{name} {size}" for name, size in batches.items())
        raise InvalidInputError(f"prompts for different numbers of objects ({sizes}): give one of each per object")


def check_click_points(points: torch.Tensor, flags: torch.Tensor) -> None:
    """Corrections: (B, N, 2) (x, y) normalised to the padded frame, (B, N) flags in {0, 1}."""
    points = _real_floats("click coordinates", points)
    if points.ndim != 3 or points.shape[-1] != 2 or points.shape[1] == 0:
        raise InvalidInputError(f"clicks must have shape (B, N, 2) with N >= 1, got {tuple(points.shape)}")
    if not isinstance(flags, torch.Tensor) or flags.shape != points.shape[:2]:
        raise InvalidInputError("click flags must have shape (B, N): 1 foreground, 0 background")
    if not torch.isin(flags.long(), torch.tensor((0, 1), device=flags.device)).all():
        raise InvalidInputError("click flags must be 1 (foreground) or 0 (background)")
    if not torch.isfinite(points).all() or ((points < -FRAME_MARGIN) | (points > 1 + FRAME_MARGIN)).any():
        raise InvalidInputError("clicks must lie within one image size of the image (finite coordinates)")
