"""What every backend shares: the kept ids, the per-epoch order, the augmentation view, the read
counter, and turning decoded uint8 images into a :class:`Batch`.

A backend supplies ``_decoded_batches(order)``, which yields ``(images, labels [B], ids [B])`` for
consecutive ``batch_size`` slices of ``order`` and reads nothing else; ``images`` is a uint8
``[B, H, W, C]`` array or a list of uint8 ``[H, W, C]`` images of any sizes, which ``_finish`` crops
(``kdprune.data.augment.crop_batch``: the replayed view in training, resize + centre crop to
``image_size`` in evaluation).
"""
from __future__ import annotations

import numpy as np
import torch

from kdprune.data.augment import Augment, crop_batch
from kdprune.errors import ConfigError, DataError
from kdprune.loaders.batch import DTYPES, Batch, check_ids, epoch_order, normalize, resolve_distributed, to_grey

# Set once an FFCV or DALI loader has started native threads in this process (a later fork, such as
# FFCV's writer workers, is then unsafe: see ffcv_backend.write_beton).
NATIVE_THREADS = {"started": False}


class ReadCounter:
    """How many times each sample was read, counted where the bytes are read or decoded.

    The counts live in shared memory, so reads made in DataLoader worker processes (or in DALI's
    threads; FFCV's are counted as each batch is served) show up in the parent; tests check that ``counts`` is zero outside the kept ids.
    """

    def __init__(self, num_samples: int):
        self._tensor = torch.zeros(num_samples, dtype=torch.int64).share_memory_()
        self.counts = self._tensor.numpy()

    def note(self, ids) -> None:
        np.add.at(self.counts, np.asarray(ids, dtype=np.int64), 1)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def __getstate__(self):
        return {"_tensor": self._tensor}

    def __setstate__(self, state):
        self._tensor = state["_tensor"]
        self.counts = self._tensor.numpy()


class KeptIdLoader:
    """Base of every backend: batches of exactly the kept ids, shuffled by (seed, epoch) when
    ``shuffle`` (default: when ``train``; ``shuffle=False`` serves the ids in increasing order, as
    writing teacher logits needs), sharded by rank, augmented with view ``epoch % views`` of
    ``augment`` when ``train``; ``image_size`` (an int or (H, W)): the output size of evaluation's
    resize + centre crop (and of training crops when ``augment`` has no ``out_size``); None keeps
    images of one size as they are. ``dtype``: ``"float32"`` batches in [-1, 1] (default), or
    ``"uint8"`` grey levels (a quarter of the bytes) for the caller to :func:`normalize` on its device.
    FFCV and DALI crop into grey levels on a GPU device either way, and normalise after the copy."""

    def __init__(self, num_samples: int, ids, *, batch_size: int, train: bool, seed: int = 0,
                 device="cpu", distributed=None, drop_last: bool = False, augment: Augment | None = None,
                 views: int | None = None, image_size=None, shuffle: bool | None = None, dtype: str = "float32"):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.num_samples = int(num_samples)
        self.ids = check_ids(ids, self.num_samples)
        self.batch_size = int(batch_size)
        self.train, self.seed, self.device = train, int(seed), torch.device(device)
        self.shuffle = train if shuffle is None else bool(shuffle)
        self.rank, self.world = resolve_distributed(distributed)
        self.drop_last = drop_last
        self.augment = augment if train else None
        self.views = views
        self.image_size = image_size
        self.name = getattr(self, "name", "the dataset")
        self.epoch = 0
        self._order = None  # (epoch, its order), the last one computed
        self.counter = ReadCounter(self.num_samples)

    @property
    def grey(self) -> bool:
        """Whether the decode threads crop into uint8 grey levels: asked for (``dtype="uint8"``), or a
        GPU device, where the batch crosses the bus as a quarter of the bytes and is normalised there."""
        return self.dtype == "uint8" or self.device.type == "cuda"

    @property
    def reads(self) -> int:
        """Samples read (decoded) so far, over all epochs."""
        return self.counter.total

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def close(self) -> None:
        """Stop the loader's worker processes or threads now rather than when it is garbage-collected;
        the next iteration starts them again."""

    def set_ids(self, ids) -> None:
        """Serve another subset (an IndexSet or ids) from the next epoch on, with the same workers
        (and, on FFCV, the same compiled pipeline): what RS2's fresh subset each epoch needs."""
        self.ids, self._order = check_ids(ids, self.num_samples), None

    def view(self) -> int:
        """The augmentation view this epoch draws: ``epoch % views`` (a fresh one per epoch if views is None)."""
        return self.epoch % self.views if self.views else self.epoch

    def order(self, epoch: int | None = None) -> np.ndarray:
        """This rank's ids for ``epoch`` (default: the current one), in serving order."""
        epoch = self.epoch if epoch is None else epoch
        # asked for several times an epoch (by the loader, len(), FFCV's traversal order): callers
        # share the array and only read it
        if self._order is None or self._order[0] != epoch:
            order = epoch_order(self.ids, seed=self.seed, epoch=epoch, shuffle=self.shuffle, rank=self.rank,
                                world=self.world, drop_last=self.drop_last, batch_size=self.batch_size)
            self._order = (epoch, order)
        return self._order[1]

    def __len__(self) -> int:
        return -(-len(self.order()) // self.batch_size)

    def __iter__(self):
        order = self.order()
        view = self.view()
        for images, labels, ids in self._decoded_batches(order):
            yield self._finish(images, labels, ids, view)

    def _decoded_batches(self, order: np.ndarray):
        raise NotImplementedError

    def _finish(self, images, labels, ids, view: int) -> Batch:
        """uint8 images (``[B, H, W, C]`` or a list of any sizes) -> float ``[B, C, H', W']`` in
        [-1, 1]: the replayed crop in training, the evaluation crop with ``image_size``."""
        ids = np.asarray(ids, dtype=np.int64)
        x = crop_batch(images, ids, augment=self.augment, view=view, image_size=self.image_size,
                       where=self.name)
        return self._to_device(to_grey(x) if self.dtype == "uint8" else x, labels, ids)

    def _to_device(self, x: torch.Tensor, labels, ids) -> Batch:
        """The batch on the loader's device; grey levels normalised there unless ``dtype="uint8"``."""
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        nb = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=nb)
        if x.dtype == torch.uint8 and self.dtype != "uint8":
            x = normalize(x)
        return Batch(x, y.to(self.device, non_blocking=nb), ids.to(self.device, non_blocking=nb))

