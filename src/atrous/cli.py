"""The ``atrous`` command: a thin layer over the library's functions.

atrous models                                  # named configurations
atrous profile                                 # X-65 DeepLabV3+ at 513×513, OS16
atrous profile --model deeplabv3plus_resnet101_beta --output_stride 8 --separable false
"""

from __future__ import annotations

import sys

import torch
from jsonargparse import CLI
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from atrous.config import ModelConfig
from atrous.data import DataConfig, DataError, SyntheticScenes, build_dataset
from atrous.data.checks import check_dataset
from atrous.demo import run_demo
from atrous.profile import profile_model
from atrous.train import OptimConfig, RunConfig, TrainConfig
from atrous.train import train as run_training
from atrous.zoo import create_model, get_config, list_models

console = Console()


def models() -> None:
    """List the named model configurations with their parameters and Mult-Adds at 513×513."""
    table = Table()
    table.add_column("name", no_wrap=True)
    for column in ("decoder", "separable", "params (M)", "Mult-Adds (G)"):
        table.add_column(column, justify="right")
    for name in list_models():
        config = get_config(name)
        with torch.device("meta"):
            model = create_model(name)
        total = profile_model(model, (513, 513)).total
        table.add_row(
            name,
            "yes" if config.decoder else "no",
            "yes" if config.separable else "no",
            f"{total.params / 1e6:.2f}",
            f"{total.mult_adds / 1e9:.2f}",
        )
    console.print(table)
    console.print("Mult-Adds for 21 classes at output stride 16, as PyTorch computes them.")


def profile(
    model: str = "deeplabv3plus_xception65",
    height: int = 513,
    width: int = 513,
    output_stride: int = 16,
    num_classes: int = 21,
    separable: bool | None = None,
) -> None:
    """Count parameters and Multiply-Adds per module group (backbone, ASPP, decoder, classifier).

    Args:
        model: a named configuration (see ``atrous models``).
        height: input height in pixels.
        width: input width in pixels.
        output_stride: 8, 16 or 32.
        num_classes: number of output classes.
        separable: separable ASPP/decoder convs; default: the named configuration's.
    """
    with torch.device("meta"):
        net = create_model(
            model, num_classes=num_classes, output_stride=output_stride, separable=separable
        )
    result = profile_model(net, (height, width))
    console.print(
        f"{model}: {height}×{width}, output stride {output_stride}, {num_classes} classes, "
        f"separable={net.config.separable}"
    )
    console.print(Markdown(result.to_markdown()))
    console.print(
        "One Mult-Add = one multiply + one add. 'As TF1 computes' counts each dilated conv on the "
        "grid TensorFlow 1's SpaceToBatch pads it to, as the paper's tables do."
    )


def demo(output_dir: str = "runs/demo", iterations: int | None = None) -> None:
    """Train a small DeepLabV3+ on built-in scenes, evaluate it, write predictions and curves.

    Args:
        output_dir: where checkpoints, curves and predictions go.
        iterations: training steps (default: the demo recipe's).
    """
    result = run_demo(output_dir, iterations)
    scores = result.scores
    table = Table("class", "IoU")
    for name, iou in zip(SyntheticScenes.classes, scores.iou, strict=True):
        table.add_row(name, f"{iou:.3f}")
    console.print(table)
    console.print(
        f"validation mIoU {scores.mean_iou:.4f}, pixel accuracy {scores.pixel_accuracy:.4f} "
        f"({result.seconds / 60:.1f} min)"
    )
    console.print(f"curves:      {result.output_dir / 'curves.png'}")
    console.print(
        f"predictions: {result.predictions[0].parent} (grid.png: image | truth | prediction)"
    )
    console.print(f"checkpoints: {result.output_dir / 'best.pt'}, {result.output_dir / 'last.pt'}")


def train(
    model: ModelConfig = ModelConfig(),  # noqa: B008
    data: DataConfig = DataConfig(),  # noqa: B008
    optim: OptimConfig = OptimConfig(),  # noqa: B008
    run: RunConfig = RunConfig(),  # noqa: B008
) -> None:
    """Train a model; any field can come from --config YAML files and --section.field flags.

    Args:
        model: the model configuration (see ``atrous models`` for named ones).
        data: dataset and augmentation.
        optim: optimizer and learning-rate schedule.
        run: iterations, batch, precision, BN mode, logging, output folder.
    """
    result = run_training(TrainConfig(model, data, optim, run))
    if result.scores is not None and result.iteration == run.iterations:
        console.print(f"final validation mIoU {result.scores.mean_iou:.4f}")
    console.print(f"results in {result.output_dir}")


def check_data(
    dataset: str,
    root: str | None = None,
    sbd_root: str | None = None,
    split: str = "train",
) -> int:
    """Check every image/mask pair of a dataset and report class pixel frequencies.

    Args:
        dataset: synthetic, voc, voc_aug, cityscapes, ade20k or folder.
        root: the dataset folder.
        sbd_root: the SBD folder (voc_aug only).
        split: the split to check.
    """
    config = DataConfig(dataset=dataset, root=root, sbd_root=sbd_root, train_split=split)
    data = build_dataset(config, "train")
    report = check_dataset(data)
    table = Table("class", "pixels", "share")
    for name, pixels, share in zip(report.classes, report.pixels, report.frequencies, strict=True):
        table.add_row(name, str(int(pixels)), f"{100 * share:.2f}%")
    console.print(table)
    console.print(f"{report.samples} of {len(data)} samples valid; {report.ignored} ignored pixels")
    for error in report.errors:
        console.print(f"bad: {error}", style="red", markup=False, soft_wrap=True)
    return 1 if report.errors else 0


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``atrous`` command."""
    try:
        commands = {
            "demo": demo,
            "train": train,
            "check-data": check_data,
            "models": models,
            "profile": profile,
        }
        status = CLI(commands, args=args)
    except (ValueError, DataError) as error:
        console.print(f"error: {error}", style="bold red", markup=False, soft_wrap=True)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
