"""``OnnxPredictor``: :class:`finesam.SamPredictor`'s surface on graphs written by
``finesam export onnx`` (:func:`finesam.onnx.export_onnx`), run with onnxruntime.

Prompts, images and clicks are validated and resized by :class:`SamPredictor`'s own code;
only the encoder, the decoder and the click interactor run in onnxruntime, and the masks come
resized to the image by the graphs themselves (``orig_im_size``). Needs the ``onnx`` extra
(``pip install 'finesam[onnx]'``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import graphs
from ..errors import InvalidInputError
from ..modeling.contracts.decoder_api import CorrectionState, DecoderCapabilities, DecoderOutput, OutputMode
from ..modeling.contracts.features import ImageFeatures
from ..modeling.contracts.prompt_checks import check_click_points, check_model_prompts
from ..optional import require
from ..predict.predictor import SamPredictor
from .export import DECODER_FILE, DEFAULT_LAYOUT, ENCODER_FILE, FORMAT_VERSION, INTERACTOR_FILE, METADATA_KEY

__all__ = ["OnnxPredictor", "ExportedModel"]


@dataclasses.dataclass(frozen=True)
class OnnxCorrectionState(CorrectionState):
    """A correcting decoder's state as the ONNX decoder returns it, with the image size the
    interactor graph resizes its masks to."""

    original_size: tuple[int, int] = (0, 0)


# onnxruntime multiplies the int8 graphs' uint8 activations by int8 weights with VPMADDUBSW on
# x86 CPUs without VNNI (AVX2-only, AVX512 without VNNI), whose 16-bit pair sums saturate:
# MobileSAM's int8 masks agreed with float32 on 0.86-0.89 of the pixels on an AVX2-only EPYC
# against 0.99 with VNNI. This session option makes it multiply those weights as uint8 (exact,
# slower: 15% more encoder time measured on an AVX512-VNNI EPYC, where onnxruntime applies it
# too), so OnnxPredictor sets it on CPUs without VNNI only.
PRECISE_INT8_OPTION = "session.x64quantprecision"
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@functools.lru_cache(maxsize=None)  # the CPU does not change; every session asks
def int8_saturates() -> bool:
    """Whether this CPU is x86 without VNNI (True where its flags cannot be read: the safe side)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False  # ARM and others: onnxruntime's int8 products do not saturate
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return flags is None or not _VNNI_FLAGS & set(flags)


def with_precise_int8(ort, options):
    """``options`` (None: new ones) with :data:`PRECISE_INT8_OPTION` on where
    :func:`int8_saturates`, unless the caller set that key."""
    if not int8_saturates():
        return options
    options = ort.SessionOptions() if options is None else options
    try:
        options.get_session_config_entry(PRECISE_INT8_OPTION)
    except RuntimeError:  # not set: onnxruntime raises for a missing key
        options.add_session_config_entry(PRECISE_INT8_OPTION, "1")
    return options


def _session(ort, path: Path, providers: Sequence[str] | None, options):
    if not path.is_file():
        raise InvalidInputError(f"{str(path)!r} is missing: export the model with `finesam export onnx --out {path.parent}`")
    options = with_precise_int8(ort, options)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as error:  # onnxruntime raises its own exception kinds for unreadable files
        raise InvalidInputError(f"onnxruntime cannot load {str(path)!r}: {error}") from error


def _graph_metadata(session, path: Path, graph: str) -> dict:
    """The finesam metadata of an opened graph, checked to be the ``graph`` ("encoder",
    "decoder", "interactor") of this finesam's export format and layout."""
    again = "export the model again with `finesam export onnx`"
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise InvalidInputError(f"{str(path)!r} was not exported by finesam (no {METADATA_KEY!r} metadata): {again}")
    try:
        metadata = json.loads(raw)
    except ValueError as error:
        raise InvalidInputError(f"{str(path)!r}: its finesam metadata is not JSON ({error}): {again}") from None
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"{str(path)!r}: its finesam metadata is not a JSON object: {again}")
    if metadata.get("format") != FORMAT_VERSION:
        raise InvalidInputError(f"{str(path)!r} is a graph of export format {metadata.get('format')!r}; "
                                f"this finesam reads format {FORMAT_VERSION}: {again}")
    layout = metadata.get("layout", DEFAULT_LAYOUT)
    if layout != DEFAULT_LAYOUT:
        raise InvalidInputError(f"{str(path)!r} was exported with layout={layout!r} (for that tool); OnnxPredictor "
                                f"reads the default layout: export again with layout={DEFAULT_LAYOUT!r}")
    if metadata.get("graph") != graph:
        raise InvalidInputError(f"{str(path)!r} holds the {metadata.get('graph')!r} graph, not the {graph}: the files "
                                f"were renamed or swapped; {again}")
    return metadata


def _number(value, what: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{what} is {value!r}, not a finite{' positive' if positive else ''} number")
    return float(value)


class ExportedModel:
    """The exported graphs of one model, with the part of :class:`~finesam.modeling.sam.Sam`'s
    surface that :class:`SamPredictor` uses (``image_size``, ``capabilities``, ``encode_image``,
    ``correct``, ...). The graphs resize masks to the image themselves, so
    :meth:`postprocess_masks` only checks their size.
    """

    def __init__(self, folder: str | os.PathLike, providers: Sequence[str] | None = None, session_options=None) -> None:
        ort = require("onnxruntime", "OnnxPredictor", "onnx")
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InvalidInputError(f"ONNX folder {str(self.folder)!r} does not exist: export a model into it with "
                                    "`finesam export onnx --model NAME --out FOLDER`")
        # Each graph's metadata is checked when it opens, so that a wrong folder fails here with
        # the file's name, not in onnxruntime at the first prediction.
        self.encoder = _session(ort, self.folder / ENCODER_FILE, providers, session_options)
        encoder_metadata = _graph_metadata(self.encoder, self.folder / ENCODER_FILE, "encoder")
        self.decoder = _session(ort, self.folder / DECODER_FILE, providers, session_options)
        self.metadata = _graph_metadata(self.decoder, self.folder / DECODER_FILE, "decoder")
        self._read_metadata(self.folder / DECODER_FILE)
        if {**encoder_metadata, "graph": None} != {**self.metadata, "graph": None}:
            raise InvalidInputError(f"{str(self.folder / ENCODER_FILE)!r} and {DECODER_FILE!r} come from different "
                                    f"exports: export the model again into {str(self.folder)!r}")
        self.interactor = None
        if self.capabilities.corrects_clicks:
            self.interactor = _session(ort, self.folder / INTERACTOR_FILE, providers, session_options)
            _graph_metadata(self.interactor, self.folder / INTERACTOR_FILE, "interactor")
        self.extras = tuple(extra for extra in graphs.EXTRA_NAMES if extra in self.capabilities.encoder_features)
        self.decoder_inputs = {entry.name for entry in self.decoder.get_inputs()}
        self.device = torch.device("cpu")

    def _read_metadata(self, path: Path) -> None:
        """Capabilities, output mode and image settings from the decoder's metadata; a missing
        or malformed entry is refused with the file's name."""
        metadata = self.metadata
        try:
            self.capabilities = DecoderCapabilities.from_metadata(metadata["capabilities"])
            mode = dict(metadata["mode"])
            # SAM graphs: "all" 4 tokens or the official "single" mask (graphs.SAM_TOKENS); None for the others.
            self.tokens = mode.pop("tokens", None)
            if self.tokens not in (None, *graphs.SAM_TOKENS):
                raise ValueError(f"mode.tokens is {self.tokens!r}")
            self.mode = OutputMode(**mode)
            size = metadata["image_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 16:
                raise ValueError(f"image_size is {size!r}, not a positive multiple of 16")
            self.image_size = size
            self.image_format = metadata["image_format"]
            if self.image_format not in ("RGB", "BGR"):
                raise ValueError(f"image_format is {self.image_format!r}")
            self.mask_threshold = _number(metadata["mask_threshold"], "mask_threshold")
            mean = [_number(value, "pixel_mean") for value in metadata["pixel_mean"]]
            std = [_number(value, "pixel_std", positive=True) for value in metadata["pixel_std"]]
            if len(mean) != 3 or len(std) != 3:
                raise ValueError("pixel_mean and pixel_std need 3 values each")
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            detail = f"no {error}" if isinstance(error, KeyError) else str(error)
            raise InvalidInputError(f"{str(path)!r}: incomplete or invalid finesam metadata ({detail}): export the "
                                    "model again with `finesam export onnx`") from None
        self.pixel_mean = torch.tensor(mean).view(-1, 1, 1)
        self.pixel_std = torch.tensor(std).view(-1, 1, 1)

    # --- what SamPredictor asks ----------------------------------------------------------------
    def encode_image(self, x: torch.Tensor, extras: frozenset[str] | None = None) -> ImageFeatures:
        """(1, 3, h, w) resized RGB in 0..255 -> :class:`ImageFeatures` from the encoder graph
        (the extras the decoder reads; ``extras`` cannot add others)."""
        image = (x.float().cpu() - self.pixel_mean) / self.pixel_std
        height, width = image.shape[-2:]
        image = F.pad(image, (0, self.image_size - width, 0, self.image_size - height))
        outputs = self.encoder.run(None, {graphs.ENCODER_INPUT: image.numpy()})
        tensors = dict(zip(self.extras, (torch.from_numpy(array) for array in outputs[1:])))
        return ImageFeatures(torch.from_numpy(outputs[0]), **tensors)

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
        """The graphs already return masks of the image's size (``orig_im_size``)."""
        if tuple(masks.shape[-2:]) != tuple(original_size):
            raise InvalidInputError(f"masks of size {tuple(masks.shape[-2:])} for an image of size {tuple(original_size)}")
        return masks

    def postprocess_to_binary(self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
        """Bool masks from the graphs' masks (already of the image's size)."""
        return self.postprocess_masks(masks, input_size, original_size) > self.mask_threshold

    def correct(self, state: CorrectionState, points: torch.Tensor, flags: torch.Tensor,
                padding: torch.Tensor | None = None) -> DecoderOutput:
        """As :meth:`Sam.correct` (points normalised x / 1024), one prediction, on the interactor graph."""
        if self.interactor is None:
            raise InvalidInputError("this model's decoder does not correct clicks (a Pi-SAM model does)")
        check_click_points(points, flags)
        labels = flags.float() if padding is None else torch.where(padding, -1.0, flags.float())
        inputs = {
            "object_embedding": state.object_embedding.numpy(), "hq_token": state.hyper.numpy(),
            "rgb_embedding": state.rgb.numpy(),
            "click_coords": (points.float() * self.image_size).numpy(), "click_labels": labels.numpy(),
            graphs.SIZE_INPUT: np.asarray(state.original_size, dtype=np.float32),
        }
        (masks,) = self.interactor.run(None, inputs)
        return DecoderOutput(torch.from_numpy(masks), state.scores, state.low_res, state=state)

    # --- the decoder graph ---------------------------------------------------------------------
    def decode_one(self, features: ImageFeatures, coords: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
                   original_size: tuple[int, int]) -> list[np.ndarray]:
        """One prompt set in SAM's ONNX convention: coords (N, 2) in the 1024 frame, labels (N,)."""
        inputs = {graphs.EMBEDDING: features.embedding.numpy()}
        for extra in self.extras:
            inputs[graphs.EXTRA_NAMES[extra]] = getattr(features, extra).numpy()
        inputs["point_coords"] = coords[None].astype(np.float32)
        inputs["point_labels"] = labels[None].astype(np.float32)
        if "mask_input" in self.decoder_inputs:
            inputs["mask_input"] = np.zeros((1, 1, 256, 256), np.float32) if mask is None else mask[None].astype(np.float32)
            inputs["has_mask_input"] = np.array([0.0 if mask is None else 1.0], np.float32)
        inputs[graphs.SIZE_INPUT] = np.asarray(original_size, dtype=np.float32)
        return self.decoder.run(None, inputs)


class OnnxPredictor(SamPredictor):
    """:class:`finesam.SamPredictor` on the ONNX graphs in ``folder`` (onnxruntime).

    ``set_image``, ``predict``, ``predict_batch``, ``predict_torch``, ``correct`` (Pi-SAM),
    ``reset_image``, ``get_image_embedding`` take the same arguments with the same checks.
    SAM and MobileSAM graphs return the official 4 masks, from which ``multimask_output``
    picks as :class:`SamPredictor` does (3 candidates, or token 0 with False); graphs exported
    with ``single_mask`` return the official single-mask choice (leave ``multimask_output``
    out). For other decoders the output mode was fixed at export: ``multimask_output`` /
    ``hq_token_only`` / ``hq_output`` default to it, and another value is refused with the
    export option to use.
    ``providers``: onnxruntime execution providers (default: the CPU). ``session_options``:
    onnxruntime's; on x86 CPUs without VNNI they get :data:`PRECISE_INT8_OPTION` "1" unless
    they hold that key (the int8 encoder's products would saturate there).
    """

    def __init__(self, folder: str | os.PathLike, providers: Sequence[str] | None = None, session_options=None) -> None:
        super().__init__(ExportedModel(folder, providers, session_options), keep_early_feature=False)

    @property
    def metadata(self) -> dict:
        """What the export recorded: model name, random weights, opset, output mode, ..."""
        return self.model.metadata

    @staticmethod
    def _single_mask_refusal(multimask_output: bool) -> InvalidInputError:
        return InvalidInputError(
            "these ONNX graphs were exported with --single-mask: they return the mask the official "
            "return_single_mask=True export picks (token 0 for more than 2 points, padding and box corners "
            f"counted, else the best multimask output), not multimask_output={multimask_output}: leave "
            "multimask_output out, or export again without --single-mask")

    def _exported_multimask(self, multimask_output: bool | None) -> bool:
        if self.model.tokens == "single":
            if multimask_output is not None:
                raise self._single_mask_refusal(multimask_output)
            return False  # stands for the graph's one mask below predict()
        if self.model.tokens == "all":
            return True if multimask_output is None else multimask_output
        return self.model.mode.multimask if multimask_output is None else multimask_output

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output: bool | None = None,
                return_logits: bool = False, hq_token_only: bool | None = None, hq_output: str | None = None):
        """As :meth:`SamPredictor.predict`; ``multimask_output`` defaults to the exported mode."""
        return super().predict(point_coords, point_labels, box, mask_input, self._exported_multimask(multimask_output),
                               return_logits, hq_token_only, hq_output)

    def predict_batch(self, boxes=None, points=None, point_labels=None, mask_input=None, multimask_output: bool | None = None,
                      return_logits: bool = False, hq_token_only: bool | None = None, hq_output: str | None = None):
        """As :meth:`SamPredictor.predict_batch` (one decoder run per prompt); ``multimask_output``
        defaults to the exported mode."""
        return super().predict_batch(boxes, points, point_labels, mask_input, self._exported_multimask(multimask_output),
                                     return_logits, hq_token_only, hq_output)

    def _check_mode(self, mode: OutputMode) -> None:
        capabilities, exported = self.capabilities, self.model.mode
        capabilities.check_mode(mode)
        if self.model.tokens == "single" and mode.multimask:
            raise self._single_mask_refusal(True)
        if self.model.tokens is not None:  # SAM graphs: either multimask mode from the 4 tokens
            return
        default_hq = capabilities.default_output_mode
        hq, exported_hq = mode.hq or default_hq, exported.hq or default_hq
        if hq != exported_hq or (capabilities.multimask_matters(hq) and mode.multimask != exported.multimask):
            def describe(multimask: bool, hq_mode: str | None) -> str:
                return f"multimask_output={multimask}" + (f", hq_output={hq_mode!r}" if hq_mode else "")

            option = "--multimask" if mode.multimask else "--no-multimask"
            hq_option = f" --hq-output {hq}" if hq else ""
            raise InvalidInputError(
                f"these ONNX graphs were exported with {describe(exported.multimask, exported_hq)} and cannot give "
                f"{describe(mode.multimask, hq)}: export again with `finesam export onnx {option}{hq_option}`, or leave the option out"
            )

    @torch.no_grad()
    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output: bool | None = None,
                      return_logits: bool = False, hq_token_only: bool | None = None, hq_output: str | None = None):
        """As :meth:`SamPredictor.predict_torch`: prompts in the 1024 frame, batched over B (the
        decoder graph runs once per prompt). Returns masks (B, K, H, W), scores (B, K), low-res
        logits (B, K, 256, 256). ``multimask_output`` None: as exported."""
        self._require_image()
        if multimask_output is None:
            multimask_output = self._exported_multimask(None)
        if (point_coords is None) != (point_labels is None):
            raise InvalidInputError("point_coords and point_labels go together: pass both, or neither")
        self._check_mode(OutputMode.from_flags(multimask_output, hq_token_only, hq_output))
        self.capabilities.check_prompt_kinds(point_coords is not None, boxes is not None, mask_input is not None)
        points = (point_coords, point_labels) if point_coords is not None else None
        check_model_prompts(points, boxes, mask_input, self.model.image_size)
        count = next(t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None)
        results, states = [], []
        for index in range(count):
            parts = [np.zeros((0, 2)), np.zeros(0)]
            if point_coords is not None:
                parts = [point_coords[index].cpu().numpy(), point_labels[index].cpu().numpy()]
            if boxes is not None:  # the box corners, labelled 2 and 3, after the points
                corners = boxes[index].cpu().numpy().reshape(2, 2)
                parts = [np.concatenate([parts[0], corners]), np.concatenate([parts[1], [graphs.BOX_TOP_LEFT, graphs.BOX_BOTTOM_RIGHT]])]
            elif point_coords is not None:  # SAM's padding point, as its prompt encoder adds to points without a box
                parts = [np.concatenate([parts[0], [[0.0, 0.0]]]), np.concatenate([parts[1], [-1]])]
            mask = None if mask_input is None else mask_input[index if mask_input.shape[0] > 1 else 0].cpu().numpy()
            outputs = [torch.from_numpy(array) for array in
                       self.model.decode_one(self.image_features, parts[0], parts[1], mask, self.original_size)]
            if self.model.tokens == "all":  # the official 4 masks: pick as SamPredictor does
                chosen = slice(1, None) if multimask_output else slice(0, 1)
                outputs[:3] = [output[:, chosen] for output in outputs[:3]]
            results.append(outputs[:3])
            if len(outputs) > 3:
                states.append(outputs[3:])
        masks, scores, low_res = (torch.cat(column) for column in zip(*results))
        self.correction_state = None
        if states:
            object_embedding, hyper, rgb = (torch.cat(column) for column in zip(*states))
            self.correction_state = OnnxCorrectionState(object_embedding, hyper, rgb, low_res, scores, tuple(self.original_size))
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, scores, low_res
