"""PyTorch DDP plumbing: join the process group torchrun describes, know who is rank 0, reduce.

``torchrun --nproc_per_node=N -m kdprune train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`setup` joins the group (NCCL on CUDA, gloo on the CPU) unless the caller already did. With no
process group every helper degrades to the single-process answer, so the trainer has one code path.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from kdprune.errors import ConfigError


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on the one process that writes files (rank 0)."""
    return rank() == 0


def setup(device: str = "cpu") -> torch.device:
    """Join the process group described by torchrun's environment (if any and not joined yet) and
    return this rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under DDP."""
    dev = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_initialized():
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for but no GPU is visible; use --device cpu (gloo)")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda" and dev.index is None and is_initialized():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank() % max(torch.cuda.device_count(), 1))))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op on one process); returns ``t``."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` on one process)."""
    if not (is_initialized() and world_size() > 1):
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not (is_initialized() and world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel when more than one rank trains, else ``model``."""
    if not (is_initialized() and world_size() > 1):
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
