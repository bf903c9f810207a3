"""The trainer's per-sample EL2N table: :class:`kdprune.scores.dynamics.EL2NTable` reduced over the
ranks of a DDP run, one float16 row per epoch plus the float32 running mean (``el2n.npy`` and
``el2n_epochs.npy`` of a run's output)."""
from __future__ import annotations

from kdprune.scores.dynamics import EL2NTable
from kdprune.train import distributed as dist


class ScoreTable(EL2NTable):
    """``rows()`` -> float16 ``[epochs_done, num_samples]``; ``score()`` -> float32 mean over epochs."""

    def __init__(self, num_samples: int, device):
        super().__init__(num_samples, device, reduce=dist.all_reduce_sum)
