"""The fast path's fixed-size ONNX graph before and after folding its resize sizes (issue 25).

    python benchmarks/fixed_graph.py                          # R-101 and MobileNetV2, 512×512
    python benchmarks/fixed_graph.py --networks mnv2 --rounds 5

Before: the BN-folded network exported at one size with a free batch, as the fast path wrote
it until now (each ``Resize`` takes sizes computed at run time: ``Shape`` → ``Concat``). After:
``atrous.export.onnx.export_onnx(..., size=...)``, whose resizes take constant scales. With
R-101, smp's own ONNX export of the same weights (the network atrous converts) runs beside
them. Each graph runs in ONNX Runtime with the fast path's session options; the three take
turns round by round (``harness.interleaved``), batch 1. Also counted: the layout reorders and
resize kernels in ONNX Runtime's optimised graph. Writes ``results/fixed_graph.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import harness
import onnx
import onnxruntime
import torch
from contenders import OnnxFile
from peers import calibrate_bn, smp_model

import atrous
from atrous.convert.torch_models import from_smp
from atrous.export.graph import op_types
from atrous.export.onnx import OnnxNetwork, compare_logits, export_onnx
from atrous.inference.fast import fold_batchnorm, session_options

SIZE = (512, 512)


def _r101() -> tuple[atrous.DeepLab, torch.nn.Module | None]:
    peer = smp_model("resnet101", 16)
    return from_smp(peer), peer


def _mnv2() -> tuple[atrous.DeepLab, torch.nn.Module | None]:
    torch.manual_seed(0)
    model = atrous.create_model("deeplabv3plus_mobilenetv2", num_classes=21)
    return calibrate_bn(model, 129), None


NETWORKS = {
    "r101": ("DeepLabV3+ ResNet-101 OS16 (smp's, converted)", _r101),
    "mnv2": ("DeepLabV3+ MobileNetV2 OS16", _mnv2),
}


def optimised_ops(path: Path) -> dict[str, int]:
    """Layout reorders and resize kernels in ONNX Runtime's optimised graph of ``path``."""
    options = session_options()
    options.optimized_model_filepath = str(path.with_suffix(".ort.onnx"))
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = op_types(onnx.load(options.optimized_model_filepath))
    kept = ("ReorderInput", "ReorderOutput", "Resize", "Upsample", "Shape")
    return {op: n for op in kept if (n := sum(v for k, v in counts.items() if k.endswith(op)))}


def graphs(key: str, folder: Path) -> tuple[dict[str, Path], torch.nn.Module]:
    """The row's ONNX files: before, after and (R-101) smp's own; and the eager model."""
    model, peer = NETWORKS[key][1]()
    folded = fold_batchnorm(model.eval())
    example = torch.randn(1, 3, *SIZE)
    before = OnnxFile(folded, example, folder, f"{key}.before").path
    after = export_onnx(folded, folder / f"{key}.after.onnx", size=SIZE).path
    files = {"before (sizes at run time)": before, "after (constant scales)": after}
    if peer is not None:
        files["smp's own export"] = OnnxFile(peer.eval(), example, folder, f"{key}.smp").path
    return files, model


def measure(key: str, rounds: int, folder: Path, log) -> dict:
    files, model = graphs(key, folder)
    example = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(example)
    runners = {name: OnnxNetwork(path, options=session_options()) for name, path in files.items()}
    rows = {}
    for name, runner in runners.items():
        runner(example)  # warm-up
        agreement = compare_logits(runner(example), reference)
        graph = op_types(onnx.load(files[name]))
        rows[name] = {
            "graph": {op: graph[op] for op in ("Shape", "Concat", "Resize") if graph[op]},
            "optimised": optimised_ops(files[name]),
            "relative_diff": agreement.relative_diff,
        }
        log(f"{key} {name}: {rows[name]}")
    calls = [lambda r=r: r(example) for r in runners.values()]
    times = harness.interleaved(calls, rounds, harness.Clock(torch.device("cpu")))
    for name, record in zip(runners, times, strict=True):
        rows[name]["median_ms"] = harness.median_ms(record)
        rows[name]["times_ms"] = [1000 * t for t in record]
    return {"title": NETWORKS[key][0], "size": list(SIZE), "rounds": rounds, "graphs": rows}


def markdown(results: dict) -> str:
    lines = []
    for row in results["networks"].values():
        lines += [f"### {row['title']}, {row['size'][0]}×{row['size'][1]}", ""]
        lines += ["| graph | median ms | ratio | Shape/Concat/Resize | ORT optimised |"]
        lines += ["|---|---:|---:|---|---|"]
        base = next(iter(row["graphs"].values()))["median_ms"]
        for name, graph in row["graphs"].items():
            nodes = ", ".join(f"{k} {v}" for k, v in graph["graph"].items())
            optimised = ", ".join(f"{k} {v}" for k, v in graph["optimised"].items())
            ratio = graph["median_ms"] / base
            lines.append(
                f"| {name} | {graph['median_ms']:.1f} | {ratio:.3f} | {nodes} | {optimised} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--json", default=str(harness.RESULTS / "fixed_graph.json"))
    args = parser.parse_args(argv)
    log = harness.logger()
    results = {"onnxruntime": onnxruntime.__version__, "threads": torch.get_num_threads()}
    results["networks"] = {}
    with tempfile.TemporaryDirectory(prefix="atrous-fixed-") as folder:
        for key in args.networks:
            results["networks"][key] = measure(key, args.rounds, Path(folder), log)
    table = markdown(results)
    harness.write_results(args.json, results, Path(args.json).with_suffix(".md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
