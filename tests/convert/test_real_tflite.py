"""Google's own DeepLab weights, converted the way users convert, give Google's own outputs.

``../shared/real`` (its README says where each file came from) holds the TensorFlow Lite team's
``deeplabv3_257_mv_gpu.tflite``: the official MobileNetV2 depth-0.5 DeepLabV3 for PASCAL VOC at
output stride 8 with BatchNorm folded into each conv, under the official variable names, and
14 real VOC val photos with ground truth. The test turns the TFLite tensors into a checkpoint in
the official variable names (kernels back to TF's layout; each BatchNorm an identity around the
folded bias: gamma 1, mean 0, variance 1 - eps), writes it with the numpy bundle writer,
converts it with ``atrous convert --kind tf`` and compares against the TFLite interpreter.
Skips where the folder or the interpreter (``ai-edge-litert``, in the dev extra) is absent.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REAL_DATA, write_checkpoint
from PIL import Image

from atrous.cli import main
from atrous.convert.tf_checkpoint import read_index
from atrous.data.io import colours_to_labels, read_mask
from atrous.data.palettes import voc_palette
from atrous.evaluation.metrics import ConfusionMatrix
from atrous.hub.load import load

TFLITE = REAL_DATA / "deeplabv3_257_mv_gpu.tflite"
ZOO_INDEX = REAL_DATA / "deeplabv3_mnv2_pascal_trainval_2018_01_29" / "model.ckpt-30000"
PHOTOS = sorted(REAL_DATA.glob("voc/*_image.png"))
pytestmark = [pytest.mark.skipif(not TFLITE.is_file(), reason=f"no {TFLITE}"), pytest.mark.slow]
#: BN epsilon of the official MobileNetV2 backbone and of the DeepLab head.
EPS = {"MobilenetV2": 1e-3, "head": 1e-5}


@pytest.fixture(scope="module")
def interpreter():
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    interpreter = litert.Interpreter(model_path=str(TFLITE))
    interpreter.allocate_tensors()
    return interpreter


def official_variables(interpreter) -> dict[str, np.ndarray]:
    """The TFLite's tensors as the official checkpoint's variables."""
    variables = {}
    for detail in interpreter.get_tensor_details():
        name, value = detail["name"], None
        if name.endswith(("/weights", "/depthwise_weights")):  # (out, kh, kw, in) → TF's HWIO
            variables[name] = interpreter.get_tensor(detail["index"]).transpose(1, 2, 3, 0)
        elif name.endswith(("/Conv2D_bias", "/depthwise_bias")):
            scope, value = name.rsplit("/", 1)[0], interpreter.get_tensor(detail["index"])
        if value is None:
            continue
        if scope == "logits/semantic":
            variables["logits/semantic/biases"] = value
            continue
        eps = EPS["MobilenetV2" if scope.startswith("MobilenetV2/") else "head"]
        variables[f"{scope}/BatchNorm/gamma"] = np.ones_like(value)
        variables[f"{scope}/BatchNorm/beta"] = value
        variables[f"{scope}/BatchNorm/moving_mean"] = np.zeros_like(value)
        variables[f"{scope}/BatchNorm/moving_variance"] = np.full_like(value, 1 - eps)
    return variables


@pytest.fixture(scope="module")
def converted(interpreter, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("real_tflite")
    variables = official_variables(interpreter)
    prefix = write_checkpoint(variables, folder / "ckpt" / "model.ckpt")
    command = ["convert", "--kind", "tf", "--source", str(prefix), "--dataset", "voc"]
    assert main([*command, "--output", str(folder / "model")]) == 0
    return folder / "model", variables


def test_the_checkpoint_has_the_official_names_and_the_depth_05_channels(converted):
    folder, variables = converted
    config = load(folder).config
    assert (config.width_multiplier, config.divisible_by, config.min_depth) == (0.5, 1, 1)
    assert variables["MobilenetV2/expanded_conv_1/project/weights"].shape[-1] == 12
    assert variables["image_pooling/weights"].shape == (1, 1, 160, 256)
    if Path(f"{ZOO_INDEX}.index").is_file():  # the depth-1.0 zoo checkpoint: the same names
        _, entries = read_index(ZOO_INDEX)
        weights = {name for name in entries if not name.endswith("/Momentum")}
        assert set(variables) == weights - {"global_step"}


def test_logits_and_masks_equal_the_tflite_interpreter_on_every_photo(interpreter, converted):
    model = load(converted[0]).eval()
    model.set_output_stride(8)
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    assert len(PHOTOS) == 14
    for photo in PHOTOS:
        image = Image.open(photo).convert("RGB").resize((257, 257), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)[None] / 127.5 - 1  # the TFLite's input
        interpreter.set_tensor(source, pixels)
        interpreter.invoke()
        theirs = interpreter.get_tensor(target)  # (1, 257, 257, 21)
        with torch.no_grad():
            ours = model(torch.from_numpy(pixels).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
        relative = np.abs(ours - theirs).max() / np.abs(theirs).max()
        assert relative <= 1e-4, f"{photo.name}: {relative:.2e} of the logit scale"
        agreement = (ours.argmax(-1) == theirs.argmax(-1)).mean()
        assert agreement >= 0.999, f"{photo.name}: masks agree on {agreement:.4%}"
        assert len(np.unique(theirs.argmax(-1))) > 1  # an object, not all background


def test_atrous_predict_at_513_os16_scores_the_published_accuracy(converted, tmp_path):
    command = ["predict", "--model", str(converted[0]), "--output_dir", str(tmp_path)]
    command += ["--inference.output_stride", "16", "--overlays", "false", "--progress", "false"]
    assert main([*command, *map(str, PHOTOS)]) == 0
    confusion = ConfusionMatrix(21, ignore_index=255)
    for photo in PHOTOS:
        predicted = read_mask(tmp_path / "masks" / photo.name)
        truth_path = photo.with_name(photo.name.replace("_image", "_target"))
        truth = colours_to_labels(read_mask(truth_path), voc_palette(256), 255, truth_path)
        assert predicted.shape == truth.shape == (513, 513)
        confusion.update(torch.from_numpy(predicted), torch.from_numpy(truth))
    mean_iou = confusion.scores().mean_iou
    assert mean_iou >= 0.80, f"mIoU {mean_iou:.4f} over the 14 photos"
