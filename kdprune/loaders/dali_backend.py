"""The DALI backend: a CPU pipeline (``device_id=None``) fed by ``external_source`` with exactly the
kept ids of each batch, in our (seed, epoch) order and this rank's shard of it.

A converted DALI dataset is a directory (see :func:`write_dali`): for JPEGs a DALI file list
``files.txt`` of ``path sample_id`` lines naming the original files, each at its own size, which
DALI's decoder (``fn.decoders.image``, ``workers`` threads) turns into RGB images; raw arrays as one
``images.npy`` (memory-mapped, so a batch reads only its rows). The source callback reads the bytes
and counts each id it reads.

Crops: each decoded image is cut to the box ``kdprune.data.augment.crop_plan`` gives it (the
replayed view ``epoch % views`` in training, resize + centre crop to ``image_size`` in evaluation),
relative to its own size, by the numba kernel ``crop_kernel.crop_resize_into`` on ``workers``
threads: grid_sample's bilinear sampling in float64 coordinates, so batches equal the torch
backend's (and the teacher store's views) to float32 rounding. DALI's own crop and resize sample
differently (antialiasing, other pixel centres), which would give the student other crops than the
teacher's.

Why ``external_source`` rather than ``fn.readers.file(file_list=..., shard_id=, num_shards=)``: the
reader shuffles with its own buffered RNG and splits shards into contiguous ranges of possibly
different lengths, so it could not serve the order and the equal, disjoint shards that the torch and
FFCV backends serve for the same (seed, epoch).

Batch memory is used again (``recycle.BufferPool``: a batch's map goes back to the pool once the
caller has let go of it): on the ImageNet-like workload of ``benchmarks/bench_loaders.py`` (224 px
crops, batches of 64, 2 threads, 2-core VM) a fresh ``torch.empty`` per batch, a new 38 MB map
page-faulted in every time, served 1097 samples/s against 1707 pooled (medians of 3 interleaved runs
of 25 batches).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from kdprune.atomic import atomic_open
from kdprune.data.augment import crop_plan
from kdprune.errors import DataError
from kdprune.loaders.base import NATIVE_THREADS, KeptIdLoader
from kdprune.loaders.converted import (check_index_fingerprint, file_list, read_manifest, source_info,
                                       source_labels, write_manifest)


def write_dali(source, path) -> dict:
    """Convert a dataset for the DALI backend at directory ``path``; returns the manifest.

    A JPEG folder (or any dataset listing its JPEG files, as torchvision's ``ImageFolder`` does) is
    written as the file list ``files.txt`` of its original files, each kept at its own size; an
    in-memory :class:`~kdprune.data.ArrayDataset` as ``images.npy``. Both get ``labels.npy``."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    info = source_info(source)
    with atomic_open(os.path.join(path, "labels.npy"), "wb") as f:
        np.save(f, source_labels(source))
    files = ["labels.npy"]
    paths = file_list(source)
    if paths is not None:
        with atomic_open(os.path.join(path, "files.txt"), "w") as f:
            f.write("".join(f"{p} {i}\n" for i, p in enumerate(paths)))
        files.append("files.txt")
    elif hasattr(source, "images"):
        with atomic_open(os.path.join(path, "images.npy"), "wb") as f:
            np.save(f, np.ascontiguousarray(source.images))
        files.append("images.npy")
    else:
        raise DataError(f"{info['source']}: the DALI backend reads JPEG files or in-memory uint8 arrays; this "
                        "dataset has neither a list of its image files (.paths or .samples) nor .images: read "
                        "it with the torch backend (loaders.build('torch', dataset, ids))")
    return write_manifest(path, "dali", info, files)


class _BatchSource:
    """DALI's ``external_source`` callback: batch ``info.iteration`` of the loader's current epoch."""

    def __init__(self, loader: "DALILoader"):
        self.loader = loader
        self.order = np.zeros(0, dtype=np.int64)
        self.sent = []  # the ids of the batches handed to DALI and not yet served

    def __call__(self, info):
        bs = self.loader.batch_size
        ids = self.order[info.iteration * bs:(info.iteration + 1) * bs]
        if len(ids) == 0:
            raise StopIteration
        self.sent.append(ids)
        labels = np.ascontiguousarray(self.loader.labels[ids], dtype=np.int64)[:, None]
        return self.loader.read(ids), labels, np.ascontiguousarray(ids, dtype=np.int64)[:, None]


class DALILoader(KeptIdLoader):
    """Batches of the kept ids of a converted DALI dataset (see :func:`write_dali`)."""

    def __init__(self, path, ids, *, source=None, workers: int = 2, **kwargs):
        path = os.fspath(path)
        manifest = read_manifest(path, "dali", source)
        check_index_fingerprint(ids, manifest)
        self.name = manifest["source"]
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
        self._threads = None  # the crop threads
        self._pool = None  # batch memory used again

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
                                    "re-run `kdprune convert --format dali` on the dataset") from err
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
        self._source.order, self._source.sent = order, []
        pipe = self._pipeline()
        finished = False
        try:
            while True:
                try:
                    images, labels, ids = pipe.run()
                except StopIteration:
                    finished = True
                    break
                except RuntimeError as err:  # a file DALI could not decode: the pipeline is spent
                    self._pipe = None
                    raise self._decode_error(err) from None
                if self._source.sent:
                    self._source.sent.pop(0)
                yield self._as_arrays(images, labels, ids)
        finally:
            if self._serving is token:  # (a stale epoch closed late touches nothing)
                self._serving = None
                if finished:
                    pipe.reset()
                else:  # left mid-epoch: DALI's prefetched batches belong to this epoch, start afresh
                    self._pipe = None

    def _decode_error(self, err: RuntimeError) -> DataError:
        """A DataError naming the files among the batches in flight that are not readable images."""
        from kdprune.data.folder import decode_jpeg
        bad = []
        for i in (np.concatenate(self._source.sent) if self._source.sent and self.jpeg else []):
            try:
                decode_jpeg(np.fromfile(self.files[i], dtype=np.uint8).tobytes(), self.files[i])
            except DataError:
                bad.append(self.files[i])
        self._source.sent = []
        if bad:
            return DataError(f"{', '.join(bad[:3])} {'is' if len(bad) == 1 else 'are'} not a readable JPEG; "
                             "remove or replace the file, then re-run `kdprune convert --format dali`")
        first = next((line for line in str(err).splitlines() if "failure" in line or "rror" in line), str(err))
        return DataError(f"DALI failed on {self.path}: {first.strip()}")

    def _as_arrays(self, images, labels, ids):
        """DALI's outputs as numpy: the images as one array (raw) or a list of any sizes (JPEGs)."""
        images = [images.at(k) for k in range(len(images))] if self.jpeg else images.as_array()
        return images, labels.as_array().reshape(-1), ids.as_array().reshape(-1)

    def _finish(self, images, labels, ids, view):
        """Each image cut to its box by ``crop_kernel`` (see the module's docstring)."""
        plan = crop_plan([im.shape for im in images], ids, augment=self.augment, view=view,
                         image_size=self.image_size, where=self.name)
        if plan is None:
            return super()._finish(images, labels, ids, view)
        from kdprune.loaders.crop_kernel import crop_batch_into, crop_each_into
        boxes, flips, (out_h, out_w) = plan
        shape = (len(images), images[0].shape[2], out_h, out_w)
        out = torch.from_numpy(self._batch_memory(shape, np.uint8 if self.grey else np.float32))
        if isinstance(images, np.ndarray):  # raw arrays of one size: numba's parallel loop
            table = np.ascontiguousarray(np.column_stack([boxes, flips]), dtype=np.int64)
            crop_batch_into(images, table, out.numpy())
        else:
            crop_each_into(images, boxes, flips, out.numpy(), pool=self._crop_threads())
        return self._to_device(out, labels, ids)

    def _batch_memory(self, shape, dtype) -> np.ndarray:
        """Memory for a batch of crops of ``shape`` (float32, or uint8 grey levels), from the loader's
        pool (see the module's docstring); a pool for the largest batch of this size, made anew if the
        crop size changes."""
        from kdprune.loaders.recycle import BufferPool
        nbytes = np.dtype(dtype).itemsize * self.batch_size * int(np.prod(shape[1:]))
        if self._pool is None or self._pool.nbytes != nbytes:
            self._pool = BufferPool(nbytes, keep=4)
        return self._pool.array(shape, dtype)

    def close(self) -> None:
        self._pipe = self._serving = None
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    def _crop_threads(self):
        if self._threads is None:
            from concurrent.futures import ThreadPoolExecutor
            self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="kdprune-crop")
        return self._threads
