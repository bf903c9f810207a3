"""Static scores (GraNd, prototypes, teacher-based, random), score files and the RS2 sampler."""
import json

import numpy as np
import pytest
import torch

from kdprune.data import synthetic, to_float
from kdprune.errors import ConfigError, DataError, StoreError
from kdprune.models import SmallCNN
from kdprune import compute_score
from kdprune.scores import load_scores, save_scores
from kdprune.scores.grand import grand_last_layer, grand_scores
from kdprune.scores.prototypes import kmeans, prototype_scores
from kdprune.loaders.rs2 import RS2Sampler
from kdprune.scores.teacher import scores_from_logits


@pytest.fixture(scope="module")
def tiny():
    # 12 samples of 8x8 keep the per-sample autograd oracle below a second
    ds = synthetic(12, num_classes=3, shape=(8, 8, 1), seed=4)
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, in_channels=1, width=4)
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN is not the identity
        model.train()(to_float(ds.images))
    return ds, model.eval()


def _autograd_norms(model, ds, params):
    out = []
    for i in range(len(ds)):
        model.zero_grad()
        z = model(to_float(ds.images[i:i + 1]))
        torch.nn.functional.cross_entropy(z, torch.tensor(ds.labels[i:i + 1])).backward()
        out.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in params)).item())
    return np.array(out)


def test_grand_matches_per_sample_autograd(tiny):
    ds, model = tiny
    expected = _autograd_norms(model, ds, list(model.parameters()))
    got = grand_scores(model, ds.images, ds.labels, batch_size=5)  # 5: batches of uneven size
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_grand_last_layer_is_the_exact_head_gradient_norm(tiny):
    ds, model = tiny
    expected = _autograd_norms(model, ds, list(model.head.parameters()))
    np.testing.assert_allclose(grand_last_layer(model, ds.images, ds.labels, batch_size=5), expected, rtol=1e-4)


def test_kmeans_finds_separated_blobs_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(40, 2, generator=g) for c in centres])
    cents, assign = kmeans(x, 3, seed=1)
    assert sorted(torch.bincount(assign).tolist()) == [40, 40, 40]
    found = sorted(cents.round().tolist())
    assert found == sorted(centres.tolist())
    again, _ = kmeans(x, 3, seed=1)
    assert torch.equal(cents, again)
    with pytest.raises(ConfigError):
        kmeans(x, 0)


def test_prototype_scores_rank_the_outlier_hardest():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 3, generator=g) * 0.1 + 5, torch.tensor([[9.0, 1.0, 5.0]])])
    s = prototype_scores(x, 1, normalize=False)
    assert s.argmax() == 50 and s.dtype == np.float32


def test_teacher_scores_by_hand():
    # logits ln(p): the softmax is exactly p
    p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    y = torch.tensor([0, 0])
    el2n = scores_from_logits(p.log(), y, "el2n")
    np.testing.assert_allclose(el2n, [np.sqrt(0.09 + 0.04 + 0.01), np.sqrt(0.64 + 0.25 + 0.09)], rtol=1e-5)
    ent = scores_from_logits(p.log(), y, "entropy")
    np.testing.assert_allclose(ent, [-(p[i] * p[i].log()).sum().item() for i in range(2)], rtol=1e-5)
    margin = scores_from_logits(p.log(), y, "margin")
    np.testing.assert_allclose(margin, [0.2 - 0.7, 0.5 - 0.2], rtol=1e-5)  # wrong = positive = harder
    with pytest.raises(ConfigError, match="unknown teacher score"):
        scores_from_logits(p, y, "loss")


def test_random_scores_are_seeded():
    ds = synthetic(50)
    a, b = compute_score("random", ds, seeds=[3]), compute_score("random", ds, seeds=[3])
    assert np.array_equal(a.scores, b.scores) and a.meta["dataset_fingerprint"] == ds.fingerprint
    assert not np.array_equal(a.scores, compute_score("random", ds, seeds=[4]).scores)


@pytest.mark.parametrize("method", ["grand-last", "prototypes"])
def test_static_scores_are_deterministic_under_seeds(method):
    ds = synthetic(40, shape=(8, 8, 1))
    a = compute_score(method, ds, seeds=2, width=4, epochs=0)
    b = compute_score(method, ds, seeds=2, width=4, epochs=0)
    c = compute_score(method, ds, seeds=[5], width=4, epochs=0)
    assert np.array_equal(a.scores, b.scores) and not np.array_equal(a.scores, c.scores)
    assert a.meta["seeds"] == [0, 1] and a.meta["epochs"] == 0


def test_compute_score_bad_input():
    ds = synthetic(20)
    with pytest.raises(ConfigError, match="unknown score method"):
        compute_score("loss", ds)
    with pytest.raises(ConfigError, match="teacher store"):
        compute_score("teacher-el2n", ds)
    with pytest.raises(ConfigError, match="epochs >= 1"):
        compute_score("aum", ds, epochs=0)


# --- score files -----------------------------------------------------------------------------------

def test_score_file_round_trip_and_refusals(tmp_path):
    stem = str(tmp_path / "s" / "el2n")
    save_scores(stem, np.array([0.5, 1.5, 2.5]), {"method": "el2n", "dataset_fingerprint": "fp1"})
    scores, meta = load_scores(stem + ".npy", expect_fingerprint="fp1", expect_num_samples=3)
    assert scores.dtype == np.float32 and scores.tolist() == [0.5, 1.5, 2.5]
    assert meta["method"] == "el2n" and meta["num_samples"] == 3
    with pytest.raises(DataError, match="computed on dataset fp1, not on this one"):
        load_scores(stem, expect_fingerprint="fp2")
    with pytest.raises(DataError, match="dataset has 4 samples"):
        load_scores(stem, expect_num_samples=4)
    with pytest.raises(DataError, match="NaN"):
        save_scores(stem, np.array([1.0, np.nan]), {})
    np.save(stem + ".npy", np.array([1.0, np.nan, 2.0], np.float32))  # a file damaged after writing
    with pytest.raises(DataError, match="1 NaN/inf values"):
        load_scores(stem)
    with pytest.raises(DataError, match="not found"):
        load_scores(str(tmp_path / "missing"))
    (tmp_path / "bad.npy").write_bytes(b"nonsense")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="unreadable"):
        load_scores(str(tmp_path / "bad"))


def test_score_file_size_mismatch(tmp_path):
    stem = str(tmp_path / "s")
    save_scores(stem, np.zeros(3), {"method": "random"})
    meta = json.loads(open(stem + ".json").read())
    meta["num_samples"] = 5
    open(stem + ".json", "w").write(json.dumps(meta))
    with pytest.raises(DataError, match="says 5 samples"):
        load_scores(stem)


# --- RS2 -------------------------------------------------------------------------------------------

# (N, f) pairs where epochs line up with rounds, straddle them, round up past N / 2, and keep all
@pytest.mark.parametrize("n,f", [(20, 0.25), (10, 0.3), (7, 0.5), (101, 0.07), (5, 1.0)])
def test_rs2_without_replacement_across_epochs(n, f):
    rs2 = RS2Sampler(n, f, seed=3)
    m = int(round(f * n))
    epochs = [rs2.ids_for_epoch(e).ids for e in range(4 * n // m + 3)]
    assert all(len(ids) == m and np.all(np.diff(ids) > 0) for ids in epochs)
    # the concatenated stream, cut into rounds of N, holds each id exactly once per round
    stream = np.concatenate([RS2Sampler(n, f, seed=3)._round(r) for r in range(3)])
    for r in range(3):
        assert np.array_equal(np.sort(stream[r * n:(r + 1) * n]), np.arange(n))
    # and the epochs are consecutive slices of that stream
    for e, ids in enumerate(epochs[: 3 * n // m]):
        assert np.array_equal(np.sort(stream[e * m:(e + 1) * m]), ids)


def test_rs2_is_deterministic_and_identical_across_ranks():
    a, b = RS2Sampler(100, 0.2, seed=1), RS2Sampler(100, 0.2, seed=1)
    assert np.array_equal(a.ids_for_epoch(13).ids, b.ids_for_epoch(13).ids)  # out of order, fresh instance
    assert not np.array_equal(a.ids_for_epoch(13).ids, RS2Sampler(100, 0.2, seed=2).ids_for_epoch(13).ids)
    shards = [a.shard(4, distributed=(r, 3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert set(np.concatenate(shards)) == set(a.ids_for_epoch(4).ids)
    a.set_epoch(4)
    assert sorted(a) == sorted(a.ids_for_epoch(4).ids.tolist()) and len(a) == 20


def test_rs2_feeds_a_loader_each_epoch():
    from kdprune.loaders import build

    ds = synthetic(30, shape=(8, 8, 1))
    rs2 = RS2Sampler(len(ds), 0.4, seed=0)
    seen = []
    for e in range(5):
        loader = build("torch", ds, rs2.ids_for_epoch(e), batch_size=5, train=True, seed=0)
        loader.set_epoch(e)
        ids = np.concatenate([b.ids.numpy() for b in loader])
        assert np.array_equal(np.sort(ids), rs2.ids_for_epoch(e).ids)
        seen.append(ids)
    assert len(np.unique(np.concatenate(seen[:2]))) == 24  # no repeats before the data is exhausted


def test_rs2_bad_input():
    with pytest.raises(ConfigError):
        RS2Sampler(10, 0.0)
    with pytest.raises(ConfigError, match="draws none"):
        RS2Sampler(10, 0.01)
    with pytest.raises(ConfigError):
        RS2Sampler(10, 0.5).ids_for_epoch(-1)


def test_teacher_scores_from_a_real_store(tmp_path):
    from kdprune.store import TeacherStore

    ds = synthetic(40, num_classes=5)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 40, 5, generator=g) * 3
    with TeacherStore.create(str(tmp_path / "store"), 40, 5, views=2, dtype="float32",
                             dataset_fingerprint=ds.fingerprint) as w:
        for v in range(2):
            for chunk in torch.arange(40).split(13):  # out of one piece, uneven chunks
                w.write(chunk, logits[v, chunk], view=v)
    y = torch.from_numpy(ds.labels)
    for kind in ("el2n", "entropy", "margin"):
        got = compute_score(f"teacher-{kind}", ds, store=str(tmp_path / "store"))
        expected = (scores_from_logits(logits[0], y, kind) + scores_from_logits(logits[1], y, kind)) / 2
        np.testing.assert_allclose(got.scores, expected.numpy(), rtol=1e-5, atol=1e-6)
        assert got.meta["store_views"] == 2
    other = synthetic(40, num_classes=5, seed=9)
    with pytest.raises(StoreError, match="the teacher store was made from .*recompute it with `kdprune logits`"):
        compute_score("teacher-el2n", other, store=str(tmp_path / "store"))


def test_a_registered_score_method_runs_through_compute_score_and_the_registry_names_the_valid_ones():
    from kdprune.registry import PRUNE_MODES, SCORE_METHODS, register_score

    @register_score("label-parity", kind="model", epochs=0, help="the label's parity (a test score)")
    def label_parity(model, images, labels, *, device):
        return (np.asarray(labels) % 2).astype(np.float32)

    try:
        ds = synthetic(30, num_classes=4)
        got = compute_score("label-parity", ds, width=4)
        assert got.scores.tolist() == (ds.labels % 2).astype(np.float32).tolist()
        assert got.meta["method"] == "label-parity" and got.meta["epochs"] == 0
        with pytest.raises(ConfigError, match="registered already"):
            register_score("label-parity", kind="model")(label_parity)
    finally:
        SCORE_METHODS._entries.pop("label-parity")
    with pytest.raises(ConfigError, match="unknown prune mode 'best'; choose one of hardest, easiest, ccs, random"):
        PRUNE_MODES.check("best")
    with pytest.raises(ConfigError, match="kind is 'model' or 'dynamics'"):
        register_score("x", kind="teacher")
