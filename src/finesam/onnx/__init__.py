"""finesam on ONNX: ``export_onnx`` writes a model's encoder, decoder (and click interactor)
as ONNX graphs (:mod:`finesam.onnx.export`, the traced modules in :mod:`finesam.onnx.graphs`;
also in AnyLabeling's layout, and int8-quantized),
and :class:`OnnxPredictor` runs them with onnxruntime behind :class:`finesam.SamPredictor`'s
surface (:mod:`finesam.onnx.predictor`). Needs the ``onnx`` extra (``pip install 'finesam[onnx]'``),
imported only when a graph is written or opened.

Inside this package ``onnx`` always means the top-level ONNX package (absolute imports);
finesam's own modules are imported relatively.
"""

from .export import (LAYOUTS, QUANTIZE, ExportedFiles, GraphMode, anylabeling_config, check_opset, check_quantize,
                     export_mode, export_onnx, read_metadata)
from .predictor import ExportedModel, OnnxPredictor

__all__ = ["LAYOUTS", "QUANTIZE", "ExportedFiles", "ExportedModel", "GraphMode", "OnnxPredictor", "anylabeling_config",
           "check_opset", "check_quantize", "export_mode", "export_onnx", "read_metadata"]
