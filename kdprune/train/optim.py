"""Optimizers and LR schedules, sized in optimizer steps.

Every schedule is a function of the step counter over ``total_steps = epochs * steps_per_epoch``,
where ``steps_per_epoch`` comes from the PRUNED loader: training on a fraction f of the data still
gets the whole warm-up and decay, not the first f of them.
"""
from __future__ import annotations

import bisect
import math

import torch

from kdprune.errors import ConfigError


def make_optimizer(model, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    """SGD (Nesterov momentum) or AdamW over the trainable parameters of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; use sgd or adamw")


def one_cycle(optimizer, total_steps: int, lr: float, warmup: float = 0.15):
    """Warm-up over the first ``warmup`` of the steps from lr/10 to lr, then cosine decay to lr/1e4
    (both phases cosine-annealed, as torch's OneCycleLR does)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 1),
                                               pct_start=max(warmup, 1e-6), anneal_strategy="cos",
                                               cycle_momentum=False, div_factor=10.0, final_div_factor=1e3)


class _Factor:
    """The LR multiplier of step ``s`` (a picklable callable, so LambdaLR's state round-trips)."""

    def __init__(self, kind: str, total: int, warmup: int, milestones, gamma: float):
        self.kind, self.total, self.warmup, self.gamma = kind, total, warmup, gamma
        self.milestones = [int(round(m * total)) for m in milestones]

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup  # linear warm-up, never exactly 0
        if self.kind == "cosine":
            span = max(self.total - self.warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - self.warmup, span) / span))
        if self.kind == "step":
            return self.gamma ** bisect.bisect_right(self.milestones, step)
        return 1.0


def make_scheduler(optimizer, kind: str, total_steps: int, lr: float, *, warmup: float = 0.15,
                   milestones=(0.3, 0.6, 0.8), gamma: float = 0.1):
    """``onecycle`` (the default), ``cosine`` (linear warm-up, cosine to 0), ``step`` (linear warm-up,
    times ``gamma`` at each milestone fraction: the classic ImageNet 30/60/80 of 90 epochs is
    ``[1/3, 2/3, 8/9]``) or ``constant`` (after warm-up). Stepped once per optimizer step."""
    total_steps = max(int(total_steps), 1)
    if kind == "onecycle":
        return one_cycle(optimizer, total_steps, lr, warmup)
    if kind not in ("cosine", "step", "constant"):
        raise ConfigError(f"unknown schedule {kind!r}; use onecycle, cosine, step or constant")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _Factor(kind, total_steps, int(round(warmup * total_steps)), milestones, gamma))
