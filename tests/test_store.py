"""TeacherStore: round trips, resume, and every kind of bad input giving a clear error.

The grid (3 dtypes x dense/top-k x 1 or 3 views) is every combination the format distinguishes; the
stores are tiny (N = 37, an odd count that leaves a short last chunk with chunk_rows = 8) so the whole
file runs in seconds.
"""
import json
import mmap
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from kdprune.data import Augment
from kdprune.errors import ConfigError, StoreError
from kdprune.store import TeacherStore
from kdprune.store import format as fmt
from kdprune.store import pages

N, C, CHUNK = 37, 11, 8
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def teacher_logits(ids, view=0, num_classes=C):
    """Deterministic stand-in for a teacher: distinct per sample, view and class."""
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.float64)
    cls = torch.arange(num_classes, dtype=torch.float64)
    return (8 * torch.sin(0.37 * ids[:, None] + 0.91 * cls[None, :] + 1.3 * view)).float()


def expected(ids, view, dtype, k=None):
    """The reference read-back: the stored dtype, and for top-k the fill value outside the k largest."""
    full = teacher_logits(ids, view)
    if k is None:
        return full.to(DTYPES[dtype])
    vals, idx = full.topk(k, dim=1)
    out = torch.full_like(full, fmt.TOPK_FILL).scatter_(1, idx, vals)
    return out.to(DTYPES[dtype])


def fill(path, views=1, dtype="float16", topk=None, order_seed=0, **kw):
    """Write every sample of every view in a shuffled order and uneven batches."""
    rng = np.random.default_rng(order_seed)
    with TeacherStore.create(path, N, C, views=views, dtype=dtype, topk=topk, chunk_rows=CHUNK, **kw) as w:
        for view in rng.permutation(views):
            perm = rng.permutation(N)
            for batch in np.array_split(perm, 5):
                w.write(batch, teacher_logits(batch, view), view=int(view))
    return TeacherStore.open(path)


@pytest.mark.parametrize("views", [1, 3])
@pytest.mark.parametrize("topk", [None, 3])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_round_trip(tmp_path, dtype, topk, views):
    store = fill(str(tmp_path / "s"), views=views, dtype=dtype, topk=topk)
    assert (store.num_samples, store.num_classes, store.views) == (N, C, views)
    assert store.dtype == DTYPES[dtype]
    ids = np.array([36, 0, 5, 5, 17, 8, 7])  # any order, repeats allowed, both ends of the range
    for view in range(views):
        got = store.gather(ids, view=view)
        assert got.dtype == DTYPES[dtype] and got.shape == (len(ids), C)
        torch.testing.assert_close(got, expected(ids, view, dtype, topk), rtol=0, atol=0)
    assert store.verify()["bytes"] == os.path.getsize(tmp_path / "s" / "values.bin") + (
        os.path.getsize(tmp_path / "s" / "indices.bin") if topk else 0)
    assert not os.path.exists(str(tmp_path / "s") + ".partial")


def test_gather_accepts_tensors_out_and_empty(tmp_path):
    store = fill(str(tmp_path / "s"))
    ids = torch.tensor([3, 1, 4, 1, 5], dtype=torch.int32)
    out = torch.empty(5, C, dtype=torch.float16)
    assert store.gather(ids, out=out) is out
    torch.testing.assert_close(out, expected(ids, 0, "float16"), rtol=0, atol=0)
    assert store.gather([]).shape == (0, C)
    strided = torch.tensor([9, 0, 2, 0, 7, 0], dtype=torch.int64)[::2]  # int64 but not contiguous
    torch.testing.assert_close(store.gather(strided), expected(strided, 0, "float16"), rtol=0, atol=0)
    loader_ids = torch.tensor([N - 1, 0, 6])  # int64, contiguous: used as it is
    torch.testing.assert_close(store.gather(loader_ids), expected(loader_ids, 0, "float16"), rtol=0, atol=0)


def test_topk_fill_gives_missing_classes_no_probability(tmp_path):
    store = fill(str(tmp_path / "s"), topk=3, dtype="float32")
    assert store.meta["fill_value"] == fmt.TOPK_FILL and store.meta["layout"] == "topk"
    got = store.gather(np.arange(N))
    for temperature in (1.0, 4.0, 20.0, 100.0):
        p = torch.softmax(got / temperature, dim=1)
        assert torch.isfinite(torch.log_softmax(got / temperature, 1)).all()
        kept = got > fmt.TOPK_FILL
        assert (kept.sum(1) == 3).all() and (p[~kept] < 1e-40).all()
        torch.testing.assert_close(p.sum(1), torch.ones(N))
        if temperature <= 20:
            assert (p[~kept] == 0).all()  # underflows to exactly 0 in fp32


def test_topk_takes_values_and_indices(tmp_path):
    path = str(tmp_path / "s")
    full = teacher_logits(np.arange(N))
    vals, idx = full.topk(4, dim=1)
    with TeacherStore.create(path, N, C, topk=4, dtype="float32") as w:
        perm = torch.randperm(4)  # unsorted columns are sorted on write
        w.write(np.arange(N), (vals[:, perm], idx[:, perm]))
    got = TeacherStore.open(path).gather(np.arange(N))
    torch.testing.assert_close(got, torch.full_like(full, fmt.TOPK_FILL).scatter_(1, idx, vals))


def test_meta_records_dataset_teacher_and_augment(tmp_path):
    aug = Augment(seed=7, out_size=(24, 24))
    store = fill(str(tmp_path / "s"), views=2, dataset_fingerprint="abc123", teacher={"name": "t"}, augment=aug)
    assert store.meta["dataset_fingerprint"] == "abc123"
    assert store.meta["teacher"] == {"name": "t"}
    assert Augment.from_dict(store.meta["augment"]) == aug
    assert fill(str(tmp_path / "t")).meta["augment"] is None
    TeacherStore.open(str(tmp_path / "s"), expect_fingerprint="abc123")
    with pytest.raises(StoreError, match="made from an unnamed dataset .fingerprint abc123.*used with an unnamed dataset .fingerprint xyz"):
        TeacherStore.open(str(tmp_path / "s"), expect_fingerprint="xyz")
    with pytest.raises(StoreError, match="records no dataset fingerprint"):
        TeacherStore.open(str(tmp_path / "t"), expect_fingerprint="xyz")


def test_pickled_store_reopens_its_maps(tmp_path):
    store = fill(str(tmp_path / "s"), views=2)
    store.gather([1])  # mapped in this process
    clone = pickle.loads(pickle.dumps(store))
    torch.testing.assert_close(clone.gather([2, 9], view=1), expected([2, 9], 1, "float16"), rtol=0, atol=0)


def test_prefault_maps_every_page_and_survives_pickling(tmp_path, monkeypatch):
    store = fill(str(tmp_path / "s"), views=2).prefault()
    torch.testing.assert_close(store.gather([3, 0], view=1), expected([3, 0], 1, "float16"), rtol=0, atol=0)
    clone = pickle.loads(pickle.dumps(store))
    assert clone._prefault  # a DataLoader worker or DDP rank maps its pages too
    # the fallback for kernels without MADV_POPULATE_READ (or other systems) reads a byte per page
    monkeypatch.setattr(pages.sys, "platform", "darwin")
    torch.testing.assert_close(clone.gather([2, 9], view=1), expected([2, 9], 1, "float16"), rtol=0, atol=0)


def test_refreshing_the_page_cache_into_huge_pages_keeps_the_data(tmp_path):
    """``refresh_huge`` (run by prefault when under 90% of a map is in 2 MiB pages) drops and re-reads
    the file's pages: the bytes read afterwards are the file's, and smaps reports the share."""
    path = tmp_path / "blob"
    data = np.random.default_rng(0).integers(0, 256, 6 << 20, dtype=np.uint8)
    data.tofile(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        pages.want_huge_pages(mm)
        view = np.frombuffer(mm, dtype=np.uint8)
        pages.populate(mm)
        before = pages.huge_share(view.ctypes.data)
        after = pages.refresh_huge(mm, f.fileno(), view.ctypes.data, below=1.01)  # whatever the share
    np.testing.assert_array_equal(view, data)
    if sys.platform.startswith("linux"):
        assert 0 <= before <= 1 and 0 <= after <= 1
    assert pages.huge_share(0) is None  # no map there


# -- writer: resume, completeness, atomic publish --------------------------------------------------------
def test_exception_in_with_keeps_partial_and_resumes(tmp_path):
    path = str(tmp_path / "s")
    with pytest.raises(RuntimeError, match="teacher crashed") as info:
        with TeacherStore.create(path, N, C, views=2, chunk_rows=CHUNK) as w:
            w.write(np.arange(20), teacher_logits(np.arange(20), 0), view=0)
            raise RuntimeError("teacher crashed")
    assert any("resumes" in note for note in getattr(info.value, "__notes__", []))
    assert not os.path.exists(path) and os.path.isdir(path + ".partial")
    with pytest.raises(StoreError, match="not found"):
        TeacherStore.open(path)
    w = TeacherStore.create(path, N, C, views=2, chunk_rows=CHUNK)
    assert w.resumed
    # samples 0..15 fill chunks 0 and 1; 16..19 only part of chunk 2, which must be written again
    np.testing.assert_array_equal(w.missing(0), np.arange(16, N))
    np.testing.assert_array_equal(w.missing(1), np.arange(N))
    for view in range(2):
        ids = w.missing(view)
        w.write(ids, teacher_logits(ids, view), view=view)
    store = w.close()
    torch.testing.assert_close(store.gather(np.arange(N), 0), expected(np.arange(N), 0, "float16"), rtol=0, atol=0)
    assert not os.path.exists(path + ".partial")


def test_resume_with_other_arguments_is_refused(tmp_path):
    path = str(tmp_path / "s")
    with pytest.raises(RuntimeError):
        with TeacherStore.create(path, N, C, teacher="a") as w:
            raise RuntimeError
    with pytest.raises(StoreError, match="teacher: partial has 'a', now 'b'"):
        TeacherStore.create(path, N, C, teacher="b")


def test_close_refuses_an_incomplete_store(tmp_path):
    path = str(tmp_path / "s")
    w = TeacherStore.create(path, N, C, views=2)
    w.write(np.arange(N), teacher_logits(np.arange(N)), view=0)
    w.write(np.arange(N - 1), teacher_logits(np.arange(N - 1)), view=1)
    with pytest.raises(StoreError, match=r"1 of 37 samples of view 1 were never written \(first ids: \[36\]\)"):
        w.close()
    assert not os.path.exists(path) and os.path.isdir(path + ".partial")


def test_second_writer_is_refused_while_one_is_open(tmp_path):
    path = str(tmp_path / "s")
    with TeacherStore.create(path, N, C) as w:
        with pytest.raises(StoreError, match="another process is writing"):
            TeacherStore.create(path, N, C)
        w.write(np.arange(N), teacher_logits(np.arange(N)))


def test_existing_store_needs_overwrite(tmp_path):
    path = str(tmp_path / "s")
    fill(path)
    with pytest.raises(StoreError, match="already exists"):
        TeacherStore.create(path, N, C)
    with TeacherStore.create(path, N, C, dtype="float32", overwrite=True) as w:
        w.write(np.arange(N), 2 * teacher_logits(np.arange(N)))
    torch.testing.assert_close(TeacherStore.open(path).gather([4]), 2 * teacher_logits([4]))
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_rewriting_a_sample_replaces_it(tmp_path):
    path = str(tmp_path / "s")
    with TeacherStore.create(path, N, C, dtype="float32", chunk_rows=CHUNK) as w:
        w.write(np.arange(N), teacher_logits(np.arange(N)))
        w.write([3], torch.zeros(1, C))  # chunk 0 is done: its checksum must follow the new bytes
    store = TeacherStore.open(path)
    assert store.verify() and torch.equal(store.gather([3]), torch.zeros(1, C))


# -- bad input on write ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, logits, view, match", [
    ([0, 1], torch.zeros(2, C, dtype=torch.int64), 0, "floating-point"),
    ([0, 1], torch.zeros(3, C), 0, r"shape \[2, 11\], got \[3, 11\]"),
    ([0, 1], torch.zeros(2, C + 1), 0, r"shape \[2, 11\]"),
    ([0, N], torch.zeros(2, C), 0, "sample id 37 is out of range"),
    ([-1, 0], torch.zeros(2, C), 0, "sample id -1 is out of range"),
    ([2, 2], torch.zeros(2, C), 0, "repeat"),
    ([[0, 1]], torch.zeros(2, C), 0, "1-D integer"),
    ([0.5, 1.0], torch.zeros(2, C), 0, "1-D integer"),
    ([0, 1], torch.zeros(2, C), 2, r"view must be an integer in \[0, 2\)"),
    ([0, 1], torch.tensor([[0.0] * C, [float("nan")] + [0.0] * (C - 1)]), 0, "sample 1 are not finite"),
])
def test_bad_writes_are_refused(tmp_path, ids, logits, view, match):
    w = TeacherStore.create(str(tmp_path / "s"), N, C, views=2)
    with pytest.raises(StoreError, match=match):
        w.write(ids, logits, view=view)
    w.abort()


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="float64"), "dtype must be one of"),
    (dict(topk=C), "1 <= k < num_classes"),
    (dict(topk=0), "1 <= k < num_classes"),
    (dict(views=0), "views must be a positive integer"),
    (dict(teacher=object()), "JSON-serialisable"),
])
def test_bad_create_arguments(tmp_path, kwargs, match):
    with pytest.raises(StoreError, match=match):
        TeacherStore.create(str(tmp_path / "s"), N, C, **kwargs)


def test_closed_writer_refuses_writes(tmp_path):
    w = TeacherStore.create(str(tmp_path / "s"), N, C)
    w.write(np.arange(N), teacher_logits(np.arange(N)))
    w.close()
    with pytest.raises(StoreError, match="closed"):
        w.write([0], teacher_logits([0]))


DISK_FULL = """
import resource, signal, sys
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # files may not grow past 1 MiB
from kdprune.store import TeacherStore
from kdprune.errors import StoreError
try:
    TeacherStore.create(sys.argv[1], 1000, 1000, dtype="float32")  # needs 4 MB
except StoreError as err:
    print("STORE-ERROR", err)
"""


def test_disk_full_is_a_clear_error(tmp_path):
    """A file-size limit makes the space reservation fail exactly as a full disk does (EFBIG/ENOSPC)."""
    path = str(tmp_path / "s")
    res = subprocess.run([sys.executable, "-c", DISK_FULL, path], capture_output=True, text=True, timeout=60)
    assert "STORE-ERROR no space left to write the teacher store" in res.stdout, res.stdout + res.stderr
    assert "it needs 4000000 bytes" in res.stdout
    assert not os.path.exists(path)


# -- bad input on read -------------------------------------------------------------------------------------
def test_gather_refuses_bad_ids_views_and_out(tmp_path):
    store = fill(str(tmp_path / "s"), views=2)
    with pytest.raises(StoreError, match=r"sample id 37 at position 1 is out of range \[0, 37\)"):
        store.gather([0, 37])
    with pytest.raises(StoreError, match=r"sample id -3 at position 0 is out of range"):
        store.gather(torch.tensor([-3]))
    with pytest.raises(StoreError, match="1-D integer"):
        store.gather(torch.tensor([1.0]))
    with pytest.raises(StoreError, match="1-D integer"):
        store.gather(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(StoreError, match=r"view must be an integer in \[0, 2\)"):
        store.gather([0], view=2)
    with pytest.raises(StoreError, match="out must be a contiguous CPU torch.float16"):
        store.gather([0, 1], out=torch.empty(2, C))
    with pytest.raises(StoreError, match="out must be"):
        store.gather([0, 1], out=torch.empty(C, 2, dtype=torch.float16).t())


@pytest.mark.skipif(torch.cuda.is_available(), reason="pinning works where there is a GPU")
def test_pin_memory_without_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="pin_memory=True needs a CUDA device"):
        fill(str(tmp_path / "s")).gather([0], pin_memory=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_pin_memory(tmp_path):
    got = fill(str(tmp_path / "s")).gather([0, 3], pin_memory=True)
    assert got.is_pinned()
    torch.testing.assert_close(got, expected([0, 3], 0, "float16"), rtol=0, atol=0)


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.mark.parametrize("name", ["values.bin", "indices.bin"])
def test_flipped_byte_is_found_by_verify(tmp_path, name):
    path = str(tmp_path / "s")
    fill(path, views=2, topk=3)
    row_bytes = 3 * (2 if name == "values.bin" else 4)
    flip_byte(os.path.join(path, name), (N + 20) * row_bytes + 1)  # view 1, sample 20: chunk 2
    store = TeacherStore.open(path)  # the cheap checks cannot see a flipped byte ...
    with pytest.raises(StoreError, match=rf"corrupted: checksum mismatch in {name} view 1 samples \[16, 24\)"):
        store.verify()  # ... the checksums do


def test_truncated_or_missing_files_are_refused_on_open(tmp_path):
    path = str(tmp_path / "s")
    fill(path, topk=3)
    values = os.path.join(path, "values.bin")
    size = os.path.getsize(values)
    os.truncate(values, size - 1)
    with pytest.raises(StoreError, match=r"values.bin is truncated \(221 bytes, the header implies 222"):
        TeacherStore.open(path)
    with open(values, "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(StoreError, match="longer than its header says"):
        TeacherStore.open(path)
    os.truncate(values, size)
    TeacherStore.open(path)
    os.remove(os.path.join(path, "indices.bin"))
    with pytest.raises(StoreError, match="indices.bin is missing"):
        TeacherStore.open(path)
    os.remove(os.path.join(path, "header.json"))
    with pytest.raises(StoreError, match="header.json is missing"):
        TeacherStore.open(path)


def test_truncation_after_open_is_caught_before_mapping(tmp_path):
    path = str(tmp_path / "s")
    store = fill(path)
    os.truncate(os.path.join(path, "values.bin"), 100)
    with pytest.raises(StoreError, match="truncated"):
        store.gather([0])


def rewrite_header(path, **changes):
    head = json.load(open(os.path.join(path, "header.json")))
    head.update(changes)
    fmt.dump_header(os.path.join(path, "header.json"), head)  # with a valid self-checksum


def test_header_problems_are_refused(tmp_path):
    path = str(tmp_path / "s")
    fill(path)
    header = os.path.join(path, "header.json")
    text = open(header).read()
    open(header, "w").write(text.replace('"num_classes": 11', '"num_classes": 12'))
    with pytest.raises(StoreError, match="fails its checksum"):
        TeacherStore.open(path)
    open(header, "w").write(text[:-20])
    with pytest.raises(StoreError, match="not valid JSON"):
        TeacherStore.open(path)
    open(header, "w").write(text)
    rewrite_header(path, version=2)
    with pytest.raises(StoreError, match="format version 2, but this kdprune reads version 1"):
        TeacherStore.open(path)
    rewrite_header(path, version=1, format="something-else")
    with pytest.raises(StoreError, match="is not a kdprune.teacher-store header"):
        TeacherStore.open(path)
    rewrite_header(path, format=fmt.FORMAT, num_samples=N + 1)  # consistent header, wrong data size
    with pytest.raises(StoreError, match="checksums|truncated"):
        TeacherStore.open(path)


def test_info_command_verifies(tmp_path, capsys):
    from kdprune.cli import main

    path = str(tmp_path / "s")
    fill(path, views=2, topk=3, dataset_fingerprint="fp0")
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "views         2" in out and "top-3" in out and "fp0" in out and "OK" in out
    flip_byte(os.path.join(path, "values.bin"), 5)
    assert main(["info", path, "--no-verify"]) == 0
    assert main(["info", path]) == 2
    assert "corrupted: checksum mismatch in values.bin view 0 samples [0, 8)" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nothing")]) == 2
