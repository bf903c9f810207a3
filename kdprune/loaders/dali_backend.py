"""The DALI backend: CPU pipelines (``device_id=None``) fed by ``external_source`` with exactly the
kept ids of each batch, in our (seed, epoch) order and this rank's shard of it.

A converted DALI dataset is a directory (see :func:`write_dali`): raw arrays as one ``images.npy``
(memory-mapped, so a batch reads only its rows), or for a JPEG folder a DALI file list ``files.txt``
of ``path sample_id`` lines, whose files DALI's decoder (``fn.decoders.image``, ``workers`` threads)
turns into RGB images. The source callback reads the bytes and counts each id it reads. The replayed
training crop is cut from DALI's uint8 batches by the numba kernel the FFCV backend uses
(``crop_kernel.crop_batch_into``), not by DALI's own crop and resize, whose sampling differs from the
teacher store's (grid_sample's).

Why ``external_source`` rather than ``fn.readers.file(files=..., labels=ids, shard_id=, num_shards=)``:
the reader shuffles with its own buffered RNG and splits shards into contiguous ranges of possibly
different lengths, so it could not serve the order and the equal, disjoint shards that the torch and
FFCV backends serve for the same (seed, epoch).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from kdprune.errors import DataError
from kdprune.loaders.base import NATIVE_THREADS, KeptIdLoader
from kdprune.loaders.converted import check_index_fingerprint, read_manifest, source_info, write_manifest


def write_dali(source, path: str) -> dict:
    """Convert an :class:`ArrayDataset` to ``path/images.npy`` + ``labels.npy``, or a JPEG
    :class:`FolderDataset` to the file list ``path/files.txt`` + ``labels.npy``; returns the manifest."""
    from kdprune.data.folder import FolderDataset
    os.makedirs(path, exist_ok=True)
    files = ["labels.npy"]
    _save_atomic(os.path.join(path, "labels.npy"), lambda f: np.save(f, np.asarray(source.labels, np.int64)))
    if isinstance(source, FolderDataset):
        lines = "".join(f"{p} {i}\n" for i, p in enumerate(source.paths))
        _save_atomic(os.path.join(path, "files.txt"), lambda f: f.write(lines.encode()))
        files.append("files.txt")
    else:
        _save_atomic(os.path.join(path, "images.npy"), lambda f: np.save(f, np.ascontiguousarray(source.images)))
        files.append("images.npy")
    return write_manifest(path, "dali", source_info(source), files)


def _save_atomic(path: str, write) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


class _BatchSource:
    """DALI's ``external_source`` callback: batch ``info.iteration`` of the loader's current epoch."""

    def __init__(self, loader: "DALILoader"):
        self.loader = loader
        self.order = np.zeros(0, dtype=np.int64)

    def __call__(self, info):
        bs = self.loader.batch_size
        ids = self.order[info.iteration * bs:(info.iteration + 1) * bs]
        if len(ids) == 0:
            raise StopIteration
        # dense batches ([B, ...] arrays) where the samples allow: far cheaper than lists of arrays
        labels = np.ascontiguousarray(self.loader.labels[ids], dtype=np.int64)[:, None]
        return self.loader.read(ids), labels, np.ascontiguousarray(ids, dtype=np.int64)[:, None]


class DALILoader(KeptIdLoader):
    """Batches of the kept ids of a converted DALI dataset (see :func:`write_dali`)."""

    def __init__(self, path: str, ids, *, source=None, workers: int = 2, **kwargs):
        manifest = read_manifest(path, "dali", source)
        check_index_fingerprint(ids, manifest)
        super().__init__(manifest["num_samples"], ids, **kwargs)
        self.path, self.manifest, self.workers = path, manifest, max(int(workers), 1)
        self.jpeg = manifest["encoding"] == "jpeg"
        self.labels = np.load(os.path.join(path, "labels.npy"))
        if self.jpeg:
            with open(os.path.join(path, "files.txt")) as f:
                self.files = [line.rsplit(" ", 1)[0] for line in f.read().splitlines()]
        else:
            self.images = np.load(os.path.join(path, "images.npy"), mmap_mode="r")
        if len(self.labels) != self.num_samples:
            raise DataError(f"{path}: {len(self.labels)} labels for {self.num_samples} samples; re-run "
                            f"`kdprune convert --format dali --out {path}`")
        self._source = _BatchSource(self)
        self._pipe = None
        self._serving = None  # a token for the epoch being served

    def read(self, ids):
        """The stored samples ``ids``, counted as read: a list of encoded JPEGs, or one raw array."""
        self.counter.note(ids)
        if self.jpeg:
            out = []
            for i in ids:
                try:
                    out.append(np.fromfile(self.files[i], dtype=np.uint8))
                except OSError as err:
                    raise DataError(f"cannot read {self.files[i]} listed in {self.path}/files.txt ({err}); "
                                    "re-run `kdprune convert --format dali` on the folder") from err
            return out
        rows = self.images[np.sort(ids)]  # one sorted gather from the memory map
        return np.ascontiguousarray(rows[np.argsort(np.argsort(ids))])

    def _pipeline(self):
        if self._pipe is None:
            import nvidia.dali.fn as fn
            import nvidia.dali.types as types
            from nvidia.dali import Pipeline

            NATIVE_THREADS["started"] = True
            pipe = Pipeline(batch_size=self.batch_size, num_threads=self.workers, device_id=None,
                            seed=self.seed, prefetch_queue_depth=2)
            with pipe:
                images, labels, ids = fn.external_source(source=self._source, num_outputs=3, batch=True,
                                                         batch_info=True)
                if self.jpeg:
                    images = fn.decoders.image(images, device="cpu", output_type=types.RGB)
                pipe.set_outputs(images, labels, ids)
            pipe.build()
            self._pipe = pipe
        return self._pipe

    def _decoded_batches(self, order):
        if self._serving is not None:  # an epoch left mid-way, still referenced: its pipeline is spent
            self._pipe = None
        self._serving = token = object()
        self._source.order = order
        pipe = self._pipeline()
        finished = False
        try:
            while True:
                try:
                    images, labels, ids = pipe.run()
                except StopIteration:
                    finished = True
                    break
                yield self._as_arrays(images, labels, ids)
        finally:
            if self._serving is token:  # (a stale epoch closed late touches nothing)
                self._serving = None
                if finished:
                    pipe.reset()
                else:  # left mid-epoch: DALI's prefetched batches belong to this epoch, start afresh
                    self._pipe = None

    def _finish(self, images, labels, ids, view):
        """The replayed crop straight from DALI's uint8 batch, by ``crop_kernel.crop_batch_into``
        (grid_sample's sampling, samples spread over numba's threads): no float copy of the whole
        images is made first, which for 256 images of 256 px is 200 MB per batch. A large batch of crops
        (256 of 224 px: 154 MB) goes into pooled memory (``_batch_memory``): fresh, it was mapped anew
        by malloc and page-faulted in every time."""
        if self.augment is None:
            return super()._finish(images, labels, ids, view)
        from kdprune.loaders.crop_kernel import box_table, crop_batch_into
        n, height, width, channels = images.shape
        out_h, out_w = self.augment.out_size or (height, width)
        shape = (n, channels, out_h, out_w)
        memory = self._batch_memory(shape)
        out = torch.empty(shape, dtype=torch.float32) if memory is None else torch.from_numpy(memory)
        crop_batch_into(images, box_table(self.augment, view, ids, height, width), out.numpy())
        return self._to_device(out, labels, ids)

    def _as_arrays(self, images, labels, ids):
        try:
            images = images.as_array()
        except (RuntimeError, ValueError) as err:
            raise DataError(f"{self.path}: images of different sizes in one batch ({err}); the loaders "
                            "need one image size: resize the images to one size first") from err
        return images, labels.as_array().reshape(-1), ids.as_array().reshape(-1)
