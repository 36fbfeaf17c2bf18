"""One-shot GPU check (issue 18): training and inference speed of one network, in one run.

    python benchmarks/gpu_check.py                           # on one GPU: at most ~8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny       # the test suite's run (seconds)
    python benchmarks/gpu_check.py --model r50_os16 --batch_size 8 --output_dir /tmp/check

Training: ``--steps`` optimizer steps (forward, cross-entropy, backward, SGD; atrous's own
autocast, optimizer and loss) in fp32, bf16 and fp16 (fp16 with a GradScaler), each eager and
under ``torch.compile``, all channels_last, on one fixed random batch: the first step (which
compiles) is timed apart from the steady steps that follow ``--warmup`` more; images/s, ms/step,
peak memory (weights, gradients, optimizer state and activations) and the loss, a run whose loss
is not finite being reported as failed.

Inference: atrous eager, ``atrous.optimize_for_inference`` at fp32, bf16 and fp16, and smp's
network eager and compiled: latency at batch 1, images/s at the training batch, peak memory of
one batch above the level before it, logits against the eager fp32 reference.

The default network is DeepLabV3+ ResNet-101 OS16, built as smp's ``DeepLabV3Plus`` (random
weights) and converted with :func:`atrous.convert.from_smp`, so atrous and smp run the same
network with the same logits. It trains at the paper's 513×513 crop and batch 16 (§4: BN
needs a large batch) on one GPU, which it should fit: some 10–15 GiB at fp32, scaling the CPU
benchmark's 659 MiB step (batch 2, 321×321) by pixels and batch (``--batch_size`` for a smaller
one); inference runs at 512×512, as smp needs sizes divisible by 16.

Every row is guarded: one that fails records its error and the rest still run. Rows that
compile run after the others, and no row starts once ``--budget_s`` is spent or the longest row
of its kind so far would overrun it (a row that has started runs to its end). Writes
``gpu_check.json`` and ``gpu_check.md`` (default: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import run as bench
import torch
from torch import nn

import atrous
from atrous.convert.torch_models import from_smp
from atrous.export.onnx import compare_logits
from atrous.models.profile import describe_device
from atrous.runtime.precision import autocast
from atrous.training.config import OptimConfig
from atrous.training.loop import build_optimizer
from atrous.training.losses import LossConfig, build_loss

IGNORE_INDEX = 255
PRECISIONS = ("fp32", "bf16", "fp16")
Record = dict[str, Any]


# ---------------------------------------------------------------------------- networks


@dataclass(frozen=True)
class Network:
    """The network under test, its smp peer, and the sizes it runs at."""

    title: str
    build: Callable[[], tuple[atrous.DeepLab, nn.Module]]  # (atrous, smp peer), on the CPU
    same_network: bool  # the atrous network is the peer converted (the same logits)
    crop: int  # training crop
    size: int  # inference size (smp: divisible by 16)
    batch_size: int  # training batch, and the inference throughput batch


def _converted(encoder: str) -> Callable[[], tuple[atrous.DeepLab, nn.Module]]:
    def build() -> tuple[atrous.DeepLab, nn.Module]:
        peer = bench.smp_model(encoder, 16)
        return from_smp(peer), peer

    return build


def _tiny() -> tuple[atrous.DeepLab, nn.Module]:
    model = atrous.create_model("deeplabv3plus_mobilenetv2", num_classes=21, width_multiplier=0.25)
    return bench.calibrate_bn(model, 65), bench.smp_model("resnet18")


NETWORKS = {
    "r101_os16": Network(
        "DeepLabV3+ ResNet-101 OS16 (smp's, converted)", _converted("resnet101"), True, 513, 512, 16
    ),
    "r50_os16": Network(
        "DeepLabV3+ ResNet-50 OS16 (smp's, converted)", _converted("resnet50"), True, 513, 512, 16
    ),
    # The test suite's network: MobileNetV2 ×0.25 beside smp's smallest ResNet (not the same one).
    "tiny": Network(
        "DeepLabV3+ MobileNetV2 ×0.25 OS16 (smp peer: resnet18, not the same network)",
        _tiny,
        False,
        65,
        64,
        2,
    ),
}


# ---------------------------------------------------------------------------- measuring


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of ``fn`` with the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def refusal(device: torch.device, precision: str) -> str | None:
    """Why atrous's autocast refuses ``precision`` on ``device`` (fp16 on the CPU), or None."""
    try:
        autocast(device, precision)
    except ValueError as error:
        return str(error)
    return None


def compile_module(module: nn.Module, backend: str, freezing: bool = False) -> nn.Module:
    """``torch.compile`` with ``backend``; inductor freezes inference weights when asked."""
    options = {"freezing": True} if freezing and backend == "inductor" else None
    return torch.compile(module, backend=backend, options=options)


def _free_memory(device: torch.device) -> None:
    """Drop compiled graphs (they hold their modules) and cached blocks between rows."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)


# ---------------------------------------------------------------------------- training


def random_batch(
    network: Network, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (N, 3, crop, crop) channels_last batch and (N, crop, crop) labels, 10% ignored."""
    generator = torch.Generator().manual_seed(0)
    shape = (network.batch_size, network.crop, network.crop)
    images = torch.randn(shape[0], 3, *shape[1:], generator=generator)
    target = torch.randint(0, num_classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < 0.1] = IGNORE_INDEX
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    return images, target.to(device)


def training_step(
    net: nn.Module,
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    precision: str,
    device: torch.device,
) -> tuple[Callable[[], torch.Tensor], torch.amp.GradScaler]:
    """One step as atrous's training loop takes it (one micro-batch): the paper's SGD, autocast, the
    default loss (cross-entropy ignoring label 255), scaled by a GradScaler for fp16. As in
    training, the loss terms are read back once per step."""
    optimizer = build_optimizer(model, OptimConfig())
    loss_fn = build_loss(LossConfig(), "multiclass", model.num_classes, IGNORE_INDEX, None)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    images, target = batch

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, _ = loss_fn({"out": net(images)}, target, 0)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step, scaler


def train_row(
    base: atrous.DeepLab,
    network: Network,
    device: torch.device,
    precision: str,
    backend: str | None,
    steps: int,
    warmup: int,
) -> Record:
    """``steps`` timed steps of a copy of ``base`` (channels_last, compiled with ``backend``
    unless None) after a first step and ``warmup`` more; a non-finite loss fails the row."""
    losses: list[torch.Tensor] = []
    with bench.PeakMemory(device) as memory:
        model = copy.deepcopy(base).to(device, memory_format=torch.channels_last).train()
        net = model if backend is None else compile_module(model, backend)
        batch = random_batch(network, base.num_classes, device)
        step, scaler = training_step(net, model, batch, precision, device)
        first_s = _seconds(lambda: losses.append(step()), device)
        for _ in range(warmup):
            losses.append(step())
        steady_s = _seconds(lambda: losses.extend(step() for _ in range(steps)), device)
    values = torch.stack(losses).float().cpu().tolist()
    record: Record = {
        "first_step_s": first_s,
        "compile_s": first_s - steady_s / steps if backend is not None else None,
        "ms_per_step": 1000 * steady_s / steps,
        "images_per_s": network.batch_size * steps / steady_s,
        "peak_memory_mib": memory.mib,
        "first_loss": values[0],
        "final_loss": values[-1],
        "loss_scale": scaler.get_scale() if precision == "fp16" else None,
    }
    bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
    if bad:
        record["status"] = "failed"
        record["reason"] = f"loss became {values[bad[0]]} at step {bad[0] + 1} of {len(values)}"
    return record


# ---------------------------------------------------------------------------- inference


def infer_row(
    build: Callable[[], bench.Runner],
    example: torch.Tensor,
    reference: torch.Tensor,
    batch_size: int,
    rounds: int,
) -> Record:
    """Build a runner (timed, with its first calls at ``batch_size`` and batch 1), compare its
    logits on ``example`` (1, 3, H, W) with ``reference``, time it at both batch sizes and
    measure the peak memory of one batch."""
    device = example.device
    batch = example.expand(batch_size, -1, -1, -1).contiguous()
    start = time.perf_counter()
    runner = build()
    runner(batch)
    logits = runner(example)
    build_s = time.perf_counter() - start
    agreement = compare_logits(torch.as_tensor(logits).cpu(), reference.cpu())
    latency = statistics.median(_seconds(lambda: runner(example), device) for _ in range(rounds))
    batch_s = statistics.median(
        _seconds(lambda: runner(batch), device) for _ in range(max(3, rounds // 4))
    )
    with bench.PeakMemory(device) as memory:
        runner(batch)
    return {
        "build_s": build_s,
        "latency_ms": 1000 * latency,
        "images_per_s": batch_size / batch_s,
        "peak_memory_mib": memory.mib,
        "max_abs_diff": agreement.max_abs_diff,
        "logit_scale": agreement.scale,
        "argmax_agreement": agreement.argmax_agreement,
    }


# ---------------------------------------------------------------------------- rows


@dataclass
class Job:
    """One row: what it is (``fields``), how to measure it, or why it is skipped."""

    section: str  # "training" or "inference"
    name: str  # unique within its section
    fields: Record  # what the row is, for the JSON
    run: Callable[[], Record]
    compiles: bool = False  # rows that compile run after the others
    skip: str | None = None


def training_jobs(
    model: atrous.DeepLab, network: Network, device: torch.device, args: argparse.Namespace
) -> list[Job]:
    """fp32, bf16 and fp16, each eager and compiled, channels_last."""
    jobs = []
    for backend in (None, args.compile_backend):
        for precision in PRECISIONS:
            jobs.append(
                Job(
                    "training",
                    f"{precision} {'eager' if backend is None else 'compiled'}",
                    {"precision": precision, "compile": backend, "channels_last": True},
                    lambda p=precision, b=backend: train_row(
                        model, network, device, p, b, args.steps, args.warmup
                    ),
                    compiles=backend is not None,
                    skip=refusal(device, precision),
                )
            )
    return jobs


def inference_jobs(
    model: atrous.DeepLab,
    peer: nn.Module,
    network: Network,
    device: torch.device,
    args: argparse.Namespace,
) -> list[Job]:
    """atrous eager and optimize_for_inference; smp eager and compiled. optimize_for_inference
    runs backend "torch", what "auto" picks on CUDA (on the CPU it keeps --tiny on that path);
    its backend "compile" runs only when the check compiles with inductor, which it always uses."""
    model, peer = copy.deepcopy(model).to(device).eval(), peer.to(device).eval()
    size, backend = (network.size, network.size), args.compile_backend
    example = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        ours = model(example).float()
        theirs = ours if network.same_network else peer(example).float()

    def job(side: str, path: str, build: Callable[[], bench.Runner], **kwargs: Any) -> Job:
        reference = ours if side == "atrous" else theirs
        return Job(
            "inference",
            f"{side} {path}",
            {"side": side, "path": path},
            lambda: infer_row(build, example, reference, network.batch_size, args.rounds),
            **kwargs,
        )

    def fast(precision: str, fast_backend: str = "torch") -> Callable[[], bench.Runner]:
        return lambda: atrous.optimize_for_inference(
            model, size, precision=precision, backend=fast_backend
        )

    not_inductor = f"optimize_for_inference compiles with inductor; --compile_backend {backend}"
    return [
        job("atrous", "eager fp32", lambda: bench.eager(model, device)),
        *[
            job("atrous", f"optimize_for_inference {p}", fast(p), skip=refusal(device, p))
            for p in PRECISIONS
        ],
        job(
            "atrous",
            "optimize_for_inference fp32, backend compile",
            fast("fp32", "compile"),
            compiles=True,
            skip=None if backend == "inductor" else not_inductor,
        ),
        job("smp", "eager fp32", lambda: bench.eager(peer, device)),
        job(
            "smp",
            f"torch.compile ({backend}) fp32",
            lambda: bench.eager(compile_module(copy.deepcopy(peer), backend, True), device),
            compiles=True,
        ),
    ]


def _guarded(job: Job, device: torch.device) -> Record:
    """The job's record, or its error as a failed row; memory is freed either way."""
    try:
        record = job.run()
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0][:240]
        record = {"status": "failed", "reason": f"{type(error).__name__}: {first_line}"}
    finally:
        _free_memory(device)
    return {"status": "ok", "reason": None, **record}


def run_jobs(
    jobs: list[Job],
    budget_s: float,
    device: torch.device,
    log: Callable[[str], None],
    start: float | None = None,
) -> list[Record]:
    """Every job's record, in the order given. They run in the order: inference rows, then
    training rows, then those that compile in the same order (of three compiled training rows,
    losing the last to the budget costs least); none starts when the longest row of its kind so
    far would take it past ``budget_s`` after ``start`` (``time.perf_counter()``; default now)."""
    start = time.perf_counter() if start is None else start
    longest = {False: 0.0, True: 0.0}  # the longest row so far, without and with compiling
    records: dict[int, Record] = {}
    for index in sorted(range(len(jobs)), key=lambda i: (jobs[i].compiles, jobs[i].section)):
        job, elapsed = jobs[index], time.perf_counter() - start
        skip = job.skip
        if skip is None and elapsed + longest[job.compiles] > budget_s:
            skip = (
                f"--budget_s {budget_s:.0f}: {elapsed:.0f} s spent, and the longest such row "
                f"so far took {longest[job.compiles]:.0f} s"
            )
        if skip is not None:
            record: Record = {"status": "skipped", "reason": skip}
        else:
            record = _guarded(job, device)
            record["seconds"] = time.perf_counter() - start - elapsed
            longest[job.compiles] = max(longest[job.compiles], record["seconds"])
        log(f"{job.section} {job.name}: {record['status']} {record['reason'] or ''}".rstrip())
        records[index] = {"section": job.section, "name": job.name, **job.fields, **record}
    return [records[index] for index in range(len(jobs))]


# ---------------------------------------------------------------------------- report


def _fmt(value: Any, digits: int = 0) -> str:
    return f"{value:,.{digits}f}" if _finite(value) else "—"


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
            f"{_fmt(row['first_step_s'], 1)} | {_fmt(row['ms_per_step'], 1)} "
            f"| {_fmt(row['images_per_s'], 1)} | {_fmt(row['peak_memory_mib'])} "
            f"| {_fmt(row['first_loss'], 3)} → {_fmt(row['final_loss'], 3)}"
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
            f"{_fmt(row['build_s'], 1)} | {_fmt(row['latency_ms'], 1)} "
            f"| {_fmt(row['images_per_s'], 1)} | {_fmt(row['peak_memory_mib'])} "
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


# ---------------------------------------------------------------------------- command


#: What --tiny and a full run default to, where an option is not given.
DEFAULTS = {
    False: {"model": "r101_os16", "steps": 50, "warmup": 5, "rounds": 20, "compile": "inductor"},
    # inductor compiles for minutes on a small CPU; dynamo's capture alone ("eager") checks
    # that the networks trace, in seconds.
    True: {"model": "tiny", "steps": 3, "warmup": 1, "rounds": 3, "compile": "eager"},
}


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument(
        "--tiny", action="store_true", help="MobileNetV2 ×0.25, 65×65 crops, 3 steps (tests)"
    )
    parser.add_argument("--model", choices=list(NETWORKS), help="default r101_os16 (tiny: tiny)")
    parser.add_argument("--steps", type=int, help="timed training steps per row (default 50)")
    parser.add_argument("--warmup", type=int, help="steps after the first, before timing (5)")
    parser.add_argument("--batch_size", type=int, help="training and throughput batch (16)")
    parser.add_argument("--rounds", type=int, help="timed batch-1 inference calls (20)")
    parser.add_argument("--compile_backend", help="torch.compile backend (default inductor)")
    parser.add_argument("--budget_s", type=float, default=480.0, help="no row starts after")
    parser.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    defaults = DEFAULTS[args.tiny]
    args.model = args.model or defaults["model"]
    args.compile_backend = args.compile_backend or defaults["compile"]
    for name in ("steps", "warmup", "rounds"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    for name, least in (("steps", 1), ("warmup", 0), ("rounds", 1), ("batch_size", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name} must be at least {least}, got {value}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; try --device cpu --tiny")
    return args


def _environment(device: torch.device) -> Record:
    """What the figures depend on besides the code: device, versions, TF32."""
    cudnn = torch.backends.cudnn
    return {
        "device": str(device),
        "device_name": describe_device(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": cudnn.version() if device.type == "cuda" else None,
        "tf32": {"cudnn": cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "cudnn_benchmark": cudnn.benchmark,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _arguments(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:  # "cuda" means the current device; set_device needs its index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # the memory statistics are the current device's
        torch.backends.cudnn.benchmark = True  # fixed sizes: let cuDNN pick each conv's algorithm
    network = NETWORKS[args.model]
    if args.batch_size:
        network = replace(network, batch_size=args.batch_size)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    model, peer = network.build()
    results: Record = {
        "command": shlex.join(["python", "benchmarks/gpu_check.py", *argv]),
        **_environment(device),
        "network": {
            "key": args.model,
            **asdict(network),
            "params": sum(p.numel() for p in model.parameters()),
        },
        **{name: getattr(args, name) for name in ("steps", "warmup", "rounds", "budget_s")},
        "compile_backend": args.compile_backend,
    }
    results["network"].pop("build")
    jobs = training_jobs(model, network, device, args)
    jobs += inference_jobs(model, peer, network, device, args)
    rows = run_jobs(jobs, args.budget_s, device, log, start)
    for section in ("training", "inference"):
        results[section] = [row for row in rows if row["section"] == section]
    results["seconds"] = time.perf_counter() - start
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (output / "gpu_check.md").write_text(table + "\n")
    print(table)
    log(f"done; {output / 'gpu_check.json'} and gpu_check.md written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
