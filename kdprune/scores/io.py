"""Score files: ``stem.npy`` (float32[N], higher = harder) plus ``stem.json`` (provenance).

The JSON holds at least ``method``, ``num_samples`` and ``dataset_fingerprint``, so a score file made
on one dataset is refused on another instead of silently pruning the wrong samples.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from kdprune.errors import DataError
from kdprune.atomic import atomic_open


class ScoreFile(NamedTuple):
    """What :func:`load_scores` returns: ``scores`` float32[N] and ``meta`` (the provenance dict)."""

    scores: np.ndarray
    meta: dict


def _stem(path: str) -> str:
    for ext in (".npy", ".json"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def check_scores(scores, what: str = "scores", dtype=np.float32) -> np.ndarray:
    """``scores`` as a 1-D ``dtype`` array; raise a clear error on another shape or NaN/inf."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise DataError(f"{what} must be 1-D [N], got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.number):
        raise DataError(f"{what} must be numbers, got dtype {scores.dtype}")
    scores = scores.astype(dtype)
    bad = ~np.isfinite(scores)
    if bad.any():
        ids = np.flatnonzero(bad)[:5].tolist()
        raise DataError(f"{what} hold {int(bad.sum())} NaN/inf values (e.g. at ids {ids}); "
                        "recompute them with `kdprune score`")
    return scores


def save_scores(stem: str, scores, meta: dict) -> None:
    """Write ``stem.npy`` (float32[N]) and ``stem.json`` (``meta`` + ``num_samples``), each atomically.
    NaN or infinite scores are refused.

    >>> import os, tempfile, kdprune
    >>> folder = tempfile.mkdtemp()
    >>> kdprune.save_scores(os.path.join(folder, "el2n"), [0.5, 0.125, 2.0], {"method": "el2n"})
    >>> sorted(os.listdir(folder))
    ['el2n.json', 'el2n.npy']
    """
    stem = _stem(stem)
    scores = check_scores(scores)
    meta = {**meta, "num_samples": int(len(scores)), "dtype": "float32", "orientation": "higher = harder"}
    with atomic_open(stem + ".npy", "wb") as f:
        np.save(f, scores)
    with atomic_open(stem + ".json") as f:
        json.dump(meta, f, indent=2)


def load_scores(stem: str, expect_fingerprint: str | None = None,
                expect_num_samples: int | None = None) -> ScoreFile:
    """Read a score file written by :func:`save_scores`.

    Raises :class:`~kdprune.errors.DataError` when a file is missing or unreadable, when the sizes of
    the ``.npy`` and the ``.json`` disagree, when a score is NaN/inf, or when ``expect_fingerprint`` /
    ``expect_num_samples`` name another dataset than the one the scores were computed on.

    >>> import os, tempfile, kdprune
    >>> stem = os.path.join(tempfile.mkdtemp(), "el2n")
    >>> kdprune.save_scores(stem, [0.5, 0.125, 2.0], {"method": "el2n", "dataset_fingerprint": "abc"})
    >>> loaded = kdprune.load_scores(stem, expect_fingerprint="abc", expect_num_samples=3)
    >>> loaded.scores.tolist(), loaded.meta["method"], loaded.meta["num_samples"]
    ([0.5, 0.125, 2.0], 'el2n', 3)
    """
    stem = _stem(stem)
    for ext in (".npy", ".json"):
        if not os.path.exists(stem + ext):
            raise DataError(f"score file {stem + ext} not found; compute it with "
                            f"`kdprune score --method M --out {stem}`")
    try:
        scores = np.load(stem + ".npy", allow_pickle=False)
        with open(stem + ".json") as f:
            meta = json.load(f)
    except (ValueError, OSError) as err:  # JSONDecodeError is a ValueError
        raise DataError(f"score file {stem} is unreadable ({err}); recompute it with `kdprune score`") from err
    scores = check_scores(scores, what=f"scores in {stem}.npy")
    if meta.get("num_samples", len(scores)) != len(scores):
        raise DataError(f"score file {stem}: the JSON says {meta['num_samples']} samples but the .npy "
                        f"holds {len(scores)}; recompute it with `kdprune score`")
    theirs = meta.get("dataset_fingerprint")
    if expect_fingerprint and theirs and theirs != expect_fingerprint:
        raise DataError(f"score file {stem} was computed on dataset {theirs}, not on this one "
                        f"({expect_fingerprint}); recompute the scores on this dataset with `kdprune score`")
    if expect_num_samples is not None and len(scores) != expect_num_samples:
        raise DataError(f"score file {stem} holds {len(scores)} scores but the dataset has "
                        f"{expect_num_samples} samples; recompute the scores on this dataset")
    return ScoreFile(scores, meta)
