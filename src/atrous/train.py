"""The training loop: the paper's recipe (§4), resumable exactly, one or many processes.

SGD with momentum 0.9 and weight decay 4e-5, poly learning rate (power 0.9) from 0.007, random
scale/crop/flip, cross-entropy ignoring label 255. Under ``torchrun`` the same loop runs with
DistributedDataParallel (SyncBN on CUDA), rank 0 logging and writing checkpoints.

    atrous train --config configs/voc_xception65_os16.yaml --data.root /data/VOC2012
    torchrun --nproc_per_node 4 -m atrous train --config ... --run.batch_size 16
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from atrous.backbones.weights import load_backbone_weights
from atrous.card import TrainingSummary
from atrous.checkpoint import load_checkpoint, load_weights, save_checkpoint
from atrous.config import ModelConfig
from atrous.data import DataConfig, build_dataset, training_transform
from atrous.data.sampler import AugmentedSamples, EpochSampler
from atrous.distributed import DistributedEnv, barrier, init_distributed, shutdown_distributed
from atrous.evaluate import autocast, evaluate_dataset
from atrous.metrics import SegmentationScores
from atrous.model import DeepLab, load_model
from atrous.plots import plot_curves
from atrous.profile import describe_device, measure_latency
from atrous.zoo import build_model

#: Below this many images per device, BN statistics get noisy (paper §4: batch 16 to train BN).
SMALL_BN_BATCH = 8


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (defaults: the paper's)."""

    optimizer: Literal["sgd", "adamw"] = "sgd"  # paper: SGD; AdamW trains faster from scratch
    lr: float = 0.007  # base learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 4e-5  # L2 weight decay
    no_decay_bn_bias: bool = False  # exempt BN parameters and biases from weight decay
    poly_power: float = 0.9  # lr = base · (1 − it/iterations)^power
    warmup_iters: int = 0  # linear warm-up from 0 over this many iterations


@dataclass
class RunConfig:
    """Length, batch, precision, BN handling, logging and where results go."""

    iterations: int = 30000  # optimizer steps
    batch_size: int = 16  # global images per optimizer step, over all processes and micro-steps
    accumulate: int = 1  # micro-steps per optimizer step (gradient accumulation)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype (fp16: CUDA only)
    bn_mode: Literal["train", "frozen"] = "train"  # frozen: keep BN statistics (paper at OS8)
    channels_last: bool = False  # NHWC memory format (faster convs on many CPUs/GPUs)
    activation_checkpointing: bool = False  # recompute backbone activations in backward (OS8)
    val_every: int = 2000  # validate (and checkpoint) every this many iterations; 0: at the end
    log_every: int = 20  # write loss/lr to the logs every this many iterations
    output_dir: str = "runs/train"  # checkpoints, logs, curves, resolved config
    resume: bool = True  # continue from output_dir/last.pt when it exists
    stop_after: int | None = None  # end this invocation after this iteration (resumable later)
    seed: int = 0  # weights, data order and augmentation
    backbone_weights: str | None = None  # ImageNet start: IMAGENET1K_V2, tf_in1k, or a file
    init_from: str | None = None  # saved model folder/repo to fine-tune (new classifier if needed)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", …
    progress: bool = True  # show a progress bar


@dataclass
class TrainConfig:
    """A whole training run; saved as ``config.yaml`` beside its checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": dataclasses.asdict(self.data),
            "optim": dataclasses.asdict(self.optim),
            "run": dataclasses.asdict(self.run),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - {"model", "data", "optim", "run"}
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        return cls(
            ModelConfig.from_dict(data.get("model", {})),
            DataConfig(**data.get("data", {})),
            OptimConfig(**data.get("optim", {})),
            RunConfig(**data.get("run", {})),
        )


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    iteration: int
    best_miou: float
    scores: SegmentationScores | None


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


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Per-pixel cross-entropy averaged over labelled pixels (0 when a batch has none)."""
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return loss / (target != ignore_index).sum().clamp(min=1)


class RunLog:
    """Rank-0 logging: a JSONL file of metrics and TensorBoard scalars."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_config(config: TrainConfig, env: DistributedEnv, num_classes: int) -> int:
    """Validate the combination of settings; return the per-process micro-batch size."""
    run = config.run
    if config.model.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes is {config.model.num_classes} but dataset {config.data.dataset!r} "
            f"has {num_classes} classes; set --model.num_classes {num_classes}"
        )
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


def _prepare_model(
    config: TrainConfig, env: DistributedEnv, resuming: bool
) -> tuple[DeepLab, nn.Module]:
    """Build the model, place it, and wrap it for DDP (SyncBN on CUDA). Starting weights
    (ImageNet backbone, a saved model) load only on a fresh start: a resumed run's come from
    its checkpoint."""
    torch.manual_seed(config.run.seed)
    model = build_model(config.model)
    if config.run.backbone_weights is not None and not resuming:  # ImageNet start (paper §4)
        load_backbone_weights(model.backbone, config.model.backbone, config.run.backbone_weights)
    if config.run.init_from is not None and not resuming:
        # A classifier for another number of classes is re-initialised (with a warning).
        start = load_model(config.run.init_from, num_classes=config.model.num_classes, strict=False)
        load_weights(model, start.state_dict(), source=config.run.init_from)
    model.set_activation_checkpointing(config.run.activation_checkpointing)
    if env.sync_bn and config.run.bn_mode == "train":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if config.run.channels_last else torch.contiguous_format
    model.to(env.device, memory_format=memory_format)
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        return model, DistributedDataParallel(model, device_ids=ids)
    return model, model


def _describe(config: TrainConfig, env: DistributedEnv, micro: int, dataset_len: int) -> str:
    run = config.run
    bn = run.bn_mode
    if env.distributed and bn == "train":
        bn = "SyncBN" if env.sync_bn else "per-process BN (SyncBN needs CUDA)"
    return (
        f"training {config.model.backbone} "
        f"({'DeepLabV3+' if config.model.decoder else 'DeepLabV3'},"
        f" OS{config.model.output_stride}) on {dataset_len} images of {config.data.dataset} | "
        f"{env.world_size} process(es) on {env.device.type} × {micro} images × {run.accumulate} "
        f"accumulation = global batch {run.batch_size} | BN: {bn} | {run.precision}"
    )


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) the training that ``config`` describes; return where it ended."""
    env = init_distributed(config.run.device)
    try:
        return _train(config, env)
    finally:
        shutdown_distributed()


def _train(config: TrainConfig, env: DistributedEnv) -> TrainResult:
    run = config.run
    output_dir = Path(run.output_dir)
    train_set = build_dataset(config.data, "train")
    val_set = build_dataset(config.data, "val")
    micro = _check_config(config, env, train_set.num_classes)
    last_path, best_path = output_dir / "last.pt", output_dir / "best.pt"
    resuming = run.resume and last_path.is_file()
    model, net = _prepare_model(config, env, resuming)
    optimizer = build_optimizer(model, config.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_schedule(run.iterations, config.optim.poly_power, config.optim.warmup_iters)
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=run.precision == "fp16")

    start, best_miou, best_class_iou = 0, -1.0, None
    if resuming:
        state = load_checkpoint(last_path, env.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, best_miou = state["iteration"], state["best_miou"]
        best_class_iou = state.get("best_class_iou")
        torch.set_rng_state(state["rng"]["torch"])
        if env.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if start == 0:  # a fresh run: drop the logs of any earlier one
            (output_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(output_dir / "tensorboard", ignore_errors=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        print(_describe(config, env, micro, len(train_set)))
        bn_batch = micro * env.world_size if env.sync_bn else micro
        if run.bn_mode == "train" and bn_batch < SMALL_BN_BATCH:
            warnings.warn(
                f"BatchNorm trains on statistics of {bn_batch} images (paper: 16); "
                "consider a larger batch, SyncBN across GPUs, or bn_mode 'frozen'",
                stacklevel=2,
            )
        if start:
            print(f"resuming from {last_path} at iteration {start}")
    log = RunLog(output_dir, env.is_main)

    transform = training_transform(
        config.data.crop_size,
        config.model.mean,
        config.model.std,
        (config.data.scale_min, config.data.scale_max),
        config.data.scale_step,
        config.data.flip,
        config.data.color_jitter,
        train_set.ignore_index,
    )
    samples = AugmentedSamples(train_set, transform, run.seed)
    sampler = EpochSampler(len(train_set), micro, env.world_size, env.rank, run.seed)
    loader_kwargs = {
        "batch_size": micro,
        "sampler": sampler,
        "num_workers": config.data.workers,
        "pin_memory": env.device.type == "cuda",
        "drop_last": True,
        # Its own generator: creating an iterator must not draw from the global RNG, whose
        # state (dropout) is checkpointed and must replay identically after a resume.
        "generator": torch.Generator().manual_seed(run.seed),
    }
    steps_per_epoch = sampler.batches_per_epoch // run.accumulate
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(train_set)} training images give no full step of {run.batch_size} images"
        )
    end = run.iterations if run.stop_after is None else min(run.iterations, run.stop_after)

    def checkpoint(iteration: int) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if env.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "iteration": iteration,
            "best_miou": best_miou,
            "best_class_iou": best_class_iou,
            "rng": rng,
            "config": config.to_dict(),
        }

    def validate(iteration: int) -> SegmentationScores:
        nonlocal best_miou, best_class_iou
        confusion = evaluate_dataset(
            model, val_set, config.model.mean, config.model.std, env, run.precision, run.progress
        )
        scores = confusion.scores()
        log.write(
            {
                "iteration": iteration,
                "val_miou": scores.mean_iou,
                "val_pixel_accuracy": scores.pixel_accuracy,
            }
        )
        if env.is_main:
            print(f"iteration {iteration}: validation mIoU {scores.mean_iou:.4f}")
            if scores.mean_iou > best_miou:
                best_miou = scores.mean_iou
                best_class_iou = [None if math.isnan(v) else float(v) for v in scores.iou]
                save_checkpoint(checkpoint(iteration), best_path)
        return scores

    net.train()
    if run.bn_mode == "frozen":
        freeze_bn_statistics(model)
    bar = tqdm(
        total=end,
        initial=start,
        disable=not (run.progress and env.is_main),
        desc="train",
        dynamic_ncols=True,
    )
    scores = None
    iteration = start
    batches = iter(())
    tick, images_seen = time.perf_counter(), 0
    while iteration < end:
        epoch, step_in_epoch = divmod(iteration, steps_per_epoch)
        if step_in_epoch == 0 or iteration == start:
            sampler.set_position(epoch, step_in_epoch * run.accumulate)
            batches = iter(DataLoader(samples, **loader_kwargs))
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro_step in range(run.accumulate):
            images, masks = next(batches)
            images = images.to(env.device, non_blocking=True)
            if run.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            masks = masks.to(env.device, non_blocking=True)
            sync = micro_step == run.accumulate - 1 or not env.distributed
            no_sync = contextlib.nullcontext() if sync else net.no_sync()
            with no_sync, autocast(env.device, run.precision):
                loss = segmentation_loss(net(images), masks, train_set.ignore_index)
            scaler.scale(loss / run.accumulate).backward()
            loss_sum += loss.item() / run.accumulate
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"loss became {loss_sum} at iteration {iteration}")
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        iteration += 1
        images_seen += run.batch_size
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}")
        if iteration % run.log_every == 0 or iteration == end:
            elapsed = time.perf_counter() - tick
            log.write(
                {
                    "iteration": iteration,
                    "loss": loss_sum,
                    "lr": lr,
                    "images_per_s": images_seen / max(elapsed, 1e-9),
                }
            )
            tick, images_seen = time.perf_counter(), 0
        validate_now = run.val_every and iteration % run.val_every == 0
        if validate_now or iteration == run.iterations:
            scores = validate(iteration)
            net.train()
            if run.bn_mode == "frozen":
                freeze_bn_statistics(model)
        if env.is_main and (validate_now or iteration == end):
            save_checkpoint(checkpoint(iteration), last_path)
        barrier()
    bar.close()
    log.close()
    if env.is_main and iteration == run.iterations:
        plot_curves(output_dir / "metrics.jsonl", output_dir / "curves.png")
        # The best weights (the last if validation never scored) as a model folder: safetensors
        # + config.json with the dataset's class names and colours, for atrous.load_model.
        best = build_model(config.model)
        best.load_state_dict(
            load_checkpoint(best_path)["model"] if best_path.is_file() else model.state_dict()
        )
        best.to(env.device)
        scored = best_miou >= 0  # validation ran at least once
        summary = TrainingSummary(
            dataset=config.data.dataset,
            train_images=len(train_set),
            iterations=run.iterations,
            batch_size=run.batch_size,
            crop_size=config.data.crop_size,
            optimizer=config.optim.optimizer,
            learning_rate=config.optim.lr,
            precision=run.precision,
            val_split=config.data.val_split if scored else None,
            val_images=len(val_set) if scored else None,
            val_miou=best_miou if scored else None,
            class_iou=tuple(best_class_iou) if best_class_iou is not None else None,
            latency_ms=measure_latency(best, (config.data.crop_size,) * 2, env.device),
            latency_device=describe_device(env.device),
        )
        best.cpu().save_pretrained(
            output_dir / "model",
            class_names=train_set.classes,
            palette=train_set.palette,
            training=summary,
        )
    return TrainResult(output_dir, iteration, best_miou, scores)
