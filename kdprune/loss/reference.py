"""The pure-torch KD loss: the oracle the kernels are tested against and the ``"torch"`` backend.

It computes in float64 when given float64 (the tests' oracle) and in float32 otherwise, and is
differentiated by autograd, so its gradient is an independent check of the kernels' closed form.
It follows the same numerical conventions as the kernels (see ``csrc/kd_loss.cpp``):
``1 - p_y`` is summed over the other classes, teacher ``-inf`` entries contribute 0, an all ``-inf``
student row has zero gradient (ce = inf, kl = inf unless the teacher row is all ``-inf`` too, el2n = 1),
an all ``-inf`` teacher row gives kl = 0 and no KL gradient, and ignored rows contribute nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

REDUCTIONS = ("mean", "sum", "none")


class KDOutput(NamedTuple):
    """``loss`` (scalar, or [B] for ``reduction="none"``) and the detached fp32 per-sample
    ``ce``, ``kl`` (at temperature T, without the T^2 factor) and ``el2n`` (0 on ignored rows).

    >>> import torch, kdprune
    >>> student, teacher = torch.tensor([[1., 0, 0], [0, 0, 1]]), torch.tensor([[2., 0, 0], [0, 2, 0]])
    >>> out = kdprune.kd_loss(student, teacher, torch.tensor([0, 2]), alpha=0.5, temperature=2.0)
    >>> out.loss, out.kl
    (tensor(0.5198), tensor([0.0310, 0.2131]))
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    el2n: torch.Tensor


def kd_loss_ref(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                alpha: float, temperature: float, reduction: str = "mean", ignore_index: int = -100,
                label_smoothing: float = 0.0) -> KDOutput:
    """Per sample ``(1 - alpha) * CE_eps(z, y) + alpha * T^2 * KL(softmax(t/T) || softmax(z/T))``,
    reduced by ``reduction`` (``"mean"`` over non-ignored rows). Differentiable wrt the student."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    z = student_logits.to(dtype)
    t = teacher_logits.detach().to(dtype)
    B, C = z.shape
    T, a, eps = float(temperature), float(alpha), float(label_smoothing)

    valid = labels != ignore_index
    y = torch.where(valid, labels, 0).long()
    if labels.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = valid & ((labels < 0) | (labels >= C))
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"kd_loss: label {int(labels[row])} at row {row} is outside [0, {C}) and is not "
                             f"ignore_index ({ignore_index}); fix the labels or pass ignore_index")
    # A student row with no finite entry has no distribution: compute on zeros, then overwrite.
    dead = torch.isneginf(z).all(dim=1)
    z = torch.where(dead[:, None], 0.0, z)

    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    onehot = torch.nn.functional.one_hot(y, C).bool()
    logp_y = logp.gather(1, y[:, None]).squeeze(1)
    ce = -logp_y
    if eps > 0:
        ce = (1 - eps) * ce - eps * logp.mean(dim=1)

    # A teacher row with no finite entry: no distribution, so kl = 0 with zero gradient (computed on
    # zeros, then overwritten, so no NaN reaches autograd).
    no_teacher = torch.isneginf(t).all(dim=1)
    t = torch.where(no_teacher[:, None], 0.0, t)
    logpt = torch.log_softmax(t / T, dim=1)
    pt = logpt.exp()
    logps_T = torch.log_softmax(z / T, dim=1)
    # teacher -inf: pt = 0 and the term is 0, never 0 * (-inf)
    kl = torch.where(pt > 0, pt * (logpt - logps_T), 0.0).sum(dim=1).clamp_min(0.0)
    kl = torch.where(no_teacher, 0.0, kl)

    others = p.masked_fill(onehot, 0.0)  # 1 - p_y as a sum over the other classes
    el2n = torch.sqrt(others.square().sum(dim=1) + others.sum(dim=1).square())

    inf = torch.full_like(ce, float("inf"))
    ce = torch.where(dead, inf, ce)
    kl = torch.where(dead & ~no_teacher, inf, kl)
    el2n = torch.where(dead, 1.0, el2n)

    loss = torch.zeros_like(ce)
    if a < 1:
        loss = loss + (1 - a) * ce
    if a > 0:
        loss = loss + a * T * T * kl
    zero = torch.zeros_like(ce)
    loss = torch.where(valid, loss, zero)
    ce, kl, el2n = (torch.where(valid, v, zero).detach().float() for v in (ce, kl, el2n))
    if reduction == "none":
        out = loss
    elif reduction == "sum":
        out = loss.sum()
    else:
        out = loss.sum() / valid.sum().clamp_min(1)
    return KDOutput(out, ce, kl, el2n)
