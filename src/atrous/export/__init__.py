"""Export for deployment (ONNX, OpenVINO IR, torch.export), each format with a built-in check
against the eager model."""

from atrous.export.onnx import ExportCheckError, export_onnx, export_program
from atrous.export.tensorrt import export_tensorrt

__all__ = ["ExportCheckError", "export_onnx", "export_program", "export_tensorrt"]
