"""Export of models to other runtimes: ONNX (``export_onnx``; run the graphs with
:class:`finesam.onnx.OnnxPredictor`). Needs the ``onnx`` extra."""

from .onnx_export import ExportedFiles, check_opset, export_mode, export_onnx, read_metadata

__all__ = ["ExportedFiles", "check_opset", "export_mode", "export_onnx", "read_metadata"]
