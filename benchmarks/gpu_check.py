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

Inference: atrous eager, ``atrous.optimize_for_inference`` at fp32, bf16 and fp16, TensorRT
engines of ``atrous export --format tensorrt`` at fp32, fp16 and int8 (``gpu_tensorrt.py``;
skipped, saying so, without the ``tensorrt`` package), and smp's network eager and compiled:
latency at batch 1, images/s at the training batch, peak memory of one batch above the level
before it, logits against a float64 reference (eager fp32 included:
its difference is fp32's own rounding, or TF32's on a GPU).

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
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gpu_tensorrt
import harness
import torch
from gpu_measure import (
    Network,
    Record,
    compile_module,
    free_memory,
    infer_row,
    reference_logits,
    refusal,
    train_row,
)
from gpu_report import markdown
from peers import calibrate_bn, smp_model
from torch import nn

import atrous
from atrous.convert.torch_models import from_smp
from atrous.models.profile import describe_device

PRECISIONS = ("fp32", "bf16", "fp16")


# ---------------------------------------------------------------------------- networks


def _converted(encoder: str) -> Callable[[], tuple[atrous.DeepLab, nn.Module]]:
    def build() -> tuple[atrous.DeepLab, nn.Module]:
        peer = smp_model(encoder, 16)
        return from_smp(peer), peer

    return build


def _tiny() -> tuple[atrous.DeepLab, nn.Module]:
    model = atrous.create_model("deeplabv3plus_mobilenetv2", num_classes=21, width_multiplier=0.25)
    return calibrate_bn(model, 65), smp_model("resnet18")


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
    ours = reference_logits(model, example)
    theirs = ours if network.same_network else reference_logits(peer, example)

    def job(side: str, path: str, build: Callable[[], harness.Runner], **kwargs: Any) -> Job:
        reference = ours if side == "atrous" else theirs
        return Job(
            "inference",
            f"{side} {path}",
            {"side": side, "path": path},
            lambda: infer_row(build, example, reference, network.batch_size, args.rounds),
            **kwargs,
        )

    def fast(precision: str, fast_backend: str = "torch") -> Callable[[], harness.Runner]:
        return lambda: atrous.optimize_for_inference(
            model, size, precision=precision, backend=fast_backend
        )

    not_inductor = f"optimize_for_inference compiles with inductor; --compile_backend {backend}"
    return [
        job("atrous", "eager fp32", lambda: harness.eager(model, device)),
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
        *[
            job("atrous", f"TensorRT engine {p}", build, skip=gpu_tensorrt.unavailable(device))
            for p, build in gpu_tensorrt.builders(model, network.size, network.batch_size)
        ],
        job("smp", "eager fp32", lambda: harness.eager(peer, device)),
        job(
            "smp",
            f"torch.compile ({backend}) fp32",
            lambda: harness.eager(compile_module(copy.deepcopy(peer), backend, True), device),
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
        free_memory(device)
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
