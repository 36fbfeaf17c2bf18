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

from atrous.profile import profile_model
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


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``atrous`` command."""
    try:
        CLI([models, profile], args=args, as_positional=False)
    except ValueError as error:
        console.print(f"[bold red]error:[/] {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
