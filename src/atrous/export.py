"""Export for deployment: ONNX with dynamic batch, height and width (or one fixed size), checked
in ONNX Runtime; and ``torch.export`` programs.

The ONNX file carries what a runtime needs besides the graph in its metadata (``atrous``: JSON
with the model configuration, class names, palette and input normalisation), so ``atrous
predict --onnx model.onnx`` and the snippet in ``docs/deployment.md`` need no other file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: Key of the ONNX metadata entry that holds the model description.
METADATA_KEY = "atrous"
#: Input sizes of the parity check: two, neither a multiple of 16 nor square.
CHECK_SIZES = ((97, 129), (161, 113))


#: Batch, height and width are free in the exported graph.
_DYNAMIC = (
    {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC},
)
#: Only the batch is free (a graph for one image size).
_DYNAMIC_BATCH = ({0: torch.export.Dim.DYNAMIC},)


class ExportCheckError(RuntimeError):
    """The exported graph's outputs differ from the eager model's beyond the tolerance."""


@dataclass
class ExportReport:
    """Where the file went and how far its outputs are from the eager model's."""

    path: Path
    max_abs_diff: dict[tuple[int, int], float]


def model_metadata(
    model: nn.Module,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """What a runtime needs to use the exported graph: classes, colours, normalisation."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no .config; build it with atrous.create_model/build_model")
    class_names = class_names or getattr(model, "class_names", None)
    palette = palette or getattr(model, "palette", None)
    return {
        "config": config.to_dict(),
        "num_classes": config.num_classes,
        "class_names": list(class_names) if class_names else None,
        "palette": [list(c) for c in palette] if palette else None,
        "mean": list(config.mean),
        "std": list(config.std),
        "input": "float32 (N, 3, H, W), RGB on [0, 1] normalised by mean/std",
        "output": "float32 (N, num_classes, H, W) logits",
    }


def _write_atomically(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(
    model: nn.Module,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    opset: int = 18,
    check: bool = True,
    tolerance: float = 1e-4,
    size: tuple[int, int] | None = None,
) -> ExportReport:
    """Export ``model`` (eval mode, fp32) to ONNX with dynamic batch, height and width.

    ``size`` fixes height and width instead (batch stays free): ONNX Runtime plans such a graph
    better (the any-size graph measured 7% slower on DeepLabV3+ ResNet-101 at 512×512,
    ``docs/performance.md``).
    With ``check``, the file is run in ONNX Runtime on random images at two sizes (or two batch
    sizes at ``size``) and compared with the eager model; a difference above ``tolerance`` is an
    error.
    """
    import onnx

    path = Path(path)
    model = model.eval().float()
    sizes = CHECK_SIZES if size is None else (tuple(size), tuple(size))
    example = torch.randn(2, 3, *sizes[0])  # batch 2: a batch of 1 would specialise
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=_DYNAMIC if size is None else _DYNAMIC_BATCH,
        verbose=False,
    )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(model_metadata(model, class_names, palette))
    _write_atomically(path, lambda tmp: onnx.save(proto, tmp))
    report = ExportReport(path, {})
    if check:
        network = OnnxNetwork(path)
        generator = torch.Generator().manual_seed(0)
        for batch, (height, width) in enumerate(sizes, start=1):
            images = torch.randn(batch, 3, height, width, generator=generator)
            with torch.no_grad():
                expected = model(images)
            difference = (network(images) - expected).abs().max().item()
            report.max_abs_diff[(height, width)] = max(
                difference, report.max_abs_diff.get((height, width), 0.0)
            )
            if not difference <= tolerance:
                raise ExportCheckError(
                    f"ONNX output differs from the eager model by {difference:.3g} at "
                    f"{height}×{width} (tolerance {tolerance:g})"
                )
    return report


def export_program(model: nn.Module, path: str | Path) -> Path:
    """Save a ``torch.export`` program (``.pt2``) with dynamic batch, height and width."""
    path = Path(path)
    model = model.eval().float()
    example = torch.randn(2, 3, *CHECK_SIZES[0])  # batch 2: a batch of 1 would specialise
    program = torch.export.export(model, (example,), dynamic_shapes=_DYNAMIC)
    _write_atomically(path, lambda tmp: torch.export.save(program, tmp))
    return path


class OnnxNetwork:
    """An ONNX Runtime session behaving like the network: (N, 3, H, W) tensor → logits tensor."""

    def __init__(
        self, path: str | Path, providers: Sequence[str] | None = None, options: Any = None
    ) -> None:
        """``options``: an ``onnxruntime.SessionOptions`` (threads, optimisation level)."""
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as error:
            raise ValueError(f"cannot load ONNX model {path}: {error}") from None
        self.input_name = self.session.get_inputs()[0].name
        custom = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = json.loads(custom.get(METADATA_KEY, "{}"))
        config = self.metadata.get("config", {})
        #: What inference needs to pad inputs to aligned sizes (None: unknown, run as given).
        self.output_stride: int | None = config.get("output_stride")
        self.align_corners: bool = config.get("align_corners", True)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().numpy()
        (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(array)})
        return torch.from_numpy(logits).to(images.device)
