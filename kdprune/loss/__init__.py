"""The fused knowledge-distillation loss: KL + CE + EL2N, forward and backward, in one pass.

``kd_loss`` (functional) and ``KDLoss`` (module) dispatch to the Triton kernel (CUDA), the C++ kernel
(CPU) or the torch reference ``kd_loss_ref`` (any device, float64); ``alpha_for_fraction`` gives
the distillation weight for a kept fraction of the data.
"""
from kdprune.loss.alpha import alpha_for_fraction
from kdprune.loss.function import kd_loss
from kdprune.loss.module import KDLoss
from kdprune.loss.reference import KDOutput, kd_loss_ref

__all__ = ["kd_loss", "KDLoss", "KDOutput", "alpha_for_fraction", "kd_loss_ref"]
