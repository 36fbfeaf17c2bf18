"""Peak memory and time of `atrous predict` on one large photo, whole vs region by region.

    python benchmarks/predict_memory.py                    # MobileNetV2 ×0.5 and R-101
    python benchmarks/predict_memory.py --runs mnv2:5000:after

Each run is the real command (``python -m atrous predict IMAGE --model M``, overlays written) in
a child process; peak memory is the largest resident set of any process of the run
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper that does nothing else) and the largest
sum over the run's process tree (main process + loader workers), sampled every 20 ms from /proc.
"before" is whole-image inference (``--inference.max_pixels null``, as before region-by-region
inference existed), "after" the default (regions above 1025×1025 pixels). Masks of the two are
compared over all pixels and away from region edges (at least 32 px from any region's core
boundary). Models have random weights (21 classes; BN statistics drawn and the classifier
scaled so that logits vary across the image); the image is a generated JPEG of smooth
colour fields with noise.

A run is ``model:side:mode`` (models ``mnv2``, ``r101``); the default list compares both modes
on a 1500×1500 image and measures the 25 MP image region by region, with MobileNetV2 (whole-image
inference at 25 MP needs 13 GB with it and tens of GB with R-101; R-101 region by region at
25 MP takes about 64 × 17 s of one core: ``--runs r101:5000:after`` on a bigger machine).
Results go to benchmarks/results/predict_memory.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

MODELS = {
    "mnv2": ("deeplabv3plus_mobilenetv2", {"width_multiplier": 0.5}),
    "r101": ("deeplabv3plus_resnet101", {}),
}
DEFAULT_RUNS = ("mnv2:1500:before", "mnv2:1500:after", "mnv2:5000:after")
PAGE = os.sysconf("SC_PAGE_SIZE")
SEAM = 32  # pixels either side of a region's core boundary left out of "away from seams"


def make_image(side: int, path: Path) -> None:
    """Smooth random colour fields (bicubic from a coarse grid) with mild noise, as a JPEG."""
    rng = np.random.default_rng(side)
    coarse = Image.fromarray(rng.integers(0, 256, (side // 100 + 2,) * 2 + (3,), np.uint8))
    smooth = np.asarray(coarse.resize((side, side), Image.BICUBIC), np.int16)
    noise = rng.integers(-12, 13, smooth.shape, np.int16)
    Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def save_model(key: str, folder: Path) -> None:
    import torch

    import atrous

    name, options = MODELS[key]
    torch.manual_seed(0)
    model = atrous.create_model(name, num_classes=21, **options).eval()
    for module in model.modules():  # BN statistics of a trained network's kind
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():  # logits that vary across the image (std 3), so masks have content
        logits = model(torch.randn(1, 3, 257, 257)) - model.classifier.bias[:, None, None]
        mean = logits.mean((0, 2, 3))
        scale = 3 / (logits - mean[:, None, None]).std()
        model.classifier.weight.mul_(scale)
        model.classifier.bias.copy_(-scale * mean)
    model.save_pretrained(folder)


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants (Linux ``/proc``)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid ...": the name may hold spaces
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    members, new = {root}, {root}
    while new:
        new = {pid for pid, parent in parents.items() if parent in new} - members
        members |= new
    total = 0
    for pid in members:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a process that just ended
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def child(command: list[str]) -> None:
    """Run ``command``; print its seconds, ru_maxrss and the peak summed RSS of its tree."""
    peak, done = [0], threading.Event()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=sys.stderr)

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], tree_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    done.set()
    sampler.join()
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    seconds = time.perf_counter() - start
    print(json.dumps({"code": code, "seconds": seconds, "max_rss": largest, "tree": peak[0]}))


def measure(run: str, work: Path) -> dict:
    key, side, mode = run.split(":")
    image, model = work / f"scene_{side}.jpg", work / key
    if not image.exists():
        make_image(int(side), image)
    if not model.exists():
        save_model(key, model)
    out = work / f"{key}_{side}_{mode}"
    command = [sys.executable, "-m", "atrous", "predict", str(image), "--model", str(model)]
    command += ["--output_dir", str(out), "--progress", "false"]
    if mode == "before":
        command += ["--inference.max_pixels", "null"]
    wrapper = [sys.executable, __file__, "--child", json.dumps(command)]
    finished = subprocess.run(wrapper, check=True, stdout=subprocess.PIPE, text=True)
    result = json.loads(finished.stdout.splitlines()[-1])
    print(f"{run}: {result}", flush=True)
    return {"run": run, "model": MODELS[key][0], "side": int(side), "mode": mode, **result}


def compare(work: Path, key: str, side: int) -> dict | None:
    """Mask agreement of before and after: all pixels, and away from region edges."""
    from atrous.hub.load import load
    from atrous.inference.regions import regions
    from atrous.inference.strategies import InferenceConfig

    paths = [work / f"{key}_{side}_{mode}" / "masks" / f"scene_{side}.png" for mode in MODES]
    if not all(p.exists() for p in paths):
        return None
    before, after = (np.asarray(Image.open(p)) for p in paths)
    keep = np.ones(before.shape, bool)
    network = load(work / key)
    for region in regions(network, side, side, InferenceConfig()):
        for cut in (region.core_rows.start, region.core_rows.stop):
            if 0 < cut < side:
                keep[max(0, cut - SEAM) : cut + SEAM] = False
        for cut in (region.core_cols.start, region.core_cols.stop):
            if 0 < cut < side:
                keep[:, max(0, cut - SEAM) : cut + SEAM] = False
    same = before == after
    return {
        "model": MODELS[key][0],
        "side": side,
        "agree_all": float(same.mean()),
        "agree_away_from_seams": float(same[keep].mean()),
        "share_away_from_seams": float(keep.mean()),
    }


MODES = ("before", "after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=list(DEFAULT_RUNS))
    parser.add_argument(
        "--json", default=str(Path(__file__).parent / "results/predict_memory.json")
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    import torch

    from atrous.models.profile import describe_device

    with tempfile.TemporaryDirectory(prefix="atrous-memory-") as folder:
        work = Path(folder)
        results = [measure(run, work) for run in args.runs]
        pairs = {(r["run"].split(":")[0], r["side"]) for r in results}
        agreement = [c for key, side in sorted(pairs) if (c := compare(work, key, side))]
    device = describe_device(torch.device("cpu"))
    report = {"cpu": device, "threads": torch.get_num_threads(), "runs": results}
    report["agreement"] = agreement
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{device}, {torch.get_num_threads()} threads")
    print(
        "| model | image | mode | time (s) | peak RSS, largest process (GB) | peak RSS, tree (GB) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['side']}×{r['side']} | {r['mode']} | {r['seconds']:.0f} | "
            f"{r['max_rss'] / 1e9:.2f} | {r['tree'] / 1e9:.2f} |"
        )
    for c in agreement:
        print(
            f"{c['model']} {c['side']}²: masks equal on {100 * c['agree_all']:.2f}% of pixels, "
            f"{100 * c['agree_away_from_seams']:.2f}% away from seams "
            f"({100 * c['share_away_from_seams']:.0f}% of the image)"
        )


if __name__ == "__main__":
    main()
