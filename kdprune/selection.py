"""The kept subset as a first-class artefact: :class:`IndexSet` and :func:`prune`."""
from __future__ import annotations

import json
import os

import numpy as np

from kdprune.atomic import atomic_open
from kdprune.errors import ConfigError, DataError
from kdprune.registry import PRUNE_MODES
from kdprune.scores.ccs import class_quotas


def check_fraction(fraction: float) -> float:
    """Return ``fraction`` if it lies in (0, 1], else raise a clear error."""
    try:
        fraction = float(fraction)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"keep fraction must be a number in (0, 1], got {fraction!r}") from err
    if not (0.0 < fraction <= 1.0):
        raise ConfigError(f"keep fraction must lie in (0, 1], got {fraction}; "
                          "e.g. 0.3 keeps 30% of the samples")
    return fraction


class IndexSet:
    """Sorted unique int64 sample ids plus ``meta`` saying how they were chosen
    (method, keep fraction, seed, class balance, dataset fingerprint, num_samples).

    >>> import os, tempfile, kdprune
    >>> kept = kdprune.IndexSet([7, 2, 2, 5], {"method": "manual", "fraction": 0.3, "num_samples": 10})
    >>> kept, kept.ids.tolist()
    (IndexSet(3 ids, method='manual', fraction=0.3), [2, 5, 7])
    >>> stem = os.path.join(tempfile.mkdtemp(), "kept")
    >>> kept.save(stem); kdprune.IndexSet.load(stem).ids.tolist()
    [2, 5, 7]
    """

    def __init__(self, ids, meta: dict | None = None):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise DataError(f"IndexSet ids must be 1-D, got shape {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"IndexSet ids must be integers, got {ids.dtype}")
        ids = np.unique(ids.astype(np.int64))  # sorted, unique
        self.meta = dict(meta or {})
        n = self.meta.get("num_samples")
        if ids.size and (ids[0] < 0 or (n is not None and ids[-1] >= n)):
            raise DataError(f"IndexSet ids must lie in [0, {n}), found [{ids[0]}, {ids[-1]}]")
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"IndexSet({len(self)} ids, method={self.meta.get('method')!r}, fraction={self.meta.get('fraction')})"

    def check_dataset(self, num_samples: int, fingerprint: str | None = None, *,
                      name: str | None = None) -> "IndexSet":
        """Raise if this set was made for another dataset (size or fingerprint; ``name`` names the
        dataset in the error); return self."""
        from kdprune.provenance import require_same

        require_same(self.meta, (fingerprint, name), what=f"the subset {getattr(self, 'stem', None) or '(IndexSet)'}",
                     fix="prune this dataset with `kdprune prune --dataset ...`, or use the subset's dataset")
        if self.ids.size and self.ids[-1] >= num_samples:
            raise DataError(f"IndexSet id {self.ids[-1]} is out of range for a dataset of {num_samples} samples")
        return self

    def save(self, stem) -> None:
        """Write ``stem.npy`` (the ids) and ``stem.json`` (the meta), each atomically (``stem`` str or
        os.PathLike)."""
        stem = os.fspath(stem)
        with atomic_open(stem + ".npy", "wb") as f:
            np.save(f, self.ids)
        meta = {**self.meta, "count": len(self)}
        with atomic_open(stem + ".json") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, stem) -> "IndexSet":
        """Read an IndexSet written by :meth:`save` (``stem`` with or without ``.npy``/``.json``; str or
        os.PathLike)."""
        stem = os.fspath(stem)
        stem = stem[:-4] if stem.endswith((".npy", ".json")) and not stem.endswith(".json") else stem
        stem = stem[:-5] if stem.endswith(".json") else stem
        for ext in (".npy", ".json"):
            if not os.path.exists(stem + ext):
                raise DataError(f"IndexSet file {stem + ext} not found; create it with `kdprune prune`")
        try:
            ids = np.load(stem + ".npy", allow_pickle=False)
            with open(stem + ".json") as f:
                meta = json.load(f)
        except (ValueError, OSError, json.JSONDecodeError) as err:
            raise DataError(f"IndexSet {stem} is unreadable ({err}); re-run `kdprune prune`") from err
        if meta.get("count", len(ids)) != len(ids):
            raise DataError(f"IndexSet {stem}: the JSON says {meta['count']} ids but the .npy holds {len(ids)}")
        index = cls(ids, meta)
        index.stem = stem
        return index


def _class_balanced_take(order: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Take ``k`` ids from ``order`` (best first) with the per-class quotas of :func:`class_quotas`."""
    classes, quota = class_quotas(labels, k)
    pos = np.searchsorted(classes, labels[order])
    return np.concatenate([order[pos == c][: quota[c]] for c in range(len(classes))])


def _check_prune_scores(scores) -> np.ndarray:
    from kdprune.scores.io import check_scores

    return check_scores(getattr(scores, "scores", scores), dtype=np.float64)  # a ScoreFile or an array


def prune(scores=None, fraction: float = 1.0, *, mode: str | None = None, labels=None,
          class_balanced: bool = False, seed: int = 0, dataset_fingerprint: str | None = None,
          method: str | None = None, beta: float | None = None, strata: int = 50) -> IndexSet:
    """Keep ``round(fraction * N)`` ids.

    ``mode`` (case-insensitive): ``"hardest"`` (the default with scores: the highest scores, oriented
    so that higher means harder, as `kdprune prune` does), ``"easiest"`` (lowest), ``"ccs"``
    (coverage-centric stratified sampling, :func:`kdprune.scores.ccs.ccs_select`, with hard cut-off
    ``beta`` and ``strata`` bins), or ``"random"`` (the default without scores; seeded, N from
    ``labels``). ``class_balanced`` keeps each class's share equal (within one). Ties between equal
    scores are broken by a seeded random key, never by id.

    ``scores`` may be a ScoreFile (from :func:`kdprune.load_scores`): its method and dataset
    fingerprint go into the IndexSet's meta (``scores_method``, ``scores_fingerprint``), and a
    ``dataset_fingerprint`` given as well must match it.

    >>> import kdprune
    >>> kept = kdprune.prune([0.1, 0.9, 0.4, 0.8, 0.2], fraction=0.4)  # the 2 hardest of 5
    >>> kept, kept.ids.tolist()
    (IndexSet(2 ids, method='hardest', fraction=0.4), [1, 3])
    >>> kdprune.prune(labels=[0, 0, 1, 1, 1, 1], fraction=0.5, class_balanced=True, seed=3).ids.tolist()
    [1, 2, 5]
    """
    fraction = check_fraction(fraction)
    mode = ("hardest" if scores is not None else "random") if mode is None else str(mode).lower()
    smeta = getattr(scores, "meta", None) if scores is not None else None
    smeta = smeta if isinstance(smeta, dict) else {}
    if smeta.get("dataset_fingerprint"):
        from kdprune.provenance import require_same
        require_same(smeta, dataset_fingerprint, what=f"the {smeta.get('method', '')} scores",
                     fix="compute the scores on this dataset with `kdprune score --dataset ...`")
        dataset_fingerprint = dataset_fingerprint or smeta["dataset_fingerprint"]
    if scores is None and labels is None:
        raise ConfigError("prune needs scores, or labels for random pruning (to know N)")
    if scores is not None:
        scores = _check_prune_scores(scores)
    n = len(scores) if scores is not None else len(labels)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise DataError(f"{n} scores but labels of shape {labels.shape}")
    if class_balanced and labels is None:
        raise ConfigError("class_balanced pruning needs labels")
    k = int(round(fraction * n))
    if k == 0:
        raise ConfigError(f"keep fraction {fraction} of {n} samples keeps none; use a larger fraction")
    if mode != "random" and scores is None:
        raise ConfigError(f"mode {mode!r} needs scores; use mode='random' without scores")
    rng = np.random.default_rng(seed)
    extra = {}
    if mode == "random":
        order = rng.permutation(n)
    elif mode in ("hardest", "easiest"):
        tie = rng.random(n)  # seeded tie-break, so equal scores do not favour low ids
        order = np.lexsort((tie, -scores if mode == "hardest" else scores))
    elif mode == "ccs":
        from kdprune.scores.ccs import beta_for_fraction, ccs_select
        beta = beta_for_fraction(k / n) if beta is None else float(beta)
        order = ccs_select(scores, k, labels=labels if class_balanced else None, seed=seed, beta=beta,
                           strata=strata)
        extra = {"beta": beta, "strata": int(strata)}
    else:
        PRUNE_MODES.check(mode)  # names the valid modes
        raise ConfigError(f"prune mode {mode!r} is registered but prune() does not implement it")
    if class_balanced and mode != "ccs":  # ccs balances classes itself
        ids = _class_balanced_take(order, labels, k)
    else:
        ids = order[:k]
    if smeta.get("method") and not method:
        method = f"{smeta['method']}-{mode}"
    meta = {"method": method or mode, "mode": mode, "fraction": fraction, "seed": seed,
            "class_balanced": bool(class_balanced), "num_samples": n,
            "dataset_fingerprint": dataset_fingerprint, **extra}
    if smeta:
        meta.update({"scores_method": smeta.get("method"), "scores_fingerprint": smeta.get("dataset_fingerprint")})
        if smeta.get("dataset") and "dataset" not in meta:
            meta["dataset"] = smeta["dataset"]
    return IndexSet(ids, meta)
