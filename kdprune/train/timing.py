"""Where a training step's time goes: data, teacher gather, forward, loss, backward + optimizer.

Off by default. When on, each phase boundary synchronises the device (a GPU runs asynchronously, so
without it the time would land in whichever phase happens to wait), which slows training a little:
use it to measure, not for production runs.
"""
from __future__ import annotations

import time

import torch

PHASES = ("data", "teacher", "forward", "loss", "backward_step")


class StepTimer:
    """Accumulates seconds per phase; ``mark(phase)`` closes the phase that just ran."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.cuda = device.type == "cuda"
        self.totals = {p: 0.0 for p in PHASES}
        self.steps = 0
        self._t = None

    def start(self) -> None:
        if self.enabled:
            self._sync()
            self._t = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.enabled:
            self._sync()
            now = time.perf_counter()
            self.totals[phase] += now - self._t
            self._t = now
            if phase == PHASES[-1]:
                self.steps += 1

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def summary(self) -> dict:
        """Mean milliseconds per micro-step for each phase, plus the total."""
        if not self.steps:
            return {}
        ms = {f"{p}_ms": 1e3 * t / self.steps for p, t in self.totals.items()}
        ms["step_ms"] = sum(ms.values())
        ms["steps"] = self.steps
        return ms
