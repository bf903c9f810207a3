"""The FFCV backend through its public entry points (``build``, ``write_beton``), on a tiny JPEG folder
whose images each have their own size: the ids of every epoch and rank, each once; the training crop
equal to the torch backend's for the same (seed, view, id); a run resumed mid-epoch; a .beton written
by FFCV's own writer (no kdprune manifest); clear errors.

FFCV compiles each loader's pipeline with numba on its first batch (seconds), so the module builds
few loaders: one training loader per rank, shared by the tests that read it.
"""
from __future__ import annotations

import ast
import itertools
import os

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

from kdprune.data import Augment  # noqa: E402
from kdprune.data.augment import crop_batch  # noqa: E402
from kdprune.data.folder import write_jpeg_folder  # noqa: E402
from kdprune.errors import DataError  # noqa: E402
from kdprune.loaders import build  # noqa: E402
from kdprune.loaders.ffcv_backend import torch_threads_kept, write_beton  # noqa: E402

N = 40  # samples: five batches of 4 per rank at half the ids, two ranks
AUG = Augment(seed=7, out_size=(16, 16))
KEPT = np.arange(0, N, 2)[:-1].tolist() + [N - 1, 5]  # 21 ids: shards padded to equal length


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv")
    folder = write_jpeg_folder(root / "jpegs", N, num_classes=3, size=(18, 40), seed=2)
    beton = str(root / "raw.beton")
    write_beton(folder, beton, workers=1, write_mode="raw")  # the pixels PIL decodes, exactly
    return {"root": root, "folder": folder, "beton": beton}


def loaders(data, backend, rank, **kw):
    source = data["folder"] if backend == "torch" else data["beton"]
    kw.setdefault("workers", 0 if backend == "torch" else 2)
    return build(backend, source, np.array(KEPT), batch_size=4, train=True, seed=3, augment=AUG, views=3,
                 distributed=(rank, 2), **kw)


@pytest.fixture(scope="module")
def ranks(data):
    """The FFCV training loader of each of two ranks, and the torch backend's for the same settings."""
    return [(loaders(data, "ffcv", r), loaders(data, "torch", r)) for r in range(2)]


def ids_of(batches) -> list:
    return torch.cat([b.ids for b in batches]).tolist()


def test_every_epoch_serves_each_kept_id_once_across_ranks_in_the_torch_backends_order(ranks):
    for epoch in (0, 1, 2):
        served = []
        for ffcv, torch_loader in ranks:
            ffcv.set_epoch(epoch)
            torch_loader.set_epoch(epoch)
            got = ids_of(ffcv)
            assert len(ffcv) == 3 and len(got) == 11  # 21 ids over two ranks: 11 each (one padded)
            assert got == ids_of(torch_loader)
            served.append(got)
        assert sorted(set(served[0]) | set(served[1])) == sorted(KEPT)
        assert len(set(served[0]) & set(served[1])) <= 1  # only the padding id repeats
    ffcv.set_epoch(0)
    first = ids_of(ffcv)
    ffcv.set_epoch(1)
    assert ids_of(ffcv) != first  # shuffled per epoch


def test_training_batches_are_the_torch_backends_crops_of_the_same_view(ranks, data):
    """Epoch 4 with 3 views replays view 1 (crops drawn relative to each image's own size). All the
    batches are held before they are compared, so one that FFCV's ring overwrote would be caught."""
    ffcv, torch_loader = ranks[1]
    for loader in (ffcv, torch_loader):
        loader.set_epoch(4)
    ours, theirs = list(ffcv), list(torch_loader)
    for a, b in zip(ours, theirs, strict=True):
        assert a.ids.tolist() == b.ids.tolist() and a.y.tolist() == b.y.tolist()
        assert a.x.shape == (len(a.ids), 3, 16, 16) and a.x.dtype == torch.float32
        torch.testing.assert_close(a.x, b.x, atol=1e-5, rtol=0)
    ids = ids_of(ours)
    other_view = crop_batch([data["folder"].decode(i) for i in ids], ids, augment=AUG, view=2)
    assert (torch.cat([b.x for b in ours]) - other_view).abs().max() > 0.1
    assert ffcv.counter.counts[np.setdiff1d(np.arange(N), KEPT)].sum() == 0  # nothing else was read


def test_a_run_resumed_mid_epoch_gets_the_rest_of_that_epoch(ranks):
    """What the trainer does on resume: a fresh epoch with the batches already trained on skipped."""
    ffcv, _ = ranks[0]
    ffcv.set_epoch(7)
    whole = list(ffcv)
    ffcv.set_epoch(7)
    rest = list(itertools.islice(iter(ffcv), 1, None))
    assert [b.ids.tolist() for b in rest] == [b.ids.tolist() for b in whole[1:]]
    for a, b in zip(rest, whole[1:]):
        torch.testing.assert_close(a.x, b.x, atol=0, rtol=0)


def test_an_epoch_left_early_does_not_disturb_the_next(ranks):
    ffcv, _ = ranks[0]
    ffcv.set_epoch(9)
    expected = ids_of(ffcv)
    for _ in range(2):
        next(iter(ffcv))
    assert ids_of(ffcv) == expected


def test_a_subset_changed_between_epochs_is_served_whole(ranks):
    """FFCV's own Loader fixes its length when it is made; a larger subset set later is not cut, and
    comes in the order kdprune's sampler gives (the same on every backend)."""
    from kdprune import KeptIdSampler
    ffcv, _ = ranks[0]
    try:
        ffcv.set_ids(np.arange(N))
        ffcv.set_epoch(5)
        sampler = KeptIdSampler(np.arange(N), seed=3, distributed=(0, 2))
        sampler.set_epoch(5)
        assert len(ffcv) == 5 and ids_of(ffcv) == list(sampler)
    finally:
        ffcv.set_ids(np.array(KEPT))


def plain_beton(folder, path: str) -> None:
    """A .beton as FFCV's ImageNet example script writes one: ``image`` and ``label`` fields."""
    with torch_threads_kept():
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

    class Items:
        def __len__(self):
            return len(folder)

        def __getitem__(self, i):
            return folder.decode(i), int(folder.labels[i])

    writer = DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=32, jpeg_quality=95),
                                  "label": IntField()}, num_workers=1)
    writer.from_indexed_dataset(Items())


def test_a_users_own_ffcv_beton_loads_without_a_manifest(data):
    """Sample id = position; evaluation cuts each image's centre box at its own size."""
    path = str(data["root"] / "imagenet_style.beton")
    plain_beton(data["folder"], path)
    assert not os.path.exists(path + ".json")
    ids = np.arange(3, N, 3)
    loader = build("ffcv", path, ids, batch_size=5, train=False, image_size=12, workers=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert ids_of(batches) == ids.tolist()  # evaluation: in id order
    assert torch.cat([b.y for b in batches]).tolist() == data["folder"].labels[ids].tolist()
    x = torch.cat([b.x for b in batches])
    # FFCV re-encodes (and caps the images at 32 px): the same boxes, up to JPEG and resizing noise
    images = [data["folder"].decode(i) for i in ids]
    expected = crop_batch(images, ids, image_size=12)
    assert x.shape == expected.shape and (x - expected).abs().mean() < 0.06


def test_images_of_several_sizes_need_an_output_size(data):
    loader = build("ffcv", data["beton"], None, batch_size=8, train=False, workers=1)
    with pytest.raises(DataError, match="different sizes.*--image-size"):
        next(iter(loader))


def test_a_beton_without_image_and_label_fields_is_refused(tmp_path):
    with torch_threads_kept():
        from ffcv.fields import FloatField
        from ffcv.writer import DatasetWriter
    path = str(tmp_path / "other.beton")
    writer = DatasetWriter(path, {"value": FloatField()}, num_workers=1)
    writer.from_indexed_dataset([(float(i),) for i in range(4)])
    with pytest.raises(DataError, match="'image' and a 'label' field"):
        build("ffcv", path, None, batch_size=2, train=False)
    with pytest.raises(DataError, match="not a readable FFCV .beton"):
        (tmp_path / "junk.beton").write_bytes(b"not a beton")
        build("ffcv", str(tmp_path / "junk.beton"), None, batch_size=2, train=False)


def test_no_module_imports_a_private_ffcv_name():
    package = os.path.join(os.path.dirname(__file__), "..", "kdprune")
    for folder, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(folder, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ffcv"):
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    assert not private and "._" not in node.module, f"{name} imports {node.module} {private}"
