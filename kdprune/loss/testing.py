"""Checking a KD-loss backend against the float64 oracle, shared by the tests and the benchmark.

The tolerance is relative to what torch itself loses (the idea of Cut Cross-Entropy's tests): a
backend's error against the float64 oracle may be at most ``factor`` times torch's own error plus a
small floor, where torch's own error is that of the reference computed in float32 (for the fp32
outputs: loss, ce, kl, el2n, and an fp32 gradient) or the oracle's gradient rounded to the student's
dtype (for a bf16 / fp16 gradient, which no computation can beat).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from kdprune.loss.reference import KDOutput, kd_loss_ref


@dataclass(frozen=True)
class Case:
    """Inputs of one check: logits with ``scale`` standard deviation, about ``ignore_frac`` of labels
    set to ``ignore_index``."""

    B: int
    C: int
    student_dtype: torch.dtype = torch.float32
    teacher_dtype: torch.dtype = torch.float32
    temperature: float = 4.0
    alpha: float = 0.5
    label_smoothing: float = 0.0
    reduction: str = "mean"
    ignore_frac: float = 0.3
    scale: float = 3.0
    seed: int = 0
    ignore_index: int = -100

    def inputs(self, device="cpu"):
        g = torch.Generator().manual_seed(self.seed)
        z = (torch.randn(self.B, self.C, generator=g, dtype=torch.float64) * self.scale)
        # a teacher correlated with the student, as after some training
        t = 0.7 * z + 0.7 * self.scale * torch.randn(self.B, self.C, generator=g, dtype=torch.float64)
        y = torch.randint(0, self.C, (self.B,), generator=g)
        y[torch.rand(self.B, generator=g) < self.ignore_frac] = self.ignore_index
        return (z.to(self.student_dtype).to(device), t.to(self.teacher_dtype).to(device), y.to(device))

    def kwargs(self):
        return dict(alpha=self.alpha, temperature=self.temperature, reduction=self.reduction,
                    ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)


def grad_output_for(loss: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A grad_output != 1: 0.7 for a scalar loss, random signed values for per-sample losses."""
    if loss.dim() == 0:
        return torch.full_like(loss, 0.7)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(loss.shape, generator=g, dtype=loss.dtype).to(loss.device)


def run(fn: Callable[..., KDOutput], z, t, y, kwargs, grad_output: Optional[torch.Tensor] = None):
    """``(KDOutput, dz)`` of ``fn`` on leaf copies of the inputs, backward with ``grad_output``."""
    z = z.detach().clone().requires_grad_(True)
    out = fn(z, t, y, **kwargs)
    go = grad_output_for(out.loss) if grad_output is None else grad_output
    out.loss.backward(go.to(out.loss.dtype))
    return out, z.grad


def max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |x - ref| over finite reference entries; inf when x is non-finite where ref is finite,
    or when the infinities / NaNs do not sit at the same places."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    if ref.numel() == 0:
        return 0.0
    fin = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(x), fin):
        return float("inf")
    if not bool(fin.all()):  # the same infinities (NaNs compared as equal) where ref is not finite
        if not torch.equal(torch.where(fin, 0.0, x).nan_to_num(), torch.where(fin, 0.0, ref).nan_to_num()):
            return float("inf")
        x, ref = torch.where(fin, x, 0.0), torch.where(fin, ref, 0.0)
    return float((x - ref).abs().max())


def check(case: Case, fn: Callable[..., KDOutput], device="cpu", factor: float = 4.0) -> dict:
    """Run ``fn`` and the oracle on ``case``; returns ``{name: (err, allowed)}`` for loss, ce, kl, el2n
    and grad. A check passes when every ``err <= allowed``."""
    z, t, y = case.inputs(device)
    kw = case.kwargs()
    out, dz = run(fn, z, t, y, kw)
    go = grad_output_for(out.loss).double()
    oracle, dz64 = run(kd_loss_ref, z.double(), t.double(), y, kw, go)
    base, dz32 = run(kd_loss_ref, z.float(), t.float(), y, kw, go.float())
    result = {}
    for name in ("loss", "ce", "kl", "el2n"):
        ref = getattr(oracle, name)
        floor = 1e-6 * max(1.0, float(ref.detach().abs().max()) if ref.numel() else 1.0)
        result[name] = (max_err(getattr(out, name), ref), factor * max_err(getattr(base, name), ref) + floor)
    # the gradient: torch's own loss is fp32 arithmetic plus rounding to the student's dtype
    torch_err = max(max_err(dz32, dz64), max_err(dz64.to(case.student_dtype), dz64))
    floor = 1e-7 * max(1.0, float(dz64.abs().max()) if dz64.numel() else 1.0)
    result["grad"] = (max_err(dz, dz64), factor * torch_err + floor)
    return result


def failures(result: dict) -> list[str]:
    """The entries of a :func:`check` result that exceed their tolerance, readably."""
    return [f"{k}: error {e:.3g} > allowed {a:.3g}" for k, (e, a) in result.items() if not e <= a]
