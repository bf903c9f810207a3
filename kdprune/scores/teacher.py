"""Teacher-based scores from stored teacher logits: free once the store exists (no training).

For the teacher's softmax ``p`` of sample i with label y (all higher = harder):
- ``el2n``: ``||p - onehot(y)||_2``;
- ``entropy``: ``-sum_j p_j log p_j`` (an unsure teacher);
- ``margin``: ``-(p_y - max_{j != y} p_j)`` (the negated probability margin; a sample the teacher
  gets wrong has a negative margin, so a positive score).
"""
from __future__ import annotations

import numpy as np
import torch

from kdprune.errors import ConfigError, DataError

KINDS = ("el2n", "entropy", "margin")


def scores_from_logits(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """One of :data:`KINDS` per row of ``logits`` [B, C] (any float dtype), float32 [B]."""
    z = logits.float()
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    if kind == "el2n":
        p = p.clone()
        p[torch.arange(len(labels)), labels] -= 1.0
        return p.norm(dim=1)
    if kind == "entropy":
        return torch.special.entr(p).sum(1)  # 0 * log 0 = 0 for the classes a top-k store dropped
    if kind == "margin":
        assigned = p.gather(1, labels[:, None]).squeeze(1)
        other = p.scatter(1, labels[:, None], float("-inf")).amax(1)
        return other - assigned
    raise ConfigError(f"unknown teacher score {kind!r}; choose one of {', '.join(KINDS)}")


def teacher_scores(store, labels, kind: str = "el2n", *, views=None, chunk: int = 8192) -> np.ndarray:
    """``kind`` scores of a :class:`~kdprune.TeacherStore` (or a path to one) against ``labels``,
    float32[N], averaged over ``views`` (default: every view the store holds). Reads the store in
    chunks of ``chunk`` samples, so memory stays O(chunk * C)."""
    if not hasattr(store, "gather"):  # a path: str or os.PathLike
        from kdprune.store import TeacherStore
        store = TeacherStore.open(store)
    labels = np.asarray(labels, np.int64)
    n = int(store.num_samples)
    if len(labels) != n:
        raise DataError(f"the teacher store holds {n} samples but {len(labels)} labels were given; "
                        "was the store made for another dataset?")
    if kind not in KINDS:
        raise ConfigError(f"unknown teacher score {kind!r}; choose one of {', '.join(KINDS)}")
    views = list(range(int(getattr(store, "views", 1)))) if views is None else list(views)
    total = np.zeros(n, np.float64)
    for start in range(0, n, chunk):
        ids = torch.arange(start, min(start + chunk, n), dtype=torch.int64)
        y = torch.from_numpy(labels[start:start + len(ids)])
        for v in views:
            total[start:start + len(ids)] += scores_from_logits(store.gather(ids, view=v), y, kind).double().numpy()
    return (total / len(views)).astype(np.float32)
