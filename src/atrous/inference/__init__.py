"""Running a model on images: inference strategies (output stride, multi-scale, flip, sliding
window), the fast path (BN folding, ONNX Runtime, int8), the folder pipeline and ``Segmenter``."""
