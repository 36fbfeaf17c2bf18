"""The contenders of a row: every way that works to run its two networks on a device. The peer:
eager (and, on full rows, channels_last with BN folded, torch.compile with freezing, bf16), and
on the CPU ONNX Runtime fp32 and int8 (static QDQ, per-channel) of its dynamo export; atrous:
eager and ``atrous.optimize_for_inference`` at fp32, bf16 (fp16 on a GPU) and int8, and on the
CPU its ``.tflite`` export in LiteRT (XNNPACK) at fp32 and int8 where litert-torch is installed."""

from __future__ import annotations

import copy
import importlib.util
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import litert_paths
import torch
from harness import Runner
from peers import Row
from torch import nn

import atrous
from atrous.export.onnx import OnnxNetwork
from atrous.inference.fast import fold_batchnorm, quantize_onnx, session_options
from atrous.inference.predict import Segmenter, fast_segmenter
from atrous.inference.strategies import InferenceConfig


@dataclass
class Contender:
    """One way to run one network: how to build it, and what was measured."""

    side: str  # "atrous" or "peer"
    path: str  # e.g. "ORT int8 (QDQ)"
    precision: str  # fp32, bf16, fp16 or int8: which roofline applies
    build: Callable[[], Runner]
    throughput: bool = False  # also measure images/s at batch 4
    probe: Callable[[], Runner] | None = None  # a fresh runner whose first call shows its memory
    run: Runner | None = None
    error: str | None = None
    build_s: float = float("nan")
    times: list[float] = field(default_factory=list)
    batch_times: list[float] = field(default_factory=list)
    memory_mib: float = float("nan")
    max_abs_diff: float = float("nan")
    agreement: float = float("nan")
    choice: str | None = None  # the default path: the runtimes it measured and the one chosen

    @property
    def latency_ms(self) -> float:
        return harness.median_ms(self.times)

    @property
    def images_per_s(self) -> float:
        return 4 / statistics.median(self.batch_times) if self.batch_times else float("nan")


def compiled(model: nn.Module, device: torch.device, example: torch.Tensor) -> Runner:
    """torch.compile with frozen weights (inductor folds BN and picks conv layouts)."""
    module = torch.compile(model.to(device), options={"freezing": True})
    run = harness.eager(module, device)
    run(example)  # compiles
    return run


class OnnxFile:
    """A peer exported the way its users do: torch.onnx dynamo export, opset 18, dynamic batch."""

    def __init__(self, model: nn.Module, example: torch.Tensor, folder: Path, name: str) -> None:
        import onnx

        self.path = folder / f"{name}.onnx"
        program = torch.onnx.export(
            model.eval().cpu(),
            (example.cpu().expand(2, -1, -1, -1),),  # batch 2: a batch of 1 would specialise
            dynamo=True,
            opset_version=18,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
            verbose=False,
        )
        onnx.save(program.model_proto, self.path)
        self.int8: Path | None = None

    def session(self, int8: bool = False) -> Runner:
        return OnnxNetwork(self.int8 if int8 else self.path, options=session_options())

    def quantize(self, calibration: list[torch.Tensor]) -> Runner:
        self.int8 = quantize_onnx(self.path, self.path.with_suffix(".int8.onnx"), calibration)
        return self.session(int8=True)


def fast(
    model: atrous.DeepLab, precision: str, calibration: list[torch.Tensor], **kwargs: Any
) -> Runner:
    """atrous's fast path as every command builds it: the model's Segmenter through
    ``fast_segmenter`` (examples are already at their sizes: no alignment padding). The first
    calibration batch is the agreement check's example."""
    segmenter = Segmenter(
        model,
        model.config.mean,
        model.config.std,
        model.num_classes,
        inference=InferenceConfig(align=False),
        device=next(model.parameters()).device,
    )
    return fast_segmenter(segmenter, precision, calibration, **kwargs).network


def contenders(
    row: Row,
    model: atrous.DeepLab,
    peer: nn.Module | None,
    device: torch.device,
    examples: dict[str, torch.Tensor],
    folder: Path,
    all_paths: bool,
) -> list[Contender]:
    """Every way to run the row's two networks on ``device`` (the peer's eager variants and
    torch.compile only on full rows, or with ``all_paths``)."""
    ours = examples["atrous"]
    calibration = [torch.randn(1, 3, *ours.shape[-2:]) for _ in range(2)]
    items: list[Contender] = []
    if peer is not None:
        items += _peer_eager(row, peer, device, examples["peer"], all_paths)
        if device.type == "cpu":
            items += _peer_onnx(row, peer, examples["peer"], calibration, folder, all_paths)
    items += _ours(row, model, device, ours, calibration, folder, all_paths)
    if device.type == "cpu" and importlib.util.find_spec("openvino") is not None:
        items += _openvino(row, model, calibration, folder, all_paths)
    return items


def _peer_eager(
    row: Row, peer: nn.Module, device: torch.device, theirs: torch.Tensor, all_paths: bool
) -> list[Contender]:
    items = [Contender("peer", "eager fp32", "fp32", lambda: harness.eager(peer, device), True)]
    if not (row.full or all_paths):
        return items
    crop = theirs[:, :, :64, :64]
    return [
        *items,
        Contender(
            "peer",
            "eager fp32, channels_last, BN folded",
            "fp32",
            lambda: harness.eager(fold_batchnorm(peer, crop), device, True),
        ),
        Contender(
            "peer",
            "torch.compile (freezing)",
            "fp32",
            lambda: compiled(copy.deepcopy(peer), device, theirs),
        ),
        Contender(
            "peer",
            "eager bf16 autocast, channels_last, BN folded",
            "bf16",
            lambda: harness.eager(fold_batchnorm(peer, crop), device, True, "bf16"),
        ),
    ]


def _peer_onnx(
    row: Row,
    peer: nn.Module,
    theirs: torch.Tensor,
    calibration: list[torch.Tensor],
    folder: Path,
    all_paths: bool,
) -> list[Contender]:
    """The peer exported by the same dynamo exporter, in ONNX Runtime fp32 and int8."""
    onnx_file: dict[str, OnnxFile] = {}

    def peer_onnx() -> Runner:
        onnx_file["fp32"] = OnnxFile(peer, theirs, folder, f"{row.key}_peer")
        return onnx_file["fp32"].session()

    def peer_int8() -> Runner:
        if "fp32" not in onnx_file:
            peer_onnx()
        peer_calibration = [c[..., : theirs.shape[-2], : theirs.shape[-1]] for c in calibration]
        return onnx_file["fp32"].quantize(peer_calibration)

    items = [
        Contender(
            "peer",
            "ONNX Runtime fp32 (dynamo export, opset 18)",
            "fp32",
            peer_onnx,
            True,
            lambda: onnx_file["fp32"].session(),
        ),
    ]
    if row.int8 or all_paths:
        items.append(
            Contender(
                "peer",
                "ONNX Runtime int8 (static QDQ, per-channel)",
                "int8",
                peer_int8,
                True,
                lambda: onnx_file["fp32"].session(int8=True),
            )
        )
    return items


def _ours(
    row: Row,
    model: atrous.DeepLab,
    device: torch.device,
    ours: torch.Tensor,
    calibration: list[torch.Tensor],
    folder: Path,
    all_paths: bool,
) -> list[Contender]:
    """atrous eager and through optimize_for_inference at each precision: its default, which on
    the CPU measures the installed runtimes (fp32 and int8) and remembers its choice (the memory
    probe rebuilds from that choice)."""
    low = "bf16" if device.type == "cpu" else "fp16"
    items = [
        Contender("atrous", "eager fp32", "fp32", lambda: harness.eager(model, device), True),
        Contender(
            "atrous",
            "optimize_for_inference fp32",
            "fp32",
            lambda: fast(model, "fp32", [ours]),
            True,
            lambda: fast(model, "fp32", [ours]),  # the remembered choice, built alone
        ),
        Contender("atrous", f"optimize_for_inference {low}", low, lambda: fast(model, low, [ours])),
    ]
    if device.type == "cpu" and litert_paths.available():
        items += _litert(row, model, ours, calibration, folder, all_paths)
    if device.type == "cpu" and (row.int8 or all_paths):
        items.append(
            Contender(
                "atrous",
                "optimize_for_inference int8",
                "int8",
                lambda: fast(model, "int8", calibration),
                True,
                lambda: fast(model, "int8", calibration),
            )
        )
    return items


def _openvino(
    row: Row,
    model: atrous.DeepLab,
    calibration: list[torch.Tensor],
    folder: Path,
    all_paths: bool,
) -> list[Contender]:
    """atrous's OpenVINO IR as ``atrous export --format openvino`` writes it (checked), run by
    :class:`OpenvinoNetwork` at f32 (as checked), at the CPU plugin's default precision (bf16
    on CPUs with native bf16), and NNCF int8; one thread per core, as ONNX Runtime gets."""
    from atrous.export.openvino import (
        OpenvinoNetwork,
        default_inference_precision,
        export_openvino,
    )

    paths = {p: folder / f"{row.key}_openvino_{p}.xml" for p in ("fp32", "int8")}
    threads = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}

    def network(precision: str, hint: str | None = "f32") -> Runner:
        if not paths[precision].is_file():
            export_openvino(  # int8: agreement measured below, as for ONNX Runtime int8
                model,
                paths[precision],
                precision=precision,
                calibration=calibration,
                check=precision == "fp32",
            )
        return OpenvinoNetwork(paths[precision], inference_precision=hint, config=threads)

    default = default_inference_precision()  # bf16 on CPUs with native bf16
    items = [
        Contender("atrous", "OpenVINO fp32 IR (f32)", "fp32", lambda: network("fp32"), True),
        Contender(
            "atrous",
            f"OpenVINO fp32 IR (plugin default: {default})",
            "bf16" if default == "bf16" else "fp32",
            lambda: network("fp32", None),
        ),
    ]
    if row.int8 or all_paths:
        items.append(
            Contender("atrous", "OpenVINO int8 (NNCF)", "int8", lambda: network("int8"), True)
        )
    return items


def _litert(
    row: Row,
    model: atrous.DeepLab,
    ours: torch.Tensor,
    calibration: list[torch.Tensor],
    folder: Path,
    all_paths: bool,
) -> list[Contender]:
    """atrous's .tflite export in the LiteRT interpreter (XNNPACK), fp32 and int8."""
    size = tuple(ours.shape[-2:])
    precisions = ("fp32", "int8") if row.int8 or all_paths else ("fp32",)
    return [
        Contender(
            "atrous",
            f"LiteRT {precision} (XNNPACK)",
            precision,
            lambda p=precision: litert_paths.tflite_runner(
                model, size, p, calibration, folder / f"{row.key}.{p}.tflite"
            ),
        )
        for precision in precisions
    ]
