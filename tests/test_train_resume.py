"""Checkpoints: a run killed mid-epoch and resumed ends exactly where an uninterrupted run ends.

Two kills: an exception from a callback in the middle of an accumulation group (in-process, so the
test can compare everything the run produced), and a real SIGKILL of a `kdprune train` process.
The model has BatchNorm, EMA and gradient accumulation on, so every piece of state must round-trip.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kdprune.cli import main as cli
from kdprune.data import synthetic
from kdprune.errors import ConfigError
from kdprune.train import TrainConfig, train_run
from kdprune.train import checkpoint as ckpt

N, C = 64, 4


class Killed(Exception):
    pass


class KillAt:
    """Raises at the ``at``-th micro-batch, as a crash would."""

    def __init__(self, at):
        self.at, self.seen = at, 0

    def on_batch(self, *args):
        self.seen += 1
        if self.seen == self.at:
            raise Killed


def cfg():
    return TrainConfig(model="cnn", width=8, epochs=2, batch_size=32, grad_accum=2, ema=0.9, lr=0.05,
                       checkpoint_every=1, log_every=1, augment=True, schedule="cosine")


def load_weights(path):
    return torch.load(path, weights_only=True)


def test_killed_run_resumes_to_the_same_end(tmp_path):
    train, test = synthetic(N, C, (16, 16, 1), 0), synthetic(32, C, (16, 16, 1), 1)
    ids = np.arange(0, N, 1)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    _, m_full = train_run(cfg(), train, test, ids, out_dir=full, progress=False)
    # 4 micro-batches (2 steps) per epoch: the 7th is the first half of the second step of epoch 2
    with pytest.raises(Killed):
        train_run(cfg(), train, test, ids, out_dir=cut, callbacks=[KillAt(7)], progress=False)
    state = ckpt.load(os.path.join(cut, "checkpoint.pt"))
    assert (state["epoch"], state["step_in_epoch"], state["step"]) == (1, 1, 3)
    _, m_cut = train_run(cfg(), train, test, ids, out_dir=cut, resume=True, progress=False)
    a, b = load_weights(os.path.join(full, "model.pt")), load_weights(os.path.join(cut, "model.pt"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    np.testing.assert_array_equal(np.load(os.path.join(full, "el2n_epochs.npy")),
                                  np.load(os.path.join(cut, "el2n_epochs.npy")))
    strip = lambda hist: [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in hist]  # times differ
    assert strip(m_full["history"]) == strip(m_cut["history"])
    assert m_full["test_accuracy"] == m_cut["test_accuracy"]
    assert m_full["samples_seen"] == m_cut["samples_seen"] == 2 * N
    lines = lambda d: [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]
    assert [r["step"] for r in lines(cut)] == [r["step"] for r in lines(full)]  # no duplicates after the resume


def test_resume_refuses_another_config(tmp_path):
    train, test = synthetic(64, C, (16, 16, 1), 0), synthetic(16, C, (16, 16, 1), 1)
    out = str(tmp_path / "run")
    train_run(cfg(), train, test, out_dir=out, progress=False)
    other = cfg()
    other.lr = 0.1
    with pytest.raises(ConfigError, match="lr: 0.05 -> 0.1"):
        train_run(other, train, test, out_dir=out, resume=True, progress=False)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = str(tmp_path / "c.pt")
    ckpt.save(path, {"a": torch.ones(3), "rng": ckpt.rng_state()})
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary left behind
    assert torch.equal(ckpt.load(path)["a"], torch.ones(3))
    with open(path, "r+b") as f:  # a torn file is refused with a message, not a traceback
        f.truncate(100)
    with pytest.raises(ConfigError, match="not a readable kdprune checkpoint"):
        ckpt.load(path)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = ["train", "--dataset", "synthetic", "--synthetic-samples", "192", "--epochs", "2",
            "--batch-size", "32", "--width", "4", "--checkpoint-every", "1", "--log-every", "1", "--no-progress"]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "kdprune", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill it after its 8th optimizer step (of 12)
        if log.exists() and sum(1 for line in open(log) if '"kind": "step"' in line) >= 8:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = ckpt.load(str(killed / "checkpoint.pt"))
    assert 6 < state["step"] < 12 and state["epoch"] == 1  # killed in the middle of epoch 2
    assert not (killed / "model.pt").exists()
    assert cli(args + ["--out", str(killed), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert cli(args + ["--out", str(whole)]) == 0
    a, b = load_weights(whole / "model.pt"), load_weights(killed / "model.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_fresh_run_in_a_used_directory_starts_clean(tmp_path):
    train, test = synthetic(64, C, (16, 16, 1), 0), synthetic(16, C, (16, 16, 1), 1)
    out = str(tmp_path / "run")
    small = TrainConfig(model="cnn", width=4, epochs=1, batch_size=32, log_every=1)
    train_run(small, train, test, out_dir=out, resume=True, progress=False)  # no checkpoint yet: fresh
    with pytest.raises(ConfigError, match="holds a finished run.*overwrite"):
        train_run(small, train, test, out_dir=out, progress=False)  # nothing is overwritten silently
    train_run(small, train, test, out_dir=out, overwrite=True, progress=False)  # starting over: the old log goes
    steps = [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl"))]
    assert steps == [1, 2, 2]  # two step records and the epoch record, once
