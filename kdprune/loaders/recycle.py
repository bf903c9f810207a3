"""Batch buffers used again once nothing refers to them.

A loader that hands each batch out in a tensor of its own (no copy, and the caller may keep it) must
find fresh memory for every batch. Fresh memory costs page faults on its first write: on the dev VM
~11 us per 4 KiB page, 2.2 ms for one Fashion-MNIST batch of 256 float32 images (196 pages) against
0.2 ms to decode it. glibc serves a decode thread from an arena of its own and gives that arena's
memory back to the kernel when the batches in it are freed, so the FFCV runner's thread faulted in
every few batches afresh (the main thread's arena kept its pages), and its batch came 2 ms late. A
batch above malloc's mmap threshold (at most 32 MiB), such as 256 crops of 224 px (154 MB), is
mapped anew and faulted in every time, on any thread: a third of FFCV's and DALI's time per batch.

:class:`BufferPool` keeps the memory instead: each batch array lies in an anonymous map taken from the
pool, and the map goes back to the pool when the batch array and every view of it (numpy or torch:
a tensor made by ``torch.from_numpy`` holds the array) have been garbage-collected. A batch that the
caller still holds is never written again; once a few batches have come and gone, every new one lands
in memory already mapped, and recently touched.
"""
from __future__ import annotations

import collections
import functools
import math
import mmap
import weakref

import numpy as np


# glibc maps a request of at least this size (its largest mmap threshold on 64-bit) anew every time,
# and the pages fault in again. Below it the main thread's arena keeps its pages and hands back the
# memory freed last, still in cache: that beat a loader's own pool on short epochs (the torch loader
# on Fashion-MNIST, 800 KB batches: f = 0.1 ratio 0.098-0.099 against 0.108-0.112 pooled, one
# process), so the main thread pools only batches this large. A decode thread's arena gives its
# memory back to the kernel, so FFCV's decode threads pool every batch.
FRESH_MAP_BYTES = 32 << 20


class BufferPool:
    """Arrays of at most ``nbytes`` bytes, each in a map of its own that is used again once the array
    and all its views are gone. At most ``keep`` free maps are kept; more are unmapped."""

    def __init__(self, nbytes: int, keep: int = 4):
        if nbytes < 1 or keep < 0:
            raise ValueError(f"BufferPool needs nbytes >= 1 and keep >= 0, got {nbytes} and {keep}")
        self.nbytes, self.keep = int(nbytes), int(keep)
        self._free = collections.deque()  # maps ready for a new array (append/pop: thread-safe)
        self._out = {}  # id(weak reference to an array handed out) -> (the reference, its map)
        # (the pool by a weak reference: a batch the caller keeps must not keep a dropped loader's pool)
        self._on_free = functools.partial(_returned, weakref.ref(self))
        self.made = 0  # maps made so far (the rest of the arrays reused one)

    def array(self, shape, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` in a map of the pool."""
        dtype = np.dtype(dtype)
        count = math.prod(shape)
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"an array of {count * dtype.itemsize} bytes does not fit the pool's "
                             f"{self.nbytes}-byte buffers")
        try:
            buffer = self._free.pop()  # the most recently given back: the likeliest still in cache
        except IndexError:
            buffer = mmap.mmap(-1, self.nbytes)  # page-aligned; its pages are faulted in once, here
            self.made += 1
        # The array's base is the map itself (not an ndarray), so numpy makes every view of it, and
        # torch every tensor of it, refer to this very array: it dies last, and only then does the
        # map go back. (A plain weak reference with a callback: weakref.finalize cost 3.5 us more
        # a batch, 2 % of a Fashion-MNIST epoch.)
        owner = np.frombuffer(buffer, dtype=dtype, count=count)
        ref = weakref.ref(owner, self._on_free)
        self._out[id(ref)] = ref, buffer
        return owner.reshape(shape)


def _returned(pool_ref, ref) -> None:
    """An array of the pool is gone (on whichever thread dropped it last): its map goes back."""
    pool = pool_ref()
    if pool is not None:
        _, buffer = pool._out.pop(id(ref))
        if len(pool._free) < pool.keep:
            pool._free.append(buffer)
