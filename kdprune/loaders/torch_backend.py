"""The plain PyTorch loader over an in-memory :class:`~kdprune.data.ArrayDataset`.

It decodes nothing it does not serve: each step indexes only the ids of its batch.
"""
from __future__ import annotations

import numpy as np
import torch

from kdprune.data import Augment, to_float
from kdprune.loaders.batch import Batch, check_ids, epoch_order, resolve_distributed


class ArrayLoader:
    """Batches of the kept ids of an in-memory dataset, shuffled by (seed, epoch), sharded by rank,
    augmented with view ``epoch % views`` of ``augment`` when given (the teacher store's replay)."""

    def __init__(self, dataset, ids, *, batch_size: int, train: bool, seed: int = 0, device="cpu",
                 distributed=None, drop_last: bool = False, augment: Augment | None = None,
                 views: int | None = None):
        self.dataset = dataset
        self.ids = check_ids(ids, len(dataset))
        self.batch_size = int(batch_size)
        self.train, self.seed, self.device = train, seed, torch.device(device)
        self.rank, self.world = resolve_distributed(distributed)
        self.drop_last = drop_last
        self.augment = augment if train else None
        self.views = views
        self.epoch = 0
        self.reads = 0  # samples read so far (tests check that nothing outside ids is touched)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def view(self) -> int:
        """The augmentation view this epoch draws: ``epoch % views`` (a fresh one per epoch if views is None)."""
        return self.epoch % self.views if self.views else self.epoch

    def _order(self) -> np.ndarray:
        return epoch_order(self.ids, seed=self.seed, epoch=self.epoch, shuffle=self.train, rank=self.rank,
                           world=self.world, drop_last=self.drop_last, batch_size=self.batch_size)

    def __len__(self) -> int:
        return -(-len(self._order()) // self.batch_size)

    def __iter__(self):
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            ids = order[start:start + self.batch_size]
            self.reads += len(ids)
            x = to_float(self.dataset.images[ids])
            if self.augment is not None:
                x = self.augment.apply(x, self.view(), ids)
            y = torch.from_numpy(self.dataset.labels[ids])
            yield Batch(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),
                        torch.from_numpy(ids).to(self.device, non_blocking=True))
