"""Processes, devices and data parallelism for `bolmo train`.

Launched plainly, training runs in one process. Launched by `torchrun`, every process joins a
process group (nccl on GPUs, gloo on CPUs) and the model is sharded with FSDP2 (`fully_shard`):
each global block and each local mLSTM layer is one unit, the rest (embeddings, projections,
norms, heads, boundary predictor) belongs to the root unit.

Gradients: FSDP averages them over ranks. The trainer normalises every loss term by counts over
the *global* batch, so each rank's objective is its share of one global sum; multiplying it by
the world size (`Dist.grad_scale`) turns the average back into that sum, which is what makes an
N-process run follow the 1-process run of the same global batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grad_scale(self) -> float:
        return float(self.world_size)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (on the device: nccl reduces only GPU tensors); returned on the CPU."""
        if not self.active:
            return tensor.cpu()
        on_device = tensor.to(self.device)
        tdist.all_reduce(on_device, op=tdist.ReduceOp.SUM)
        return on_device.cpu()

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()


def init_distributed(threads: int | None = None) -> Dist:
    """Join the torchrun process group when there is one (WORLD_SIZE > 1), else one process."""
    if threads:
        torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return Dist(rank, world, device)


def shutdown(dist: Dist) -> None:
    if dist.active and tdist.is_initialized():
        tdist.destroy_process_group()


def shard(root: nn.Module, units: Iterable[nn.Module]) -> None:
    """FSDP2: shard each unit, then the root (which takes every parameter no unit holds)."""
    from torch.distributed.fsdp import fully_shard

    for unit in units:
        fully_shard(unit)
    fully_shard(root)


def set_gradient_sync(module: nn.Module, enabled: bool) -> None:
    """Skip the gradient reduce-scatter on all but the last micro-batch of a step (FSDP only)."""
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(enabled)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision`: "auto" is bfloat16 on CUDA devices that support it and
    float32 (no autocast) elsewhere. Master weights and optimizer state stay float32."""
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def full_norm(value: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (FSDP returns a replicated DTensor)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
