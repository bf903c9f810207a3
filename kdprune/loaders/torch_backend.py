"""The plain PyTorch backend: any map-style dataset whose item is ``(x, y)`` (kdprune's JPEG folder,
a torchvision dataset, a Hugging Face dataset in torch format, a class of yours) through a
``torch.utils.data.DataLoader`` whose worker processes read only the ids of their batches; or an
in-memory :class:`~kdprune.data.ArrayDataset`, indexed in the main process.

The DataLoader's batch sampler plays DistributedSampler's part: it yields this rank's shard of the
epoch's permutation (``epoch_order``, the same on every backend), so shards are disjoint and
equal-length. Inputs that are images (uint8 arrays ``[H, W(, C)]``, PIL images, uint8 tensors
``[C, H, W]``) are turned into the model's batch in the workers by ``crop_batch``: the replayed view
``epoch % views`` of ``augment`` in training, resize + centre crop to ``image_size`` in evaluation,
whatever each image's size. Float tensors are taken as inputs the dataset already made.

An error raised while reading or collating a batch in a worker reaches the caller as one
:class:`~kdprune.errors.DataError` naming the sample, not as a worker's traceback.
"""
from __future__ import annotations

import pickle
import threading

import numpy as np
import torch

from kdprune.data.augment import Augment, crop_batch
from kdprune.errors import DataError, KDPruneError
from kdprune.loaders.base import NATIVE_THREADS, KeptIdLoader, ReadCounter
from kdprune.loaders.batch import Batch, check_subset, to_grey


class ArrayLoader(KeptIdLoader):
    """Batches of the kept ids of an in-memory dataset; each step indexes only the ids of its batch."""

    def __init__(self, dataset, ids, **kwargs):
        self.dataset, self.name = dataset, dataset.name
        super().__init__(len(dataset), ids, **kwargs)

    def _decoded_batches(self, order):
        for start in range(0, len(order), self.batch_size):
            ids = order[start:start + self.batch_size]
            self.counter.note(ids)
            yield self.dataset.images[ids], self.dataset.labels[ids], ids


class _Failure(tuple):
    """What a worker returns instead of raising: the message the caller raises as a DataError."""


class _Samples(torch.utils.data.Dataset):
    """Item ``(id, view)``: sample ``id`` of the dataset as ``(x, y, id, view)``, read and counted
    in the worker; an exception comes back as a ``_Failure`` naming the sample."""

    def __init__(self, dataset, counter: ReadCounter, name: str):
        self.dataset, self.counter, self.name = dataset, counter, name

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        from kdprune.dropin import with_ids
        i, view = item
        try:
            x, y, _ = with_ids(self.dataset)[i]
        except Exception as err:  # noqa: BLE001 -- handed to the caller as one clear message
            return _Failure((_describe(err, f"reading sample {i} of {self.name}"),))
        self.counter.note([i])
        return x, y, i, view


def _describe(err: BaseException, doing: str) -> str:
    if isinstance(err, KDPruneError):
        return str(err)
    return f"{doing} failed: {type(err).__name__}: {err}"


def _as_image(x):
    """uint8 ``[H, W, C]`` for an image input (PIL, uint8 array, uint8 tensor ``[C, H, W]`` or
    ``[H, W, C]``), or None for an input the dataset already made (a float tensor or array)."""
    if hasattr(x, "getbands"):  # a PIL image
        x = np.array(x if x.mode in ("L", "RGB") else x.convert("RGB"))
    elif torch.is_tensor(x):
        if x.dtype != torch.uint8:
            return None
        x = x.numpy()
        if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[2] not in (1, 3):
            x = x.transpose(1, 2, 0)  # torchvision's [C, H, W]; Hugging Face's are [H, W, C] already
    x = np.asarray(x)
    if x.dtype != np.uint8:
        return None
    return x[..., None] if x.ndim == 2 else x


class _Collate:
    """A batch's samples -> ``(x, y, ids)``, images cropped here, in the worker processes."""

    def __init__(self, augment: Augment | None, image_size, name: str, dtype: str = "float32"):
        self.augment, self.image_size, self.name, self.dtype = augment, image_size, name, dtype

    def __call__(self, samples):
        failed = [s for s in samples if isinstance(s, _Failure)]
        if failed:
            return failed[0]
        xs, ys, ids, views = zip(*samples)
        try:
            y = torch.as_tensor(np.asarray([int(v) for v in ys], dtype=np.int64))
            ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
            return self._inputs(xs, ids_t, views[0]), y, ids_t
        except Exception as err:  # noqa: BLE001
            return _Failure((_describe(err, f"making a batch of samples {list(ids)[:4]}... of {self.name}"),))

    def _inputs(self, xs, ids, view):
        images = [_as_image(x) for x in xs]
        if all(im is not None for im in images):
            x = crop_batch(images, ids, augment=self.augment, view=view, image_size=self.image_size,
                           where=self.name)
            return to_grey(x) if self.dtype == "uint8" else x  # made here: a quarter of the bytes to send
        if self.dtype == "uint8":
            raise DataError(f"{self.name} makes float inputs itself (its transform), which have no grey levels: "
                            "leave the loader's dtype as float32, or let the dataset return images")
        x = torch.stack([torch.as_tensor(v) for v in xs])  # inputs the dataset made
        return self.augment.apply(x, view, ids) if self.augment is not None else x


class _EpochBatches(torch.utils.data.Sampler):
    """Batches of ``(id, view)`` for the loader's current epoch (read when an epoch starts, so
    ``set_epoch`` takes effect with persistent workers too)."""

    def __init__(self, loader: "DatasetLoader"):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        order, view, bs = self.loader.order(), self.loader.view(), self.loader.batch_size
        for start in range(0, len(order), bs):
            yield [(int(i), view) for i in order[start:start + bs]]


def _start_method(workers: int, *parts) -> str | None:
    """How the DataLoader starts its workers: fork (the default) while this process runs one thread,
    spawn once other threads run (FFCV's or DALI's native threads, the trainer's teacher thread, a
    progress bar's monitor). A fork taken while another thread holds one of the interpreter's own
    locks leaves the child waiting on it for ever: seen on CPython 3.11.7, where a forked worker hung in
    ``PyOS_AfterFork_Child`` (CPython issue gh-112275, fixed in later releases) and its rank stopped
    serving. Spawned workers unpickle the dataset; one that does not pickle keeps fork."""
    if workers == 0 or (threading.active_count() == 1 and not NATIVE_THREADS["started"]):
        return None
    try:
        pickle.dumps(parts)
    except Exception:  # noqa: BLE001 - any pickling failure: fork is the only way to hand it over
        return None
    return "spawn"


class DatasetLoader(KeptIdLoader):
    """A DataLoader with ``workers`` processes over the kept ids of a map-style dataset."""

    def __init__(self, dataset, ids, *, workers: int = 2, name: str = "the dataset", **kwargs):
        self.dataset, self.workers, self.name = dataset, int(workers), name
        super().__init__(len(dataset), ids, **kwargs)
        self._loader = None

    def close(self) -> None:
        self._loader = None  # its persistent workers stop with it

    def _data_loader(self):
        if self._loader is None:  # built once: persistent workers keep start-up out of every epoch
            samples = _Samples(self.dataset, self.counter, self.name)
            collate = _Collate(self.augment, self.image_size, self.name, self.dtype)
            self._loader = torch.utils.data.DataLoader(
                samples, batch_sampler=_EpochBatches(self), num_workers=self.workers, collate_fn=collate,
                persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers > 0 else None,
                multiprocessing_context=_start_method(self.workers, samples, collate))
        return self._loader

    def __iter__(self):
        nb = self.device.type == "cuda"
        for out in self._data_loader():
            if isinstance(out, _Failure):
                raise DataError(out[0])
            x, y, ids = out
            yield Batch(x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb),
                        ids.to(self.device, non_blocking=nb))


def make_torch_loader(source, ids, **kwargs) -> KeptIdLoader:
    """The torch backend for ``source``: an in-memory ArrayDataset, or any map-style dataset."""
    from kdprune.data import ArrayDataset
    from kdprune.dropin import dataset_name, fingerprint
    if not hasattr(source, "__getitem__") or not hasattr(source, "__len__"):
        raise DataError(f"the torch backend reads a map-style dataset (with __getitem__ and __len__), got "
                        f"{type(source).__name__}")
    name = dataset_name(source)
    check_subset(ids, lambda: fingerprint(source), name)
    if isinstance(source, ArrayDataset):
        kwargs.pop("workers", None)  # in-memory indexing needs no workers
        return ArrayLoader(source, ids, **kwargs)
    return DatasetLoader(source, ids, name=name, **kwargs)
