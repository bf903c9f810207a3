"""Safe by default, as a user meets it: no run reads damaged or foreign teacher logits, trains without
the distillation it was given, or on views the teacher never saw; no re-run or Ctrl-C loses work.

The CLI runs in subprocesses (exit code, the message, what is on disk after) on tiny synthetic data;
the Python API is checked alongside. Data sizes are the smallest that still give each case its shape
(e.g. 16-row checksum chunks so a flipped byte damages one chunk of several).
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kdprune.errors import ConfigError, Interrupted, ProvenanceError, StoreError

ROOT = pathlib.Path(__file__).resolve().parents[1]
N = 96  # training samples of the tiny synthetic dataset
DATA = ["--dataset", "synthetic", "--synthetic-samples", str(N)]
QUICK = ["--epochs", "1", "--width", "4", "--batch-size", "32", "--no-progress"]


def kdprune(*args, timeout=120):
    """Run the ``kdprune`` command in a fresh process; (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")  # tiny models: one thread is fastest
    p = subprocess.run([sys.executable, "-m", "kdprune", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=env)
    return p.returncode, p.stdout, p.stderr


def dataset(n=N):
    from kdprune.data import load_dataset
    return load_dataset("synthetic", "train", num_samples=n), load_dataset("synthetic", "test", num_samples=n)


def make_store(path, ds, *, chunk_rows=16, augment=None, views=1):
    from kdprune.store import TeacherStore

    g = torch.Generator().manual_seed(0)
    with TeacherStore.create(path, len(ds), ds.num_classes, views=views, chunk_rows=chunk_rows, augment=augment,
                             dataset_fingerprint=ds.fingerprint, dataset_name=ds.name) as w:
        for v in range(views):
            w.write(np.arange(len(ds)), torch.randn(len(ds), ds.num_classes, generator=g), view=v)
    return TeacherStore.open(path)


def flip_byte(store_dir, sample: int, num_classes: int = 10) -> None:
    path = os.path.join(store_dir, "values.bin")
    with open(path, "r+b") as f:
        f.seek(sample * num_classes * 2 + 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))


def cfg(**kw):
    from kdprune.train.config import TrainConfig
    return TrainConfig(**{"epochs": 1, "width": 4, "batch_size": 32, "augment": None, **kw})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A teacher trained by `kdprune teacher` on the tiny dataset: OUT/model.pt (+ .json)."""
    out = tmp_path_factory.mktemp("teacher") / "t"
    rc, stdout, err = kdprune("teacher", *DATA, *QUICK, "--out", out)
    assert rc == 0, err
    return out


# -- integrity on use -------------------------------------------------------------------------------
def test_a_flipped_byte_stops_gather_and_scores_naming_the_samples(tmp_path):
    from kdprune.scores.teacher import teacher_scores

    ds, _ = dataset()
    make_store(tmp_path / "s", ds)
    flip_byte(tmp_path / "s", 50)
    from kdprune.store import TeacherStore
    store = TeacherStore.open(tmp_path / "s")  # a pathlib.Path works
    assert store.gather(torch.arange(0, 40)).shape == (40, 10)  # intact chunks read fine
    with pytest.raises(StoreError, match=r"samples \[48, 64\).*kdprune logits"):
        store.gather([50])
    with pytest.raises(StoreError, match=r"samples \[48, 64\)"):
        teacher_scores(TeacherStore.open(tmp_path / "s"), ds.labels)
    with pytest.raises(StoreError, match="corrupted"):
        TeacherStore.open(tmp_path / "s").prefault()  # what training does first


def test_a_damaged_store_stops_train_and_score_on_the_cli(tmp_path):
    ds, _ = dataset()
    make_store(tmp_path / "s", ds)
    flip_byte(tmp_path / "s", 5)
    rc, _, err = kdprune("train", *DATA, *QUICK, "--store", tmp_path / "s", "--out", tmp_path / "run")
    assert rc == 2 and "corrupted" in err and "samples [0, 16)" in err and "Traceback" not in err
    assert f"kdprune logits --teacher TEACHER/model.pt --dataset synthetic --synthetic-samples {N}" in err  # the fix
    assert not (tmp_path / "run" / "model.pt").exists()
    rc, _, err = kdprune("score", *DATA, "--method", "teacher-el2n", "--store", tmp_path / "s",
                         "--out", tmp_path / "sc", "--no-progress")
    assert rc == 2 and "corrupted" in err and not (tmp_path / "sc.npy").exists()


def test_the_check_is_once_per_process_and_travels_with_the_store(tmp_path):
    import pickle

    ds, _ = dataset()
    store = make_store(tmp_path / "s", ds)
    store.gather(torch.arange(N))
    clone = pickle.loads(pickle.dumps(store))  # what a DataLoader worker receives
    flip_byte(tmp_path / "s", 70)  # same file, same size: a rewrite in place bumps its mtime
    os.utime(tmp_path / "s" / "values.bin", ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(StoreError, match=r"samples \[64, 80\)"):
        clone.gather([70])  # another file identity than the one checked: checked again


# -- provenance -----------------------------------------------------------------------------------
def test_logits_for_a_teacher_of_another_dataset_is_refused(teacher, tmp_path):
    rc, _, err = kdprune("logits", "--dataset", "synthetic", "--synthetic-samples", "120", "--teacher",
                         teacher / "model.pt", "--out", tmp_path / "s", "--no-progress")
    assert rc == 2
    assert f"synthetic-{N}x10" in err and "synthetic-120x10" in err  # both datasets by name
    assert f"--dataset synthetic --synthetic-samples {N}" in err  # and the flags of the teacher's one
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


def test_store_subset_and_online_teacher_of_another_dataset_stop_the_run(teacher, tmp_path):
    from kdprune.selection import prune
    from kdprune.train import train_run

    ds, test = dataset()
    other, _ = dataset(120)
    store = make_store(tmp_path / "s", other)
    with pytest.raises(ProvenanceError, match=r"synthetic-120x10.*synthetic-96x10"):
        train_run(cfg(), ds, test, store=store, progress=False)
    subset = prune(None, 0.5, labels=other.labels[:N], dataset_fingerprint=other.fingerprint)
    subset.meta["dataset"] = other.name
    with pytest.raises(ProvenanceError, match="the subset .*synthetic-120x10.*kdprune prune"):
        train_run(cfg(), ds, test, subset, progress=False)
    with pytest.raises(ProvenanceError, match="the teacher model"):
        train_run(cfg(teacher="online"), other, dataset(120)[1], teacher_model=str(teacher / "model.pt"),
                  progress=False)


def test_prune_keeps_the_hardest_by_default_and_records_the_scores():
    from kdprune.scores.io import ScoreFile
    from kdprune.selection import prune

    scores = ScoreFile(np.arange(10, dtype=np.float32), {"method": "el2n", "dataset_fingerprint": "fp1",
                                                         "dataset": "mine"})
    kept = prune(scores, 0.3)
    assert kept.ids.tolist() == [7, 8, 9]
    assert kept.meta["scores_method"] == "el2n" and kept.meta["scores_fingerprint"] == "fp1"
    assert kept.meta["dataset_fingerprint"] == "fp1" and kept.meta["mode"] == "hardest"
    assert prune(scores, 0.3, mode="EASIEST").ids.tolist() == [0, 1, 2]  # names are case-insensitive
    with pytest.raises(ProvenanceError, match="mine"):
        prune(scores, 0.3, dataset_fingerprint="fp2")


# -- intent ---------------------------------------------------------------------------------------
def test_a_store_without_alpha_distils_with_auto_alpha(tmp_path):
    from kdprune import alpha_for_fraction
    from kdprune.selection import prune
    from kdprune.train import train_run

    ds, test = dataset()
    store = make_store(tmp_path / "s", ds)
    subset = prune(None, 0.5, labels=ds.labels, dataset_fingerprint=ds.fingerprint)
    _, m = train_run(cfg(), ds, test, subset, store=store, progress=False)
    assert m["config"]["alpha"] == pytest.approx(alpha_for_fraction(0.5)) and m["config"]["alpha"] > 0
    _, m = train_run(cfg(), ds, test, subset, progress=False)  # no teacher: cross-entropy
    assert m["config"]["alpha"] == 0
    with pytest.raises(ConfigError, match="has none"):
        train_run(cfg(alpha=0.5), ds, test, subset, progress=False)


def test_the_cli_summary_says_which_alpha_it_used(tmp_path):
    ds, _ = dataset()
    make_store(tmp_path / "s", ds)
    rc, out, err = kdprune("train", *DATA, *QUICK, "--store", tmp_path / "s", "--out", tmp_path / "r")
    assert rc == 0, err
    assert "alpha 0." in out and "(auto at keep fraction 1, the random rule)" in out


def test_auto_alpha_follows_the_subsets_pruning_method(tmp_path):
    """A subset pruned by a score trains with the hard-sample rule (more KD at small f), a random one
    with the random-pruning rule."""
    import numpy as np

    from kdprune import alpha_for_fraction
    from kdprune.selection import prune
    from kdprune.train import train_run

    ds, test = dataset()
    store = make_store(tmp_path / "s", ds)
    scores = np.random.default_rng(0).random(len(ds)).astype(np.float32)
    hard = prune(scores, 0.3, dataset_fingerprint=ds.fingerprint)  # the hardest 30% by a score
    _, m = train_run(cfg(), ds, test, hard, store=store, progress=False)
    assert m["alpha_family"] == "hard"
    assert m["config"]["alpha"] == pytest.approx(alpha_for_fraction(m["keep_fraction"], "el2n"))
    randomly = prune(None, 0.3, labels=ds.labels, dataset_fingerprint=ds.fingerprint)
    _, m = train_run(cfg(), ds, test, randomly, store=store, progress=False)
    assert m["alpha_family"] == "random"
    assert m["config"]["alpha"] == pytest.approx(alpha_for_fraction(m["keep_fraction"], "random"))
    assert alpha_for_fraction(0.3, "el2n") != alpha_for_fraction(0.3, "random")


# -- views ----------------------------------------------------------------------------------------
def test_training_replays_the_stores_views_and_refuses_others(tmp_path):
    from kdprune.data import Augment
    from kdprune.train import train_run

    ds, test = dataset()
    plain = make_store(tmp_path / "plain", ds)
    with pytest.raises(ConfigError, match=r"unaugmented.*kdprune logits --teacher .* --views 4 --augment"):
        train_run(cfg(augment=True), ds, test, store=plain, progress=False)
    train_run(cfg(), ds, test, store=plain, progress=False)  # default: the store's (clean) images
    views = make_store(tmp_path / "views", ds, augment=Augment(seed=3), views=2)
    with pytest.raises(ConfigError, match="turns augmentation off"):
        train_run(cfg(augment=False), ds, test, store=views, progress=False)
    from kdprune.train.run import replay_views
    aug, n = replay_views(cfg(), views)
    assert aug == Augment(seed=3) and n == 2  # exactly the teacher's views, not a fresh augmentation


# -- nothing lost ---------------------------------------------------------------------------------
def test_a_finished_run_is_not_redone_and_a_partial_one_is_not_restarted(teacher, tmp_path):
    stamp = os.path.getmtime(teacher / "model.pt")
    rc, out, err = kdprune("teacher", *DATA, *QUICK, "--out", teacher)
    assert rc == 0 and "holds a finished run" in out and "--overwrite" in out
    assert os.path.getmtime(teacher / "model.pt") == stamp
    # an unfinished run: a checkpoint and no metrics.json
    partial = tmp_path / "p"
    partial.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl"):
        (partial / name).write_bytes((teacher / name).read_bytes())
    rc, out, err = kdprune("teacher", *DATA, *QUICK, "--out", partial)
    assert rc == 2 and "--resume" in err and "--overwrite" in err
    assert (partial / "checkpoint.pt").read_bytes() == (teacher / "checkpoint.pt").read_bytes()


def test_ctrl_c_saves_says_how_to_resume_and_the_resumed_run_adds_up(tmp_path):
    out = tmp_path / "t"
    # 75 steps per epoch: Ctrl-C after the third lands in epoch 1 however fast the machine is
    args = ["teacher", "--dataset", "synthetic", "--synthetic-samples", "600", "--epochs", "2", "--width", "4",
            "--batch-size", "8", "--log-every", "1", "--no-progress", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "kdprune", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT, env=env)
    log = out / "metrics.jsonl"
    deadline = time.time() + 90
    while not (log.exists() and log.read_text().count("\n") >= 3) and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)  # in epoch 1, long before its end
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr
    assert "checkpoint saved at epoch 1/2" in lines[0]
    assert lines[0].endswith("resume with: kdprune " + " ".join(args) + " --resume")
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    before = torch.load(out / "checkpoint.pt", weights_only=True)["elapsed"]
    assert before > 0  # the time trained in the interrupted epoch is kept
    rc, stdout, err = kdprune(*args, "--resume")
    assert rc == 0, err
    assert "resuming" in stdout and "from epoch 1/2 step" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 2 * 75 and m["samples_seen"] == 2 * 600  # every step, once
    assert m["wall_time_s"] > before  # both parts of the run add up


def test_checkpoints_by_time_and_interrupt_in_python(tmp_path):
    from kdprune.train import checkpoint as ckpt
    from kdprune.train import train_run

    ds, test = dataset(200)

    class Stop:
        def on_batch(self, epoch, ids, logits, labels, out):
            self.n = getattr(self, "n", 0) + 1
            if self.n == 6:
                raise KeyboardInterrupt  # as a second Ctrl-C would, mid-step

    with pytest.raises(Interrupted, match="the last checkpoint .*epoch 1/1 step"):
        train_run(cfg(batch_size=16, checkpoint_minutes=1e-6), ds, test, out_dir=str(tmp_path / "r"),
                  callbacks=[Stop()], progress=False)
    state = ckpt.load(str(tmp_path / "r" / "checkpoint.pt"))
    assert state["epoch"] == 0 and state["step_in_epoch"] >= 4  # saved by time, inside epoch 1


def test_pipeline_time_survives_a_second_run(tmp_path):
    from kdprune.pipeline import StepTimes

    times = StepTimes(str(tmp_path))
    times.run("teacher", False, lambda: time.sleep(0.2))
    again = StepTimes(str(tmp_path))
    again.run("teacher", True, lambda: pytest.fail("a step already done ran again"))
    assert again.total >= 0.2 and again.reused == ["teacher"]


def test_an_interrupted_store_writer_keeps_its_rows_and_says_so(tmp_path):
    from kdprune.store import TeacherStore

    with pytest.raises(KeyboardInterrupt) as err:
        with TeacherStore.create(tmp_path / "s", 20000, 10) as w:  # 10 classes: 8192-row chunks
            w.write(np.arange(9000), torch.zeros(9000, 10))
            raise KeyboardInterrupt
    assert "8192 of 20000 teacher-logit rows are saved" in err.value.saved
    w = TeacherStore.create(tmp_path / "s", 20000, 10)
    assert w.resumed and w.missing(0)[0] == 8192
    w.abort()


# -- small things ---------------------------------------------------------------------------------
def test_interrupted_logits_name_the_cli_command_that_resumes():
    from argparse import Namespace

    from kdprune.cli import interrupted_line

    argv = ["logits", "--teacher", "t/model.pt", "--out", "s"]
    line = interrupted_line(Namespace(command="logits"), argv, "8192 of 20000 teacher-logit rows are saved in s.partial")
    assert line == ("kdprune logits: interrupted; 8192 of 20000 teacher-logit rows are saved in s.partial; "
                    "resume with: kdprune logits --teacher t/model.pt --out s")


def test_paths_version_and_help(tmp_path):
    from kdprune.cli import build_parser
    from kdprune.selection import IndexSet

    IndexSet([3, 1], {"num_samples": 5}).save(tmp_path / "k")
    assert IndexSet.load(tmp_path / "k").ids.tolist() == [1, 3]
    rc, out, _ = kdprune("--version")
    assert rc == 0 and out.startswith("kdprune 0.")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("data", "teacher", "prune", "train", "info", "pipeline"):
        for action in sub.choices[name]._actions:
            assert action.help, f"kdprune {name} {action.option_strings} has no help text"
    args = parser.parse_args(["train", "--out", "x", "--optimizer", "AdamW", "--dataset", "Synthetic"])
    assert args.optimizer == "adamw" and args.dataset == "synthetic"  # names are case-insensitive


def test_prune_with_scores_of_another_dataset_names_both(tmp_path):
    from kdprune.scores import save_scores

    other, _ = dataset(120)
    save_scores(str(tmp_path / "sc"), np.zeros(120, np.float32),
                {"method": "el2n", "dataset": other.name, "dataset_fingerprint": other.fingerprint})
    rc, _, err = kdprune("prune", *DATA, "--scores", tmp_path / "sc", "--fraction", "0.5", "--out", tmp_path / "k")
    assert rc == 2 and "synthetic-120x10" in err and f"synthetic-{N}x10" in err and "kdprune score" in err
    assert not (tmp_path / "k.npy").exists()


def test_a_store_of_resized_images_is_not_replayed_on_the_images_at_their_own_size(tmp_path):
    from kdprune.store import TeacherStore
    from kdprune.train import train_run

    ds, test = dataset()
    with TeacherStore.create(tmp_path / "s", N, 10, dataset_fingerprint=ds.fingerprint, input_size=32) as w:
        w.write(np.arange(N), torch.zeros(N, 10))
    assert TeacherStore.open(tmp_path / "s").meta["input_size"] == [32, 32]
    with pytest.raises(ConfigError, match=r"resized to \(32, 32\).*own size \(28, 28\)"):
        train_run(cfg(), ds, test, store=TeacherStore.open(tmp_path / "s"), progress=False)


def test_a_resume_on_another_subset_is_refused(tmp_path):
    from kdprune.train import train_run

    ds, test = dataset()

    class Stop:
        n = 0

        def on_batch(self, *args):
            self.n += 1
            if self.n == 2:
                raise KeyboardInterrupt

    first, other = np.arange(0, 64), np.arange(32, 96)  # the same size: only their fingerprints differ
    with pytest.raises(Interrupted):
        train_run(cfg(checkpoint_minutes=1e-6), ds, test, first, out_dir=str(tmp_path / "r"), callbacks=[Stop()],
                  progress=False)
    with pytest.raises(ConfigError, match=r"other inputs \(subset \(--subset\): 64 ids"):
        train_run(cfg(), ds, test, other, out_dir=str(tmp_path / "r"), resume=True, progress=False)
    train_run(cfg(), ds, test, first, out_dir=str(tmp_path / "r"), resume=True, progress=False)  # the same: fine


def test_logits_rerun_on_a_finished_store_says_so_and_changes_nothing(teacher, tmp_path):
    args = ["logits", *DATA, "--teacher", f"{teacher}/model.pt", "--out", tmp_path / "s", "--no-progress"]
    rc, _, err = kdprune(*args)
    assert rc == 0, err
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").iterdir()}
    rc, out, err = kdprune(*args)
    assert rc == 0, err
    assert "already complete" in out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").iterdir()} == before
