"""kdprune in a user's own script: with_ids, KeptIdSampler, fingerprint, write_teacher_logits and fit
on plain torch datasets and DataLoaders (tiny tensors, a few seconds in all)."""
import doctest
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

import kdprune
from kdprune.errors import ConfigError, DataError, ProvenanceError, StoreError

N, C = 96, 4


def _data(n=N, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.arange(n) % C if labels is None else labels
    return TensorDataset(x, y)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16), torch.nn.ReLU(), torch.nn.Linear(16, C))


class Pairs(torch.utils.data.Dataset):
    """A user's own dataset class: items (x, y), labels exposed as ``targets``."""

    def __init__(self, n=N):
        self.targets = [i % C for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.full((3, 8, 8), float(i)), self.targets[i]


# -- with_ids ---------------------------------------------------------------------------------------
def test_with_ids_adds_the_sample_id_and_pickles_for_workers():
    ds = kdprune.with_ids(Pairs())
    x, y, i = ds[5]
    assert i == 5 and y == 5 % C and float(x[0, 0, 0]) == 5.0
    assert len(ds) == N and ds.targets[:3] == [0, 1, 2]  # attributes read through
    assert kdprune.with_ids(ds) is ds
    back = pickle.loads(pickle.dumps(ds))
    assert back[7][2] == 7
    loader = DataLoader(ds, batch_size=10, num_workers=1, sampler=kdprune.KeptIdSampler([3, 9, 40], shuffle=False))
    (xb, yb, ids), = list(loader)
    assert ids.tolist() == [3, 9, 40] and xb[:, 0, 0, 0].tolist() == [3.0, 9.0, 40.0]


def test_with_ids_reads_dict_items_and_refuses_others():
    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"pixel_values": torch.zeros(2), "label": i}

    assert kdprune.with_ids(Dicts())[1][1:] == (1, 1)
    with pytest.raises(DataError, match="not \\(x, y, ...\\)"):
        kdprune.with_ids([torch.zeros(2)])[0]
    with pytest.raises(DataError, match="map-style"):
        kdprune.with_ids(iter([1, 2]))


# -- KeptIdSampler --------------------------------------------------------------------------------------
def test_sampler_serves_the_loaders_order_every_epoch():
    from kdprune.data import synthetic
    from kdprune.loaders import build

    ds = synthetic(120, 4, (8, 8, 1))
    ids = np.sort(np.random.default_rng(1).choice(120, 50, replace=False))
    loader = build("torch", ds, ids, batch_size=16, train=True, seed=7)
    sampler = kdprune.KeptIdSampler(kdprune.IndexSet(ids), seed=7)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        served = torch.cat([b.ids for b in loader]).tolist()
        assert list(sampler) == served and len(sampler) == 50
        orders.append(served)
    assert orders[0] != orders[1] and sorted(orders[0]) == ids.tolist()
    assert list(kdprune.KeptIdSampler(ids, shuffle=False)) == ids.tolist()


@pytest.mark.parametrize("n, world", [(50, 3), (48, 4), (7, 2)])
def test_sampler_shards_like_distributed_sampler(n, world):
    ids = np.arange(0, 3 * n, 3)
    shards = []
    for rank in range(world):
        s = kdprune.KeptIdSampler(ids, seed=2, distributed=(rank, world))
        s.set_epoch(5)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == -(-n // world)  # equal length on every rank, as DDP needs
    union = [i for shard in shards for i in shard]
    assert set(union) == set(ids.tolist())  # covering
    assert len(union) - len(set(union)) == (-n) % world  # only DistributedSampler's padding repeats
    # with drop_last the shards are disjoint and equal, the remainder dropped
    cut = [list(kdprune.KeptIdSampler(ids, distributed=(r, world), drop_last=True)) for r in range(world)]
    flat = [i for shard in cut for i in shard]
    assert len(flat) == len(set(flat)) == n - n % world and len({len(c) for c in cut}) == 1


def test_sampler_bad_input():
    with pytest.raises(DataError, match="empty"):
        kdprune.KeptIdSampler([])
    with pytest.raises(DataError, match=">= 0"):
        kdprune.KeptIdSampler([-1, 2])
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        kdprune.KeptIdSampler([3, 12], num_samples=10)
    with pytest.raises(ConfigError, match="not initialised"):
        kdprune.KeptIdSampler([1, 2], distributed=True)


# -- fingerprint ----------------------------------------------------------------------------------------
def test_fingerprint_from_length_and_labels():
    fp = kdprune.fingerprint
    assert fp(Pairs()) == fp(Pairs()) == fp(kdprune.with_ids(Pairs()))
    assert fp(Pairs()) != fp(Pairs(N - 1))
    assert fp(_data()) == fp(_data(seed=1))  # labels, not pixels: cheap
    assert fp(_data()) != fp(_data(labels=torch.zeros(N, dtype=torch.long)))
    assert fp(Subset(_data(), [0, 1])) != fp(Subset(_data(), [1, 0]))
    assert fp(Pairs(), "v2") != fp(Pairs())
    from kdprune.data import synthetic
    ds = synthetic(20, 4, (8, 8, 1))
    assert fp(ds) == ds.fingerprint  # kdprune's own fingerprint as it is


# -- write_teacher_logits ---------------------------------------------------------------------------------
def test_teacher_logits_of_any_dataset(tmp_path):
    data, teacher = _data(), _net()
    store = kdprune.write_teacher_logits(teacher, data, tmp_path / "s", dtype="float32", batch_size=20,
                                         progress=False)
    assert isinstance(store, kdprune.TeacherStore) and store.num_samples == N and store.num_classes == C
    with torch.no_grad():
        expected = teacher(data.tensors[0])
    torch.testing.assert_close(store.gather(torch.arange(N)), expected)
    assert store.meta["dataset_fingerprint"] == kdprune.fingerprint(data)
    # a second call returns the published store; another teacher's store is not silently reused
    assert kdprune.write_teacher_logits(teacher, data, tmp_path / "s", dtype="float32", progress=False).path == store.path
    with pytest.raises(StoreError, match="different teacher store"):
        kdprune.write_teacher_logits(_net(seed=1), data, tmp_path / "s", dtype="float32", progress=False)


def test_teacher_logits_views_replay_the_augmentation(tmp_path):
    from kdprune.data import Augment

    data, teacher, aug = _data(), _net(), Augment(seed=3)
    store = kdprune.write_teacher_logits(teacher, data, tmp_path / "v", views=2, augment=aug, dtype="float32",
                                         progress=False)
    ids = torch.tensor([4, 50])
    with torch.no_grad():
        for view in range(2):
            want = teacher(aug.apply(data.tensors[0][ids], view, ids))
            torch.testing.assert_close(store.gather(ids, view=view), want)
    assert not torch.equal(store.gather(ids, view=0), store.gather(ids, view=1))


class _Counting(torch.nn.Module):
    """A teacher that counts the samples it sees and can be made to fail after some batches."""

    def __init__(self, net, fail_after=None):
        super().__init__()
        self.net, self.fail_after, self.seen, self.calls = net, fail_after, 0, 0

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        self.seen += len(x)
        return self.net(x)


def test_teacher_logits_resume_after_an_interruption(tmp_path):
    data, net = _data(), _net()
    crashing = _Counting(net, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        kdprune.write_teacher_logits(crashing, data, tmp_path / "r", batch_size=16, chunk_rows=16,
                                     num_classes=C, dtype="float32", progress=False)
    assert not (tmp_path / "r").exists() and (tmp_path / "r.partial").exists()
    again = _Counting(net)
    store = kdprune.write_teacher_logits(again, data, tmp_path / "r", batch_size=16, chunk_rows=16,
                                         num_classes=C, dtype="float32", progress=False)
    assert again.seen == N - 3 * 16  # only the rows not committed before the interruption
    with torch.no_grad():
        torch.testing.assert_close(store.gather(torch.arange(N)), net(data.tensors[0]))


def test_teacher_logits_refuses_inputs_that_are_not_tensors(tmp_path):
    class Raw(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return [0.0] * 3, 0

    with pytest.raises(DataError, match="ToTensor"):
        kdprune.write_teacher_logits(torch.nn.Linear(3, 2), Raw(), tmp_path / "x", num_classes=2, progress=False)


# -- fit ------------------------------------------------------------------------------------------------
def test_fit_with_a_store_on_a_pruned_subset_in_a_plain_dataloader(tmp_path, capsys):
    data, test = _data(), _data(32, seed=5)
    store = kdprune.write_teacher_logits(_net(), data, tmp_path / "s", progress=False)
    subset = kdprune.prune(None, 0.5, mode="random", labels=data.tensors[1])
    loader = DataLoader(kdprune.with_ids(data), batch_size=16, sampler=kdprune.KeptIdSampler(subset))
    seen = []

    class Ids:
        def on_batch(self, epoch, ids, logits, labels, out):
            seen.append((epoch, ids.tolist()))

    history = kdprune.fit(_net(1), loader, teacher=store, epochs=2, lr=0.05, callbacks=[Ids()],
                          eval_loader=DataLoader(test, batch_size=16))
    assert [e["samples"] for e in history.epochs] == [48, 48]
    for epoch in range(2):
        ids = [i for e, b in seen if e == epoch for i in b]
        assert sorted(ids) == subset.ids.tolist()  # exactly the subset, each once
    assert [i for _, b in seen[:3] for i in b] != [i for _, b in seen[3:] for i in b]  # set_epoch reached the sampler
    out = capsys.readouterr()
    text = out.out + out.err
    assert "alpha" in text and "keep fraction 0.5" in text  # the alpha it picked is said
    assert "epoch 1/2: train loss" in text and "epoch 2/2: train loss" in text and "| test loss" in text
    assert "loss=" in out.err and "acc=" in out.err  # the running figures on the progress bar
    assert 0 <= history.epochs[-1]["test_accuracy"] <= 1


def test_fit_with_an_online_teacher_module():
    data = _data()
    loader = DataLoader(data, batch_size=32, shuffle=True)  # (x, y): a module needs no ids
    history = kdprune.fit(_net(1), loader, teacher=_net(), loss_fn=kdprune.KDLoss(alpha=0.5), epochs=1,
                          progress=False)
    assert history.epochs[0]["samples"] == N


def test_fit_refuses_a_store_of_another_dataset_and_a_loader_without_ids(tmp_path):
    data = _data()
    store = kdprune.write_teacher_logits(_net(), data, tmp_path / "s", progress=False)
    other = _data(labels=torch.zeros(N, dtype=torch.long))
    with pytest.raises(ProvenanceError, match="TensorDataset"):
        kdprune.fit(_net(1), DataLoader(kdprune.with_ids(other), batch_size=16), teacher=store, epochs=1,
                    progress=False)
    with pytest.raises(DataError, match="with_ids"):
        kdprune.fit(_net(1), DataLoader(data, batch_size=16), teacher=store, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="teacher must be"):
        kdprune.fit(_net(1), DataLoader(data, batch_size=16), teacher="logits/", epochs=1, progress=False)


def test_evaluate_takes_a_plain_dataloader():
    net = _net()
    res = kdprune.evaluate(net, DataLoader(_data(), batch_size=40))
    with torch.no_grad():
        acc = (net(_data().tensors[0]).argmax(1) == _data().tensors[1]).float().mean().item()
    assert res["samples"] == N and res["accuracy"] == pytest.approx(acc)


# -- the public surface -----------------------------------------------------------------------------------
def test_dir_lists_the_pipelines_verbs():
    names = set(dir(kdprune))
    assert {"with_ids", "KeptIdSampler", "fingerprint", "write_teacher_logits", "fit", "evaluate", "prune",
            "KDLoss", "TeacherStore", "IndexSet"} <= names


@pytest.mark.parametrize("module", ["kdprune.dropin", "kdprune.logits", "kdprune.train.teacher", "kdprune.models",
                                    "kdprune.train.loop"])
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(mod, mod.__name__) if t.examples and t.name.split(".")[-1] != "Trainer"]
    tests = [t for t in tests if not t.name.endswith(("Trainer.fit",))]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert tests and runner.failures == 0


def _sharded_writer(rank, world, init, path, result):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        data, teacher = _data(), _Counting(_net())
        store = kdprune.write_teacher_logits(teacher, data, path, batch_size=10, num_classes=C, dtype="float32",
                                             progress=False)
        torch.save({"seen": teacher.seen, "logits": store.gather(torch.arange(N))}, f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


def test_teacher_logits_shared_by_ranks(tmp_path):
    """Under a process group each rank computes its share of the batches and every rank gets the store."""
    import torch.multiprocessing as mp

    path, result = str(tmp_path / "s"), str(tmp_path / "r")
    # forked (one thread each), not spawned: no second import of torch in each process
    mp.start_processes(_sharded_writer, args=(2, f"file://{tmp_path / 'init'}", path, result), nprocs=2,
                       start_method="fork")
    got = [torch.load(f"{result}.{r}", weights_only=True) for r in range(2)]
    assert got[0]["seen"] == 50 and got[1]["seen"] == 46  # 10 batches of 10 (the last 6), dealt alternately
    with torch.no_grad():
        want = _net()(_data().tensors[0])
    for g in got:
        torch.testing.assert_close(g["logits"], want)


def test_fit_out_dir_is_never_overwritten_silently(tmp_path):
    """A run's directory holding a checkpoint is continued (resume=True), replaced (overwrite=True)
    or refused, never silently started over."""
    data = TensorDataset(torch.randn(64, 8), torch.arange(64) % 4)
    loader = DataLoader(kdprune.with_ids(data), batch_size=16, sampler=kdprune.KeptIdSampler(range(64)))
    out = tmp_path / "run"
    kdprune.fit(torch.nn.Linear(8, 4), loader, epochs=1, out_dir=str(out), progress=False)
    assert (out / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match="overwrite=True"):
        kdprune.fit(torch.nn.Linear(8, 4), loader, epochs=2, out_dir=str(out), progress=False)
    history = kdprune.fit(torch.nn.Linear(8, 4), loader, epochs=2, out_dir=str(out), progress=False,
                          overwrite=True)
    assert [e["epoch"] for e in history.epochs] == [0, 1]


def test_every_public_name_has_a_runnable_example(tmp_path, monkeypatch):
    """Each public name's docstring carries at least one doctest example, and they all pass."""
    monkeypatch.chdir(tmp_path)
    missing, failed = [], []
    for name in kdprune.__all__:
        if name == "__version__":
            continue
        obj = getattr(kdprune, name)
        tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={"kdprune": kdprune})
        if not any(t.examples for t in tests):
            missing.append(name)
            continue
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        for t in tests:
            runner.run(t)
        if runner.summarize(verbose=False).failed:
            failed.append(name)
    assert not missing, f"public names without a docstring example: {missing}"
    assert not failed, f"public names whose docstring examples fail: {failed}"
