"""recycle.BufferPool: a batch's memory is used again only once nothing refers to it any more (the
array, a numpy view, a torch tensor made from it, a view of that tensor), and the pool keeps at most
``keep`` free buffers."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from kdprune.loaders.recycle import BufferPool


def address(array) -> int:
    return array.__array_interface__["data"][0] if isinstance(array, np.ndarray) else array.data_ptr()


HOLDERS = {"array": lambda a: a, "numpy view": lambda a: a[2:, 1:], "tensor": torch.from_numpy,
           "tensor view": lambda a: torch.from_numpy(a)[1:].t()}


@pytest.mark.parametrize("holder", list(HOLDERS))
def test_memory_is_used_again_only_once_every_view_of_it_is_gone(holder):
    pool = BufferPool(4 * 6 * 5, keep=2)
    a = pool.array((6, 5), np.float32)
    a[:] = 7
    first = address(a)
    held = HOLDERS[holder](a)
    del a
    b = pool.array((6, 5), np.float32)  # the first one is still held: fresh memory
    b[:] = -1
    second = address(b)
    assert second != first
    assert (held == 7).all()  # never written over while held
    del b, held
    c = pool.array((3, 5), np.float32)  # a shorter array (the last batch of an epoch) fits too
    d = pool.array((6, 5), np.float32)
    assert {address(c), address(d)} == {first, second}
    assert pool.made == 2  # both buffers used again, none made


def test_the_pool_keeps_at_most_keep_free_buffers():
    pool = BufferPool(1024, keep=3)
    arrays = [pool.array((256,), np.float32) for _ in range(8)]
    assert pool.made == 8 and len({address(a) for a in arrays}) == 8
    del arrays
    assert len(pool._free) == 3
    again = [pool.array((256,), np.float32) for _ in range(5)]
    assert pool.made == 10 and len({address(a) for a in again}) == 5


def test_arrays_outlive_their_pool():
    pool = BufferPool(64, keep=2)
    a = pool.array((4, 4), np.float32)
    a[:] = 3
    del pool
    gc.collect()
    assert (a == 3).all()
    del a  # its buffer has no pool to go back to: freed with it, quietly


def test_an_array_larger_than_the_buffers_is_refused():
    pool = BufferPool(100)
    with pytest.raises(ValueError, match="does not fit"):
        pool.array((26,), np.float32)
    with pytest.raises(ValueError, match="nbytes >= 1"):
        BufferPool(0)


def test_arrays_let_go_of_on_other_threads_are_each_handed_out_once():
    """Batches are taken on the decoding threads and dropped on the training thread: buffers given
    back from several threads at once are never handed to two live arrays."""
    pool = BufferPool(4096, keep=4)
    live, errors, lock = [], [], threading.Lock()

    def work(seed):
        rng = np.random.default_rng(seed)
        mine = []
        for _ in range(300):
            a = pool.array((1024,), np.float32)
            a[:] = seed
            mine.append(a)
            if len(mine) > rng.integers(1, 4):
                old = mine.pop(0)
                if not (old == seed).all():  # somebody else wrote into it while this thread held it
                    errors.append(seed)
        with lock:
            live.extend(mine)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({address(a) for a in live}) == len(live)
    assert pool.made < 4 * 300 // 2  # most arrays used a buffer again


@pytest.mark.parametrize("channels", [1, 3])
def test_to_float_into_pooled_memory_equals_to_float(channels):
    """What the loaders hand out from a pool is ``to_float``'s result exactly, with its strides (one
    channel contiguous NCHW, three channels-last), in the pool's memory."""
    from kdprune.data import to_float

    images = np.random.default_rng(channels).integers(0, 256, (5, 7, 6, channels), dtype=np.uint8)
    pool = BufferPool(4 * images.size)
    memory = pool.array(images.shape, np.float32)
    got, expected = to_float(images, out=memory), to_float(images)
    assert torch.equal(got, expected) and got.stride() == expected.stride()
    assert got.data_ptr() == address(memory)
    with pytest.raises(ValueError, match="contiguous float32 of the images' shape"):
        to_float(images, out=np.empty((5, 7, 6, 4), np.float32))
    with pytest.raises(ValueError, match="contiguous float32"):
        to_float(images, out=np.empty(images.shape, np.float64))
