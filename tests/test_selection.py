"""IndexSet and prune: invariants over random inputs, hand-checked CCS strata, bad input."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kdprune import IndexSet, prune
from kdprune.errors import ConfigError, DataError
from kdprune.scores.ccs import allocate, beta_for_fraction, ccs_select, strata_edges

MODES = ("random", "hardest", "easiest", "ccs")


def _labels(n, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


# Sizes up to 300 and up to 7 classes reach every branch (classes smaller than their share, rounding
# remainders, ties) while 40 examples per mode keep the file well under a few seconds.
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), classes=st.integers(1, 7), f=st.floats(0.001, 1.0), seed=st.integers(0, 99),
       mode=st.sampled_from(MODES), balanced=st.booleans(), ties=st.booleans())
def test_indexset_invariants(n, classes, f, seed, mode, balanced, ties):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    scores = rng.integers(0, 3, n).astype(float) if ties else rng.standard_normal(n)
    k = int(round(f * n))
    if k == 0:
        with pytest.raises(ConfigError, match="keeps none"):
            prune(scores, f, mode=mode, labels=labels, class_balanced=balanced, seed=seed)
        return
    idx = prune(scores, f, mode=mode, labels=labels, class_balanced=balanced, seed=seed)
    ids = idx.ids
    assert ids.dtype == np.int64 and len(idx) == k
    assert np.all(np.diff(ids) > 0), "sorted and unique"
    assert ids[0] >= 0 and ids[-1] < n
    if balanced:
        present, counts = np.unique(labels, return_counts=True)
        kept = np.bincount(labels[ids], minlength=classes)[present]
        # within one, except classes too small for their share, which are kept whole
        partial = kept[kept < counts]
        if partial.size:
            # no class gets more than one above a class that could have given more
            assert kept.max() - partial.min() <= 1
    again = prune(scores, f, mode=mode, labels=labels, class_balanced=balanced, seed=seed)
    assert np.array_equal(again.ids, ids), "same seed, same subset"
    assert idx.meta["fraction"] == f and idx.meta["num_samples"] == n and idx.meta["mode"] == mode


def test_hardest_and_easiest_pick_the_extremes():
    scores = np.array([0.5, 3.0, -1.0, 2.0, 0.0, 1.0])
    assert prune(scores, 0.5, mode="hardest").ids.tolist() == [1, 3, 5]
    assert prune(scores, 0.5, mode="easiest").ids.tolist() == [0, 2, 4]


def test_ties_are_broken_by_seed_not_by_id():
    scores = np.zeros(1000)
    a = prune(scores, 0.1, mode="hardest", seed=0).ids
    b = prune(scores, 0.1, mode="hardest", seed=1).ids
    assert not np.array_equal(a, b)
    assert a.max() > 500  # not simply the lowest ids


def test_random_differs_by_seed_and_needs_only_labels():
    labels = _labels(500, 5)
    a, b = prune(None, 0.2, labels=labels, seed=0), prune(None, 0.2, labels=labels, seed=1)
    assert len(a) == 100 and not np.array_equal(a.ids, b.ids)


@pytest.mark.parametrize("f", [0, -0.1, 1.01, float("nan"), "x"])
def test_bad_fraction(f):
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        prune(None, f, labels=np.zeros(10, int))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_are_refused(bad):
    scores = np.ones(10)
    scores[3] = bad
    with pytest.raises(DataError, match="NaN/inf.*ids \\[3\\]"):
        prune(scores, 0.5, mode="hardest")


def test_other_bad_input():
    with pytest.raises(DataError, match="labels"):
        prune(np.ones(10), 0.5, labels=np.zeros(9, int))
    with pytest.raises(ConfigError, match="needs labels"):
        prune(np.ones(10), 0.5, class_balanced=True)
    with pytest.raises(ConfigError, match="needs scores"):
        prune(None, 0.5, mode="hardest", labels=np.zeros(10, int))
    with pytest.raises(ConfigError, match="unknown prune mode"):
        prune(np.ones(10), 0.5, mode="middle")
    with pytest.raises(DataError, match="1-D"):
        prune(np.ones((2, 5)), 0.5, mode="hardest")


def test_indexset_round_trip_and_checks(tmp_path):
    idx = prune(np.arange(20.0), 0.25, mode="hardest", dataset_fingerprint="abc")
    idx.save(str(tmp_path / "keep"))
    back = IndexSet.load(str(tmp_path / "keep.npy"))
    assert back.ids.tolist() == [15, 16, 17, 18, 19] and back.meta["dataset_fingerprint"] == "abc"
    with pytest.raises(DataError, match=r"made from an unnamed dataset \(fingerprint abc\).*used with .*xyz"):
        back.check_dataset(20, "xyz")
    with pytest.raises(DataError, match="out of range"):
        back.check_dataset(10)
    meta = json.loads((tmp_path / "keep.json").read_text())
    meta["count"] = 4
    (tmp_path / "keep.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="says 4 ids"):
        IndexSet.load(str(tmp_path / "keep"))
    with pytest.raises(DataError, match="lie in"):
        IndexSet([0, 5], {"num_samples": 5})


# --- CCS -------------------------------------------------------------------------------------------

def _scripted_strata():
    """Scores in 4 equal-width strata over [0, 4] holding 1, 2, 10 and 20 samples, plus 3 outliers at
    the top (score 100) that the hard cut-off must drop first."""
    parts = [np.full(1, 0.5), np.full(2, 1.5), np.full(10, 2.5), np.full(20, 3.5)]
    return np.concatenate(parts)


def test_allocation_smallest_strata_first():
    # budget 12 over sizes (1, 2, 10, 20): 1 (all), 2 (all), min(10, 9 // 2) = 4, the rest 5
    assert allocate(np.array([1, 2, 10, 20]), 12).tolist() == [1, 2, 4, 5]
    assert allocate(np.array([20, 1, 10, 2]), 12).tolist() == [5, 1, 4, 2]
    assert allocate(np.array([3, 3, 3]), 9).tolist() == [3, 3, 3]
    assert allocate(np.array([0, 7]), 5).tolist() == [0, 5]


def test_ccs_strata_sizes_and_cut_off():
    body = np.concatenate([_scripted_strata(), [4.0]])  # 4.0 puts the max at the top of stratum 4
    scores = np.concatenate([body, np.full(3, 100.0)])  # 3 mislabelled-looking outliers
    n = len(scores)  # 37
    ids = ccs_select(scores, 12, beta=3 / n, strata=4, seed=0)
    assert len(ids) == 12 and not np.isin(np.arange(n - 3, n), ids).any(), "the cut-off drops the top 3"
    bins = strata_edges(body, 4)
    assert np.bincount(bins, minlength=4).tolist() == [1, 2, 10, 21]
    assert np.bincount(bins[ids], minlength=4).tolist() == [1, 2, 4, 5]


def test_ccs_cut_off_never_cuts_below_budget():
    scores = np.arange(10.0)
    ids = ccs_select(scores, 9, beta=0.5, strata=3)
    assert len(ids) == 9 and 9 not in ids  # only the single hardest could be cut


def test_ccs_deterministic_and_class_balanced():
    rng = np.random.default_rng(3)
    scores, labels = rng.standard_normal(1000), _labels(1000, 10, 3)
    a = ccs_select(scores, 200, labels=labels, seed=5)
    assert np.array_equal(a, ccs_select(scores, 200, labels=labels, seed=5))
    assert not np.array_equal(a, ccs_select(scores, 200, labels=labels, seed=6))
    assert np.bincount(labels[a]).tolist() == [20] * 10


def test_ccs_default_beta_follows_the_paper_table():
    assert beta_for_fraction(0.1) == pytest.approx(0.3) and beta_for_fraction(0.3) == pytest.approx(0.1)
    assert beta_for_fraction(0.5) == 0.0 and beta_for_fraction(0.9) == 0.0
    idx = prune(np.arange(100.0), 0.1, mode="ccs")
    assert idx.meta["beta"] == pytest.approx(0.3) and idx.ids.max() < 70


def test_ccs_bad_input():
    with pytest.raises(ConfigError, match="beta"):
        ccs_select(np.arange(10.0), 5, beta=1.0)
    with pytest.raises(DataError, match="finite"):
        ccs_select(np.array([1.0, np.nan]), 1)
