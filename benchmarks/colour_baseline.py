"""The strongest colour-only baseline on the built-in scenes: what a per-pixel classifier that
sees only each pixel's colour scores on the demo's validation split, for the demo model to beat.

A gradient-boosted tree ensemble (scikit-learn's ``HistGradientBoostingClassifier``) on each
pixel's RGB, HSV and CIELAB values (one colour, three coordinate systems, so the trees can cut
hue and lightness directly), fitted on a random share of the labelled pixels of the first
training scenes, scored on the 200 validation scenes as ``atrous demo`` scores its model
(``atrous.evaluation.metrics``, 6 classes).

    python benchmarks/colour_baseline.py            # writes benchmarks/results/colour_baseline.json
    python benchmarks/colour_baseline.py --train_scenes 200 --pixel_share 0.15 --spaces rgb hsv
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from skimage.color import rgb2hsv, rgb2lab
from sklearn.ensemble import HistGradientBoostingClassifier

from atrous.apps.demo import demo_config
from atrous.data import SegmentationDataset, build_dataset
from atrous.evaluation.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parent
COLOUR_SPACES = {"rgb": lambda x: x, "hsv": rgb2hsv, "lab": rgb2lab}


def colour_features(image: np.ndarray, spaces: Sequence[str]) -> np.ndarray:
    """(H·W, 3·len(spaces)) float32: each pixel's colour in each coordinate system."""
    rgb = image.astype(np.float32) / 255
    parts = [COLOUR_SPACES[name](rgb).reshape(-1, 3) for name in spaces]
    return np.concatenate(parts, axis=1).astype(np.float32)


def training_pixels(
    dataset: SegmentationDataset, scenes: int, share: float, spaces: Sequence[str], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a random ``share`` of the labelled pixels of the first scenes."""
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for index in range(scenes):
        image, mask = dataset.load(index)
        label = mask.reshape(-1)
        keep = (rng.random(label.size) < share) & (label != dataset.ignore_index)
        features.append(colour_features(image, spaces)[keep])
        labels.append(label[keep])
    return np.concatenate(features), np.concatenate(labels)


def score(
    classifier: HistGradientBoostingClassifier,
    dataset: SegmentationDataset,
    spaces: Sequence[str],
) -> dict:
    """Per-class IoU and mIoU of the classifier's per-pixel predictions on every scene."""
    confusion = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        predicted = classifier.predict(colour_features(image, spaces)).reshape(mask.shape)
        confusion.update(torch.from_numpy(predicted), torch.from_numpy(mask.astype(np.int64)))
    scores = confusion.scores()
    return {
        "mean_iou": scores.mean_iou,
        "pixel_accuracy": scores.pixel_accuracy,
        "iou": dict(zip(dataset.classes, map(float, scores.iou), strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_scenes", type=int, default=1000)
    parser.add_argument("--pixel_share", type=float, default=0.1)
    parser.add_argument("--spaces", nargs="+", default=["rgb", "hsv", "lab"], choices=COLOUR_SPACES)
    parser.add_argument("--max_iter", type=int, default=300)
    parser.add_argument("--max_leaf_nodes", type=int, default=63)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(ROOT / "results" / "colour_baseline.json"))
    args = parser.parse_args(argv)
    data = demo_config().data
    train, val = build_dataset(data, "train"), build_dataset(data, "val")
    start = time.perf_counter()
    features, labels = training_pixels(
        train, args.train_scenes, args.pixel_share, args.spaces, args.seed
    )
    classifier = HistGradientBoostingClassifier(
        max_iter=args.max_iter,
        max_leaf_nodes=args.max_leaf_nodes,
        early_stopping=False,
        random_state=args.seed,
    ).fit(features, labels)
    result = {"settings": vars(args), "training_pixels": int(labels.size)}
    result |= score(classifier, val, args.spaces)
    result["seconds"] = time.perf_counter() - start
    print(f"colour-only baseline ({', '.join(args.spaces)}; {labels.size} training pixels):")
    for name, iou in result["iou"].items():
        print(f"  {name:<11} IoU {iou:.3f}")
    print(f"  mIoU {result['mean_iou']:.4f}, pixel accuracy {result['pixel_accuracy']:.4f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
