"""Helpers shared by test files: small models, data trees, checkpoints and fixtures.

Test files import from here (``from helpers import ...``), never from each other, so a skip in
one test file never spreads to another through an import.
"""

import dataclasses
import io
import json
import os
import shutil
import tarfile
import time
import zlib
from pathlib import Path

import google_crc32c
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atrous.convert.tf_checkpoint import DTYPES, TABLE_MAGIC, mask_crc, masked_crc32c
from atrous.data import DataConfig
from atrous.data.palettes import VOC_PALETTE
from atrous.data.visualize import palette_image
from atrous.models.zoo import create_model, get_config
from atrous.training.config import OptimConfig, RunConfig, TrainConfig

FIXTURES = Path(__file__).parent / "fixtures"
TF_FIXTURES = FIXTURES / "tf_deeplab"
#: Real official weights and photos (``../shared/real`` beside the checkout, or
#: ``$ATROUS_REAL_DATA``); tests that use them skip when it is absent.
REAL_DATA = Path(
    os.environ.get("ATROUS_REAL_DATA") or Path(__file__).resolve().parents[1].parent / "shared/real"
)


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics so eval-mode comparisons test real numbers."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def use_offline_hf_cache(monkeypatch, cache: Path, repo_id: str, files: list[Path]) -> None:
    """Put ``files`` where huggingface_hub caches a downloaded repo, and take the Hub offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in files:
        shutil.copy(path, snapshot / path.name)


def no_download(url: str, *args, **kwargs) -> None:
    pytest.fail(f"tried to download {url}")


def make_binary_folder(root: Path, names: str, foreground: int, count: int = 4) -> None:
    """Masks of 0 and ``foreground`` (a square on background), as users' binary tools write."""
    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(f"names: {names}\n")
    for i in range(count):
        write_rgb(root / "images" / "train" / f"b{i}.png", random_image(rng, 16, 16))
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[4:12, 4:12] = foreground
        (root / "masks" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, mode="L").save(root / "masks" / "train" / f"b{i}.png")


def random_image(rng, h=20, w=24):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_index_png(path: Path, mask: np.ndarray, palette=VOC_PALETTE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    palette_image(mask, palette).save(path)


def write_rgb(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, format=fmt)


def load_fixture(variant: str) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    spec = json.loads((TF_FIXTURES / f"{variant}.json").read_text())
    scale = spec["settings"].get("conv_scale", 1.0)
    variables = {name: official_weights(name, shape, scale) for name, shape in spec["variables"]}
    with np.load(TF_FIXTURES / f"{variant}.npz") as arrays:
        outputs = dict(arrays)
    return spec, variables, outputs


def official_weights(name: str, shape: list[int], conv_scale: float) -> np.ndarray:
    """The fixtures' weight rule: seeded by the variable's name; conv kernels scaled by their
    fan-in (times ``conv_scale``, chosen per variant so the logits vary across pixels)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    size = tuple(shape)
    if name.endswith("/depthwise_weights"):
        value = rng.standard_normal(size) * np.sqrt(1.0 / (size[0] * size[1])) * conv_scale
    elif name.endswith("/weights"):
        value = rng.standard_normal(size) * np.sqrt(1.0 / np.prod(size[:-1])) * conv_scale
    elif name.endswith("/biases"):
        value = rng.normal(0.0, 0.1, size)
    elif name.endswith("/gamma"):
        value = rng.uniform(0.5, 1.5, size)
    elif name.endswith("/beta") or name.endswith("/moving_mean"):
        value = rng.normal(0.0, 0.1, size)
    elif name.endswith("/moving_variance"):
        value = rng.uniform(0.5, 1.5, size)
    else:
        raise ValueError(f"no rule for {name}")
    return value.astype(np.float32)


def tiny_config(output_dir: Path, **run_changes) -> TrainConfig:
    """A small MobileNetV2 DeepLabV3+ on 48×48 built-in scenes: seconds per run on a CPU."""
    model = get_config("deeplabv3plus_mobilenetv2").replace(num_classes=6, width_multiplier=0.25)
    data = DataConfig(
        dataset="synthetic",
        crop_size=33,
        scale_min=0.75,
        scale_max=1.25,
        workers=0,
        synthetic_train=64,
        synthetic_val=12,
        synthetic_size=48,
    )
    optim = OptimConfig(optimizer="adamw", lr=3e-3, weight_decay=1e-4)
    run = RunConfig(
        iterations=12,
        batch_size=4,
        val_every=6,
        log_every=1,
        output_dir=str(output_dir),
        progress=False,
        seed=5,
    )
    return TrainConfig(model, data, optim, dataclasses.replace(run, **run_changes))


def wait_for_steps(output_dir: Path, steps: int, timeout: float = 120) -> None:
    """Wait until a run in another thread or process has logged ``steps`` records."""
    path = output_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not path.is_file() or len(path.read_text().splitlines()) < steps:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{output_dir} did not log {steps} steps")
        time.sleep(0.01)


def _proto_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _proto(fields: list[tuple[int, int | bytes]]) -> bytes:
    """A protobuf message from (field number, value): ints as varints, bytes length-delimited."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, bytes):
            out += _proto_varint(number << 3 | 2) + _proto_varint(len(value)) + value
        else:
            out += _proto_varint(number << 3) + _proto_varint(value)
    return bytes(out)


def _table_block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A LevelDB table block with a restart point at every entry (no shared key prefixes)."""
    out, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(out))
        out += _proto_varint(0) + _proto_varint(len(key)) + _proto_varint(len(value)) + key + value
    restarts = restarts or [0]
    for restart in [*restarts, len(restarts)]:
        out += restart.to_bytes(4, "little")
    return bytes(out)


def _write_table(path: Path, entries: list[tuple[bytes, bytes]]) -> None:
    """A LevelDB table (TF's checkpoint ``.index``): one data, one meta, one index block."""
    blob = bytearray()

    def add_block(block: bytes) -> bytes:
        handle = _proto_varint(len(blob)) + _proto_varint(len(block))
        trailer = block + b"\0"
        blob.extend(trailer + masked_crc32c(trailer).to_bytes(4, "little"))
        return handle

    data = add_block(_table_block(entries))
    meta = add_block(_table_block([]))
    index = add_block(_table_block([(entries[-1][0], data)]))
    footer = (meta + index).ljust(40, b"\0") + TABLE_MAGIC.to_bytes(8, "little")
    path.write_bytes(bytes(blob) + footer)


def write_checkpoint(variables: dict[str, np.ndarray], prefix: Path) -> Path:
    """A TF V2 checkpoint (``prefix.index`` + one data shard) holding exactly ``variables``,
    written with numpy alone in TensorFlow's tensor-bundle format (numeric dtypes only)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    codes = {dtype.str.replace(">", "<"): code for code, dtype in DTYPES.items()}
    data, entries = bytearray(), []
    for name in sorted(variables):
        array = np.asarray(variables[name])
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        shape = _proto([(2, _proto([(1, size)])) for size in array.shape])
        entry = [(1, codes[array.dtype.newbyteorder("<").str]), (2, shape)]
        entry += [(4, len(data)), (5, len(raw))]
        crc = (6 << 3 | 5).to_bytes(1, "little") + mask_crc(google_crc32c.value(raw)).to_bytes(
            4, "little"
        )
        entries.append((name.encode(), _proto(entry) + crc))
        data += raw
    header = _proto([(1, 1), (3, _proto([(1, 1)]))])  # one shard; VersionDef producer 1
    _write_table(Path(f"{prefix}.index"), [(b"", header), *entries])
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
    return prefix


def tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz in memory holding ``members`` (name → bytes) and symbolic ``links``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def decisive_model(
    image: torch.Tensor, pooling: bool = False, num_classes: int = 3
) -> torch.nn.Module:
    """A tiny DeepLabV3+ whose logits vary across ``image`` (std 3 around a zero mean), not a
    random network's near-constant output. Without ``pooling`` the image-pooling branch is
    silenced: it pools whatever it is given (a region, or the whole image) by design."""
    torch.manual_seed(0)
    model = create_model(
        "deeplabv3plus_mobilenetv2", num_classes=num_classes, width_multiplier=0.25
    )
    model.eval()
    randomize_bn(model)
    if not pooling:
        torch.nn.init.zeros_(model.aspp.convs[-1][1].weight)
    with torch.no_grad():
        logits = model(image) - model.classifier.bias[:, None, None]
        mean = logits.mean((0, 2, 3))
        scale = 3 / (logits - mean[:, None, None]).std()
        model.classifier.weight.mul_(scale)
        model.classifier.bias.copy_(-scale * mean)
    return model


#: The grid of generated GeoTIFFs: UTM zone 33N, 10 m pixels, north up.
UTM_CRS = "EPSG:32633"
UTM_TRANSFORM = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)


def write_geotiff(path: Path, array: np.ndarray, nodata=None, georeferenced: bool = True) -> None:
    """A (bands, H, W) array as a tiled, deflate-compressed GeoTIFF on :data:`UTM_CRS` (or a
    plain TIFF without CRS and transform)."""
    import rasterio
    from affine import Affine

    bands, height, width = array.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands}
    profile.update(dtype=array.dtype.name, nodata=nodata)
    if georeferenced:
        profile.update(crs=UTM_CRS, transform=Affine(*UTM_TRANSFORM))
    profile.update(tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(array)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """DeepLabV3+ MobileNetV2 at width 0.25, 3 classes, in eval mode, with BN statistics drawn
    and the classifier ×20 so that logits reach a few units (export checks need a scale)."""
    torch.manual_seed(seed)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    randomize_bn(model, seed)
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    return model.eval()
