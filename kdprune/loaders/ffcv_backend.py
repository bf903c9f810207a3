"""The FFCV backend: a ``.beton`` with ``image``, ``label`` and ``id`` (the sample id) fields, read
through an ``ffcv.loader.Loader``, one per .beton and configuration, shared by the process's loaders.

The traversal order is ours (``epoch_order``: one permutation per (seed, epoch), dealt round-robin
across ranks): each epoch's batches of it go to FFCV's compiled pipeline on one long-lived thread
(``ffcv_runner.EpochRunner``, in place of FFCV's thread per epoch), which the caller joins whenever
the batch it needs is not ready, so FFCV serves the same ids in the same order as the other backends
and each rank reads only its shard.

Only the image field is decoded, by FFCV's own readers and JPEG decoder inside its compiled,
multi-threaded pipeline (``_image_decoder``), into a tensor of each batch's own that the main process
hands on as it is. Before each batch the decoding thread calls the loader (``FFCVLoader.next_batch``),
which counts the ids it is about to decode (so the read counts are measured where the bytes are
decoded) and gives the buffers; labels come from the .beton's metadata, read once. Training crops
happen in the same pass: each image is cropped to its (view, id) box by
``crop_kernel.crop_resize_into``, grid_sample's bilinear sampling, so batches equal the teacher
store's view to float32 rounding.
"""
from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager

import numpy as np
import torch

from kdprune.errors import DataError
from kdprune.loaders.base import NATIVE_THREADS, KeptIdLoader
from kdprune.loaders.crop_kernel import box_table
from kdprune.loaders.converted import check_index_fingerprint, read_manifest, source_info, write_manifest
from kdprune.loaders.ffcv_runner import EpochRunner


@contextmanager
def _torch_threads_kept():
    """FFCV sets torch's global thread count (to 1 when imported, to ``num_workers`` when a Loader is
    made or an epoch starts); keep the caller's setting."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_beton(source, path: str, *, workers: int = 2, jpeg_quality: int = 90) -> dict:
    """Convert an :class:`ArrayDataset` (raw uint8 arrays) or a JPEG :class:`FolderDataset`
    (re-encoded as JPEG by FFCV) to ``path`` (.beton) plus its manifest; returns the manifest.

    FFCV's writer forks its worker processes. A fork taken while FFCV's or DALI's native decode
    threads exist can deadlock in the child, so once this process has started a loader the write
    runs in a freshly spawned process instead."""
    if NATIVE_THREADS["started"]:
        import multiprocessing
        # not a Pool: its workers are daemons, and FFCV's writer must start processes of its own
        child = multiprocessing.get_context("spawn").Process(
            target=_write_beton, args=(source, path, workers, jpeg_quality))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise DataError(f"writing {path} failed in a child process (exit code {child.exitcode}); "
                            "run `kdprune convert --format ffcv` in a fresh process")
        return read_manifest(path, "ffcv", source)
    return _write_beton(source, path, workers, jpeg_quality)


def _write_beton(source, path, workers, jpeg_quality):
    with _torch_threads_kept():
        from ffcv.fields import IntField, NDArrayField, RGBImageField
        from ffcv.writer import DatasetWriter

    from kdprune.data.folder import FolderDataset
    if isinstance(source, FolderDataset):
        image_field = RGBImageField(write_mode="jpg", jpeg_quality=jpeg_quality)
    else:
        image_field = NDArrayField(np.dtype("uint8"), tuple(source.image_shape))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    writer = DatasetWriter(tmp, {"image": image_field, "label": IntField(), "id": IntField()},
                           num_workers=max(int(workers), 1))
    writer.from_indexed_dataset(_Samples(source), chunksize=256)
    os.replace(tmp, path)  # a crash mid-write leaves no half .beton under the real name
    return write_manifest(path, "ffcv", source_info(source), [os.path.basename(path)])


class _Samples:
    """(image, label, id) by index, as FFCV's writer asks for them."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        image = self.source.decode(i) if hasattr(self.source, "decode") else self.source.images[i]
        return image, int(self.source.labels[i]), int(i)


# The generated code of every FFCV Loader made in this process, numba dispatchers included, kept for
# the life of the process. numba 0.68 frees a dispatcher in a finalizer that a garbage collection runs
# on whichever thread it happens: freeing a loader's pipeline raised KeyErrors there, and once broke an
# import underway on that thread (CPython 3.11's import-lock bookkeeping). The loader itself is freed.
_COMPILED = []


# The compiled decode of each kind of pipeline, shared by every loader of the process that needs that
# kind: numba took ~2-3 s to compile one (its parallel loop most of it), which every FFCV loader paid
# before its first batch. The FFCV stage code around it is still compiled per FFCV Loader (_SHARED).
# (FFCV asks an operation for its code each time it collects requirements, so a hit costs a lookup.)
_DECODES = {}


def _decode_code(raw: bool, shape, augment: bool, mem_read):
    """The decode of a batch of images: ``raw`` ones of ``shape`` sliced from the map, or JPEGs read
    by ``mem_read`` (FFCV's reader, which takes all it reads from its state argument); cropped to
    each sample's box when ``augment``, else scaled as they are; over the images in parallel when
    FFCV's compiler is set to several threads (``Loader(num_workers=...)``)."""
    from ffcv.pipeline.compiler import Compiler

    parallel = Compiler.num_threads > 1
    key = (raw, shape, augment, parallel, None if raw else mem_read.py_func.__qualname__)
    if key in _DECODES:
        return _DECODES[key]

    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.libffcv import imdecode

    from kdprune.data import to_float
    from kdprune.loaders.crop_kernel import crop_resize_into, to_float_into

    my_range = Compiler.get_iterator()
    imdecode_c = Compiler.compile(imdecode)
    jpg = IMAGE_MODES["jpg"]
    nbytes = int(np.prod(shape)) if raw else 0

    # the reader and the placement are picked here rather than branched on inside the compiled
    # loop: numba types every branch
    def read_raw(sample, scratch, metadata, storage_state):
        # A raw image's size is the field's shape, so its bytes are sliced straight from the
        # .beton's map (element 0 of the OS-cache state, see FFCVLoader._make_loader): FFCV's reader
        # would first look the size up by a binary search over every allocation of the file, a
        # third of the decode of a 28 px image.
        ptr = metadata[sample]
        return storage_state[0][ptr:ptr + nbytes].reshape(shape)

    def read_jpeg(sample, scratch, metadata, storage_state):
        field = metadata[sample]
        data = mem_read(field["data_ptr"], storage_state)
        height, width = np.uint32(field["height"]), np.uint32(field["width"])
        if field["mode"] == jpg:
            imdecode_c(data, scratch, height, width, height, width, 0, 0, 1, 1, False, False)
            return scratch.reshape(height, width, 3)
        return data.reshape(height, width, 3)

    def crop(image, box, out):
        crop_resize_into(image, box[0], box[1], box[2], box[3], box[4] != 0, out)

    levels = to_float(np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1)).numpy().reshape(256)

    def scale(image, box, out):
        to_float_into(image, levels, out)

    read = Compiler.compile(read_raw if raw else read_jpeg)
    place = Compiler.compile(crop if augment else scale)

    def decode_into(batch_indices, boxes, out, scratch, metadata, storage_state):
        for i in my_range(len(batch_indices)):
            place(read(batch_indices[i], scratch[i], metadata, storage_state), boxes[i], out[i])

    decode_into.is_parallel = True
    decode_into = Compiler.compile(decode_into)  # compiled on its first batch, for every loader after

    def decode(batch_indices, buffers, metadata, storage_state):
        # Each FFCV Loader compiles this wrapper anew (a dispatcher of its own), quickly.
        # buffers: FFCV's memory argument, filled per batch by the runner with next_batch's buffers
        boxes, out, scratch = buffers
        decode_into(batch_indices, boxes, out, scratch, metadata, storage_state)
        return out[:len(batch_indices)]

    _DECODES[key] = decode
    return decode


def _image_decoder(raw: bool, augment: bool, layout: list):
    """An FFCV image decoder that writes each batch into the buffers ``FFCVLoader.next_batch``
    gives (passed in by the runner as the operation's memory argument), inside FFCV's compiled,
    multi-threaded decode.

    Each image is decoded and, when training with ``augment``, cropped to the box and flip
    ``Augment.boxes`` gives for (view, id) by ``crop_kernel.crop_resize_into`` (grid_sample's
    bilinear sampling, so batches equal the teacher store's view to float32 rounding), otherwise
    scaled as it is by ``crop_kernel.to_float_into`` (``to_float``, exactly): the main process
    receives finished float32 ``[B, C, H', W']`` batches.

    Why the loader's buffers and not FFCV's: FFCV allocates a set of buffers for every epoch (1 GB
    for batches of 256 crops of 224 px, 0.3 s of page faults; still ~0.5 ms for Fashion-MNIST, whose
    epoch of 10 % of the samples lasts ~9 ms) and reuses them within it, so each batch would have to
    be copied out (154 MB per batch of 256 crops; the last batch's copy, 0.14 s, was exposed at the
    end of every epoch). Each batch here is decoded into an array of its own, taken by
    ``next_batch`` from the loader's pool (``KeptIdLoader._batch_pool``: memory of batches the caller
    has let go of, already faulted in), and handed on as it is.
    The runner calls ``next_batch`` just before it runs the pipeline on a batch, on the same thread,
    and passes the buffers in; fetching them from inside the compiled code (an object-mode block)
    cost 30 us a batch, 12 % of the decode of 256 images of 28 px.
    The runner hands each batch's ids on with it (their labels are read once from the .beton's
    metadata), so the label and id fields need no pipelines (and no buffers) of their own.

    It serves every loader of the FFCV Loader it is part of (``_SharedLoader``), so it holds none of
    them: it leaves the stored images' (height, width, channels) in ``layout``, and each loader works
    out its own samples' shape from it (``FFCVLoader.sample_layout``)."""
    from dataclasses import replace

    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder

    class ImageDecoder(NDArrayDecoder if raw else SimpleRGBImageDecoder):
        def declare_state_and_memory(self, previous_state):
            if raw:
                height, width, channels = self.field.shape
            else:
                super().declare_state_and_memory(previous_state)  # refuses images of several sizes
                height, width, channels = int(self.metadata["height"][0]), int(self.metadata["width"][0]), 3
            layout[:] = [int(height), int(width), int(channels)]
            # No allocation asked of FFCV: the buffers are the loader's (next_batch), which the
            # runner passes in as this operation's memory argument, batch by batch. (No later
            # operation reads the shape declared here.)
            return replace(previous_state, jit_mode=True, shape=(channels, height, width),
                           dtype=np.dtype("<f4")), None

        def generate_code(self):
            shape = tuple(self.field.shape) if raw else None
            return _decode_code(raw, shape, augment, self.memory_read)

    return ImageDecoder


class _SharedLoader:
    """An FFCV Loader and the (height, width, channels) of the images its decoder saw."""

    def __init__(self, loader, layout: list):
        self.loader, self.layout = loader, tuple(layout)


# The FFCV Loader of each .beton and configuration, shared by every loader of the process that reads
# it, for as long as any of them holds it: making one took 0.65 s on the 60,000-sample Fashion-MNIST
# .beton (FFCV's memory manager builds per-sample Python dicts: linear in the samples) and compiling
# its pipeline ~1 s more; a loader of another fraction, seed or split of the same file pays neither.
_SHARED = weakref.WeakValueDictionary()


class FFCVLoader(KeptIdLoader):
    """Batches of the kept ids of a ``.beton`` (see :func:`write_beton`), ``workers`` decode threads."""

    def __init__(self, path: str, ids, *, source=None, workers: int = 2, **kwargs):
        manifest = read_manifest(path, "ffcv", source)
        check_index_fingerprint(ids, manifest)
        super().__init__(manifest["num_samples"], ids, **kwargs)
        self.path, self.manifest, self.workers = path, manifest, max(int(workers), 1)
        self.image_size = None  # (H, W) of the stored images, known once FFCV reads the metadata
        self.sample_shape = None  # (C, H', W') of one decoded sample (sample_layout)
        # next_batch's JPEG decode scratch, one per decoding thread (the runner's and the caller's)
        self._scratch = threading.local()
        self._no_boxes = np.zeros((self.batch_size, 5), dtype=np.int64)  # the boxes when not cropping
        self._labels = None  # every sample's label, read once from the .beton
        self._epoch = None  # the ffcv_runner.Epoch being served
        self._shared = None  # the _SharedLoader this loader's epochs run on
        self._runner = None  # the ffcv_runner.EpochRunner of this loader's FFCV Loader

    def sample_layout(self, height: int, width: int, channels: int) -> tuple:
        """The shape ``(C, H', W')`` of one decoded float32 sample, given the stored images' size:
        the crop's size when augmenting, else the image's."""
        self.image_size = (height, width)
        out_h, out_w = (self.augment.out_size if self.augment is not None else None) or (height, width)
        self.sample_shape = (channels, out_h, out_w)
        return self.sample_shape

    def next_batch(self, ids):
        """What the compiled decoder needs for a batch of ``ids``, called by the runner once per batch
        on the thread about to decode it (which is also where the reads are counted): the crop boxes
        ``[B, 5]`` int64 (top, left, h, w, flip) of this epoch's view (zeros when not augmenting), a
        float32 array ``[B, *sample_shape]`` of its own to decode into (the batch the caller will
        receive, handed on without a copy; from the loader's pool), and the calling thread's JPEG
        decode scratch (the runner's thread and the caller may decode a batch each at once)."""
        ids = np.asarray(ids, dtype=np.int64)
        self.counter.note(ids)
        scratch = getattr(self._scratch, "array", None)
        if scratch is None:  # (no batch is longer than batch_size)
            per_image = 0 if self.manifest["encoding"] == "raw" else int(np.prod(self.image_size)) * 3
            scratch = self._scratch.array = np.empty((self.batch_size, per_image), dtype=np.uint8)
        batch = self._batches.array((len(ids), *self.sample_shape), np.float32)
        boxes = self._no_boxes if self.augment is None else box_table(self.augment, self._view, ids, *self.image_size)
        return boxes, batch, scratch

    def _epochs(self) -> EpochRunner:
        if self._runner is None:
            self._shared = shared = self._shared_loader()
            self.sample_layout(*shared.layout)
            # every batch in pooled memory, at every size (the decode threads' own malloc arenas give
            # theirs back to the kernel): enough for the batches decoded ahead, the one the caller
            # holds and the two underway. Made here, before any decode thread asks for it.
            self._batch_pool(self.sample_shape, keep=shared.loader.batches_ahead + 3)
            self._labels = self._stored_labels(shared.loader.reader)
            # a weak reference: the runner's thread holds the callback, and a strong one would keep
            # a dropped loader (its arrays, its read counter, its thread) alive
            owner = weakref.ref(self)
            self._runner = EpochRunner(shared.loader, self.workers, buffers=lambda ids: owner().next_batch(ids))
        return self._runner

    def _shared_loader(self) -> "_SharedLoader":
        """The FFCV Loader of this .beton (as it is on disk now) for this batch size, thread count and
        decoder kind: the one another loader made, while any still holds it, or a new one."""
        stat = os.stat(self.path)
        key = (os.path.realpath(self.path), stat.st_ino, stat.st_size, stat.st_mtime_ns,
               self.batch_size, self.workers, self.augment is not None)
        shared = _SHARED.get(key)
        if shared is None:
            shared = self._make_loader()
            _SHARED[key] = shared
        return shared

    def _make_loader(self) -> "_SharedLoader":
        layout = []
        with _torch_threads_kept():
            from ffcv.loader import Loader, OrderOption

            NATIVE_THREADS["started"] = True
            decoder = _image_decoder(self.manifest["encoding"] == "raw", self.augment is not None, layout)
            try:
                # The Loader reads the file and compiles the pipeline; each loader's order (its kept
                # ids, sharded by rank) goes straight to its EpochRunner, so FFCV's own indices,
                # order and sharding are unused. label and id follow from the ids the runner hands
                # on with each batch: not decoded.
                loader = Loader(self.path, batch_size=self.batch_size, num_workers=self.workers,
                                order=OrderOption.SEQUENTIAL, distributed=False, drop_last=False,
                                os_cache=True, pipelines={"image": [decoder()], "label": None, "id": None})
            except TypeError as err:  # FFCV's decoder refuses images of several sizes this way
                raise DataError(f"{self.path}: {err}") from err
        from ffcv.memory_managers.os_cache import OSCacheManager
        # the raw reader slices the file's map out of the OS-cache state, (map, pointers, sizes)
        if not isinstance(loader.memory_manager, OSCacheManager):
            raise RuntimeError(f"expected FFCV's OSCacheManager, got {type(loader.memory_manager).__name__}")
        _COMPILED.append(loader.code)
        return _SharedLoader(loader, layout)

    def _stored_labels(self, reader) -> np.ndarray:
        """Every sample's label, from the .beton's metadata; and a check that its id field is the
        sample's index, as :func:`write_beton` writes it (batches name their samples by index)."""
        meta = reader.metadata

        def column(name):
            if name not in reader.field_names:
                raise DataError(f"{self.path} has no {name!r} field (it has {reader.field_names}); "
                                "convert the dataset again with `kdprune convert --format ffcv`")
            return meta[meta.dtype.names[reader.field_names.index(name)]]

        if not np.array_equal(column("id"), np.arange(len(meta))):
            raise DataError(f"{self.path}: its id field is not the sample index; "
                            "convert the dataset again with `kdprune convert --format ffcv`")
        return np.ascontiguousarray(column("label"), dtype=np.int64)

    def _stop_epoch(self):
        """Abandon the epoch being decoded, if any: an epoch left early (a ``break``) would otherwise
        go on decoding (and counting reads) into the next one."""
        epoch, self._epoch = self._epoch, None
        if epoch is not None:
            epoch.stop()

    def __iter__(self):
        self._stop_epoch()
        self._view = self.view()  # next_batch draws this epoch's view
        for x, labels, ids in self._decoded_batches(self.order()):
            yield self._to_device(x, labels, ids)

    def _decoded_batches(self, order):
        self._epoch = epoch = self._epochs().epoch(order)
        served = 0
        try:
            for ids, images in epoch:
                served += len(ids)
                # the array the decoder returned is a view of next_batch's array: no copy
                yield torch.from_numpy(images), self._labels[ids], ids
        finally:
            if self._epoch is epoch:  # (a stale epoch closed late must not stop the current one)
                self._stop_epoch()
        if served != len(order):
            raise DataError(f"{self.path}: FFCV served {served} samples of the {len(order)} asked for")
