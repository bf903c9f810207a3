"""The FFCV backend: a ``.beton`` with ``image``, ``label`` and ``id`` (the sample id) fields, read
through ``ffcv.loader.Loader(indices=kept ids)``.

The traversal order is ours (``epoch_order``: one permutation per (seed, epoch), dealt round-robin
across ranks), handed to FFCV as a custom ``TraversalOrder``, so FFCV serves the same ids in the same
order as the other backends and each rank reads only its shard. The decoders are FFCV's own, extended
by one call that counts the ids they are asked to decode, so the read counts are measured where the
bytes are decoded.

Training crops happen inside FFCV's compiled, multi-threaded decode: each image is decoded and
cropped to its (view, id) box by ``crop_kernel.crop_resize_into``, grid_sample's bilinear sampling,
so batches equal the teacher store's view to float32 rounding, and the main process only copies
finished float32 batches out of the decoder's buffers.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from kdprune.errors import DataError
from kdprune.loaders.base import NATIVE_THREADS, KeptIdLoader, ReadCounter
from kdprune.loaders.converted import check_index_fingerprint, read_manifest, source_info, write_manifest


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


class _CodeOnce:
    """Builds a decoder's code once. FFCV asks every operation for its code again at each epoch
    (``Graph.allocate_memory`` collects requirements and code together, then keeps only the
    allocations); making numba dispatchers anew there was ~1 ms of fixed cost per epoch."""

    def generate_code(self):
        if getattr(self, "_code", None) is None:
            self._code = self.build_code()
        return self._code


def _counting(decoder_cls, counter: ReadCounter):
    """An FFCV decoder class whose compiled code first records the batch of ids it decodes (in
    numba's object mode, once per batch) and then runs the stock decoder."""
    from numba import objmode

    class Counting(_CodeOnce, decoder_cls):
        def build_code(self):
            inner = decoder_cls.generate_code(self)  # the stock decoder's code
            from ffcv.pipeline.compiler import Compiler
            inner_c = Compiler.compile(inner)
            note = counter.note

            def decode(batch_indices, destination, metadata, storage_state):
                with objmode():
                    note(batch_indices)
                return inner_c(batch_indices, destination, metadata, storage_state)

            return decode

    Counting.__name__ = f"Counting{decoder_cls.__name__}"
    return Counting


def _replay_crop_decoder(loader: "FFCVLoader", raw: bool):
    """An FFCV decoder that decodes each image and crops it to the box and flip ``Augment.boxes``
    gives for (view, id), inside FFCV's compiled, multi-threaded decode, so the main process receives
    finished float32 ``[B, C, H', W']`` batches. The crop is ``crop_kernel.crop_resize_into``:
    grid_sample's bilinear sampling, the store's view to float32 rounding.

    The output and the JPEG scratch images are the loader's own buffers (``FFCVLoader.next_batch``),
    kept across epochs: FFCV would allocate fresh ones at every epoch (1 GB for batches of 256 crops
    of 224 px), and faulting that in was 0.3 s of fixed cost per epoch."""
    from dataclasses import replace

    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder
    from ffcv.libffcv import imdecode
    from ffcv.pipeline.compiler import Compiler
    from numba import objmode

    from kdprune.loaders.crop_kernel import crop_resize_into

    class ReplayCrop(_CodeOnce, NDArrayDecoder if raw else SimpleRGBImageDecoder):
        def declare_state_and_memory(self, previous_state):
            if raw:
                height, width, channels = self.field.shape
            else:
                super().declare_state_and_memory(previous_state)  # refuses images of several sizes
                height, width, channels = int(self.metadata["height"][0]), int(self.metadata["width"][0]), 3
            loader.image_size = (height, width)
            out_h, out_w = loader.augment.out_size or (height, width)
            loader.crop_shape = (channels, out_h, out_w)
            # no allocation asked of FFCV: the buffers are the loader's (see next_batch)
            return replace(previous_state, jit_mode=True, shape=loader.crop_shape, dtype=np.dtype("<f4")), None

        def build_code(self):
            mem_read, my_range = self.memory_read, Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
            jpg = IMAGE_MODES["jpg"]
            next_batch = loader.next_batch
            shape = tuple(self.field.shape) if raw else None

            # the reader is picked here rather than branched on inside the compiled loop: numba
            # types every branch
            def read_raw(sample, scratch, metadata, storage_state):
                return mem_read(metadata[sample], storage_state).reshape(shape)

            def read_jpeg(sample, scratch, metadata, storage_state):
                field = metadata[sample]
                data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:
                    imdecode_c(data, scratch, height, width, height, width, 0, 0, 1, 1, False, False)
                    return scratch.reshape(height, width, 3)
                return data.reshape(height, width, 3)

            read = Compiler.compile(read_raw if raw else read_jpeg)

            def decode(batch_indices, storage, metadata, storage_state):
                with objmode(boxes="int64[:, ::1]", out="float32[:, :, :, ::1]", scratch="uint8[:, ::1]"):
                    boxes, out, scratch = next_batch(batch_indices)  # counts the reads too
                for i in my_range(len(batch_indices)):
                    image = read(batch_indices[i], scratch[i], metadata, storage_state)
                    box = boxes[i]
                    crop_resize_into(image, box[0], box[1], box[2], box[3], box[4] != 0, out[i])
                return out[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    return ReplayCrop


def _kept_order(loader: "FFCVLoader"):
    from ffcv.traversal_order.base import TraversalOrder

    class KeptOrder(TraversalOrder):
        """Our per-(seed, epoch) order; FFCV builds a custom order by calling it with the Loader."""

        def __init__(self):  # noqa: D401 - FFCV's base needs a Loader; this order needs none
            self.sampler = None

        def __call__(self, ffcv_loader):
            self.loader, self.indices, self.seed = ffcv_loader, ffcv_loader.indices, loader.seed
            self.distributed = ffcv_loader.distributed
            return self

        def sample_order(self, epoch):
            return loader.order(epoch)

    return KeptOrder()


class FFCVLoader(KeptIdLoader):
    """Batches of the kept ids of a ``.beton`` (see :func:`write_beton`), ``workers`` decode threads."""

    def __init__(self, path: str, ids, *, source=None, workers: int = 2, **kwargs):
        manifest = read_manifest(path, "ffcv", source)
        check_index_fingerprint(ids, manifest)
        super().__init__(manifest["num_samples"], ids, **kwargs)
        self.path, self.manifest, self.workers = path, manifest, max(int(workers), 1)
        self.image_size = None  # (H, W) of the stored images, known once FFCV reads the metadata
        self.crop_shape = None  # (C, H', W') of a training crop
        self._ring, self._scratch, self._slot = None, None, 0  # the crop decoder's buffers
        self._epoch = None  # FFCV's iterator (a thread) of the epoch being served
        self._ffcv = None

    def next_batch(self, ids):
        """What the compiled decoder needs for a batch of ``ids`` (called once per batch, which is
        also where the reads are counted): the crop boxes ``[B, 5]`` int64 (top, left, h, w, flip) of
        this epoch's view, the output buffer ``[B, C, H', W']`` float32 to crop into (the next of
        ``batches_ahead + 2`` slots, as many as FFCV keeps batches in flight; the main process copies
        each batch out before asking for the next), and the JPEG scratch images ``[B, H * W * 3]``."""
        self.counter.note(ids)
        box, flips = self.augment.boxes(self._view, np.asarray(ids, dtype=np.int64), *self.image_size)
        if self._ring is None:
            slots = self._loader().batches_ahead + 2
            self._ring = np.empty((slots, self.batch_size, *self.crop_shape), dtype=np.float32)
            scratch = 0 if self.manifest["encoding"] == "raw" else int(np.prod(self.image_size)) * 3
            self._scratch = np.empty((self.batch_size, scratch), dtype=np.uint8)
        out = self._ring[self._slot % len(self._ring)]
        self._slot += 1
        return np.ascontiguousarray(np.column_stack([box, flips]), dtype=np.int64), out, self._scratch

    def _loader(self):
        if self._ffcv is None:
            self._ffcv = self._make_loader()
        return self._ffcv

    def _make_loader(self):
        with _torch_threads_kept():
            from ffcv.fields.basics import IntDecoder
            from ffcv.fields.ndarray import NDArrayDecoder
            from ffcv.fields.rgb_image import SimpleRGBImageDecoder
            from ffcv.loader import Loader
            from numba.core.errors import NumbaWarning

            NATIVE_THREADS["started"] = True
            raw = self.manifest["encoding"] == "raw"
            if self.augment is not None:
                decoder = _replay_crop_decoder(self, raw)
            else:
                decoder = _counting(NDArrayDecoder if raw else SimpleRGBImageDecoder, self.counter)
            # numba warns, when it compiles the pipeline at the first batch, that the object-mode
            # block (the read count, once per batch) runs without parallelism: true, and harmless
            warnings.filterwarnings("ignore", message="Code running in object mode won't allow parallel",
                                    category=NumbaWarning)
            try:
                return Loader(self.path, batch_size=self.batch_size, num_workers=self.workers,
                              order=_kept_order(self), indices=self.ids, distributed=self.world > 1,
                              seed=self.seed, drop_last=False, os_cache=True,
                              pipelines={"image": [decoder()], "label": [IntDecoder()], "id": [IntDecoder()]})
            except TypeError as err:  # FFCV's decoder refuses images of several sizes this way
                raise DataError(f"{self.path}: {err}") from err

    def _stop_epoch(self):
        """End FFCV's epoch thread, if one runs: an epoch left early (a ``break``) keeps decoding a
        few batches ahead, and into the crop decoder's buffers, which the next epoch reuses. It stops
        once its queue is full (within 0.5 s, FFCV's put timeout)."""
        epoch, self._epoch = self._epoch, None
        if epoch is not None:
            epoch.close()
            epoch.join()

    def __iter__(self):
        if self.augment is None:
            yield from super().__iter__()
            return
        self._view = self.view()  # next_batch draws this epoch's view
        for images, labels, ids in self._decoded_batches(self.order()):
            # finished by the decoder; copied out of its ring of buffers, which a later batch reuses
            yield self._to_device(torch.from_numpy(images).clone(), labels, ids)

    def _decoded_batches(self, order):
        loader = self._loader()
        loader.next_epoch = self.epoch  # FFCV asks our order for this epoch's ids
        threads = torch.get_num_threads()
        served = 0
        self._stop_epoch()
        self._epoch = epoch = iter(loader)
        try:
            for first, (images, labels, ids) in enumerate(epoch):
                if first == 0:  # FFCV's epoch thread has reset torch's thread count by now: undo it
                    torch.set_num_threads(threads)
                ids = ids.reshape(-1).copy()
                served += len(ids)
                # FFCV's array decoder returns its whole buffer: keep the rows of this batch
                yield images[:len(ids)], labels.reshape(-1)[:len(ids)].copy(), ids
        finally:
            if self._epoch is epoch:  # (a stale epoch closed late must not stop the current one)
                self._stop_epoch()
        if served != len(order):
            raise DataError(f"{self.path}: FFCV served {served} samples of the {len(order)} asked for")
