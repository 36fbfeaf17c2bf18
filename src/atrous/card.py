"""Model cards: the ``README.md`` that ``save_pretrained`` writes beside the weights, which the
Hugging Face Hub and ``atrous serve`` both show.

A card says what the model is (configuration, parameters, Mult-Adds), what it segments (classes
with their colours), how it was trained (data and recipe, from a :class:`TrainingSummary`) and how
well and how fast it runs (validation mIoU, measured latency), each only when known.
"""

from __future__ import annotations

import dataclasses
import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atrous.profile import profile_model

if TYPE_CHECKING:
    from atrous.model import DeepLab

#: Input size for the card's Mult-Adds when no training crop is known (the paper's, Tables 3/5).
PAPER_INPUT = 513


@dataclass(frozen=True)
class TrainingSummary:
    """How a saved model was trained and how it scored; kept in ``config.json`` and the card."""

    dataset: str  # the dataset's name in atrous (voc_aug, cityscapes, folder, synthetic, ...)
    train_images: int  # images in the training split
    iterations: int  # optimizer steps
    batch_size: int  # global batch
    crop_size: int  # training crop side in pixels
    optimizer: str  # sgd or adamw
    learning_rate: float  # peak learning rate (poly schedule)
    precision: str  # fp32, bf16 or fp16 autocast
    val_split: str | None = None  # the split validation scored
    val_images: int | None = None  # images in it
    val_miou: float | None = None  # best validation mIoU, whole images, single scale
    class_iou: tuple[float | None, ...] | None = None  # per class at that point (None: absent)
    latency_ms: float | None = None  # median batch-1 forward at crop size, eval mode
    latency_device: str | None = None  # where the latency was measured

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.class_iou is not None:
            data["class_iou"] = list(self.class_iou)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TrainingSummary:
        """Read back :meth:`to_dict`; unknown or missing keys are a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        if unknown := sorted(set(data) - names):
            raise ValueError(f"{source}: unknown training keys {unknown}")
        if missing := sorted(required - set(data)):
            raise ValueError(f"{source}: training summary lacks {missing}")
        values = dict(data)
        if values.get("class_iou") is not None:
            values["class_iou"] = tuple(values["class_iou"])
        return cls(**values)


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


def model_card_text(model: DeepLab) -> str:
    """The card's Markdown body (without the YAML header) for a built, possibly trained model."""
    config = model.config
    assert config is not None  # checked by save_pretrained before it gets here
    summary: TrainingSummary | None = model.training_summary
    side = summary.crop_size if summary is not None else PAPER_INPUT
    total = profile_model(model, (side, side)).total  # counted on the meta device: instant
    kind = "DeepLabV3+" if config.decoder else "DeepLabV3"
    lines = [
        f"# {kind} {config.backbone}, output stride {model.output_stride}",
        "",
        f"A {kind} semantic segmentation model (Chen et al., ECCV 2018, "
        "[arXiv:1802.02611](https://arxiv.org/abs/1802.02611)) saved by "
        "[atrous](https://pypi.org/project/atrous/).",
        "",
        "```python",
        "import atrous",
        "",
        'model = atrous.load_model("path/or/repo-id")  # model.safetensors + config.json',
        "```",
        "",
        "## Configuration",
        "",
        "| field | value |",
        "|---|---|",
    ]
    fields = config.to_dict() | {"output_stride": model.output_stride}
    lines += [f"| `{name}` | `{value}` |" for name, value in fields.items()]
    lines += [
        f"| parameters | {total.params / 1e6:.2f} M |",
        f"| Mult-Adds at {side}×{side} | {total.mult_adds / 1e9:.2f} G |",
        f"| input normalisation | mean {list(config.mean)}, std {list(config.std)} on [0, 1] RGB |",
        "",
        "## Classes",
        "",
    ]
    names = model.class_names or tuple(f"class {i}" for i in range(model.num_classes))
    ious = summary.class_iou if summary is not None and summary.class_iou else None
    header = "| index | class | colour |" + (" val IoU (%) |" if ious else "")
    lines += [header, "|---|---|---|" + ("---:|" if ious else "")]
    for index, name in enumerate(names):
        colour = _swatch(model.palette[index]) if model.palette is not None else "—"
        row = f"| {index} | {_cell(name)} | {colour} |"
        lines.append(row + (f" {_percent(ious[index])} |" if ious else ""))
    lines += ["", "## Training", ""]
    if summary is None:
        lines.append("Not recorded (this model was converted or saved outside `atrous train`).")
    else:
        lines += [
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
        if summary.latency_ms is not None:
            lines.append(
                f"- latency: {summary.latency_ms:.1f} ms per {summary.crop_size}×"
                f"{summary.crop_size} image (batch 1, eager fp32, {summary.latency_device})"
            )
    return "\n".join(lines) + "\n"
