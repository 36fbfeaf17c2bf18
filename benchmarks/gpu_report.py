"""The GPU check's report: its training and inference tables in Markdown, headed by the machine,
versions and command (``gpu_check.md``)."""

from __future__ import annotations

import harness
from gpu_measure import Record


def _status(row: Record) -> str:
    return "ok" if row["status"] == "ok" else f"{row['status']}: {row['reason']}"


def _training_table(rows: list[Record], batch_size: int) -> list[str]:
    lines = [
        "| precision | mode | status | first step (s) | ms/step | images/s | peak memory (MiB) "
        "| loss, first → final |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        numbers = (
            f"{harness.fmt(row['first_step_s'], 1)} | {harness.fmt(row['ms_per_step'], 1)} "
            f"| {harness.fmt(row['images_per_s'], 1)} | {harness.fmt(row['peak_memory_mib'])} "
            f"| {harness.fmt(row['first_loss'], 3)} → {harness.fmt(row['final_loss'], 3)}"
            if "ms_per_step" in row
            else "| | | |"
        )
        mode = "eager" if row["compile"] is None else f"torch.compile ({row['compile']})"
        lines.append(f"| {row['precision']} | {mode} | {_status(row)} | {numbers} |")
    return [f"Training, batch {batch_size}, channels_last:", "", *lines, ""]


def _inference_table(rows: list[Record], batch_size: int) -> list[str]:
    lines = [
        f"| who | path | status | build (s) | batch 1 (ms) | images/s (batch {batch_size}) "
        f"| peak memory, batch {batch_size} (MiB) | max abs Δlogit (of scale) | argmax agreement |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        numbers = (
            f"{harness.fmt(row['build_s'], 1)} | {harness.fmt(row['latency_ms'], 1)} "
            f"| {harness.fmt(row['images_per_s'], 1)} | {harness.fmt(row['peak_memory_mib'])} "
            f"| {row['max_abs_diff']:.1e} ({row['logit_scale']:.1f}) "
            f"| {row['argmax_agreement']:.4f}"
            if "latency_ms" in row
            else "| | | | |"
        )
        lines.append(f"| {row['side']} | {row['path']} | {_status(row)} | {numbers} |")
    return ["Inference:", "", *lines, ""]


def markdown(results: Record) -> str:
    """The check's two tables, headed by the machine, versions and command."""
    net = results["network"]
    versions = f"torch {results['torch']}"
    if results["cuda"]:
        tf32 = results["tf32"]
        versions += (
            f", CUDA {results['cuda']}, cuDNN {results['cudnn']}; TF32 convs {tf32['cudnn']}, "
            f"TF32 matmuls {tf32['matmul']}, cudnn.benchmark {results['cudnn_benchmark']}"
        )
    lines = [
        f"Device: {results['device_name']} ({results['device']}); {versions}.",
        f"Command: `{results['command']}` ({results['seconds']:.0f} s).",
        f"Network: {net['title']}, {net['params'] / 1e6:.2f} M parameters; training crop "
        f"{net['crop']}×{net['crop']}, {results['steps']} timed steps after "
        f"{results['warmup'] + 1} warm-up; inference {net['size']}×{net['size']}, "
        f"{results['rounds']} batch-1 calls (median).",
        "",
        *_training_table(results["training"], net["batch_size"]),
        *_inference_table(results["inference"], net["batch_size"]),
    ]
    return "\n".join(lines)
