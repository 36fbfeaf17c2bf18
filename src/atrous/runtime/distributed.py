"""Process-group setup for ``torchrun``: NCCL on CUDA, gloo on CPU; rank 0 logs and saves."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from atrous.errors import UsageError


class DeviceError(UsageError):
    """A ``--device`` this machine does not have."""


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process runs and its place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sync_bn(self) -> bool:
        """Whether BN statistics can be synchronised across processes (SyncBN needs CUDA)."""
        return self.distributed and self.device.type == "cuda"


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as given, when this machine
    has it (else DeviceError naming what it has)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(
            f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"--device {device}: no CUDA GPU is available here (no GPU, or PyTorch without "
                "CUDA); use --device cpu (or auto)"
            )
        if target.index is not None and target.index >= count:
            raise DeviceError(
                f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to "
                f"cuda:{count - 1}; choose one of them (or auto)"
            )
    return target


def init_distributed(device: str = "auto") -> DistributedEnv:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if target.type == "cuda":
        target = torch.device("cuda", local_rank if world_size > 1 else (target.index or 0))
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return DistributedEnv(rank, world_size, local_rank, target)


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
