"""`AutomaticMaskGenerator`: masks for a whole image from a grid of point prompts.

Same parameters, defaults, filtering and records as ``segment_anything``'s
``SamAutomaticMaskGenerator`` (and ``segment_anything_hq``'s, with ``hq_token_only``), for
any model from :func:`finesam.load`. Differences, none of which change the result:

* logits are upsampled to the image size only for masks that pass ``pred_iou_thresh``, and
  in chunks, so memory does not grow with ``points_per_batch x 3 x H x W``;
* NMS is :mod:`finesam.ops.nms` (pure torch, same result as torchvision's).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..modeling.contracts.decoder_api import OutputMode
from ..modeling.sam import Sam
from ..ops.nms import batched_nms
from .amg_utils import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_box_np,
    mask_to_rle,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .predictor import SamPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Upsampled float logits held at once: chunk * H * W elements at most (~256 MB).
_UPSAMPLE_ELEMENTS = 1 << 26


def _keep(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``values[keep]`` for a boolean row mask; ``values`` itself (no copy of full-resolution
    masks) when every row is kept."""
    return values if bool(keep.all()) else values[keep]


class AutomaticMaskGenerator:
    """Generates masks for an entire image: point-grid prompts, quality filtering, NMS.

    Args:
        model: a :class:`~finesam.modeling.sam.Sam` (SAM, MobileSAM or HQ-SAM).
        points_per_side: points along each side of the grid (``points_per_side**2`` prompts);
            ``None`` to use ``point_grids`` instead.
        points_per_batch: prompts decoded at once (memory vs. speed).
        pred_iou_thresh: keep masks whose predicted IoU is > this (no filter when <= 0).
        stability_score_thresh: keep masks whose stability score is >= this (no filter when <= 0).
        stability_score_offset: logit offset of the stability score's two thresholds.
        box_nms_thresh: box IoU above which duplicate masks within a crop are dropped.
        crop_n_layers: with n > 0, also run on crops; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU for removing duplicates across crops (smaller crops win).
        crop_overlap_ratio: overlap of neighbouring crops in layer 1, as a fraction of the
            image's short side (scaled down in later layers).
        crop_n_points_downscale_factor: layer i uses points_per_side / factor**i points per side.
        point_grids: explicit (N_i, 2) grids normalised to [0, 1], one per crop layer.
        min_mask_region_area: > 0 fills holes and removes islands smaller than this (pixels),
            then re-runs NMS.
        output_mode: "binary_mask" ((H, W) bool arrays), "uncompressed_rle" or "coco_rle"
            (compressed, as pycocotools writes it; pycocotools is not needed).
        multimask_output: 3 masks per point for SAM models (HQ models: see
            :class:`~finesam.modeling.contracts.decoder_api.OutputMode`).
        hq_token_only / hq_output: HQ models only, as in :meth:`SamPredictor.predict`;
            ``hq_output="candidates"`` gives 3 HQ-refined masks per point.
        progress: show a tqdm progress bar over point batches.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        multimask_output: bool = True,
        hq_token_only: bool | None = None,
        hq_output: str | None = None,
        progress: bool = False,
    ) -> None:
        if "points" not in model.capabilities.prompts:
            raise InvalidInputError(
                f"automatic mask generation prompts a grid of points, and this model takes "
                f"{model.capabilities.prompt_names} prompts only (Pi-SAM is trained on boxes): use a SAM or HQ-SAM model "
                "(e.g. hq_vit_b) for AutomaticMaskGenerator"
            )
        _check_int("points_per_batch", points_per_batch, 1)
        _check_int("crop_n_layers", crop_n_layers, 0)
        _check_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
        if not 0 <= crop_overlap_ratio < 1:
            raise InvalidInputError(f"crop_overlap_ratio must be in [0, 1), got {crop_overlap_ratio}")
        if min_mask_region_area < 0:
            raise InvalidInputError(f"min_mask_region_area must be >= 0 pixels, got {min_mask_region_area}")
        for name, value in (("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh", stability_score_thresh),
                            ("stability_score_offset", stability_score_offset), ("box_nms_thresh", box_nms_thresh),
                            ("crop_nms_thresh", crop_nms_thresh)):
            if not isinstance(value, numbers.Real) or math.isnan(float(value)):
                raise InvalidInputError(f"{name} must be a number, got {value!r}")
        if output_mode not in OUTPUT_MODES:
            raise InvalidInputError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")

        self.point_grids = _point_grids(points_per_side, point_grids, crop_n_layers, crop_n_points_downscale_factor)
        self.predictor = SamPredictor(model, keep_early_feature=False)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.multimask_output = multimask_output
        self.hq_token_only = hq_token_only
        self.hq_output = hq_output
        self.progress = progress
        self._mode(None, None, None)  # reject bad HQ options now, not after encoding an image

    # --- public --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        image: np.ndarray,
        multimask_output: bool | None = None,
        hq_token_only: bool | None = None,
        hq_output: str | None = None,
    ) -> list[dict[str, Any]]:
        """Masks for an (H, W, 3) uint8 RGB image.

        ``multimask_output``, ``hq_token_only`` and ``hq_output`` override the constructor's
        values for this call (passing either HQ option replaces both constructor HQ options).

        Returns one record per mask:
            segmentation: (H, W) bool array, or an RLE dict (see ``output_mode``);
            area: int pixels; bbox: [x, y, w, h] (ints); predicted_iou: float;
            point_coords: [[x, y]] the prompt; stability_score: float;
            crop_box: [x, y, w, h] of the crop the mask came from (ints; floats for every
                record when a crop gave no mask, as the official generator's).
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidInputError(
                f"generate expects an (H, W, 3) uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InvalidInputError(f"generate got an empty image of shape {image.shape}")
        mode = self._mode(multimask_output, hq_token_only, hq_output)
        data = self._generate_masks(image, mode)
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        return self._records(data)

    # --- stages --------------------------------------------------------------------------------
    def _mode(self, multimask_output: bool | None, hq_token_only: bool | None, hq_output: str | None) -> OutputMode:
        multimask = self.multimask_output if multimask_output is None else multimask_output
        if hq_token_only is None and hq_output is None:
            hq_token_only, hq_output = self.hq_token_only, self.hq_output
        mode = OutputMode.from_flags(multimask, hq_token_only, hq_output)
        self.predictor.capabilities.check_mode(mode)
        return mode

    def _generate_masks(self, image: np.ndarray, mode: OutputMode) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layers = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        batches = sum(math.ceil(len(self.point_grids[layer]) / self.points_per_batch) for layer in layers)
        data = MaskData()
        with tqdm(total=batches, desc="masks", unit="batch", disable=not self.progress) as bar:
            for crop_box, layer in zip(crop_boxes, layers):
                data.cat(self._process_crop(image, crop_box, layer, mode, bar))
        if len(crop_boxes) > 1 and len(data):
            # Between crops, prefer masks from smaller crops.
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(data["boxes"].float(), scores, torch.zeros(len(data)), self.crop_nms_thresh)
            data.filter(keep)
        data.to_numpy()
        return data

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int, mode: OutputMode, bar) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_size = crop.shape[:2]
        self.predictor.set_image(crop)
        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        data = _empty_data()
        for (batch,) in batch_iterator(self.points_per_batch, points):
            data.cat(self._process_batch(batch, crop_size, crop_box, image.shape[:2], mode))
            bar.update(1)
        self.predictor.reset_image()

        keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data)), self.box_nms_thresh)
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        # The official torch.tensor([crop_box] * n) is float32 for a crop without masks (an empty
        # list), and concatenated that makes every crop box of the image float: records match.
        dtype = torch.int64 if len(data) else torch.float32
        data["crop_boxes"] = torch.tensor([crop_box], dtype=dtype).repeat(len(data), 1)
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        crop_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        mode: OutputMode,
    ) -> MaskData:
        """Decode (P, 2) points of one crop; returns the surviving masks as RLEs in the image frame."""
        predictor, model = self.predictor, self.predictor.model
        orig_h, orig_w = orig_size
        device = predictor.device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # the official prompts are float64
        coords = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), dtype=dtype, device=device)
        labels = torch.ones(len(points), 1, dtype=torch.int64, device=device)
        output = model.decode(predictor.image_features, (coords[:, None], labels), None, None, mode)
        low_res, iou_preds = output.logits, output.scores
        per_point = low_res.shape[1]
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        point_rows = torch.as_tensor(points).repeat_interleave(per_point, dim=0)

        # The predicted-IoU filter needs no upsampled logits: apply it first.
        if self.pred_iou_thresh > 0.0:
            kept = torch.nonzero(iou_preds > self.pred_iou_thresh).flatten()
        else:
            kept = torch.arange(len(iou_preds), device=iou_preds.device)
        out = _empty_data()
        chunk = max(1, _UPSAMPLE_ELEMENTS // (crop_size[0] * crop_size[1]))
        for start in range(0, len(kept), chunk):
            index = kept[start : start + chunk]
            logits = model.postprocess_masks(low_res[index][:, None], predictor.input_size, crop_size)[:, 0]
            stability = calculate_stability_score(logits, model.mask_threshold, self.stability_score_offset)
            if self.stability_score_thresh > 0.0:
                stable = stability >= self.stability_score_thresh
                logits, index, stability = _keep(logits, stable), _keep(index, stable), _keep(stability, stable)
            masks = logits > model.mask_threshold
            del logits
            boxes = batched_mask_to_box(masks)
            # Masks cut by a crop edge (that is not an image edge) are left to other crops.
            inner = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            masks, index, stability, boxes = (_keep(v, inner) for v in (masks, index, stability, boxes))
            out.cat(MaskData(
                iou_preds=iou_preds[index].float().cpu(),
                points=point_rows[index.cpu()],
                stability_score=stability.float().cpu(),
                boxes=boxes.cpu(),
                rles=mask_to_rle(uncrop_masks(masks, crop_box, orig_h, orig_w)),
            ))
        return out

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fill small holes and remove small islands in every mask, then NMS again, preferring
        masks that needed no change. Edits ``mask_data`` (numpy columns) in place."""
        if len(mask_data) == 0:
            return mask_data
        boxes, scores, changed_rles = [], [], {}
        for index, rle in enumerate(mask_data["rles"]):
            mask = rle_to_mask(rle)
            mask, filled = remove_small_regions(mask, min_area, mode="holes")
            mask, removed = remove_small_regions(mask, min_area, mode="islands")
            changed = filled or removed
            scores.append(0.0 if changed else 1.0)
            boxes.append(mask_to_box_np(mask))
            if changed:  # encoded now so that the decoded masks need not be kept
                changed_rles[index] = mask_to_rle(torch.from_numpy(mask)[None])[0]
        boxes_t = torch.as_tensor(np.stack(boxes))
        keep = batched_nms(boxes_t.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), nms_thresh)
        for index in keep.tolist():
            if index in changed_rles:
                mask_data["rles"][index] = changed_rles[index]
                mask_data["boxes"][index] = boxes[index]
        mask_data.filter(keep)
        return mask_data

    def _records(self, data: MaskData) -> list[dict[str, Any]]:
        records = []
        for index in range(len(data)):
            rle = data["rles"][index]
            if self.output_mode == "coco_rle":
                segmentation = coco_encode_rle(rle)
            elif self.output_mode == "binary_mask":
                segmentation = rle_to_mask(rle)
            else:
                segmentation = rle
            records.append({
                "segmentation": segmentation,
                "area": area_from_rle(rle),
                "bbox": box_xyxy_to_xywh(data["boxes"][index]).tolist(),
                "predicted_iou": float(data["iou_preds"][index]),
                "point_coords": [data["points"][index].tolist()],
                "stability_score": float(data["stability_score"][index]),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][index]).tolist(),
            })
        return records


def _empty_data() -> MaskData:
    return MaskData(
        iou_preds=torch.zeros(0),
        points=torch.zeros(0, 2, dtype=torch.float64),
        stability_score=torch.zeros(0),
        boxes=torch.zeros(0, 4, dtype=torch.int64),
        rles=[],
    )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _point_grids(
    points_per_side: int | None, point_grids: Sequence[np.ndarray] | None, crop_n_layers: int, downscale: int
) -> list[np.ndarray]:
    """The (N_i, 2) normalised grid of each crop layer 0..crop_n_layers."""
    if points_per_side is not None and point_grids is not None:
        raise InvalidInputError(
            "pass either points_per_side or point_grids, not both (set points_per_side=None to use point_grids)"
        )
    if points_per_side is None and point_grids is None:
        raise InvalidInputError("one of points_per_side or point_grids is required")
    if points_per_side is not None:
        _check_int("points_per_side", points_per_side, 1)
        smallest = int(points_per_side / downscale**crop_n_layers)
        if smallest < 1:
            raise InvalidInputError(
                f"points_per_side={points_per_side} with crop_n_points_downscale_factor={downscale} leaves no "
                f"points in crop layer {crop_n_layers}; use more points or a smaller factor"
            )
        return build_all_layer_point_grids(points_per_side, crop_n_layers, downscale)
    grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
    if len(grids) < crop_n_layers + 1:
        raise InvalidInputError(f"point_grids has {len(grids)} grids; crop_n_layers={crop_n_layers} needs {crop_n_layers + 1}")
    for layer, grid in enumerate(grids):
        if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
            raise InvalidInputError(f"point_grids[{layer}] must have shape (N, 2) with N > 0, got {grid.shape}")
        if not (np.isfinite(grid).all() and (grid >= 0).all() and (grid <= 1).all()):
            raise InvalidInputError(f"point_grids[{layer}] must hold (x, y) points normalised to [0, 1]")
    return grids
