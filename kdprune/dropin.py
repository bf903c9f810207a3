"""Drop kdprune into a training script you already have: your dataset, your model, your loop.

Three pieces, each usable alone:

- :func:`with_ids` wraps any map-style dataset so item ``i`` is ``(x, y, i)``: the sample id is what a
  :class:`~kdprune.TeacherStore` is read by (``store.gather(ids)``).
- :class:`KeptIdSampler` is a ``torch.utils.data.Sampler`` over the kept ids of a pruned subset, in
  the same ``(seed, epoch)`` order as kdprune's own loaders, sharded across DDP ranks like
  ``DistributedSampler``.
- :func:`fingerprint` identifies a dataset that has no kdprune fingerprint (its length and labels), so
  a store or a subset made for one dataset is refused on another.

Example::

    import torch, kdprune
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(100, 3, 8, 8), torch.arange(100) % 10)
    subset = kdprune.prune(None, 0.3, labels=data.tensors[1])
    loader = DataLoader(kdprune.with_ids(data), batch_size=10, sampler=kdprune.KeptIdSampler(subset))
    for x, y, ids in loader:
        pass  # ids index the teacher store: store.gather(ids)
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from kdprune.errors import ConfigError, DataError
from kdprune.loaders.batch import Batch, check_ids, epoch_order, resolve_distributed

__all__ = ["with_ids", "WithIds", "KeptIdSampler", "fingerprint", "dataset_labels", "as_batches"]

_X_KEYS = ("image", "img", "pixel_values", "input", "x")
_Y_KEYS = ("label", "labels", "target", "y")


class WithIds(torch.utils.data.Dataset):
    """``dataset`` whose item ``i`` is ``(x, y, i)``; made by :func:`with_ids`. Attributes the wrapped
    dataset has (``targets``, ``classes``, ...) read through, and it pickles for DataLoader workers."""

    def __init__(self, dataset):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise DataError(f"with_ids needs a map-style dataset (with __getitem__ and __len__), got "
                            f"{type(dataset).__name__}; an iterable dataset has no sample ids to prune by")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = _x_y(self.dataset[i], i)
        return x, y, i

    def __getattr__(self, name):
        # only called for names not found normally; never for `dataset` itself (recursion while unpickling)
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"with_ids({self.dataset!r})"


def with_ids(dataset) -> WithIds:
    """Wrap a map-style dataset whose item is ``(x, y, ...)`` so that item ``i`` is ``(x, y, i)``.

    Items that are dicts (Hugging Face datasets) are read by their ``image``/``pixel_values`` and
    ``label`` keys. The wrapper pickles, so it works with DataLoader workers.

    >>> import torch, kdprune
    >>> data = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    >>> kdprune.with_ids(data)[3]
    (tensor([0., 0.]), tensor(1), 3)
    """
    return dataset if isinstance(dataset, WithIds) else WithIds(dataset)


def _x_y(item, i):
    if isinstance(item, dict):
        x = next((item[k] for k in _X_KEYS if k in item), None)
        y = next((item[k] for k in _Y_KEYS if k in item), None)
        if x is not None and y is not None:
            return x, y
        raise DataError(f"item {i} is a dict with keys {sorted(item)}; with_ids reads an input key "
                        f"({', '.join(_X_KEYS)}) and a label key ({', '.join(_Y_KEYS)}): rename the columns")
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise DataError(f"item {i} of the dataset is a {type(item).__name__}, not (x, y, ...); with_ids needs "
                    "items of the form (input, label)")


class KeptIdSampler(torch.utils.data.Sampler):
    """Yields the kept sample ids of a pruned subset, once each per epoch.

    ``ids``: an :class:`~kdprune.IndexSet` or an array of sample ids. With ``shuffle`` the order is a
    permutation seeded by ``(seed, epoch)`` -- the very order kdprune's loaders serve -- so call
    :meth:`set_epoch` at the start of every epoch. Under DDP (``distributed=(rank, world_size)``, or an
    initialised process group when ``distributed`` is None) each rank gets a disjoint shard of equal
    length, and the shards cover the subset, as with ``DistributedSampler`` (the last few ids are
    repeated to make the shards equal, or dropped with ``drop_last``). ``num_samples``, when given,
    checks that every id lies in ``[0, num_samples)``.

    >>> import kdprune
    >>> s = kdprune.KeptIdSampler([0, 2, 5, 9], seed=1)
    >>> s.set_epoch(3)
    >>> sorted(s)
    [0, 2, 5, 9]
    >>> [len(kdprune.KeptIdSampler(range(10), distributed=(r, 4))) for r in range(4)]
    [3, 3, 3, 3]
    """

    def __init__(self, ids, *, shuffle: bool = True, seed: int = 0, distributed=None, drop_last: bool = False,
                 num_samples: int | None = None):
        arr = np.asarray(getattr(ids, "ids", ids) if not isinstance(ids, range) else list(ids))
        if arr.dtype.kind not in "iu" and arr.size:
            raise DataError(f"KeptIdSampler takes integer sample ids (an IndexSet or an id array), got {arr.dtype}")
        if num_samples is None:
            if arr.size and arr.min() < 0:
                raise DataError(f"sample ids must be >= 0, found {arr.min()}")
            num_samples = int(arr.max()) + 1 if arr.size else 0
        self.ids = check_ids(arr, num_samples)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.rank, self.world = resolve_distributed(distributed)
        if drop_last and len(self.ids) < self.world:
            raise ConfigError(f"{len(self.ids)} kept ids cannot be split over {self.world} ranks with drop_last")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """This rank's ids for ``epoch`` (default: the current one) as an array."""
        epoch = self.epoch if epoch is None else int(epoch)
        return epoch_order(self.ids, seed=self.seed, epoch=epoch, shuffle=self.shuffle, rank=self.rank,
                           world=self.world, drop_last=self.drop_last, batch_size=1)

    def __iter__(self):
        return iter(self.order().tolist())

    def __len__(self) -> int:
        n = len(self.ids)
        return n // self.world if self.drop_last else math.ceil(n / self.world)


def dataset_labels(dataset) -> np.ndarray | None:
    """The labels a dataset exposes without reading its samples, as int64, or None.

    Read from ``.targets`` (torchvision), ``.labels`` (kdprune, some torchvision sets), a ``label``
    column (Hugging Face datasets), a ``TensorDataset``'s second tensor, or through a ``Subset``, a
    ``ConcatDataset`` or :func:`with_ids`.

    >>> import torch
    >>> from kdprune.dropin import dataset_labels
    >>> data = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.tensor([2, 0, 1, 2]))
    >>> dataset_labels(torch.utils.data.Subset(data, [3, 1]))
    array([2, 0])
    """
    if isinstance(dataset, WithIds):
        return dataset_labels(dataset.dataset)
    if isinstance(dataset, torch.utils.data.Subset):
        parent = dataset_labels(dataset.dataset)
        return None if parent is None else parent[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return _as_labels(dataset.tensors[1]) if len(dataset.tensors) >= 2 else None
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        parts = [dataset_labels(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else np.concatenate(parts)
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None and not callable(labels):
            return _as_labels(labels)
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, (list, tuple)):
        key = next((k for k in _Y_KEYS if k in columns), None)
        if key is not None:
            return _as_labels(dataset[key])
    return None


def _as_labels(labels) -> np.ndarray | None:
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError):
        return None
    return arr.astype(np.int64) if arr.ndim == 1 and arr.dtype.kind in "iub" else None


def fingerprint(dataset, name: str | None = None) -> str:
    """A short stable identifier of ``dataset`` for the provenance checks (a store, a score file or a
    subset made for one dataset is refused on another).

    A kdprune dataset's own ``.fingerprint`` is returned as it is. For any other dataset it hashes
    what is cheap and stable: the length and the labels where the dataset exposes them
    (:func:`dataset_labels`), and its class names (``.classes``). ``name`` is mixed in: pass one (a
    version string, say) for a dataset that exposes no labels, or to tell apart two datasets with the
    same labels.

    >>> import torch, kdprune
    >>> a = torch.utils.data.TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 1]))
    >>> b = torch.utils.data.TensorDataset(torch.ones(3, 1), torch.tensor([0, 1, 1]))
    >>> kdprune.fingerprint(a) == kdprune.fingerprint(b), kdprune.fingerprint(a) == kdprune.fingerprint(a, "v2")
    (True, False)
    """
    if isinstance(dataset, WithIds):
        return fingerprint(dataset.dataset, name)
    own = getattr(dataset, "fingerprint", None)
    if isinstance(own, str) and own and name is None:
        return own
    h = hashlib.sha256(f"kdprune-dataset|{len(dataset)}|{name or ''}|".encode())
    labels = dataset_labels(dataset)
    if labels is not None:
        h.update(b"labels")
        h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)):
        h.update(("|".join(map(str, classes))).encode())
    return h.hexdigest()[:16]


def dataset_name(dataset) -> str:
    """A readable name for messages: the dataset's ``name``, else its class and, for a folder, its root."""
    if isinstance(dataset, WithIds):
        return dataset_name(dataset.dataset)
    name = getattr(dataset, "name", None)
    if isinstance(name, str) and name:
        return name
    root = getattr(dataset, "root", None)
    return f"{type(dataset).__name__}({root})" if isinstance(root, str) else type(dataset).__name__


class _Batches:
    """A user's loader seen as kdprune's: :class:`~kdprune.loaders.Batch` items on ``device``, with
    ``len()`` and a ``set_epoch`` that reaches the loader's sampler."""

    def __init__(self, loader, device, need_ids: bool):
        self.loader, self.device, self.need_ids = loader, torch.device(device), need_ids
        self.dataset = getattr(loader, "dataset", None)
        self.sampler = getattr(loader, "sampler", None)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        for target in (self.loader, self.sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
            if target is not None and hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
                return

    def __iter__(self):
        nb = self.device.type == "cuda"
        for item in self.loader:
            x, y, ids = self._fields(item)
            ids = ids.to(self.device, non_blocking=nb) if ids is not None else None
            yield Batch(x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb), ids)

    def _fields(self, item):
        if isinstance(item, Batch):
            return item
        if isinstance(item, (tuple, list)) and len(item) >= 3:
            return item[0], item[1], torch.as_tensor(item[2])
        if isinstance(item, (tuple, list)) and len(item) == 2 and not self.need_ids:
            return item[0], item[1], None
        raise DataError(f"the training loader yields {type(item).__name__} items of {len(item) if hasattr(item, '__len__') else '?'} "
                        "fields; it must yield (x, y, ids): wrap the dataset as DataLoader(kdprune.with_ids(dataset), ...)")


def as_batches(loader, device="cpu", *, need_ids: bool = True):
    """``loader`` as the trainer reads it: a kdprune loader as it is; a ``DataLoader`` (or any iterable
    with ``len()``) of ``(x, y, ids)`` tuples -- or ``(x, y)`` when ``need_ids`` is False, as for
    evaluation -- as :class:`~kdprune.loaders.Batch` items moved to ``device``.

    >>> import torch
    >>> from kdprune.dropin import as_batches
    >>> data = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    >>> next(iter(as_batches(torch.utils.data.DataLoader(data, batch_size=4), need_ids=False))).y
    tensor([0, 1, 0, 1])
    """
    if hasattr(loader, "set_epoch") and not isinstance(loader, torch.utils.data.DataLoader):
        return loader
    if not hasattr(loader, "__len__"):
        raise DataError(f"the loader ({type(loader).__name__}) has no len(); use a map-style dataset in a DataLoader")
    return _Batches(loader, device, need_ids)


def loader_dataset(loader):
    """The dataset behind a loader (a DataLoader's ``.dataset``, a kdprune loader's source), or None."""
    ds = getattr(loader, "dataset", None) or getattr(loader, "folder", None)
    return ds.dataset if isinstance(ds, WithIds) else ds


def loader_keep_fraction(loader) -> float | None:
    """The fraction of its dataset a loader serves per epoch (kept ids / samples), when it can tell."""
    ds = loader_dataset(loader)
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, (torch.utils.data.SequentialSampler, torch.utils.data.RandomSampler)) \
            and len(sampler) == len(sampler.data_source):
        return 1.0
    ids = getattr(sampler, "ids", None) if isinstance(sampler, KeptIdSampler) else getattr(loader, "ids", None)
    if ds is None or ids is None or not hasattr(ds, "__len__") or len(ds) == 0:
        return None
    return len(ids) / len(ds)
