"""What every loader yields, and the per-epoch order every backend shares."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from kdprune.errors import ConfigError, DataError


class Batch(NamedTuple):
    """``x`` float [B, C, H, W] in [-1, 1] (uint8 grey levels from a loader built with
    ``dtype="uint8"``), ``y`` int64 [B], ``ids`` int64 [B] sample ids, all on one device."""

    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor


DTYPES = ("float32", "uint8")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 grey levels ``[B, C, H, W]`` (a ``dtype="uint8"`` batch) -> float32 in [-1, 1], on ``x``'s
    device, scaled exactly as :func:`kdprune.data.to_float` scales images (``p / 127.5 - 1``).

    >>> normalize(torch.tensor([0, 255], dtype=torch.uint8)).tolist()
    [-1.0, 1.0]
    """
    return x.float().div_(127.5).sub_(1.0)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """float32 in [-1, 1] -> uint8 grey levels rounded to the nearest (the inverse of :func:`normalize`
    on levels, a rounding of crops between them)."""
    return x.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def resolve_distributed(distributed) -> tuple[int, int]:
    """(rank, world_size): from ``distributed=(rank, world)``, or torch.distributed when it is
    initialised and ``distributed`` is None or True, else (0, 1)."""
    if isinstance(distributed, (tuple, list)):
        rank, world = int(distributed[0]), int(distributed[1])
    elif distributed is False:
        return 0, 1
    else:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        elif distributed:
            raise ConfigError("distributed=True but torch.distributed is not initialised; "
                              "launch with torchrun or pass distributed=(rank, world_size)")
        else:
            return 0, 1
    if not (0 <= rank < world):
        raise ConfigError(f"rank {rank} out of range for world size {world}")
    return rank, world


def check_ids(ids, num_samples: int) -> np.ndarray:
    """The kept ids as sorted unique int64, each in ``[0, num_samples)``; None means all samples; an
    empty set is an error."""
    if ids is None:
        return np.arange(num_samples, dtype=np.int64)
    ids = np.asarray(getattr(ids, "ids", ids))
    if ids.size == 0:
        raise DataError("the IndexSet is empty: nothing to load; use a larger keep fraction")
    ids = np.unique(ids.astype(np.int64))
    if ids[0] < 0 or ids[-1] >= num_samples:
        raise DataError(f"sample ids must lie in [0, {num_samples}), found [{ids[0]}, {ids[-1]}]; "
                        "was the IndexSet made for another dataset?")
    return ids


def check_subset(ids, fingerprint, name: str) -> None:
    """Refuse an IndexSet made for another dataset: its meta's dataset fingerprint against
    ``fingerprint`` (a string, or a function computing it, called only when the IndexSet has one)."""
    meta = getattr(ids, "meta", None) or {}
    if not meta.get("dataset_fingerprint"):
        return
    from kdprune.provenance import require_same
    mine = fingerprint() if callable(fingerprint) else fingerprint
    require_same(meta, (mine, name), what="this IndexSet (subset)",
                 fix="make the subset from this dataset: re-run `kdprune prune` (or kdprune.prune) on it")


def shuffled_range(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` determined by (seed, epoch): ``torch.randperm`` on a CPU generator
    seeded from both. It is computed before an epoch's first batch: on ImageNet's 1.28M ids 17 ms
    against numpy's ``Generator.permutation``'s 52 ms (one thread, 2-core CPU VM)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed32(seed, epoch))).numpy()


def _seed32(seed: int, epoch: int) -> int:
    """(seed, epoch) mixed into the 32 bits torch's CPU generator keeps of a seed (splitmix64's
    finalizer): a few integer operations, where numpy's SeedSequence took 90 us at an epoch's start."""
    mask = (1 << 64) - 1
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch)) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    x ^= x >> 31
    return (x ^ (x >> 32)) & 0xFFFFFFFF


def epoch_order(ids: np.ndarray, *, seed: int, epoch: int, shuffle: bool, rank: int, world: int,
                drop_last: bool, batch_size: int) -> np.ndarray:
    """This rank's ids for ``epoch``: one permutation seeded by (seed, epoch), the same on every
    rank, dealt round-robin so shards are disjoint. Shards are made equal-length (as DDP needs, or
    ranks deadlock in all-reduce) by dropping the remainder when ``drop_last`` and otherwise by padding
    with ids from the start of the permutation, which DistributedSampler does too."""
    order = ids[shuffled_range(len(ids), seed, epoch)] if shuffle else ids
    if world > 1:
        if drop_last:
            order = order[: len(order) - len(order) % world]
        elif len(order) % world:
            pad = world - len(order) % world
            order = np.concatenate([order, order[:pad]])
        order = order[rank::world]
    if drop_last:
        order = order[: len(order) - len(order) % batch_size]
    return order
