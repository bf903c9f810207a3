"""Training-dynamics recorders on scripted histories, and their end-to-end run through fit."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdprune.errors import DataError
from kdprune.scores.dynamics import AUMRecorder, EL2NRecorder, ForgettingRecorder, average


def _logits_for(correct, labels, C=3):
    """Logits whose argmax is the label where ``correct`` and (label + 1) % C elsewhere."""
    labels = torch.as_tensor(labels)
    pred = torch.where(torch.as_tensor(correct, dtype=torch.bool), labels, (labels + 1) % C)
    return torch.nn.functional.one_hot(pred, C).float() * 5.0


def test_forgetting_counts_on_a_scripted_history():
    # rows: samples, columns: correctness at presentations 1..6
    history = np.array([
        [0, 1, 0, 1, 0, 1],  # learned, forgotten twice (1->0 at 3 and 5)
        [1, 1, 1, 1, 1, 1],  # learned at once, never forgotten: 0
        [0, 0, 0, 0, 0, 0],  # never learned: ranked above all, score = presentations = 6
        [1, 0, 0, 0, 0, 0],  # forgotten once, never relearned: 1
        [0, 0, 0, 0, 0, 1],  # learned at the end: 0
        [1, 0, 1, 0, 1, 0],  # forgotten three times: 3 (the most a learned sample can reach in 6)
    ])
    rec = ForgettingRecorder(6)
    for col in history.T:
        rec.update(np.arange(6), col)
    assert rec.finalize().tolist() == [2, 0, 6, 1, 0, 3]


def test_forgetting_through_on_batch_in_shuffled_batches():
    rng = np.random.default_rng(0)
    n, epochs = 20, 7
    history = rng.integers(0, 2, (n, epochs))
    labels = rng.integers(0, 3, n)
    rec = ForgettingRecorder(n)
    for e in range(epochs):
        order = rng.permutation(n)
        for batch in np.array_split(order, 3):
            ids = torch.from_numpy(batch)
            logits = _logits_for(history[batch, e], labels[batch])
            rec.on_batch(e, ids, logits, torch.from_numpy(labels[batch]), None)
    expected = [(np.diff(h) == -1).sum() if h.any() else epochs for h in history]
    assert rec.finalize().tolist() == expected


def test_el2n_matches_the_formula_and_records_only_its_epoch():
    from kdprune.loss.reference import kd_loss_ref

    torch.manual_seed(0)
    n, C = 50, 7
    logits = torch.randn(n, C) * 3
    labels = torch.randint(0, C, (n,))
    rec = EL2NRecorder(n, epoch=2)
    for epoch in range(4):
        z = logits if epoch == 2 else torch.randn(n, C)  # other epochs must not leak in
        for batch in torch.randperm(n).split(16):
            out = kd_loss_ref(z[batch], z[batch], labels[batch], alpha=0.0, temperature=1.0)
            rec.on_batch(epoch, batch, z[batch], labels[batch], out)
    p = torch.softmax(logits.double(), 1).numpy()
    onehot = np.eye(C)[labels.numpy()]
    expected = np.linalg.norm(p - onehot, axis=1)
    np.testing.assert_allclose(rec.finalize(), expected, rtol=1e-5, atol=1e-6)


def test_aum_on_scripted_margins():
    # sample 0: margins 2, 4 -> AUM 3; sample 1: margins -1, -3 -> AUM -2; score = -AUM
    steps = [torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 0.0]]),   # margins: 3-1=2, 0-1=-1
             torch.tensor([[5.0, 0.0, 1.0], [0.0, 0.0, 3.0]])]   # margins: 5-1=4, 0-3=-3
    labels = torch.tensor([0, 0])
    rec = AUMRecorder(2)
    for e, z in enumerate(steps):
        rec.on_batch(e, torch.tensor([0, 1]), z, labels, None)
    assert rec.finalize().tolist() == [-3.0, 2.0]


def test_merging_rank_shards_equals_one_recorder():
    n, C = 30, 4
    torch.manual_seed(1)
    z, y = torch.randn(n, C), torch.randint(0, C, (n,))
    whole, r0, r1 = AUMRecorder(n), AUMRecorder(n), AUMRecorder(n)
    ids = torch.arange(n)
    whole.on_batch(0, ids, z, y, None)
    r0.on_batch(0, ids[::2], z[::2], y[::2], None)
    r1.on_batch(0, ids[1::2], z[1::2], y[1::2], None)
    np.testing.assert_array_equal(r0.merge(r1).finalize(), whole.finalize())
    with pytest.raises(DataError, match="cannot be summed"):
        ForgettingRecorder(n).merge(ForgettingRecorder(n))


def test_unseen_samples_and_bad_ids_are_errors():
    rec = AUMRecorder(4)
    rec.on_batch(0, torch.tensor([0, 1]), torch.randn(2, 3), torch.tensor([0, 1]), None)
    with pytest.raises(DataError, match="2 of 4 samples were never presented"):
        rec.finalize()
    with pytest.raises(DataError, match=r"lie in \[0, 4\)"):
        rec.on_batch(0, torch.tensor([4]), torch.randn(1, 3), torch.tensor([0]), None)
    out = SimpleNamespace(el2n=torch.ones(2))
    el2n = EL2NRecorder(4, epoch=0)
    el2n.on_batch(0, torch.tensor([0, 1]), None, None, out)
    with pytest.raises(DataError, match="served in epoch 0"):
        el2n.finalize()


def test_average_of_seeds():
    assert average([np.array([1.0, 2.0]), np.array([3.0, 6.0])]).tolist() == [2.0, 4.0]
    with pytest.raises(DataError):
        average([])


# --- through the real training loop -------------------------------------------------------------

def _tiny():
    from kdprune.data import synthetic
    return synthetic(120, num_classes=4, shape=(8, 8, 1), seed=2)


class _LogitsAt:
    """Keeps the logits the loop hands to callbacks in one epoch (the oracle for EL2N)."""

    def __init__(self, n, epoch):
        self.epoch, self.logits, self.labels = epoch, torch.zeros(n, 4), torch.zeros(n, dtype=torch.long)

    def on_batch(self, epoch, ids, logits, labels, out):
        if epoch == self.epoch:
            self.logits[ids], self.labels[ids] = logits.float(), labels


def test_el2n_recorded_in_fit_is_the_formula_on_the_step_logits():
    from kdprune.loaders import build
    from kdprune.loss import KDLoss
    from kdprune.models import SmallCNN
    from kdprune.train import fit

    ds = _tiny()
    torch.manual_seed(0)
    rec, oracle = EL2NRecorder(len(ds), epoch=1), _LogitsAt(len(ds), 1)
    loader = build("torch", ds, np.arange(len(ds)), batch_size=32, train=True, seed=0)
    fit(SmallCNN(4, 1, width=4), loader, epochs=2, lr=0.05, loss_fn=KDLoss(alpha=0.0, temperature=1.0),
        callbacks=(rec, oracle), progress=False)
    p = torch.softmax(oracle.logits.double(), 1)
    expected = (p - torch.nn.functional.one_hot(oracle.labels, 4)).norm(dim=1).numpy()
    np.testing.assert_allclose(rec.finalize(), expected, rtol=1e-5, atol=1e-6)


def test_dynamics_scores_are_deterministic_under_seeds():
    from kdprune import compute_score

    ds = _tiny()
    kw = dict(width=4, batch_size=40)
    # determinism is a property of the shared training path: one method (1 epoch) shows it
    a, b = (compute_score("aum", ds, epochs=1, seeds=[0], **kw) for _ in range(2))
    c = compute_score("aum", ds, epochs=1, seeds=[2], **kw)
    assert np.array_equal(a.scores, b.scores) and not np.array_equal(a.scores, c.scores)
    for method in ("el2n", "forgetting"):
        r = compute_score(method, ds, epochs=2, seeds=[0], **kw)
        assert r.scores.shape == (len(ds),) and r.meta["seeds"] == [0] and r.meta["epochs"] == 2
    # 2 presentations: at most 1 forgetting event; 2 marks a sample never learned
    assert set(np.unique(r.scores)) <= {0.0, 1.0, 2.0}
