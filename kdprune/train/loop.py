"""The training loop: (model, loader, teacher, KDLoss) steps with mixed precision, gradient accumulation,
EMA, DDP, resumable checkpoints and JSONL metrics; plus evaluation.

Callbacks see every step's detached outputs, so scores (EL2N, forgetting, AUM) are collected while
training, without a second forward pass. A callback may define ``on_batch(epoch, ids, logits, labels,
out)`` (called once per micro-batch, ``out`` the loss's KDOutput) and ``on_epoch_end(epoch)``.

Nothing in a step reads a value back to the host: the running loss/accuracy sums and the EL2N table
live on the device and are reduced once per epoch (and at the ``log_every`` step records).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from kdprune.atomic import atomic_open
from kdprune.errors import ConfigError, Interrupted
from kdprune.train import checkpoint as ckpt
from kdprune.train import distributed as dist
from kdprune.train.config import TrainConfig
from kdprune.train.ema import ModelEMA
from kdprune.train.optim import make_optimizer, make_scheduler, one_cycle  # noqa: F401 (re-exported)
from kdprune.train.scoretable import ScoreTable
from kdprune.train.timing import StepTimer

METRICS_FILE = "metrics.jsonl"


@dataclass
class History:
    """Per-epoch records of a run plus its totals (``samples_seen`` summed over ranks)."""

    epochs: list = field(default_factory=list)
    samples_seen: int = 0
    wall_time_s: float = 0.0
    timing: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"epochs": self.epochs, "samples_seen": self.samples_seen, "wall_time_s": self.wall_time_s}


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` (``none`` | ``bf16`` | ``fp16``) on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model, loader, device="cpu", *, amp: str = "none", channels_last: bool = False,
             reduce: bool = True) -> dict:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``loader`` (a DataLoader of ``(x, y)``
    or a kdprune loader); under DDP (``reduce``) each rank passes its own shard and the sums are added
    over ranks.

    >>> import torch, kdprune
    >>> data = torch.utils.data.TensorDataset(torch.eye(4), torch.arange(4))
    >>> kdprune.evaluate(torch.nn.Linear(4, 4), torch.utils.data.DataLoader(data, batch_size=2))["samples"]
    4
    """
    from kdprune.dropin import as_batches

    device = torch.device(device)
    loader = as_batches(loader, device, need_ids=False)  # a plain DataLoader of (x, y) too
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    for batch in loader:
        x = batch.x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        sums[0] += (logits.argmax(1) == y).sum()
        sums[1] += torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[2] += len(y)
    if reduce:
        dist.all_reduce_sum(sums)
    correct, loss, total = sums.tolist()
    model.train(was_training)
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1), "samples": int(total)}


def epoch_line(record: dict, epochs: int) -> str:
    """One line for an epoch record: its training figures and, when it was evaluated, the test ones."""
    line = (f"epoch {record['epoch'] + 1}/{epochs}: train loss {record['train_loss']:.4f}, "
            f"accuracy {100 * record['train_accuracy']:.2f}%")
    if "test_accuracy" in record:
        line += f" | test loss {record['test_loss']:.4f}, accuracy {100 * record['test_accuracy']:.2f}%"
    return line + f" ({record['time_s']:.1f} s)"


class Trainer:
    """Trains ``model`` on ``loader`` with ``loss_fn`` (a :class:`kdprune.KDLoss`) under ``cfg``.

    ``teacher`` (a StoredTeacher or OnlineTeacher) supplies teacher logits, or None for CE only (then
    the loss must have alpha = 0). ``num_samples`` (the dataset size) turns on the EL2N score table.
    ``inputs`` describes what the run reads (e.g. the fingerprints of its dataset, subset and teacher
    store); it is saved in the checkpoint and a resume with other inputs is refused.
    With ``out_dir``, rank 0 writes ``metrics.jsonl`` and ``checkpoint.pt`` there (at every epoch end,
    every ``cfg.checkpoint_every`` steps and every ``cfg.checkpoint_minutes``); :meth:`fit` with
    ``resume=True`` continues from that checkpoint (or starts fresh when there is none). Ctrl-C stops
    after the current step with a checkpoint saved, raising :class:`kdprune.errors.Interrupted`.
    """

    def __init__(self, model, loader, loss_fn, cfg: TrainConfig, *, teacher=None, eval_loader=None,
                 callbacks=(), out_dir: str | None = None, progress: bool = True, desc: str = "train",
                 num_samples: int | None = None, timing: bool = False, device=None, inputs: dict | None = None):
        cfg.validate()
        if teacher is None and getattr(loss_fn, "alpha", 0) not in (0, 0.0):
            raise ConfigError("a KD loss with alpha > 0 needs a teacher (a store or a module)")
        if len(loader) < 1:
            raise ConfigError("the training loader is empty (fewer kept samples than one batch with drop_last?)")
        self.cfg, self.loader, self.loss_fn, self.teacher = cfg, loader, loss_fn, teacher
        self.eval_loader, self.callbacks, self.out_dir = eval_loader, list(callbacks), out_dir
        self.progress, self.desc = progress, desc
        self.device = torch.device(device if device is not None else cfg.device)
        self.rank, self.world, self.main = dist.rank(), dist.world_size(), dist.is_main()
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model  # the bare module: state dicts, EMA and evaluation use it
        self.ddp = dist.wrap(model, self.device)
        self.net = self.ddp
        if cfg.compile:
            self.net = torch.compile(self.ddp, backend="inductor" if cfg.compile is True else cfg.compile)
        self.ema = ModelEMA(model, cfg.ema) if cfg.ema > 0 else None
        self.opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        self.steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
        self.sched = make_scheduler(self.opt, cfg.schedule, cfg.epochs * self.steps_per_epoch, cfg.lr,
                                    warmup=cfg.warmup, milestones=cfg.milestones, gamma=cfg.gamma)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.scores = ScoreTable(num_samples, self.device) if num_samples else None
        self.timer = StepTimer(timing, self.device)
        # loss sum, correct, count, non-finite losses, micro-batches: summed on the device, read once per epoch
        self.totals = torch.zeros(5, dtype=torch.float64, device=self.device)
        self.history = History()
        self.epoch = self.step_in_epoch = self.step = 0
        self.elapsed = 0.0
        self._pool = None  # the teacher-prefetch thread, made on first use
        self._last_save = time.monotonic()
        self._stop_requested = False  # Ctrl-C seen: save and stop after this step
        self._start = None  # perf_counter() at the run's (virtual) start, set by fit()
        self.inputs = dict(inputs or {})  # what the run reads (dataset, subset, store), checked on resume

    # ------------------------------------------------------------------ the run
    def fit(self, resume: bool = False, overwrite: bool = False) -> History:
        """Train to the end of ``cfg.epochs`` (from the checkpoint when ``resume``); returns the History.
        An ``out_dir`` holding an unfinished run's checkpoint needs ``resume=True`` (continue it) or
        ``overwrite=True`` (start over); nothing is overwritten silently. The History's
        ``wall_time_s`` adds up the times of every resumed part of the run."""
        if not (resume and self.restore()) and self.out_dir:
            self._fresh_out_dir(overwrite)
        start = self._start = time.perf_counter() - self.elapsed
        self._last_save = time.monotonic()
        with self._interrupts():
            for epoch in range(self.epoch, self.cfg.epochs):
                self.epoch = epoch
                self._train_epoch(epoch)
                self._end_epoch(epoch, start)
                self.epoch, self.step_in_epoch = epoch + 1, 0
                self.elapsed = time.perf_counter() - start
                if self.out_dir:
                    self.save()
                if self._stop_requested and epoch + 1 < self.cfg.epochs:
                    raise Interrupted(f"checkpoint saved at {self._where()} in {self.checkpoint_path}")
        self.history.wall_time_s = time.perf_counter() - start
        self.history.timing = self.timer.summary()
        return self.history

    def _train_epoch(self, epoch: int) -> None:
        cfg, accum = self.cfg, self.cfg.grad_accum
        self.loader.set_epoch(epoch)
        self.net.train()
        n_micro = len(self.loader)
        micro = self.step_in_epoch * accum
        # resuming mid-epoch: the order is a pure function of (seed, epoch), so skipping the batches
        # already trained on puts the loader exactly where the killed run was
        batches = itertools.islice(iter(self.loader), micro, None) if micro else iter(self.loader)
        bar = tqdm(total=n_micro, initial=micro, desc=f"{self.desc} {epoch + 1}/{cfg.epochs}",
                   disable=not (self.progress and self.main), leave=False)
        self.timer.start()
        for batch, t_logits in self._with_teacher(batches, epoch):
            self.timer.mark("data")
            group_start = micro - micro % accum
            group = min(accum, n_micro - group_start)
            last = micro + 1 == group_start + group
            out, logits = self._micro_step(batch, epoch, group, last, t_logits)
            with torch.no_grad():
                loss = out.loss.detach().double()
                finite = torch.isfinite(loss)
                self.totals[0] += torch.where(finite, loss, 0.0) * len(batch.y)
                self.totals[1] += (logits.argmax(1) == batch.y).sum()
                self.totals[2] += len(batch.y)
                self.totals[3] += ~finite
                self.totals[4] += 1
            if self.scores is not None:
                self.scores.add(batch.ids, out.el2n)
            for cb in self.callbacks:
                if hasattr(cb, "on_batch"):
                    cb.on_batch(epoch, batch.ids, logits.detach(), batch.y, out)
            micro += 1
            bar.update(1)
            self._show_running(bar)
            if last:
                self.step_in_epoch += 1
                self._after_step(epoch, micro < n_micro)
            self.timer.start()
        bar.close()

    def _with_teacher(self, batches, epoch: int):
        """``(batch, pending)`` pairs: for a teacher that allows it (a store), ``pending`` is the future of
        its logits, gathered in a thread one batch ahead; else None (the step calls the teacher)."""
        if not getattr(self.teacher, "prefetch", False):
            for batch in batches:
                yield batch, None
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="kdprune-teacher")
        it = iter(batches)
        nxt = next(it, None)
        pending = self._pool.submit(self.teacher, nxt, epoch) if nxt is not None else None
        while nxt is not None:
            batch, current = nxt, pending
            nxt = next(it, None)
            pending = self._pool.submit(self.teacher, nxt, epoch) if nxt is not None else None
            yield batch, current

    def _micro_step(self, batch, epoch: int, group: int, last: bool, pending=None):
        cfg = self.cfg
        x = batch.x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else batch.x
        if pending is not None:
            t_logits = pending.result()
        else:
            with autocast(self.device, cfg.amp):
                t_logits = self.teacher(batch._replace(x=x), epoch) if self.teacher is not None else None
        self.timer.mark("teacher")
        # between optimizer steps DDP must not all-reduce: gradients accumulate locally
        no_sync = self.ddp.no_sync() if (self.ddp is not self.model and not last) else contextlib.nullcontext()
        with no_sync:
            with autocast(self.device, cfg.amp):
                logits = self.net(x)
            self.timer.mark("forward")
            out = self.loss_fn(logits, t_logits if t_logits is not None else logits.detach(), batch.y)
            self.timer.mark("loss")
            loss = out.loss / group if group > 1 else out.loss
            self.scaler.scale(loss).backward()
        if last:
            self._optimizer_step()
        self.timer.mark("backward_step")
        return out, logits

    def _optimizer_step(self) -> None:
        if self.cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1

    def _after_step(self, epoch: int, mid_epoch: bool) -> None:
        cfg = self.cfg
        if cfg.log_every and self.step % cfg.log_every == 0:
            t = self.totals.tolist()  # rank-local running means: one sync every log_every steps
            self._log({"kind": "step", "epoch": epoch, "step": self.step, "lr": self.sched.get_last_lr()[0],
                       "train_loss": t[0] / max(t[2], 1), "train_accuracy": t[1] / max(t[2], 1)})
        stop = self._stop_requested and mid_epoch  # Ctrl-C: save and stop here, with nothing lost
        if self.out_dir and mid_epoch and (stop or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                                           or self._time_to_save()):
            self.save()
        if stop:
            raise Interrupted(f"checkpoint saved at {self._where()} in {self.checkpoint_path}")

    def _time_to_save(self) -> bool:
        """Whether ``cfg.checkpoint_minutes`` have passed since the last checkpoint; under DDP every rank
        must agree (saving is collective), so the ranks compare every 20 steps."""
        minutes = self.cfg.checkpoint_minutes
        if not minutes:
            return False
        due = time.monotonic() - self._last_save >= minutes * 60
        if self.world > 1:
            if self.step % 20:
                return False
            due = bool(dist.all_reduce_sum(torch.tensor([float(due)], device=self.device)).item() > 0)
        return due

    def _where(self) -> str:
        return ckpt.where(self.epoch, self.step_in_epoch, self.cfg.epochs, self.step, self.elapsed)

    @contextlib.contextmanager
    def _interrupts(self):
        """Ctrl-C while training: the first one asks the loop to save a checkpoint after the current step
        and stop (a single process with an out_dir); a second one stops at once. Either way the run
        ends with :class:`Interrupted`, which says what was saved."""
        import signal
        import threading

        self._stop_requested = False
        old = None
        if self.out_dir and self.world == 1 and threading.current_thread() is threading.main_thread():
            def ask(signum, frame):
                if self._stop_requested:
                    raise KeyboardInterrupt
                self._stop_requested = True
            old = signal.signal(signal.SIGINT, ask)
        try:
            yield
        except Interrupted:
            raise
        except KeyboardInterrupt:
            raise Interrupted(self._saved_text()) from None
        except Exception:
            if self._stop_requested:  # e.g. a DataLoader worker that Ctrl-C reached first
                raise Interrupted(self._saved_text()) from None
            raise
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)

    def _saved_text(self) -> str:
        if self.out_dir and os.path.exists(self.checkpoint_path):
            return f"the last checkpoint ({ckpt.describe(self.checkpoint_path)}) is in {self.checkpoint_path}"
        return "nothing was saved (no checkpoint yet)"

    def _end_epoch(self, epoch: int, start: float) -> None:
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(epoch)
        loss_sum, correct, count, bad, micro = dist.all_reduce_sum(self.totals.clone()).tolist()
        self.totals.zero_()
        if bad and (self.cfg.amp != "fp16" or bad > micro / 2):  # fp16: the GradScaler skips a few inf steps
            raise ConfigError(f"training diverged: the loss was NaN or inf at {int(bad)} micro-batch(es) of "
                              f"epoch {epoch} (lr {self.cfg.lr}); lower --lr, add warm-up or --max-grad-norm, "
                              f"or resume from the last checkpoint with other settings in a new --out")
        record = {"kind": "epoch", "epoch": epoch, "step": self.step, "lr": self.sched.get_last_lr()[0],
                  "train_loss": loss_sum / max(count, 1), "train_accuracy": correct / max(count, 1),
                  "samples": int(count), "time_s": time.perf_counter() - start}
        if self.scores is not None:
            row = self.scores.end_epoch().astype("float32")
            seen = row[row == row]  # drop the NaNs of samples outside the subset
            record["el2n_mean"] = float(seen.mean()) if seen.size else float("nan")
        last = epoch + 1 == self.cfg.epochs
        if self.eval_loader is not None and (last or (self.cfg.eval_every and (epoch + 1) % self.cfg.eval_every == 0)):
            model = self.ema.module if self.ema is not None else self.model
            t_eval = time.perf_counter()
            res = evaluate(model, self.eval_loader, self.device, amp=self.cfg.amp,
                           channels_last=self.cfg.channels_last)
            record.update({f"test_{k}": v for k, v in res.items()})
            record["eval_time_s"] = time.perf_counter() - t_eval  # in the next epoch's time_s, not this one's
        self.history.epochs.append(record)
        self.history.samples_seen += int(count)
        self._log(record)
        if self.progress and self.main:
            tqdm.write(epoch_line(record, self.cfg.epochs))

    def _show_running(self, bar) -> None:
        """The running loss and accuracy on the progress bar, read back at most twice a second."""
        if bar.disable or time.perf_counter() - getattr(self, "_shown", 0.0) < 0.5:
            return
        self._shown = time.perf_counter()
        loss, correct, count = self.totals[:3].tolist()
        bar.set_postfix(loss=f"{loss / max(count, 1):.4f}", acc=f"{100 * correct / max(count, 1):.1f}%")

    def _log(self, record: dict) -> None:
        if self.out_dir and self.main:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, METRICS_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.out_dir, ckpt.FILENAME)

    def state_dict(self) -> dict:
        """Everything needed to continue the run bit for bit. Collective: every rank must call it."""
        return {
            "config": self.cfg.as_dict(), "world": self.world, "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "rng": dist.all_gather_objects(ckpt.rng_state()),
            "totals": dist.all_reduce_sum(self.totals.clone()).cpu(),
            "scores": self.scores.state_dict() if self.scores is not None else None,
            "history": self.history.epochs, "samples_seen": self.history.samples_seen,
            "elapsed": self.elapsed, "inputs": self.inputs,
        }

    def save(self) -> None:
        """Write the checkpoint (rank 0 writes; every rank takes part in gathering the state)."""
        if self._start is not None:  # the time trained so far, mid-epoch too
            self.elapsed = time.perf_counter() - self._start
        state = self.state_dict()
        if self.main:
            ckpt.save(self.checkpoint_path, state)
        dist.barrier()
        self._last_save = time.monotonic()

    def restore(self) -> bool:
        """Load ``out_dir/checkpoint.pt`` if it exists; returns whether it did."""
        if not self.out_dir:
            raise ConfigError("resume needs an output directory holding the checkpoint (--out DIR)")
        if not os.path.exists(self.checkpoint_path):
            return False
        state = ckpt.load(self.checkpoint_path)
        ckpt.check_config(state["config"], self.cfg.as_dict(), self.checkpoint_path)
        ckpt.check_inputs(state.get("inputs") or {}, self.inputs, self.checkpoint_path)
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ConfigError(f"{self.checkpoint_path}: {state['steps_per_epoch']} steps per epoch, but this "
                              f"loader gives {self.steps_per_epoch}; resume on the same subset and batch size")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.step_in_epoch, self.step = state["epoch"], state["step_in_epoch"], state["step"]
        ckpt.set_rng_state(state["rng"][self.rank % len(state["rng"])])
        self.totals.copy_(state["totals"] if self.main else torch.zeros_like(state["totals"]))
        if self.scores is not None and state["scores"] is not None:
            self.scores.load_state_dict(state["scores"], self.main)
        self.history.epochs = list(state["history"])
        self.history.samples_seen = state["samples_seen"]
        self.elapsed = state["elapsed"]
        if self.main:
            self._truncate_log()
            print(f"kdprune: resuming {self.out_dir} from {self._where()}", flush=True)
        return True

    def _fresh_out_dir(self, overwrite: bool) -> None:
        """A fresh run owns its directory: an unfinished run's checkpoint there is an error unless
        ``overwrite`` (then it goes, with the older run's JSONL log). Every rank checks, so all stop."""
        if os.path.exists(self.checkpoint_path):
            if not overwrite:
                raise ConfigError(f"{self.out_dir} holds an unfinished run (checkpoint at "
                                  f"{ckpt.describe(self.checkpoint_path) or self.checkpoint_path}); pass --resume "
                                  "to continue it or --overwrite to start over (in Python: resume=True or "
                                  "overwrite=True)")
        dist.barrier()
        if self.main:
            for name in (ckpt.FILENAME, METRICS_FILE):
                path = os.path.join(self.out_dir, name)
                if os.path.exists(path):
                    os.remove(path)

    def _truncate_log(self) -> None:
        """Drop JSONL records written after the checkpoint (the resumed run writes them again)."""
        path = os.path.join(self.out_dir, METRICS_FILE)
        if not os.path.exists(path):
            return
        records = []
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by the kill
                    pass
        keep = [r for r in records if r.get("step", 0) <= self.step
                and not (r.get("kind") == "epoch" and r["epoch"] >= self.epoch)]
        with atomic_open(path) as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)


def fit(model, loader, *, loss_fn=None, teacher=None, epochs: int | None = None, lr: float | None = None,
        optimizer: str | None = None, weight_decay: float | None = None, callbacks=(), device=None,
        eval_loader=None, progress: bool = True, desc: str = "train", config: TrainConfig | None = None,
        out_dir: str | None = None, resume: bool = False, overwrite: bool = False,
        num_samples: int | None = None, timing: bool = False, **options) -> History:
    """Train ``model`` on ``loader``, distilling ``teacher``; returns the :class:`History`.

    ``loader``: a ``DataLoader`` over ``kdprune.with_ids(dataset)`` (typically with a
    :class:`kdprune.KeptIdSampler` over a pruned subset), or a kdprune loader. ``teacher``: a
    :class:`~kdprune.TeacherStore` (logits read by sample id, checked against the loader's dataset), an
    ``nn.Module`` run on each batch, or None (cross-entropy only). ``loss_fn`` defaults to
    :class:`kdprune.KDLoss` with ``alpha="auto"`` at the loader's keep fraction when there is a teacher,
    plain cross-entropy without one. ``eval_loader`` (any DataLoader of ``(x, y)``) is evaluated after
    every epoch. The progress bar shows the running loss and accuracy; each epoch's figures are printed.
    ``config`` (a TrainConfig) gives every option; ``epochs``, ``lr``, ``optimizer``, ``weight_decay``,
    ``device`` and any other TrainConfig field in ``options`` override it. ``device`` defaults to the
    model's. ``out_dir`` keeps checkpoints there: a partial run in it is continued with ``resume=True``
    or replaced with ``overwrite=True``, and refused otherwise.

    >>> import torch, kdprune
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.randn(64, 8), torch.arange(64) % 4)
    >>> teacher = torch.nn.Linear(8, 4)
    >>> loader = DataLoader(kdprune.with_ids(data), batch_size=16, sampler=kdprune.KeptIdSampler(range(0, 64, 2)))
    >>> history = kdprune.fit(torch.nn.Linear(8, 4), loader, teacher=teacher, epochs=2, progress=False)
    >>> [e["samples"] for e in history.epochs]
    [32, 32]
    """
    from kdprune.dropin import as_batches, dataset_name, fingerprint, loader_dataset, loader_keep_fraction
    from kdprune.train.teacher import as_teacher

    if device is None and config is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    cfg = config or TrainConfig(eval_every=1)  # without a config, evaluate after every epoch
    given = {"epochs": epochs, "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
             "device": None if device is None else str(device)}
    unknown = set(options) - set(cfg.as_dict())
    if unknown:
        raise ConfigError(f"fit() got unknown training option(s) {sorted(unknown)}; see TrainConfig")
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None}, **options)
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {cfg.epochs}")
    dataset = loader_dataset(loader)
    teacher = as_teacher(teacher, device=cfg.device,
                         dataset=None if dataset is None else (fingerprint(dataset), dataset_name(dataset)))
    if getattr(teacher, "store", None) is not None and dataset is not None and teacher.store.num_samples != len(dataset):
        raise ConfigError(f"the teacher store holds {teacher.store.num_samples} samples but the loader's dataset "
                          f"has {len(dataset)}; write the store from this dataset with kdprune.write_teacher_logits")
    if loss_fn is None:
        loss_fn = _default_loss(teacher, loader_keep_fraction(loader), progress)
    stored = getattr(teacher, "store", None) is not None
    train = as_batches(loader, cfg.device, need_ids=stored or bool(num_samples))
    evals = as_batches(eval_loader, cfg.device, need_ids=False) if eval_loader is not None else None
    trainer = Trainer(model, train, loss_fn, cfg, teacher=teacher, eval_loader=evals, callbacks=callbacks,
                      out_dir=out_dir, progress=progress, desc=desc, num_samples=num_samples, timing=timing)
    return trainer.fit(resume=resume, overwrite=overwrite)


def _default_loss(teacher, fraction: float | None, progress: bool):
    """KD with the fitted alpha at the keep fraction when there is a teacher; cross-entropy without."""
    from kdprune.loss import KDLoss

    if teacher is None:
        return KDLoss(alpha=0.0)
    if fraction is None:
        raise ConfigError("with a teacher and no loss_fn, fit() picks alpha from the keep fraction, which this "
                          "loader does not tell; pass loss_fn=kdprune.KDLoss(alpha=..., temperature=...)")
    loss = KDLoss(alpha="auto", fraction=fraction)
    if progress and dist.is_main():
        tqdm.write(f"kdprune.fit: distilling with alpha {loss.alpha:.2f} (the fitted rule at keep fraction "
                   f"{fraction:.3g}), temperature {loss.temperature:g}")
    return loss
