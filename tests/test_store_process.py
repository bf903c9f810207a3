"""TeacherStore across processes: a writer killed with SIGKILL resumes; many processes read at once;
`kdprune logits` resumes an interrupted run and records the views' augmentation."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from kdprune.data import Augment, synthetic, to_float
from kdprune.errors import StoreError
from kdprune.store import TeacherStore

N, C, CHUNK, VIEWS = 600, 13, 16, 2

# The child writes views in order, in shuffled batches of 24, forever slower than the parent reads its
# progress lines, so SIGKILL lands in the middle of the stream (often in the middle of a write).
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np, torch
    from kdprune.store import TeacherStore
    N, C, CHUNK, VIEWS = {N}, {C}, {CHUNK}, {VIEWS}
    def logits(ids, view):
        ids = torch.as_tensor(ids, dtype=torch.float64)[:, None]
        return (6 * torch.cos(0.013 * ids * torch.arange(1, C + 1) + view)).float()
    w = TeacherStore.create(sys.argv[1], N, C, views=VIEWS, chunk_rows=CHUNK, dtype="bfloat16")
    print("RESUMED", int(w.resumed), flush=True)
    rng = np.random.default_rng(int(sys.argv[2]))
    for view in range(VIEWS):
        ids = w.missing(view)
        for batch in np.array_split(rng.permutation(ids), max(1, len(ids) // 24)):
            w.write(batch, logits(batch, view), view=view)
            print("WROTE", len(batch), flush=True)
            time.sleep(0.002)
    time.sleep(60)  # never closes on its own: the parent kills it
""").format(N=N, C=C, CHUNK=CHUNK, VIEWS=VIEWS)


def reference(ids, view):
    ids = torch.as_tensor(ids, dtype=torch.float64)[:, None]
    return (6 * torch.cos(0.013 * ids * torch.arange(1, C + 1) + view)).float().bfloat16()


def run_and_kill(path, seed, after_lines):
    child = subprocess.Popen([sys.executable, "-c", WRITER, path, str(seed)], stdout=subprocess.PIPE, text=True)
    first = child.stdout.readline()
    for _ in range(after_lines):
        assert child.stdout.readline().startswith("WROTE")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    return first


def test_sigkill_then_resume(tmp_path):
    path = str(tmp_path / "s")
    assert run_and_kill(path, seed=1, after_lines=7).split() == ["RESUMED", "0"]
    assert not os.path.exists(path) and os.path.isdir(path + ".partial")
    # killed again, this time while resuming and in the second view
    assert run_and_kill(path, seed=2, after_lines=20).split() == ["RESUMED", "1"]
    with pytest.raises(StoreError):
        TeacherStore.open(path)
    w = TeacherStore.create(path, N, C, views=VIEWS, chunk_rows=CHUNK, dtype="bfloat16")
    assert w.resumed
    left = [w.missing(v) for v in range(VIEWS)]
    assert 0 < sum(map(len, left)) < VIEWS * N  # work was kept, and some remains
    for view, ids in enumerate(left):
        w.write(ids, reference(ids, view).float(), view=view)
    store = w.close()
    store.verify()
    for view in range(VIEWS):
        torch.testing.assert_close(store.gather(np.arange(N), view), reference(np.arange(N), view), rtol=0, atol=0)


def _read_many(args):
    """Random gathers compared with the expected bits in numpy: in a child forked after the parent ran
    OpenMP, torch's own parallel ops hang (which is why DataLoader workers run one thread); the
    store's gather must not."""
    store, table, seed = args
    rng = np.random.default_rng(seed)
    for _ in range(50):
        ids = rng.integers(0, N, size=int(rng.integers(1, 300)))
        view = int(rng.integers(0, VIEWS))
        if not np.array_equal(store.gather(ids, view).view(torch.int16).numpy(), table[view][ids]):
            return False
    return os.getpid()


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("store") / "s")
    with TeacherStore.create(path, N, C, views=VIEWS, chunk_rows=CHUNK, dtype="bfloat16") as w:
        for view in range(VIEWS):
            w.write(np.arange(N), reference(np.arange(N), view).float(), view=view)
    return TeacherStore.open(path)


def test_many_processes_read_at_once(full_store):
    table = np.stack([reference(np.arange(N), v).view(torch.int16).numpy() for v in range(VIEWS)])
    full_store.gather(np.arange(N))  # mapped (and OpenMP used) in the parent before the fork
    with mp.get_context("fork").Pool(4) as pool:
        pids = pool.map(_read_many, [(full_store, table, seed) for seed in range(8)])
    assert all(pids) and len(set(pids)) > 1
    assert _read_many((full_store, table, 99))


class _StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return N

    def __getitem__(self, i):
        return i, self.store.gather([i], view=i % VIEWS)[0]


def test_dataloader_workers_share_the_store(full_store):
    loader = torch.utils.data.DataLoader(_StoreDataset(full_store), batch_size=64, num_workers=2,
                                         multiprocessing_context="fork")
    seen = 0
    for ids, rows in loader:
        for view in range(VIEWS):
            sel = ids % VIEWS == view
            assert torch.equal(rows[sel], reference(ids[sel].numpy(), view))
        seen += len(ids)
    assert seen == N


# -- kdprune logits --------------------------------------------------------------------------------------
class _Crash(Exception):
    pass


class _CrashAfter(torch.nn.Module):
    """Wraps a teacher and raises after ``n`` batches: an interrupted `kdprune logits`."""

    def __init__(self, model, n):
        super().__init__()
        self.model, self.n = model, n

    def forward(self, x):
        if self.n == 0:
            raise _Crash
        self.n -= 1
        return self.model(x)


def test_logits_command_resumes_and_replays_views(tmp_path, capsys):
    from kdprune.cli import main
    from kdprune.models import build_model, load_model, save_model
    from kdprune.logits import write_teacher_logits
    from kdprune.store.fill import checkpoint_description

    torch.manual_seed(0)
    ckpt = str(tmp_path / "teacher.pt")
    save_model(ckpt, build_model("cnn", 10, 1, width=4),
               {"name": "cnn", "num_classes": 10, "in_channels": 1, "kwargs": {"width": 4}})
    data = synthetic(300, 10, (28, 28, 1), seed=0)
    out = str(tmp_path / "store")
    args = ["logits", "--dataset", "synthetic", "--synthetic-samples", "300", "--teacher", ckpt, "--out", out,
            "--views", "2", "--augment-seed", "5", "--batch-size", "64", "--no-progress"]
    # the same run as the command, interrupted after 3 batches of view 0
    with pytest.raises(_Crash):
        write_teacher_logits(_CrashAfter(load_model(ckpt), 3), data, out, views=2, augment=Augment(seed=5),
                             batch_size=64, description=checkpoint_description(ckpt), progress=False)
    assert os.path.isdir(out + ".partial")
    assert main(args) == 0
    assert "views=2" in capsys.readouterr().out
    store = TeacherStore.open(out, expect_fingerprint=data.fingerprint)
    aug = Augment.from_dict(store.meta["augment"])
    assert aug == Augment(seed=5) and store.meta["teacher"]["sha256"] == checkpoint_description(ckpt)["sha256"]
    model = load_model(ckpt)
    ids = np.array([0, 63, 64, 191, 192, 299])  # both sides of the crash and of batch edges
    x = to_float(data.images[ids])
    with torch.no_grad():
        for view in range(2):
            want = model(aug.apply(x, view, ids)).half()
            torch.testing.assert_close(store.gather(ids, view), want, rtol=2e-3, atol=2e-3)
    # a second run finds the finished store and leaves it alone; another teacher is refused
    assert main(args) == 0
    save_model(ckpt, build_model("cnn", 10, 1, width=4),
               {"name": "cnn", "num_classes": 10, "in_channels": 1, "kwargs": {"width": 4}})
    assert main(args) == 2
    assert "a different teacher store already exists" in capsys.readouterr().err


def test_logits_without_views_sees_clean_images(tmp_path):
    from kdprune.models import build_model
    from kdprune.logits import write_teacher_logits

    data = synthetic(50, 10, (28, 28, 1), seed=1)
    model = build_model("cnn", 10, 1, width=4).eval()
    store = write_teacher_logits(model, data, str(tmp_path / "s"), dtype="float32", progress=False)
    assert store.meta["augment"] is None and store.meta["dataset_fingerprint"] == data.fingerprint
    with torch.no_grad():
        want = model(to_float(data.images))
    torch.testing.assert_close(store.gather(np.arange(50)), want, rtol=1e-5, atol=1e-5)
