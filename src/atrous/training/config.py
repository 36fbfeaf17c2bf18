"""A training run's configuration: model, data, loss, optimizer and run settings, saved as
``config.yaml`` beside its checkpoints (and read back by ``--config``, inference and resume)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from atrous.data import DataConfig
from atrous.errors import UsageError, require_at_least
from atrous.models.config import ModelConfig
from atrous.training.losses import LossConfig


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
    compile: bool = False  # torch.compile the training forward and backward (first steps slow)
    val_every: int = 2000  # validate (and checkpoint) every this many iterations; 0: at the end
    checkpoint_every: int = 1000  # also write last.pt every this many iterations (0: off)
    checkpoint_minutes: float = 0.0  # also write last.pt after this much wall time (0: off)
    log_every: int = 20  # write loss/lr to the logs every this many iterations
    output_dir: str = "runs/train"  # checkpoints, logs, curves, resolved config
    resume: bool = True  # continue from output_dir/last.pt when it exists
    stop_after: int | None = None  # end this invocation after this iteration (resumable later)
    seed: int = 0  # weights, data order and augmentation
    backbone_weights: str | None = None  # ImageNet start: IMAGENET1K_V2, tf_in1k, tf:…, a file
    init_from: str | None = None  # saved model folder/repo or tf:… to fine-tune (new classifier)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", …
    progress: bool = True  # show a progress bar
    overfit_batch: int = 0  # pre-flight: fit one batch this many steps, fail if loss stays high
    ema_decay: float = 0.0  # EMA of the weights (0.9999; 0: off): validated too, picks best.pt
    early_stop_patience: int = 0  # stop after this many validations without improvement (0: off)
    early_stop_min_delta: float = 0.0  # mIoU gain that counts as an improvement
    mlflow: bool = False  # also log parameters and metrics to MLflow (atrous[mlflow])

    def __post_init__(self) -> None:
        counts = {"batch_size": self.batch_size, "accumulate": self.accumulate}
        require_at_least("run", 1, log_every=self.log_every, **counts)
        periods = {"val_every": self.val_every, "checkpoint_every": self.checkpoint_every}
        require_at_least("run", 1, iterations=self.iterations)
        require_at_least("run", 0, overfit_batch=self.overfit_batch)
        require_at_least("run", 0, checkpoint_minutes=self.checkpoint_minutes, **periods)
        stopping = {"early_stop_patience": self.early_stop_patience}
        require_at_least("run", 0, ema_decay=self.ema_decay, **stopping)
        require_at_least("run", 0, early_stop_min_delta=self.early_stop_min_delta)
        if self.ema_decay >= 1:
            raise UsageError(f"run.ema_decay must be below 1 (0: off), got {self.ema_decay}")
        if self.early_stop_patience and not self.val_every:
            raise UsageError(
                "run.early_stop_patience counts validations, but run.val_every is 0 (validation "
                "at the end only); set --run.val_every"
            )


@dataclass
class TrainConfig:
    """A whole training run; saved as ``config.yaml`` beside its checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": dataclasses.asdict(self.data),
            "loss": dataclasses.asdict(self.loss),
            "optim": dataclasses.asdict(self.optim),
            "run": dataclasses.asdict(self.run),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - {"model", "data", "loss", "optim", "run"}
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        return cls(
            ModelConfig.from_dict(data.get("model", {})),
            DataConfig(**data.get("data", {})),
            OptimConfig(**data.get("optim", {})),
            RunConfig(**data.get("run", {})),
            LossConfig(**data.get("loss", {})),
        )
