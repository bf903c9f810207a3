"""The teacher -> store step: a teacher's logits for every sample (and every augmented view) of a
dataset, computed once into a :class:`~kdprune.TeacherStore`.

Any ``nn.Module`` and any map-style dataset whose item is ``(x, y, ...)`` (a torchvision dataset with a
``ToTensor`` transform, a Hugging Face dataset in torch format, your own class), or a kdprune dataset.
Resumable: an interrupted call leaves ``PATH.partial``, and calling again with the same arguments
computes only the rows not committed yet. A store already published at ``PATH`` with the same
parameters is returned as it is.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from kdprune.dropin import WithIds, dataset_name, fingerprint
from kdprune.errors import ConfigError, DataError, StoreError
from kdprune.loaders.batch import resolve_distributed
from kdprune.store import TeacherStore
from kdprune.store import format as fmt
from kdprune.store.fill import describe_model

__all__ = ["write_teacher_logits"]


@torch.no_grad()
def write_teacher_logits(teacher: torch.nn.Module, dataset, path, *, views: int = 1, augment=None,
                         batch_size: int = 256, device="cpu", dtype: str = "float16", topk: int | None = None,
                         num_classes: int | None = None, workers: int = 2, description: dict | None = None,
                         dataset_fingerprint: str | None = None, chunk_rows: int | None = None, distributed=None,
                         image_size=None, loader: str = "torch", converted=None, progress: bool = True) -> TeacherStore:
    """Run ``teacher`` over every sample of ``dataset`` and store its logits at ``path``; returns the
    opened store (``store.gather(ids)`` reads them back by sample id).

    ``views > 1`` stores the teacher's output on that many augmented views of each sample (view ``v`` of
    sample ``i``: ``augment.apply(x, v, [i])``, default :class:`~kdprune.data.Augment`); a training run
    replays view ``epoch % views``. ``dtype`` (``float16``, ``bfloat16``, ``float32``) and ``topk`` (keep
    the k largest logits per sample) set the store's size. ``num_classes`` defaults to the dataset's
    ``num_classes`` or the width of the teacher's output. ``workers`` (default 2): DataLoader processes
    that read and decode the batches (and crop their views) of a dataset not held in memory -- a kdprune
    JPEG folder goes through kdprune's torch loader over the missing ids in order -- while this process
    runs the teacher and writes the rows; 0 reads in this process; in-memory datasets ignore it.
    ``loader`` (``"torch"``, ``"ffcv"`` or ``"dali"``): the loader backend that decodes and crops;
    FFCV and DALI read ``converted``, the dataset converted by :func:`kdprune.convert` (checked against
    the dataset), with ``workers`` threads, and crop the same views as the torch backend.
    ``description``: a JSON description of the teacher recorded in
    the store (default: its class and a hash of its weights, so a resume with other weights is
    refused). ``dataset_fingerprint`` defaults to :func:`kdprune.fingerprint` of the dataset. Under
    torchrun (an initialised process group; ``distributed=False`` turns it off) every rank calls it and
    computes its share of the batches; rank 0 writes them, and every rank gets the opened store.
    ``image_size`` (int or (H, W)): for kdprune's datasets, the size of the unaugmented input (resize +
    centre crop, as evaluation does) and of the views when ``augment`` has no ``out_size``; images of
    varied sizes need one. Views are cropped relative to each image's own size.

    >>> import tempfile, torch, kdprune
    >>> data = torch.utils.data.TensorDataset(torch.randn(50, 3, 8, 8), torch.arange(50) % 10)
    >>> teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    >>> store = kdprune.write_teacher_logits(teacher, data, tempfile.mkdtemp() + "/logits", progress=False)
    >>> store.gather(torch.tensor([0, 7])).shape
    torch.Size([2, 10])
    """
    from kdprune.data import Augment

    path = os.fspath(path)
    if views < 1:
        raise StoreError(f"views must be >= 1, got {views}")
    if batch_size < 1:
        raise StoreError(f"batch_size must be >= 1, got {batch_size}")
    if augment is None and views > 1:
        augment = Augment()
    source = dataset.dataset if isinstance(dataset, WithIds) else dataset
    teacher = teacher.to(device).eval()
    fp = dataset_fingerprint or fingerprint(source)
    kwargs = dict(views=views, dtype=dtype, topk=topk, dataset_fingerprint=fp, dataset_name=dataset_name(source),
                  teacher=description if description is not None else describe_model(teacher), augment=augment,
                  input_size=image_size)  # recorded in the store, so training replays the same inputs
    inputs = _Inputs(source, workers, image_size, loader, converted, device)
    if num_classes is None:
        num_classes = getattr(source, "num_classes", None) or _output_width(teacher, inputs, device)
    existing = _published(path, len(source), num_classes, chunk_rows, kwargs)
    if existing is not None:
        return existing
    rank, world = resolve_distributed(distributed)
    with inputs:
        if world > 1:
            return _write_sharded(teacher, inputs, path, len(source), num_classes, chunk_rows, kwargs, batch_size,
                                  device, progress, rank, world)
        return _write(teacher, inputs, path, len(source), num_classes, chunk_rows, kwargs, batch_size, device,
                      progress)


def _write(teacher, inputs, path, num_samples, num_classes, chunk_rows, kwargs, batch_size, device,
           progress) -> TeacherStore:
    """One process computes and writes every missing row, view by view, ids in order."""
    augment, views = kwargs["augment"], kwargs["views"]
    writer = TeacherStore.create(path, num_samples, num_classes, chunk_rows=chunk_rows, **kwargs)
    with writer:
        todo = [(v, writer.missing(v)) for v in range(views)]
        bar = _bar(sum(len(ids) for _, ids in todo), progress, resumed=writer.resumed, name=kwargs["dataset_name"])
        for view, ids in todo:
            for batch, x in inputs.batches(ids, batch_size, augment, view):
                x = x.to(device)
                writer.write(batch, teacher(x).float().cpu(), view=view)
                bar.update(len(batch))
        bar.close()
    return TeacherStore.open(path, expect_fingerprint=kwargs["dataset_fingerprint"])


def _write_sharded(teacher, inputs, path, num_samples, num_classes, chunk_rows, kwargs, batch_size, device,
                   progress, rank, world) -> TeacherStore:
    """Every rank computes every ``world``-th batch of the missing rows; rank 0 gathers them and is the
    one writer (so a resume after a kill works as in one process). Collective: all ranks call it."""
    import contextlib

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(f"writing teacher logits from {world} ranks needs an initialised process group "
                          "(launch with torchrun and call torch.distributed.init_process_group first)")
    writer = TeacherStore.create(path, num_samples, num_classes, chunk_rows=chunk_rows, **kwargs) if rank == 0 else None
    todo = [[(v, writer.missing(v)) for v in range(kwargs["views"])] if rank == 0 else None]
    dist.broadcast_object_list(todo, src=0)
    augment = kwargs["augment"]
    with writer if writer is not None else contextlib.nullcontext():
        bar = _bar(sum(len(ids) for _, ids in todo[0]), progress and rank == 0,
                   resumed=writer is not None and writer.resumed, name=kwargs["dataset_name"])
        for view, ids in todo[0]:
            slices = [ids[s:s + batch_size] for s in range(0, len(ids), batch_size)]
            mine = slices[rank::world]
            batches = inputs.batches(np.concatenate(mine) if mine else ids[:0], batch_size, augment, view)
            for _ in range(-(-len(slices) // world)):
                item = next(batches, None)
                out = None if item is None else (item[0], teacher(item[1].to(device)).float().cpu())
                got = [None] * world if rank == 0 else None
                dist.gather_object(out, got, dst=0)
                for part in got or ():
                    if part is not None:
                        writer.write(part[0], part[1], view=view)
                        bar.update(len(part[0]))
            batches.close()  # a rank with a full last round has not run its loader's epoch to the end
        bar.close()
    dist.barrier()  # rank 0 has published the store
    return TeacherStore.open(path, expect_fingerprint=kwargs["dataset_fingerprint"])


class _Inputs:
    """The teacher's input batches of given ids: read by a kdprune loader (an FFCV or DALI conversion,
    or a kdprune JPEG folder with torch workers), indexed (in memory), decoded in this process, or, for
    any other dataset, read through a DataLoader over those ids. A context manager: leaving it stops
    the loader's workers."""

    def __init__(self, dataset, workers: int, image_size=None, loader: str = "torch", converted=None, device="cpu"):
        from kdprune.loaders import check_source

        check_source(loader, converted)  # before the store is created: a bad choice writes nothing
        self.dataset, self.workers, self.image_size = dataset, int(workers), image_size
        self.backend, self.converted = loader, converted
        self.device = device  # the teacher's: FFCV and DALI hand a GPU grey levels, normalised there
        self._loader = None  # the kdprune loader, made on first use and kept for every view

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._loader is not None:
            self._loader.close()
            self._loader = None

    def first(self) -> torch.Tensor:
        return next(_Inputs(self.dataset, 0, self.image_size, device=self.device).batches(np.arange(1), 1))[1]

    def batches(self, ids: np.ndarray, batch_size: int, augment=None, view: int = 0):
        """``(ids, x)`` batches, ``x`` view ``view`` of ``augment`` (the unaugmented input without)."""
        from kdprune.data.augment import crop_batch

        ds = self.dataset
        ids = np.asarray(ids, dtype=np.int64)
        kdprune_set = hasattr(ds, "fingerprint") and (hasattr(ds, "images") or hasattr(ds, "decode"))
        folder = kdprune_set and hasattr(ds, "decode") and not hasattr(ds, "images")
        if self.backend != "torch" or (folder and self.workers > 0):
            yield from self._loader_batches(ids, batch_size, augment, view)
            return
        if kdprune_set:  # in memory, or a JPEG folder decoded at each image's own size
            for start in range(0, len(ids), batch_size):
                batch = ids[start:start + batch_size]
                images = ds.images[batch] if hasattr(ds, "images") else [ds.decode(int(i)) for i in batch]
                yield batch, crop_batch(images, batch, augment=augment, view=view, image_size=self.image_size,
                                        where=ds.name)
            return
        if not len(ids):
            return
        slices = [ids[s:s + batch_size].tolist() for s in range(0, len(ids), batch_size)]
        workers = 0 if isinstance(ds, torch.utils.data.TensorDataset) else self.workers  # in memory already
        loader = torch.utils.data.DataLoader(WithIds(ds), batch_sampler=slices, num_workers=workers,
                                             collate_fn=_collate_inputs)
        for x, batch in loader:
            yield batch, (augment.apply(x, view, batch) if augment is not None else x)

    def _loader_batches(self, ids: np.ndarray, batch_size: int, augment, view: int):
        """The batches of a kdprune loader: the torch backend's ``workers`` DataLoader processes, or
        FFCV's or DALI's threads over the converted copy, each batch cropped there as the training
        loaders crop it. ``ids`` are served in order (``shuffle=False``), so the store's chunks complete,
        and are committed, as the rows arrive; view ``view`` is epoch ``view`` of a loader with
        ``views=None``. One loader serves every view (``set_ids``), so workers start and FFCV compiles once."""
        from kdprune.loaders import build

        if not len(ids):
            return
        if self._loader is None:
            where = {"path": self.converted} if self.backend != "torch" else {}
            self._loader = build(self.backend, self.dataset, ids, batch_size=batch_size, train=True, shuffle=False,
                                 distributed=False, workers=self.workers, augment=augment, views=None,
                                 image_size=self.image_size, device=self.device, **where)
        else:
            self._loader.set_ids(ids)
        self._loader.set_epoch(view)
        for b in self._loader:
            yield b.ids.numpy(), b.x


def _collate_inputs(items):
    """Stack the inputs of a batch (the labels are not needed) and keep its ids."""
    xs = [item[0] for item in items]
    if not all(isinstance(x, torch.Tensor) for x in xs):
        kind = type(next(x for x in xs if not isinstance(x, torch.Tensor))).__name__
        raise DataError(f"the dataset's inputs are {kind}, not tensors; give the dataset a transform that "
                        "makes tensors (for torchvision: transform=torchvision.transforms.ToTensor())")
    if len({tuple(x.shape) for x in xs}) > 1:
        raise DataError(f"inputs of different shapes {sorted({tuple(x.shape) for x in xs})[:3]} in one batch; "
                        "resize them to one shape in the dataset's transform")
    return torch.stack(xs), np.asarray([item[2] for item in items], dtype=np.int64)


def _output_width(teacher, inputs: _Inputs, device) -> int:
    out = teacher(inputs.first().to(device))
    if out.ndim != 2:
        raise StoreError(f"the teacher's output has shape {tuple(out.shape)}; a teacher must return logits "
                         "[batch, num_classes]")
    return int(out.shape[1])


def _published(path: str, num_samples: int, num_classes: int, chunk_rows, kwargs: dict) -> TeacherStore | None:
    """The store published at ``path`` when it was made with these parameters; an error when it was not."""
    if not os.path.exists(path):
        return None
    store = TeacherStore.open(path)
    want = fmt.new_params(num_samples, num_classes, chunk_rows=chunk_rows or store.meta["chunk_rows"], **kwargs)
    diff = [k for k in fmt.PARAM_KEYS if store.meta.get(k) != want.get(k)]
    if diff:
        raise StoreError(f"a different teacher store already exists at {path} (differs in {', '.join(diff)}); "
                         "delete it or choose another output path")
    return store


def _bar(total: int, enabled: bool, resumed: bool, name: str):
    from tqdm.auto import tqdm

    desc = f"teacher logits on {name}" + (" (resumed)" if resumed else "")
    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, dynamic_ncols=True)
