"""Trained models from other code, converted to equal logits: torchvision, smp, transformers,
mmsegmentation and the official TensorFlow DeepLab checkpoints."""

from atrous.convert.dispatch import convert_source
from atrous.convert.hf import convert_transformers, from_transformers
from atrous.convert.mmseg import convert_mmseg, from_mmseg
from atrous.convert.tf import convert_tf, from_tf_checkpoint
from atrous.convert.torch_models import convert, from_smp, from_torchvision

__all__ = [
    "convert",
    "convert_mmseg",
    "convert_source",
    "convert_tf",
    "convert_transformers",
    "from_mmseg",
    "from_smp",
    "from_tf_checkpoint",
    "from_torchvision",
    "from_transformers",
]
