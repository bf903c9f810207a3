"""The trainer: configuration checks before any step, mixed precision on the CPU, accumulation,
schedules sized to the pruned epoch, EMA, the EL2N score table, JSONL metrics, teacher modes.

Every run here is a few steps of a width-8 CNN on 16x16 synthetic images: enough to exercise each
code path (and see the loss fall), small enough that the file runs in well under a minute on 2 cores.
"""
import json
import math

import numpy as np
import pytest
import torch

from kdprune.cli import main as cli
from kdprune.data import synthetic
from kdprune.errors import ConfigError, StoreError
from kdprune.loaders import build
from kdprune.loss import KDLoss, kd_loss_ref
from kdprune.models import build_model
from kdprune.train import TrainConfig, Trainer, fit, train_run
from kdprune.train.ema import ModelEMA
from kdprune.train.optim import make_scheduler

N, C, SHAPE = 128, 4, (16, 16, 1)


@pytest.fixture(scope="module")
def data():
    return synthetic(N, C, SHAPE, seed=0), synthetic(48, C, SHAPE, seed=1)


def small(**kw):
    base = dict(model="cnn", width=8, epochs=2, batch_size=32, lr=0.05, augment=False, log_every=0)
    return TrainConfig(**{**base, **kw})


class Recorder:
    """A callback that keeps what fit() hands it."""

    def __init__(self):
        self.batches, self.epochs = [], []

    def on_batch(self, epoch, ids, logits, labels, out):
        self.batches.append((epoch, ids.clone(), logits.clone(), labels.clone(), out))

    def on_epoch_end(self, epoch):
        self.epochs.append(epoch)


def make_store(path, num_samples, num_classes, fingerprint, seed=0):
    from kdprune.store import TeacherStore
    g = torch.Generator().manual_seed(seed)
    with TeacherStore.create(path, num_samples, num_classes, dataset_fingerprint=fingerprint) as w:
        w.write(np.arange(num_samples), torch.randn(num_samples, num_classes, generator=g))
    return TeacherStore.open(path)


# ---------------------------------------------------------------------------- bad configuration
@pytest.mark.parametrize("change, message", [
    (dict(model="vgg99"), "unknown model"),
    (dict(alpha=1.5), "alpha must lie in [0, 1]"),
    (dict(alpha=-0.1), "alpha must lie in [0, 1]"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-2.0), "temperature must be > 0"),
    (dict(amp="fp8"), "amp must be one of"),
    (dict(batch_size=30, grad_accum=4), "divisible"),
])
def test_bad_config_fails_before_training(data, change, message):
    rec = Recorder()
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        train_run(small(**change), *data, callbacks=[rec], progress=False)
    assert rec.batches == []


def test_store_that_does_not_match_the_dataset_fails_before_training(data, tmp_path):
    train, test = data
    rec = Recorder()
    other = make_store(str(tmp_path / "other"), N, C, fingerprint="0123456789abcdef")
    with pytest.raises(StoreError, match="made from .*used with"):
        train_run(small(alpha=0.5), train, test, store=other, callbacks=[rec], progress=False)
    short = make_store(str(tmp_path / "short"), N - 8, C, fingerprint=None)
    with pytest.raises(StoreError, match=f"holds {N - 8} samples"):
        train_run(small(alpha=0.5), train, test, store=short, callbacks=[rec], progress=False)
    classes = make_store(str(tmp_path / "classes"), N, C + 1, fingerprint=train.fingerprint)
    with pytest.raises(StoreError, match=f"{C + 1} classes"):
        train_run(small(alpha=0.5), train, test, store=classes, callbacks=[rec], progress=False)
    with pytest.raises(ConfigError, match="teacher store"):
        train_run(small(alpha=0.5), train, test, callbacks=[rec], progress=False)
    assert rec.batches == []


def test_cli_reports_bad_options_with_exit_code_2(tmp_path, capsys):
    code = cli(["train", "--dataset", "synthetic", "--synthetic-samples", "64", "--alpha", "2",
                "--out", str(tmp_path / "run")])
    assert code == 2
    assert "alpha must lie in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_file_rejects_duplicate_and_unknown_keys(tmp_path):
    dup = tmp_path / "dup.json"
    dup.write_text('{"lr": 0.1, "lr": 0.2}')
    with pytest.raises(ConfigError, match="duplicate"):
        TrainConfig.load(str(dup))
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"learning_rate": 0.1}')
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.load(str(unknown))


# ---------------------------------------------------------------------------- the step
@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_on_cpu_trains(data, amp, dtype):
    """bf16, and fp16 with its GradScaler, on the CPU."""
    train, test = data
    rec = Recorder()
    model, m = train_run(small(amp=amp), train, test, callbacks=[rec], progress=False)
    assert rec.batches[0][2].dtype == dtype  # the forward really ran under autocast
    losses = [r["train_loss"] for r in m["history"]]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_grad_accumulation_matches_one_big_batch(data):
    """Two micro-batches of 16 accumulated = one batch of 32 (no BatchNorm: its statistics are
    per micro-batch, so a BN model would differ by design)."""
    train, _ = data

    def run(accum):
        torch.manual_seed(0)
        model = build_model("cnn", C, 1, width=8, norm="none")
        cfg = small(grad_accum=accum, norm="none")
        loader = build("torch", train, np.arange(N), batch_size=cfg.per_rank_batch(1), train=True, seed=0)
        Trainer(model, loader, KDLoss(alpha=0.0, temperature=1.0), cfg, progress=False).fit()
        return model.state_dict()

    one, two = run(1), run(2)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)


def test_schedule_spans_the_pruned_run(data):
    """Steps per epoch follow the pruned loader: at f = 0.25 the run still warms up and decays fully."""
    train, _ = data
    ids = np.arange(0, N, 4)  # f = 0.25: 32 samples, 2 steps of 16
    cfg = small(batch_size=16, epochs=3, schedule="cosine", warmup=0.34)
    model = build_model("cnn", C, 1, width=8)
    loader = build("torch", train, ids, batch_size=16, train=True, seed=0)
    trainer = Trainer(model, loader, KDLoss(alpha=0.0, temperature=1.0), cfg, progress=False)
    assert trainer.steps_per_epoch == 2
    lrs = []
    trainer.callbacks.append(type("LR", (), {"on_batch": lambda s, *a: lrs.append(trainer.sched.get_last_lr()[0])})())
    trainer.fit()
    assert trainer.step == 6
    # (recorded after each step) warm-up took 2 of the 6 steps, and the cosine reached 0 exactly at
    # the end of the pruned run; sized for the full data (24 steps) it would still be near its peak
    assert lrs[0] == pytest.approx(cfg.lr)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["onecycle", "cosine", "step", "constant"])
def test_schedules_shape(kind):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make_scheduler(opt, kind, 100, 1.0, warmup=0.1, milestones=[0.5, 0.75], gamma=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(1.0, rel=1e-3)
    assert lrs[0] < 0.2  # every schedule warms up
    if kind == "step":
        assert lrs[60] == pytest.approx(0.1) and lrs[90] == pytest.approx(0.01)
    if kind in ("onecycle", "cosine"):
        assert lrs[-1] < 1e-2


def test_ema_update_formula():
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, 0.9)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * (before[k] + 1.0))


def test_ema_model_is_returned_and_evaluated(data, tmp_path):
    train, test = data
    model, m = train_run(small(ema=0.5), train, test, out_dir=str(tmp_path), progress=False)
    spec = json.loads((tmp_path / "model.pt.json").read_text())
    assert spec["ema"] is True
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v)


# ---------------------------------------------------------------------------- outputs
def test_score_table_holds_each_steps_el2n(data, tmp_path):
    train, test = data
    ids = np.arange(0, N, 2)
    rec = Recorder()
    _, m = train_run(small(), train, test, ids, out_dir=str(tmp_path), callbacks=[rec], progress=False)
    table = np.load(tmp_path / "el2n_epochs.npy")
    assert table.shape == (2, N)
    outside = np.setdiff1d(np.arange(N), ids)
    assert np.isnan(table[:, outside]).all() and np.isfinite(table[:, ids]).all()
    for epoch in range(2):  # each row is the el2n the loss returned at that epoch's steps
        expect = np.full(N, np.nan, dtype=np.float32)
        for e, b_ids, logits, labels, out in rec.batches:
            if e == epoch:
                expect[b_ids.numpy()] = out.el2n.numpy()
        np.testing.assert_allclose(table[epoch], expect, rtol=1e-3)  # rows are float16
    score = np.load(tmp_path / "el2n.npy")
    np.testing.assert_allclose(score[ids], table[:, ids].astype(np.float32).mean(0), rtol=1e-3)
    assert json.loads((tmp_path / "el2n.json").read_text())["dataset_fingerprint"] == train.fingerprint


def test_metrics_jsonl_and_json(data, tmp_path):
    train, test = data
    _, m = train_run(small(log_every=2, eval_every=1), train, test, out_dir=str(tmp_path), progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all("test_accuracy" in r for r in epochs)  # eval_every=1
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_accuracy", "samples_seen", "wall_time_s", "keep_fraction", "kept", "config", "history"):
        assert key in saved
    assert saved["samples_seen"] == 2 * N and saved["steps"] == 8


def test_fit_keeps_the_callback_protocol(data):
    train, _ = data
    rec = Recorder()
    model = build_model("cnn", C, 1, width=8)
    loader = build("torch", train, np.arange(N), batch_size=32, train=True, seed=0)
    hist = fit(model, loader, epochs=2, lr=0.05, loss_fn=KDLoss(alpha=0.0, temperature=1.0), callbacks=[rec],
               progress=False)
    assert rec.epochs == [0, 1] and len(rec.batches) == 8
    seen = torch.cat([b[1] for b in rec.batches if b[0] == 0]).sort().values
    assert torch.equal(seen, torch.arange(N))
    e, ids, logits, labels, out = rec.batches[0]
    assert logits.shape == (32, C) and not logits.requires_grad
    ref = kd_loss_ref(logits, logits, labels, alpha=0.0, temperature=1.0)
    torch.testing.assert_close(out.el2n, ref.el2n, rtol=1e-4, atol=1e-5)
    assert hist.samples_seen == 2 * N


def test_training_on_the_ffcv_loader_matches_the_torch_loader_step_for_step(data, tmp_path):
    """The same ids in the same order and the same pixels from FFCV (two decode threads, and the
    training loop's own thread decoding whenever it would wait) as from the torch DataLoader: the
    same logits, step for step, and the same weights at the end, exactly (both yield contiguous
    NCHW batches, so the same kernels run on the same numbers)."""
    from kdprune.loaders.ffcv_backend import write_beton
    train, _ = data
    beton = str(tmp_path / "train.beton")
    write_beton(train, beton, workers=1)
    ids = np.random.default_rng(4).choice(N, 100, replace=False)
    runs = {}
    for backend, extra in (("torch", {}), ("ffcv", {"path": beton, "workers": 2})):
        torch.manual_seed(0)
        model = build_model("cnn", C, 1, width=8)
        loader = build(backend, train, ids, batch_size=16, train=True, seed=3, **extra)
        rec = Recorder()
        fit(model, loader, epochs=2, lr=0.05, loss_fn=KDLoss(alpha=0.0, temperature=1.0), callbacks=[rec],
            progress=False)
        runs[backend] = rec, model
    (a, model_a), (b, model_b) = runs["torch"], runs["ffcv"]
    assert len(a.batches) == len(b.batches) == 2 * 7
    for (_, ids_a, logits_a, *_), (_, ids_b, logits_b, *_) in zip(a.batches, b.batches):
        assert torch.equal(ids_a, ids_b)
        torch.testing.assert_close(logits_b, logits_a, atol=0, rtol=0)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pb, pa, atol=0, rtol=0)


# ---------------------------------------------------------------------------- teachers
def test_stored_teacher_distils(data, tmp_path):
    train, test = data
    store = make_store(str(tmp_path / "store"), N, C, train.fingerprint)
    rec = Recorder()
    _, m = train_run(small(alpha=1.0, temperature=2.0), train, test, store=store, callbacks=[rec], progress=False)
    for e, ids, logits, labels, out in rec.batches:  # every step got its own batch's logits (prefetched)
        ref = kd_loss_ref(logits, store.gather(ids).float(), labels, alpha=1.0, temperature=2.0)
        torch.testing.assert_close(out.kl, ref.kl, rtol=1e-4, atol=1e-5)
    assert m["config"]["alpha"] == 1.0


def test_online_teacher(data):
    train, test = data
    torch.manual_seed(3)
    teacher = build_model("cnn", C, 1, width=4)
    rec = Recorder()
    train_run(small(alpha=0.5, teacher="online", epochs=1), train, test, teacher_model=teacher,
              callbacks=[rec], progress=False)
    e, ids, logits, labels, out = rec.batches[0]
    with torch.no_grad():
        t = teacher.eval()(torch.from_numpy(train.images[ids.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    ref = kd_loss_ref(logits, t, labels, alpha=0.5, temperature=4.0)
    torch.testing.assert_close(out.kl, ref.kl, rtol=1e-4, atol=1e-5)
    wrong = build_model("cnn", C + 2, 1, width=4)
    with pytest.raises(ConfigError, match="outputs 6 classes"):
        train_run(small(alpha=0.5, teacher="online"), train, test, teacher_model=wrong, progress=False)


def test_compile_path_runs(data):
    """torch.compile wiring (aot_eager: the graph capture without inductor's C++ build, to stay fast)."""
    train, test = data
    torch._dynamo.reset()
    _, m = train_run(small(compile="aot_eager", epochs=1, norm="none"), train, test, progress=False)
    assert math.isfinite(m["history"][0]["train_loss"])


def test_timing_split(data):
    train, test = data
    _, m = train_run(small(epochs=1), train, test, progress=False, timing=True)
    t = m["timing"]
    assert t["steps"] == 4
    parts = sum(t[f"{p}_ms"] for p in ("data", "teacher", "forward", "loss", "backward_step"))
    assert t["step_ms"] == pytest.approx(parts) and t["forward_ms"] > 0


def test_teacher_command_trains_on_everything(tmp_path):
    out = tmp_path / "teacher"
    assert cli(["teacher", "--dataset", "synthetic", "--synthetic-samples", "96", "--epochs", "1",
                "--width", "8", "--batch-size", "32", "--no-progress", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["kept"] == 96 and m["config"]["alpha"] == 0.0
    from kdprune.models import load_model
    assert load_model(str(out / "model.pt"))(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(SystemExit):  # the teacher has no --alpha: it is cross-entropy only
        cli(["teacher", "--alpha", "0.5", "--out", str(out)])


def test_divergence_stops_the_run_with_a_message(data):
    train, test = data
    with pytest.raises(ConfigError, match="training diverged"):
        train_run(small(lr=1e12, epochs=1, norm="none", schedule="constant", warmup=0.0), train, test,
                  progress=False)


def test_store_views_replay_the_crops_an_online_teacher_sees(data, tmp_path):
    """A store of 2 augmented views, replayed by the loader (view = epoch % 2), gives the same
    distillation targets as running the teacher online on the student's own crops."""
    from kdprune.logits import write_teacher_logits
    train, test = data
    torch.manual_seed(5)
    teacher = build_model("cnn", C, 1, width=4).eval()
    store = write_teacher_logits(teacher, train, str(tmp_path / "views"), views=2, dtype="float32",
                                 progress=False)
    stored, online = Recorder(), Recorder()
    cfg = dict(alpha=1.0, temperature=2.0, augment=True, norm="none")
    train_run(small(**cfg), train, test, store=store, callbacks=[stored], progress=False)
    train_run(small(teacher="online", **cfg), train, test, teacher_model=teacher, callbacks=[online],
              progress=False)
    assert len(stored.batches) == len(online.batches) == 8
    for a, b in zip(stored.batches, online.batches):
        assert torch.equal(a[1], b[1])  # same ids in the same order
        torch.testing.assert_close(a[4].kl, b[4].kl, rtol=1e-4, atol=1e-6)
