"""Export for deployment (ONNX, OpenVINO IR, TensorRT-ready ONNX, LiteRT, Core ML, torch.export),
each format with a built-in check against the eager model."""

from atrous.export.coreml import export_coreml
from atrous.export.onnx import ExportCheckError, export_onnx, export_program
from atrous.export.tensorrt import export_tensorrt
from atrous.export.tflite import export_tflite

__all__ = [
    "ExportCheckError",
    "export_coreml",
    "export_onnx",
    "export_program",
    "export_tensorrt",
    "export_tflite",
]
