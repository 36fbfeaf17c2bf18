"""`atrous predict` over a folder against the network's own forward throughput, in one run.

    python benchmarks/predict_pipeline.py                         # 200 JPEGs, 512×512, CPU
    python benchmarks/predict_pipeline.py --models deeplabv3plus_resnet101 --device cuda

For each model (random weights; the same network for every row): 200 generated 512×512 JPEG
scenes are written once; then, interleaved round by round,

- **forward**: ``Segmenter.labels`` on batches already decoded and normalised in memory (the
  network, padding to the aligned 513×513, argmax on the device, labels to the host): the
  ceiling that prediction over files can approach;
- **pipeline**: ``predict_files`` over the folder at the same batch size, with
  loader workers decoding and normalising and background threads writing masks and overlays;
- **serial**: the same with one image at a time, no workers, one writer (the old behaviour).

Images/s are the median over ``--rounds``; the pipeline's share of forward is the figure of
merit (issue 18: 85% on a CPU, 90% on a GPU). It writes JSON (``--json``) and prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch
from PIL import Image

import atrous
from atrous.data.synthetic import render_scene
from atrous.hub.load import load_segmenter
from atrous.inference.fast import normalise_images
from atrous.inference.pipeline import PipelineConfig
from atrous.inference.predict import Segmenter, predict_files
from atrous.models.profile import describe_device


def write_images(folder: Path, count: int, size: int) -> list[np.ndarray]:
    """``count`` built-in scenes as JPEG files (quality 90); returns the decoded pictures."""
    folder.mkdir(parents=True, exist_ok=True)
    pictures = []
    for index in range(count):
        image = render_scene(11, index, size)[0]
        Image.fromarray(image).save(folder / f"scene_{index:04d}.jpg", quality=90)
        pictures.append(np.array(Image.open(folder / f"scene_{index:04d}.jpg").convert("RGB")))
    return pictures


def segmenter_for(name: str, device: torch.device, folder: Path) -> Segmenter:
    """A saved random-weight model of ``name`` (21 classes), loaded as `atrous predict` would."""
    torch.manual_seed(0)
    model = atrous.create_model(name, num_classes=21).eval()
    model.save_pretrained(folder / name)
    return load_segmenter(folder / name, device=device)


def forward_rate(segmenter: Segmenter, batches: list[torch.Tensor], device: torch.device) -> float:
    """Images/s of ``Segmenter.labels`` on batches that are already normalised in memory."""
    elapsed = harness.seconds(lambda: [segmenter.labels(batch) for batch in batches], device)
    return sum(len(b) for b in batches) / elapsed


def predict_rate(segmenter: Segmenter, folder: Path, out: Path, pipeline: PipelineConfig) -> float:
    """Images/s of ``predict_files`` over the folder, writing masks and overlays."""
    reports = []
    elapsed = harness.seconds(
        lambda: reports.append(
            predict_files(segmenter, [folder], out, progress=False, pipeline=pipeline)
        ),
        segmenter.device,
    )
    report = reports[0]
    if report.failed:
        raise RuntimeError(f"prediction failed on {report.failed[0]}")
    return report.segmented / elapsed


def measure_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Forward, pipeline and serial images/s of one model, interleaved over the rounds."""
    device = torch.device(args.device)
    segmenter = segmenter_for(name, device, work / "models")
    pictures = write_images(work / "images", args.images, args.size)
    tensors = torch.cat(normalise_images(pictures, segmenter.mean, segmenter.std))
    batches = list(torch.split(tensors, args.batch_size))
    piped = PipelineConfig(batch_size=args.batch_size, workers=args.workers, writers=args.writers)
    serial = PipelineConfig(batch_size=1, workers=0, writers=1)
    segmenter.labels(batches[0])  # warm-up: allocator, kernels, thread pools
    rates: dict[str, list[float]] = {"forward": [], "pipeline": [], "serial": []}
    for round_index in range(args.rounds):
        rates["forward"].append(forward_rate(segmenter, batches, device))
        out = work / f"out_{round_index}"
        rates["pipeline"].append(predict_rate(segmenter, work / "images", out / "p", piped))
        if not args.skip_serial:
            rates["serial"].append(predict_rate(segmenter, work / "images", out / "s", serial))
    median = {key: statistics.median(values) for key, values in rates.items() if values}
    return {
        "model": name,
        "images": args.images,
        "size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "writers": args.writers,
        "images_per_s": median,
        "rounds": rates,
        "pipeline_share_of_forward": median["pipeline"] / median["forward"],
    }


def markdown(rows: list[dict[str, Any]], device: str) -> str:
    """The results as a Markdown table."""
    lines = [
        f"Device: {device}; {rows[0]['images']} JPEGs of {rows[0]['size']}², batch "
        f"{rows[0]['batch_size']}, {rows[0]['workers']} loader workers, {rows[0]['writers']} "
        "writer threads (images/s, median of rounds)",
        "",
        "| model | forward | predict (pipeline) | share of forward | predict (serial) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        rate = row["images_per_s"]
        serial = f"{rate['serial']:.2f}" if "serial" in rate else "—"
        lines.append(
            f"| {row['model']} | {rate['forward']:.2f} | {rate['pipeline']:.2f} | "
            f"{row['pipeline_share_of_forward']:.0%} | {serial} |"
        )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["deeplabv3plus_mobilenetv2"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip_serial", action="store_true")
    parser.add_argument("--json", type=Path, default=harness.RESULTS / "predict_pipeline.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(sys.argv[1:] if argv is None else argv)
    device = describe_device(torch.device(args.device))
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure_model(name, args, Path(folder)) for name in args.models]
    table = markdown(rows, device)
    print(table)
    command = " ".join(["python benchmarks/predict_pipeline.py", *(argv or sys.argv[1:])])
    harness.write_results(args.json, {"device": device, "command": command, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
