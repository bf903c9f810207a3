"""The plain PyTorch backend: an in-memory :class:`~kdprune.data.ArrayDataset`, indexed in the main
process, or a JPEG :class:`~kdprune.data.folder.FolderDataset` through a ``torch.utils.data.DataLoader``
whose worker processes read and decode only the ids of their batches.

The DataLoader's sampler plays DistributedSampler's part: it yields this rank's shard of the epoch's
permutation (``epoch_order``, the same on every backend), so shards are disjoint and equal-length.
"""
from __future__ import annotations

import torch

from kdprune.data import Augment, to_float
from kdprune.loaders.batch import Batch
from kdprune.loaders.base import NATIVE_THREADS, KeptIdLoader, ReadCounter, stack_images


class ArrayLoader(KeptIdLoader):
    """Batches of the kept ids of an in-memory dataset; each step indexes only the ids of its batch."""

    def __init__(self, dataset, ids, **kwargs):
        super().__init__(len(dataset), ids, **kwargs)
        self.dataset = dataset

    def _decoded_batches(self, order):
        for start in range(0, len(order), self.batch_size):
            ids = order[start:start + self.batch_size]
            self.counter.note(ids)
            yield self.dataset.images[ids], self.dataset.labels[ids], ids


class _FolderSamples(torch.utils.data.Dataset):
    """Map-style view of a folder: item ``(id, view)`` reads and decodes file ``id`` only."""

    def __init__(self, folder, counter: ReadCounter):
        self.folder, self.counter = folder, counter

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        i, view = item
        image = self.folder.decode(i)
        self.counter.note([i])
        return image, int(self.folder.labels[i]), i, view


class _Collate:
    """Stack a batch and, in training, apply the replayed crop there, so the resampling runs in the
    worker processes in parallel rather than serially in the main process."""

    def __init__(self, augment: Augment | None, where: str):
        self.augment, self.where = augment, where

    def __call__(self, samples):
        images, labels, ids, views = zip(*samples)
        x = to_float(stack_images(list(images), self.where))
        ids = torch.tensor(ids, dtype=torch.int64)
        if self.augment is not None:
            x = self.augment.apply(x, views[0], ids)
        return x, torch.tensor(labels, dtype=torch.int64), ids


class _EpochBatches(torch.utils.data.Sampler):
    """Batches of ``(id, view)`` for the loader's current epoch (read when an epoch starts, so
    ``set_epoch`` takes effect with persistent workers too)."""

    def __init__(self, loader: "FolderLoader"):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        order, view, bs = self.loader.order(), self.loader.view(), self.loader.batch_size
        for start in range(0, len(order), bs):
            yield [(int(i), view) for i in order[start:start + bs]]


class FolderLoader(KeptIdLoader):
    """A DataLoader with ``workers`` processes over the kept ids of a JPEG folder."""

    def __init__(self, folder, ids, *, workers: int = 2, **kwargs):
        super().__init__(len(folder), ids, **kwargs)
        self.folder = folder
        self.workers = int(workers)
        self._loader = None

    def _data_loader(self):
        if self._loader is None:  # built once: persistent workers keep start-up out of every epoch
            # forking after FFCV's or DALI's native threads started can deadlock the workers: spawn then
            context = "spawn" if NATIVE_THREADS["started"] and self.workers > 0 else None
            self._loader = torch.utils.data.DataLoader(
                _FolderSamples(self.folder, self.counter), batch_sampler=_EpochBatches(self),
                num_workers=self.workers, collate_fn=_Collate(self.augment, self.folder.name),
                persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers > 0 else None,
                multiprocessing_context=context)
        return self._loader

    def __iter__(self):
        nb = self.device.type == "cuda"
        for x, y, ids in self._data_loader():
            yield Batch(x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb),
                        ids.to(self.device, non_blocking=nb))


def make_torch_loader(source, ids, **kwargs) -> KeptIdLoader:
    """The torch backend for an in-memory dataset or a JPEG folder."""
    from kdprune.data.folder import FolderDataset
    if isinstance(source, FolderDataset):
        return FolderLoader(source, ids, **kwargs)
    kwargs.pop("workers", None)  # in-memory indexing needs no workers
    return ArrayLoader(source, ids, **kwargs)
