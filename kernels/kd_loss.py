"""Fused knowledge-distillation loss in Triton: KL + CE + EL2N and the student gradient in one pass.

Each program reads its rows of student logits, teacher logits and labels once and writes the
per-sample fp32 ``loss``, ``ce``, ``kl``, ``el2n`` and the gradient of the reduced loss (into a
buffer the caller passes: its own, or the student logits themselves for in-place; the mean's
1 / denom is already applied). Backward then only scales that buffer in place by ``grad_output``, one
launch whose programs return at once when the factor is 1, so forward + backward move the minimum
bytes (read S, read T, write dS). Two layouts:

- ``single_block`` (C <= 4096): a [ROWS, BLOCK_C] tile holds whole rows, several rows per program
  for small C, so the row is read from memory exactly once;
- ``online`` (larger C, up to 262144 and beyond): one row per program, an online softmax over column
  blocks for the statistics, then a second sweep for the gradient, which re-reads the row while it
  is still in L2.

Numerics follow ``csrc/kd_loss.cpp`` (documented there) and the torch reference
``kdprune.loss.kd_loss_ref``. No host synchronisation anywhere: the mean's denominator is counted on
the device by a one-program kernel, and the reduced loss summed by another, so the ops work in CUDA
graphs and under ``torch.compile`` (registered as the custom ops ``kdprune::kd_loss_fwd_triton`` and
``kdprune::kd_loss_bwd_triton_``). Labels outside
``[0, C)`` that are not ``ignore_index`` cannot raise without a sync: those rows give NaN loss and
gradient (the CPU and torch backends raise).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import triton
import triton.language as tl

# reduction codes shared with csrc/kd_loss.cpp
NONE, MEAN, SUM = 0, 1, 2

SINGLE_BLOCK_MAX_C = 4096


@dataclasses.dataclass(frozen=True)
class KDLossConfig:
    """Launch settings: ``single_block`` picks the layout; ``block_c`` columns per tile; ``rows`` rows
    per program (single-block layout only)."""

    single_block: bool
    block_c: int
    rows: int
    num_warps: int


def pick_config(num_classes: int) -> KDLossConfig:
    """Heuristic launch settings (autotuning stays opt-in: pass a config to ``kd_loss_forward``)."""
    block = triton.next_power_of_2(max(num_classes, 16))
    if block <= SINGLE_BLOCK_MAX_C:
        # about 2048 elements per program: enough rows to fill the warps when C is small
        rows = max(1, min(64, 2048 // block))
        return KDLossConfig(True, block, rows, 4 if block <= 1024 else 8)
    return KDLossConfig(False, 4096, 1, 8)


@triton.jit
def _log1p(x):
    # log(1 + x) loses the digits of a small x (a confident row's -log p_y), and tl.log is the GPU's
    # approximate lg2 anyway: below 1e-2 use the series to x^5 (truncation < x^6 / 6, below fp32's ulp)
    xs = tl.minimum(x, 1e-2)
    series = xs * (1.0 - xs * (0.5 - xs * (1.0 / 3.0 - xs * (0.25 - xs * 0.2))))
    return tl.where(x < 1e-2, series, tl.log(1.0 + x))


@triton.jit
def _row_outputs(s1, o1, q1, sT, st, a, sz, m1, mt, z_y, e_y, valid, in_range, dead, has_teacher,
                 inv_t, alpha, kl_weight, eps, C, SMOOTHING: tl.constexpr):
    """ce, kl, el2n, loss of rows from their sums (shared by both layouts)."""
    # -log p_y = log1p(sum_{j != y} e_j / e_y): no cancellation for confident rows
    ce = tl.where(e_y > 1e-30, _log1p(o1 / tl.maximum(e_y, 1e-30)), (m1 - z_y) + tl.log(s1))
    if SMOOTHING:
        ce = (1.0 - eps) * ce + eps * (tl.log(s1) - sz / C)
    kl = a / st + (m1 - mt) * inv_t + tl.log(sT) - tl.log(st)
    kl = tl.where(has_teacher, tl.maximum(kl, 0.0), 0.0)
    el2n = tl.sqrt(q1 + o1 * o1) / s1
    inf = float("inf")
    ce = tl.where(dead, inf, ce)
    kl = tl.where(dead & has_teacher, inf, kl)
    el2n = tl.where(dead, 1.0, el2n)
    loss = tl.where(alpha < 1.0, (1.0 - alpha) * ce, 0.0) + tl.where(alpha > 0.0, kl_weight * kl, 0.0)
    bad = valid & (in_range == 0)
    nan = float("nan")
    zero = 0.0
    ce = tl.where(valid, tl.where(bad, nan, ce), zero)
    kl = tl.where(valid, tl.where(bad, nan, kl), zero)
    el2n = tl.where(valid, tl.where(bad, nan, el2n), zero)
    loss = tl.where(valid, tl.where(bad, nan, loss), zero)
    return loss, ce, kl, el2n


@triton.jit
def _grad_coefficients(DENOM, alpha, inv_t, s1, sT, st, has_teacher, eps, C, HAS_DENOM: tl.constexpr):
    """Per-row coefficients of the gradient of the reduced loss, shared by both layouts:
    g = c1 * exp(z - m1) + cT * exp((z - m1) / T) - ct * exp((t - mt) / T) - cq, with b = (1 - alpha)
    scaled. The mean's 1 / denom is applied here, not in backward."""
    gscale = 1.0
    if HAS_DENOM:
        gscale = 1.0 / tl.load(DENOM)
    b = (1.0 - alpha) * gscale
    aT = alpha / inv_t * gscale
    cT = tl.where(has_teacher, aT / sT, 0.0)  # no teacher distribution: no KL term
    ct = tl.where(has_teacher, aT / st, 0.0)
    return b, b / s1, cT, ct, b * eps / C


@triton.jit
def _kd_single_block_kernel(
    S, T, Y, G, LOSS, CE, KL, EL2N, DENOM,
    B, C, stride_s, stride_t, stride_g,
    inv_t, alpha, kl_weight, eps, ignore_index,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, SAME_T: tl.constexpr, HAS_GRAD: tl.constexpr,
    SMOOTHING: tl.constexpr, HAS_DENOM: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    y = tl.load(Y + rows, mask=rmask, other=ignore_index).to(tl.int64)
    valid = rmask & (y != ignore_index)
    in_range = (y >= 0) & (y < C)
    # masked loads: ignored rows and padding columns are never read
    m2 = valid[:, None] & (cols[None, :] < C)
    neg_inf = float("-inf")
    z = tl.load(S + rows64[:, None] * stride_s + cols[None, :], mask=m2, other=neg_inf).to(tl.float32)
    t = tl.load(T + rows64[:, None] * stride_t + cols[None, :], mask=m2, other=neg_inf).to(tl.float32)
    is_y = cols[None, :] == y[:, None]

    m1 = tl.max(z, 1)
    mt = tl.max(t, 1)
    dead = m1 == neg_inf
    has_teacher = mt != neg_inf
    m1 = tl.where(dead, 0.0, m1)  # keeps -inf - (-inf) out of the arithmetic
    mt = tl.where(has_teacher, mt, 0.0)

    dz1 = z - m1[:, None]
    e1 = tl.exp(dz1)
    s1 = tl.sum(e1, 1)
    w = tl.where(is_y, 0.0, e1)  # the other classes: 1 - p_y without cancellation
    o1 = tl.sum(w, 1)
    q1 = tl.sum(w * w, 1)
    if SMOOTHING:
        sz = tl.sum(tl.where(m2, dz1, 0.0), 1)
    else:
        sz = s1 * 0.0
    if SAME_T:
        dzT = dz1
        dtT = t - mt[:, None]
        eT = e1
        sT = s1
    else:
        dzT = dz1 * inv_t
        dtT = (t - mt[:, None]) * inv_t
        eT = tl.exp(dzT)
        sT = tl.sum(eT, 1)
    et = tl.exp(dtT)
    st = tl.sum(et, 1)
    # teacher -inf: weight 0, never 0 * inf; (t - z) / T is the shift-free difference
    a = tl.sum(tl.where(et > 0.0, et * ((t - z) * inv_t), 0.0), 1)

    z_y = tl.max(tl.where(is_y, z, neg_inf), 1)
    e_y = tl.sum(tl.where(is_y, e1, 0.0), 1)
    loss, ce, kl, el2n = _row_outputs(s1, o1, q1, sT, st, a, sz, m1, mt, z_y, e_y, valid, in_range, dead,
                                      has_teacher, inv_t, alpha, kl_weight, eps, C, SMOOTHING)
    tl.store(LOSS + rows, loss, mask=rmask)
    tl.store(CE + rows, ce, mask=rmask)
    tl.store(KL + rows, kl, mask=rmask)
    tl.store(EL2N + rows, el2n, mask=rmask)

    if HAS_GRAD:
        b, c1, cT, ct, cq = _grad_coefficients(DENOM, alpha, inv_t, s1, sT, st, has_teacher, eps, C,
                                               HAS_DENOM)
        g = c1[:, None] * e1 + cT[:, None] * eT - ct[:, None] * et - cq
        # p_y - q_y = -(sum_{j != y} p_j) + eps (1 - 1/C)
        eT_y = tl.sum(tl.where(is_y, eT, 0.0), 1)
        et_y = tl.sum(tl.where(is_y, et, 0.0), 1)
        gy = b * (-o1 / s1 + eps * (1.0 - 1.0 / C)) + cT * eT_y - ct * et_y
        g = tl.where(is_y, gy[:, None], g)
        keep = valid & (dead == 0)
        g = tl.where(keep[:, None], g, 0.0)
        g = tl.where((valid & (in_range == 0))[:, None], float("nan"), g)
        gmask = rmask[:, None] & (cols[None, :] < C)
        tl.store(G + rows64[:, None] * stride_g + cols[None, :], g.to(G.dtype.element_ty), mask=gmask)


@triton.jit
def _kd_online_kernel(
    S, T, Y, G, LOSS, CE, KL, EL2N, DENOM,
    B, C, stride_s, stride_t, stride_g,
    inv_t, alpha, kl_weight, eps, ignore_index,
    BLOCK_C: tl.constexpr, SAME_T: tl.constexpr, HAS_GRAD: tl.constexpr, SMOOTHING: tl.constexpr,
    HAS_DENOM: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = S + row * stride_s
    t_row = T + row * stride_t
    y = tl.load(Y + row).to(tl.int64)
    valid = y != ignore_index
    in_range = (y >= 0) & (y < C)
    y_safe = tl.minimum(tl.maximum(y, 0), C - 1)
    neg_inf = float("-inf")
    z_y = tl.load(s_row + y_safe, mask=valid, other=neg_inf).to(tl.float32)
    t_y = tl.load(t_row + y_safe, mask=valid, other=neg_inf).to(tl.float32)
    # smoothing's sum of z is taken relative to z_y so a constant shift of the row cancels
    z_ref = tl.where(z_y == neg_inf, 0.0, z_y)
    n_read = tl.where(valid, C, 0)  # an ignored row is never read

    zero = tl.zeros([], dtype=tl.float32)  # loop-carried values need a tensor type from the start
    m1 = zero + neg_inf
    mt = zero + neg_inf
    s1 = zero
    o1 = zero
    q1 = zero
    sT = zero
    st = zero
    a = zero
    sz = zero
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        cm = cols < n_read
        z = tl.load(s_row + cols, mask=cm, other=neg_inf).to(tl.float32)
        t = tl.load(t_row + cols, mask=cm, other=neg_inf).to(tl.float32)
        # student at T = 1, rescaled to the running max (a max of -inf shifts by 0 instead)
        new_m1 = tl.maximum(m1, tl.max(z, 0))
        shift1 = tl.where(new_m1 == neg_inf, 0.0, new_m1)
        r1 = tl.exp(m1 - shift1)
        e1 = tl.exp(z - shift1)
        w = tl.where(cols == y, 0.0, e1)
        s1 = s1 * r1 + tl.sum(e1, 0)
        o1 = o1 * r1 + tl.sum(w, 0)
        q1 = q1 * r1 * r1 + tl.sum(w * w, 0)
        if SMOOTHING:
            sz += tl.sum(tl.where(cm, z - z_ref, 0.0), 0)
        if not SAME_T:
            rT = tl.exp((m1 - shift1) * inv_t)
            sT = sT * rT + tl.sum(tl.exp((z - shift1) * inv_t), 0)
        m1 = new_m1
        # teacher at T; the max is tracked in raw units so that kl's (m1 - mt) / T is shift-free
        new_mt = tl.maximum(mt, tl.max(t, 0))
        shiftt = tl.where(new_mt == neg_inf, 0.0, new_mt)
        rt = tl.exp((mt - shiftt) * inv_t)
        et = tl.exp((t - shiftt) * inv_t)
        st = st * rt + tl.sum(et, 0)
        a = a * rt + tl.sum(tl.where(et > 0.0, et * ((t - z) * inv_t), 0.0), 0)
        mt = new_mt
    if SAME_T:
        sT = s1
    dead = m1 == neg_inf
    has_teacher = mt != neg_inf
    m1 = tl.where(dead, 0.0, m1)
    mt = tl.where(has_teacher, mt, 0.0)
    e_y = tl.exp(z_y - m1)
    if SMOOTHING:
        sz = sz + C * (z_ref - m1)  # sum_j (z_j - m1)
    loss, ce, kl, el2n = _row_outputs(s1, o1, q1, sT, st, a, sz, m1, mt, z_y, e_y, valid, in_range, dead,
                                      has_teacher, inv_t, alpha, kl_weight, eps, C, SMOOTHING)
    tl.store(LOSS + row, loss)
    tl.store(CE + row, ce)
    tl.store(KL + row, kl)
    tl.store(EL2N + row, el2n)

    if HAS_GRAD:
        b, c1, cT, ct, cq = _grad_coefficients(DENOM, alpha, inv_t, s1, sT, st, has_teacher, eps, C,
                                               HAS_DENOM)
        eT_y = tl.exp((z_y - m1) * inv_t)
        et_y = tl.exp((t_y - mt) * inv_t)
        gy = b * (-o1 / s1 + eps * (1.0 - 1.0 / C)) + cT * eT_y - ct * et_y
        keep = valid & (dead == 0)
        bad = valid & (in_range == 0)
        g_row = G + row * stride_g
        n_read = tl.where(keep, C, 0)
        for start in range(0, C, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            cm = cols < n_read
            z = tl.load(s_row + cols, mask=cm, other=neg_inf).to(tl.float32)
            t = tl.load(t_row + cols, mask=cm, other=neg_inf).to(tl.float32)
            dz1 = z - m1
            e1 = tl.exp(dz1)
            if SAME_T:
                g = (c1 + cT) * e1
            else:
                g = c1 * e1 + cT * tl.exp(dz1 * inv_t)
            g = g - ct * tl.exp((t - mt) * inv_t) - cq
            g = tl.where(cols == y, gy, g)
            g = tl.where(keep, g, 0.0)
            g = tl.where(bad, float("nan"), g)
            tl.store(g_row + cols, g.to(G.dtype.element_ty), mask=cols < C)


@triton.jit
def _count_kernel(Y, DENOM, B, ignore_index, BLOCK: tl.constexpr):
    """One program: the mean's denominator, the number of non-ignored rows (at least 1)."""
    cnt = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, B, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        y = tl.load(Y + offs, mask=offs < B, other=ignore_index)
        cnt += tl.where(y != ignore_index, 1.0, 0.0)
    tl.store(DENOM, tl.maximum(tl.sum(cnt, 0), 1.0))


@triton.jit
def _finalize_kernel(LOSS_ROWS, OUT, DENOM, B, HAS_DENOM: tl.constexpr, BLOCK: tl.constexpr):
    """One program: the batch's loss, summed in a fixed order (deterministic) and divided by DENOM."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, B, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(LOSS_ROWS + offs, mask=offs < B, other=0.0)
    total = tl.sum(acc, 0)
    if HAS_DENOM:
        total = total / tl.load(DENOM)
    tl.store(OUT, total)


@triton.jit
def _scale_kernel(G, GO, C, stride_g, PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    """Backward, in place: G *= grad_output. A program whose factor is exactly 1 returns without
    touching memory, so the usual loss.backward() costs one tiny launch."""
    row = tl.program_id(0).to(tl.int64)
    if PER_ROW:
        scale = tl.load(GO + row).to(tl.float32)
    else:
        scale = tl.load(GO).to(tl.float32)
    if scale != 1.0:
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < C
        g = tl.load(G + row * stride_g + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(G + row * stride_g + cols, (g * scale).to(G.dtype.element_ty), mask=m)


def kd_loss_forward(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                    grad: Optional[torch.Tensor], alpha: float, temperature: float, label_smoothing: float,
                    ignore_index: int, reduction: int, config: Optional[KDLossConfig] = None):
    """Launch the fused kernel. Returns ``(loss, ce, kl, el2n)`` (see the module docstring); ``grad``,
    when given, receives the gradient of the reduced loss for grad_output = 1. Inputs are assumed
    validated by ``kdprune.loss``. Launches: the mean's row count (one program), the fused kernel,
    and for mean / sum the deterministic sum (one program)."""
    B, C = student.shape
    student = student if student.stride(1) == 1 else student.contiguous()
    teacher = teacher if teacher.stride(1) == 1 else teacher.contiguous()
    labels = labels.contiguous()
    cfg = config or pick_config(C)
    f32 = dict(device=student.device, dtype=torch.float32)
    loss_rows, ce, kl, el2n = (torch.empty(B, **f32) for _ in range(4))
    has_grad = grad is not None
    has_denom = reduction == MEAN
    denom = torch.empty((), **f32)
    if has_denom:
        _count_kernel[(1,)](labels, denom, B, int(ignore_index), BLOCK=1024)
    g = grad if has_grad else loss_rows  # a placeholder pointer the kernel never touches
    common = (student, teacher, labels, g, loss_rows, ce, kl, el2n, denom, B, C, student.stride(0),
              teacher.stride(0), g.stride(0) if has_grad else 0, 1.0 / temperature, float(alpha),
              float(alpha) * temperature * temperature, float(label_smoothing), int(ignore_index))
    flags = dict(SAME_T=temperature == 1.0, HAS_GRAD=has_grad, SMOOTHING=label_smoothing > 0.0,
                 HAS_DENOM=has_denom)
    if B > 0:
        if cfg.single_block:
            grid = (triton.cdiv(B, cfg.rows),)
            _kd_single_block_kernel[grid](*common, ROWS=cfg.rows, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
                                          **flags)
        else:
            _kd_online_kernel[(B,)](*common, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps, **flags)
    if reduction == NONE:
        return loss_rows, ce, kl, el2n
    out = torch.empty((), **f32)
    _finalize_kernel[(1,)](loss_rows, out, denom, B, HAS_DENOM=has_denom, BLOCK=1024)
    return out, ce, kl, el2n


def kd_loss_scale_(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    """Backward in one launch, in place: ``grad *= grad_output`` (a scalar, or [B] for
    ``reduction="none"``); rows whose factor is exactly 1 are not touched."""
    B, C = grad.shape
    if B == 0 or C == 0:
        return
    block = min(4096, triton.next_power_of_2(C))
    grid = (B, triton.cdiv(C, block))
    _scale_kernel[grid](grad, grad_output.contiguous(), C, grad.stride(0), PER_ROW=grad_output.dim() == 1,
                        BLOCK=block, num_warps=4)


# --- torch.library registration: opaque to torch.compile, traced through by its fake impls ---------


@torch.library.custom_op("kdprune::kd_loss_fwd_triton", mutates_args=("grad",))
def kd_loss_fwd_triton(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                       grad: Optional[torch.Tensor], alpha: float, temperature: float, label_smoothing: float,
                       ignore_index: int, reduction: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return kd_loss_forward(student, teacher, labels, grad, alpha, temperature, label_smoothing, ignore_index,
                           reduction)


@kd_loss_fwd_triton.register_fake
def _(student, teacher, labels, grad, alpha, temperature, label_smoothing, ignore_index, reduction):
    B = student.shape[0]
    f32 = dict(device=student.device, dtype=torch.float32)
    loss = torch.empty((B,) if reduction == NONE else (), **f32)
    return loss, torch.empty(B, **f32), torch.empty(B, **f32), torch.empty(B, **f32)


@torch.library.custom_op("kdprune::kd_loss_bwd_triton_", mutates_args=("grad",))
def kd_loss_bwd_triton_(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    kd_loss_scale_(grad, grad_output)


@kd_loss_bwd_triton_.register_fake
def _(grad, grad_output):
    return None
