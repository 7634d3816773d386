"""Process groups and model wrapping for torchrun: DDP for small models, FSDP (full sharding) for the big one.

Single-process runs (no RANK/WORLD_SIZE in the environment) use the model as is.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the torchrun process group if there is one (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def resolve_parallel(mode: str, model: torch.nn.Module) -> str:
    """'auto' -> FSDP when the model's freeze policy keeps a backbone frozen (the Wan preset), DDP when the whole
    model trains (the small presets). Decided by the policy, not by requires_grad: a small model's fitted and then
    frozen motion prior must not switch it to FSDP."""
    if mode != "auto":
        return mode
    return "fsdp" if model.config.trainable is not None else "ddp"


def wrap_model(model: torch.nn.Module, mode: str, info: DistInfo) -> torch.nn.Module:
    """Wrap for data parallelism; returns the model unchanged in a single process.

    DDP uses find_unused_parameters because a top-k router leaves some experts without gradient in a step.
    FSDP (torch.distributed.fsdp.fully_shard) shards each transformer block, then the root (full sharding);
    parameter names stay those of the unwrapped model. A block's action experts get their own unit because the
    transformer calls them before the block's forward (FSDP gathers a unit's weights in its module's forward), and
    unused experts reduce zero gradients so that every rank issues the same reduce-scatter (top-k routing).
    """
    if not info.distributed:
        return model
    mode = resolve_parallel(mode, model)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            if block.action_experts is not None:
                fully_shard(block.action_experts)
            fully_shard(block)
        fully_shard(model).set_reduce_scatter_unused_params(True)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}; use 'ddp', 'fsdp' or 'auto'")


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a metric over ranks (for logging)."""
    if not info.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
    return value / info.world_size


def cleanup(synchronize: bool = True) -> None:
    """Leave the process group; drop every trainer / wrapped model first. A DDP wrapper holds the group, and a group
    that is only destroyed at interpreter exit can abort the process there (std::terminate, seen ~1 in 10 runs on a
    loaded machine). After a clean run the ranks leave together; after an error pass synchronize=False: a barrier
    would wait for ranks that are not coming."""
    if dist.is_initialized():
        gc.collect()  # wrappers caught in reference cycles still hold the group
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
