"""Training-dynamics scores as recorders fed by the training loop (:func:`kdprune.train.fit`).

A recorder is a callback: ``on_batch(epoch, ids, logits, labels, out)`` sees each step's detached
logits and the loss's per-sample outputs, and accumulates into per-sample numpy arrays of size N;
``finalize()`` returns float32[N] oriented so that higher = harder. No recorder runs a forward pass of
its own, so a score costs the training it rides on plus O(B) bookkeeping per step.

Each recorder describes one training run; average several runs (seeds) with :func:`average`.
Under DDP each rank sees its shard only: :meth:`Recorder.merge` adds another rank's (or run's) state.
"""
from __future__ import annotations

import numpy as np
import torch

from kdprune.errors import DataError


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class Recorder:
    """Shared bookkeeping: ``N`` per-sample arrays named in ``_fields``, merged by addition."""

    _fields: tuple = ()

    def __init__(self, num_samples: int):
        if num_samples < 1:
            raise DataError(f"a recorder needs num_samples >= 1, got {num_samples}")
        self.num_samples = int(num_samples)

    def _ids(self, ids) -> np.ndarray:
        ids = _np(ids).astype(np.int64) if isinstance(ids, torch.Tensor) else np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_samples):
            raise DataError(f"sample ids must lie in [0, {self.num_samples}), found "
                            f"[{ids.min()}, {ids.max()}]; size the recorder for the whole dataset")
        return ids

    def merge(self, other: "Recorder") -> "Recorder":
        """Add ``other``'s counts (another DDP rank's shard of the same run) into this one."""
        if type(other) is not type(self) or other.num_samples != self.num_samples:
            raise DataError("can only merge recorders of the same kind and size")
        for name in self._fields:
            getattr(self, name).__iadd__(getattr(other, name))
        return self

    def _check_seen(self, seen: np.ndarray, what: str) -> None:
        missing = np.flatnonzero(seen == 0)
        if missing.size:
            raise DataError(f"{missing.size} of {self.num_samples} samples were never {what} "
                            f"(e.g. ids {missing[:5].tolist()}); train on all ids with drop_last=False, "
                            "or merge the recorders of every DDP rank")


class EL2NRecorder(Recorder):
    """EL2N (Paul et al. 2021): ``||softmax(z) - onehot(y)||_2``, taken from the fused loss's per-sample
    ``out.el2n`` during epoch ``epoch`` (0-based), i.e. with the weights of the step that served the
    sample after ``epoch`` full epochs of training. Nothing is recomputed."""

    _fields = ("sum", "count")

    def __init__(self, num_samples: int, epoch: int):
        super().__init__(num_samples)
        self.epoch = int(epoch)
        self.sum = np.zeros(num_samples, np.float64)
        self.count = np.zeros(num_samples, np.int64)

    def on_batch(self, epoch, ids, logits, labels, out) -> None:
        if epoch != self.epoch:
            return
        ids = self._ids(ids)
        np.add.at(self.sum, ids, _np(out.el2n).astype(np.float64))
        np.add.at(self.count, ids, 1)

    def finalize(self) -> np.ndarray:
        self._check_seen(self.count, f"served in epoch {self.epoch}")
        return (self.sum / self.count).astype(np.float32)


class ForgettingRecorder(Recorder):
    """Forgetting events (Toneva et al. 2019): the number of times a sample goes from correctly to
    incorrectly classified between consecutive presentations (correctness = argmax of the step's
    logits). A sample never classified correctly is ranked as that paper ranks it, as the most
    forgettable: its score is its number of presentations, more than any learned sample can reach
    (``P`` presentations allow at most ``P // 2`` forgetting events)."""

    _fields = ("forgets", "presentations", "learned")

    def __init__(self, num_samples: int):
        super().__init__(num_samples)
        self.forgets = np.zeros(num_samples, np.int64)
        self.presentations = np.zeros(num_samples, np.int64)
        self.learned = np.zeros(num_samples, np.int64)  # presentations classified correctly
        self.prev = np.zeros(num_samples, np.int8)  # correctness at the last presentation (0 at start)

    def update(self, ids, correct) -> None:
        """Record one presentation of each of ``ids`` with ``correct`` (bool array); an id may appear
        once per call."""
        ids = self._ids(ids)
        correct = np.asarray(correct, dtype=np.int8)
        self.forgets[ids] += (self.prev[ids] == 1) & (correct == 0)
        self.presentations[ids] += 1
        self.learned[ids] += correct
        self.prev[ids] = correct

    def on_batch(self, epoch, ids, logits, labels, out) -> None:
        self.update(ids, _np(logits.argmax(1) == labels))

    def merge(self, other):
        raise DataError("forgetting counts depend on each sample's own sequence and cannot be summed "
                        "across ranks; gather (ids, correct) per step to one recorder instead")

    def finalize(self) -> np.ndarray:
        self._check_seen(self.presentations, "presented")
        score = self.forgets.astype(np.float32)
        never = self.learned == 0
        score[never] = self.presentations[never]
        return score


class AUMRecorder(Recorder):
    """Area under the margin (Pleiss et al. 2020): the mean over presentations of the logit margin
    ``z_y - max_{j != y} z_j``. A low (negative) AUM marks a hard or mislabelled sample, so the score
    is ``-AUM`` (higher = harder)."""

    _fields = ("sum", "count")

    def __init__(self, num_samples: int):
        super().__init__(num_samples)
        self.sum = np.zeros(num_samples, np.float64)
        self.count = np.zeros(num_samples, np.int64)

    @staticmethod
    def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``z_y - max_{j != y} z_j`` per row, float32 [B]."""
        z = logits.float()
        assigned = z.gather(1, labels[:, None]).squeeze(1)
        other = z.scatter(1, labels[:, None], float("-inf")).amax(1)
        return assigned - other

    def on_batch(self, epoch, ids, logits, labels, out) -> None:
        ids = self._ids(ids)
        np.add.at(self.sum, ids, _np(self.margins(logits, labels)).astype(np.float64))
        np.add.at(self.count, ids, 1)

    def finalize(self) -> np.ndarray:
        self._check_seen(self.count, "presented")
        return (-(self.sum / self.count)).astype(np.float32)


def average(runs) -> np.ndarray:
    """Mean of several runs' float32[N] scores (one per seed), as float32."""
    runs = [np.asarray(r, np.float64) for r in runs]
    if not runs:
        raise DataError("no runs to average")
    return np.mean(runs, axis=0).astype(np.float32)
