"""The loaders' contract on all three backends (torch, FFCV, DALI), on the CPU, for both kinds of
source (raw arrays and a folder of JPEGs of varied sizes): the ids served in an epoch are exactly the
kept ids, each once (per rank: disjoint equal shards); nothing outside them is read (counted where
the bytes are read or decoded); the order is one permutation per (seed, epoch), the same on every
backend; the training crop is the teacher store's view ``epoch % views`` of (seed, view, id), the
same crop on every backend; evaluation is resize + centre crop; bad input gives a clear error.

Sizes: 600 raw 28x28 samples and 60 JPEGs of 20 to 48 px in 4 classes, kept subsets of 0.3 to 0.5
with batch sizes that leave a partial last batch. Each conversion is made once, when a test first
needs it (an FFCV loader compiles its pipeline, seconds, so the module builds few of them).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from kdprune.cli import main as cli
from kdprune.data import Augment, synthetic, to_float
from kdprune.data.augment import center_boxes, crop_batch, crop_images
from kdprune.data.folder import FolderDataset, write_jpeg_folder
from kdprune.errors import ConfigError, DataError
from kdprune.loaders import build, normalize
from kdprune.loaders.batch import epoch_order, shuffled_range
from kdprune.selection import IndexSet

BACKENDS = ("torch", "ffcv", "dali")
SIZES = (20, 48)  # the folder's images draw their height and width from this range


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two sources; each backend's conversion of one is made when a test first asks for it."""
    root = tmp_path_factory.mktemp("loaders")
    folder = write_jpeg_folder(root / "jpegs" / "train", 60, num_classes=4, size=SIZES, seed=1)
    write_jpeg_folder(root / "jpegs" / "val", 12, num_classes=4, size=SIZES, seed=2)
    return {"root": root, "arrays": {"source": synthetic(600, 10, (28, 28, 1), seed=3)},
            "folder": {"source": folder}}


def converted(data, name, backend):
    """The ``backend`` conversion of source ``name`` (made on first use, through ``kdprune.convert``)."""
    entry = data[name]
    if backend not in entry:
        import kdprune
        path = data["root"] / (f"{name}.beton" if backend == "ffcv" else f"{name}_dali")
        kdprune.convert(entry["source"], backend, path, workers=1)
        entry[backend] = str(path)
    return entry[backend]


def make(backend, data, name, ids, **kw):
    kw.setdefault("batch_size", 32)
    kw.setdefault("train", True)
    kw.setdefault("seed", 5)
    if name == "folder":
        kw.setdefault("image_size", 16)  # images of varied sizes need an output size
    source = data[name]["source"]
    if backend == "torch":
        return build("torch", source, ids, workers=1, **kw)
    return build(backend, source, ids, path=converted(data, name, backend), workers=1, **kw)


def kept(n, fraction, seed=0):
    rng = np.random.default_rng(seed)
    return IndexSet(rng.choice(n, int(round(fraction * n)), replace=False), {"num_samples": n})


def decoded(source, ids):
    """The images of ``ids`` as PIL decodes them, each at its own size."""
    if isinstance(source, FolderDataset):
        return [source.decode(int(i)) for i in ids]
    return list(source.images[ids])


def test_the_epoch_permutation_is_fixed_by_seed_and_epoch():
    a = shuffled_range(1000, seed=5, epoch=2)
    assert a.dtype == np.int64 and sorted(a.tolist()) == list(range(1000))
    np.testing.assert_array_equal(a, shuffled_range(1000, 5, 2))
    assert not np.array_equal(a, shuffled_range(1000, 5, 3)) and not np.array_equal(a, shuffled_range(1000, 6, 2))
    # seeds apart only above 32 bits (all torch's generator keeps of a seed) still differ
    assert not np.array_equal(shuffled_range(1000, 1, 0), shuffled_range(1000, 1 + 2**32, 0))


@pytest.mark.parametrize("name", ["arrays", "folder"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_serves_exactly_the_kept_ids_and_reads_nothing_else(backend, name, data):
    source = data[name]["source"]
    n = len(source)
    index = kept(n, 0.4, seed=len(name))
    threads = torch.get_num_threads()
    loader = make(backend, data, name, index, batch_size=7 if name == "folder" else 32)
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == -(-len(index) // loader.batch_size)
        served = np.concatenate([b.ids.numpy() for b in batches])
        assert all(b.ids.dtype == torch.int64 and b.x.dtype == torch.float32 for b in batches)
        assert sorted(served.tolist()) == index.ids.tolist()  # exactly the IndexSet, each once
        # one permutation per (seed, epoch), the same on every backend
        np.testing.assert_array_equal(served, epoch_order(index.ids, seed=5, epoch=epoch, shuffle=True, rank=0,
                                                          world=1, drop_last=False, batch_size=1))
        for b in batches:
            np.testing.assert_array_equal(b.y.numpy(), source.labels[b.ids.numpy()])
            assert b.x.shape[0] == len(b.ids)
            if name == "arrays":  # each image is its id's
                torch.testing.assert_close(b.x, to_float(source.images[b.ids.numpy()]), atol=0, rtol=0)
            else:  # images of any size come out at the output size
                assert tuple(b.x.shape[1:]) == (3, 16, 16)
        orders.append(served)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled by epoch
    counts = loader.counter.counts
    assert (counts[index.ids] == 2).all()  # read once per epoch
    assert torch.get_num_threads() == threads  # no backend changed torch's global thread count
    outside = np.setdiff1d(np.arange(n), index.ids)
    assert counts[outside].sum() == 0, "a sample outside the IndexSet was read"


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_last_serves_only_full_batches(backend, data):
    index = kept(600, 0.3, seed=2)  # 180 ids, batch 64: two full batches, 52 dropped
    loader = make(backend, data, "arrays", index, batch_size=64, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 2 and all(len(b.ids) == 64 for b in batches)
    served = np.concatenate([b.ids.numpy() for b in batches])
    assert len(np.unique(served)) == 128 and np.isin(served, index.ids).all()
    assert loader.counter.total == 128  # the dropped tail is not even read


@pytest.mark.parametrize("name", ["arrays", "folder"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_crop_is_the_store_view_on_every_backend(backend, name, data):
    """Epoch 4 with 3 views draws view 1: every batch is the crop of (seed, view 1, id), drawn
    relative to each image's own size, that the teacher store's view 1 was computed on
    (``crop_batch``, what ``kdprune logits`` and the torch backend run). The batches are all held
    before they are checked, so a batch that a later one overwrote would be caught, and an epoch left
    early runs before it."""
    source = data[name]["source"]
    augment = Augment(seed=7, out_size=(24, 24))
    index = kept(len(source), 0.5, seed=4)
    loader = make(backend, data, name, index, augment=augment, views=3, batch_size=8)
    loader.set_epoch(4)
    early = iter(loader)
    next(early)  # an epoch left early and still referenced must not disturb the next one
    batches = list(loader)
    x = torch.cat([b.x for b in batches])
    ids = torch.cat([b.ids for b in batches]).numpy()
    images = decoded(source, ids)

    def view(v):
        return crop_batch(images, ids, augment=augment, view=v)

    assert len(batches) >= 4 and tuple(x.shape[2:]) == (24, 24)
    if backend == "ffcv" and name == "folder":
        # FFCV stores JPEGs re-encoded, so its pixels differ from PIL's decode of the originals by
        # JPEG noise: the crop must still be the same box (far nearer view 1 than any other view)
        err = (x - view(1)).abs().mean()
        assert err < 0.05 and err * 3 < (x - view(0)).abs().mean()
    else:  # the same pixels: the same crop to float32 rounding
        torch.testing.assert_close(x, view(1), atol=1e-5, rtol=0)
        assert (x - view(0)).abs().max() > 0.1  # a wrong view would be caught


@pytest.mark.parametrize("backend", BACKENDS)
def test_unshuffled_training_serves_the_ids_in_order_and_set_ids_swaps_them(backend, data):
    """``shuffle=False``, as writing teacher logits reads: the ids in increasing order, each cropped to
    the training view ``epoch`` (``views=None``) of the augmentation; ``set_ids`` then serves another
    subset from the same loader (its workers, and FFCV's compiled pipeline, kept)."""
    source = data["folder"]["source"]
    augment = Augment(seed=7, out_size=(16, 16))
    subsets = {2: np.arange(0, 60, 3), 5: np.arange(1, 60, 2)}
    loader = make(backend, data, "folder", subsets[2], augment=augment, views=None, shuffle=False, batch_size=8)
    for epoch, ids in subsets.items():
        loader.set_ids(ids)
        loader.set_epoch(epoch)
        batches = list(loader)
        assert torch.cat([b.ids for b in batches]).tolist() == ids.tolist()
        x = torch.cat([b.x for b in batches])
        expected = crop_batch(decoded(source, ids), ids, augment=augment, view=epoch)
        if backend == "ffcv":  # re-encoded JPEGs: the same boxes up to JPEG noise
            assert (x - expected).abs().mean() < 0.05
        else:
            torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_batches_are_the_float_batches_in_grey_levels(backend, data):
    """``dtype="uint8"``: the same crops of the same ids as grey levels, a quarter of the bytes;
    ``normalize`` (run on the GPU in training) makes them the float batch to half a grey level."""
    augment = Augment(seed=7, out_size=(16, 16))
    index = kept(60, 0.5, seed=2)
    batches = {}
    for dtype in ("float32", "uint8"):
        loader = make(backend, data, "folder", index, augment=augment, views=2, dtype=dtype, batch_size=8)
        loader.set_epoch(3)
        batches[dtype] = list(loader)
    assert len(batches["uint8"]) == len(batches["float32"]) == 4
    for exact, grey in zip(batches["float32"], batches["uint8"]):
        assert grey.x.dtype == torch.uint8 and exact.x.dtype == torch.float32 and torch.equal(grey.ids, exact.ids)
        assert (normalize(grey.x) - exact.x).abs().max() <= 0.5 / 127.5 + 1e-5
    with pytest.raises(ConfigError, match="dtype must be one of float32, uint8"):
        make(backend, data, "folder", index, dtype="float16")


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_epoch_left_early_does_not_stall_the_next(backend, data):
    """Epochs left after their first batch (the library has decoded ahead and may be waiting to hand
    over the rest); the next epoch must still start and serve everything. Run in a thread, so that a
    hang fails the test instead of stopping the suite."""
    from timeouts import within

    loader = make(backend, data, "arrays", np.random.default_rng(6).choice(600, 128, replace=False), batch_size=32)
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


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_evaluation_is_resize_and_centre_crop_in_id_order(backend, data):
    """Evaluation serves the ids in order, never augmented (an ``augment`` given is ignored), each
    image cut to its centre box (shorter side to size / 0.875, centre size x size) at any size."""
    source = data["folder"]["source"]
    index = kept(60, 0.5, seed=3)
    loader = make(backend, data, "folder", index, train=False, augment=Augment(seed=1), image_size=16,
                  batch_size=11)
    batches = list(loader)
    ids = np.concatenate([b.ids.numpy() for b in batches])
    np.testing.assert_array_equal(ids, index.ids)
    images = decoded(source, ids)
    boxes = center_boxes([im.shape[0] for im in images], [im.shape[1] for im in images], (16, 16))
    expected = crop_images(images, boxes, np.zeros(len(ids), bool), (16, 16))
    torch.testing.assert_close(torch.cat([b.x for b in batches]), expected, atol=1e-5, rtol=0)
    # the centre box: centred, of side 0.875 x the shorter side
    h, w = images[0].shape[:2]
    side = round(0.875 * min(h, w))
    np.testing.assert_array_equal(boxes[0], [(h - side) // 2, (w - side) // 2, side, side])


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_images_of_different_sizes_without_an_output_size_are_refused(backend, data):
    loader = make(backend, data, "folder", np.arange(60), train=False, image_size=None, batch_size=60)
    with pytest.raises(DataError, match="different sizes.*--image-size"):
        list(loader)


# users' datasets (at module level: DataLoader workers may be spawned, which pickles them)
class Pictures(torch.utils.data.Dataset):
    """PIL images of varied sizes, one flat colour each."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from PIL import Image
        size = 10 + i % 7
        return Image.new("RGB", (size, size + 3), (i, 2 * i, 3 * i)), i % 3


class Tensors(torch.utils.data.Dataset):
    """Dict items of float tensors, as a Hugging Face dataset in torch format gives them."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return {"pixel_values": torch.full((3, 8, 8), float(i)), "label": torch.tensor(i % 5)}


class Buggy(torch.utils.data.Dataset):
    """A dataset with a bug in its __getitem__."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": np.zeros((4, 4, 3), np.uint8)}["y"], 0


def test_any_map_style_dataset_on_the_torch_backend(tmp_path):
    """A user's dataset class (PIL images, float tensors, dict items as Hugging Face gives them) and
    torchvision's ImageFolder go through DataLoader workers; ``ids=None`` serves every sample."""
    loader = build("torch", Pictures(21), None, batch_size=8, train=False, image_size=12, workers=1)
    batches = list(loader)
    np.testing.assert_array_equal(np.concatenate([b.ids.numpy() for b in batches]), np.arange(21))
    np.testing.assert_array_equal(batches[0].y.numpy(), np.arange(8) % 3)
    assert batches[0].x.shape == (8, 3, 12, 12)
    torch.testing.assert_close(batches[0].x[5, 0], torch.full((12, 12), 5 / 127.5 - 1))  # a flat image stays flat

    aug = Augment(seed=1, out_size=(6, 6))
    loader = build("torch", Tensors(), [3, 4, 9], batch_size=2, train=True, augment=aug, workers=1)
    x = torch.cat([b.x for b in loader])
    ids = torch.cat([b.ids for b in loader])
    assert sorted(ids.tolist()) == [3, 4, 9] and x.shape == (3, 3, 6, 6)
    torch.testing.assert_close(x[:, 0, 0, 0], ids.float())  # float inputs the dataset made, cropped

    import torchvision
    root = tmp_path / "imagefolder"
    write_jpeg_folder(root, 9, num_classes=3, size=(12, 20))
    folder = torchvision.datasets.ImageFolder(str(root))
    loader = build("torch", folder, None, batch_size=4, train=False, image_size=8, workers=1)
    ys = np.concatenate([b.y.numpy() for b in loader])
    np.testing.assert_array_equal(ys, folder.targets)


def test_a_failure_in_a_worker_is_one_clear_error(data, tmp_path):
    """A corrupt JPEG read in a DataLoader worker (or decoded by DALI): one DataError naming the file
    and the fix, not a worker's traceback."""
    root = tmp_path / "broken"
    folder = write_jpeg_folder(root, 8, num_classes=2, size=16)
    with open(folder.paths[5], "wb") as f:
        f.write(b"not a jpeg")
    loader = build("torch", FolderDataset(root), None, batch_size=4, train=False, workers=1)
    with pytest.raises(DataError) as err:
        list(loader)
    message = str(err.value)
    assert folder.paths[5] in message and "not a readable JPEG" in message and "remove or replace" in message
    assert "Traceback" not in message and "DataLoader worker" not in message
    # DALI's decoder fails on the same file: the error names it too
    import kdprune
    kdprune.convert(FolderDataset(root), "dali", tmp_path / "broken_dali")
    with pytest.raises(DataError, match=f"{folder.paths[5]} is not a readable JPEG; remove or replace"):
        list(build("dali", tmp_path / "broken_dali", None, batch_size=4, train=False, workers=1))

    with pytest.raises(DataError, match=r"reading sample \d of Buggy failed: KeyError"):
        list(build("torch", Buggy(), None, batch_size=2, train=False, workers=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_subset_of_another_dataset_is_refused(backend, data):
    other = synthetic(600, 10, (28, 28, 1), seed=4)  # same size, other content
    wrong = IndexSet(np.arange(10), {"dataset_fingerprint": other.fingerprint, "dataset_name": "other-set"})
    with pytest.raises(DataError, match="other-set"):
        make(backend, data, "arrays", wrong)
    right = IndexSet(np.arange(10), {"dataset_fingerprint": data["arrays"]["source"].fingerprint})
    assert len(make(backend, data, "arrays", right)) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_ids_are_refused(backend, data):
    with pytest.raises(DataError, match=r"must lie in \[0, 600\)"):
        make(backend, data, "arrays", np.array([3, 600]))
    with pytest.raises(DataError, match="empty"):
        make(backend, data, "arrays", IndexSet(np.zeros(0, dtype=np.int64)))


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_missing_stale_and_truncated_conversions_are_refused(backend, data, tmp_path):
    source, path = data["arrays"]["source"], converted(data, "arrays", backend)
    ids = np.arange(10)
    with pytest.raises(DataError, match="kdprune convert"):
        build(backend, str(tmp_path / "nothing"), ids, batch_size=4, train=False)
    with pytest.raises(DataError, match="kdprune convert"):
        build(backend, source, ids, batch_size=4, train=False)  # no path given
    other = synthetic(600, 10, (28, 28, 1), seed=4)  # same shape, other content
    with pytest.raises(DataError, match="stale"):
        build(backend, other, ids, path=path, batch_size=4, train=False)
    # a copy of the conversion whose data file was cut short after the manifest was written
    if backend == "ffcv":
        copy = str(tmp_path / "copy.beton")
        shutil.copy(path, copy)
        shutil.copy(path + ".json", copy + ".json")
        data_file = copy
    else:
        copy = str(tmp_path / "copy_dali")
        shutil.copytree(path, copy)
        data_file = os.path.join(copy, "images.npy")
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) - 100)
    with pytest.raises(DataError, match="truncated"):
        build(backend, source, ids, path=copy, batch_size=4, train=False)


def test_convert_keeps_the_originals_and_one_folder_layout_in_every_command(data, tmp_path, capsys):
    """``kdprune convert --dataset folder --data-dir ROOT`` reads ROOT/train (or ROOT/val with
    --split val), as every other command does; the DALI conversion lists the original files."""
    root = data["folder"]["source"].root.rsplit(os.sep, 1)[0]
    for split, sub in (("train", "train"), ("val", "val")):
        out = tmp_path / f"dali_{split}"
        assert cli(["convert", "--format", "dali", "--dataset", "folder", "--data-dir", root, "--split", split,
                    "--out", str(out)]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        expected = FolderDataset(os.path.join(root, sub))
        assert manifest["fingerprint"] == expected.fingerprint and manifest["num_samples"] == len(expected)
        listed = [line.rsplit(" ", 1)[0] for line in (out / "files.txt").read_text().splitlines()]
        assert listed == expected.paths
    assert cli(["convert", "--format", "dali", "--dataset", "folder", "--data-dir", os.path.join(root, "train"),
                "--out", str(tmp_path / "wrong")]) == 2
    assert "has no train/ folder" in capsys.readouterr().err and not (tmp_path / "wrong").exists()


def test_folder_fingerprint_tracks_files(tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", 12, num_classes=3, size=16)
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
    try:
        for key, (backend, source, path, ids) in jobs.items():
            extra = {"workers": 1} if backend == "torch" else {"path": path, "workers": 1}
            loader = build(backend, source, ids, batch_size=16, train=True, seed=3, image_size=16, **extra)
            loader.set_epoch(2)
            served = np.concatenate([b.ids.numpy() for b in loader])
            np.save(os.path.join(out_dir, f"{key}-{rank}.npy"), served)
            np.save(os.path.join(out_dir, f"{key}-{rank}-reads.npy"), loader.counter.counts)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_shards_are_disjoint_equal_and_cover_the_index_set(data, tmp_path):
    even, odd = kept(600, 0.3, seed=1), kept(60, 0.5, seed=2).ids[:-1]  # 180 and 29 ids
    jobs = {}
    # every backend on one source; the JPEG folder on torch (DataLoader workers) and DALI only, since
    # each FFCV loader costs seconds of numba compilation per rank
    for backend in BACKENDS:
        path = None if backend == "torch" else converted(data, "arrays", backend)
        jobs[f"{backend}-arrays"] = (backend, data["arrays"]["source"], path, even.ids)
    jobs["torch-folder"] = ("torch", data["folder"]["source"], None, odd)
    jobs["dali-folder"] = ("dali", data["folder"]["source"], converted(data, "folder", "dali"), odd)
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


def test_a_torchvision_image_folder_converts_for_dali(tmp_path):
    """``kdprune.convert`` of torchvision's ImageFolder lists its original files for DALI, and the
    DALI loader checks the conversion against that dataset and serves its labels."""
    import torchvision

    import kdprune
    write_jpeg_folder(tmp_path / "tv", 10, num_classes=2, size=(16, 30))
    folder = torchvision.datasets.ImageFolder(str(tmp_path / "tv"))
    manifest = kdprune.convert(folder, "dali", tmp_path / "tv_dali")
    assert manifest["num_samples"] == 10 and manifest["encoding"] == "jpeg"
    loader = build("dali", folder, None, path=tmp_path / "tv_dali", batch_size=4, train=False, image_size=8)
    batches = list(loader)
    np.testing.assert_array_equal(np.concatenate([b.y.numpy() for b in batches]), folder.targets)
    assert batches[0].x.shape == (4, 3, 8, 8)
