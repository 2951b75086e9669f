"""``export_onnx``: a model's encoder, decoder (and click interactor) as ONNX files.

Each graph is traced into a temporary folder inside the output folder, given finesam's
metadata (what :class:`finesam.onnx.OnnxPredictor` needs to run it), and renamed into place,
so an interrupted export never leaves a half-written graph. Graphs whose weights pass the
2 GB protobuf limit (ViT-H) keep them in one external file beside the graph
(``encoder.onnx.data``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..modeling.decoder_api import OutputMode
from ..modeling.sam import Sam
from ..optional import require
from ..outputs import check_output_dir
from . import graphs

METADATA_KEY = "finesam"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17
MIN_OPSET = 16  # GridSample (Pi-SAM's deformable convolutions)
MAX_OPSET = 20  # the newest the TorchScript exporter writes
# Above this many bytes of weights a graph keeps them in an external file (protobuf's limit is 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
ENCODER_FILE, DECODER_FILE, INTERACTOR_FILE = "encoder.onnx", "decoder.onnx", "interactor.onnx"
# The TorchScript exporter (no onnxscript needed); torch < 2.5 has only that one and no ``dynamo`` argument.
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


@dataclasses.dataclass(frozen=True)
class ExportedFiles:
    """Paths of the written graphs (``interactor`` is None for decoders without click correction)."""

    encoder: Path
    decoder: Path
    interactor: Path | None


def export_mode(model: Sam, multimask: bool | None = None, hq_token_only: bool | None = None, hq_output: str | None = None) -> OutputMode:
    """The decoder output fixed in the graph, checked against what the decoder offers.

    multimask: None means SamPredictor's default (True) where the decoder gives candidates.
    """
    capabilities = model.capabilities
    if multimask is None:
        multimask = capabilities.multimask or bool(capabilities.output_modes)
    elif multimask and not (capabilities.multimask or capabilities.output_modes):
        raise InvalidInputError("this model's decoder returns one mask per prompt; export it without --multimask")
    mode = OutputMode.from_flags(multimask, hq_token_only, hq_output)
    capabilities.check_mode(mode)
    return mode


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InvalidInputError(f"opset must be an integer from {MIN_OPSET} (GridSample) to {MAX_OPSET} "
                                f"(the newest torch's exporter writes), got {opset!r}")


def _metadata(model: Sam, mode: OutputMode, model_name: str, random_weights: bool, opset: int) -> dict:
    capabilities = model.capabilities
    return {
        "format": FORMAT_VERSION,
        "model": model_name,
        "random_weights": random_weights,
        "opset": opset,
        "image_size": model.image_size,
        "image_format": model.image_format,
        "mask_threshold": model.mask_threshold,
        "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(),
        "mode": {"multimask": mode.multimask, "hq": mode.hq},
        "capabilities": {
            "prompts": sorted(capabilities.prompts),
            "multimask": capabilities.multimask,
            "output_modes": list(capabilities.output_modes),
            "output_size": capabilities.output_size,
            "corrects_clicks": capabilities.corrects_clicks,
            "encoder_features": sorted(capabilities.encoder_features),
        },
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


def _finish(traced: Path, final: Path, metadata: dict, external_data: bool | None) -> None:
    """Add the metadata to the traced graph and move it (with its weights file) into place.
    ``external_data`` None: only when its weights pass :data:`EXTERNAL_DATA_BYTES`."""
    onnx = require("onnx", "ONNX export", "onnx")
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
) -> ExportedFiles:
    """Write ``encoder.onnx`` and ``decoder.onnx`` (and ``interactor.onnx`` for decoders that
    correct clicks) into ``out_dir``.

    The decoder's output mode is fixed: ``multimask`` (None: True where the decoder gives
    candidates), and for HQ models ``hq_token_only`` / ``hq_output`` as in
    :meth:`finesam.SamPredictor.predict`. ``external_data``: keep weights in a separate file
    (None: only when a graph's weights exceed 1.8 GB). ``model_name`` and
    ``random_weights`` are recorded in the graphs' metadata.
    """
    require("onnx", "ONNX export", "onnx")
    check_opset(opset)
    mode = export_mode(model, multimask, hq_token_only, hq_output)
    out = check_output_dir(out_dir, "ONNX output folder")
    out.mkdir(parents=True, exist_ok=True)
    metadata = _metadata(model, mode, model_name, random_weights, opset)
    modes = {module: module.training for module in model.modules()}
    try:
        written = _export_graphs(model.eval(), mode, out, metadata, opset, external_data)
    finally:  # the model comes back in the modes it had
        for module, training in modes.items():
            module.training = training
    if INTERACTOR_FILE not in written:
        for stale in (out / INTERACTOR_FILE, out / (INTERACTOR_FILE + ".data")):
            stale.unlink(missing_ok=True)  # from an earlier export of another model into this folder
    return ExportedFiles(written[ENCODER_FILE], written[DECODER_FILE], written.get(INTERACTOR_FILE))


def _export_graphs(model: Sam, mode: OutputMode, out: Path, metadata: dict, opset: int,
                   external_data: bool | None) -> dict[str, Path]:
    """Trace each graph once (in eval mode) into a temporary folder of ``out``, then move it into place."""
    size = model.image_size
    device = model.device
    grid = model.prompt_encoder.image_embedding_size
    encoder = graphs.EncoderGraph(model).eval()
    decoder = graphs.DecoderGraph(model, mode).eval()
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

        encoded = export(encoder, (torch.randn(1, 3, size, size, device=device),), [graphs.ENCODER_INPUT], {}, ENCODER_FILE)
        decoder_inputs = encoded + (points, labels) + (mask_inputs if decoder.with_masks else ()) + (orig_im_size,)
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


__all__ = ["ExportedFiles", "check_opset", "export_onnx", "export_mode", "read_metadata"]
