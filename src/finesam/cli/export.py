"""``finesam export onnx --model NAME [--checkpoint F | --random-weights] --out DIR``."""

from __future__ import annotations

import argparse

import torch

from ..modeling.contracts.decoder_api import HQ_OUTPUTS
from ..onnx.export import LAYOUTS, QUANTIZE
from ..optional import require
from ..outputs import check_output_dir
from ..registry import get_spec
from .model_options import add_model_options, check_model_options, load_model

EPILOG = """\
writes DIR/encoder.onnx (preprocessed 1x3x1024x1024 image -> image_embeddings and the extras the decoder reads),
DIR/decoder.onnx (SAM's ONNX decoder inputs: image_embeddings, point_coords, point_labels with 1 positive,
0 negative, 2/3 box corners, -1 padding, mask_input, has_mask_input, orig_im_size; outputs masks, iou_predictions,
low_res_masks: for SAM and MobileSAM the official export's 4 masks, or with --single-mask the one its
return_single_mask=True picks) and, for Pi-SAM models, DIR/interactor.onnx (click correction). Run them with
finesam.onnx.OnnxPredictor(DIR), or with onnxruntime directly.

--layout anylabeling: the pair AnyLabeling loads as a Segment Anything model (X-AnyLabeling's sam_hq for HQ
models; the encoder takes its 684x1024x3 float32 canvas, the decoder returns the one mask it reads) and
DIR/NAME.yaml, the model config to load in the tool.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command (with its ``onnx`` format) to an ``argparse`` sub-parsers object."""
    export = subparsers.add_parser("export", help="export a model to another runtime (ONNX)",
                                   description="Export a model to another runtime.")
    formats = export.add_subparsers(dest="format", required=True, parser_class=type(export))
    onnx = formats.add_parser("onnx", help="encoder and decoder graphs for onnxruntime", epilog=EPILOG,
                              description="Export a model's encoder and decoder as ONNX graphs.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(onnx, default_model=None, device=False)  # traced on the CPU
    onnx.add_argument("--out", required=True, metavar="DIR", help="output folder (encoder.onnx, decoder.onnx, ...)")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset, 16 to 20 (default 17)")
    onnx.add_argument("--single-mask", action="store_true",
                      help="SAM / MobileSAM: one mask, the one the official export with return_single_mask=True picks "
                           "(token 0 for more than 2 points, padding and box corners counted, else the best of the 3 "
                           "candidates); default: the official 4 masks")
    onnx.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None,
                      help="HQ models, fixed in the decoder as the official HQ export's multimask_output: the best of "
                           "SAM's 3 candidates + HQ, or token 0 + HQ with --no-multimask (default: --multimask; "
                           "--no-multimask with --layout anylabeling, as the official HQ export)")
    onnx.add_argument("--hq-token-only", action="store_true", help="HQ models: the HQ logits only (official hq_token_only=True)")
    onnx.add_argument("--hq-output", choices=HQ_OUTPUTS, help="HQ models: the output mode fixed in the decoder (default sum)")
    onnx.add_argument("--layout", choices=LAYOUTS, default=LAYOUTS[0],
                      help="finesam (default): the graphs OnnxPredictor runs; anylabeling: the graphs and model config "
                           "for AnyLabeling (SAM, MobileSAM) and X-AnyLabeling (HQ-SAM: its sam_hq model type)")
    onnx.add_argument("--quantize", choices=[value for value in QUANTIZE if value],
                      help="int8: onnxruntime's dynamic quantization of the encoder's weight MatMuls (a smaller, faster "
                           "encoder on CPUs; the decoder stays float32; uint8 weights with --layout anylabeling, exact on "
                           "CPUs without VNNI)")
    onnx.add_argument("--external-data", action="store_true",
                      help="keep the weights in DIR/NAME.onnx.data files (always done for graphs over 1.8 GB)")
    return export


def run(args: argparse.Namespace) -> int:
    from ..onnx import check_opset, check_quantize, export_mode, export_onnx

    # Refuse bad options before loading weights: the output folder, the extra, the modes on a weightless build.
    out = check_output_dir(args.out, "ONNX output folder")
    require("onnx", "finesam export onnx", "onnx")
    check_opset(args.opset)
    check_quantize(args.quantize)
    if args.quantize:
        require("onnxruntime.quantization", "finesam export onnx --quantize", "onnx")
    spec = get_spec(args.model)
    check_model_options(args)
    hq_token_only = True if args.hq_token_only else None
    with torch.device("meta"):
        export_mode(spec.build(), args.multimask, hq_token_only, args.hq_output, args.single_mask, args.layout)
    model = load_model(args, "cpu")
    files = export_onnx(model, out, model_name=args.model, multimask=args.multimask, hq_token_only=hq_token_only,
                        hq_output=args.hq_output, opset=args.opset, external_data=True if args.external_data else None,
                        random_weights=args.random_weights, single_mask=args.single_mask, layout=args.layout,
                        quantize=args.quantize)
    for path in (files.encoder, files.decoder, files.interactor, files.config):
        if path is not None:
            print(path)
    return 0
