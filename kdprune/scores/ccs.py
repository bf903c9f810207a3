"""Coverage-centric coreset selection (CCS, Zheng et al. 2023).

1. Hard cut-off: drop the ``beta`` fraction of samples with the highest scores (likely mislabelled),
   never so many that fewer than the budget remain.
2. Split the remaining score range [min, max] into ``strata`` equal-width bins.
3. Allocate the budget over the bins smallest first: each bin gets
   ``min(its size, remaining budget // bins left)``, so small bins are taken whole and the rest is
   shared evenly; this meets the budget exactly whenever enough samples remain.
4. Sample each bin's share uniformly at random (seeded).

With ``labels`` the budget is first split over classes (equal shares within one, as
``kdprune.prune(class_balanced=True)``) and CCS runs inside each class.
"""
from __future__ import annotations

import numpy as np

from kdprune.errors import ConfigError, DataError


def beta_for_fraction(fraction: float) -> float:
    """The hard cut-off the CCS paper used on CIFAR-10 for a keep fraction: 0 down to keeping 50%,
    then 0.1 at 30%, 0.2 at 20%, 0.3 at 10% (pruning rates 70/80/90%); linear in between."""
    keep = [0.1, 0.2, 0.3, 0.5, 1.0]
    beta = [0.3, 0.2, 0.1, 0.0, 0.0]
    return float(np.interp(fraction, keep, beta))


def strata_edges(scores: np.ndarray, strata: int) -> np.ndarray:
    """Stratum index [N] of each score: ``strata`` equal-width bins over [min, max], the max in the
    last bin."""
    lo, hi = float(scores.min()), float(scores.max())
    if hi == lo:
        return np.zeros(len(scores), np.int64)
    b = np.floor((scores - lo) / (hi - lo) * strata).astype(np.int64)
    return np.minimum(b, strata - 1)


def allocate(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Per-stratum counts: smallest strata first, each ``min(size, budget_left // strata_left)``."""
    sizes = np.asarray(sizes, np.int64)
    take = np.zeros_like(sizes)
    left = int(budget)
    order = np.argsort(sizes, kind="stable")
    for i, s in enumerate(order):
        take[s] = min(sizes[s], left // (len(order) - i))
        left -= take[s]
    return take


def _ccs_one(ids: np.ndarray, scores: np.ndarray, budget: int, beta: float, strata: int,
             rng: np.random.Generator) -> np.ndarray:
    n = len(ids)
    if budget <= 0 or n == 0:
        return ids[:0]
    cut = min(int(round(beta * n)), n - budget)  # never cut below the budget
    if cut > 0:
        keep = np.argsort(-scores, kind="stable")[cut:]
        ids, scores = ids[keep], scores[keep]
    bins = strata_edges(scores, strata)
    sizes = np.bincount(bins, minlength=strata)
    take = allocate(sizes, budget)
    chosen = [rng.permutation(ids[bins == b])[:take[b]] for b in range(strata) if take[b]]
    return np.concatenate(chosen) if chosen else ids[:0]


def class_quotas(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, quota)``: how many of ``k`` ids each class gets so that shares are equal within
    one; a class with fewer samples than its share keeps them all and the others share the rest."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.zeros(len(classes), dtype=np.int64)
    remaining = int(k)
    # water-filling: a class smaller than the fair share keeps all it has, the rest share what is left
    for left, idx in zip(range(len(classes), 0, -1), np.argsort(counts, kind="stable")):
        quota[idx] = min(counts[idx], remaining // left)
        remaining -= quota[idx]
    # hand out the rounding remainder one per class, biggest headroom first
    for idx in np.argsort(-(counts - quota), kind="stable"):
        if remaining == 0:
            break
        if quota[idx] < counts[idx]:
            quota[idx] += 1
            remaining -= 1
    return classes, quota


def ccs_select(scores, k: int, labels=None, seed: int = 0, beta: float | None = None,
               strata: int = 50) -> np.ndarray:
    """Pick ``k`` sample ids by CCS (see the module docstring); returns sorted int64 ids.

    ``beta`` is the hard cut-off fraction (default :func:`beta_for_fraction` of ``k / N``);
    ``strata`` the number of equal-width score bins (50 in the paper)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or not np.isfinite(scores).all():
        raise DataError("CCS needs 1-D finite scores; recompute them with `kdprune score`")
    n = len(scores)
    if not (0 <= k <= n):
        raise ConfigError(f"CCS budget k must lie in [0, {n}], got {k}")
    if strata < 1:
        raise ConfigError(f"CCS needs at least one stratum, got {strata}")
    beta = beta_for_fraction(k / n) if beta is None else float(beta)
    if not (0.0 <= beta < 1.0):
        raise ConfigError(f"CCS hard cut-off beta must lie in [0, 1), got {beta}")
    rng = np.random.default_rng(seed)
    if labels is None:
        ids = _ccs_one(np.arange(n), scores, k, beta, strata, rng)
    else:
        labels = np.asarray(labels, np.int64)
        if len(labels) != n:
            raise DataError(f"{n} scores but {len(labels)} labels")
        classes, quota = class_quotas(labels, k)
        parts = []
        for c, q in zip(classes, quota):
            members = np.flatnonzero(labels == c)
            parts.append(_ccs_one(members, scores[members], int(q), beta, strata, rng))
        ids = np.concatenate(parts)
    return np.sort(ids.astype(np.int64))
