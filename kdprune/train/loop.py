"""The training loop: one epoch of (model, loader, teacher, KDLoss) steps, and evaluation.

Callbacks see every step's detached outputs, so scores (EL2N, forgetting, AUM) are collected while
training, without a second forward pass. A callback may define ``on_batch(epoch, ids, logits, labels,
out)`` and ``on_epoch_end(epoch)``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from kdprune.errors import ConfigError


@dataclass
class History:
    """Per-epoch records of a run plus its totals."""

    epochs: list = field(default_factory=list)
    samples_seen: int = 0
    wall_time_s: float = 0.0

    def as_dict(self) -> dict:
        return {"epochs": self.epochs, "samples_seen": self.samples_seen, "wall_time_s": self.wall_time_s}


def make_optimizer(model, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; use sgd or adamw")


def one_cycle(optimizer, total_steps: int, lr: float):
    """Linear warm-up over the first 15% of steps, then cosine decay to zero. Sized in steps, so a
    pruned epoch (fewer steps) gets the whole schedule too."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 1),
                                               pct_start=0.15, anneal_strategy="cos",
                                               cycle_momentum=False, div_factor=10.0, final_div_factor=1e3)


@torch.no_grad()
def evaluate(model, loader, device="cpu") -> dict:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``loader``."""
    model.eval()
    correct = total = 0
    loss = torch.zeros((), dtype=torch.float64)
    for batch in loader:
        logits = model(batch.x.to(device))
        y = batch.y.to(device)
        correct += int((logits.argmax(1) == y).sum())
        loss += torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").double().cpu()
        total += len(y)
    return {"accuracy": correct / max(total, 1), "loss": float(loss) / max(total, 1), "samples": total}


def fit(model, loader, *, epochs: int, lr: float, loss_fn, teacher=None, optimizer: str = "sgd",
        weight_decay: float = 5e-4, callbacks=(), device="cpu", eval_loader=None, progress: bool = True,
        desc: str = "train") -> History:
    """Train ``model`` on ``loader`` for ``epochs`` with ``loss_fn`` (a :class:`kdprune.KDLoss`);
    ``teacher`` (a StoredTeacher or OnlineTeacher) supplies teacher logits, or None for CE only
    (then the loss must have alpha = 0)."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if teacher is None and getattr(loss_fn, "alpha", 0) not in (0, 0.0):
        raise ConfigError("a KD loss with alpha > 0 needs a teacher (a store or a module)")
    model.to(device)
    opt = make_optimizer(model, optimizer, lr, weight_decay)
    sched = one_cycle(opt, epochs * len(loader), lr)
    history = History()
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        model.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for batch in bar:
            logits = model(batch.x)
            t_logits = teacher(batch, epoch) if teacher is not None else logits.detach()
            out = loss_fn(logits, t_logits, batch.y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                totals += torch.stack([out.loss.detach().double().cpu() * len(batch.y),
                                       (logits.argmax(1) == batch.y).sum().double().cpu(),
                                       torch.tensor(float(len(batch.y)), dtype=torch.float64)])
            for cb in callbacks:
                if hasattr(cb, "on_batch"):
                    cb.on_batch(epoch, batch.ids, logits.detach(), batch.y, out)
        for cb in callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(epoch)
        record = {"epoch": epoch, "train_loss": float(totals[0] / totals[2]),
                  "train_accuracy": float(totals[1] / totals[2]), "samples": int(totals[2]),
                  "time_s": time.perf_counter() - start}
        if eval_loader is not None:
            record.update({f"test_{k}": v for k, v in evaluate(model, eval_loader, device).items()})
        history.epochs.append(record)
        history.samples_seen += int(totals[2])
    history.wall_time_s = time.perf_counter() - start
    return history
