"""``kd_loss``: input checks, kernel choice and the autograd.Function over the fused ops.

Kernels (an explicit string, chosen once per call; :data:`kdprune.registry.LOSS_KERNELS` lists them):

- ``"cpu"``: ``torch.ops.kdprune.kd_loss_fwd`` from ``csrc/kd_loss.cpp`` (CPU tensors);
- ``"triton"``: ``torch.ops.kdprune.kd_loss_fwd_triton`` from ``kdprune.kernels.kd_loss`` (CUDA
  tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
- ``"torch"``: the pure-torch reference ``kd_loss_ref`` (any device, float64 too), differentiated by
  autograd;
- ``"auto"``: CUDA -> ``"triton"`` (``"torch"`` without triton); CPU -> ``"cpu"`` when the extension is
  built, else ``"torch"``; float64 (or any dtype the kernels do not take) -> ``"torch"``.

Both fused ops compute the gradient of the reduced loss in the forward pass into a buffer (a fresh
one, or the student logits themselves with ``inplace=True``); backward only scales it in place by
``grad_output``, skipping rows whose factor is exactly 1, and hands the buffer on. So backward runs
once per forward (a second backward, e.g. with ``retain_graph=True``, raises). Under
``torch.no_grad()`` (or when the student does not require grad) no B x C buffer is allocated.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Union

import torch

from kdprune.errors import ConfigError
from kdprune.loss.alpha import resolve_alpha
from kdprune.loss.reference import REDUCTIONS, KDOutput, kd_loss_ref
from kdprune.registry import LOSS_KERNELS

KERNELS = LOSS_KERNELS.names()
_REDUCTION_CODE = {"none": 0, "mean": 1, "sum": 2}
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fake_forward(student, teacher, labels, grad, alpha, temperature, label_smoothing, ignore_index, reduction):
    B = student.shape[0]
    f32 = dict(device=student.device, dtype=torch.float32)
    loss = torch.empty((B,) if reduction == 0 else (), **f32)
    return loss, torch.empty(B, **f32), torch.empty(B, **f32), torch.empty(B, **f32)


def _fake_backward(grad, grad_output):
    return None


def _register_cpu_op() -> bool:
    """Load the C++ op and give it a fake impl, so torch.compile can trace it; False when unbuilt."""
    from kdprune import _native

    # an extension built before csrc/kd_loss.cpp existed lacks the op: treat it as unbuilt
    if not _native.available() or not hasattr(torch.ops.kdprune, "kd_loss_fwd"):
        return False
    torch.library.register_fake("kdprune::kd_loss_fwd")(_fake_forward)
    torch.library.register_fake("kdprune::kd_loss_bwd_")(_fake_backward)
    return True


def _register_triton_ops() -> bool:
    """Import the Triton kernels (which registers their ops) where they can run: with CUDA, or under
    TRITON_INTERPRET=1. Done at import, because ops cannot be registered while torch.compile traces."""
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    try:
        import kdprune.kernels.kd_loss  # noqa: F401
    except ImportError:
        return False
    return True


_HAS_CPU_OP = _register_cpu_op()
_HAS_TRITON_OPS = _register_triton_ops()


def renamed(new_value, old_value, old: str, new: str, who: str):
    """The value of a keyword renamed from ``old`` to ``new``: ``old`` still works, with a
    DeprecationWarning, for one release."""
    if old_value is None:
        return new_value
    warnings.warn(f"{who}: {old}= is deprecated, use {new}=", DeprecationWarning, stacklevel=3)
    return old_value


def resolve_kernel(backend: str, device: torch.device) -> str:
    """The concrete kernel for ``backend`` (a name of :data:`KERNELS`) on ``device``, with an error naming
    the fix when the pair cannot work."""
    if backend not in KERNELS:
        raise ConfigError(f"kd_loss: kernel must be one of {KERNELS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if _HAS_TRITON_OPS else "torch"
        return "cpu" if device.type == "cpu" and _HAS_CPU_OP else "torch"
    if backend == "cpu" and device.type != "cpu":
        raise ConfigError(f"kd_loss: kernel='cpu' needs CPU tensors, got {device}; use kernel='auto'")
    if backend == "cpu" and not _HAS_CPU_OP:
        raise ConfigError("kd_loss: kernel='cpu' needs the C++ extension kdprune._C; build it with "
                          "`pip install -e . --no-build-isolation`, or use kernel='torch'")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(f"kd_loss: kernel='triton' needs CUDA tensors, got {device} "
                          "(or set TRITON_INTERPRET=1 before importing triton); use kernel='auto'")
    if backend == "triton" and not _HAS_TRITON_OPS:
        raise ConfigError("kd_loss: kernel='triton' needs triton (`pip install triton`) and CUDA; "
                          "use kernel='torch' without them")
    return backend


resolve_backend = resolve_kernel


def _check_settings(alpha, temperature, reduction, label_smoothing, backend):
    """The scalar settings, checked once (by KDLoss at construction, by kd_loss per call)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"kd_loss: alpha must be in [0, 1] (the weight of the distillation term), got {alpha}")
    if not temperature > 0.0:
        raise ConfigError(f"kd_loss: temperature must be > 0, got {temperature}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ConfigError(f"kd_loss: label_smoothing must be in [0, 1], got {label_smoothing}")
    if reduction not in REDUCTIONS:
        raise ConfigError(f"kd_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backend not in KERNELS:
        raise ConfigError(f"kd_loss: kernel must be one of {KERNELS}, got {backend!r}")


def _check_tensors(student, teacher, labels, backend, inplace=False):
    if student.dim() != 2:
        raise ValueError(f"kd_loss: student logits must be [B, C], got shape {tuple(student.shape)}")
    if teacher is None or teacher.shape != student.shape:
        got = None if teacher is None else tuple(teacher.shape)
        raise ValueError(f"kd_loss: teacher logits must have the student's shape {tuple(student.shape)}, got {got}")
    if labels.shape != (student.shape[0],):
        raise ValueError(f"kd_loss: labels must be [B] = [{student.shape[0]}], got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"kd_loss: labels must be an integer tensor, got {labels.dtype}")
    if student.device != teacher.device or student.device != labels.device:
        raise ValueError(f"kd_loss: student ({student.device}), teacher ({teacher.device}) and labels "
                         f"({labels.device}) must be on one device")
    if inplace and not student.is_contiguous():
        raise ValueError("kd_loss: inplace=True writes the gradient into the student logits, which must then be "
                         "contiguous; call .contiguous() first or drop inplace")
    if backend != "torch":
        for name, x in (("student", student), ("teacher", teacher)):
            if x.dtype not in _KERNEL_DTYPES:
                raise ValueError(f"kd_loss: kernel {backend!r} takes float32/bfloat16/float16 {name} logits, got "
                                 f"{x.dtype}; use kernel='torch' for {x.dtype}")


class _FusedKDLoss(torch.autograd.Function):
    """Forward runs a fused op that also writes the gradient; backward scales it in place."""

    @staticmethod
    def forward(ctx, student, teacher, labels, alpha, temperature, label_smoothing, ignore_index, reduction,
                backend, inplace, needs_grad):
        grad = None
        if needs_grad:
            grad = student if inplace else torch.empty_like(student, memory_format=torch.contiguous_format)
        code = _REDUCTION_CODE[reduction]
        op = torch.ops.kdprune.kd_loss_fwd if backend == "cpu" else torch.ops.kdprune.kd_loss_fwd_triton
        loss, ce, kl, el2n = op(student, teacher, labels, grad, alpha, temperature, label_smoothing,
                                ignore_index, code)
        ctx.backend, ctx.done = backend, False
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(ce, kl, el2n)
        return loss, ce, kl, el2n

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if ctx.done:
            raise RuntimeError("kd_loss: a second backward through the same loss (retain_graph=True) is not "
                               "supported: the fused gradient buffer was already scaled and handed on. "
                               "Recompute the loss, or use kernel='torch'")
        ctx.done = True
        (grad,) = ctx.saved_tensors
        if ctx.backend == "cpu":
            torch.ops.kdprune.kd_loss_bwd_(grad, grad_loss)
        else:
            torch.ops.kdprune.kd_loss_bwd_triton_(grad, grad_loss)
        return grad, None, None, None, None, None, None, None, None, None, None


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            alpha: Union[float, str], temperature: float, reduction: str = "mean", ignore_index: int = -100,
            label_smoothing: float = 0.0, kernel: str = "auto", fraction: Optional[float] = None,
            inplace: bool = False, backend: Optional[str] = None,
            keep_fraction: Optional[float] = None) -> KDOutput:
    """Fused knowledge-distillation loss.

    Per sample ``(1 - alpha) * CE_eps(z, y) + alpha * T^2 * KL(softmax(t/T) || softmax(z/T))``, reduced by
    ``reduction`` (``"mean"`` divides by the number of rows whose label is not ``ignore_index``, at least 1).
    Returns ``KDOutput(loss, ce, kl, el2n)``: ``loss`` is fp32; ``ce``, ``kl`` (at T, without T^2) and
    ``el2n = ||softmax(z) - onehot(y)||_2`` are detached fp32 [B], 0 on ignored rows.

    ``kernel``: ``"auto"`` (default), ``"triton"``, ``"cpu"`` or ``"torch"`` (see the module
    docstring). ``alpha="auto"`` takes ``alpha_for_fraction(fraction)``, ``fraction`` being the kept
    fraction of the dataset. ``inplace=True`` writes the gradient into ``student_logits`` (saving a
    B x C buffer; the logits are overwritten, so nothing else may use them after this call). The
    gradient flows to the student only; the teacher is a constant. ``backend=`` and
    ``keep_fraction=`` are the deprecated names of ``kernel=`` and ``fraction=``.

    >>> import torch
    >>> from kdprune import kd_loss
    >>> z, t, y = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10), torch.tensor([1, 0, 3, 9])
    >>> out = kd_loss(z, t, y, alpha=0.5, temperature=4.0)
    >>> out.loss.backward(); out.el2n.shape
    torch.Size([4])
    """
    backend = renamed(kernel, backend, "backend", "kernel", "kd_loss")
    fraction = renamed(fraction, keep_fraction, "keep_fraction", "fraction", "kd_loss")
    alpha = resolve_alpha(alpha, fraction, "kd_loss")
    temperature, label_smoothing = float(temperature), float(label_smoothing)
    _check_settings(alpha, temperature, reduction, label_smoothing, backend)
    chosen = resolve_kernel(backend, student_logits.device)
    if backend == "auto" and teacher_logits is not None and \
            {student_logits.dtype, teacher_logits.dtype} - set(_KERNEL_DTYPES):
        chosen = "torch"  # float64 and friends: only the reference computes in them
    _check_tensors(student_logits, teacher_logits, labels, chosen, inplace)
    if chosen == "torch":
        return kd_loss_ref(student_logits, teacher_logits, labels, alpha=alpha, temperature=temperature,
                           reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing)
    labels = labels if labels.dtype == torch.int64 else labels.long()
    teacher = teacher_logits.detach()
    needs_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, ce, kl, el2n = _FusedKDLoss.apply(student_logits, teacher, labels, alpha, temperature, label_smoothing,
                                            int(ignore_index), reduction, chosen, bool(inplace), needs_grad)
    return KDOutput(loss, ce, kl, el2n)
