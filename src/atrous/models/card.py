"""Model cards: the ``README.md`` that ``save_pretrained`` writes beside the weights, which the
Hugging Face Hub and ``atrous serve`` both show.

A card says what the model is (configuration, parameters, Mult-Adds), what it segments (classes
with their colours), how it was trained (data and recipe, from a :class:`TrainingSummary`) and how
well and how fast it runs (validation mIoU, measured latency), each only when known.
"""

from __future__ import annotations

import html
import math
from typing import Protocol

from atrous.models.config import ModelConfig
from atrous.models.profile import profile_model
from atrous.models.summary import TrainingSummary


class CardModel(Protocol):
    """What a card describes: a network (an ``nn.Module``, profiled) with its configuration,
    classes and training summary. A :class:`~atrous.models.model.DeepLab` is one; naming it by
    shape keeps the card free of an import of the model, which imports the card to save."""

    config: ModelConfig | None
    num_classes: int
    class_names: tuple[str, ...] | None
    palette: tuple[tuple[int, int, int], ...] | None
    training_summary: TrainingSummary | None


#: Input size for the card's Mult-Adds when no training crop is known (the paper's, Tables 3/5).
PAPER_INPUT = 513


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _swatch(colour: tuple[int, int, int]) -> str:
    """An inline colour square with its hex code (the code stays if a renderer drops styles)."""
    code = _hex(colour)
    return (
        f'<span style="display:inline-block;width:1em;height:1em;background:{code};'
        f'border:1px solid #888;vertical-align:middle"></span> `{code}`'
    )


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: HTML escaped, pipes escaped."""
    return html.escape(text).replace("|", "\\|")


def _percent(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _class_rows(model: CardModel, summary: TrainingSummary | None) -> list[str]:
    """The classes table: index, name, colour swatch and, when known, validation IoU."""
    names = model.class_names or tuple(f"class {i}" for i in range(model.num_classes))
    ious = summary.class_iou if summary is not None and summary.class_iou else None
    header = "| index | class | colour |" + (" val IoU (%) |" if ious else "")
    lines = [header, "|---|---|---|" + ("---:|" if ious else "")]
    for index, name in enumerate(names):
        colour = _swatch(model.palette[index]) if model.palette is not None else "—"
        row = f"| {index} | {_cell(name)} | {colour} |"
        lines.append(row + (f" {_percent(ious[index])} |" if ious else ""))
    return lines


def _training_lines(summary: TrainingSummary | None) -> list[str]:
    if summary is None:
        return ["Not recorded (this model was converted or saved outside `atrous train`)."]
    lines = [
        f"- data: `{summary.dataset}`, {summary.train_images} training images",
        f"- recipe: {summary.iterations} iterations, batch {summary.batch_size}, crop "
        f"{summary.crop_size}×{summary.crop_size}, {summary.optimizer} at "
        f"{summary.learning_rate:g} with poly decay, {summary.precision}",
    ]
    if summary.val_miou is not None:
        lines.append(
            f"- validation mIoU: **{_percent(summary.val_miou)}%** on `{summary.val_split}` "
            f"({summary.val_images} images, whole images, single scale, no flip)"
        )
    if summary.images_per_s is not None:
        lines.append(f"- training throughput: {summary.images_per_s:.1f} images/s (median)")
    if summary.latency_ms is not None:
        lines.append(
            f"- latency: {summary.latency_ms:.1f} ms per {summary.crop_size}×"
            f"{summary.crop_size} image (batch 1, eager fp32, {summary.latency_device})"
        )
    return lines


def model_card_text(model: CardModel) -> str:
    """The card's Markdown body (without the YAML header) for a built, possibly trained model."""
    config = model.config
    assert config is not None  # checked by save_pretrained before it gets here
    summary: TrainingSummary | None = model.training_summary
    side = summary.crop_size if summary is not None else PAPER_INPUT
    total = profile_model(model, (side, side)).total  # counted on the meta device: instant
    kind = "DeepLabV3+" if config.decoder else "DeepLabV3"
    lines = [
        f"# {kind} {config.backbone}, output stride {config.output_stride}",
        "",
        f"A {kind} semantic segmentation model (Chen et al., ECCV 2018, "
        "[arXiv:1802.02611](https://arxiv.org/abs/1802.02611)) saved by "
        "[atrous](https://pypi.org/project/atrous/).",
        "",
        "```python",
        "import atrous",
        "",
        'model = atrous.load("path/or/repo-id")  # model.safetensors + config.json',
        "```",
        "",
        "## Configuration",
        "",
        "| field | value |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | `{value}` |" for name, value in config.to_dict().items()]
    lines += [
        f"| parameters | {total.params / 1e6:.2f} M |",
        f"| Mult-Adds at {side}×{side} | {total.mult_adds / 1e9:.2f} G |",
        f"| input normalisation | mean {list(config.mean)}, std {list(config.std)} on [0, 1] RGB |",
        "",
        "## Classes",
        "",
        *_class_rows(model, summary),
        "",
        "## Training",
        "",
        *_training_lines(summary),
    ]
    return "\n".join(lines) + "\n"
