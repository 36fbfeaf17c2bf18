"""atrous beside every way a user runs a peer model, in one run on one machine (issue 8).

    python benchmarks/run.py                      # the default rows: under 10 minutes on 2 cores
    python benchmarks/run.py --rows r101_os16_512 --rounds 9
    python benchmarks/run.py --rows all           # every configuration (longer)
    python benchmarks/run.py --device cuda        # on a GPU: CUDA events, AMP, cudnn.benchmark

For each row (a configuration and input size) the atrous network and its peer (the same network
converted from segmentation_models_pytorch or torchvision, or the nearest peer configuration;
random weights, BN statistics set from two random images so logits are of a trained model's
scale) are built every way that works: eager, channels_last with BN folded, torch.compile
(freezing), ONNX Runtime fp32 and int8 (static QDQ, per-channel) for the peer;
``atrous.optimize_for_inference`` at fp32, bf16 and int8 for atrous. Then, interleaving the
contenders round by round so that drifts of the machine hit all of them alike:

- latency: median of ``--rounds`` batch-1 calls after two warm-up calls;
- images/s at batch 4 (selected paths), and peak memory of one call (resident memory above the
  level before it, sampled every millisecond, after glibc has handed free memory back);
- one training step (forward + backward + SGD, batch 2, 321×321; smp needs 320×320), and at OS8
  the same step with activation checkpointing;
- the roofline: Mult-Adds ÷ the throughput of a reference conv (3×3, 256→256 at 65×65) at that
  precision, timed in the same interleaved rounds as the row's contenders.

It prints a Markdown table with ratios (atrous ÷ best peer path, ÷ roofline) and writes JSON
(``--json``, default benchmarks/results/latest.json). docs/performance.md holds the latest table.

The pieces, each answering one question: ``peers.py`` (the rows and how each side is built),
``contenders.py`` (every way to run a row's networks), ``roofline.py`` (the reference conv),
``train_steps.py`` (the training step; runnable on its own), ``harness.py`` (timing,
interleaving, memory, reporting).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import harness
import torch
from contenders import Contender, contenders
from peers import DEFAULT_ROWS, ROWS, Row
from roofline import CONV_MACS, conv_probe, conv_throughput, precisions_for
from torch import nn
from train_steps import measure_training, training_lines

from atrous.models.profile import describe_device, profile_model

# ---------------------------------------------------------------------------- one row


def _row_networks(row: Row, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict]:
    """The row's two networks in eval mode on ``device``, and their example inputs."""
    torch.manual_seed(0)
    model, peer = row.build()
    model = model.to(device).eval()
    peer = peer.to(device).eval() if peer is not None else None
    generator = torch.Generator().manual_seed(1)
    example = torch.randn(1, 3, *row.size, generator=generator).to(device)
    peer_example = example
    if row.peer_size:
        peer_example = example[..., : row.peer_size[0], : row.peer_size[1]].contiguous()
    return model, peer, {"atrous": example, "peer": peer_example}


def _row_info(row: Row, model: nn.Module, peer: nn.Module | None) -> dict[str, Any]:
    profile = profile_model(model, row.size).total
    info: dict[str, Any] = {
        "row": row.key,
        "title": row.title,
        "size": list(row.size),
        "atrous": {"params": profile.params, "mult_adds": profile.mult_adds},
        "peer_name": row.peer_name,
        "same_network": row.same_network,
    }
    if peer is not None:
        peer_profile = profile_model(peer, row.peer_size or row.size).total
        info["peer"] = {"params": peer_profile.params, "mult_adds": peer_profile.mult_adds}
        info["peer_size"] = list(row.peer_size or row.size)
    return info


def _build_and_check(
    items: list[Contender], examples: dict, references: dict, device: torch.device, log: Callable
) -> list[Contender]:
    """Build each contender, compare it with its eager reference, measure its peak memory;
    a path that does not work here is reported, not fatal. Returns the working ones."""
    for item in items:
        start = time.perf_counter()
        try:
            item.run = item.build()
            item.run(examples[item.side])  # warm-up 1
        except Exception as error:
            item.error = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            log(f"  {item.side} {item.path}: failed ({item.error})")
            continue
        item.build_s = time.perf_counter() - start
        item.choice = getattr(getattr(item.run, "report", None), "choice", None)
        output = torch.as_tensor(item.run(examples[item.side])).float().cpu()  # warm-up 2
        reference = references[item.side].cpu()
        item.max_abs_diff = (output - reference).abs().max().item()
        item.agreement = (output.argmax(1) == reference.argmax(1)).float().mean().item()
        log(f"  built {item.side} {item.path} in {item.build_s:.1f} s")
    ready = [item for item in items if item.run is not None]
    for item in ready:
        runner = item.probe() if item.probe is not None else item.run
        with harness.PeakMemory(device) as memory:
            runner(examples[item.side])
        item.memory_mib = memory.mib
        del runner
    return ready


def _time_rounds(
    ready: list[Contender],
    examples: dict,
    device: torch.device,
    rounds: int,
    precisions: tuple,
    batch: bool,
) -> dict[str, float]:
    """Latency rounds, interleaving contenders and the reference conv (so the roofline sees the
    machine as it was); with ``batch``, batch-4 throughput too. Returns the conv throughput."""
    clock = harness.Clock(device)
    probes = {precision: conv_probe(device, precision) for precision in precisions}
    probe_times: dict[str, list[float]] = {precision: [] for precision in precisions}
    calls = [lambda item=item: item.run(examples[item.side]) for item in ready]
    for _ in range(rounds):
        for item, times in zip(ready, harness.interleaved(calls, 1, clock), strict=True):
            item.times += times
        for precision, probe in probes.items():
            time.sleep(harness.PAUSE_S)
            probe_times[precision] += [clock(probe) for _ in range(3)]
    batch_items = [item for item in ready if item.throughput and batch]
    batches = {item.side: examples[item.side].expand(4, -1, -1, -1).contiguous() for item in ready}
    calls = [lambda item=item: item.run(batches[item.side]) for item in batch_items]
    for call in calls:
        call()  # warm-up at batch 4
    for item, times in zip(batch_items, harness.interleaved(calls, 3, clock), strict=True):
        item.batch_times = times
    return {p: CONV_MACS / statistics.median(t) for p, t in probe_times.items()}


def _contender_record(item: Contender, references: dict) -> dict[str, Any]:
    return {
        "side": item.side,
        "path": item.path,
        "precision": item.precision,
        "latency_ms": item.latency_ms,
        "times_ms": [1000 * t for t in item.times],
        "images_per_s_batch4": item.images_per_s,
        "memory_mib": item.memory_mib,
        "build_s": item.build_s,
        "max_abs_diff": item.max_abs_diff,
        "logit_scale": references[item.side].abs().max().item(),
        "argmax_agreement": item.agreement,
        "error": item.error,
        "choice": item.choice,
    }


def run_row(
    row: Row,
    device: torch.device,
    rounds: int,
    folder: Path,
    log: Callable,
    all_paths: bool,
    precisions: tuple[str, ...],
    only: Sequence[str] = (),
) -> dict:
    """Every contender of ``row`` (or those matching ``only``): built, checked, timed side by
    side; training steps too."""
    rounds = row.rounds or rounds
    model, peer, examples = _row_networks(row, device)
    info = _row_info(row, model, peer)
    with torch.no_grad():
        references = {
            "atrous": model(examples["atrous"]).float(),
            "peer": peer(examples["peer"]).float() if peer is not None else None,
        }
    items = contenders(row, model, peer, device, examples, folder, all_paths)
    if only:  # a subset of the paths, by substrings of "side path"
        items = [i for i in items if any(o in f"{i.side} {i.path}" for o in only)]
    ready = _build_and_check(items, examples, references, device, log)
    info["conv_throughput"] = _time_rounds(ready, examples, device, rounds, precisions, row.full)
    log(f"  latency: {rounds} rounds done")
    info["contenders"] = [_contender_record(item, references) for item in items]
    if row.train:
        info["training"] = measure_training(row, model, peer, device, 2)
        log("  training steps done")
    return info


# ---------------------------------------------------------------------------- report


def _row_heading(row: dict) -> list[str]:
    macs = row["atrous"]["mult_adds"]
    peer = "; no peer"
    if "peer" in row:
        kind = " (the same network)" if row["same_network"] else " (nearest configuration)"
        peer = (
            f"; peer ({row['peer_name']}, {row['peer_size'][0]}×{row['peer_size'][1]}): "
            f"{row['peer']['params'] / 1e6:.1f} M, {row['peer']['mult_adds'] / 1e9:.1f} G{kind}"
        )
    return [
        f"### {row['title']}, {row['size'][0]}×{row['size'][1]}",
        "",
        f"atrous: {row['atrous']['params'] / 1e6:.1f} M parameters, {macs / 1e9:.1f} G "
        f"Mult-Adds{peer}.",
        "",
        "| who | path | latency (ms) | vs peer eager | images/s (batch 4) | memory (MiB) "
        "| max abs Δlogit vs eager | argmax agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]


def _contender_lines(row: dict, roof: dict) -> list[str]:
    items = row["contenders"]
    peer_eager = next(
        (c["latency_ms"] for c in items if c["side"] == "peer" and c["path"] == "eager fp32"),
        float("nan"),
    )
    lines = []
    for c in items:
        if c["error"]:
            lines.append(f"| {c['side']} | {c['path']} | failed: {c['error']} | | | | | |")
            continue
        lines.append(
            f"| {c['side']} | {c['path']} | {harness.fmt(c['latency_ms'])} "
            f"| {harness.fmt(peer_eager / c['latency_ms'], 2)}× "
            f"| {harness.fmt(c['images_per_s_batch4'], 2)} "
            f"| {harness.fmt(c['memory_mib'])} | {c['max_abs_diff']:.1e} "
            f"(of {c['logit_scale']:.1f}) | {c['argmax_agreement']:.4f} |"
        )
    macs = row["atrous"]["mult_adds"]
    for precision in ("fp32", "bf16", "fp16", "int8"):
        if precision in roof:
            lines.append(
                f"| roofline | {precision}: Mult-Adds ÷ {roof[precision] / 1e9:.0f} GMAC/s "
                f"| {harness.fmt(1000 * macs / roof[precision])} | | | | | |"
            )
    return lines


def markdown(results: dict) -> str:
    """The tables of docs/performance.md: one per row, then the training steps."""
    lines = [
        f"Machine: {results['machine']}; torch "
        f"{results['torch']}, onnxruntime {results['onnxruntime']}; device {results['device']}.",
        "Reference conv (3×3, 256→256, 65×65) at the start: "
        + ", ".join(f"{k} {v / 1e9:.0f} GMAC/s" for k, v in results["conv_throughput"].items())
        + "; each row's roofline uses the same conv timed in that row's rounds. Latency: batch 1, "
        "median of interleaved rounds. Memory: peak above the level before one call.",
        "",
    ]
    for row in results["rows"]:
        roof = row.get("conv_throughput", results["conv_throughput"])
        lines += _row_heading(row) + _contender_lines(row, roof)
        lines += ["", *ratios(row, roof), *default_ratios(row), "", *training_lines(row)]
    return "\n".join(lines)


def default_ratios(row: dict) -> list[str]:
    """The default path (``optimize_for_inference`` fp32 and int8, measured choice) ÷ the
    fastest atrous path of its precision in this run (medians, and the median of the ratios
    within each interleaved round), with the choice it made: the target is ≤ 1.03 (never slower
    than the fastest runtime installed)."""
    ok = [c for c in row["contenders"] if not c["error"] and c["side"] == "atrous"]
    lines = []
    for precision in ("fp32", "int8"):
        default = next((c for c in ok if c["path"] == f"optimize_for_inference {precision}"), None)
        if default is None:
            continue
        best = min((c for c in ok if c["precision"] == precision), key=lambda c: c["latency_ms"])
        paired = [a / b for a, b in zip(default["times_ms"], best["times_ms"], strict=True)]
        lines.append(
            f"- default {precision} ({default.get('choice') or 'no choice recorded'}) "
            f"{default['latency_ms']:.0f} ms ÷ fastest installed ({best['path']}) "
            f"{best['latency_ms']:.0f} ms = {default['latency_ms'] / best['latency_ms']:.2f}; "
            f"round by round, median {statistics.median(paired):.2f}"
        )
    return lines


def ratios(row: dict, roof: dict) -> list[str]:
    """atrous's fastest path per precision ÷ the peer's fastest path of that kind, and ÷ the
    roofline; low precision (bf16/fp16/int8) is compared as one group."""
    ok = [c for c in row["contenders"] if not c["error"]]
    groups = {"fp32": ("fp32",), "low precision": ("bf16", "fp16", "int8")}
    lines = []
    for label, precisions in groups.items():
        ours = [c for c in ok if c["side"] == "atrous" and c["precision"] in precisions]
        theirs = [c for c in ok if c["side"] == "peer" and c["precision"] in precisions]
        if not ours:
            continue
        best = min(ours, key=lambda c: c["latency_ms"])
        text = f"- {label}: atrous best ({best['path']}) {best['latency_ms']:.0f} ms"
        if theirs:
            peer = min(theirs, key=lambda c: c["latency_ms"])
            text += (
                f"; ÷ best peer path ({peer['path']}, {peer['latency_ms']:.0f} ms) = "
                f"{best['latency_ms'] / peer['latency_ms']:.2f}"
            )
        if best["precision"] in roof:
            roofline = 1000 * row["atrous"]["mult_adds"] / roof[best["precision"]]
            ratio = best["latency_ms"] / roofline
            text += f"; ÷ {best['precision']} roofline ({roofline:.0f} ms) = {ratio:.2f}"
        lines.append(text)
    return lines


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma-separated, or 'all': {', '.join(ROWS)}",
    )
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds per contender")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--all-paths", action="store_true", help="every peer path on every row, not only the first"
    )
    parser.add_argument(
        "--only",
        default="",
        help="only the paths whose 'side path' contains one of these comma-separated strings "
        "(e.g. 'atrous eager,OpenVINO,optimize_for_inference fp32')",
    )
    parser.add_argument("--no-train", action="store_true", help="leave out the training steps")
    parser.add_argument("--json", default=str(harness.RESULTS / "latest.json"))
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    args.keys = list(ROWS) if args.rows == "all" else args.rows.split(",")
    args.only = [o for o in args.only.split(",") if o]
    unknown = [k for k in args.keys if k not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    log = harness.logger(start)
    precisions = precisions_for(device)
    import onnxruntime

    results: dict[str, Any] = {
        "machine": describe_device(device),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": _version("openvino"),
        "conv_throughput": {p: conv_throughput(device, p) for p in precisions},
        "rows": [],
    }
    log(
        "conv throughput: "
        + ", ".join(f"{k} {v / 1e9:.0f} GMAC/s" for k, v in results["conv_throughput"].items())
    )
    with tempfile.TemporaryDirectory(prefix="atrous-bench-") as folder:
        os.environ["ATROUS_CACHE"] = str(Path(folder) / "cache")  # measure the default afresh
        for key in args.keys:
            log(f"{key}: {ROWS[key].title}")
            row = ROWS[key]
            if args.no_train:
                row = dataclasses.replace(row, train=False)
            row = run_row(
                row, device, args.rounds, Path(folder), log, args.all_paths, precisions, args.only
            )
            results["rows"].append(row)
            gc.collect()
    results["seconds"] = time.perf_counter() - start
    table = markdown(results)
    print(table)
    harness.write_results(args.json, results, args.markdown, table)
    log(f"done; JSON in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
