"""``KDLoss``: the fused KD loss as an ``nn.Module`` holding its settings."""
from __future__ import annotations

from typing import Optional, Union

import torch

from kdprune.loss.function import kd_loss
from kdprune.loss.reference import KDOutput


class KDLoss(torch.nn.Module):
    """``KDLoss(alpha, temperature)(student_logits, teacher_logits, labels) -> KDOutput``.

    ``alpha="auto"`` resolves alpha once, here, from ``fraction`` (the kept fraction of the dataset)
    and ``method`` (how it was pruned: ``"random"`` by default, or the score, e.g. ``"el2n"``, whose
    family wants more KD at small fractions) via ``alpha_for_fraction``; ``self.alpha`` is then the
    number used. The other arguments are those
    of :func:`kdprune.kd_loss` (``backend=`` and ``keep_fraction=`` are the deprecated names of
    ``kernel=`` and ``fraction=``).

    >>> import torch, kdprune
    >>> loss_fn = kdprune.KDLoss(alpha="auto", fraction=0.3, temperature=4.0)
    >>> out = loss_fn(torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,)))
    >>> 0.0 <= loss_fn.alpha <= 1.0 and out.ce.shape == (8,)
    True
    >>> kdprune.KDLoss(alpha="auto", fraction=0.1, method="el2n").alpha > loss_fn.alpha  # score-pruned: more KD
    True
    """

    def __init__(self, alpha: Union[float, str] = 0.5, temperature: float = 4.0, *, reduction: str = "mean",
                 ignore_index: int = -100, label_smoothing: float = 0.0, kernel: str = "auto",
                 fraction: Optional[float] = None, inplace: bool = False, backend: Optional[str] = None,
                 keep_fraction: Optional[float] = None, method: Optional[str] = None):
        super().__init__()
        from kdprune.loss.alpha import resolve_alpha
        from kdprune.loss.function import renamed

        kernel = renamed(kernel, backend, "backend", "kernel", "KDLoss")
        fraction = renamed(fraction, keep_fraction, "keep_fraction", "fraction", "KDLoss")
        self.alpha = resolve_alpha(alpha, fraction, "KDLoss", method=method)
        self.temperature = float(temperature)
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.kernel = kernel
        self.fraction = fraction
        self.inplace = inplace
        # fail at construction, not at the first step
        from kdprune.loss.function import _check_settings
        _check_settings(self.alpha, self.temperature, self.reduction, self.label_smoothing, self.kernel)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> KDOutput:
        return kd_loss(student_logits, teacher_logits, labels, alpha=self.alpha, temperature=self.temperature,
                       reduction=self.reduction, ignore_index=self.ignore_index,
                       label_smoothing=self.label_smoothing, kernel=self.kernel, inplace=self.inplace)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha:g}, temperature={self.temperature:g}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing:g}, kernel={self.kernel!r}")
