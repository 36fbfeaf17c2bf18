"""Process-group setup for ``torchrun``: NCCL on CUDA, gloo on CPU; rank 0 logs and saves."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from atrous.errors import UsageError


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
    """``"auto"`` → CUDA when available, else CPU; anything else as given, if this machine has
    it (a UsageError naming the devices it has otherwise)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError:
        raise UsageError(
            f"device {device!r} is not a device name; use auto, cpu, cuda, cuda:1, …"
        ) from None
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (target.index or 0) >= count:
            have = f"GPUs cuda:0…cuda:{count - 1}" if count else "no CUDA GPU"
            raise UsageError(f"device {device!r}: this machine has {have}; use auto or cpu")
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
