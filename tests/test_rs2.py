"""RS2 (a fresh random subset each epoch, without replacement across epochs) in the sampler, the loader,
the trainer and `kdprune train --rs2`.

Data: 60 synthetic 8x8 images. A fraction of 0.25 draws 15 an epoch (four epochs make one round through
the data); 0.3 draws 18, so the fourth epoch straddles two rounds (60 = 3 * 18 + 6), the case where
without-replacement needs care.
"""
import functools
import json
import os

import numpy as np
import pytest
import torch

from kdprune.cli import main as cli
from kdprune.data import synthetic
from kdprune.errors import ConfigError
from kdprune.loaders import build
from kdprune.loaders.rs2 import RS2Loader, RS2Sampler
from kdprune.train import TrainConfig, train_run
from kdprune.train import checkpoint as ckpt

N, C = 60, 3


def data():
    return synthetic(N, C, (8, 8, 1), 0), synthetic(20, C, (8, 8, 1), 1)


# ---- the sampler ------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.25, 0.3, 0.7])
def test_epochs_draw_without_replacement_until_the_data_is_used_up(fraction):
    rs2 = RS2Sampler(N, fraction, seed=3)
    m = int(round(fraction * N))
    stream = [rs2.ids_for_epoch(e).ids for e in range(12)]
    assert all(len(ids) == m and len(np.unique(ids)) == m for ids in stream)
    # without replacement across epochs: after any number of epochs, no id has been drawn twice more
    # often than another (each round through the data serves every id once)
    for e in range(1, 13):
        counts = np.bincount(np.concatenate(stream[:e]), minlength=N)
        assert counts.max() - counts.min() <= 1, (e, counts)
        if e * m % N == 0:
            assert (counts == e * m // N).all()
    # deterministic by (seed, epoch): a fresh sampler, asked in another order, agrees
    again = RS2Sampler(N, fraction, seed=3)
    for e in reversed(range(12)):
        np.testing.assert_array_equal(again.ids_for_epoch(e).ids, stream[e])
    assert not np.array_equal(RS2Sampler(N, fraction, seed=4).ids_for_epoch(0).ids, stream[0])


def test_bad_fraction_is_refused():
    with pytest.raises(ConfigError, match="fraction"):
        RS2Sampler(N, 0.0)
    with pytest.raises(ConfigError, match="draws none"):
        RS2Sampler(N, 0.001)
    with pytest.raises(ConfigError, match="rs2"):
        TrainConfig(rs2=1.5).validate()


# ---- the loader -------------------------------------------------------------------------------

def served(loader, epoch):
    loader.set_epoch(epoch)
    return np.concatenate([b.ids.numpy() for b in loader])


def test_loader_serves_each_epochs_subset_and_its_length_follows_it():
    train, _ = data()
    rs2 = RS2Sampler(N, 0.3, seed=0)
    loader = RS2Loader(rs2, functools.partial(build, "torch", train, batch_size=4, train=True, seed=0))
    for e in range(5):
        ids = served(loader, e)
        assert sorted(ids) == sorted(rs2.ids_for_epoch(e).ids)
        assert len(loader) == -(-18 // 4)
        np.testing.assert_array_equal(loader.ids, rs2.ids_for_epoch(e).ids)
    np.testing.assert_array_equal(served(loader, 2), served(loader, 2))  # order is a function of the epoch


def test_a_loader_that_can_change_its_subset_is_built_once():
    made, given = [], []

    class Reusable(list):  # a loader with set_ids, as the FFCV one
        def set_epoch(self, epoch):
            pass

        def set_ids(self, ids):
            given.append(ids.ids)
            self[:] = ids.ids

    def make(ids):
        made.append(ids.ids)
        return Reusable(ids.ids)

    rs2 = RS2Sampler(N, 0.25, seed=2)
    loader = RS2Loader(rs2, make)
    for e in range(4):
        loader.set_epoch(e)
        assert sorted(loader) == rs2.ids_for_epoch(e).ids.tolist() and len(loader) == 15
    assert len(made) == 1 and len(given) == 3


def test_ranks_get_disjoint_equal_shards_of_the_epoch():
    train, _ = data()
    rs2 = RS2Sampler(N, 0.25, seed=1)
    world = 3  # 15 ids a epoch: 5 per rank
    for e in range(3):
        shards = [served(RS2Loader(rs2, functools.partial(build, "torch", train, batch_size=2, train=True, seed=0,
                                                          distributed=(r, world))), e) for r in range(world)]
        assert [len(s) for s in shards] == [5, 5, 5]
        union = np.concatenate(shards)
        assert len(np.unique(union)) == 15 and sorted(union) == sorted(rs2.ids_for_epoch(e).ids)


# ---- the trainer ------------------------------------------------------------------------------

class Record:
    """Ids of every micro-batch per epoch; raises at micro-batch ``kill_at`` (a crash)."""

    def __init__(self, kill_at=None):
        self.ids, self.kill_at, self.seen = {}, kill_at, 0

    def on_batch(self, epoch, ids, *args):
        self.seen += 1
        if self.seen == self.kill_at:
            raise KeyboardInterrupt
        self.ids.setdefault(epoch, []).append(ids.clone())


def cfg(**kw):
    return TrainConfig(model="cnn", width=4, epochs=3, batch_size=6, lr=0.05, augment=False, rs2=0.3,
                       checkpoint_every=1, log_every=0, **kw)


def test_training_reads_a_fresh_subset_each_epoch():
    train, test = data()
    rec = Record()
    _, m = train_run(cfg(), train, test, callbacks=[rec], progress=False)
    rs2 = RS2Sampler(N, 0.3, seed=0)
    for e in range(3):
        assert sorted(torch.cat(rec.ids[e]).tolist()) == rs2.ids_for_epoch(e).ids.tolist()
    assert m["samples_seen"] == 3 * 18 and m["steps"] == 3 * 3 and m["kept"] == 18
    assert m["keep_fraction"] == 0.3
    with pytest.raises(ConfigError, match="rs2"):
        train_run(cfg(), train, test, np.arange(30), progress=False)


def test_resumed_mid_epoch_reads_the_same_ids_and_ends_the_same(tmp_path):
    train, test = data()
    full_rec = Record()
    _, m_full = train_run(cfg(), train, test, out_dir=str(tmp_path / "full"), callbacks=[full_rec], progress=False)
    cut = str(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):  # 3 micro-batches an epoch: the 5th is mid-epoch 2
        train_run(cfg(), train, test, out_dir=cut, callbacks=[Record(kill_at=5)], progress=False)
    state = ckpt.load(os.path.join(cut, "checkpoint.pt"))
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    rest = Record()
    _, m_cut = train_run(cfg(), train, test, out_dir=cut, callbacks=[rest], resume=True, progress=False)
    # after the resume: the rest of epoch 2 and all of epoch 3, batch for batch the same ids
    for got, want in zip(rest.ids[1], full_rec.ids[1][1:]):
        assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(rest.ids[2], full_rec.ids[2]))
    a = torch.load(os.path.join(tmp_path / "full", "model.pt"), weights_only=True)
    b = torch.load(os.path.join(cut, "model.pt"), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert m_full["test_accuracy"] == m_cut["test_accuracy"]


def test_cli_rs2_with_a_store_distils_at_the_auto_alpha(tmp_path, capsys):
    from kdprune.loss import alpha_for_fraction

    common = ["--dataset", "synthetic", "--synthetic-samples", str(N)]
    teacher, store, out = (str(tmp_path / d) for d in ("teacher", "logits", "rs2"))
    assert cli(["teacher", *common, "--out", teacher, "--epochs", "1", "--width", "4", "--no-progress"]) == 0
    assert cli(["logits", *common, "--teacher", os.path.join(teacher, "model.pt"), "--out", store,
                "--no-progress"]) == 0
    assert cli(["train", *common, "--store", store, "--rs2", "0.3", "--epochs", "2", "--width", "4",
                "--batch-size", "6", "--out", out, "--no-progress"]) == 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["config"]["rs2"] == 0.3 and m["kept"] == 18 and m["samples_seen"] == 2 * 18
    assert m["config"]["alpha"] == pytest.approx(alpha_for_fraction(0.3, method="rs2"))
    assert m["config"]["alpha"] > 0
    capsys.readouterr()
    assert cli(["train", *common, "--rs2", "0.3", "--out", out + "2", "--subset", str(tmp_path / "none"),
                "--no-progress"]) != 0
    assert "drop --subset" in capsys.readouterr().err


def test_two_gloo_ranks_train_the_same_rs2_run_as_one_process(tmp_path):
    """torchrun with 2 ranks: each epoch's subset is split into disjoint equal shards (the EL2N table,
    reduced over ranks, has a score for exactly the epoch's subset), and the run ends with the weights
    of one process (GroupNorm: per-sample normalisation, so the split batches add up to the whole)."""
    import shutil
    import subprocess
    import sys

    args = ["train", "--dataset", "synthetic", "--synthetic-samples", "96", "--rs2", "0.5", "--epochs", "3",
            "--batch-size", "16", "--width", "4", "--norm", "group", "--log-every", "0", "--no-progress"]
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    launcher = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    res = subprocess.run([*launcher, "--standalone", "--nproc_per_node=2", "-m", "kdprune", *args, "--out", str(ddp)],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert cli(args + ["--out", str(single)]) == 0
    rows = np.load(ddp / "el2n_epochs.npy")
    rs2 = RS2Sampler(96, 0.5, seed=0)
    for e in range(3):
        np.testing.assert_array_equal(np.flatnonzero(~np.isnan(rows[e])), rs2.ids_for_epoch(e).ids)
    a = torch.load(single / "model.pt", weights_only=True)
    b = torch.load(ddp / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    m = json.loads((ddp / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["samples_seen"] == 3 * 48 and m["steps"] == 3 * 3
