"""The training loop: the paper's recipe (§4), resumable exactly, one or many processes.

SGD with momentum 0.9 and weight decay 4e-5, poly learning rate (power 0.9) from 0.007, random
scale/crop/flip, cross-entropy ignoring label 255. Under ``torchrun`` the same loop runs with
DistributedDataParallel (SyncBN on CUDA), rank 0 logging and writing checkpoints.

A run is a sequence of small steps over one :class:`TrainingState` (what a checkpoint holds):
start or resume, take optimizer steps, validate, checkpoint, and at the end save the best model.
SIGTERM, SIGINT or SIGUSR1 (preemption) end it after the current step with ``last.pt`` written
and :class:`TrainingPreempted` raised; the same command resumes bit-exactly
(:mod:`atrous.runtime.preemption`). An EMA of the weights (:mod:`.ema`) and early stopping
(:mod:`.early_stop`) are part of that state; MLflow logging (:mod:`.tracking`) is optional.

    atrous train --config configs/voc_xception65_os16.yaml --data.root /data/VOC2012
    torchrun --nproc_per_node 4 -m atrous train --config ... --run.batch_size 16
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from atrous.data import (
    DataError,
    SegmentationDataset,
    build_dataset,
    training_transform,
)
from atrous.data.balance import class_weights
from atrous.data.checks import sample_labels
from atrous.data.sampler import AugmentedSamples, EpochSampler
from atrous.evaluation.evaluate import evaluate_dataset
from atrous.evaluation.metrics import SegmentationScores
from atrous.evaluation.plots import plot_curves
from atrous.hub.load import load
from atrous.hub.published import backbone_weights_file
from atrous.hub.registry import is_published
from atrous.inference.pipeline import PipelineConfig
from atrous.models.backbones.weights import load_backbone_weights
from atrous.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    sweep_partial_checkpoints,
)
from atrous.models.config import ModelConfig
from atrous.models.model import DeepLab, TrainingForward
from atrous.models.profile import describe_device, measure_latency
from atrous.models.summary import TrainingSummary
from atrous.models.zoo import build_model
from atrous.runtime.distributed import DistributedEnv, init_distributed, shutdown_distributed
from atrous.runtime.precision import autocast
from atrous.runtime.preemption import PREEMPTED_EXIT_CODE, StopSignals, agree_to_stop
from atrous.runtime.workers import loader_workers, worker_errors
from atrous.training.config import OptimConfig, RunConfig, TrainConfig
from atrous.training.early_stop import Plateau
from atrous.training.ema import WeightAverage
from atrous.training.losses import SegmentationLoss, build_loss
from atrous.training.tracking import MlflowLog, import_mlflow

#: The training API; the configurations live in :mod:`atrous.training.config` and are importable
#: from here as before.
__all__ = [
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingPreempted",
    "build_optimizer",
    "poly_schedule",
    "train",
]

#: Below this many images per device, BN statistics get noisy (paper §4: batch 16 to train BN).
SMALL_BN_BATCH = 8


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    iteration: int
    best_miou: float  # of the EMA's weights when the run keeps one
    scores: SegmentationScores | None  # the latest validation's (the EMA's when kept)
    stopped_early: bool = False  # validation stopped improving (run.early_stop_patience)


class TrainingPreempted(RuntimeError):
    """Training stopped on a signal after a whole step; ``last.pt`` holds that iteration.

    The CLI exits with :data:`~atrous.runtime.preemption.PREEMPTED_EXIT_CODE` (75) and this message.
    """

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, reason: str, iteration: int, checkpoint: Path, resumable: bool) -> None:
        self.reason, self.iteration, self.checkpoint = reason, iteration, checkpoint
        again = (
            "run the same command again to resume there"
            if resumable
            else "this run has run.resume false, so running it again starts over"
        )
        super().__init__(
            f"preempted by {reason} at iteration {iteration}: {checkpoint} written; {again} "
            f"(exit status {PREEMPTED_EXIT_CODE})"
        )


def poly_schedule(iterations: int, power: float, warmup: int) -> Any:
    """LR multiplier per iteration: linear warm-up, then (1 − it/iterations)^power."""

    def factor(iteration: int) -> float:
        if warmup and iteration < warmup:
            return (iteration + 1) / warmup
        return max(0.0, 1.0 - iteration / iterations) ** power

    return factor


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD/AdamW; with ``no_decay_bn_bias`` BN weights and all biases get no weight decay."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            exempt = config.no_decay_bn_bias and (
                name == "bias" or isinstance(module, nn.modules.batchnorm._BatchNorm)
            )
            (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def freeze_bn_statistics(model: nn.Module) -> None:
    """Put every BN layer in eval mode: running statistics stay fixed, affine parameters train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class RunLog:
    """Rank-0 logging: a JSONL file of metrics and TensorBoard scalars (and MLflow's if asked)."""

    def __init__(self, output_dir: Path, enabled: bool, mlflow: MlflowLog | None = None) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
        self.mlflow = mlflow
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "iteration" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, record["iteration"])
        if self.mlflow is not None:
            self.mlflow.write(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.close()


def with_dataset_classes(config: TrainConfig, num_classes: int) -> TrainConfig:
    """``config`` with the dataset's task (``data.task``) and, unless set, its class count
    (``model.num_classes``); a count or task given on the model that differs is an error."""
    model, task = config.model, config.data.task
    if model.task not in ("multiclass", task):
        raise ValueError(
            f"model.task is {model.task!r} but data.task is {task!r}; the task is set on the "
            f"data (--data.task {model.task})"
        )
    given = model.num_classes
    if given is not None and given != num_classes:
        raise ValueError(
            f"model.num_classes is {given} but dataset {config.data.dataset!r} has {num_classes} "
            f"classes; set --model.num_classes {num_classes} (or leave it unset to take the "
            "dataset's)"
        )
    bands = config.data.in_channels
    if model.in_channels not in (3, bands):
        raise ValueError(
            f"model.in_channels is {model.in_channels} but data.in_channels is {bands}; the "
            f"bands are set on the data (--data.in_channels {model.in_channels})"
        )
    changes = {"num_classes": num_classes, "task": task, "in_channels": bands}
    return dataclasses.replace(config, model=model.replace(**changes))


def training_loss(
    config: TrainConfig, dataset: SegmentationDataset, is_main: bool
) -> SegmentationLoss:
    """The configured loss; class weights as given (``loss.class_weights``), or computed from
    the training masks' pixel counts (``loss.class_weighting``: every mask of the split is
    read, masks only)."""
    loss, classes = config.loss, dataset.num_classes
    weights = None
    if loss.class_weighting != "none":
        report = sample_labels(dataset, limit=len(dataset))
        computed = class_weights(loss.class_weighting, report.pixels, report.present_pixels)
        weights = torch.from_numpy(np.asarray(computed, dtype=np.float32))
        if is_main:
            pairs = zip(dataset.classes, computed, strict=True)
            shown = ", ".join(f"{name} {weight:.3g}" for name, weight in pairs)
            print(f"class weights ({loss.class_weighting}, {report.masks_read} masks): {shown}")
    return build_loss(loss, config.model.task, classes, dataset.ignore_index, weights)


def _check_config(config: TrainConfig, env: DistributedEnv) -> int:
    """Validate the combination of settings; return the per-process micro-batch size."""
    run = config.run
    if run.iterations < 1 or run.accumulate < 1:
        raise ValueError(
            f"need iterations >= 1 and accumulate >= 1, got {run.iterations}, {run.accumulate}"
        )
    share = env.world_size * run.accumulate
    if run.batch_size % share:
        raise ValueError(
            f"run.batch_size {run.batch_size} must be divisible by processes × accumulate = {share}"
        )
    micro = run.batch_size // share
    if micro == 1 and run.bn_mode == "train" and not env.sync_bn:
        raise ValueError(
            "one image per step cannot train BatchNorm; use a larger batch_size or bn_mode 'frozen'"
        )
    return micro


def check_labels(dataset: SegmentationDataset, is_main: bool) -> None:
    """Stop on label conventions that would train the wrong task (0/255 binary masks), warn about
    classes with no pixels; a sample of the masks is read (``atrous check-data`` reads all)."""
    report = sample_labels(dataset)
    problems = report.label_problems()
    fatal = [p.message for p in problems if p.fatal]
    if fatal:
        raise DataError("\n".join(fatal))
    if is_main:
        for problem in problems:
            warnings.warn(problem.message, stacklevel=3)


def _starting_state(model: DeepLab, start: DeepLab) -> dict[str, torch.Tensor]:
    """``start``'s weights for ``model``: an auxiliary head the saved model lacks (saved models
    leave it out) starts from ``model``'s own initialisation; one ``model`` lacks is dropped."""
    own_aux = {k: v for k, v in model.state_dict().items() if k.startswith("aux_head.")}
    state = {
        k: v for k, v in start.state_dict().items() if own_aux or not k.startswith("aux_head.")
    }
    return {**own_aux, **state}


def prepare_model(
    config: TrainConfig, env: DistributedEnv, resuming: bool
) -> tuple[DeepLab, nn.Module]:
    """Build the model, place it, and wrap it for DDP (SyncBN on CUDA). Starting weights
    (ImageNet backbone, a saved model) load only on a fresh start: a resumed run's come from
    its checkpoint."""
    torch.manual_seed(config.run.seed)
    model = build_model(config.model)
    weights = config.run.backbone_weights
    if weights is not None and not resuming:  # ImageNet start (paper §4)
        if is_published(weights):  # an official TF ImageNet checkpoint, converted once
            weights = str(backbone_weights_file(weights))
        load_backbone_weights(model.backbone, config.model.backbone, weights)
    if config.run.init_from is not None and not resuming:
        # A classifier for another number of classes is re-initialised (with a warning).
        start = load(config.run.init_from, num_classes=config.model.num_classes, strict=False)
        load_weights(model, _starting_state(model, start), source=config.run.init_from)
    model.set_activation_checkpointing(config.run.activation_checkpointing)
    if env.sync_bn and config.run.bn_mode == "train":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if config.run.channels_last else torch.contiguous_format
    model.to(env.device, memory_format=memory_format)
    net: nn.Module = TrainingForward(model)
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=ids)
    if config.run.compile:  # after DDP, so that its buckets are compiled with the graph
        net = torch.compile(net)
    return model, net


@dataclass
class TrainingState:
    """Everything a checkpoint restores: weights (and their EMA), optimizer, schedule, scaler and
    RNG, the position, the best score so far, early stopping's count, and whether a validation
    is owed (a run stopped at a validation iteration before validating)."""

    model: DeepLab
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    iteration: int = 0
    best_miou: float = -1.0
    best_class_iou: list[float | None] | None = None
    validation_due: bool = False
    ema: WeightAverage | None = None
    plateau: Plateau = field(default_factory=Plateau)

    @classmethod
    def create(cls, model: DeepLab, config: TrainConfig, device: torch.device) -> TrainingState:
        """A fresh state: the paper's optimizer and poly schedule, a scaler for fp16."""
        optimizer = build_optimizer(model, config.optim)
        optim = config.optim
        factor = poly_schedule(config.run.iterations, optim.poly_power, optim.warmup_iters)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        scaler = torch.amp.GradScaler(device.type, enabled=config.run.precision == "fp16")
        ema = WeightAverage(model, config.run.ema_decay) if config.run.ema_decay else None
        return cls(model, optimizer, scheduler, scaler, ema=ema)

    def to_checkpoint(self, config: TrainConfig, device: torch.device) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "best_miou": self.best_miou,
            "best_class_iou": self.best_class_iou,
            "validation_due": self.validation_due,
            # The averaged weights, which atrous.load reads from the checkpoint when present.
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "plateau": dataclasses.asdict(self.plateau),
            "rng": rng,
            "config": config.to_dict(),
        }

    def restore(self, path: Path, device: torch.device, config: TrainConfig) -> None:
        """Continue from the checkpoint at ``path`` (read tensors-only); a corrupt file or one
        of another model configuration than ``config``'s is a CheckpointError saying what to do."""
        try:
            state = load_checkpoint(path, device)
        except CheckpointError as error:
            raise CheckpointError(f"{error}. {_fresh_start_advice(path)}") from None
        differences = model_differences(state.get("config", {}).get("model", {}), config.model)
        if differences:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with another model configuration "
                f"({'; '.join(differences)}). {_fresh_start_advice(path)}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best_miou = state["iteration"], state["best_miou"]
        self.best_class_iou = state.get("best_class_iou")
        self.validation_due = state.get("validation_due", False)
        self.plateau = Plateau(**state.get("plateau", {}))
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"], state["ema_updates"])
        elif self.ema is not None:  # run.ema_decay set on resuming: average from here on
            self.ema = WeightAverage(self.model, self.ema.decay)
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])


def _fresh_start_advice(path: Path) -> str:
    """What to do when ``last.pt`` cannot be resumed from."""
    best = path.with_name("best.pt")
    keep_best = f", or copy {best} over it to resume from there" if best.is_file() else ""
    return (
        f"To start afresh, pass --run.resume false (it overwrites {path.name}) or choose a new "
        f"--run.output_dir{keep_best}"
    )


def model_differences(saved: dict[str, Any], model: ModelConfig) -> list[str]:
    """The model settings a checkpoint's recorded configuration (``saved``, plain data) and
    ``model`` disagree on, as "name: checkpoint X, now Y" (a checkpoint without one: none)."""
    if not saved:
        return []
    with contextlib.suppress(TypeError, ValueError):  # else compare the raw values
        saved = ModelConfig.from_dict(saved).to_dict()
    current = model.to_dict()
    return [
        f"model.{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]


@dataclass
class Training:
    """A run in progress: its settings, data, state, logs and where its files go."""

    config: TrainConfig
    env: DistributedEnv
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    micro: int  # images per process and micro-step
    net: nn.Module  # the model as trained (TrainingForward; DistributedDataParallel under torchrun)
    loss: SegmentationLoss
    state: TrainingState
    log: RunLog
    scores: SegmentationScores | None = None  # of the latest validation
    last_saved: float = field(default_factory=time.monotonic)
    tick: float = field(default_factory=time.perf_counter)  # start of the logged interval
    images_seen: int = 0  # images since ``tick``

    @property
    def output_dir(self) -> Path:
        return Path(self.config.run.output_dir)

    @property
    def last_path(self) -> Path:
        return self.output_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / "best.pt"

    @property
    def end(self) -> int:
        """The iteration this invocation stops at (``run.stop_after`` or the last)."""
        run = self.config.run
        return run.iterations if run.stop_after is None else min(run.iterations, run.stop_after)


def _describe(run: Training) -> str:
    config, env, micro = run.config, run.env, run.micro
    bn = config.run.bn_mode
    if env.distributed and bn == "train":
        bn = "SyncBN" if env.sync_bn else "per-process BN (SyncBN needs CUDA)"
    return (
        f"training {config.model.backbone} "
        f"({'DeepLabV3+' if config.model.decoder else 'DeepLabV3'},"
        f" OS{config.model.output_stride}) on {len(run.train_set)} images of "
        f"{config.data.dataset} | {env.world_size} process(es) on {env.device.type} × {micro} "
        f"images × {config.run.accumulate} accumulation = global batch {config.run.batch_size} | "
        f"BN: {bn} | {config.run.precision}"
    )


def _prepare_output(config: TrainConfig, env: DistributedEnv, fresh: bool) -> RunLog:
    """Rank 0: the output folder, a fresh run's logs cleared, temporary checkpoint files of a
    killed write removed, the resolved ``config.yaml``."""
    output_dir = Path(config.run.output_dir)
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt"):
            for orphan in sweep_partial_checkpoints(output_dir / name):
                print(f"removed {orphan}, a partial {name} left by an interrupted write")
        if fresh:  # drop the logs of any earlier run
            (output_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(output_dir / "tensorboard", ignore_errors=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    mlflow = None
    if env.is_main and config.run.mlflow:
        mlflow = MlflowLog(output_dir, config.to_dict(), fresh)
    return RunLog(output_dir, env.is_main, mlflow)


def _announce(run: Training) -> None:
    """Rank 0 prints what is being trained, warns about small BN batches, says if resuming."""
    if not run.env.is_main:
        return
    print(_describe(run))
    bn_batch = run.micro * run.env.world_size if run.env.sync_bn else run.micro
    if run.config.run.bn_mode == "train" and bn_batch < SMALL_BN_BATCH:
        warnings.warn(
            f"BatchNorm trains on statistics of {bn_batch} images (paper: 16); "
            "consider a larger batch, SyncBN across GPUs, or bn_mode 'frozen'",
            stacklevel=3,
        )
    if run.state.iteration:
        print(f"resuming from {run.last_path} at iteration {run.state.iteration}")


def _start(config: TrainConfig, env: DistributedEnv) -> Training:
    """Read the data, check settings and labels, build or resume the model and optimizer."""
    if env.device.type == "cuda":  # crops have one size: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    if config.run.mlflow and env.is_main:  # a missing package is said before any work
        import_mlflow()
    train_set = build_dataset(config.data, "train")
    val_set = build_dataset(config.data, "val")
    config = with_dataset_classes(config, train_set.num_classes)
    micro = _check_config(config, env)
    check_labels(train_set, env.is_main)
    loss = training_loss(config, train_set, env.is_main)
    last_path = Path(config.run.output_dir) / "last.pt"
    resuming = config.run.resume and last_path.is_file()
    model, net = prepare_model(config, env, resuming)
    state = TrainingState.create(model, config, env.device)
    if resuming:
        state.restore(last_path, env.device, config)
    log = _prepare_output(config, env, fresh=state.iteration == 0)
    run = Training(config, env, train_set, val_set, micro, net, loss, state, log)
    _announce(run)
    return run


def training_samples(config: TrainConfig, dataset: SegmentationDataset) -> AugmentedSamples:
    """The training set with the run's augmentation, seeded per (seed, epoch, index)."""
    data = config.data
    transform = training_transform(
        data.crop_size,
        config.model.mean,
        config.model.std,
        (data.scale_min, data.scale_max),
        data.scale_step,
        data.flip,
        data.color_jitter,
        dataset.ignore_index,
    )
    return AugmentedSamples(dataset, transform, config.run.seed)


def _training_batches(run: Training) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batches from the run's position on: each epoch a seeded order, cut to whole steps,
    so a resumed run sees exactly the samples (and augmentations) an uninterrupted one would."""
    config, env = run.config, run.env
    data = config.data
    samples = training_samples(config, run.train_set)
    sampler = EpochSampler(len(samples), run.micro, env.world_size, env.rank, config.run.seed)
    accumulate = config.run.accumulate
    steps_per_epoch = sampler.batches_per_epoch // accumulate
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(samples)} training images give no full step of {config.run.batch_size} images"
        )
    # One loader for the whole run: its workers persist across epochs and prefetch; the
    # sampler is re-positioned before each epoch's iterator is made (it runs in this process).
    loader = DataLoader(
        samples,
        batch_size=run.micro,
        sampler=sampler,
        pin_memory=env.device.type == "cuda",
        drop_last=True,
        **loader_workers(data.workers),
        persistent_workers=data.workers > 0,
        prefetch_factor=4 if data.workers else None,
        # Its own generator: creating an iterator must not draw from the global RNG, whose
        # state (dropout) is checkpointed and must replay identically after a resume.
        generator=torch.Generator().manual_seed(config.run.seed),
    )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, step = divmod(run.state.iteration, steps_per_epoch)
        while True:
            sampler.set_position(epoch, step * accumulate)
            yield from worker_errors(
                itertools.islice(loader, (steps_per_epoch - step) * accumulate)
            )
            epoch, step = epoch + 1, 0

    return batches()


def _train_mode(run: Training) -> None:
    run.net.train()
    if run.config.run.bn_mode == "frozen":
        freeze_bn_statistics(run.state.model)


def _step(run: Training, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """One optimizer step over ``accumulate`` micro-batches; returns the loss terms (means over
    the micro-batches, "loss" their weighted sum) and the learning rate ("lr") the step used."""
    config, env, state = run.config.run, run.env, run.state
    state.optimizer.zero_grad(set_to_none=True)
    logged: dict[str, float] = {}
    for micro_step in range(config.accumulate):
        images, masks = next(batches)
        images = images.to(env.device, non_blocking=True)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = masks.to(env.device, non_blocking=True)
        sync = micro_step == config.accumulate - 1 or not env.distributed
        no_sync = contextlib.nullcontext() if sync else run.net.no_sync()
        with no_sync, autocast(env.device, config.precision):
            loss, parts = run.loss(run.net(images), masks, state.iteration)
        state.scaler.scale(loss / config.accumulate).backward()
        for name, value in {"loss": loss.item(), **parts}.items():
            logged[name] = logged.get(name, 0.0) + value / config.accumulate
    if not math.isfinite(logged["loss"]):
        raise FloatingPointError(f"loss became {logged['loss']} at iteration {state.iteration}")
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.ema is not None:
        state.ema.update(state.model)
    logged["lr"] = state.optimizer.param_groups[0]["lr"]
    state.scheduler.step()
    state.iteration += 1
    return logged


def _log_step(run: Training, logged: dict[str, float], bar: tqdm) -> None:
    """Progress bar every step; the loss terms, learning rate and images/s every
    ``log_every``."""
    iteration, config = run.state.iteration, run.config.run
    run.images_seen += config.batch_size
    bar.update(1)
    bar.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}")
    if iteration % config.log_every == 0 or iteration == run.end:
        elapsed = time.perf_counter() - run.tick
        images_per_s = run.images_seen / max(elapsed, 1e-9)
        run.log.write({"iteration": iteration, **logged, "images_per_s": images_per_s})
        run.tick, run.images_seen = time.perf_counter(), 0


def _validation_record(iteration: int, scores: SegmentationScores, task: str) -> dict[str, Any]:
    """What a validation adds to ``metrics.jsonl`` (undefined values as null)."""
    record = {
        "iteration": iteration,
        "val_miou": scores.mean_iou,
        "val_pixel_accuracy": scores.pixel_accuracy,
        "val_mean_dice": scores.mean_dice,
        "val_mean_precision": scores.mean_precision,
        "val_mean_recall": scores.mean_recall,
    }
    if task == "binary":
        foreground = scores.foreground()
        record.update(
            val_fg_iou=foreground.iou,
            val_fg_dice=foreground.dice,
            val_fg_precision=foreground.precision,
            val_fg_recall=foreground.recall,
        )
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def _score(run: Training, model: DeepLab) -> SegmentationScores:
    """``model``'s scores on the validation split (every process takes its share)."""
    config = run.config
    evaluation = evaluate_dataset(
        model,
        run.val_set,
        config.model.mean,
        config.model.std,
        run.env,
        config.run.precision,
        config.run.progress,
        pipeline=PipelineConfig(batch_size=1, workers=config.data.workers),
        multilabel=config.model.task == "multilabel",
    )
    return evaluation.scores()


def _validate(run: Training) -> None:
    """Score the validation split, and the EMA's weights when kept; rank 0 keeps ``best.pt`` of
    the best mIoU so far: the EMA's when kept (it is what the run delivers), else the weights'.
    Early stopping counts the same mIoU."""
    config, env, state = run.config, run.env, run.state
    started = time.perf_counter()
    scores = _score(run, state.model)
    record = _validation_record(state.iteration, scores, config.model.task)
    said = f"validation mIoU {scores.mean_iou:.4f}"
    if state.ema is not None:
        scores = _score(run, state.ema.model)
        ema = _validation_record(state.iteration, scores, config.model.task)
        record.update({f"ema_{k}": v for k, v in ema.items() if k != "iteration"})
        said += f", EMA's {scores.mean_iou:.4f}"
    run.tick += time.perf_counter() - started  # validation time is not training throughput
    run.scores = scores
    state.validation_due = False
    state.plateau.update(scores.mean_iou, config.run.early_stop_min_delta)
    run.log.write(record)
    if env.is_main:
        print(f"iteration {state.iteration}: {said}")
        if scores.mean_iou > state.best_miou:
            state.best_miou = scores.mean_iou
            state.best_class_iou = [None if math.isnan(v) else float(v) for v in scores.iou]
            save_checkpoint(state.to_checkpoint(config, env.device), run.best_path)
    _train_mode(run)


def _stopping_early(run: Training) -> bool:
    """Whether validation has not improved for ``run.early_stop_patience`` validations."""
    return run.state.plateau.reached(run.config.run.early_stop_patience)


def _validation_due(run: Training) -> bool:
    iteration, config = run.state.iteration, run.config.run
    return bool(config.val_every and iteration % config.val_every == 0) or (
        iteration == config.iterations
    )


def _checkpoint_due(run: Training) -> bool:
    """At the invocation's end, every ``checkpoint_every`` steps, after ``checkpoint_minutes``."""
    iteration, config = run.state.iteration, run.config.run
    if iteration == run.end:
        return True
    if config.checkpoint_every and iteration % config.checkpoint_every == 0:
        return True
    elapsed = time.monotonic() - run.last_saved
    return 0 < config.checkpoint_minutes * 60 <= elapsed


def _save_last(run: Training) -> None:
    """Rank 0 writes ``last.pt`` atomically (a kill mid-write leaves the previous one)."""
    if run.env.is_main:
        save_checkpoint(run.state.to_checkpoint(run.config, run.env.device), run.last_path)
    run.last_saved = time.monotonic()


def _train_until_end(run: Training, signals: StopSignals) -> str | None:
    """Take steps to the invocation's end, validating and checkpointing on schedule. Returns why
    it stopped early (a signal's name), or None when it reached the end."""
    state, env = run.state, run.env
    if state.validation_due:  # the run stopped before a scheduled validation
        _validate(run)
        _save_last(run)  # validated once: a stop before the next checkpoint must not recount
    _train_mode(run)
    batches = _training_batches(run)
    show = run.config.run.progress and env.is_main
    with tqdm(
        total=run.end, initial=state.iteration, disable=not show, desc="train", dynamic_ncols=True
    ) as bar:
        while state.iteration < run.end and not _stopping_early(run):
            _log_step(run, _step(run, batches), bar)
            due = _validation_due(run)
            stop = agree_to_stop(signals.received is not None, env.device)
            if due and not stop:
                _validate(run)
                stop = agree_to_stop(signals.received is not None, env.device)
            else:
                state.validation_due = due  # owed by a run stopping now: done on resume
            if stop or due or _checkpoint_due(run):
                _save_last(run)
            if stop:
                return signals.received or "a signal to another process"
    return None


def training_speed(metrics: Path) -> float | None:
    """The median training throughput (images/s) logged in ``metrics.jsonl`` over the run."""
    if not metrics.is_file():
        return None
    records = (json.loads(line) for line in metrics.read_text().splitlines() if line.strip())
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    return float(np.median(speeds)) if speeds else None


def _save_best_model(run: Training) -> None:
    """The best weights (the last if validation never scored) as a model folder: safetensors +
    config.json with the classes and colours, a model card with the training summary."""
    config, env, state = run.config, run.env, run.state
    plot_curves(run.output_dir / "metrics.jsonl", run.output_dir / "curves.png")
    if run.best_path.is_file():  # the EMA's weights when the run keeps one
        best = load(run.best_path)
    else:
        best = build_model(config.model)
        delivered = state.ema.model if state.ema is not None else state.model
        best.load_state_dict(delivered.state_dict())
    best.to(env.device)
    scored = state.best_miou >= 0  # validation ran at least once
    summary = TrainingSummary(
        dataset=config.data.dataset,
        train_images=len(run.train_set),
        iterations=config.run.iterations,
        batch_size=config.run.batch_size,
        crop_size=config.data.crop_size,
        optimizer=config.optim.optimizer,
        learning_rate=config.optim.lr,
        precision=config.run.precision,
        val_split=config.data.val_split if scored else None,
        val_images=len(run.val_set) if scored else None,
        val_miou=state.best_miou if scored else None,
        class_iou=tuple(state.best_class_iou) if state.best_class_iou is not None else None,
        images_per_s=training_speed(run.output_dir / "metrics.jsonl"),
        latency_ms=measure_latency(best, (config.data.crop_size,) * 2, env.device),
        latency_device=describe_device(env.device),
    )
    best.cpu().save_pretrained(
        run.output_dir / "model",
        class_names=run.train_set.classes,
        palette=run.train_set.palette,
        training=summary,
    )


def _say_stopped_early(run: Training) -> None:
    """Why the run ended before ``run.iterations``, and where its best weights are."""
    config, state = run.config.run, run.state
    gain = f"by more than {config.early_stop_min_delta:g} " if config.early_stop_min_delta else ""
    print(
        f"stopped early at iteration {state.iteration} of {config.iterations}: validation mIoU "
        f"has not improved {gain}for {state.plateau.since_best} validations (best "
        f"{state.best_miou:.4f}, kept in {run.best_path} and {run.output_dir / 'model'})"
    )


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) the training that ``config`` describes; return where it ended.

    Raises :class:`TrainingPreempted` when a stop signal ended it early (``last.pt`` written).
    With ``run.early_stop_patience`` it ends (``stopped_early``) once validation stops improving,
    with the best model saved as at the end.
    """
    env = init_distributed(config.run.device)
    try:
        run = _start(config, env)
        try:
            with StopSignals() as signals:
                stopped = _train_until_end(run, signals)
        finally:
            run.log.close()
        state = run.state
        if stopped is not None:
            if env.distributed:
                stopped += f" (seen by rank {env.rank} of {env.world_size})"
            raise TrainingPreempted(stopped, state.iteration, run.last_path, config.run.resume)
        early = _stopping_early(run)
        if env.is_main and early:
            _say_stopped_early(run)
        if env.is_main and (early or state.iteration == config.run.iterations):
            _save_best_model(run)
        return TrainResult(run.output_dir, state.iteration, state.best_miou, run.scores, early)
    finally:
        shutdown_distributed()
