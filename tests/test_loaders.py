"""The loaders' contract on all three backends (torch, FFCV, DALI), on the CPU, for both kinds of
source (raw arrays and a JPEG folder): the ids served in an epoch are exactly the kept ids, each once;
nothing outside them is read (counted where the bytes are read or decoded); the order is one
permutation per (seed, epoch), the same on every backend; the training crop replays the teacher
store's view ``epoch % views``; bad input gives a clear error.

Sizes: 600 raw 28x28 samples and 96 JPEGs of 32 px in 4 classes, kept subsets of 0.3 to 0.5 with
batch sizes that leave a partial last batch; an FFCV loader of a new configuration compiles a
pipeline (~1 s once a decode of its kind is compiled, seconds before), so the module builds few
FFCV loaders and reuses them.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil

import numpy as np
import pytest
import torch

from kdprune.cli import main as cli
from kdprune.data import Augment, synthetic, to_float
from kdprune.data.augment import crop_resize
from kdprune.data.folder import FolderDataset, write_jpeg_folder
from kdprune.errors import ConfigError, DataError
from kdprune.loaders import build
from kdprune.loaders.batch import epoch_order, shuffled_range
from kdprune.selection import IndexSet

BACKENDS = ("torch", "ffcv", "dali")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two sources, each converted for FFCV and DALI (the DALI ones through the CLI), and a third
    of smaller raw images converted for FFCV."""
    root = tmp_path_factory.mktemp("loaders")
    arrays = synthetic(600, 10, (28, 28, 1), seed=3)
    folder = write_jpeg_folder(str(root / "jpegs"), 96, num_classes=4, size=32, seed=1)
    from kdprune.loaders.dali_backend import write_dali
    from kdprune.loaders.ffcv_backend import write_beton
    out = {"arrays": {"source": arrays}, "folder": {"source": folder}}
    for name, entry in out.items():
        entry["ffcv"] = str(root / f"{name}.beton")
        write_beton(entry["source"], entry["ffcv"], workers=1)
        entry["dali"] = str(root / f"{name}_dali")
    write_dali(arrays, out["arrays"]["dali"])
    # raw images of another shape, for FFCV only: written here, before any loader has started
    # (after that FFCV's writer runs in a spawned process, seconds more)
    out["small"] = {"source": synthetic(50, 3, (12, 10, 1), seed=4), "ffcv": str(root / "small.beton")}
    write_beton(out["small"]["source"], out["small"]["ffcv"], workers=1)
    assert cli(["convert", "--format", "dali", "--dataset", "folder", "--data-dir", folder.root,
                "--out", out["folder"]["dali"]]) == 0
    return out


def make(backend, entry, ids, **kw):
    kw.setdefault("batch_size", 32)
    kw.setdefault("train", True)
    kw.setdefault("seed", 5)
    if backend == "torch":
        return build("torch", entry["source"], ids, workers=1, **kw)
    return build(backend, entry["source"], ids, path=entry[backend], workers=1, **kw)


def kept(n, fraction, seed=0):
    rng = np.random.default_rng(seed)
    return IndexSet(rng.choice(n, int(round(fraction * n)), replace=False), {"num_samples": n})


def raw_images(entry, ids):
    src = entry["source"]
    if isinstance(src, FolderDataset):
        return np.stack([src.decode(i) for i in ids])
    return src.images[ids]


def test_the_epoch_permutation_is_fixed_by_seed_and_epoch():
    a = shuffled_range(1000, seed=5, epoch=2)
    assert a.dtype == np.int64 and sorted(a.tolist()) == list(range(1000))
    np.testing.assert_array_equal(a, shuffled_range(1000, 5, 2))
    assert not np.array_equal(a, shuffled_range(1000, 5, 3)) and not np.array_equal(a, shuffled_range(1000, 6, 2))
    # seeds apart only above 32 bits (all torch's generator keeps of a seed) still differ
    assert not np.array_equal(shuffled_range(1000, 1, 0), shuffled_range(1000, 1 + 2**32, 0))
    # the same on every rank, whatever its thread count
    threads = torch.get_num_threads()
    try:
        orders = []
        for n in (1, 2):
            torch.set_num_threads(n)
            orders.append(shuffled_range(300_000, 5, 2))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(orders[0], orders[1])


@pytest.mark.parametrize("name", ["arrays", "folder"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_serves_exactly_the_kept_ids_and_reads_nothing_else(backend, name, data):
    entry = data[name]
    n = len(entry["source"])
    index = kept(n, 0.35, seed=len(name))
    threads = torch.get_num_threads()
    loader = make(backend, entry, index, batch_size=13 if name == "folder" else 32)
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == -(-len(index) // loader.batch_size)
        served = np.concatenate([b.ids.numpy() for b in batches])
        assert all(b.ids.dtype == torch.int64 for b in batches)
        assert sorted(served.tolist()) == index.ids.tolist()  # exactly the IndexSet, each once
        # one permutation per (seed, epoch), the same on every backend
        np.testing.assert_array_equal(served, epoch_order(index.ids, seed=5, epoch=epoch, shuffle=True, rank=0,
                                                          world=1, drop_last=False, batch_size=1))
        for b in batches:
            np.testing.assert_array_equal(b.y.numpy(), entry["source"].labels[b.ids.numpy()])
            assert b.x.shape[0] == len(b.ids) and b.x.dtype == torch.float32
            if name == "arrays":  # each image is its id's (the folder's JPEGs are decoded by each library),
                # in contiguous NCHW on every backend (one channel), so a model runs the same kernels
                torch.testing.assert_close(b.x, to_float(entry["source"].images[b.ids.numpy()]), atol=0, rtol=0)
                assert b.x.stride() == torch.empty(b.x.shape).stride()
        orders.append(served)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled by epoch
    counts = loader.counter.counts
    assert (counts[index.ids] == 2).all()  # read once per epoch
    assert torch.get_num_threads() == threads  # FFCV's global thread setting was undone
    outside = np.setdiff1d(np.arange(n), index.ids)
    assert counts[outside].sum() == 0, "a sample outside the IndexSet was read"


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_last_serves_only_full_batches(backend, data):
    entry = data["arrays"]
    index = kept(600, 0.3, seed=2)  # 180 ids, batch 64: two full batches, 52 dropped
    loader = make(backend, entry, index, batch_size=64, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 2 and all(len(b.ids) == 64 for b in batches)
    served = np.concatenate([b.ids.numpy() for b in batches])
    assert len(np.unique(served)) == 128 and np.isin(served, index.ids).all()
    assert loader.counter.total == 128  # the dropped tail is not even read


@pytest.mark.parametrize("name", ["arrays", "folder"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_crop_replays_the_store_view(backend, name, data):
    """Epoch 4 with 3 views draws view 1: every batch equals the crop box + flip that
    Augment.boxes gives for (view 1, id), the one the teacher store's view 1 was computed on. The
    batches are all held before they are checked, so a batch that a later one overwrote (FFCV and
    DALI decode into buffers they reuse) would be caught, and an epoch left early runs before it."""
    entry = data[name]
    augment = Augment(seed=7, out_size=(24, 24))
    index = kept(len(entry["source"]), 0.5, seed=4)
    loader = make(backend, entry, index, augment=augment, views=3, batch_size=8)
    loader.set_epoch(4)
    early = iter(loader)
    next(early)  # an epoch left early and still referenced must not disturb the next one
    batches = list(loader)
    x = torch.cat([b.x for b in batches])
    ids = torch.cat([b.ids for b in batches]).numpy()
    if backend == "ffcv" and name == "folder":
        # FFCV re-encodes JPEGs at conversion: the reference is its own decode of the same ids
        plain = make(backend, entry, IndexSet(ids), train=False, batch_size=len(ids))
        decoded = next(iter(plain))
        full = decoded.x[np.searchsorted(decoded.ids.numpy(), ids)]
    else:
        full = to_float(raw_images(entry, ids))

    def view(v):
        box, flips = augment.boxes(v, ids, full.shape[2], full.shape[3])
        return crop_resize(full, box, flips, (24, 24))

    assert len(batches) > 5 and tuple(x.shape[2:]) == (24, 24)
    torch.testing.assert_close(x, view(1), atol=1e-5, rtol=0)
    assert (x - view(0)).abs().max() > 0.1  # a wrong view would be caught


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_epoch_left_early_does_not_stall_the_next(backend, data):
    """An epoch of a few batches, left after its first: FFCV has decoded the rest, filled its queue
    (``batches_ahead`` = 3) and waits to put its end-of-epoch marker, a put with no timeout; the next
    epoch must still start and serve everything. Run in a thread, so that a hang fails the test
    instead of stopping the suite."""
    from timeouts import within

    # 4 batches: after the first is taken, 3 fill FFCV's queue and the marker waits
    loader = make(backend, data["arrays"], np.random.default_rng(6).choice(600, 128, replace=False), batch_size=32)
    served = []

    def epochs():
        for epoch in range(3):
            loader.set_epoch(epoch)
            for _ in loader:
                break
        loader.set_epoch(3)
        served.extend(np.concatenate([b.ids.numpy() for b in loader]).tolist())

    within(120, epochs, hang="the next epoch did not start: the one left early still holds the loader")
    assert sorted(served) == loader.ids.tolist()


def test_ffcv_runs_every_epoch_on_one_thread_that_ends_with_the_loader(data):
    """FFCV's own loader starts a thread per epoch (0.75 ms on the dev box, a tenth of a short
    epoch); ours keeps one. And a loader nobody holds is freed with its thread, although numba keeps
    the compiled decoder that calls back into it for the life of the process."""
    import gc
    import threading
    import weakref

    def runner_threads():
        return [t for t in threading.enumerate() if t.name == "kdprune-ffcv-epochs"]

    before = set(runner_threads())
    loader = make("ffcv", data["folder"], np.arange(40), batch_size=16)
    for epoch in range(4):
        loader.set_epoch(epoch)
        assert sum(len(b.ids) for b in loader) == 40
    mine = set(runner_threads()) - before
    assert len(mine) == 1
    gone = weakref.ref(loader)
    del loader
    gc.collect()
    assert gone() is None
    thread = mine.pop()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.parametrize("name", ["arrays", "folder"])
def test_ffcv_with_two_decode_threads_and_the_caller_decoding_too_serves_the_same_batches(name, data):
    """Two numba threads in the runner's decode and the caller decoding batches alongside it (numba's
    tbb layer runs both parallel regions at once): the same batches, in the same order, as one
    decode thread gives, each kept id read once per epoch."""
    entry = data[name]
    n = len(entry["source"])
    index = kept(n, 0.8, seed=2)
    one = make("ffcv", entry, index, batch_size=8)
    two = build("ffcv", entry["source"], index, path=entry["ffcv"], workers=2, batch_size=8, train=True, seed=5)
    for epoch in (0, 1):
        one.set_epoch(epoch)
        two.set_epoch(epoch)
        expected, got = list(one), list(two)
        assert len(got) == len(expected)
        for a, b in zip(expected, got):
            torch.testing.assert_close(b.ids, a.ids, atol=0, rtol=0)
            torch.testing.assert_close(b.x, a.x, atol=0, rtol=0)
    assert two._runner._can_share()  # CI's numba has the tbb layer: the sharing path is the one tested
    assert (two.counter.counts[index.ids] == 2).all() and two.counter.total == 2 * len(index.ids)


@pytest.mark.parametrize("backend,crop", [("ffcv", True), ("dali", True), ("ffcv", False), ("dali", False),
                                          ("torch", False)])
def test_batches_go_into_memory_used_again_but_never_under_a_batch_still_held(backend, crop, data, monkeypatch):
    """Each batch goes into memory of batches the caller has let go of (fresh memory cost a page fault
    per 4 KiB: 2 ms a Fashion-MNIST batch on FFCV's decode thread, a third of the time of a batch of
    224 px crops): once an epoch has run, later epochs make no new buffers; and batches the caller
    keeps, from an earlier epoch or as views, stay as they were. Training crops and plain batches.
    (On the main thread only batches of recycle.FRESH_MAP_BYTES or more are pooled: here all are.)"""
    from kdprune.loaders import recycle
    monkeypatch.setattr(recycle, "FRESH_MAP_BYTES", 0)
    entry = data["arrays"]
    augment = Augment(seed=2, out_size=(20, 20)) if crop else None
    loader = build(backend, entry["source"], kept(600, 0.5, seed=4), path=entry.get(backend), workers=2,
                   batch_size=16, train=True, seed=3, augment=augment, views=3)

    def expected(batch, epoch):
        ids = batch.ids.numpy()
        x = to_float(entry["source"].images[ids])
        if not crop:
            return x
        box, flips = augment.boxes(epoch % 3, ids, 28, 28)
        return crop_resize(x, box, flips, (20, 20))

    loader.set_epoch(0)
    held = list(loader)  # every batch of epoch 0 kept: each needed a buffer of its own
    views = [b.x[:, 0, 3:] for b in held]
    pool = loader._batches
    made = pool.made
    assert made >= len(held) == 19
    for epoch in (1, 2, 3, 4):
        loader.set_epoch(epoch)
        for batch in loader:
            torch.testing.assert_close(batch.x, expected(batch, epoch), atol=1e-5 if crop else 0, rtol=0)
    # 4 x 19 batches in a handful of buffers: those in flight at once (decoded ahead, held, underway)
    assert pool.made - made <= pool.keep
    for batch, view in zip(held, views):
        torch.testing.assert_close(batch.x, expected(batch, 0), atol=1e-5 if crop else 0, rtol=0)
        assert view.data_ptr() == batch.x[:, 0, 3:].data_ptr() and torch.equal(view, batch.x[:, 0, 3:])


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_small_batches_on_the_main_thread_are_not_pooled(backend, data):
    """Below recycle.FRESH_MAP_BYTES a batch made on the main thread comes from malloc, whose arena
    keeps its pages and hands back the memory freed last, still in cache (a pool of the loader's own
    made short epochs slower)."""
    entry = data["arrays"]
    for augment in (None, Augment(seed=2, out_size=(20, 20))):
        loader = make(backend, entry, kept(600, 0.5), augment=augment, batch_size=16)
        assert sum(len(b.ids) for b in loader) == 300 and loader._batches is None


def test_ffcv_loaders_of_one_kind_share_their_compiled_decode(data):
    """numba takes seconds to compile a decode: every FFCV loader after the first of its kind (raw
    images of one shape or JPEGs; cropped or not; one decode thread or several) reuses it. A loader
    of images of another shape gets a decode of its own, and serves its own images."""
    from kdprune.loaders import ffcv_backend

    entry = data["arrays"]
    next(iter(make("ffcv", entry, np.arange(64))))
    kinds = len(ffcv_backend._DECODES)
    second = make("ffcv", entry, np.arange(100, 164), train=False)
    batch = next(iter(second))
    assert len(ffcv_backend._DECODES) == kinds
    torch.testing.assert_close(batch.x, to_float(entry["source"].images[batch.ids.numpy()]), atol=0, rtol=0)
    other = data["small"]["source"]
    loader = build("ffcv", other, np.arange(50), path=data["small"]["ffcv"], workers=1, batch_size=16, train=False)
    batches = list(loader)
    assert len(ffcv_backend._DECODES) == kinds + 1
    assert [b.x.shape[2:] for b in batches] == [(12, 10)] * 4
    for b in batches:
        torch.testing.assert_close(b.x, to_float(other.images[b.ids.numpy()]), atol=0, rtol=0)


def test_ffcv_loaders_of_one_beton_share_its_ffcv_loader_and_each_serve_their_own_ids(data, tmp_path):
    """Loaders of one .beton, batch size, thread count and decoder kind run on one FFCV Loader (made
    once: its setup and compile take seconds), even while both iterate at once; each serves and
    counts exactly its own ids. Another batch size, or the file written anew, gets a Loader of its own."""
    entry = data["arrays"]
    images = entry["source"].images
    a, b = make("ffcv", entry, kept(600, 0.3, seed=1)), make("ffcv", entry, kept(600, 0.5, seed=2))
    other_size = make("ffcv", entry, kept(600, 0.3, seed=1), batch_size=16)
    for loader in (a, b, other_size):
        loader.set_epoch(1)
    served = {id(a): [], id(b): []}
    for batch_a, batch_b in itertools.zip_longest(a, b):  # both epochs underway at once
        for loader, batch in ((a, batch_a), (b, batch_b)):
            if batch is None:
                continue
            served[id(loader)].append(batch.ids.numpy())
            torch.testing.assert_close(batch.x, to_float(images[batch.ids.numpy()]), atol=0, rtol=0)
    other_size._epochs()  # (made on its first epoch)
    assert a._shared is b._shared and other_size._shared is not a._shared
    for loader in (a, b):
        np.testing.assert_array_equal(np.sort(np.concatenate(served[id(loader)])), loader.ids)
        assert loader.counter.total == len(loader.ids)
    # the same file written anew (a new inode and time, as write_beton's rename leaves it)
    path = str(tmp_path / "copy.beton")
    shutil.copyfile(entry["ffcv"] + ".json", path + ".json")
    shutil.copyfile(entry["ffcv"], path)
    first = make("ffcv", {**entry, "ffcv": path}, kept(600, 0.3, seed=1))
    next(iter(first))
    shutil.copyfile(entry["ffcv"], path + ".new")
    os.replace(path + ".new", path)
    second = make("ffcv", {**entry, "ffcv": path}, kept(600, 0.3, seed=1), train=False)
    batch = next(iter(second))
    assert second._shared is not first._shared
    torch.testing.assert_close(batch.x, to_float(images[batch.ids.numpy()]), atol=0, rtol=0)


def run_ffcv_script(data, body: str, **popen):
    """A Python process that builds an FFCV loader over the arrays' .beton as ``loader`` and runs
    ``body`` (started with ``popen``'s keywords; stdout a pipe)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = ("import numpy as np\n"
              "from kdprune.loaders import build\n"
              f"loader = build('ffcv', {data['arrays']['ffcv']!r}, np.arange(600), batch_size=8, train=True, "
              "workers=2)\n" + body)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, **popen)


def test_a_script_that_ends_with_an_ffcv_epoch_underway_exits(data, tmp_path):
    """Leaving a loop early and ending the script: the epoch underway is stopped at exit. Without
    that, it was closed during the interpreter's finalization, when the runner's daemon thread no
    longer runs, and the process waited for it for ever."""
    with open(tmp_path / "stderr", "w+") as err:
        child = run_ffcv_script(data, "batches = iter(loader)\nnext(batches)\nprint('left', flush=True)\n",
                                stderr=err)
        try:
            out, _ = child.communicate(timeout=180)
        finally:
            child.kill()
        err.seek(0)
        assert child.returncode == 0, err.read()[-2000:]
    assert out.strip() == "left"


@pytest.mark.parametrize("when", ["while the pipeline compiles", "between epochs' batches"])
def test_ctrl_c_stops_a_script_iterating_an_ffcv_loader(data, when, tmp_path):
    """A Ctrl-C while FFCV compiles its pipeline (the first batch) or while batches flow, with the
    caller decoding batches too: the script ends with a KeyboardInterrupt. (The caller once compiled
    the pipeline itself, and a Ctrl-C landing in a narrow window of numba's compile was swallowed by
    an LLVM callback and the process hung, 1 time in 6 by hand; the rule that prevents it is tested
    on its own in test_ffcv_runner.py.)"""
    import signal
    import time

    body = ("loader._epochs()\n"  # FFCV's Loader made: the first batch starts with the compile
            "print('start', flush=True)\n"
            "for epoch in range(100000):\n"
            "    loader.set_epoch(epoch)\n"
            "    for batch in loader:\n"
            "        pass\n"
            "    print('epoch', epoch, flush=True)\n")
    with open(tmp_path / "stderr", "w+") as err:  # a file, not a pipe nobody reads while we wait
        child = run_ffcv_script(data, body, stderr=err)
        try:
            assert child.stdout.readline().strip() == "start"
            if when == "while the pipeline compiles":
                time.sleep(1.0)  # (the compile takes seconds)
            else:
                for line in child.stdout:  # (ends early if the child does)
                    if line.startswith("epoch 2"):
                        break
            child.send_signal(signal.SIGINT)
            child.communicate(timeout=120)
        finally:
            child.kill()
        err.seek(0)
        lines = err.read().strip().splitlines()
    assert lines and lines[-1] == "KeyboardInterrupt", "\n".join(lines[-30:])


def test_evaluation_serves_in_id_order_without_augmentation(data):
    entry = data["arrays"]
    index = kept(600, 0.2)
    loader = make("dali", entry, index, train=False, augment=Augment(seed=1))
    batches = list(loader)
    np.testing.assert_array_equal(np.concatenate([b.ids.numpy() for b in batches]), index.ids)
    torch.testing.assert_close(batches[0].x, to_float(entry["source"].images[batches[0].ids.numpy()]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_ids_are_refused(backend, data):
    entry = data["arrays"]
    with pytest.raises(DataError, match=r"must lie in \[0, 600\)"):
        make(backend, entry, np.array([3, 600]))
    with pytest.raises(DataError, match="empty"):
        make(backend, entry, IndexSet(np.zeros(0, dtype=np.int64)))


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_missing_stale_and_truncated_conversions_are_refused(backend, data, tmp_path):
    entry = data["arrays"]
    ids = np.arange(10)
    with pytest.raises(DataError, match="kdprune convert"):
        build(backend, str(tmp_path / "nothing"), ids, batch_size=4, train=False)
    with pytest.raises(DataError, match="kdprune convert"):
        build(backend, entry["source"], ids, batch_size=4, train=False)  # no path given
    other = synthetic(600, 10, (28, 28, 1), seed=4)  # same shape, other content
    with pytest.raises(DataError, match="stale"):
        build(backend, other, ids, path=entry[backend], batch_size=4, train=False)
    wrong = IndexSet(ids, {"dataset_fingerprint": other.fingerprint})
    with pytest.raises(DataError, match="made for dataset"):
        build(backend, entry[backend], wrong, batch_size=4, train=False)
    # a copy of the conversion whose data file was cut short after the manifest was written
    import shutil
    if backend == "ffcv":
        path = str(tmp_path / "copy.beton")
        shutil.copy(entry["ffcv"], path)
        shutil.copy(entry["ffcv"] + ".json", path + ".json")
        data_file = path
    else:
        path = str(tmp_path / "copy_dali")
        shutil.copytree(entry["dali"], path)
        data_file = os.path.join(path, "images.npy")
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) - 100)
    with pytest.raises(DataError, match="truncated"):
        build(backend, entry["source"], ids, path=path, batch_size=4, train=False)


def test_beton_whose_ids_are_not_its_indices_is_refused(data):
    """Batches name their samples by .beton index; a file whose id field says otherwise (not one
    ``write_beton`` made) would mislabel every sample, so its metadata is refused, as is one without
    a label field."""
    from types import SimpleNamespace
    loader = make("ffcv", data["arrays"], np.arange(10), train=False)
    meta = np.zeros(5, dtype=np.dtype([("", "<u8"), ("", "<i8"), ("", "<i8")], align=True))
    meta["f1"], meta["f2"] = [3, 1, 4, 1, 5], np.arange(5)
    names = ["image", "label", "id"]
    np.testing.assert_array_equal(loader._stored_labels(SimpleNamespace(metadata=meta, field_names=names)),
                                  [3, 1, 4, 1, 5])
    meta["f2"] = np.arange(5)[::-1]
    with pytest.raises(DataError, match="id field is not the sample index"):
        loader._stored_labels(SimpleNamespace(metadata=meta, field_names=names))
    meta["f2"] = np.arange(5)
    with pytest.raises(DataError, match="no 'label' field"):
        loader._stored_labels(SimpleNamespace(metadata=meta, field_names=["image", "target", "id"]))


def test_manifest_records_the_source_fingerprint(data):
    entry = data["folder"]
    with open(os.path.join(entry["dali"], "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["fingerprint"] == entry["source"].fingerprint and manifest["num_samples"] == 96
    with open(entry["ffcv"] + ".json") as f:
        assert json.load(f)["fingerprint"] == entry["source"].fingerprint


def test_folder_fingerprint_tracks_files(tmp_path):
    folder = write_jpeg_folder(str(tmp_path / "f"), 12, num_classes=3, size=16)
    before = folder.fingerprint
    assert FolderDataset(folder.root).fingerprint == before
    os.remove(folder.paths[-1])
    assert FolderDataset(folder.root).fingerprint != before
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(str(tmp_path / "nope"))


def test_unknown_backend_is_refused(data):
    with pytest.raises(ConfigError, match="choose one of"):
        build("jax", data["arrays"]["source"], np.arange(4), batch_size=2, train=False)


# --- DDP: two gloo processes on the CPU -------------------------------------------------------------

def _ddp_rank(rank, world, init_file, jobs, out_dir):
    """One rank: every loader finds torch.distributed initialised and serves this rank's shard."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    threads = torch.get_num_threads()  # ffcv is not imported yet in this fresh process
    try:
        for key, (backend, source, path, ids) in jobs.items():
            extra = {"workers": 1} if backend == "torch" else {"path": path, "workers": 1}
            loader = build(backend, source, ids, batch_size=16, train=True, seed=3, **extra)
            loader.set_epoch(2)
            served = np.concatenate([b.ids.numpy() for b in loader])
            np.save(os.path.join(out_dir, f"{key}-{rank}.npy"), served)
            np.save(os.path.join(out_dir, f"{key}-{rank}-reads.npy"), loader.counter.counts)
            assert torch.get_num_threads() == threads, f"{key} changed torch's thread count"
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_shards_are_disjoint_equal_and_cover_the_index_set(data, tmp_path):
    even, odd = kept(600, 0.3, seed=1), kept(96, 0.5, seed=2).ids[:-1]  # 180 and 47 ids
    jobs = {}
    # every backend on one source; the JPEG folder on torch (DataLoader workers) and DALI only, since
    # each FFCV loader costs seconds of numba compilation per rank
    for backend in BACKENDS:
        jobs[f"{backend}-arrays"] = (backend, data["arrays"]["source"], data["arrays"].get(backend), even.ids)
    for backend in ("torch", "dali"):
        jobs[f"{backend}-folder"] = (backend, data["folder"]["source"], data["folder"].get(backend), odd)
    torch.multiprocessing.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), jobs, str(tmp_path)), nprocs=2)
    for key, (_, _, _, ids) in jobs.items():
        shards = [np.load(tmp_path / f"{key}-{r}.npy") for r in range(2)]
        assert len(shards[0]) == len(shards[1]) == -(-len(ids) // 2), key  # equal length
        union = np.concatenate(shards)
        np.testing.assert_array_equal(np.unique(union), np.sort(ids))  # union is the IndexSet
        overlap = np.intersect1d(shards[0], shards[1])
        # disjoint; an odd set pads rank 1 with one id from the start of the permutation, as
        # DistributedSampler does, so the shards stay equal
        assert len(overlap) == len(union) - len(ids), key
        for r in range(2):  # each rank read its own shard and nothing else
            reads = np.load(tmp_path / f"{key}-{r}-reads.npy")
            assert reads.sum() == len(shards[r]) and (reads[np.unique(shards[r])] >= 1).all(), key
