"""``export_onnx``: a model's encoder, decoder (and click interactor) as ONNX files.

Each graph is traced into a temporary folder inside the output folder, given finesam's
metadata (what :class:`finesam.onnx.OnnxPredictor` needs to run it), and renamed into place,
so an interrupted export never leaves a half-written graph. Graphs whose weights pass the
2 GB protobuf limit (ViT-H) keep them in one external file beside the graph
(``encoder.onnx.data``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

from . import graphs
from ..errors import InvalidInputError
from ..modeling.contracts.decoder_api import OutputMode
from ..modeling.sam import Sam
from ..optional import require
from ..outputs import check_output_dir, write_text_atomically

METADATA_KEY = "finesam"
FORMAT_VERSION = 2  # 2: SAM decoder graphs return the official 4 masks or its single-mask choice
DEFAULT_OPSET = 17
MIN_OPSET = 16  # GridSample (Pi-SAM's deformable convolutions)
MAX_OPSET = 20  # the newest the TorchScript exporter writes
QUANTIZE = (None, "int8")
# Above this many bytes of weights a graph keeps them in an external file (protobuf's limit is 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
ENCODER_FILE, DECODER_FILE, INTERACTOR_FILE = "encoder.onnx", "decoder.onnx", "interactor.onnx"
# "finesam": the graphs OnnxPredictor runs; "anylabeling": AnyLabeling's Segment Anything contract
# (X-AnyLabeling's sam_hq one for HQ models) with the model config those tools load.
LAYOUTS = ("finesam", "anylabeling")
DEFAULT_LAYOUT = LAYOUTS[0]
# AnyLabeling warps a photo into this canvas (H, W) before its encoder; the graph takes any size up to the square.
ANYLABELING_CANVAS = (684, 1024)
# The TorchScript exporter (no onnxscript needed); torch < 2.5 has only that one and no ``dynamo`` argument.
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


@dataclasses.dataclass(frozen=True)
class ExportedFiles:
    """Paths of the written files (``interactor`` is None for decoders without click correction)."""

    encoder: Path
    decoder: Path
    interactor: Path | None
    config: Path | None = None  # the AnyLabeling layout's model config


@dataclasses.dataclass(frozen=True)
class GraphMode:
    """What the decoder graph returns, fixed at export.

    output: the decoder's output mode (multimask, HQ output) for decoders other than SAM's;
    tokens: for SAM decoders (:func:`graphs.returns_sam_tokens`), "all" (the official
    export's 4 masks) or "single" (the one mask the official ``return_single_mask=True``
    picks); None for the others.
    """

    output: OutputMode
    tokens: str | None = None

    def as_dict(self) -> dict:
        """The metadata entry ("tokens" only for SAM decoders)."""
        entry = {"multimask": self.output.multimask, "hq": self.output.hq}
        return entry if self.tokens is None else {**entry, "tokens": self.tokens}


def export_mode(model: Sam, multimask: bool | None = None, hq_token_only: bool | None = None, hq_output: str | None = None,
                single_mask: bool = False, layout: str = DEFAULT_LAYOUT) -> GraphMode:
    """The decoder output fixed in the graph, checked against what the decoder offers.

    SAM decoders return the official 4 masks, or with ``single_mask`` the official single-mask
    choice; ``multimask`` does not apply to them (:class:`~finesam.onnx.OnnxPredictor` takes
    either multimask output from the 4). Other decoders: ``multimask`` None means
    SamPredictor's default (True) where the decoder gives candidates. The AnyLabeling
    ``layout`` implies ``single_mask`` (the one mask those tools read) and refuses decoders
    that do not take clicks (Pi-SAM).
    """
    capabilities = model.capabilities
    if layout not in LAYOUTS:
        raise InvalidInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "anylabeling":
        if capabilities.corrects_clicks or "points" not in capabilities.prompts or "image" in capabilities.encoder_features:
            raise InvalidInputError("the AnyLabeling layout takes SAM, MobileSAM and HQ-SAM models (its tools send clicks "
                                    "and boxes to SAM's decoder); this model's decoder does not fit it")
        if graphs.returns_sam_tokens(model):
            single_mask = True  # AnyLabeling reads masks[0, 0]: the official return_single_mask=True choice
        elif multimask is None:
            multimask = False  # the official HQ export's default (token 0 + HQ), as X-AnyLabeling's sam_hq files
    if graphs.returns_sam_tokens(model):
        if multimask is not None:
            raise InvalidInputError(
                "multimask does not apply to SAM graphs: they return the official 4 masks (token 0 the single-mask "
                "output, 1-3 the multimask ones; OnnxPredictor gives either multimask_output from them), or with "
                "single_mask the one the official return_single_mask=True export picks: leave multimask out")
        mode = OutputMode.from_flags(True, hq_token_only, hq_output)
        capabilities.check_mode(mode)
        return GraphMode(mode, "single" if single_mask else "all")
    if single_mask:
        raise InvalidInputError(
            "single_mask (the official return_single_mask) applies to SAM and MobileSAM graphs; this model's decoder graph "
            "returns one mask already" + (" (choose it with multimask and hq_output)" if capabilities.output_modes else ""))
    if multimask is None:
        multimask = capabilities.takes_multimask
    elif multimask and not capabilities.takes_multimask:
        raise InvalidInputError("this model's decoder returns one mask per prompt; export it without multimask")
    mode = OutputMode.from_flags(multimask, hq_token_only, hq_output)
    capabilities.check_mode(mode)
    return GraphMode(mode)


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InvalidInputError(f"opset must be an integer from {MIN_OPSET} (GridSample) to {MAX_OPSET} "
                                f"(the newest torch's exporter writes), got {opset!r}")


def _metadata(model: Sam, mode: GraphMode, model_name: str, random_weights: bool, opset: int, layout: str,
              quantize: str | None) -> dict:
    return {
        "format": FORMAT_VERSION,
        "layout": layout,
        "model": model_name,
        "random_weights": random_weights,
        "opset": opset,
        "quantize": quantize,
        "image_size": model.image_size,
        "image_format": model.image_format,
        "mask_threshold": model.mask_threshold,
        "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(),
        "mode": mode.as_dict(),
        "capabilities": model.capabilities.to_metadata(),
    }


def _trace(graph: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
           output_names: list[str], dynamic_axes: dict, opset: int) -> tuple[torch.Tensor, ...]:
    """Export ``graph`` to ``path``; returns its outputs for ``inputs`` (from the one traced run),
    the next graph's trace inputs."""
    outputs = []
    hook = graph.register_forward_hook(lambda module, args, result: outputs.append(result))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter's deprecation notice and tracer warnings about shape values
            # (the graphs are checked against torch in the tests).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, inputs, str(path), input_names=input_names, output_names=output_names,
                dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, **_TORCHSCRIPT_EXPORTER,
            )
    finally:
        hook.remove()
    result = outputs[0]
    return tuple(tensor.detach().clone() for tensor in (result if isinstance(result, tuple) else (result,)))


def check_quantize(quantize: str | None) -> None:
    if quantize not in QUANTIZE:
        raise InvalidInputError(f"quantize must be one of {[value for value in QUANTIZE if value]} or None, got {quantize!r}")


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantizer logs its advice on the root logger: silence it for the call."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# Encoder MatMuls kept float32 by name: the attention output projections (TinyViT and ViT blocks
# alike, ".../attn/proj/MatMul"), the ones whose rounding moved MobileSAM's masks most for the
# least time (1/12 of a block's linear work; the measurements at _quantize).
_FLOAT_MATMULS = re.compile(r"/attn/proj/MatMul$")


def _kept_float(traced: Path) -> list[str]:
    """Names of the MatMul nodes :func:`_quantize` leaves float32: those whose inputs are both
    activations (attention scores and values: no weights to quantize, whatever the quantizer's
    version would do with them) and the attention output projections (:data:`_FLOAT_MATMULS`)."""
    onnx = require("onnx", "quantize='int8'", "onnx")
    graph = onnx.load(str(traced), load_external_data=False).graph
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {output for node in graph.node if node.op_type == "Constant" for output in node.output}
    return [node.name for node in graph.node if node.op_type == "MatMul"
            and (not any(name in constants for name in node.input) or _FLOAT_MATMULS.search(node.name))]


def _quantize(traced: Path, unsigned_weights: bool) -> Path:
    """onnxruntime's dynamic int8 quantization of the encoder's weight MatMuls: weights int8 per
    output channel (uint8 with ``unsigned_weights``), activations uint8 quantized at run time
    (``MatMulInteger``).

    Chosen by measurement (seeded random weights, 10 ECSSD photos with their ground-truth boxes,
    mean IoU of the int8 masks with the float32 ones; set_image on a 2748x2658 photo, one thread,
    AMD EPYC Zen 5 with AVX512-VNNI; README "ONNX export" has the table). MobileSAM:

    - the encoder only: the decoder runs per prompt in milliseconds, and its int8 MatMuls cost
      0.3-0.5 points of mean IoU at every setting tried (0.977 with, 0.982 without).
    - the attention output projections stay float32 (:data:`_FLOAT_MATMULS`): 0.982 -> 0.987,
      for 1/12 of a block's linear work (set_image 1.37x -> 1.29x float32's speed, within the
      timing's spread; ViT-B 1.56x both).
    - int8 weights of full range: uint8 weights (U8U8, no saturation on any CPU) gave 0.983 and
      1.22x (ViT-B 1.39x); reduce_range (7-bit weights, the other remedy for the VPMADDUBSW
      saturation of CPUs without VNNI) 0.972. On those CPUs OnnxPredictor has onnxruntime multiply
      these weights exactly instead (``predictor.PRECISE_INT8_OPTION``).
    - uint8 weights for the AnyLabeling layout: the tools open the graphs without that option,
      and int8 weights saturate on CPUs without VNNI (mean IoU 0.80 under tools/avx2_only.py);
      uint8 ones are exact on every CPU (0.983 there and on VNNI) for 8% of VNNI's speed.
    """
    quantization = require("onnxruntime.quantization", "quantize='int8'", "onnx")
    quantized = traced.with_name("quantized-" + traced.name)
    large = sum(path.stat().st_size for path in traced.parent.iterdir()) > EXTERNAL_DATA_BYTES  # ViT-H: weights beside
    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")  # its advice to run its shape preprocessing first
        weight_type = quantization.QuantType.QUInt8 if unsigned_weights else quantization.QuantType.QInt8
        quantization.quantize_dynamic(str(traced), str(quantized), op_types_to_quantize=["MatMul"], per_channel=True,
                                      weight_type=weight_type,
                                      use_external_data_format=large, nodes_to_exclude=_kept_float(traced))
    return quantized


def _finish(traced: Path, final: Path, metadata: dict, external_data: bool | None) -> None:
    """Add the metadata to the traced graph and move it (with its weights file) into place.
    ``external_data`` None: only when its weights pass :data:`EXTERNAL_DATA_BYTES`."""
    onnx = require("onnx", "ONNX export", "onnx")
    if metadata["quantize"] and metadata["graph"] == "encoder":  # the decoders stay float32 (see _quantize)
        traced = _quantize(traced, unsigned_weights=metadata["layout"] == "anylabeling")
    proto = onnx.load(str(traced), load_external_data=True)
    if external_data is None:
        external_data = sum(tensor.ByteSize() for tensor in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    staged = traced.parent / "staged" / final.name
    staged.parent.mkdir()
    data_name = final.name + ".data"
    if external_data:
        onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        os.replace(staged.parent / data_name, final.parent / data_name)
    else:
        onnx.save_model(proto, str(staged))
    os.replace(staged, final)
    if not external_data:
        (final.parent / data_name).unlink(missing_ok=True)  # a stale weights file of an earlier export


def export_onnx(
    model: Sam,
    out_dir: str | os.PathLike,
    *,
    model_name: str = "custom",
    multimask: bool | None = None,
    hq_token_only: bool | None = None,
    hq_output: str | None = None,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    random_weights: bool = False,
    single_mask: bool = False,
    layout: str = DEFAULT_LAYOUT,
    quantize: str | None = None,
) -> ExportedFiles:
    """Write ``encoder.onnx`` and ``decoder.onnx`` (and ``interactor.onnx`` for decoders that
    correct clicks) into ``out_dir``.

    The decoder's output is fixed. SAM and MobileSAM: the official export's 4 masks (token 0
    the single-mask output, then the 3 multimask ones), or with ``single_mask`` the one mask
    the official ``return_single_mask=True`` export picks (token 0 for prompts of more than 2
    points, padding and box corners counted, else the multimask output of highest predicted
    IoU). HQ models: ``multimask`` (None: True, the best of SAM's 3 plus HQ, as the official
    HQ export's ``multimask_output``) and ``hq_token_only`` / ``hq_output`` as in
    :meth:`finesam.SamPredictor.predict`; Pi-SAM: its one mask.

    ``layout`` "anylabeling": the graphs in AnyLabeling's Segment Anything contract (HQ models:
    X-AnyLabeling's ``sam_hq``) plus the model config ``<model_name>.yaml`` those tools load:
    the encoder takes the (684, 1024, 3) float32 0..255 canvas they feed, the decoder returns
    the one mask they read. ``quantize`` "int8": onnxruntime's dynamic quantization of the
    encoder's weight MatMuls (the decoders stay float32; see :func:`_quantize`). ``external_data``: keep weights in a separate file (None: only when
    a graph's weights exceed 1.8 GB). ``model_name`` and ``random_weights`` are recorded in the
    graphs' metadata.
    """
    require("onnx", "ONNX export", "onnx")
    check_opset(opset)
    check_quantize(quantize)
    mode = export_mode(model, multimask, hq_token_only, hq_output, single_mask, layout)
    out = check_output_dir(out_dir, "ONNX output folder")
    out.mkdir(parents=True, exist_ok=True)
    metadata = _metadata(model, mode, model_name, random_weights, opset, layout, quantize)
    modes = {module: module.training for module in model.modules()}
    try:
        written = _export_graphs(model.eval(), mode, out, metadata, opset, external_data)
    finally:  # the model comes back in the modes it had
        for module, training in modes.items():
            module.training = training
    if INTERACTOR_FILE not in written:
        for stale in (out / INTERACTOR_FILE, out / (INTERACTOR_FILE + ".data")):
            stale.unlink(missing_ok=True)  # from an earlier export of another model into this folder
    config = None
    if layout == "anylabeling":
        config = write_text_atomically(out / f"{_file_stem(model_name)}.yaml", anylabeling_config(model, model_name, quantize))
    return ExportedFiles(written[ENCODER_FILE], written[DECODER_FILE], written.get(INTERACTOR_FILE), config)


def _file_stem(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"


def anylabeling_config(model: Sam, model_name: str, quantize: str | None) -> str:
    """The model config (YAML) AnyLabeling / X-AnyLabeling load: ``type`` segment_anything (or
    X-AnyLabeling's sam_hq for HQ models), the graphs beside it, the canvas size."""
    kind = "sam_hq" if model.capabilities.output_modes else "segment_anything"
    name = f"finesam_{_file_stem(model_name)}" + ("_int8" if quantize else "")
    entries = {
        "type": kind, "name": name, "display_name": f"finesam {model_name}" + (" (int8)" if quantize else ""),
        "provider": "finesam", "encoder_model_path": ENCODER_FILE, "decoder_model_path": DECODER_FILE,
        "input_size": model.image_size, "max_width": 1024, "max_height": 682,  # as the tools' own configs
    }
    # JSON strings and numbers are YAML scalars: no YAML writer needed.
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in entries.items())


def _export_graphs(model: Sam, mode: GraphMode, out: Path, metadata: dict, opset: int,
                   external_data: bool | None) -> dict[str, Path]:
    """Trace each graph once (in eval mode) into a temporary folder of ``out``, then move it into place."""
    size = model.image_size
    device = model.device
    grid = model.prompt_encoder.image_embedding_size
    anylabeling = metadata["layout"] == "anylabeling"
    encoder = (graphs.CanvasEncoderGraph if anylabeling else graphs.EncoderGraph)(model).eval()
    decoder = graphs.DecoderGraph(model, mode.output, mode.tokens).eval()
    interactor = graphs.InteractorGraph(model).eval() if decoder.with_state else None
    # Trace inputs: three points and a box (labels 1, 0, -1, 2, 3), a mask, a 300x400 image.
    points = torch.tensor([[[100.0, 200.0], [500.0, 300.0], [0.0, 0.0], [50.0, 60.0], [700.0, 600.0]]], device=device)
    labels = torch.tensor([[1.0, 0.0, -1.0, 2.0, 3.0]], device=device)
    mask_inputs = (torch.zeros(1, 1, 4 * grid[0], 4 * grid[1], device=device), torch.ones(1, device=device))
    orig_im_size = torch.tensor([300.0, 400.0], device=device)
    clicks = (torch.tensor([[[120.0, 210.0], [300.0, 100.0], [0.0, 0.0]]], device=device),
              torch.tensor([[1.0, 0.0, -1.0]], device=device))
    size_axes = {"masks": {2: "height", 3: "width"}}
    point_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}, **size_axes}
    click_axes = {"click_coords": {1: "num_clicks"}, "click_labels": {1: "num_clicks"}, **size_axes}
    if anylabeling:
        image = torch.rand(*ANYLABELING_CANVAS, 3, device=device) * 255
        encoder_axes = {graphs.ENCODER_INPUT: {0: "height", 1: "width"}}
    else:
        image = torch.randn(1, 3, size, size, device=device)
        encoder_axes = {}
    if anylabeling and decoder.extras:  # X-AnyLabeling's sam_hq: the early features stacked
        decoder = graphs.StackedEarlyDecoderGraph(decoder).eval()
        point_axes[graphs.INTERM_EMBEDDINGS] = {0: "num_features"}
    written = {}
    with tempfile.TemporaryDirectory(prefix=".finesam-export-", dir=out) as temporary:
        def export(graph: torch.nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str], axes: dict,
                   name: str) -> tuple[torch.Tensor, ...]:
            trace_dir = Path(temporary) / name.removesuffix(".onnx")
            trace_dir.mkdir()
            outputs = _trace(graph, inputs, trace_dir / name, input_names, graph.output_names, axes, opset)
            _finish(trace_dir / name, out / name, {**metadata, "graph": name.removesuffix(".onnx")}, external_data)
            written[name] = out / name
            return outputs

        encoded = export(encoder, (image,), [graphs.ENCODER_INPUT], encoder_axes, ENCODER_FILE)
        if anylabeling and len(encoded) > 1:
            encoded = (encoded[0], torch.stack(encoded[1:]))
        decoder_inputs = encoded + (points, labels) + (mask_inputs if graphs.takes_masks(model) else ()) + (orig_im_size,)
        decoded = export(decoder, decoder_inputs, decoder.input_names, point_axes, DECODER_FILE)
        if interactor is not None:
            state = decoded[len(graphs.DECODER_OUTPUTS):]
            export(interactor, state + clicks + (orig_im_size,), interactor.input_names, click_axes, INTERACTOR_FILE)
    return written


def read_metadata(path: str | os.PathLike) -> dict:
    """The finesam metadata of an exported graph, read with onnx (no weights loaded)."""
    onnx = require("onnx", "reading ONNX metadata", "onnx")
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise InvalidInputError(f"{str(path)!r} was not exported by finesam (no {METADATA_KEY!r} metadata)")


__all__ = ["ExportedFiles", "GraphMode", "anylabeling_config", "check_opset", "check_quantize", "export_onnx", "export_mode", "read_metadata"]
