"""Peak memory and time of predicting a GeoTIFF window by window, against the scene's size.

    python benchmarks/raster_memory.py                       # 512-px windows, scenes 4× and 8×
    python benchmarks/raster_memory.py --window 256 --scales 2 8 16
    python benchmarks/raster_memory.py --window 256 --scales 8 16 32 --io_only   # no network

For each scale s a 4-band uint16 GeoTIFF of (s·window)² pixels on a UTM grid is written once;
then, each in a fresh process (so that peak RSS is its own), ``predict_raster`` segments it
with a random-weight model of ``--bands`` input bands and writes the mask. A row "model only"
measures the same process without predicting (imports, model, threads): the difference is what
prediction holds. Memory bounded by the window means peak RSS flat across scales while the
scene grows; time grows with the scene. ``--io_only`` replaces the network by uniform
probabilities, to measure reading, blending and writing alone on scenes too large to run a
network over here. Prints the CPU and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atrous.inference import raster
from atrous.inference.predict import Segmenter
from atrous.inference.raster import predict_raster
from atrous.inference.strategies import InferenceConfig
from atrous.models.profile import describe_device
from atrous.models.zoo import create_model

UTM_TRANSFORM = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)


def write_scene(path: Path, side: int, bands: int, window: int) -> None:
    """A (bands, side, side) uint16 scene, written strip by strip (never held whole)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": bands}
    profile.update(dtype="uint16", nodata=0, crs="EPSG:32633", transform=Affine(*UTM_TRANSFORM))
    profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as scene:
        for top in range(0, side, window):
            rows = min(window, side - top)
            strip = rng.integers(1, 65535, (bands, rows, side), dtype=np.uint16)
            scene.write(strip, window=Window(0, top, side, rows))


def measure(args: argparse.Namespace) -> dict:
    """In this process: build the model, predict ``args.scene`` (unless it is empty), and
    return the wall time and this process's peak RSS."""
    torch.manual_seed(0)
    model = create_model(
        args.model,
        num_classes=args.classes,
        width_multiplier=args.width,
        in_channels=args.bands,
    )
    inference = InferenceConfig(window=args.window, window_batch=args.window_batch)
    segmenter = Segmenter.from_model(model, inference)
    if args.io_only:  # the raster machinery alone: uniform probabilities, no network
        raster.window_probabilities = lambda segmenter, crops: torch.full(
            (len(crops), args.classes, *crops.shape[-2:]), 1 / args.classes
        )
    start = time.perf_counter()
    if args.scene:
        predict_raster(segmenter, args.scene, Path(args.scene).parent / "out", progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux
    return {"seconds": seconds, "peak_rss_mib": peak}


def child(args: argparse.Namespace, scene: Path | None) -> dict:
    """:func:`measure` in a fresh Python process."""
    command = [sys.executable, __file__, "--child", str(scene or "")]
    for name in ("window", "bands", "classes", "model", "width", "window_batch"):
        command += [f"--{name}", str(getattr(args, name))]
    command += ["--io_only"] if args.io_only else []
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--scales", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--model", default="deeplabv3plus_mobilenetv2")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--window_batch", type=int, default=4)
    parser.add_argument(
        "--io_only", action="store_true", help="no network: reading, blending, writing"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        args.scene = args.child
        print(json.dumps(measure(args)))
        return
    print(f"CPU: {describe_device(torch.device('cpu'))}")
    network = "no network (--io_only)" if args.io_only else f"{args.model} width {args.width}"
    print(f"{network}, {args.bands} bands, {args.classes} classes, ")
    print(f"{args.window}-px windows, batch {args.window_batch}\n")
    rows = [("model only", "—", child(args, None))]
    with tempfile.TemporaryDirectory() as folder:
        for scale in args.scales:
            side = scale * args.window
            scene = Path(folder) / f"scene_{scale}.tif"
            write_scene(scene, side, args.bands, args.window)
            rows.append((f"{scale}× window", f"{side}×{side}", child(args, scene)))
            scene.unlink()
    print("| scene | pixels | peak RSS (MiB) | time (s) |")
    print("|---|---|---|---|")
    for name, pixels, result in rows:
        seconds = f"{result['seconds']:.1f}" if pixels != "—" else "—"
        print(f"| {name} | {pixels} | {result['peak_rss_mib']:.0f} | {seconds} |")


if __name__ == "__main__":
    main()
