"""`SamPredictor`: the official predictor's surface, plus validated batched prompts and HQ modes."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CallOrderError, InvalidInputError
from ..modeling.contracts.decoder_api import CorrectionState, DecoderCapabilities, OutputMode
from ..modeling.contracts.features import ImageFeatures
from ..modeling.contracts.prompt_checks import FRAME_MARGIN, VALID_LABELS, check_model_prompts
from ..modeling.sam import Sam
from .transforms import ResizeLongestSide


def _as_real_array(name: str, values, dtype=np.float64) -> np.ndarray:
    """``values`` as a real numeric array, or a clear error naming ``name``."""
    if isinstance(values, (str, bytes)):
        raise InvalidInputError(f"{name} must be numbers, got the string {values!r}")
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{name} must be an array of numbers ({error})") from error
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} must hold real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # too large for the dtype becomes inf, which the checks refuse
        return array.astype(dtype, copy=False)


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"{name} contains NaN or infinite values; pass finite pixel coordinates")


def validate_points(coords: np.ndarray, labels: np.ndarray, batched: bool, name: str = "point_coords") -> tuple[np.ndarray, np.ndarray]:
    """Check (N, 2) / (N,) points (or (P, N, 2) / (P, N) when ``batched``)."""
    if labels is None:
        raise InvalidInputError(f"point_labels is required with {name} (1 = foreground, 0 = background)")
    coords = _as_real_array(name, coords)
    labels = _as_real_array("point_labels", labels)
    ndim = 3 if batched else 2
    if coords.ndim != ndim or coords.shape[-1] != 2 or coords.shape[-2] == 0:
        shape = "(P, N, 2)" if batched else "(N, 2)"
        raise InvalidInputError(f"{name} must have shape {shape} of (x, y) pixels with N >= 1, got {coords.shape}")
    if labels.shape != coords.shape[:-1]:
        raise InvalidInputError(f"point_labels shape {labels.shape} does not match {name} {coords.shape[:-1]}")
    _check_finite(name, coords)
    if not np.isin(labels, VALID_LABELS).all():
        bad = sorted(set(np.unique(labels).tolist()) - set(VALID_LABELS))
        raise InvalidInputError(f"point_labels must be 1 (foreground), 0 (background) or -1 (ignore); got {bad}")
    return coords, labels.astype(np.int64)


def validate_boxes(boxes: np.ndarray, batched: bool) -> np.ndarray:
    """Check (4,) (or (P, 4)) xyxy boxes: finite, x1 >= x0, y1 >= y0."""
    boxes = _as_real_array("boxes" if batched else "box", boxes)
    if batched and (boxes.ndim != 2 or boxes.shape[-1] != 4):
        raise InvalidInputError(f"boxes must have shape (P, 4) as x0, y0, x1, y1 pixels, got {boxes.shape}")
    if not batched:
        if boxes.size != 4:
            raise InvalidInputError(f"box must have 4 values x0, y0, x1, y1 in pixels, got shape {boxes.shape}")
        boxes = boxes.reshape(1, 4)
    _check_finite("box coordinates", boxes)
    flipped = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if flipped.size:
        raise InvalidInputError(
            f"box {boxes[flipped[0]].tolist()} has x1 < x0 or y1 < y0 (box index {int(flipped[0])}); "
            "boxes are (x0, y0, x1, y1) with the top-left corner first"
        )
    return boxes


def check_near_image(name: str, xy: np.ndarray, original_size: tuple[int, int]) -> None:
    """Refuse (..., 2) (x, y) pixels that lie more than one image size outside the (H, W) image:
    far enough to overflow once scaled to the model frame, and no sensible prompt."""
    height, width = original_size
    limits = np.array([width, height], dtype=np.float64) * FRAME_MARGIN
    outside = (xy < -limits) | (xy > np.array([width, height]) + limits)
    if outside.any():
        value = xy[outside][0]
        raise InvalidInputError(
            f"{name} hold {value:.4g}, far outside the {width}x{height} image: prompts must lie within one "
            f"image size of it (x in {-limits[0]:g}..{width + limits[0]:g}, y in {-limits[1]:g}..{height + limits[1]:g})"
        )


class SamPredictor:
    """Computes the image embedding once, then predicts masks for prompts on that image.

    Drop-in for ``segment_anything.SamPredictor`` (and ``segment_anything_hq``'s, with
    ``hq_token_only``). Prompts are in pixel coordinates of the original image.

    ``keep_early_feature=False`` keeps only the encoder outputs the decoder declares (for a plain
    SAM ViT-H, 21 MB less per image) at the cost of ``interm_features``.
    """

    def __init__(self, sam_model: Sam, keep_early_feature: bool = True) -> None:
        self.model = sam_model
        # The early encoder feature backs segment_anything_hq's ``interm_features`` even when the
        # decoder does not read it (one (1, 64, 64, C) map; the ViT's other block outputs are dropped).
        self.encoder_extras = sam_model.capabilities.encoder_features | ({"early"} if keep_early_feature else set())
        self.transform = ResizeLongestSide(sam_model.image_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- image ---------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an (H, W, 3) uint8 image in ``image_format`` ("RGB" or "BGR")."""
        if image_format not in ("RGB", "BGR"):
            raise InvalidInputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            raise InvalidInputError(
                f"set_image expects an (H, W, 3) uint8 array, not a path ({image!r}): "
                "read the file with finesam.data.images.read_image(path)"
            )
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 3 and 0 in image.shape[:2]:
            raise InvalidInputError(f"set_image got an empty image of shape {image.shape}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidInputError(
                f"set_image expects an (H, W, 3) uint8 array, got shape {image.shape} dtype {image.dtype}; "
                "convert greyscale/RGBA images to RGB first (e.g. PIL's .convert('RGB'))"
            )
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """(1, 3, h, w) image already resized so that max(h, w) = 1024, values 0..255."""
        size = self.model.image_size
        if transformed_image.ndim != 4 or transformed_image.shape[1] != 3 or max(transformed_image.shape[2:]) != size:
            raise InvalidInputError(f"set_torch_image expects (1, 3, h, w) with max(h, w) == {size}, got {tuple(transformed_image.shape)}")
        self.reset_image()
        self.original_size = tuple(int(v) for v in original_image_size)
        self.input_size = tuple(int(v) for v in transformed_image.shape[-2:])
        self.image_features = self.model.encode_image(transformed_image, self.encoder_extras)
        self.is_image_set = True

    def set_features(self, features: ImageFeatures, original_size: tuple[int, int]) -> None:
        """Reuse features computed earlier (e.g. from a cache) for an image of ``original_size``."""
        self.reset_image()
        self.original_size = tuple(int(v) for v in original_size)
        self.input_size = self.transform.get_preprocess_shape(*self.original_size)
        self.image_features = features.to(self.device)
        self.is_image_set = True

    @property
    def capabilities(self) -> DecoderCapabilities:
        """What the model's decoder accepts and returns (prompt kinds, output modes, click correction)."""
        return self.model.capabilities

    def reset_image(self) -> None:
        # What correct() refines: the last prediction's state (decoders that correct clicks).
        self.correction_state: CorrectionState | None = None
        self.is_image_set = False
        self.image_features: ImageFeatures | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @property
    def features(self) -> torch.Tensor | None:
        """(1, 256, 64, 64) image embedding, as the official predictor's ``features``.

        Assignable, as users of the official predictor do with cached embeddings (then set
        ``original_size``, ``input_size`` and ``is_image_set = True`` as there)."""
        return None if self.image_features is None else self.image_features.embedding

    @features.setter
    def features(self, embedding: torch.Tensor | None) -> None:
        self._replace_features(embedding=embedding)

    @property
    def interm_features(self) -> list[torch.Tensor] | None:
        """``[early feature]`` (B, 64, 64, C), as ``segment_anything_hq``'s predictor's first entry
        (the only one HQ-SAM reads); None with ``keep_early_feature=False`` for a decoder that does
        not read it. Assignable with the official list (its first entry is used)."""
        if self.image_features is None or self.image_features.early is None:
            return None
        return [self.image_features.early]

    @interm_features.setter
    def interm_features(self, interm: list[torch.Tensor] | torch.Tensor | None) -> None:
        self._replace_features(early=None if interm is None else interm[0])

    def _replace_features(self, **tensors: torch.Tensor | None) -> None:
        """New :class:`ImageFeatures` with some tensors replaced (and nothing derived from the old)."""
        current = self.image_features
        values = {"embedding": None, "early": None, "image": None}
        if current is not None:
            values.update(embedding=current.embedding, early=current.early, image=current.image)
        values.update({name: None if t is None else torch.as_tensor(t, device=self.device) for name, t in tensors.items()})
        self.image_features = None if all(v is None for v in values.values()) else ImageFeatures(**values)
        self.correction_state = None

    def get_image_embedding(self) -> torch.Tensor:
        self._require_image()
        return self.features

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise CallOrderError("An image must be set with .set_image(...) before mask prediction.")
        if self.image_features is None or self.image_features.embedding is None:
            raise CallOrderError("is_image_set is True but no embedding is set: assign predictor.features or call set_image")
        if self.original_size is None or self.input_size is None:
            raise CallOrderError("assigned features need predictor.original_size and predictor.input_size (H, W) as well")

    # --- prompts -------------------------------------------------------------------------------
    def _mask_tensor(self, mask_input: np.ndarray | None, batch: int | None) -> torch.Tensor | None:
        if mask_input is None:
            return None
        mask = torch.as_tensor(_as_real_array("mask_input", mask_input, np.float32), device=self.device)
        if mask.ndim == 3:
            mask = mask[None]
        if mask.ndim != 4 or mask.shape[1:] != (1, 256, 256) or (batch is not None and mask.shape[0] not in (1, batch)):
            raise InvalidInputError(
                f"mask_input must be (1, 256, 256) low-res logits (or (P, 1, 256, 256) for a batch), got {tuple(mask.shape)}; "
                "pass the low_res_logits returned by an earlier predict"
            )
        return mask

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool | None = None,
        hq_output: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one set of prompts.

        point_coords: (N, 2) (x, y) pixels; point_labels: (N,) 1 fg / 0 bg; box: (4,) xyxy pixels;
        mask_input: (1, 256, 256) low-res logits from an earlier call.
        Returns masks (K, H, W) bool (float logits with ``return_logits``), scores (K,), low-res
        logits (K, 256, 256). K = 3 with ``multimask_output`` for SAM, 1 otherwise (HQ: see
        :class:`~finesam.modeling.contracts.decoder_api.OutputMode`).
        """
        self._require_image()
        coords, labels, boxes = (None if t is None else t.to(self.device)
                                 for t in self.check_prompts(self.original_size, point_coords, point_labels, box))
        masks, scores, low_res = self.predict_torch(
            coords, labels, boxes, self._mask_tensor(mask_input, 1), multimask_output, return_logits,
            hq_token_only=hq_token_only, hq_output=hq_output,
        )
        return masks[0].cpu().numpy(), scores[0].cpu().numpy(), low_res[0].cpu().numpy()

    def check_prompts(
        self,
        original_size: tuple[int, int],
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Validate ``predict``'s prompts for an image of ``original_size`` (H, W) without
        encoding it (so that a command can refuse them before the expensive work), and return
        them in the model frame on the CPU: coords (1, N, 2), labels (1, N), box (1, 4), or None
        each. Needs no weights: a model built on the meta device will do."""
        coords = labels = boxes = None
        if point_coords is None and point_labels is not None:
            raise InvalidInputError("point_labels were given without point_coords; pass both, or neither")
        with np.errstate(over="ignore"):  # huge coordinates become inf here, refused just below
            if point_coords is not None:
                points, point_labels = validate_points(point_coords, point_labels, batched=False)
                check_near_image("point_coords", points, original_size)
                coords = torch.as_tensor(self.transform.apply_coords(points, original_size), dtype=torch.float32)[None]
                labels = torch.as_tensor(point_labels, dtype=torch.int64)[None]
            if box is not None:
                box_np = validate_boxes(box, batched=False)
                check_near_image("box coordinates", box_np.reshape(-1, 2), original_size)
                box_np = self.transform.apply_boxes(box_np, original_size)
                boxes = torch.as_tensor(box_np, dtype=torch.float32)
        if coords is not None or boxes is not None:  # a mask_input alone is checked when decoding
            self.capabilities.check_prompt_kinds(coords is not None, boxes is not None, False)
        height, width = original_size
        check_model_prompts((coords, labels) if coords is not None else None, boxes, None, self.model.image_size,
                            hint=f" (image {width}x{height})")
        return coords, labels, boxes

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool | None = None,
        hq_output: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompts already in the model's 1024 frame (``predictor.transform``), batched over B.

        point_coords: (B, N, 2); point_labels: (B, N); boxes: (B, 4); mask_input: (B, 1, 256, 256).
        Returns masks (B, K, H, W), scores (B, K), low-res logits (B, K, 256, 256).
        """
        self._require_image()
        if point_coords is not None and point_labels is None:
            raise InvalidInputError("point_labels is required with point_coords")
        if point_coords is None and point_labels is not None:
            raise InvalidInputError("point_labels were given without point_coords; pass both, or neither")
        points = (point_coords, point_labels) if point_coords is not None else None
        mode = OutputMode.from_flags(multimask_output, hq_token_only, hq_output)
        output = self.model.decode(self.image_features, points, boxes, mask_input, mode)
        self.correction_state = output.state
        if return_logits:
            masks = self.model.postprocess_masks(output.logits, self.input_size, self.original_size)
        else:  # bool masks straight from the low-res logits, never a full-resolution float copy
            masks = self.model.postprocess_to_binary(output.logits, self.input_size, self.original_size)
        return masks, output.scores, output.low_res

    @torch.no_grad()
    def correct(
        self,
        fg_points: np.ndarray | None = None,
        bg_points: np.ndarray | None = None,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Correct the last ``predict`` with clicks on wrongly predicted areas (models whose
        decoder declares ``corrects_clicks``: Pi-SAM).

        fg_points: (N, 2) (x, y) pixels of the original image that should be foreground;
        bg_points: (M, 2) pixels that should be background. All clicks are applied together to
        the last prediction (a new call replaces, not stacks, earlier corrections).
        Returns masks (1, H, W), scores (1,) (the prediction's score), and the prediction's
        (1, 256, 256) low-res logits (stage 1, which the clicks do not change).
        """
        if not self.capabilities.corrects_clicks:
            raise InvalidInputError(
                "correct() needs a model whose decoder corrects clicks (Pi-SAM, pi_vit_*); for SAM/HQ models use "
                "finesam.InteractiveSession, which refines with the previous mask and all clicks"
            )
        state = self.correction_state
        if state is None:
            raise CallOrderError("call predict(box=...) first: correct() refines the last prediction")
        if state.low_res.shape[0] != 1:
            raise InvalidInputError("correct() refines a single-object prediction; the last predict had several prompts")
        clicks, flags = [], []
        for name, points, flag in (("fg_points", fg_points, 1), ("bg_points", bg_points, 0)):
            if points is None:
                continue
            coords = _as_real_array(name, points)
            if coords.size == 0:
                continue
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise InvalidInputError(f"{name} must have shape (N, 2) of (x, y) pixels, got {coords.shape}")
            coords, _ = validate_points(coords, np.full(len(coords), flag), batched=False, name=name)
            check_near_image(name, coords, self.original_size)
            clicks.append(coords)
            flags += [flag] * len(coords)
        if not clicks:
            raise InvalidInputError("correct() needs at least one click in fg_points or bg_points")
        # x / 1024 in the padded frame, no half-pixel shift: the official weights were trained
        # with clicks at grid index / 256 and used with x / W, and our training does the same.
        with np.errstate(over="ignore"):  # refused by the model's click check
            frame = self.transform.apply_coords(np.concatenate(clicks), self.original_size)
        normalised = torch.as_tensor(frame / self.model.image_size, dtype=torch.float32, device=self.device)
        flag_tensor = torch.as_tensor(flags, dtype=torch.int64, device=self.device)
        output = self.model.correct(state, normalised[None], flag_tensor[None])
        if return_logits:
            masks = self.model.postprocess_masks(output.logits, self.input_size, self.original_size)
        else:  # bool masks straight from the low-res logits, never a full-resolution float copy
            masks = self.model.postprocess_to_binary(output.logits, self.input_size, self.original_size)
        return masks[0].cpu().numpy(), output.scores[0].cpu().numpy(), output.low_res[0].cpu().numpy()

    def predict_batch(
        self,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = False,
        return_logits: bool = False,
        hq_token_only: bool | None = None,
        hq_output: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P prompts on the current image in one decoder pass (one object per prompt).

        boxes: (P, 4) xyxy pixels; points: (P, N, 2) (x, y) pixels with point_labels (P, N);
        both may be given (P must agree); mask_input: (P, 1, 256, 256) logits.
        Returns masks (P, K, H, W), scores (P, K), low-res logits (P, K, 256, 256), never squeezed.
        """
        self._require_image()
        if boxes is None and points is None:
            raise InvalidInputError("predict_batch needs boxes=(P, 4) and/or points=(P, N, 2)")
        coords = labels = box_t = None
        count = None
        if boxes is not None:
            boxes_np = validate_boxes(boxes, batched=True)
            check_near_image("box coordinates", boxes_np.reshape(-1, 2), self.original_size)
            count = len(boxes_np)
            with np.errstate(over="ignore"):  # inf after scaling is refused by the model-frame check
                box_t = torch.as_tensor(self.transform.apply_boxes(boxes_np, self.original_size), dtype=torch.float32, device=self.device)
        if points is not None:
            points_np, labels_np = validate_points(points, point_labels, batched=True)
            check_near_image("point coordinates", points_np, self.original_size)
            if count is not None and len(points_np) != count:
                raise InvalidInputError(f"{len(points_np)} point sets for {count} boxes: P must agree")
            count = len(points_np)
            with np.errstate(over="ignore"):
                coords = torch.as_tensor(self.transform.apply_coords(points_np, self.original_size), dtype=torch.float32, device=self.device)
            labels = torch.as_tensor(labels_np, dtype=torch.int64, device=self.device)
        if count == 0:
            raise InvalidInputError("predict_batch got zero prompts")
        masks, scores, low_res = self.predict_torch(
            coords, labels, box_t, self._mask_tensor(mask_input, count), multimask_output, return_logits,
            hq_token_only=hq_token_only, hq_output=hq_output,
        )
        return masks.cpu().numpy(), scores.cpu().numpy(), low_res.cpu().numpy()
